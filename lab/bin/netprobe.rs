//! `sesame-netprobe`: the network probes of the end-to-end tests (std and socket2 only).
//!
//! ```text
//! sesame-netprobe serve ADDR...                    TCP service: greeting line, then echo
//! sesame-netprobe connect ADDR [--timeout-ms N]    exit 0 iff connected and greeted, else 1
//! sesame-netprobe hold ADDR [--timeout-ms N]       connect, print `connected`; for each stdin
//!                                                  line, send it and print `ok LINE` when the
//!                                                  echo comes back (else `fail LINE: why`, exit 1)
//! sesame-netprobe replay PCAP DEST [--delay-ms N]  re-send every UDP datagram (same payload,
//!                                                  same destination port) and every TCP SYN (as
//!                                                  a non-blocking connect) whose destination is
//!                                                  DEST, in capture order
//! sesame-netprobe scan DEST LO HI [--rounds N] [--duration-ms N] [--pps N] [--len N]
//!                                                  UDP datagrams to every port LO..=HI, in order,
//!                                                  for N rounds or until the duration has passed
//! sesame-netprobe udp ADDR [--len N] [--count N]   random datagrams to one port
//! sesame-netprobe syn ADDR                         one SYN (non-blocking connect), abandoned
//! sesame-netprobe pcap FILE                        print the packets of a capture
//! ```
//!
//! Exit status: 0 success, 1 probe failed (connect/hold), 2 usage or system error.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use sesame_tests::{Args, pcap};
use socket2::{Domain, Protocol, Socket, Type};

const GREETING: &str = "sesame-netprobe hello";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sesame-netprobe: {e}");
            ExitCode::from(2)
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn addr(s: &str) -> Result<SocketAddr> {
    s.parse().map_err(|_| format!("not an address: {s}"))
}

fn run(args: &[String]) -> Result<ExitCode> {
    let (cmd, rest) = args
        .split_first()
        .ok_or("usage: sesame-netprobe COMMAND ...")?;
    let a = Args::parse(rest, &[])?;
    match cmd.as_str() {
        "serve" => serve(&a),
        "connect" => connect(&a),
        "hold" => hold(&a),
        "replay" => replay(&a),
        "scan" => scan(&a),
        "udp" => udp(&a),
        "syn" => syn_once(&a),
        "pcap" => print_pcap(&a),
        other => Err(format!("unknown command {other}")),
    }
}

fn serve(a: &Args) -> Result<ExitCode> {
    if a.positional.is_empty() {
        return Err("serve needs at least one ADDR".into());
    }
    let mut listeners = Vec::new();
    for s in &a.positional {
        let sa = addr(s)?;
        let sock = Socket::new(Domain::for_address(sa), Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| e.to_string())?;
        sock.set_reuse_address(true).map_err(|e| e.to_string())?;
        if sa.is_ipv6() {
            sock.set_only_v6(true).map_err(|e| e.to_string())?;
        }
        sock.bind(&sa.into())
            .map_err(|e| format!("bind {sa}: {e}"))?;
        sock.listen(64).map_err(|e| format!("listen {sa}: {e}"))?;
        println!("listening {sa}");
        listeners.push(TcpListener::from(sock));
    }
    println!("ready");
    std::io::stdout().flush().ok();
    let mut threads = Vec::new();
    for l in listeners {
        threads.push(std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { continue };
                std::thread::spawn(move || echo(conn));
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(ExitCode::SUCCESS)
}

fn echo(mut conn: TcpStream) {
    let peer = conn.peer_addr().map(|p| p.to_string()).unwrap_or_default();
    println!("accepted {peer}");
    std::io::stdout().flush().ok();
    if writeln!(conn, "{GREETING}").is_err() {
        return;
    }
    let Ok(read) = conn.try_clone() else { return };
    for line in BufReader::new(read).lines() {
        let Ok(line) = line else { break };
        if writeln!(conn, "{line}").is_err() {
            break;
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
}

/// Connects and reads the greeting.
fn open(to: SocketAddr, timeout: Duration) -> std::io::Result<(TcpStream, BufReader<TcpStream>)> {
    let s = TcpStream::connect_timeout(&to, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.trim_end() != GREETING {
        return Err(std::io::Error::other(format!(
            "unexpected greeting {line:?}"
        )));
    }
    Ok((s, r))
}

fn connect(a: &Args) -> Result<ExitCode> {
    let to = addr(a.pos(0, "ADDR")?)?;
    let timeout = Duration::from_millis(a.num("timeout-ms", 1000)?.max(1));
    match open(to, timeout) {
        Ok(_) => {
            println!("connected {to}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("failed {to}: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn hold(a: &Args) -> Result<ExitCode> {
    let to = addr(a.pos(0, "ADDR")?)?;
    let timeout = Duration::from_millis(a.num("timeout-ms", 3000)?.max(1));
    let (mut s, mut r) = match open(to, timeout) {
        Ok(c) => c,
        Err(e) => {
            println!("fail connect {to}: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let local = s.local_addr().map(|l| l.to_string()).unwrap_or_default();
    println!("connected {local} -> {to}");
    std::io::stdout().flush().ok();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let result = writeln!(s, "{line}").and_then(|()| {
            let mut back = String::new();
            r.read_line(&mut back)?;
            if back.trim_end() == line {
                Ok(())
            } else {
                Err(std::io::Error::other(format!("echo was {back:?}")))
            }
        });
        match result {
            Ok(()) => println!("ok {line}"),
            Err(e) => {
                println!("fail {line}: {e}");
                return Ok(ExitCode::from(1));
            }
        }
        std::io::stdout().flush().ok();
    }
    Ok(ExitCode::SUCCESS)
}

/// Starts a connect and abandons it once the SYN is out.
fn syn(dest: SocketAddr) -> Result<Socket> {
    let sock = Socket::new(Domain::for_address(dest), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| e.to_string())?;
    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
    match sock.connect(&dest.into()) {
        Ok(()) => Ok(sock),
        Err(e)
            if e.raw_os_error() == Some(libc::EINPROGRESS)
                || e.kind() == std::io::ErrorKind::WouldBlock =>
        {
            Ok(sock)
        }
        Err(e) => Err(format!("connect {dest}: {e}")),
    }
}

fn udp_socket(dest: IpAddr) -> Result<UdpSocket> {
    let bind: SocketAddr = if dest.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    UdpSocket::bind(bind).map_err(|e| e.to_string())
}

/// `send_to`, retrying a few times when the kernel is short of buffers.
fn send(sock: &UdpSocket, data: &[u8], to: SocketAddr) -> Result<()> {
    let mut tries = 0;
    loop {
        match sock.send_to(data, to) {
            Ok(_) => return Ok(()),
            Err(e)
                if tries < 50
                    && (e.raw_os_error() == Some(libc::ENOBUFS)
                        || e.raw_os_error() == Some(libc::EAGAIN)) =>
            {
                tries += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(e) => return Err(format!("send to {to}: {e}")),
        }
    }
}

fn replay(a: &Args) -> Result<ExitCode> {
    let file = a.pos(0, "PCAP")?;
    let dest: IpAddr = a
        .pos(1, "DEST")?
        .parse()
        .map_err(|_| "DEST must be an IP address".to_owned())?;
    let delay = Duration::from_millis(a.num("delay-ms", 0)?);
    let packets = pcap::read_file(std::path::Path::new(file))?;
    let sock = udp_socket(dest)?;
    let mut held = Vec::new();
    let (mut udp_n, mut tcp_n) = (0, 0);
    for p in packets.iter().filter(|p| p.dst == dest) {
        match &p.l4 {
            pcap::L4::Udp { dport, payload, .. } => {
                if udp_n + tcp_n > 0 && !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                send(&sock, payload, SocketAddr::new(dest, *dport))?;
                println!("sent udp/{dport} {} bytes", payload.len());
                udp_n += 1;
            }
            pcap::L4::Tcp { dport, .. } if p.is_syn() => {
                if udp_n + tcp_n > 0 && !delay.is_zero() {
                    std::thread::sleep(delay);
                }
                held.push(syn(SocketAddr::new(dest, *dport))?);
                println!("sent tcp/{dport} SYN");
                tcp_n += 1;
            }
            _ => {}
        }
    }
    // Keep the connecting sockets a moment so their SYNs certainly leave.
    std::thread::sleep(Duration::from_millis(100));
    drop(held);
    println!("replayed {udp_n} udp, {tcp_n} tcp");
    Ok(ExitCode::SUCCESS)
}

fn scan(a: &Args) -> Result<ExitCode> {
    let dest: IpAddr = a
        .pos(0, "DEST")?
        .parse()
        .map_err(|_| "DEST must be an IP address".to_owned())?;
    let lo: u16 = a.pos(1, "LO")?.parse().map_err(|_| "bad LO".to_owned())?;
    let hi: u16 = a.pos(2, "HI")?.parse().map_err(|_| "bad HI".to_owned())?;
    let rounds = a.num("rounds", 1)?;
    let duration = Duration::from_millis(a.num("duration-ms", 0)?);
    let pps = a.num("pps", 5000)?.max(1);
    let len = usize::try_from(a.num("len", 0)?).map_err(|e| e.to_string())?;
    let sock = udp_socket(dest)?;
    let data = vec![0u8; len];
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut round = 0;
    loop {
        for port in lo..=hi {
            send(&sock, &data, SocketAddr::new(dest, port))?;
            sent += 1;
            // Pace: never run ahead of `pps`.
            let due = Duration::from_secs_f64(sent as f64 / pps as f64);
            let el = start.elapsed();
            if due > el {
                std::thread::sleep(due - el);
            }
        }
        round += 1;
        let more = if duration.is_zero() {
            round < rounds
        } else {
            start.elapsed() < duration
        };
        if !more {
            break;
        }
    }
    println!(
        "scanned {sent} datagrams in {round} rounds in {:?}",
        start.elapsed()
    );
    Ok(ExitCode::SUCCESS)
}

fn udp(a: &Args) -> Result<ExitCode> {
    let to = addr(a.pos(0, "ADDR")?)?;
    let len = usize::try_from(a.num("len", 32)?).map_err(|e| e.to_string())?;
    let count = a.num("count", 1)?;
    let sock = udp_socket(to.ip())?;
    for _ in 0..count {
        let mut data = vec![0u8; len];
        sesame_keys::fill_random(&mut data);
        send(&sock, &data, to)?;
    }
    println!("sent {count} datagrams of {len} bytes to {to}");
    Ok(ExitCode::SUCCESS)
}

fn syn_once(a: &Args) -> Result<ExitCode> {
    let to = addr(a.pos(0, "ADDR")?)?;
    let s = syn(to)?;
    std::thread::sleep(Duration::from_millis(100));
    drop(s);
    println!("sent SYN to {to}");
    Ok(ExitCode::SUCCESS)
}

fn print_pcap(a: &Args) -> Result<ExitCode> {
    for p in pcap::read_file(std::path::Path::new(a.pos(0, "FILE")?))? {
        println!("{p}");
    }
    Ok(ExitCode::SUCCESS)
}
