use super::*;
use etherparse::PacketBuilder;

/// A tiny classic-BPF interpreter for the opcodes the filter uses; `proto` is what the kernel
/// returns for the SKF_AD_PROTOCOL ancillary load.
fn run_bpf(prog: &[(u16, u8, u8, u32)], proto: u16, pkt: &[u8]) -> u32 {
    let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
    let load = |off: usize, size: usize| -> Option<u32> {
        let b = pkt.get(off..off + size)?;
        Some(b.iter().fold(0u32, |acc, &v| (acc << 8) | u32::from(v)))
    };
    loop {
        let (code, jt, jf, k) = prog[pc];
        pc += 1;
        let jump = |cond: bool, pc: &mut usize| *pc += usize::from(if cond { jt } else { jf });
        match code {
            LD_H_ABS if k == (libc::SKF_AD_OFF + libc::SKF_AD_PROTOCOL) as u32 => {
                a = u32::from(proto)
            }
            LD_H_ABS => match load(k as usize, 2) {
                Some(v) => a = v,
                None => return 0,
            },
            LD_B_ABS => match load(k as usize, 1) {
                Some(v) => a = v,
                None => return 0,
            },
            LD_H_IND => match load((x + k) as usize, 2) {
                Some(v) => a = v,
                None => return 0,
            },
            LD_B_IND => match load((x + k) as usize, 1) {
                Some(v) => a = v,
                None => return 0,
            },
            LDX_B_MSH => match load(k as usize, 1) {
                Some(v) => x = 4 * (v & 0xf),
                None => return 0,
            },
            LDX_IMM => x = k,
            JEQ => jump(a == k, &mut pc),
            JGE => jump(a >= k, &mut pc),
            JGT => jump(a > k, &mut pc),
            JSET => jump(a & k != 0, &mut pc),
            AND => a &= k,
            JA => pc += k as usize,
            RET => return k,
            other => panic!("opcode {other:#x}"),
        }
    }
}

fn v4_udp(dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64)
        .udp(40000, dport)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn v6_udp(dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    let src = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let dst = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    PacketBuilder::ipv6(src, dst, 64)
        .udp(40000, dport)
        .write(&mut out, &[1, 2, 3])
        .unwrap();
    out
}

fn v4_tcp(dport: u16, syn: bool, ack: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut b =
        PacketBuilder::ipv4([198, 18, 0, 2], [198, 18, 0, 1], 64).tcp(40000, dport, 1, 64240);
    if syn {
        b = b.syn();
    }
    if ack {
        b = b.ack(5);
    }
    b.write(&mut out, &[]).unwrap();
    out
}

fn v6_tcp_syn(dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6([0x20; 16], [0x21; 16], 64)
        .tcp(40000, dport, 1, 64240)
        .syn()
        .write(&mut out, &[])
        .unwrap();
    out
}

#[test]
fn filter_passes_only_knock_range_udp_and_syn() {
    let prog = assemble(&filter_program(10000, 20000));
    assert!(prog.len() < 64);
    let pass = |proto, pkt: &[u8]| run_bpf(&prog, proto, pkt) != 0;
    assert!(pass(0x0800, &v4_udp(10000, b"x")));
    assert!(pass(0x0800, &v4_udp(20000, b"")));
    assert!(pass(0x0800, &v4_udp(15000, &[0; 136])));
    assert!(!pass(0x0800, &v4_udp(9999, b"x")));
    assert!(!pass(0x0800, &v4_udp(20001, b"x")));
    assert!(!pass(0x0800, &v4_udp(53, b"x")));
    assert!(pass(0x86dd, &v6_udp(12345)));
    assert!(!pass(0x86dd, &v6_udp(22)));
    assert!(pass(0x0800, &v4_tcp(12345, true, false)), "SYN");
    assert!(!pass(0x0800, &v4_tcp(12345, true, true)), "SYN-ACK");
    assert!(!pass(0x0800, &v4_tcp(12345, false, true)), "ACK");
    assert!(!pass(0x0800, &v4_tcp(12345, false, false)), "no flags");
    assert!(
        !pass(0x0800, &v4_tcp(22, true, false)),
        "SYN outside the range"
    );
    assert!(pass(0x86dd, &v6_tcp_syn(19999)));
    assert!(!pass(0x86dd, &v6_tcp_syn(20001)));
    // ARP and others.
    assert!(!pass(0x0806, &[0u8; 28]));
    // A non-first IPv4 fragment.
    let mut frag = v4_udp(12345, b"abc");
    frag[6] = 0x00;
    frag[7] = 0x10;
    assert!(!pass(0x0800, &frag));
    // IPv4 with options (IHL 6): the port is found after the options.
    let mut opts = v4_udp(12345, b"abc");
    opts.splice(20..20, [1u8, 1, 1, 1]);
    opts[0] = 0x46;
    assert!(pass(0x0800, &opts));
    // Truncated packets are dropped, never read out of bounds.
    assert!(!pass(0x0800, &v4_udp(12345, b"")[..21]));
}

#[test]
fn parse_extracts_what_the_tracker_needs() {
    let p = v4_udp(12345, &[9; 136]);
    let parsed = parse_ip(&p).unwrap();
    assert_eq!(parsed.source, "198.18.0.2".parse::<IpAddr>().unwrap());
    assert_eq!((parsed.proto, parsed.port), (Proto::Udp, 12345));
    assert_eq!(parsed.payload.unwrap().len(), 136);
    let syn = v4_tcp(2222, true, false);
    let t = parse_ip(&syn).unwrap();
    assert_eq!((t.proto, t.port, t.payload), (Proto::Tcp, 2222, None));
    assert!(parse_ip(&v4_tcp(2222, true, true)).is_none());
    let v6 = v6_udp(5555);
    let v6 = parse_ip(&v6).unwrap();
    assert!(v6.source.is_ipv6());
    for cut in 0..p.len() {
        let _ = parse_ip(&p[..cut]);
    }
    assert!(parse_ip(&[]).is_none());
    assert!(parse_ip(&[0x45; 3]).is_none());
}

/// Every kind of packet the filters must tell apart, to `port`: (ethertype, packet, whether a
/// filter admitting `port` passes it).
fn packets(port: u16) -> Vec<(u16, Vec<u8>, bool)> {
    let mut frag = v4_udp(port, b"abc");
    frag[6] = 0x00;
    frag[7] = 0x10;
    let mut opts = v4_udp(port, b"abc");
    opts.splice(20..20, [1u8, 1, 1, 1]);
    opts[0] = 0x46;
    vec![
        (0x0800, v4_udp(port, b"x"), true),
        (0x0800, v4_udp(port, &[0; 136]), true),
        (0x86dd, v6_udp(port), true),
        (0x0800, v4_tcp(port, true, false), true),
        (0x86dd, v6_tcp_syn(port), true),
        (0x0800, v4_tcp(port, true, true), false),
        (0x0800, v4_tcp(port, false, true), false),
        (0x0800, frag, false),
        (0x0800, opts, true),
        (0x0800, v4_udp(port, b"")[..21].to_vec(), false),
        (0x0806, vec![0u8; 28], false),
    ]
}

/// Ports to probe for a set: each port of it, its neighbours, the ends of the range.
fn probes(ports: &[u16]) -> Vec<u16> {
    let mut out = vec![0, 1, 22, 9999, 10000, 32767, 65534, 65535];
    for &p in ports {
        out.extend([p.wrapping_sub(1), p, p.wrapping_add(1)]);
    }
    out
}

fn check_classic(ports: &[u16]) -> usize {
    let prog = live_program(ports).expect("fits");
    for port in probes(ports) {
        let live = ports.binary_search(&port).is_ok();
        for (proto, pkt, passes) in packets(port) {
            let got = run_bpf(&prog, proto, &pkt) != 0;
            assert_eq!(
                got,
                live && passes,
                "port {port} (live {live}), ethertype {proto:#x}, {} bytes",
                pkt.len()
            );
        }
    }
    prog.len()
}

#[test]
fn live_program_admits_exactly_the_live_ports() {
    assert_eq!(check_classic(&[]), 22);
    check_classic(&[12345]);
    check_classic(&[0, 1, 2, 65535]);
    check_classic(&[10000, 10001, 10002, 10004, 20000, 32767]);
    // Random sets of every size up to what fits, with runs of consecutive ports.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for n in [2usize, 3, 5, 17, 64, 200, 600, 1000] {
        let mut ports: Vec<u16> = (0..n)
            .flat_map(|_| {
                let p = 10000 + (next() % 22000) as u16;
                let run = if next() % 4 == 0 { 3 } else { 1 };
                (0..run).map(move |i| p + i)
            })
            .collect();
        ports.sort_unstable();
        ports.dedup();
        if live_program(&ports).is_some() {
            check_classic(&ports);
        }
    }
}

#[test]
fn live_program_fits_up_to_about_a_thousand_ranges() {
    // Isolated ports: one range each. 4 instructions a range or a little less.
    let spaced = |n: u16| (0..n).map(|i| 10000 + 3 * i).collect::<Vec<u16>>();
    let fits = live_program(&spaced(1000)).map(|p| p.len());
    assert!(fits.is_some_and(|l| l <= MAX_INSNS), "{fits:?}");
    assert!(
        live_program(&spaced(1100)).is_none(),
        "over the kernel's limit"
    );
    // Consecutive ports cost one range: the whole knock range is one.
    let all: Vec<u16> = (10000..=32767).collect();
    assert!(live_program(&all).is_some_and(|p| p.len() < 30));
    assert_eq!(
        port_ranges(&[1, 2, 3, 5, 7, 8]),
        vec![(1, 3), (5, 5), (7, 8)]
    );
    assert_eq!(port_ranges(&[65534, 65535]), vec![(65534, 65535)]);
}

/// The eBPF program in the kernel (`BPF_PROG_TEST_RUN`): root only (skipped otherwise).
#[test]
fn ebpf_program_admits_exactly_the_live_ports_in_the_kernel() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: loading eBPF needs root");
        return;
    }
    for mmap in [true, false] {
        ebpf_checks(mmap);
    }
}

/// The checks of the test above, with the bitmap updated through a mapping or through bpf().
fn ebpf_checks(mmap: bool) {
    let e = match ebpf::Ebpf::load_with(mmap) {
        Ok(e) => e,
        Err(err) => panic!("the kernel refused the eBPF filter: {err}"),
    };
    let frame = |ethertype: u16, ip: &[u8]| {
        let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        f.extend(ethertype.to_be_bytes());
        f.extend_from_slice(ip);
        f
    };
    let run = |ports: &[u16]| {
        for port in probes(ports) {
            let live = ports.contains(&port);
            for (proto, pkt, passes) in packets(port) {
                let got = e.test_run(&frame(proto, &pkt)).unwrap() != 0;
                assert_eq!(
                    got,
                    live && passes,
                    "port {port} (live {live}), ethertype {proto:#x}, {} bytes",
                    pkt.len()
                );
            }
        }
    };
    assert_eq!(e.is_mapped(), mmap, "this kernel (5.5+) maps the bitmap");
    e.set(&[12345, 12346, 20000, 65535, 0]).unwrap();
    run(&[0, 12345, 12346, 20000, 65535]);
    // A new set: the old ports go, the new ones come.
    let writes = e.set(&[12346, 31000]).unwrap();
    assert!(writes >= 2);
    run(&[12346, 31000]);
    e.set(&[]).unwrap();
    run(&[]);
}
