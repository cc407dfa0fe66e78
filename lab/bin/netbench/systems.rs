//! The systems under test, set up in a bed: the floor, sesamed, fwknopd and knockd.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use sesame_tests::{ClientSpec, DaemonSpec, Host, bin, text};

use crate::Result;
use crate::floor::{FLOOR_PORTS, FloorListener, floor_ruleset};
use crate::knock::KnockCmd;
use crate::lab::{Bed, Daemon, LAN, POOL_BASE, POOL_MAX, SERVICE_PORT};
use crate::options::{Opts, System};
use crate::util::{find_program, log_lines, need_program, ns_run, package_version, run_cmd};

/// sesamed's default knock range (also where knockd's sequence lives).
pub(crate) const SESAME_RANGE: (u16, u16) = (10000, 32767);
/// knockd's sequence: three UDP ports, out of order, inside sesame's range.
pub(crate) const KNOCKD_SEQUENCE: [u16; 3] = [15002, 15001, 15003];
/// fwknop's default SPA port.
pub(crate) const FWKNOP_PORT: u16 = 62201;

/// A system set up in a bed: how its client knocks, and the daemon's process name.
pub(crate) struct Setup {
    pub(crate) knock: Box<KnockCmd<'static>>,
    /// Reads the sources the daemon has opened the service for, from its log.
    pub(crate) grants: Box<dyn Fn() -> Vec<Ipv4Addr>>,
    /// What `ps` calls the daemon (checked before reading its /proc figures).
    pub(crate) comm: &'static str,
    /// Extra facts for the report (versions, settings).
    pub(crate) notes: Value,
    /// sesame's client profile (the payload flood aims at its ports).
    pub(crate) profile: Option<PathBuf>,
    /// Reads the daemon's counters so far (sesamed's `counters` of `status --json`:
    /// `packets_seen`, `capture_drops`, `rejections` …), for a daemon that counts.
    pub(crate) counters: Option<Box<dyn Fn() -> Result<Value>>>,
}

pub(crate) struct Tools {
    pub(crate) nft: PathBuf,
    pub(crate) iptables: Option<PathBuf>,
    pub(crate) fwknop: Option<PathBuf>,
    pub(crate) fwknopd: Option<PathBuf>,
    pub(crate) knock: Option<PathBuf>,
    pub(crate) knockd: Option<PathBuf>,
}

impl Tools {
    pub(crate) fn find() -> Result<Tools> {
        Ok(Tools {
            nft: need_program("nft")?,
            iptables: find_program("iptables"),
            fwknop: find_program("fwknop"),
            fwknopd: find_program("fwknopd"),
            knock: find_program("knock"),
            knockd: find_program("knockd"),
        })
    }

    /// Why a system cannot run here, if it cannot.
    pub(crate) fn missing(&self, s: System) -> Option<String> {
        let need: Vec<(&str, bool)> = match s {
            System::Fwknop | System::FwknopUdp => vec![
                ("fwknop (fwknop-client)", self.fwknop.is_some()),
                ("fwknopd (fwknop-server)", self.fwknopd.is_some()),
                ("iptables", self.iptables.is_some()),
            ],
            System::Knockd => vec![
                (
                    "knock, knockd (knockd)",
                    self.knock.is_some() && self.knockd.is_some(),
                ),
                ("iptables", self.iptables.is_some()),
            ],
            _ => Vec::new(),
        };
        let missing: Vec<&str> = need.iter().filter(|(_, ok)| !ok).map(|(n, _)| *n).collect();
        (!missing.is_empty()).then(|| format!("not installed: {}", missing.join(", ")))
    }
}

pub(crate) fn setup_floor(
    bed: &mut Bed,
    tools: &Tools,
    opts: &Opts,
    netlink: bool,
) -> Result<Setup> {
    let rules = bed.lab.write("floor.nft", &floor_ruleset());
    ns_run(
        bed.server_ns(),
        &tools.nft.to_string_lossy(),
        &["-f", &rules.to_string_lossy()],
    )?;
    bed.floor = Some(FloorListener::start(bed, &tools.nft, opts.lease, netlink)?);
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let server = bed.server.to_string();
    let ports: Vec<String> = FLOOR_PORTS.iter().map(u16::to_string).collect();
    Ok(Setup {
        knock: Box::new(move |_| {
            let mut c = Command::new(&me);
            c.arg("floor-send").arg(&server).args(&ports);
            c
        }),
        grants: Box::new(Vec::new),
        comm: "",
        notes: json!({
            "client": "sesame-netbench floor-send: 3 empty UDP datagrams and one of 136 bytes",
            "server": if netlink {
                "4 UDP sockets (blocking recv, same source), then one exclusive add element over netlink (sesame_server::netlink, as sesamed for a new lease)"
            } else {
                "4 UDP sockets (blocking recv, same source), then one exec of `nft add element inet floor granted4 { SRC . tcp . 22 timeout LEASE }`"
            },
        }),
        profile: None,
        counters: None,
    })
}

pub(crate) fn setup_sesame(
    bed: &mut Bed,
    opts: &Opts,
    tmpfs: bool,
    netlink: bool,
) -> Result<Setup> {
    let (config, profile, state_dir) = sesame_config(bed, opts, tmpfs, netlink, 1)?;
    start_sesame(bed, opts, &config, &profile, &state_dir, &[])
}

/// sesamed with `state_sync = "fence"` (state directory on the same disk as `sesame`'s).
pub(crate) fn setup_sesame_fence(bed: &mut Bed, opts: &Opts) -> Result<Setup> {
    let (config, profile, state_dir) = sesame_config(bed, opts, false, true, 1)?;
    let text =
        std::fs::read_to_string(&config).map_err(|e| format!("{}: {e}", config.display()))?;
    std::fs::write(&config, format!("state_sync = \"fence\"\n{text}"))
        .map_err(|e| format!("{}: {e}", config.display()))?;
    start_sesame(bed, opts, &config, &profile, &state_dir, &[])
}

/// Writes sesamed's configuration with `clients` clients (`laptop`, whose profile is written
/// too, and `clients - 1` others with fresh keys) and checks it; returns the configuration,
/// the profile and the state directory.
pub(crate) fn sesame_config(
    bed: &Bed,
    opts: &Opts,
    tmpfs: bool,
    netlink: bool,
    clients: usize,
) -> Result<(PathBuf, PathBuf, String)> {
    let lab = &bed.lab;
    let server_key = lab.gen_key("server");
    let client_key = lab.gen_key("laptop");
    let mut spec = DaemonSpec::new(Path::new("server.key"));
    spec.interfaces = vec![LAN.to_owned()];
    spec.knock.port_range = SESAME_RANGE;
    spec.lease_seconds = opts.lease;
    spec.protect = vec![format!("tcp/{SERVICE_PORT}")];
    if tmpfs {
        let dir = format!("/dev/shm/sesame-netbench-{}-{}", std::process::id(), lab.n);
        let _ = std::fs::remove_dir_all(&dir);
        spec.state_dir = dir;
    }
    spec.clients
        .push(ClientSpec::new("laptop", &client_key.public));
    for i in 1..clients {
        let key = sesame_keys::PrivateKey::generate().public_key().to_base64();
        spec.clients.push(ClientSpec::new(&format!("c{i}"), &key));
    }
    let mut toml = spec.to_toml();
    if !netlink {
        toml = toml.replacen("\n[firewall]\n", "\n[firewall]\nnetlink = false\n", 1);
    }
    let config = lab.write("sesamed.toml", &toml);
    let profile = spec.profile(
        &bed.server.to_string(),
        &server_key.public,
        &client_key.path,
    );
    let profile = lab.write("laptop.toml", &profile.to_toml());
    let check = lab.sesamed(&["check".as_ref(), "--config".as_ref(), config.as_os_str()]);
    if !check.status.success() {
        return Err(format!("sesamed check: {}", text(&check)));
    }
    Ok((config, profile, spec.state_dir))
}

/// Starts sesamed on `config` with `env` added and waits until it is ready.
pub(crate) fn start_sesame(
    bed: &mut Bed,
    opts: &Opts,
    config: &Path,
    profile: &Path,
    state_dir: &str,
    env: &[(&str, &str)],
) -> Result<Setup> {
    let lab = &bed.lab;
    let mut all_env = vec![("RUST_LOG", "info,sesame_server=debug"), ("NO_COLOR", "1")];
    all_env.extend_from_slice(env);
    let mut d = Daemon::spawn(
        lab,
        "sesamed",
        &bin("sesamed"),
        &[
            "run".into(),
            "--config".into(),
            config.to_string_lossy().into_owned(),
            "--log-format".into(),
            "json".into(),
        ],
        &all_env,
    )?;
    let log = d.log.clone();
    // Long enough for 1 000 000 clients' keys and step tables.
    d.wait_for(&log, "ready", Duration::from_secs(600))?;
    bed.daemon = Some(d);
    let sesame = bin("sesame");
    let profile = profile.to_owned();
    let profile_for_flood = profile.clone();
    let ns = lab.ns(Host::Server).to_owned();
    let dir = lab.dir.clone();
    let config = config.to_owned();
    Ok(Setup {
        knock: Box::new(move |_| {
            let mut c = Command::new(&sesame);
            c.arg("open").arg("--profile").arg(&profile);
            c
        }),
        grants: Box::new(move || {
            log_lines(&log)
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["message"] == "granted")
                .filter_map(|v| v["source"].as_str()?.parse().ok())
                .collect()
        }),
        comm: "sesamed",
        notes: json!({
            "client": "sesame open --profile laptop.toml",
            "server": "sesamed run, nftables backend, udp knocks, length 3, payload required, range 10000-32767",
            "state_dir": state_dir,
            "interfaces": [LAN],
            "lease_seconds": opts.lease,
            "rust_log": "info,sesame_server=debug (for the breakdown)",
        }),
        profile: Some(profile_for_flood),
        counters: Some(Box::new(move || sesamed_counters(&ns, &dir, &config))),
    })
}

pub(crate) fn setup_fwknop(
    bed: &mut Bed,
    tools: &Tools,
    opts: &Opts,
    udp_server: bool,
) -> Result<Setup> {
    let (fwknop, fwknopd, iptables) = match (&tools.fwknop, &tools.fwknopd, &tools.iptables) {
        (Some(a), Some(b), Some(c)) => (a.clone(), b.clone(), c.clone()),
        _ => return Err("fwknop is not installed".into()),
    };
    let lab = &bed.lab;
    let home = lab.path("fwknop-home");
    std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
    let keys = run_cmd(
        Command::new(&fwknop)
            .args(["--key-gen", "--use-hmac"])
            .env("HOME", &home),
    )?;
    let field = |name: &str| -> Result<String> {
        keys.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| format!("fwknop --key-gen printed no {name}: {keys}"))
    };
    let key = field("KEY_BASE64:")?;
    let hmac = field("HMAC_KEY_BASE64:")?;
    bed.iptables_gate(&iptables)?;
    let run_dir = lab.path("fwknop-run");
    std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
    let conf = lab.write_secret(
        "fwknopd.conf",
        &format!(
            "PCAP_INTF {LAN};\nFWKNOP_RUN_DIR {};\nFIREWALL_EXE {};\n",
            run_dir.display(),
            iptables.display()
        ),
    );
    let access = lab.write_secret(
        "access.conf",
        &format!(
            "SOURCE ANY\nREQUIRE_SOURCE_ADDRESS Y\nKEY_BASE64 {key}\nHMAC_KEY_BASE64 {hmac}\n\
             OPEN_PORTS tcp/{SERVICE_PORT}\nFW_ACCESS_TIMEOUT {}\n",
            opts.lease
        ),
    );
    let mut args: Vec<String> = vec![
        "-f".into(),
        "-c".into(),
        conf.to_string_lossy().into_owned(),
        "-a".into(),
        access.to_string_lossy().into_owned(),
    ];
    if udp_server {
        args.push("-U".into());
    }
    let mut d = Daemon::spawn(lab, "fwknopd", &fwknopd, &args, &[])?;
    let log = d.log.clone();
    let ready = if udp_server {
        "Kicking off UDP server"
    } else {
        "main event loop"
    };
    d.wait_for(&log, ready, Duration::from_secs(20))?;
    bed.daemon = Some(d);
    let server = bed.server.to_string();
    Ok(Setup {
        knock: Box::new(move |src| {
            let mut c = Command::new(&fwknop);
            c.args(["--no-save-args", "-A"])
                .arg(format!("tcp/{SERVICE_PORT}"))
                .arg("-a")
                .arg(src.to_string())
                .arg("-D")
                .arg(&server)
                .args(["--key-base64-rijndael", &key, "--key-base64-hmac", &hmac])
                .arg("--use-hmac")
                .env("HOME", &home);
            c
        }),
        grants: Box::new(move || {
            log_lines(&log)
                .iter()
                .filter_map(|l| {
                    let rest = l.split("Added access rule to FWKNOP_INPUT for ").nth(1)?;
                    rest.split_whitespace().next()?.parse().ok()
                })
                .collect()
        }),
        comm: "fwknopd",
        notes: json!({
            "client": "fwknop --no-save-args -A tcp/22 -a SRC -D SERVER --key-base64-rijndael K --key-base64-hmac H --use-hmac",
            "server": format!(
                "fwknopd -f{} ({}, udp port {FWKNOP_PORT}, Rijndael + HMAC-SHA256, iptables-nft, FW_ACCESS_TIMEOUT {}; everything else default)",
                if udp_server { " -U" } else { "" },
                if udp_server { "UDP server mode: a socket, no libpcap" } else { "libpcap on s-lan" },
                opts.lease
            ),
            "version": package_version("fwknop-server"),
        }),
        profile: None,
        counters: None,
    })
}

pub(crate) fn setup_knockd(bed: &mut Bed, tools: &Tools, opts: &Opts) -> Result<Setup> {
    let (knock, knockd, iptables) = match (&tools.knock, &tools.knockd, &tools.iptables) {
        (Some(a), Some(b), Some(c)) => (a.clone(), b.clone(), c.clone()),
        _ => return Err("knockd is not installed".into()),
    };
    bed.iptables_gate(&iptables)?;
    let lab = &bed.lab;
    let seq: Vec<String> = KNOCKD_SEQUENCE.iter().map(|p| format!("{p}:udp")).collect();
    let logfile = lab.path("knockd.log");
    let ipt = iptables.display();
    let conf = lab.write(
        "knockd.conf",
        &format!(
            "[options]\n\tLogFile = {}\n\tInterface = {LAN}\n\n[sesame-netbench]\n\
             \tsequence = {}\n\tseq_timeout = 5\n\
             \tstart_command = {ipt} -I INPUT -s %IP% -p tcp --dport {SERVICE_PORT} -j ACCEPT\n\
             \tcmd_timeout = {}\n\
             \tstop_command = {ipt} -D INPUT -s %IP% -p tcp --dport {SERVICE_PORT} -j ACCEPT\n",
            logfile.display(),
            seq.join(","),
            opts.lease
        ),
    );
    let mut d = Daemon::spawn(
        lab,
        "knockd",
        &knockd,
        &[
            "-c".into(),
            conf.to_string_lossy().into_owned(),
            "-i".into(),
            LAN.into(),
        ],
        &[],
    )?;
    d.wait_for(&logfile, "listening on", Duration::from_secs(20))?;
    bed.daemon = Some(d);
    let server = bed.server.to_string();
    let ports: Vec<String> = KNOCKD_SEQUENCE.iter().map(u16::to_string).collect();
    Ok(Setup {
        knock: Box::new(move |_| {
            let mut c = Command::new(&knock);
            c.arg("-u").arg(&server).args(&ports);
            c
        }),
        grants: Box::new(move || {
            log_lines(&logfile)
                .iter()
                .filter(|l| l.ends_with(": OPEN SESAME"))
                .filter_map(|l| {
                    let rest = l.split_once("] ").map_or(l.as_str(), |(_, r)| r);
                    rest.split(':').next()?.parse().ok()
                })
                .collect()
        }),
        comm: "knockd",
        notes: json!({
            "client": format!("knock -u SERVER {}", ports_list(&KNOCKD_SEQUENCE)),
            "server": format!("knockd -i {LAN} (pcap), sequence {} (udp), seq_timeout 5, start_command iptables -I INPUT -s %IP% -p tcp --dport 22 -j ACCEPT, cmd_timeout {}, stop_command iptables -D …", ports_list(&KNOCKD_SEQUENCE), opts.lease),
            "version": package_version("knockd"),
        }),
        profile: None,
        counters: None,
    })
}

/// Grants for addresses outside the client pool: spoofed sources let in by a flood.
pub(crate) fn spurious(grants: &[Ipv4Addr]) -> usize {
    let lo = u32::from(POOL_BASE);
    let hi = lo + POOL_MAX as u32 + 1;
    grants
        .iter()
        .filter(|a| !(lo..=hi).contains(&u32::from(**a)))
        .count()
}

pub(crate) fn ports_list(p: &[u16]) -> String {
    p.iter().map(u16::to_string).collect::<Vec<_>>().join(" ")
}

/// `packets_seen` of `sesamed status --json` (every packet the capture filter let through).
pub(crate) fn packets_seen(ns: &str, dir: &Path, config: &Path) -> Result<u64> {
    let v = sesamed_counters(ns, dir, config)?;
    v["packets_seen"]
        .as_u64()
        .ok_or_else(|| format!("status has no packets_seen: {v}"))
}

/// The `counters` of `sesamed status --json`.
pub(crate) fn sesamed_counters(ns: &str, dir: &Path, config: &Path) -> Result<Value> {
    let out = run_cmd(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin("sesamed"))
            .args(["status", "--json", "--config"])
            .arg(config)
            .current_dir(dir),
    )
    .map_err(|e| format!("sesamed status: {e}"))?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("status: {e}"))?;
    match v.get("counters") {
        Some(c) if c.is_object() => Ok(c.clone()),
        _ => Err(format!("status has no counters: {v}")),
    }
}
