use super::*;
use crate::fill_random;

fn temp_dir(tag: &str) -> PathBuf {
    let mut rnd = [0u8; 8];
    fill_random(&mut rnd);
    let dir = std::env::temp_dir().join(format!(
        "sesame-keys-{tag}-{}",
        rnd.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn key_files_are_created_0600_and_refused_when_open() {
    let dir = temp_dir("files");
    let path = dir.join("k");
    let key = PrivateKey::generate();
    write_private_key_file(&path, &key).unwrap();
    let mode = std::fs::metadata(&path).unwrap().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(read_private_key_file(&path).unwrap() == key);
    // Never overwrites.
    assert!(matches!(
        write_private_key_file(&path, &key),
        Err(KeyFileError::Io { .. })
    ));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let err = read_private_key_file(&path).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, KeyFileError::TooOpen { mode: 0o640, .. }));
    assert!(msg.contains("chmod 600"), "{msg}");
    assert!(msg.contains("0640"), "{msg}");
    assert!(!msg.contains('\n'));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
    assert!(read_private_key_file(&path).is_err());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(read_private_key_file(&path).is_ok());
    // A garbage file names the file and the reason.
    let bad = dir.join("bad");
    write_secret_file(&bad, "not a key").unwrap();
    let msg = read_psk_file(&bad).unwrap_err().to_string();
    assert!(msg.contains("bad") && msg.contains("44 base64"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}
