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
