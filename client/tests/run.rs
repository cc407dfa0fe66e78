//! `sesame run PROFILE ACTION [ARG]` as a user runs it: what the dry run shows, the profile it
//! refuses, and the datagram it sends, opened with the server's key (the action and its
//! argument travel inside the AEAD, with the binding). The server's side is tested end to end
//! in lab/e2e/actions.rs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use sesame_keys::PrivateKey;
use sesame_proto::time::TimeWindow;
use sesame_proto::wire::Opener;
use sesame_proto::{ClientKeys, UnixMillis};

const SESAME: &str = env!("CARGO_BIN_EXE_sesame");

use sesame_test_support::TempDir;

fn sesame(args: &[&str], dir: &Path) -> Output {
    Command::new(SESAME)
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "[{}] stdout: {} stderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The `default-udp` vector's keys (proto/tests/vectors/sequences.json): client private, server
/// private, server public.
fn vector_keys() -> (String, String, String) {
    let vectors: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto/tests/vectors/sequences.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let v = &vectors["vectors"][0];
    assert_eq!(v["name"], "default-udp");
    let s = |k: &str| v[k].as_str().unwrap().to_owned();
    (s("client_private"), s("server_private"), s("server_public"))
}

/// Writes `server.toml` (and its key) for `host`, with `extra` lines.
fn profile(dir: &TempDir, host: &str, extra: &str) -> PathBuf {
    let (client, _, server_public) = vector_keys();
    sesame_keys::write_secret_file(&dir.path("client.key"), &client).unwrap();
    let profile = dir.path("server.toml");
    std::fs::write(
        &profile,
        format!(
            "host = \"{host}\"\nserver_public_key = \"{server_public}\"\nprivate_key_file = \"client.key\"\nstep_seconds = 30\nport_range = [10000, 32767]\nprotocol = \"udp\"\nopen = [\"tcp/22\"]\n{extra}"
        ),
    )
    .unwrap();
    profile
}

#[test]
fn the_dry_run_shows_the_packets_the_action_and_the_binding() {
    let dir = TempDir::new("run-dry");
    let p = profile(&dir, "198.18.0.1", "length = 3\npayload = \"required\"\n");
    let p = p.to_str().unwrap();
    let o = sesame(
        &[
            "run",
            p,
            "wake",
            "nas-1",
            "--dry-run",
            "--allow-ip",
            "198.18.0.9",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    let packets: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(packets.len(), 4, "three knocks and the payload: {out}");
    assert!(packets[3].starts_with("payload"), "{out}");
    assert!(
        out.contains(
            "# asks to run action 'wake' with argument 'nas-1', bound to 198.18.0.9 (--allow-ip)"
        ),
        "{out}"
    );
    // Services only when asked for; not the profile's `open`.
    assert!(!out.contains("tcp/22"), "{out}");
    let o = sesame(
        &[
            "run",
            p,
            "restart",
            "--dry-run",
            "--allow-ip",
            "198.18.0.9",
            "--port",
            "tcp/2222",
        ],
        &dir.0,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("action 'restart' (and open tcp/2222), bound"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_profile_without_payload_cannot_carry_an_action() {
    let dir = TempDir::new("run-none");
    let p = profile(&dir, "198.18.0.1", "length = 3\npayload = \"none\"\n");
    let o = sesame(&["run", p.to_str().unwrap(), "wake", "--dry-run"], &dir.0);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("payload = \"none\""), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(o.stdout.is_empty(), "{}", text(&o));
}

/// The datagram `sesame run` sends (single-packet mode, to a socket of this test on the
/// loopback), opened with the server's key: the action, its argument and the bound address are
/// inside, and no service.
#[test]
fn the_payload_carries_the_action_and_the_argument() {
    let dir = TempDir::new("run-wire");
    let p = profile(&dir, "127.0.0.1", "length = 0\npayload = \"required\"\n");
    let p = p.to_str().unwrap();
    let (client, server_private, _) = vector_keys();
    let server_key = PrivateKey::from_base64(&server_private).unwrap();
    let keys = ClientKeys::for_server(
        &server_key,
        &PrivateKey::from_base64(&client).unwrap().public_key(),
        None,
    )
    .unwrap();
    let opener = Opener::new(
        server_key,
        TimeWindow {
            step_seconds: 30,
            skew_steps: 1,
        },
    );
    // The payload port changes with the step: at a step's end, try again.
    for attempt in 0..3 {
        let ports = sesame(&["ports", "--profile", p], &dir.0);
        assert!(ports.status.success(), "{}", text(&ports));
        let port: u16 = String::from_utf8_lossy(&ports.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("payload  udp/")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no payload port: {}", text(&ports)));
        let Ok(sock) = UdpSocket::bind(("127.0.0.1", port)) else {
            continue; // taken by something else at the moment
        };
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let o = sesame(
            &["run", p, "wake", "nas-1", "--allow-ip", "198.18.0.9"],
            &dir.0,
        );
        assert!(o.status.success(), "{}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("sent action 'wake' with argument 'nas-1' to 127.0.0.1 (127.0.0.1): 1 packet at step"),
            "{out}"
        );
        assert!(out.contains("bound to 198.18.0.9 (--allow-ip)"), "{out}");
        assert!(out.contains("sesamed status"), "how to check: {out}");
        let mut buf = [0u8; 1500];
        let Ok(n) = sock.recv(&mut buf) else {
            assert!(attempt < 2, "no datagram on udp/{port}: {out}");
            continue;
        };
        let now = UnixMillis(
            u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_millis(),
            )
            .unwrap(),
        );
        let c = now.counter(30);
        let request = [c, c.saturating_sub(1)]
            .into_iter()
            .find_map(|counter| opener.open(now, &keys, counter, &buf[..n]).ok())
            .expect("the server's key opens the payload");
        let action = request.action.expect("the payload names an action");
        assert_eq!(action.name, "wake");
        assert_eq!(action.argument, "nas-1");
        assert!(request.services.is_empty(), "{:?}", request.services);
        assert_eq!(
            request.address,
            Some("198.18.0.9".parse::<IpAddr>().unwrap())
        );
        return;
    }
    panic!("the payload port was taken three times");
}
