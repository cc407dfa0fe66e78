//! Probes of a lab's network (`sesame-netprobe`): the protected TCP service, connection
//! attempts, held connections, and packet captures (tcpdump).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::lab::{Host, Lab};
use crate::pcap;
use crate::process::{Proc, bin, text};

/// An established TCP connection held by `sesame-netprobe hold` in some namespace.
#[derive(Debug)]
pub struct Held {
    proc: Proc,
    seq: u32,
}

impl Held {
    /// Exchanges one line over the held connection; true if the echo came back.
    pub fn ping(&mut self) -> bool {
        self.seq += 1;
        let word = format!("ping-{}", self.seq);
        let mark = self.proc.mark();
        if self.proc.write_line(&word).is_err() {
            return false;
        }
        let ok = format!("ok {word}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let lines = self.proc.lines();
            for l in lines.iter().skip(mark) {
                if *l == ok {
                    return true;
                }
                if l.starts_with("fail") {
                    return false;
                }
            }
            if self.proc.exited().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// The output of the holder so far.
    pub fn output(&self) -> String {
        self.proc.output()
    }
}

impl Lab {
    /// Starts the TCP service (greeting and echo) on `addrs` in the server namespace and waits
    /// until it listens.
    pub fn serve(&self, addrs: &[SocketAddr]) -> Proc {
        let mut args = vec!["serve".to_owned()];
        args.extend(addrs.iter().map(SocketAddr::to_string));
        let p = self.spawn(Host::Server, "service", bin("sesame-netprobe"), &args, &[]);
        p.expect(&["ready"], Duration::from_secs(10));
        p
    }

    /// True if a TCP connection from `from` to `to` succeeds and the greeting arrives within
    /// `timeout_ms`.
    pub fn connects(&self, from: Host, to: SocketAddr, timeout_ms: u64) -> bool {
        let o = self.run(
            from,
            bin("sesame-netprobe"),
            &[
                "connect".to_owned(),
                to.to_string(),
                "--timeout-ms".to_owned(),
                timeout_ms.to_string(),
            ],
        );
        match o.status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!("netprobe connect {to} from {from:?}: {}", text(&o)),
        }
    }

    /// True if a connection from `from` to `to` succeeds within `within`, trying again every
    /// 500 ms (each attempt sends a fresh SYN).
    pub fn connects_within(&self, from: Host, to: SocketAddr, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.connects(from, to, 500) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// Opens a connection from `from` to `to` and keeps it; panics if it cannot connect.
    pub fn hold(&self, from: Host, to: SocketAddr) -> Held {
        let p = self.spawn(
            from,
            "hold",
            bin("sesame-netprobe"),
            &["hold".to_owned(), to.to_string()],
            &[],
        );
        p.expect(&["connected"], Duration::from_secs(5));
        Held { proc: p, seq: 0 }
    }

    /// Runs `sesame-netprobe ARGS` in a namespace and returns its output.
    pub fn netprobe(&self, host: Host, args: &[String]) -> Output {
        self.run(host, bin("sesame-netprobe"), args)
    }

    /// Starts tcpdump on `iface` in a namespace, writing to `NAME.pcap` in the lab directory,
    /// and waits until it captures.
    pub fn capture(&self, host: Host, iface: &str, name: &str, filter: &str) -> Capture {
        let path = self.path(&format!("{name}.pcap"));
        let path_s = path.to_string_lossy().into_owned();
        let mut args = vec![
            "-i",
            iface,
            "-n",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-w",
            &path_s,
        ];
        if !filter.is_empty() {
            args.push(filter);
        }
        let proc = self.spawn(host, &format!("tcpdump {name}"), "tcpdump", &args, &[]);
        proc.expect(&["listening on"], Duration::from_secs(10));
        Capture { proc, path }
    }

    /// Polls a new connection from `from` to `to` every 250 ms until it fails, for at most
    /// `limit`. Returns the time from `since` to the first failure, or `None` if it never failed.
    pub fn wait_closed(
        &self,
        from: Host,
        to: SocketAddr,
        since: Instant,
        limit: Duration,
    ) -> Option<Duration> {
        while since.elapsed() < limit {
            if !self.connects(from, to, 400) {
                return Some(since.elapsed());
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        None
    }
}

/// A running tcpdump.
#[derive(Debug)]
pub struct Capture {
    proc: Proc,
    /// The pcap file.
    pub path: PathBuf,
}

impl Capture {
    /// Waits a moment for packets in flight, stops tcpdump and returns the file's packets.
    pub fn stop(mut self) -> Vec<pcap::Packet> {
        std::thread::sleep(Duration::from_millis(300));
        self.proc.signal(libc::SIGINT);
        if self.proc.wait_exit(Duration::from_secs(5)).is_none() {
            self.proc.kill9();
        }
        pcap::read_file(&self.path).unwrap_or_else(|e| {
            panic!(
                "cannot read {}: {e}; tcpdump said:\n{}",
                self.path.display(),
                self.proc.output()
            )
        })
    }
}
