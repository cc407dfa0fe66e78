//! The floor: the same packets as sesame's knock, one `nft add element` (or one netlink add),
//! no daemon logic; its listener and its client (`sesame-netbench floor-send`).

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::Result;
use crate::lab::{Bed, SERVICE_PORT};
use crate::util::{enter_netns, unix_secs_f64};

/// The floor's four ports (three knocks and a 136-byte datagram, like sesame's knock).
pub(crate) const FLOOR_PORTS: [u16; 4] = [20001, 20002, 20003, 20004];
/// Size of sesame's payload datagram.
const PAYLOAD_LEN: usize = 136;

/// `sesame-netbench floor-send ADDR PORT...`: one empty UDP datagram to each port but the
/// last, 136 bytes to it.
pub(crate) fn floor_send(dest: Ipv4Addr, ports: &[u16]) -> Result<()> {
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    let payload = [0u8; PAYLOAD_LEN];
    for (i, port) in ports.iter().enumerate() {
        let data: &[u8] = if i + 1 == ports.len() { &payload } else { &[] };
        sock.send_to(data, SocketAddrV4::new(dest, *port))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One grant of the floor: source, first and last datagram received, nft exited (wall, s).
pub(crate) type FloorEvent = (String, f64, f64, f64);

pub(crate) struct FloorListener {
    pub(crate) stop: Arc<AtomicBool>,
    /// Per grant: source, first and last datagram received, nft exited (wall clock, s).
    pub(crate) events: Arc<Mutex<Vec<FloorEvent>>>,
    pub(crate) thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl FloorListener {
    /// `netlink`: add the element over netlink (one exclusive add, as sesamed does for a new
    /// lease) instead of running `nft add element`.
    pub(crate) fn start(bed: &Bed, nft: &Path, lease: u32, netlink: bool) -> Result<FloorListener> {
        let ns = bed.server_ns().to_owned();
        let server = bed.server;
        let nft = nft.to_path_buf();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<()>>();
        let stop2 = Arc::clone(&stop);
        let events = Arc::new(Mutex::new(Vec::new()));
        let events2 = Arc::clone(&events);
        let thread = std::thread::spawn(move || -> Result<()> {
            let setup = (|| -> Result<Vec<UdpSocket>> {
                enter_netns(&ns)?;
                FLOOR_PORTS
                    .iter()
                    .map(|p| {
                        let s = UdpSocket::bind(SocketAddrV4::new(server, *p))
                            .map_err(|e| format!("bind {server}:{p}: {e}"))?;
                        s.set_read_timeout(Some(Duration::from_millis(200)))
                            .map_err(|e| e.to_string())?;
                        Ok(s)
                    })
                    .collect()
            })();
            let socks = match setup {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.clone()));
                    return Err(e);
                }
            };
            let mut buf = [0u8; 2048];
            'outer: while !stop2.load(Ordering::Relaxed) {
                let Ok((_, first)) = socks[0].recv_from(&mut buf) else {
                    continue;
                };
                let first_at = unix_secs_f64(SystemTime::now());
                for s in &socks[1..] {
                    match s.recv_from(&mut buf) {
                        Ok((_, from)) if from.ip() == first.ip() => {}
                        _ => continue 'outer,
                    }
                }
                let last_at = unix_secs_f64(SystemTime::now());
                let ip = first.ip();
                let element = format!("{{ {ip} . tcp . {SERVICE_PORT} timeout {lease}s }}");
                if netlink {
                    use sesame_server::netlink::{ElementOp, apply, element_key};
                    let key = element_key(ip, libc::IPPROTO_TCP as u8, SERVICE_PORT);
                    let op = ElementOp::Create {
                        timeout_ms: u64::from(lease) * 1000,
                    };
                    apply("floor", "granted4", &key, &[op])
                        .map_err(|e| format!("netlink (grant {element}): {e}"))?;
                } else {
                    let st = Command::new(&nft)
                        .args(["add", "element", "inet", "floor", "granted4", &element])
                        .stdin(Stdio::null())
                        .status()
                        .map_err(|e| format!("nft: {e}"))?;
                    if !st.success() {
                        return Err(format!("nft (grant {element}): {st}"));
                    }
                }
                let done_at = unix_secs_f64(SystemTime::now());
                if let Ok(mut ev) = events2.lock() {
                    ev.push((ip.to_string(), first_at, last_at, done_at));
                }
            }
            Ok(())
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the floor's listener did not start".to_owned())??;
        Ok(FloorListener {
            stop,
            events,
            thread: Some(thread),
        })
    }
}

impl Drop for FloorListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) fn floor_ruleset() -> String {
    format!(
        "table inet floor {{
    set granted4 {{ type ipv4_addr . inet_proto . inet_service; flags timeout; }}
    chain gate {{
        type filter hook input priority filter - 10; policy accept;
        ct state established,related accept
        iif lo accept
        ip saddr . meta l4proto . th dport @granted4 accept
        meta l4proto . th dport {{ tcp . {SERVICE_PORT} }} drop
    }}
}}
"
    )
}
