//! The safe Rust API that the C ABI ([`crate::c_api`]) wraps, and that other bindings (UniFFI)
//! can wrap the same way: every operation of the library, with typed errors, and nothing
//! `unsafe`.
//!
//! The objects are immutable once made, `Send` and `Sync`: share them between threads freely
//! (`Arc`). Secrets ([`PrivateKey`], [`PresharedKey`], and the keys a [`Client`] derives) are
//! zeroized when dropped and never printed by `Debug`.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use sesame_proto::derive::derive_sequence;
use sesame_proto::uri::ProfileUri;
use sesame_proto::{
    ClientKeys, ConfigError, KeysError, KnockError, KnockRequest, SequenceError, UnixMillis,
    UriError, plan_knock,
};

pub use sesame_keys::{KeyError, PresharedKey, PrivateKey, PublicKey};
pub use sesame_net::{ResolveError, SendError};
pub use sesame_proto::derive::{Knock as SequenceKnock, Sequence};
pub use sesame_proto::knock::{Packet, PacketKind};
pub use sesame_proto::params::{LeaseKind, PayloadMode};
pub use sesame_proto::{KnockPlan, Proto, Service};

/// Why an operation of the library failed. Messages never hold a secret (a refused key is
/// described by position, never quoted).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A `sesame://` profile URI was refused (not a URI, another version, a bad field).
    #[error("profile URI: {0}")]
    Uri(#[from] UriError),
    /// A profile's TOML text was refused (the message names the line and the key).
    #[error("profile: {0}")]
    Profile(#[from] ConfigError),
    /// A key's text form was refused (PROTOCOL.md 2.1).
    #[error("key: {0}")]
    Key(#[from] KeyError),
    /// The client's and the server's keys cannot be used together (a low-order public key).
    #[error("{0}")]
    KeyExchange(#[from] KeysError),
    /// No private key was given, and the profile carries none.
    #[error(
        "no private key: give the client's key (the profile carries one only when the server made it, `sesamed client add --generate-key`)"
    )]
    NoPrivateKey,
    /// An argument is malformed: a services list, an address, a random buffer.
    #[error("{what}: {why}")]
    Argument {
        /// Which argument.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
    /// The port sequence could not be derived.
    #[error("{0}")]
    Sequence(#[from] SequenceError),
    /// The knock could not be built (too many services; an address or an action with
    /// `payload = "none"`).
    #[error("{0}")]
    Knock(#[from] KnockError),
    /// The caller's random bytes ran out before the knock was built.
    #[error(
        "the {given} random bytes given ran out before the knock was built; give more ({RANDOM_BYTES_ENOUGH} suffice)"
    )]
    RandomExhausted {
        /// How many bytes were given.
        given: usize,
    },
    /// The server's host name could not be resolved.
    #[error("{0}")]
    Resolve(#[from] ResolveError),
    /// A packet of the knock could not be sent.
    #[error("{0}")]
    Send(#[from] SendError),
}

impl Error {
    /// The message with its causes, on one line (`cannot send to …: Network is unreachable`).
    pub fn message(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        // thiserror's `#[from]` makes the wrapped error both the message and the source:
        // skip a cause whose text is already the message's.
        while let Some(e) = cause {
            let text = e.to_string();
            if !out.ends_with(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cause = e.source();
        }
        out
    }
}

/// How many caller-given random bytes always suffice for one knock in practice: a knock takes
/// 112 bytes for its payload and, per UDP knock, one byte for its length (drawn again with
/// probability 12 %) and 8 to 120 bytes of body; 16 UDP knocks need about 2 100.
pub const RANDOM_BYTES_ENOUGH: usize = 4096;

/// The current time in milliseconds since the Unix epoch (0 for a clock set before 1970).
pub fn now_ms() -> u64 {
    UnixMillis::from(SystemTime::now()).0
}

/// Makes a new private key from the operating system's random generator, clamped as
/// `wg genkey` does. Its public key is [`PrivateKey::public_key`]; both have `to_base64`.
pub fn generate_private_key() -> PrivateKey {
    PrivateKey::generate()
}

/// Parses a list of services, `"tcp/22,udp/51820"` (commas or whitespace between them; at
/// most 8, duplicates dropped). An empty text is an empty list: ask for every service the
/// client is allowed.
pub fn parse_services(text: &str) -> Result<Vec<Service>, Error> {
    let items: Vec<String> = text
        .split(|c: char| c == ',' || c.is_ascii_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    sesame_proto::profile::parse_services(&items).map_err(|why| Error::Argument {
        what: "services",
        why,
    })
}

/// Parses an IPv4 or IPv6 address (`what` names the argument in the error).
pub fn parse_address(text: &str, what: &'static str) -> Result<IpAddr, Error> {
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    bare.parse().map_err(|_| Error::Argument {
        what,
        why: format!("'{}' is not an IPv4 or IPv6 address", text.escape_debug()),
    })
}

/// A server's profile: where it is, its public key, its knock parameters, the services to
/// ask for, and the client's secrets when the profile carries them.
#[derive(Clone)]
pub struct Profile {
    name: Option<String>,
    inner: sesame_proto::Profile,
    private_key: Option<PrivateKey>,
    psk: Option<PresharedKey>,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("name", &self.name)
            .field("profile", &self.inner)
            .field("private_key", &self.private_key.is_some())
            .field("psk", &self.psk.is_some())
            .finish()
    }
}

impl Profile {
    /// Imports a `sesame://2/…` URI, as `sesamed export-client --uri` (or `--qr`) prints it.
    /// It may carry the client's private key (`sesamed client add --generate-key`) and PSK:
    /// see [`Profile::private_key`] and [`Profile::psk`].
    pub fn from_uri(uri: &str) -> Result<Profile, Error> {
        let decoded = ProfileUri::decode(uri)?;
        Ok(Profile {
            name: Some(decoded.name),
            inner: decoded.profile,
            private_key: decoded.private_key,
            psk: decoded.psk,
        })
    }

    /// Imports a profile's TOML text, as `sesamed export-client` prints it. Its
    /// `private_key_file` and `psk_file` are not read: the caller gives the keys.
    pub fn from_toml(text: &str) -> Result<Profile, Error> {
        Ok(Profile {
            name: None,
            inner: sesame_proto::Profile::parse(text)?,
            private_key: None,
            psk: None,
        })
    }

    /// The name the server knows the client by (URIs only).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The server's host name or address.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// The server's public key.
    pub fn server_public_key(&self) -> &PublicKey {
        &self.inner.server_public_key
    }

    /// The services a knock asks for by default (empty: every service the client is allowed).
    pub fn services(&self) -> &[Service] {
        &self.inner.open
    }

    /// The profile's STUN server (`host:port`), if any. The library does not query it: a
    /// caller that wants its knocks bound to its public address asks it and passes the
    /// address ([`KnockOptions::address`]).
    pub fn stun(&self) -> Option<&str> {
        self.inner.stun.as_deref()
    }

    /// Whether knocks should name the client's address (`bind_address`, default true).
    pub fn bind_address(&self) -> bool {
        self.inner.bind_address
    }

    /// What the server's leases admit: with [`LeaseKind::Connection`] the first new connection
    /// uses a lease up, so an app must not make a connection of its own to check that a knock
    /// worked (the user's connection would then find the service closed).
    pub fn lease(&self) -> LeaseKind {
        self.inner.lease
    }

    /// The client's private key, when the profile carries it.
    pub fn private_key(&self) -> Option<&PrivateKey> {
        self.private_key.as_ref()
    }

    /// The client's pre-shared key, when the profile carries it.
    pub fn psk(&self) -> Option<&PresharedKey> {
        self.psk.as_ref()
    }

    /// The protocol crate's profile (knock parameters, payload mode, …).
    pub fn as_proto(&self) -> &sesame_proto::Profile {
        &self.inner
    }

    /// Resolves the profile's host to one address (blocks on the system resolver; an address
    /// is returned as it is).
    pub fn resolve_host(&self) -> Result<IpAddr, Error> {
        Ok(sesame_net::resolve(
            &self.inner.host,
            sesame_net::Family::Any,
        )?)
    }
}

/// What a knock asks for beyond the profile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KnockOptions {
    /// The services to ask for; `None`: the profile's ([`Profile::services`]).
    pub services: Option<Vec<Service>>,
    /// The address the server should open, bound into the payload so that a captured knock
    /// opens nothing for anyone else; `None`: the address the packets come from (unbound).
    pub address: Option<IpAddr>,
}

/// A profile with the client's keys: what knocks. Deriving the keys costs one X25519, so
/// make one `Client` and knock with it as often as needed.
pub struct Client {
    profile: sesame_proto::Profile,
    keys: ClientKeys,
    public_key: PublicKey,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("profile", &self.profile)
            .field("public_key", &self.public_key)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The client of `profile` with `private_key` and `psk`. A key not given is taken from the
    /// profile when it carries one: no private key at all is [`Error::NoPrivateKey`], no PSK
    /// at all means the client has none.
    pub fn new(
        profile: &Profile,
        private_key: Option<&PrivateKey>,
        psk: Option<&PresharedKey>,
    ) -> Result<Client, Error> {
        let private_key = private_key
            .or(profile.private_key.as_ref())
            .ok_or(Error::NoPrivateKey)?;
        let psk = psk.or(profile.psk.as_ref());
        let keys = ClientKeys::for_client(private_key, &profile.inner.server_public_key, psk)?;
        Ok(Client {
            profile: profile.inner.clone(),
            keys,
            public_key: private_key.public_key(),
        })
    }

    /// The server's host name or address, from the profile.
    pub fn host(&self) -> &str {
        &self.profile.host
    }

    /// Resolves the profile's host to one address (blocks on the system resolver; an address
    /// is returned as it is).
    pub fn resolve_host(&self) -> Result<IpAddr, Error> {
        Ok(sesame_net::resolve(
            &self.profile.host,
            sesame_net::Family::Any,
        )?)
    }

    /// The client's public key (what the server's `[[client]] public_key` must be).
    pub fn public_key(&self) -> &PublicKey {
        &self.public_key
    }

    /// The knock ports and the payload port at `now_ms` (what `sesame ports` prints).
    pub fn sequence(&self, now_ms: u64) -> Result<Sequence, Error> {
        let params = &self.profile.params;
        let counter = UnixMillis(now_ms).counter(params.step_seconds);
        Ok(derive_sequence(&self.keys, params, counter)?)
    }

    /// Builds the packets of a knock to `target` at `now_ms`. `rng` fills buffers with random
    /// bytes (the ephemeral key, the payload's random field, padding and knock bodies): the
    /// same bytes give the same packets.
    pub fn build_knock_with(
        &self,
        target: IpAddr,
        now_ms: u64,
        options: &KnockOptions,
        rng: &mut dyn FnMut(&mut [u8]),
    ) -> Result<KnockPlan, Error> {
        let request = KnockRequest {
            params: &self.profile.params,
            payload: self.profile.payload,
            keys: &self.keys,
            target,
            now: UnixMillis(now_ms),
            services: options
                .services
                .clone()
                .unwrap_or_else(|| self.profile.open.clone()),
            address: options.address,
            action: None,
        };
        Ok(plan_knock(&request, rng)?)
    }

    /// [`Client::build_knock_with`] with the operating system's random generator.
    pub fn build_knock(
        &self,
        target: IpAddr,
        now_ms: u64,
        options: &KnockOptions,
    ) -> Result<KnockPlan, Error> {
        self.build_knock_with(target, now_ms, options, &mut sesame_keys::fill_random)
    }

    /// [`Client::build_knock_with`] taking the random bytes from `random`, in order, for
    /// reproducible knocks (tests, vectors). Fails with [`Error::RandomExhausted`] when they
    /// run out ([`RANDOM_BYTES_ENOUGH`] always suffice in practice). Never use the same bytes
    /// for two knocks that are sent: the ephemeral key would repeat.
    pub fn build_knock_from_bytes(
        &self,
        target: IpAddr,
        now_ms: u64,
        options: &KnockOptions,
        random: &[u8],
    ) -> Result<KnockPlan, Error> {
        let mut rest = random;
        let mut exhausted = false;
        let plan = self.build_knock_with(target, now_ms, options, &mut |buf: &mut [u8]| {
            if buf.len() <= rest.len() {
                let (now, later) = rest.split_at(buf.len());
                buf.copy_from_slice(now);
                rest = later;
            } else {
                exhausted = true;
                // Any bytes end the builder's loops; the plan is thrown away below.
                buf.fill(0);
            }
        })?;
        if exhausted {
            return Err(Error::RandomExhausted {
                given: random.len(),
            });
        }
        Ok(plan)
    }
}

/// Sends the packets of a knock in order, `delay` apart, from this host (UDP datagrams from one
/// socket; a TCP knock is a SYN whose connection is abandoned). The same code as `sesame open`.
pub fn send_knock(plan: &KnockPlan, delay: Duration) -> Result<(), Error> {
    Ok(sesame_net::send(plan, delay)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_profile() -> (Profile, PrivateKey) {
        // The `default-udp` vector of proto/tests/vectors/sequences.json.
        let toml = "host = \"198.18.0.1\"\n\
                    server_public_key = \"O0zfQijMZ3b1Vrg3VVxj8bKdvxDaQlzcOR8kd6yhwho=\"\n\
                    private_key_file = \"unused.key\"\n";
        let key = PrivateKey::from_base64("RXx3bmEYEwoNBD82KSDb0tXMx/7x6OOanZSPhrmwq6I=").unwrap();
        (Profile::from_toml(toml).unwrap(), key)
    }

    #[test]
    fn the_default_vector_gives_its_ports() {
        let (profile, key) = vector_profile();
        let client = Client::new(&profile, Some(&key), None).unwrap();
        assert_eq!(
            client.public_key().to_base64(),
            "Jc9J9OlyyZzXT2cHLo1vxHcCcBgifxBL0V5ovdsurzE="
        );
        let seq = client.sequence(1_764_000_000_123).unwrap();
        assert_eq!(seq.counter, 58_800_000);
        let ports: Vec<(Proto, u16)> = seq.knocks.iter().map(|k| (k.proto, k.port)).collect();
        assert_eq!(
            ports,
            [
                (Proto::Udp, 18918),
                (Proto::Udp, 13386),
                (Proto::Udp, 21002)
            ]
        );
        assert_eq!(seq.payload_port, 14118);
    }

    #[test]
    fn every_sequence_vector_through_a_uri() {
        // Each vector's profile goes through a URI carrying the client's keys, as a server
        // that made the key would export it.
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../proto/tests/vectors/sequences.json"
        ))
        .unwrap();
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        let vectors = doc["vectors"].as_array().unwrap();
        assert!(vectors.len() >= 8);
        for v in vectors {
            let name = v["name"].as_str().unwrap();
            let p = &v["params"];
            let excl: Vec<String> = p["exclude_ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.to_string())
                .collect();
            let toml = format!(
                "host = \"198.18.0.1\"\nserver_public_key = \"{}\"\nprivate_key_file = \"k\"\n\
                 step_seconds = {}\nlength = {}\nport_range = [{}, {}]\nexclude_ports = [{}]\n\
                 protocol = \"{}\"\n",
                v["server_public"].as_str().unwrap(),
                p["step_seconds"],
                p["length"],
                p["port_range"][0],
                p["port_range"][1],
                excl.join(", "),
                p["protocol"].as_str().unwrap(),
            );
            let parsed = sesame_proto::Profile::parse(&toml).unwrap();
            let uri = ProfileUri {
                name: "vector".into(),
                profile: parsed,
                private_key: Some(
                    PrivateKey::from_base64(v["client_private"].as_str().unwrap()).unwrap(),
                ),
                psk: v["psk"]
                    .as_str()
                    .map(|t| PresharedKey::from_base64(t).unwrap()),
            }
            .encode()
            .unwrap();
            let profile = Profile::from_uri(&uri).unwrap();
            assert_eq!(profile.psk().is_some(), !v["psk"].is_null(), "{name}");
            let client = Client::new(&profile, None, None).unwrap();
            let seq = client
                .sequence(v["unix_time_ms"].as_u64().unwrap())
                .unwrap();
            assert_eq!(seq.counter, v["counter"].as_u64().unwrap(), "{name}");
            let got: Vec<String> = seq
                .knocks
                .iter()
                .map(|k| format!("{}/{}", k.proto, k.port))
                .collect();
            let want: Vec<String> = v["knocks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| format!("{}/{}", k["proto"].as_str().unwrap(), k["port"]))
                .collect();
            assert_eq!(got, want, "{name}");
            assert_eq!(
                u64::from(seq.payload_port),
                v["payload_port"].as_u64().unwrap(),
                "{name}"
            );
            // A knock built at the vector's time goes to exactly those ports.
            let plan = client
                .build_knock(
                    "198.18.0.1".parse().unwrap(),
                    v["unix_time_ms"].as_u64().unwrap(),
                    &KnockOptions::default(),
                )
                .unwrap();
            let mut sent: Vec<String> = plan
                .packets
                .iter()
                .map(|p| format!("{}/{}", p.proto, p.dest.port()))
                .collect();
            sent.truncate(want.len());
            assert_eq!(sent, want, "{name}");
        }
    }

    #[test]
    fn caller_bytes_make_a_knock_reproducible_and_too_few_are_refused() {
        let (profile, key) = vector_profile();
        let client = Client::new(&profile, Some(&key), None).unwrap();
        let target: IpAddr = "198.18.0.1".parse().unwrap();
        let random: Vec<u8> = (0..RANDOM_BYTES_ENOUGH)
            .map(|i| (i * 7 + 3) as u8)
            .collect();
        let opts = KnockOptions {
            services: Some(parse_services("tcp/22").unwrap()),
            address: Some("198.18.0.2".parse().unwrap()),
        };
        let a = client
            .build_knock_from_bytes(target, 1_764_000_000_123, &opts, &random)
            .unwrap();
        let b = client
            .build_knock_from_bytes(target, 1_764_000_000_123, &opts, &random)
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.packets.len(), 4);
        assert_eq!(a.packets[3].kind, PacketKind::Payload);
        assert_eq!(a.packets[3].dest.port(), 14118);
        let c = client
            .build_knock(target, 1_764_000_000_123, &opts)
            .unwrap();
        assert_ne!(a.packets[3].data, c.packets[3].data);
        let e = client
            .build_knock_from_bytes(target, 1_764_000_000_123, &opts, &random[..100])
            .unwrap_err();
        assert!(matches!(e, Error::RandomExhausted { given: 100 }), "{e}");
    }

    #[test]
    fn the_server_opens_the_knock() {
        use sesame_proto::time::TimeWindow;
        use sesame_proto::wire::Opener;
        let server =
            PrivateKey::from_base64("ZB8WCQA7MjUsJ97RyMP6/fTv5pmQi4KFvLeuoVhTSk0=").unwrap();
        let (profile, key) = vector_profile();
        let client = Client::new(&profile, Some(&key), None).unwrap();
        let now = 1_764_000_000_123;
        let opts = KnockOptions {
            services: None,
            address: Some("198.18.0.2".parse().unwrap()),
        };
        let plan = client
            .build_knock("198.18.0.1".parse().unwrap(), now, &opts)
            .unwrap();
        let sk = ClientKeys::for_server(&server, client.public_key(), None).unwrap();
        let opener = Opener::new(
            server,
            TimeWindow {
                step_seconds: 30,
                skew_steps: 1,
            },
        );
        let payload = plan.packets.last().unwrap();
        let opened = opener
            .open(UnixMillis(now), &sk, plan.counter, &payload.data)
            .unwrap();
        assert_eq!(opened.address, opts.address);
        assert!(opened.services.is_empty());
    }

    #[test]
    fn errors_name_the_problem_without_the_secret() {
        let (profile, _) = vector_profile();
        assert!(matches!(
            Client::new(&profile, None, None),
            Err(Error::NoPrivateKey)
        ));
        let typo = "RXx3bmEYEwoNBD82KSDb0tXMx/7x6OOanZSPhrmwq6I!";
        let e = Error::from(PrivateKey::from_base64(typo).unwrap_err());
        assert!(!e.message().contains("RXx3bmEY"), "{}", e.message());
        assert!(e.message().contains("character 44"), "{}", e.message());
        let e = Profile::from_uri("sesame://1/AAAA").unwrap_err();
        assert!(matches!(e, Error::Uri(UriError::OldVersion)), "{e}");
        let e = parse_services("tcp/22 ftp/21").unwrap_err();
        assert!(
            e.message().starts_with("services: 'ftp/21'"),
            "{}",
            e.message()
        );
        let e = parse_address("198.18.0.300", "address").unwrap_err();
        assert_eq!(
            e.message(),
            "address: '198.18.0.300' is not an IPv4 or IPv6 address"
        );
        let dbg = format!("{:?}", Profile::from_toml("host = \"h\"\nserver_public_key = \"O0zfQijMZ3b1Vrg3VVxj8bKdvxDaQlzcOR8kd6yhwho=\"\nprivate_key_file = \"k\"\n").unwrap());
        assert!(dbg.contains("private_key: false"), "{dbg}");
    }

    #[test]
    fn objects_are_shared_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Profile>();
        send_sync::<Client>();
        send_sync::<KnockPlan>();
        send_sync::<Error>();
        let (profile, key) = vector_profile();
        let client = std::sync::Arc::new(Client::new(&profile, Some(&key), None).unwrap());
        let target: IpAddr = "198.18.0.1".parse().unwrap();
        let knocks: Vec<KnockPlan> = (0..4)
            .map(|_| {
                let c = std::sync::Arc::clone(&client);
                std::thread::spawn(move || {
                    c.build_knock(target, 1_764_000_000_123, &KnockOptions::default())
                        .unwrap()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        for k in &knocks {
            assert_eq!(k.packets[3].dest.port(), 14118);
        }
        assert_ne!(knocks[0].packets[3].data, knocks[1].packets[3].data);
    }

    #[test]
    fn send_errors_carry_their_cause() {
        let e = Error::from(SendError::UdpSocket(std::io::Error::other(
            "no sockets left",
        )));
        assert_eq!(e.message(), "cannot open a UDP socket: no sockets left");
    }
}
