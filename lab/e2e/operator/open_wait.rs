//! `sesame open NAME --wait` with an imported profile: plain, with a skewed clock, with a
//! wrong key, and a profile with a generated key on a new device.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use sesame_tests::{Family, Host, require_netns, text};

use crate::common::Fixture;

use super::{assert_reloaded, expect_log, install_laptop_profile, sesame_at_home, sesamed_ok};

#[test]
fn open_wait_by_name_confirms_that_the_service_answers() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("op-wait");
    f.spec.lease_seconds = 10;
    f.start();
    let home = f.lab.path("home");
    install_laptop_profile(&f, &home, "lab");
    f.assert_closed(Family::V4, 22, "before the knock");
    let mark = f.mark();
    let o = sesame_at_home(&f.lab, Host::Client, &home, &["open", "lab", "--wait"]);
    assert!(o.status.success(), "sesame open lab --wait: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains(&format!(
            "{} tcp/22 answers (after 1 knock, asking for tcp/22 for {} (this host's public address))",
            f.server(Family::V4),
            f.lab.addr(Host::Client, Family::V4)
        )),
        "{out}"
    );
    expect_log(&f, mark, &[" granted client=laptop "]);
    // The documented long form. The first knock's lease is still on, so the service answers
    // before this knock: the knock is sent (and granted), but --wait cannot confirm it: exit 3.
    let mark = f.mark();
    let o = sesame_at_home(
        &f.lab,
        Host::Client,
        &home,
        &[
            "open",
            "lab",
            "--wait",
            "tcp/22",
            "--timeout",
            "5s",
            "--retries",
            "1",
        ],
    );
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--wait cannot confirm it"),
        "{}",
        text(&o)
    );
    expect_log(&f, mark, &[" granted client=laptop "]);
    // A service the knock does not open is never confirmed: exit 1, not a hang.
    let o = sesame_at_home(
        &f.lab,
        Host::Client,
        &home,
        &["open", "lab", "--wait", "udp/53"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("only tcp services can be confirmed"),
        "{}",
        text(&o)
    );
}

#[test]
fn open_wait_finds_a_clock_offset_and_says_so() {
    if !require_netns() {
        return;
    }
    // Steps of 30 s, one step of skew: a client 60 s behind is two steps off and never opens
    // by itself; the clock probe finds that +30 s (one step, the only forward probe: a knock
    // shifted further would stay valid later) gets in.
    let mut f = Fixture::new("op-clock");
    f.spec.knock.step_seconds = 30;
    f.spec.knock.skew_steps = 1;
    f.start();
    let home = f.lab.path("home");
    install_laptop_profile(&f, &home, "lab");
    let mark = f.mark();
    let o = sesame_at_home(
        &f.lab,
        Host::Client,
        &home,
        &[
            "open",
            "lab",
            "--wait",
            "--timeout",
            "1s",
            "--retries",
            "0",
            "--time-offset",
            "-60",
        ],
    );
    assert!(o.status.success(), "the clock probe opens it: {}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("tcp/22 answers (after 2 knocks"), "{out}");
    assert!(
        err.contains("opened only with the clock shifted by -30 s, not by the -60 s given"),
        "the detected offset is printed: {err}"
    );
    expect_log(&f, mark, &[" granted client=laptop "]);
    // The advice aims at the measured offset, not at the edge of the window (-60 + 30 = -30):
    // this client's clock is right, so the offset to pass is about 0 (within half a step).
    let advised: i64 = err
        .split("pass --time-offset ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `pass --time-offset N` advice: {err}"));
    assert!(
        advised.abs() <= 15,
        "sesame open --time-offset -60 on a right clock must be advised about 0, not {advised}: {err}"
    );
    // The advice must work when followed (once the probe's lease has ended, so that the
    // service does not answer before the knock).
    let svc = f.svc(Family::V4, 22);
    assert!(
        f.lab
            .wait_closed(
                Host::Client,
                svc,
                std::time::Instant::now(),
                Duration::from_secs(15)
            )
            .is_some(),
        "the probe's lease never ended"
    );
    let advised = advised.to_string();
    let o = sesame_at_home(
        &f.lab,
        Host::Client,
        &home,
        &[
            "open",
            "lab",
            "--wait",
            "--timeout",
            "2s",
            "--retries",
            "0",
            "--time-offset",
            &advised,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("after 1 knock,"),
        "{}",
        text(&o)
    );
}

#[test]
fn open_wait_with_a_wrong_key_says_what_is_likely_wrong() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("op-wrongkey");
    f.start();
    let stranger = f.lab.gen_key("stranger");
    let profile = f.write_profile("stranger", Family::V4, &stranger.path, |_| {});
    let p = profile.to_string_lossy().into_owned();
    let mark = f.mark();
    let o = f.lab.sesame(
        Host::Client,
        &[
            "open",
            "--profile",
            &p,
            "--wait",
            "tcp/22",
            "--timeout",
            "1s",
            "--retries",
            "1",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("did not answer within 1.0 s; knocking again (1/1)"),
        "{err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with(&format!(
            "sesame: {} never answered after 6 knocks",
            f.svc(Family::V4, 22)
        )),
        "{err}"
    );
    for cause in [
        "wrong keys",
        "sesame pubkey",
        "server_public_key",
        "UDP",
        "protocol = \"tcp\"",
        "clock",
        "skew_steps",
    ] {
        assert!(
            last.contains(cause),
            "the explanation mentions `{cause}`: {last}"
        );
    }
    f.assert_no_grant(mark, "a knock with an unknown key");
    f.assert_closed(Family::V4, 22, "after the wrong key");
}

/// README "Provisioning a phone": `sesamed client add NAME --generate-key` while the daemon
/// runs prints a URI with the private key; `sesame import URI` on the device, and `sesame
/// open NAME --wait` opens at once.
#[test]
fn a_generated_key_profile_opens_from_a_new_device() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("op-genkey");
    f.spec.lease_seconds = 10;
    f.start();
    let host = f.server(Family::V4).to_string();
    let mark = f.mark();
    let out = sesamed_ok(
        &f,
        &[
            "client",
            "add",
            "phone",
            "--generate-key",
            "--host",
            &host,
            "--allow",
            "tcp/22",
        ],
    );
    assert_reloaded(&out, 2, "phone", "none");
    expect_log(&f, mark, &["reloaded: 2 clients"]);
    let uri = out
        .lines()
        .find(|l| l.starts_with("sesame://2/"))
        .unwrap_or_else(|| panic!("no URI in: {out}"));
    assert!(
        !std::fs::read_to_string(&f.config)
            .unwrap()
            .contains(&uri["sesame://2/".len()..]),
        "the URI (with the private key) is not stored"
    );
    // The phone is the attacker's host here: it has no lease, so --wait proves the knock.
    let home = f.lab.path("phone-home");
    std::fs::create_dir_all(&home).unwrap();
    let o = sesame_at_home(&f.lab, Host::Attacker, &home, &["import", uri]);
    assert!(o.status.success(), "{}", text(&o));
    let imported = String::from_utf8_lossy(&o.stdout);
    assert!(
        imported.contains("wrote ") && imported.contains("knock with: sesame open phone"),
        "{imported}"
    );
    let key = home.join(".config/sesame/phone.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    f.assert_closed(Family::V4, 22, "before the phone knocks");
    let mark = f.mark();
    let o = sesame_at_home(
        &f.lab,
        Host::Attacker,
        &home,
        &["open", "phone", "--wait", "--timeout", "3s"],
    );
    assert!(o.status.success(), "sesame open phone --wait: {}", text(&o));
    let attacker = f.lab.addr(Host::Attacker, Family::V4);
    expect_log(
        &f,
        mark,
        &[" granted client=phone ", &format!("source={attacker}")],
    );
    assert!(
        !f.connects(Host::Client, Family::V4, 22),
        "the phone's lease is the phone's"
    );
}
