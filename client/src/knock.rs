//! Planning and sending a knock.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use anyhow::{Context, bail};
use sesame_proto::{ClientKeys, KnockRequest, Profile, Service, UnixMillis, plan_knock};

pub use sesame_net::{Family, resolve, resolve_each_family, send};
pub use sesame_proto::KnockPlan;
pub use sesame_proto::knock::{Packet, PacketKind};

/// The address a knock is bound to (the address the server is asked to open), and how it was
/// found; or why there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// The address put in the payload (`None`: the server opens the packets' source).
    pub address: Option<IpAddr>,
    /// How it was found, or why there is none (for messages).
    pub how: String,
}

impl Binding {
    /// Whether the knock names an address, so that it is useless to anyone else.
    pub fn is_bound(&self) -> bool {
        self.address.is_some()
    }
}

/// This host's source address toward `target` (no packet is sent: a connected UDP socket
/// only asks the routing table).
pub fn local_source(target: IpAddr) -> std::io::Result<IpAddr> {
    let bind: SocketAddr = match target {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let sock = UdpSocket::bind(bind)?;
    sock.connect(SocketAddr::new(target, 9))?;
    Ok(sock.local_addr()?.ip())
}

/// Asks the STUN server `stun` (`host:port`, resolved in the family of `target`) for this
/// host's public address: a Binding request, retransmitted after 0.4, 0.8 and 1.6 s.
pub fn stun_discover(stun: &str, target: IpAddr) -> anyhow::Result<IpAddr> {
    use sesame_proto::stun;
    let server = stun
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve the STUN server '{stun}'"))?
        .find(|a| a.is_ipv4() == target.is_ipv4())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the STUN server '{stun}' has no {} address",
                if target.is_ipv4() { "IPv4" } else { "IPv6" }
            )
        })?;
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let sock = UdpSocket::bind(bind).context("cannot open a UDP socket")?;
    sock.connect(server)
        .with_context(|| format!("cannot reach the STUN server {server}"))?;
    let mut tid = [0u8; stun::TRANSACTION_ID_LEN];
    sesame_keys::fill_random(&mut tid);
    let request = stun::binding_request(&tid);
    let mut buf = [0u8; 1500];
    let mut last_error = None;
    for wait_ms in [400u64, 800, 1600] {
        sock.send(&request)
            .with_context(|| format!("cannot send to the STUN server {server}"))?;
        let deadline = std::time::Instant::now() + Duration::from_millis(wait_ms);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left))?;
            match sock.recv(&mut buf) {
                Ok(n) => match stun::parse_binding_response(&buf[..n], &tid) {
                    Ok(mapped) => return Ok(mapped.ip()),
                    // Someone else's answer, or garbage: keep waiting.
                    Err(stun::StunError::OtherTransaction | stun::StunError::NotStun) => {}
                    Err(e) => last_error = Some(e),
                },
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => {
                    return Err(anyhow::Error::new(e).context(format!("STUN server {server}")));
                }
            }
        }
    }
    match last_error {
        Some(e) => bail!("STUN server {server}: {e}"),
        None => bail!("the STUN server {server} did not answer within 2.8 s"),
    }
}

/// Chooses the address to bind a knock to `target`: `--allow-ip`, else (with `stun` in the
/// profile) what the STUN server reports, or an error if it reports nothing usable, else this
/// host's source address toward `target` if it is public.
///
/// A STUN answer is not authenticated: someone on the path can forge it. A forged address
/// only makes the server refuse the knock (it names another address than its source); the
/// client sends nothing that stays valid later for it (see `wait::probe_shifts`).
pub fn choose_binding(
    allow_ip: Option<IpAddr>,
    bind_address: bool,
    stun: Option<&str>,
    target: IpAddr,
) -> anyhow::Result<Binding> {
    if let Some(a) = allow_ip {
        return Ok(Binding {
            address: Some(a),
            how: "--allow-ip".into(),
        });
    }
    if !bind_address {
        return Ok(Binding {
            address: None,
            how: "not bound (bind_address = false or --no-bind)".into(),
        });
    }
    if let Some(stun) = stun {
        // The profile asks for STUN: without its answer, do not quietly knock unbound (a
        // knock anyone can use); the user decides with --no-bind or --allow-ip.
        return match stun_discover(stun, target) {
            Ok(a) if a.is_ipv4() == target.is_ipv4() => Ok(Binding {
                address: Some(a),
                how: format!("the public address STUN ({stun}) reported"),
            }),
            Ok(a) => Err(anyhow::anyhow!(
                "STUN ({stun}) reported {a}, not an address of the server's family ({target}); knock with --allow-ip ADDR, or --no-bind to send no address (anyone who captures the knock can then use it)"
            )),
            Err(e) => Err(anyhow::anyhow!(
                "{e:#}; knock with --allow-ip ADDR, or --no-bind to send no address (anyone who captures the knock can then use it)"
            )),
        };
    }
    Ok(match local_source(target) {
        Ok(a) if sesame_proto::knock::is_bindable(a) => Binding {
            address: Some(a),
            how: "this host's public address".into(),
        },
        Ok(a) => Binding {
            address: None,
            how: format!(
                "not bound: this host's address {a} is private or shared (behind a NAT); set stun = \"host:port\" in the profile or pass --allow-ip to bind knocks"
            ),
        },
        Err(e) => Binding {
            address: None,
            how: format!("not bound: no route to {target}? ({e})"),
        },
    })
}

/// Builds the packets of a knock at `now` to `target`, with randomness from the OS.
pub fn plan(
    profile: &Profile,
    keys: &ClientKeys,
    target: IpAddr,
    now: UnixMillis,
    services: Vec<Service>,
    allow_ip: Option<IpAddr>,
) -> anyhow::Result<KnockPlan> {
    plan_with_action(profile, keys, target, now, services, allow_ip, None)
}

/// Builds the packets of a knock whose payload also asks the server to run `action` (`sesame
/// run`): the same sequence, binding and payload as [`plan`], by the same builder.
pub fn plan_with_action(
    profile: &Profile,
    keys: &ClientKeys,
    target: IpAddr,
    now: UnixMillis,
    services: Vec<Service>,
    allow_ip: Option<IpAddr>,
    action: Option<sesame_proto::wire::Action>,
) -> anyhow::Result<KnockPlan> {
    let request = KnockRequest {
        params: &profile.params,
        payload: profile.payload,
        keys,
        target,
        now,
        services,
        address: allow_ip,
        action,
    };
    Ok(plan_knock(&request, &mut |buf| {
        sesame_keys::fill_random(buf)
    })?)
}
