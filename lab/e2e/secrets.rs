//! Secret hygiene: with the most verbose logging (`RUST_LOG=trace`) for sesamed and the client,
//! a full knock with a PSK, refused knocks of every kind the daemon can judge (replay, bad MAC,
//! service not allowed, other address), knocks it cannot recognise (wrong PSK, unknown key),
//! the client's dry run and port listing, the status outputs, and the errors for unreadable
//! or malformed key files: no output contains the server's, the clients' or the PSK's secret
//! bytes (as base64, URL-safe base64, hex, raw bytes, or a Rust byte-array listing, whole or
//! in 16-character / 8-byte pieces), nor the X25519 shared secret, the HKDF PRK or the derived
//! `k_seq`, `k_mac`, `k_pay` (PROTOCOL.md §3, computed here independently with ring).
//! Public keys appear only where they are meant to: `sesame pubkey` and
//! `sesamed export-client`.

use std::ffi::{OsStr, OsString};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use sesame_keys::{PresharedKey, PrivateKey, PublicKey};
use sesame_tests::{CLIENT_IF, Family, Host, bin, require_netns, text};

use crate::common::{Fixture, SETTLE};
use crate::faults::{
    assert_no_grant_line, expect_grant_line, replay_capture, sesamed_run_to_exit, start_fixture,
};

/// Everything some program printed, with a label.
struct Collected {
    what: String,
    bytes: Vec<u8>,
}

fn collect(all: &mut Vec<Collected>, what: &str, o: &Output) {
    let mut bytes = o.stdout.clone();
    bytes.push(b'\n');
    bytes.extend_from_slice(&o.stderr);
    all.push(Collected {
        what: what.to_owned(),
        bytes,
    });
}

/// Runs `sesame ARGS` in the client namespace with `RUST_LOG=trace` and `RUST_BACKTRACE=1`,
/// `stdin` fed to it.
fn sesame_traced<S: AsRef<OsStr>>(f: &Fixture, args: &[S], stdin: &[u8]) -> Output {
    use std::io::Write;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", f.lab.ns(Host::Client)])
        .arg(bin("sesame"))
        .args(args)
        .env("RUST_LOG", "trace")
        .env("RUST_BACKTRACE", "1")
        .current_dir(&f.lab.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run sesame");
    let mut pipe = child.stdin.take().unwrap();
    let _ = pipe.write_all(stdin);
    drop(pipe);
    child.wait_with_output().unwrap()
}

/// Runs `sesamed ARGS` in the server namespace with `RUST_LOG=trace`.
fn sesamed_traced(f: &Fixture, args: &[&OsStr]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", f.lab.ns(Host::Server)])
        .arg(bin("sesamed"))
        .args(args)
        .env("RUST_LOG", "trace")
        .env("RUST_BACKTRACE", "1")
        .env("NO_COLOR", "1")
        .current_dir(&f.lab.dir)
        .stdin(Stdio::null())
        .output()
        .expect("run sesamed")
}

fn read_private(path: &Path) -> PrivateKey {
    PrivateKey::from_base64(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn read_psk(path: &Path) -> PresharedKey {
    PresharedKey::from_base64(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    let mut ctx = ring::hmac::Context::with_key(&k);
    for p in parts {
        ctx.update(p);
    }
    ctx.sign().as_ref().try_into().unwrap()
}

/// PROTOCOL.md §3: the shared secret, the PRK and `k_seq`, `k_mac`, `k_pay` of a client.
fn derived_keys(
    server: &PrivateKey,
    client: &PublicKey,
    psk: Option<&PresharedKey>,
) -> Vec<(String, [u8; 32])> {
    let dh = *server.diffie_hellman(client).unwrap().expose_bytes();
    let mut ikm = dh.to_vec();
    ikm.extend_from_slice(psk.map_or(&[0u8; 32], |p| p.expose_bytes()));
    // HKDF-Extract(salt, ikm) = HMAC(salt, ikm); one block of HKDF-Expand = HMAC(prk, info || 1).
    let prk = hmac(b"sesame v1 static", &[&ikm]);
    let s = server.public_key();
    let expand = |label: &[u8]| hmac(&prk, &[label, client.as_bytes(), s.as_bytes(), &[1u8]]);
    vec![
        ("X25519 shared secret".into(), dh),
        ("HKDF PRK".into(), prk),
        ("k_seq".into(), expand(b"sesame v1 sequence")),
        ("k_mac".into(), expand(b"sesame v1 mac key")),
        ("k_pay".into(), expand(b"sesame v1 payload key")),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The forms in which 32 secret bytes could leak.
fn leak_forms(bytes: &[u8; 32]) -> Vec<(String, Vec<u8>)> {
    let b64 = PresharedKey::from_bytes(*bytes).to_base64().to_string();
    let url = b64.replace('+', "-").replace('/', "_").replace('=', "");
    let mut out: Vec<(String, Vec<u8>)> = vec![
        ("base64".into(), b64.clone().into_bytes()),
        ("url-safe base64".into(), url.clone().into_bytes()),
        ("hex".into(), hex(bytes).into_bytes()),
        ("HEX".into(), hex(bytes).to_uppercase().into_bytes()),
    ];
    for at in [0, 14, 28] {
        out.push((
            format!("base64[{at}..{}]", at + 16),
            b64.as_bytes()[at..at + 16].to_vec(),
        ));
        out.push((
            format!("url-safe base64[{at}..]"),
            url.as_bytes()[at..(at + 16).min(url.len())].to_vec(),
        ));
    }
    for at in (0..32).step_by(8) {
        let piece = &bytes[at..at + 8];
        out.push((format!("hex[{at}..{}]", at + 8), hex(piece).into_bytes()));
        out.push((
            format!("HEX[{at}..{}]", at + 8),
            hex(piece).to_uppercase().into_bytes(),
        ));
        out.push((format!("raw bytes[{at}..{}]", at + 8), piece.to_vec()));
    }
    let listing: Vec<String> = bytes[..6].iter().map(u8::to_string).collect();
    out.push(("byte-array listing".into(), listing.join(", ").into_bytes()));
    let listing: Vec<String> = bytes[16..22].iter().map(u8::to_string).collect();
    out.push((
        "byte-array listing (middle)".into(),
        listing.join(", ").into_bytes(),
    ));
    out
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Writes a copy of a secret file with other contents (mode 0600) and returns its path.
fn secret_variant(f: &Fixture, name: &str, contents: &str, mode: u32) -> PathBuf {
    let p = f.lab.write(name, contents);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// The knock sequence of a profile from `sesame open --dry-run`: knock addresses, then the
/// payload address.
fn dry_run_plan(out: &str) -> (Vec<(SocketAddr, usize)>, SocketAddr) {
    let mut knocks = Vec::new();
    let mut payload = None;
    for line in out.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(addr) = words.iter().find_map(|w| w.parse::<SocketAddr>().ok()) else {
            continue;
        };
        let size = words
            .iter()
            .position(|w| *w == "bytes")
            .and_then(|i| words[i - 1].parse().ok())
            .unwrap_or(0);
        match words.first() {
            Some(&"knock") => {
                assert_eq!(words.get(2), Some(&"udp"), "udp knocks: {line}");
                knocks.push((addr, size));
            }
            Some(&"payload") => payload = Some(addr),
            _ => {}
        }
    }
    (
        knocks,
        payload.unwrap_or_else(|| panic!("no payload in:\n{out}")),
    )
}

#[test]
fn secrets_never_appear_in_logs_or_errors_at_trace_level() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("sec-trace");
    f.spec.knock.step_seconds = 60;
    f.spec.protect = vec!["tcp/22".to_owned(), "tcp/23".to_owned()];
    let psk_path = f.lab.gen_psk("laptop");
    f.client().psk_file = Some(psk_path.clone());
    f.client().allow = Some(vec!["tcp/22".to_owned()]);
    start_fixture(
        &mut f,
        |c| c,
        &[],
        &[("RUST_LOG", "trace"), ("RUST_BACKTRACE", "1")],
    );
    let client_addr = f.lab.addr(Host::Client, Family::V4);
    let key = f.client_key.path.clone();
    let profile = f.write_profile("laptop-psk", Family::V4, &key, |p| {
        p.psk_file = Some(psk_path.clone());
    });
    let p = profile.as_os_str();
    let mut out: Vec<Collected> = Vec::new();
    let open = |args: &[&str]| -> Vec<OsString> {
        let mut v: Vec<OsString> = vec!["open".into(), "--profile".into(), p.to_owned()];
        v.extend(args.iter().map(OsString::from));
        v
    };

    // A full knock with the PSK, captured.
    let cap = f
        .lab
        .capture(Host::Client, CLIENT_IF, "knock", "udp or tcp");
    let mark = f.mark();
    let o = sesame_traced(&f, &open(&[]), b"");
    assert!(o.status.success(), "{}", text(&o));
    collect(&mut out, "sesame open (PSK)", &o);
    expect_grant_line(&f, mark, client_addr);
    cap.stop();
    assert!(
        f.opens(Host::Client, Family::V4, 22),
        "{}",
        f.lab.server_ruleset()
    );

    // The dry run and the port listing.
    let o = sesame_traced(&f, &open(&["--dry-run"]), b"");
    assert!(o.status.success(), "{}", text(&o));
    collect(&mut out, "sesame open --dry-run", &o);
    let plan = dry_run_plan(&String::from_utf8_lossy(&o.stdout));
    let o = sesame_traced(&f, &["ports".as_ref(), "--profile".as_ref(), p], b"");
    assert!(o.status.success(), "{}", text(&o));
    collect(&mut out, "sesame ports", &o);

    // Refusals the daemon judges: replay, bad MAC, a service outside `allow`, another address.
    let mark = f.mark();
    replay_capture(&f, Host::Client, &f.lab.path("knock.pcap"), Family::V4);
    f.daemon()
        .expect_after(mark, &["rejected", "reason=replay"], Duration::from_secs(6));
    let mark = f.mark();
    for (addr, len) in &plan.0 {
        let o = f.lab.netprobe(
            Host::Client,
            &[
                "udp".into(),
                addr.to_string(),
                "--len".into(),
                len.to_string(),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = f.lab.netprobe(
        Host::Client,
        &[
            "udp".into(),
            plan.1.to_string(),
            "--len".into(),
            "184".into(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    f.daemon().expect_after(
        mark,
        &["rejected", "reason=bad_mac"],
        Duration::from_secs(6),
    );
    let mark = f.mark();
    let o = sesame_traced(&f, &open(&["--port", "tcp/23"]), b"");
    collect(&mut out, "sesame open --port tcp/23", &o);
    f.daemon().expect_after(
        mark,
        &["rejected", "reason=service_not_allowed"],
        Duration::from_secs(6),
    );
    let mark = f.mark();
    let other = f.lab.v4(Host::Attacker).to_string();
    let o = sesame_traced(&f, &open(&["--allow-ip", &other]), b"");
    collect(&mut out, "sesame open --allow-ip", &o);
    f.daemon().expect_after(
        mark,
        &["rejected", "reason=other_ip_not_allowed"],
        Duration::from_secs(6),
    );

    // Knocks the daemon cannot recognise: a wrong PSK, an unknown key.
    let wrong_psk = f.lab.gen_psk("wrong");
    let intruder = f.lab.gen_key("intruder");
    let mark = f.mark();
    for (name, key, psk) in [
        ("wrong-psk", key.clone(), Some(wrong_psk.clone())),
        ("intruder", intruder.path.clone(), None),
    ] {
        let prof = f.write_profile(name, Family::V4, &key, |p| p.psk_file = psk);
        let o = sesame_traced(
            &f,
            &["open".as_ref(), "--profile".as_ref(), prof.as_os_str()],
            b"",
        );
        assert!(o.status.success(), "{}", text(&o));
        collect(&mut out, &format!("sesame open ({name})"), &o);
    }
    std::thread::sleep(SETTLE);
    assert_no_grant_line(&f, mark, "wrong PSK / unknown key");

    // `sesame pubkey` prints the public key (intended).
    let client_text = std::fs::read(&key).unwrap();
    let o = sesame_traced(&f, &["pubkey"], &client_text);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        f.client_key.public
    );
    let pubkey_output = o;

    // Errors about key files: too open, malformed in two ways; client and daemon.
    let server_text = std::fs::read_to_string(&f.server_key.path).unwrap();
    let psk_text = std::fs::read_to_string(&psk_path).unwrap();
    let mangle = |t: &str| -> [String; 2] {
        let t = t.trim();
        [format!("{t}x\n"), format!("{}!{}\n", &t[..20], &t[21..])]
    };
    let mut variants: Vec<(String, PathBuf, Option<PathBuf>)> = Vec::new(); // (what, key, psk)
    variants.push((
        "client key mode 0644".into(),
        secret_variant(
            &f,
            "open.key",
            &String::from_utf8_lossy(&client_text),
            0o644,
        ),
        None,
    ));
    for (i, m) in mangle(&String::from_utf8_lossy(&client_text))
        .iter()
        .enumerate()
    {
        variants.push((
            format!("client key malformed {i}"),
            secret_variant(&f, &format!("bad{i}.key"), m, 0o600),
            None,
        ));
    }
    for (i, m) in mangle(&psk_text).iter().enumerate() {
        variants.push((
            format!("PSK malformed {i}"),
            key.clone(),
            Some(secret_variant(&f, &format!("bad{i}.psk"), m, 0o600)),
        ));
    }
    variants.push((
        "PSK mode 0644".into(),
        key.clone(),
        Some(secret_variant(&f, "open.psk", &psk_text, 0o644)),
    ));
    for (what, k, psk) in &variants {
        let psk = psk.clone().or_else(|| Some(psk_path.clone()));
        let prof = f.write_profile("bad", Family::V4, k, |p| p.psk_file = psk);
        let o = sesame_traced(
            &f,
            &["open".as_ref(), "--profile".as_ref(), prof.as_os_str()],
            b"",
        );
        assert!(
            !o.status.success(),
            "sesame open with {what} must fail: {}",
            text(&o)
        );
        collect(&mut out, &format!("sesame open: {what}"), &o);
    }
    let mut daemon_variants: Vec<(String, PathBuf, Option<PathBuf>)> = vec![(
        "server key mode 0644".into(),
        secret_variant(&f, "srv-open.key", &server_text, 0o644),
        None,
    )];
    for (i, m) in mangle(&server_text).iter().enumerate() {
        daemon_variants.push((
            format!("server key malformed {i}"),
            secret_variant(&f, &format!("srv-bad{i}.key"), m, 0o600),
            None,
        ));
    }
    for (i, m) in mangle(&psk_text).iter().enumerate() {
        daemon_variants.push((
            format!("client PSK malformed {i}"),
            f.server_key.path.clone(),
            Some(secret_variant(&f, &format!("srv-bad{i}.psk"), m, 0o600)),
        ));
    }
    for (what, k, psk) in &daemon_variants {
        let mut spec = f.spec.clone();
        spec.private_key_file = k.clone();
        if let Some(psk) = psk {
            spec.clients[0].psk_file = Some(psk.clone());
        }
        let config = f.lab.write("bad-sesamed.toml", &spec.to_toml());
        let o = sesamed_traced(
            &f,
            &["check".as_ref(), "--config".as_ref(), config.as_os_str()],
        );
        assert!(
            !o.status.success(),
            "sesamed check with {what} must fail: {}",
            text(&o)
        );
        collect(&mut out, &format!("sesamed check: {what}"), &o);
        let (code, lines) = sesamed_run_to_exit(&f.lab, &config, &[], &[("RUST_LOG", "trace")]);
        assert_ne!(code, Some(0), "sesamed run with {what}");
        let mut o = o;
        o.stdout = lines.join("\n").into_bytes();
        o.stderr.clear();
        collect(&mut out, &format!("sesamed run: {what}"), &o);
    }

    // Status in every form; then stop the daemon (its shutdown is logged too).
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["status", "--prometheus"],
    ] {
        let mut a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        a.extend(["--config".as_ref(), f.config.as_os_str()]);
        let o = sesamed_traced(&f, &a);
        assert!(o.status.success(), "{}", text(&o));
        collect(&mut out, &format!("sesamed {}", args.join(" ")), &o);
    }
    let host = f.server(Family::V4).to_string();
    let export = sesamed_traced(
        &f,
        &[
            "export-client".as_ref(),
            "--config".as_ref(),
            f.config.as_os_str(),
            "laptop".as_ref(),
            "--host".as_ref(),
            host.as_ref(),
        ],
    );
    assert!(export.status.success(), "{}", text(&export));
    let mut daemon = f.daemon.take().unwrap();
    let stopped = daemon.stop(Duration::from_secs(10));
    assert!(
        stopped.is_some_and(|s| s.success()),
        "sesamed stop: {stopped:?}"
    );
    let daemon_log = daemon.output();
    f.daemon = Some(daemon);
    out.push(Collected {
        what: "sesamed run (RUST_LOG=trace)".into(),
        bytes: daemon_log.clone().into_bytes(),
    });
    assert!(
        daemon_log
            .lines()
            .any(|l| l.contains("TRACE") || l.contains("DEBUG")),
        "the daemon log is at a verbose level:\n{daemon_log}"
    );

    // The secrets, and what is derived from them.
    let server = read_private(&f.server_key.path);
    let client = read_private(&key);
    let psk = read_psk(&psk_path);
    let mut secrets: Vec<(String, [u8; 32])> = vec![
        ("server private key".into(), *server.expose_bytes()),
        ("client private key".into(), *client.expose_bytes()),
        ("PSK".into(), *psk.expose_bytes()),
        ("wrong PSK".into(), *read_psk(&wrong_psk).expose_bytes()),
        (
            "intruder private key".into(),
            *read_private(&intruder.path).expose_bytes(),
        ),
    ];
    secrets.extend(derived_keys(&server, &client.public_key(), Some(&psk)));
    let mut leaks = Vec::new();
    let mut checked = 0usize;
    for (name, bytes) in &secrets {
        for (form, needle) in leak_forms(bytes) {
            for c in out
                .iter()
                .chain(std::iter::once(&Collected {
                    what: "sesamed export-client".into(),
                    bytes: [export.stdout.clone(), export.stderr.clone()].concat(),
                }))
                .chain(std::iter::once(&Collected {
                    what: "sesame pubkey".into(),
                    bytes: [pubkey_output.stdout.clone(), pubkey_output.stderr.clone()].concat(),
                }))
            {
                checked += 1;
                if find(&c.bytes, &needle) {
                    leaks.push(format!("{name} as {form} in the output of {}", c.what));
                }
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "secret material in outputs:\n{}",
        leaks.join("\n")
    );

    // Public keys only where intended.
    let server_pub = server.public_key().to_base64();
    let client_pub = client.public_key().to_base64();
    assert!(
        find(&export.stdout, server_pub.as_bytes()),
        "export-client prints the server key"
    );
    let mut misplaced = Vec::new();
    for c in &out {
        for (name, k) in [
            ("server public key", &server_pub),
            ("client public key", &client_pub),
        ] {
            let pk = PublicKey::from_base64(k).unwrap();
            let hexed = hex(pk.as_bytes());
            if find(&c.bytes, k.as_bytes()) || find(&c.bytes, hexed.as_bytes()) {
                misplaced.push(format!("{name} in the output of {}", c.what));
            }
        }
    }
    assert!(
        misplaced.is_empty(),
        "public keys where they are not meant to be:\n{}",
        misplaced.join("\n")
    );
    let total: usize = out.iter().map(|c| c.bytes.len()).sum();
    eprintln!(
        "secrets: {} secrets × {} forms searched in {} outputs ({total} bytes, {} daemon log lines at trace level); {checked} searches, no leak",
        secrets.len(),
        leak_forms(&[0u8; 32]).len(),
        out.len() + 2,
        daemon_log.lines().count()
    );
}
