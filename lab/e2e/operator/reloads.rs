//! Reloads (`sesamed client add/remove` while the daemon runs, `sesamed reload`, SIGHUP): they
//! add and remove clients, keep leases and replay state, and refuse a broken configuration.

use sesame_tests::{Family, Host, require_netns, text};

use crate::common::Fixture;

use super::{
    assert_reloaded, captured_knock, expect_log, expect_reject, knock_granted, knock_refused,
    replay, sesamed_ok, sesamed_with_config, status_json,
};

#[test]
fn reload_adds_and_removes_clients_and_keeps_leases_and_replay_state() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("op-reload");
    // Long leases (they must outlive the reloads) and 60-second steps (the replayed knock must
    // still be in the skew window, so the daemon judges it: a replay).
    f.spec.lease_seconds = 60;
    f.spec.knock.step_seconds = 60;
    f.start();
    let attacker_v4 = f.lab.addr(Host::Attacker, Family::V4).to_string();
    let laptop_profile = f.profile.clone();
    let knock = captured_knock(&f, &laptop_profile, "laptop-knock", false);

    // A client added while the daemon runs can knock right after (from the attacker's host,
    // so its lease is told apart from the laptop's).
    let phone = f.lab.gen_key("phone");
    let phone_profile = f.write_profile("phone", Family::V4, &phone.path, |_| {});
    let mark = f.mark();
    let out = sesamed_ok(
        &f,
        &[
            "client",
            "add",
            "phone",
            "--public-key",
            &phone.public,
            "--allow",
            "tcp/22",
        ],
    );
    assert!(out.contains("added client 'phone'"), "{out}");
    assert_reloaded(&out, 2, "phone", "none");
    expect_log(&f, mark, &["reloaded: 2 clients"]);
    knock_granted(&f, Host::Attacker, &phone_profile, "phone");

    // The laptop's lease and its replay state survived the reload.
    let s = status_json(&f);
    let leases: Vec<(String, String)> = s["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["client"].as_str().unwrap().to_owned(),
                l["address"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let client_v4 = f.lab.addr(Host::Client, Family::V4).to_string();
    assert!(
        leases.contains(&("laptop".to_owned(), client_v4.clone())),
        "the laptop's lease survives the reload: {s}"
    );
    assert!(
        f.connects(Host::Client, Family::V4, 22),
        "the laptop's lease still lets it in after the reload; ruleset:\n{}",
        f.lab.server_ruleset()
    );
    let mark = f.mark();
    replay(&f, Host::Client, &knock);
    expect_reject(&f, mark, f.lab.addr(Host::Client, Family::V4), "replay");
    f.assert_no_grant(mark, "a knock replayed after the reload");

    // A removed client's lease ends at once, and it cannot knock any more.
    assert!(f.lab.server_ruleset().contains(&attacker_v4));
    let mark = f.mark();
    let out = sesamed_ok(&f, &["client", "remove", "phone"]);
    assert!(out.contains("removed client 'phone'"), "{out}");
    assert_reloaded(&out, 1, "none", "phone");
    expect_log(&f, mark, &["lease ended: client removed", "client=phone"]);
    assert!(
        f.closes(Host::Attacker, Family::V4, 22),
        "the removed client's lease ended"
    );
    let ruleset = f.lab.server_ruleset();
    assert!(
        !ruleset.contains(&attacker_v4),
        "the removed client's element is gone from the set:\n{ruleset}"
    );
    knock_refused(
        &f,
        Host::Attacker,
        &phone_profile,
        "a removed client knocks",
    );
    assert!(
        f.connects(Host::Client, Family::V4, 22),
        "removing the phone left the laptop's lease alone"
    );

    // SIGHUP re-reads the file too: a client added by hand, then removed by hand.
    let tablet = f.lab.gen_key("tablet");
    let tablet_profile = f.write_profile("tablet", Family::V4, &tablet.path, |_| {});
    let before = std::fs::read_to_string(&f.config).unwrap();
    std::fs::write(
        &f.config,
        format!(
            "{before}\n[[client]]\nname = \"tablet\"\npublic_key = \"{}\"\n",
            tablet.public
        ),
    )
    .unwrap();
    let mark = f.mark();
    f.daemon().signal(libc::SIGHUP);
    expect_log(
        &f,
        mark,
        &["reloaded: 2 clients (added: tablet; removed: none)"],
    );
    knock_granted(&f, Host::Attacker, &tablet_profile, "tablet");
    std::fs::write(&f.config, &before).unwrap();
    let mark = f.mark();
    f.daemon().signal(libc::SIGHUP);
    expect_log(
        &f,
        mark,
        &["reloaded: 1 client (added: none; removed: tablet)"],
    );
    expect_log(&f, mark, &["lease ended: client removed", "client=tablet"]);
    assert!(
        f.closes(Host::Attacker, Family::V4, 22),
        "the lease of the client removed by SIGHUP ended"
    );
    knock_refused(
        &f,
        Host::Attacker,
        &tablet_profile,
        "a client removed by SIGHUP",
    );

    // Through all of it the laptop kept working, and its replay state is still there.
    let mark = f.mark();
    replay(&f, Host::Attacker, &knock);
    expect_reject(&f, mark, f.lab.addr(Host::Attacker, Family::V4), "replay");
    knock_granted(&f, Host::Client, &laptop_profile, "laptop");
    let s = status_json(&f);
    let names: Vec<&str> = s["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["laptop"], "{s}");
}

#[test]
fn a_configuration_with_errors_is_refused_and_the_old_one_keeps_serving() {
    if !require_netns() {
        return;
    }
    let mut f = Fixture::new("op-refuse");
    f.start();
    let good = std::fs::read_to_string(&f.config).unwrap();
    let laptop_profile = f.profile.clone();
    let ghost = f.lab.gen_key("ghost");
    let ghost_profile = f.write_profile("ghost", Family::V4, &ghost.path, |_| {});

    // A syntax error: `sesamed reload` cannot even read the control socket's path from it.
    std::fs::write(
        &f.config,
        good.replace("lease_seconds = 3", "lease_seconds = \"three\""),
    )
    .unwrap();
    let o = sesamed_with_config(&f, &["reload"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("sesamed.toml: line ") && err.contains("lease_seconds"),
        "{err}"
    );
    // SIGHUP with the same file: the daemon refuses it and says so.
    let mark = f.mark();
    f.daemon().signal(libc::SIGHUP);
    let line = expect_log(&f, mark, &["reload refused"]);
    assert!(line.contains("lease_seconds"), "{line}");
    assert!(
        f.daemon.as_mut().unwrap().exited().is_none(),
        "sesamed still runs"
    );
    knock_granted(&f, Host::Client, &laptop_profile, "laptop");

    // A file the command line accepts but the daemon cannot load (a PSK file that is not
    // there): `sesamed reload` exits 1 with the daemon's reason.
    std::fs::write(
        &f.config,
        format!(
            "{good}\n[[client]]\nname = \"ghost\"\npublic_key = \"{}\"\npsk_file = \"missing.psk\"\n",
            ghost.public
        ),
    )
    .unwrap();
    let mark = f.mark();
    let o = sesamed_with_config(&f, &["reload"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("refused the reload") && err.contains("missing.psk"),
        "{err}"
    );
    let line = expect_log(&f, mark, &["reload refused"]);
    assert!(line.contains("missing.psk"), "{line}");
    // The old configuration serves: the laptop opens, the ghost does not exist.
    knock_granted(&f, Host::Client, &laptop_profile, "laptop");
    knock_refused(
        &f,
        Host::Attacker,
        &ghost_profile,
        "a client of a refused configuration",
    );
    let s = status_json(&f);
    assert_eq!(s["clients"].as_array().unwrap().len(), 1, "{s}");

    // Fixed, it loads.
    std::fs::write(&f.config, &good).unwrap();
    let out = sesamed_ok(&f, &["reload"]);
    assert_reloaded(&out, 1, "none", "none");
}
