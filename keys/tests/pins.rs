//! Tests that pin what a mutation run of this crate (`scripts/mutants --crate keys`,
//! docs/TESTING.md) found unpinned: the randomness of `fill_random`, the clamping of every
//! generated key, what a key's bad base64 is said to be, the pre-shared key's bytes, text form
//! and equality, and how a secret file is read (its whole content; links followed or refused;
//! a FIFO never waited on; the size limit at exactly 4096 bytes).

// Test helpers outside #[test] functions panic on failure too.
#![allow(clippy::unwrap_used)]

use sesame_keys::{KeyError, PresharedKey, PrivateKey, PublicKey, fill_random};

/// The RFC 7748 Alice public key in its text form.
const GOOD: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";

fn base64_error(text: &str) -> String {
    match PublicKey::from_base64(text) {
        Err(KeyError::Base64(why)) => why,
        other => panic!("{text:?}: expected a base64 error, got {other:?}"),
    }
}

#[test]
fn fill_random_fills_the_whole_buffer_with_fresh_bytes() {
    let mut a = [0u8; 64];
    let mut b = [0u8; 64];
    fill_random(&mut a);
    fill_random(&mut b);
    assert_ne!(a, b, "two draws of 64 random bytes are equal");
    // Each half is filled (the chance that 32 random bytes are all zero is 2^-256).
    for half in [&a[..32], &a[32..], &b[..32], &b[32..]] {
        assert!(half.iter().any(|&x| x != 0), "{half:?}");
    }
}

#[test]
fn every_generated_key_is_clamped() {
    // One key checks each clamped bit with a chance of 1/2 (1/8 for the low three bits) that an
    // unclamped key passes anyway; 64 keys leave no chance.
    for _ in 0..64 {
        let key = PrivateKey::generate();
        let bytes = key.expose_bytes();
        assert_eq!(bytes[0] & 0b111, 0, "the low three bits are cleared");
        assert_eq!(bytes[31] & 0x80, 0, "the top bit is cleared");
        assert_eq!(bytes[31] & 0x40, 0x40, "the second bit from the top is set");
        // Clamping touches those bits only: the rest stays random (not all zero).
        assert!(bytes[1..31].iter().any(|&x| x != 0));
    }
}

#[test]
fn a_character_outside_the_alphabet_is_named_by_its_position() {
    let mut text: Vec<char> = GOOD.chars().collect();
    text[10] = '!';
    let text: String = text.into_iter().collect();
    assert_eq!(
        base64_error(&text),
        "character 11 is not in the base64 alphabet"
    );
}

#[test]
fn a_non_canonical_last_character_is_named_by_its_position() {
    // 'o' (40) ends the key; 'p' (41) sets a low bit that 32 bytes leave zero.
    let text = format!("{}p=", &GOOD[..42]);
    assert_eq!(
        base64_error(&text),
        "character 43 has low bits set that a canonical key leaves zero"
    );
}

#[test]
fn a_preshared_key_keeps_its_bytes_and_text_form() {
    let bytes: [u8; 32] = std::array::from_fn(|i| i as u8 * 7 + 1);
    let psk = PresharedKey::from_bytes(bytes);
    assert_eq!(psk.expose_bytes(), &bytes);
    let text = psk.to_base64();
    assert_eq!(&*text, "AQgPFh0kKzI5QEdOVVxjanF4f4aNlJuiqbC3vsXM09o=");
    let back = PresharedKey::from_base64(&text).unwrap();
    assert_eq!(back.expose_bytes(), &bytes);
}

#[test]
fn preshared_keys_are_equal_exactly_when_their_bytes_are() {
    let a = PresharedKey::from_bytes([3; 32]);
    let mut other = [3; 32];
    other[31] = 4;
    assert!(a == PresharedKey::from_bytes([3; 32]));
    assert!(a != PresharedKey::from_bytes(other));
}

#[cfg(all(feature = "files", unix))]
mod files {
    use sesame_keys::{KeyFileError, Links, fill_random, read_secret_file, read_secret_file_with};
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    /// A directory of its own under the system's temporary directory, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new() -> Dir {
            let mut rnd = [0u8; 8];
            fill_random(&mut rnd);
            let name: String = rnd.iter().map(|b| format!("{b:02x}")).collect();
            let dir = std::env::temp_dir().join(format!("sesame-keys-pins-{name}"));
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        /// A 0600 file holding `text`.
        fn secret(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            path
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn not_a_key_file(path: &Path, links: Links) -> &'static str {
        match read_secret_file_with(path, links) {
            Err(KeyFileError::NotAKeyFile { why, .. }) => why,
            other => panic!("{}: expected NotAKeyFile, got {other:?}", path.display()),
        }
    }

    #[test]
    fn a_secret_file_is_read_whole() {
        let dir = Dir::new();
        let path = dir.secret("psk", "AQgPFh0kKzI5QEdOVVxjanF4f4aNlJuiqbC3vsXM09o=\n");
        assert_eq!(
            &*read_secret_file(&path).unwrap(),
            "AQgPFh0kKzI5QEdOVVxjanF4f4aNlJuiqbC3vsXM09o=\n"
        );
    }

    #[test]
    fn a_link_to_a_secret_is_followed_or_refused_as_asked() {
        let dir = Dir::new();
        let target = dir.secret("key", "secret text\n");
        let link = dir.0.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(&*read_secret_file(&link).unwrap(), "secret text\n");
        assert_eq!(
            &*read_secret_file_with(&link, Links::Follow).unwrap(),
            "secret text\n"
        );
        assert_eq!(
            not_a_key_file(&link, Links::Refuse),
            "a symbolic link (sesamed reads secrets only from the file itself)"
        );
        // The file itself is read either way, and a missing file is an I/O error, not a link.
        assert_eq!(
            &*read_secret_file_with(&target, Links::Refuse).unwrap(),
            "secret text\n"
        );
        let missing = dir.0.join("missing");
        for links in [Links::Follow, Links::Refuse] {
            assert!(matches!(
                read_secret_file_with(&missing, links),
                Err(KeyFileError::Io { .. })
            ));
        }
    }

    #[test]
    fn a_fifo_at_the_path_is_refused_without_waiting_for_a_writer() {
        let dir = Dir::new();
        let fifo = dir.0.join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg("-m")
            .arg("600")
            .arg(&fifo)
            .status()
            .expect("run mkfifo");
        assert!(status.success());
        // A blocking open would wait for a writer forever: read in a thread, give it 10 s.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(read_secret_file(&path).map(|_| ()));
        });
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("reading a FIFO waited for a writer");
        assert!(
            matches!(
                got,
                Err(KeyFileError::NotAKeyFile {
                    why: "not a regular file",
                    ..
                })
            ),
            "{got:?}"
        );
    }

    #[test]
    fn a_secret_file_of_4096_bytes_is_read_and_one_of_4097_refused() {
        let dir = Dir::new();
        let full = "k".repeat(4096);
        let path = dir.secret("full", &full);
        assert_eq!(read_secret_file(&path).unwrap().len(), 4096);
        let path = dir.secret("over", &format!("{full}k"));
        assert_eq!(
            not_a_key_file(&path, Links::Follow),
            "larger than 4096 bytes"
        );
    }
}
