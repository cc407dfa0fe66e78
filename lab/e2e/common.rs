//! A sesame deployment in a lab: server key, one client (`laptop`), the daemon's config, a
//! client profile, the protected TCP service and `sesamed run`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use sesame_tests::{ClientSpec, DaemonSpec, Family, Host, Key, Lab, Proc, set_profile_key, text};

/// How long a blocked connection attempt waits before it counts as "cannot connect".
pub(crate) const BLOCKED_MS: u64 = 800;
/// How long to wait for a grant or rejection line after a knock.
pub(crate) const LOG_WAIT: Duration = Duration::from_secs(6);
/// How long to wait, after a knock that must open nothing, before checking that nothing opened.
pub(crate) const SETTLE: Duration = Duration::from_millis(1500);

/// One test's deployment. Fields drop in order: processes first, the lab last.
pub(crate) struct Fixture {
    /// `sesamed run` once started.
    pub daemon: Option<Proc>,
    /// The TCP service on the protected ports.
    pub service: Option<Proc>,
    /// The daemon's key.
    pub server_key: Key,
    /// The `laptop` client's key.
    pub client_key: Key,
    /// The daemon's configuration (edit before [`Fixture::start`]).
    pub spec: DaemonSpec,
    /// TCP ports the service listens on (default: every protected tcp port).
    pub serve_ports: Option<Vec<u16>>,
    /// Environment of `sesamed run` beyond the lab's (e.g. `SESAMED_CAPTURE_FILTER`).
    pub daemon_env: Vec<(&'static str, String)>,
    /// The config file, once written.
    pub config: PathBuf,
    /// The default profile (IPv4 host), once written.
    pub profile: PathBuf,
    /// The lab (dropped last).
    pub lab: Lab,
}

impl Fixture {
    /// A lab, keys and a config with the client `laptop`; nothing written or started.
    pub(crate) fn new(tag: &str) -> Fixture {
        let lab = Lab::new(tag);
        let server_key = lab.gen_key("server");
        let client_key = lab.gen_key("laptop");
        let mut spec = DaemonSpec::new(Path::new("server.key"));
        spec.clients
            .push(ClientSpec::new("laptop", &client_key.public));
        Fixture {
            daemon: None,
            service: None,
            config: lab.path("sesamed.toml"),
            profile: lab.path("laptop.toml"),
            server_key,
            client_key,
            spec,
            serve_ports: None,
            daemon_env: Vec::new(),
            lab,
        }
    }

    /// The `laptop` client entry.
    pub(crate) fn client(&mut self) -> &mut ClientSpec {
        &mut self.spec.clients[0]
    }

    /// The server's address in a family (on the client link).
    pub(crate) fn server(&self, family: Family) -> IpAddr {
        self.lab.addr(Host::Server, family)
    }

    /// A service address on the server.
    pub(crate) fn svc(&self, family: Family, port: u16) -> SocketAddr {
        SocketAddr::new(self.server(family), port)
    }

    /// Writes a profile for the `laptop` key (or another), with the server's host address in
    /// `family`, and returns its path. `edit` may change anything before it is written.
    pub(crate) fn write_profile(
        &self,
        name: &str,
        family: Family,
        key: &Path,
        edit: impl FnOnce(&mut sesame_tests::ProfileSpec),
    ) -> PathBuf {
        let mut p = self.spec.profile(
            &self.server(family).to_string(),
            &self.server_key.public,
            key,
        );
        edit(&mut p);
        self.lab.write(&format!("{name}.toml"), &p.to_toml())
    }

    /// Writes the config and the default profile; `sesamed check` must accept the config.
    pub(crate) fn write(&mut self) {
        self.lab.write("sesamed.toml", &self.spec.to_toml());
        let key = self.client_key.path.clone();
        self.profile = self.write_profile("laptop", Family::V4, &key, |_| {});
        let o = self.lab.sesamed(&[
            "check".as_ref(),
            "--config".as_ref(),
            self.config.as_os_str(),
        ]);
        assert!(
            o.status.success(),
            "sesamed check refused the test config: {}\n{}",
            text(&o),
            self.spec.to_toml()
        );
    }

    /// Writes everything, starts the service on the protected TCP ports (IPv4 and IPv6) and
    /// the daemon, and waits until both are ready.
    pub(crate) fn start(&mut self) {
        self.write();
        let ports: Vec<u16> = self.serve_ports.clone().unwrap_or_else(|| {
            self.spec
                .protect
                .iter()
                .filter_map(|s| s.strip_prefix("tcp/")?.parse().ok())
                .collect()
        });
        if !ports.is_empty() {
            let mut addrs = Vec::new();
            for port in ports {
                addrs.push(self.svc(Family::V4, port));
                addrs.push(self.svc(Family::V6, port));
            }
            self.service = Some(self.lab.serve(&addrs));
        }
        self.daemon = Some(if self.daemon_env.is_empty() {
            self.lab.start_sesamed(&self.config)
        } else {
            self.start_sesamed_with_env()
        });
    }

    /// `sesamed run` as [`Lab::start_sesamed`] does, with [`Fixture::daemon_env`] added.
    fn start_sesamed_with_env(&self) -> Proc {
        let level = std::env::var("SESAME_E2E_RUST_LOG").unwrap_or_else(|_| "info".to_owned());
        let mut env: Vec<(&str, &str)> = vec![("RUST_LOG", level.as_str()), ("NO_COLOR", "1")];
        env.extend(self.daemon_env.iter().map(|(k, v)| (*k, v.as_str())));
        let config = self.config.to_string_lossy().into_owned();
        let mut p = self.lab.spawn(
            Host::Server,
            "sesamed",
            sesame_tests::bin("sesamed"),
            &["run", "--config", config.as_str()],
            &env,
        );
        if p.wait_for(&["ready"], Duration::from_secs(15)).is_none() {
            let status = p.exited();
            panic!(
                "sesamed did not log `ready` within 15 s (exit status {status:?}); output:\n{}",
                p.output()
            );
        }
        p
    }

    /// The running daemon.
    pub(crate) fn daemon(&self) -> &Proc {
        self.daemon.as_ref().expect("sesamed is running")
    }

    /// Stops the daemon with SIGTERM; it must exit 0.
    pub(crate) fn stop_daemon(&mut self) {
        let mut d = self.daemon.take().expect("sesamed is running");
        let status = d.stop(Duration::from_secs(10));
        assert!(
            status.is_some_and(|s| s.success()),
            "sesamed did not exit 0 on SIGTERM: {status:?}; output:\n{}",
            d.output()
        );
    }

    /// Stops the daemon with SIGTERM (as systemd does) and waits up to 10 s for it to exit.
    pub(crate) fn stop(&mut self) {
        self.daemon().signal(libc::SIGTERM);
        let exited = self
            .daemon
            .as_mut()
            .and_then(|d| d.wait_exit(Duration::from_secs(10)));
        assert!(
            exited.is_some(),
            "sesamed did not stop within 10 s of SIGTERM"
        );
    }

    /// A mark in the daemon's log.
    pub(crate) fn mark(&self) -> usize {
        self.daemon().mark()
    }

    /// Runs `sesame open --profile PROFILE ARGS` on `host`; it must exit 0.
    pub(crate) fn knock_from(&self, host: Host, profile: &Path, args: &[&str]) -> Output {
        let mut all: Vec<&str> = vec!["open", "--profile"];
        let p = profile.to_string_lossy().into_owned();
        all.push(&p);
        all.extend_from_slice(args);
        let o = self.lab.sesame(host, &all);
        assert!(o.status.success(), "sesame {all:?} failed: {}", text(&o));
        o
    }

    /// `sesame open` with the default profile from the client namespace.
    pub(crate) fn knock(&self, args: &[&str]) -> Output {
        self.knock_from(Host::Client, &self.profile, args)
    }

    /// Waits for the grant line for `laptop` from `source` (after `mark`) and returns it.
    pub(crate) fn expect_grant(&self, mark: usize, source: IpAddr) -> String {
        let src = format!("source={source}");
        let line = self
            .daemon()
            .wait_for_after(mark, &[" granted client=laptop", &src], LOG_WAIT);
        line.unwrap_or_else(|| {
            panic!(
                "no `granted client=laptop {src}` line within {LOG_WAIT:?}; ruleset:\n{}",
                self.lab.server_ruleset()
            )
        })
    }

    /// Waits for a rejection line from `source` with `reason` (after `mark`) and returns it.
    pub(crate) fn expect_reject(&self, mark: usize, source: IpAddr, reason: &str) -> String {
        let src = format!("source={source}");
        let why = format!("reason={reason}");
        self.daemon()
            .expect_after(mark, &["rejected", &src, &why], LOG_WAIT)
    }

    /// Grant lines after `mark`.
    pub(crate) fn grants(&self, mark: usize) -> Vec<String> {
        self.daemon().matching(mark, &[" granted client="])
    }

    /// Panics if the daemon logged any grant after `mark`.
    pub(crate) fn assert_no_grant(&self, mark: usize, what: &str) {
        let g = self.grants(mark);
        assert!(g.is_empty(), "{what}: the daemon granted something: {g:?}");
    }

    /// True if a new connection from `from` to the server's `port` in `family` succeeds.
    pub(crate) fn connects(&self, from: Host, family: Family, port: u16) -> bool {
        self.lab.connects(from, self.svc(family, port), BLOCKED_MS)
    }

    /// True if a new connection from `from` to the server's `port` in `family` succeeds
    /// within 3 s, trying again every 500 ms. Use it where the service must be open: sesamed
    /// logs `granted` a moment before the firewall element is in place, so the first SYN right
    /// after the log line may still be dropped (a real client's SYN retransmission covers it).
    pub(crate) fn opens(&self, from: Host, family: Family, port: u16) -> bool {
        self.lab
            .connects_within(from, self.svc(family, port), Duration::from_secs(3))
    }

    /// True once a new connection from `from` to the server's `port` in `family` fails,
    /// trying for up to 3 s. Use it where a lease must have ended: sesamed logs `lease ended`
    /// when it decides, a moment before the firewall element is gone.
    pub(crate) fn closes(&self, from: Host, family: Family, port: u16) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        loop {
            if !self.connects(from, family, port) {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Asserts that the client (and the attacker) cannot connect to `port` in `family`.
    pub(crate) fn assert_closed(&self, family: Family, port: u16, what: &str) {
        for host in [Host::Client, Host::Attacker] {
            assert!(
                !self.connects(host, family, port),
                "{what}: {host:?} could connect to {}; ruleset:\n{}",
                self.svc(family, port),
                self.lab.server_ruleset()
            );
        }
    }

    /// Profile for the client made by `sesamed export-client`, with `private_key_file`
    /// rewritten to the client key. The host is the server's address in `family`.
    pub(crate) fn export_profile(&self, family: Family) -> PathBuf {
        let host = self.server(family).to_string();
        let o = self.lab.sesamed(&[
            "export-client".as_ref(),
            "--config".as_ref(),
            self.config.as_os_str(),
            "laptop".as_ref(),
            "--host".as_ref(),
            host.as_ref(),
        ]);
        assert!(o.status.success(), "sesamed export-client: {}", text(&o));
        let exported = String::from_utf8(o.stdout).expect("profile is UTF-8");
        let name = match family {
            Family::V4 => "exported4.toml",
            Family::V6 => "exported6.toml",
        };
        self.lab
            .write(name, &set_profile_key(&exported, &self.client_key.path))
    }
}

/// Fails the test with a message when a line lacks one of `parts`.
pub(crate) fn assert_line_has(line: &str, parts: &[&str]) {
    for p in parts {
        assert!(line.contains(p), "log line lacks `{p}`: {line}");
    }
}
