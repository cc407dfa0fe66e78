//! Tests of the harness itself, without sesamed: the probes must tell "blocked" from "open"
//! under a hand-written nftables gate, captures and replays must carry the right packets, the
//! silence check must see a packet when the server does answer, and a lab must clean up.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use sesame_tests::pcap::L4;
use sesame_tests::{CLIENT_IF, Family, Host, Lab, SERVER_IF_ATTACKER, require_netns, signal};

/// A gate like sesamed's: established traffic passes, tcp/22 only for granted (source, port)
/// pairs whose element times out in the kernel.
fn gate(lab: &Lab) -> String {
    let rules = "table inet selftest {
    set granted4 { type ipv4_addr . inet_service; flags timeout; }
    set granted6 { type ipv6_addr . inet_service; flags timeout; }
    chain input {
        type filter hook input priority filter - 10; policy accept;
        ct state established,related accept
        ip saddr . tcp dport @granted4 accept
        ip6 saddr . tcp dport @granted6 accept
        tcp dport 22 drop
    }
}
";
    let path = lab.write("gate.nft", rules);
    lab.run_ok(Host::Server, "nft", &["-f", &path.to_string_lossy()])
}

#[test]
fn harness_probes_tell_blocked_from_open_under_an_nft_gate() {
    if !require_netns() {
        return;
    }
    let lab = Lab::new("h-gate");
    let s4 = SocketAddr::new(lab.addr(Host::Server, Family::V4), 22);
    let s6 = SocketAddr::new(lab.addr(Host::Server, Family::V6), 22);
    let _svc = lab.serve(&[s4, s6]);
    for (host, to) in [
        (Host::Client, s4),
        (Host::Client, s6),
        (Host::Attacker, s4),
        (Host::Attacker, s6),
    ] {
        assert!(
            lab.connects(host, to, 2000),
            "{host:?} -> {to} without a firewall"
        );
    }
    gate(&lab);
    for to in [s4, s6] {
        assert!(!lab.connects(Host::Client, to, 800), "gate must block {to}");
    }
    // A 3-second lease for the client only, as sesamed would add it.
    let client = lab.v4(Host::Client);
    let t0 = Instant::now();
    lab.run_ok(
        Host::Server,
        "nft",
        &[
            "add",
            "element",
            "inet",
            "selftest",
            "granted4",
            &format!("{{ {client} . 22 timeout 3s }}"),
        ],
    );
    assert!(lab.connects(Host::Client, s4, 800), "lease must open");
    assert!(!lab.connects(Host::Client, s6, 800), "IPv6 not granted");
    assert!(
        !lab.connects(Host::Attacker, s4, 800),
        "attacker not granted"
    );
    let mut held = lab.hold(Host::Client, s4);
    assert!(held.ping(), "{}", held.output());
    let closed = lab
        .wait_closed(Host::Client, s4, t0, Duration::from_secs(8))
        .expect("the lease never ended");
    assert!(
        closed >= Duration::from_secs(2) && closed <= Duration::from_secs(5),
        "closed after {closed:?}"
    );
    assert!(
        held.ping(),
        "established connection must survive: {}",
        held.output()
    );
}

#[test]
fn harness_capture_replay_scan_and_silence_detector() {
    if !require_netns() {
        return;
    }
    let lab = Lab::new("h-pcap");
    let server = lab.addr(Host::Server, Family::V4);
    let server6 = lab.addr(Host::Server, Family::V6);
    let to = |port: u16| SocketAddr::new(server, port).to_string();
    let cap = lab.capture(
        Host::Client,
        CLIENT_IF,
        "client",
        "udp or tcp or icmp or icmp6",
    );
    for args in [
        vec![
            "udp".to_owned(),
            to(20001),
            "--len".into(),
            "136".into(),
            "--count".into(),
            "2".into(),
        ],
        vec!["udp".to_owned(), to(20003), "--len".into(), "0".into()],
        vec!["syn".to_owned(), to(20002)],
        vec![
            "udp".to_owned(),
            SocketAddr::new(server6, 20004).to_string(),
            "--len".into(),
            "5".into(),
        ],
    ] {
        let o = lab.netprobe(Host::Client, &args);
        assert!(o.status.success(), "{args:?}: {}", sesame_tests::text(&o));
    }
    let packets = cap.stop();
    let sent: Vec<_> = packets.iter().filter(|p| p.dst == server).collect();
    let udp: Vec<(u16, usize)> = sent
        .iter()
        .filter_map(|p| match &p.l4 {
            L4::Udp { dport, payload, .. } => Some((*dport, payload.len())),
            _ => None,
        })
        .collect();
    assert_eq!(
        udp,
        vec![(20001, 136), (20001, 136), (20003, 0)],
        "{packets:#?}"
    );
    assert!(
        sent.iter()
            .any(|p| p.is_syn() && matches!(p.l4, L4::Tcp { dport: 20002, .. })),
        "{packets:#?}"
    );
    assert!(
        packets.iter().any(|p| p.dst == server6
            && matches!(&p.l4, L4::Udp { dport: 20004, payload, .. } if payload.len() == 5)),
        "{packets:#?}"
    );
    // Without a firewall the server answers (RST, ICMP port unreachable): the silence check
    // of the scenarios would see it.
    let answers: Vec<_> = packets
        .iter()
        .filter(|p| (p.src == server || p.src == server6) && !p.is_link_control())
        .collect();
    assert!(
        answers.iter().any(|p| matches!(p.l4, L4::Icmp { .. })),
        "no ICMP answer seen: {packets:#?}"
    );
    assert!(
        answers
            .iter()
            .any(|p| matches!(p.l4, L4::Tcp { flags, .. } if flags & sesame_tests::pcap::RST != 0)),
        "no RST seen: {packets:#?}"
    );

    // Replay from the attacker: the server sees the same datagrams and SYNs, from the attacker.
    let cap = lab.capture(Host::Server, SERVER_IF_ATTACKER, "replayed", "udp or tcp");
    let o = lab.netprobe(
        Host::Attacker,
        &[
            "replay".to_owned(),
            lab.path("client.pcap").to_string_lossy().into_owned(),
            server.to_string(),
        ],
    );
    assert!(o.status.success(), "{}", sesame_tests::text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("replayed 3 udp, 1 tcp"),
        "{}",
        sesame_tests::text(&o)
    );
    let replayed = cap.stop();
    let attacker: IpAddr = lab.addr(Host::Attacker, Family::V4);
    let got: Vec<(u16, Vec<u8>)> = replayed
        .iter()
        .filter(|p| p.src == attacker && p.dst == server)
        .filter_map(|p| match &p.l4 {
            L4::Udp { dport, payload, .. } => Some((*dport, payload.clone())),
            _ => None,
        })
        .collect();
    let want: Vec<(u16, Vec<u8>)> = sent
        .iter()
        .filter_map(|p| match &p.l4 {
            L4::Udp { dport, payload, .. } => Some((*dport, payload.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(got, want);
    assert!(
        replayed.iter().any(|p| p.src == attacker
            && p.is_syn()
            && matches!(p.l4, L4::Tcp { dport: 20002, .. })),
        "{replayed:#?}"
    );

    // A scan reaches every port of its range once per round.
    let cap = lab.capture(Host::Server, SERVER_IF_ATTACKER, "scan", "udp");
    let o = lab.netprobe(
        Host::Attacker,
        &[
            "scan".to_owned(),
            server.to_string(),
            "20000".into(),
            "20099".into(),
            "--rounds".into(),
            "2".into(),
            // Paced, so tcpdump on a loaded machine does not drop any.
            "--pps".into(),
            "2000".into(),
        ],
    );
    assert!(o.status.success(), "{}", sesame_tests::text(&o));
    let scanned = cap.stop();
    let mut ports: Vec<u16> = scanned
        .iter()
        .filter(|p| p.src == attacker)
        .filter_map(|p| match p.l4 {
            L4::Udp { dport, .. } => Some(dport),
            _ => None,
        })
        .collect();
    assert_eq!(ports.len(), 200);
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports, (20000..=20099).collect::<Vec<u16>>());
}

#[test]
fn harness_lab_cleans_up_namespaces_processes_and_files() {
    if !require_netns() {
        return;
    }
    let lab = Lab::new("h-clean");
    let names = [
        lab.server_ns.clone(),
        lab.client_ns.clone(),
        lab.attacker_ns.clone(),
    ];
    let dir = lab.dir.clone();
    // A process the test forgets about: the lab must kill it.
    let o = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ip netns exec {} sleep 600 >/dev/null 2>&1 & echo $!",
            lab.server_ns
        ))
        .output()
        .unwrap();
    let pid: u32 = String::from_utf8_lossy(&o.stdout).trim().parse().unwrap();
    // Wait until it runs in the namespace (`ip netns exec` may not have switched yet).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let o = Command::new("ip")
            .args(["netns", "identify", &pid.to_string()])
            .output()
            .unwrap();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if String::from_utf8_lossy(&o.stdout).trim() == lab.server_ns && comm.trim() == "sleep" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} never ran sleep in {}",
            lab.server_ns
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(lab);
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for n in &names {
        assert!(!list.contains(n.as_str()), "{n} still exists");
    }
    assert!(!dir.exists(), "{} still exists", dir.display());
    // The orphan is killed (it may linger briefly as a zombie of the shell's reaper).
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = !state.is_empty() && !state.contains(") Z");
        if !alive {
            break;
        }
        if Instant::now() >= deadline {
            signal(pid, libc::SIGKILL);
            panic!("pid {pid} survived the lab: {state}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
