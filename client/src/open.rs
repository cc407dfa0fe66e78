//! `sesame open`: a profile is knocked over each address family its host has (each knock bound
//! to this host's own address in that family, so that whichever family a connection uses is
//! open), and several profiles (names, `@GROUP`s) are knocked in parallel with one line each.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::anyhow;
use sesame_cli::Exit;
use sesame_proto::params::{LeaseKind, PayloadMode};
use sesame_proto::{Proto, Service};

use crate::knock::{self, Binding};
use crate::{Knocker, ONE_CONNECTION_NOTE, OpenArgs, Unconfirmed, groups, usage, wait};

/// At most this many profiles are knocked at once.
const MAX_PARALLEL: usize = 32;

/// A line of output: for standard output, or a note for standard error.
enum Line {
    Out(String),
    Note(String),
}

/// What knocking one profile printed and came to.
type Outcome = (Vec<Line>, anyhow::Result<Done>);

/// A profile to knock: the name it was given by (none for `--profile FILE`) and its file.
struct Target {
    name: Option<String>,
    path: PathBuf,
}

/// A profile loaded and checked, ready to knock: every usage error shows here, before anything
/// is sent.
struct Prepared {
    name: Option<String>,
    k: Knocker,
    services: Vec<Service>,
    /// The tcp port `--wait` connects to (none without `--wait`, or with a lease that admits
    /// one connection).
    wait_port: Option<u16>,
    /// payload = "none" with knocks: no address can be named.
    sequence_only: bool,
}

/// What became of the knock of one profile.
struct Done {
    host: String,
    /// The services asked for, for messages.
    what: String,
    /// The addresses knocked, each with whom it asked to open.
    knocked: Vec<(IpAddr, String)>,
    /// With `--wait`: the service that answered, and after how many knocks.
    answered: Option<(SocketAddr, u32)>,
}

/// `sesame open`: returns the exit status when it printed the outcome itself (several
/// profiles), or the error of the one profile.
pub(crate) fn open(args: OpenArgs) -> anyhow::Result<Exit> {
    let (targets, many) = targets(&args)?;
    let mut prepared = Vec::with_capacity(targets.len());
    for t in targets {
        let name = t.name.clone();
        prepared.push(prepare(t, &args).map_err(|e| match name {
            Some(n) if many => e.context(n),
            _ => e,
        })?);
    }
    if !many {
        let Some(p) = prepared.first() else {
            return Err(usage("name a profile, or give --profile FILE"));
        };
        knock_one(p, &args, &mut print_line)?;
        return Ok(Exit::Success);
    }
    if args.dry_run {
        let mut status = Exit::Success;
        for p in &prepared {
            let name = p.name.as_deref().unwrap_or_default();
            println!("# {name}");
            if let Err(e) = knock_one(p, &args, &mut print_line) {
                eprintln!("sesame: {name}: {e:#}");
                status = status.worse(crate::exit_status(&e));
            }
        }
        return Ok(status);
    }
    // In parallel; the lines come out in the order the profiles were named.
    let results: Vec<Mutex<Option<Outcome>>> = prepared.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..prepared.len().min(MAX_PARALLEL) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(p) = prepared.get(i) else {
                        break;
                    };
                    let mut lines = Vec::new();
                    let r = knock_one(p, &args, &mut |l| lines.push(l));
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some((lines, r));
                    }
                }
            });
        }
    });
    let mut status = Exit::Success;
    let (mut failed, mut unconfirmed) = (Vec::new(), Vec::new());
    for (p, slot) in prepared.iter().zip(results) {
        let name = p.name.as_deref().unwrap_or_default();
        let Some((lines, result)) = slot.into_inner().ok().flatten() else {
            eprintln!("sesame: {name}: the knock did not finish");
            status = status.worse(Exit::Failure);
            failed.push(name);
            continue;
        };
        for line in lines {
            if let Line::Note(n) = line {
                eprintln!("sesame: {name}: {n}");
            }
        }
        match result {
            Ok(done) => println!("{name}: {}", summary(&done)),
            Err(e) => {
                eprintln!("sesame: {name}: {e:#}");
                let code = crate::exit_status(&e);
                status = status.worse(code);
                if code == Exit::Unconfirmed {
                    unconfirmed.push(name);
                } else {
                    failed.push(name);
                }
            }
        }
    }
    for (names, what) in [(&failed, "failed"), (&unconfirmed, "unconfirmed")] {
        if !names.is_empty() {
            eprintln!(
                "sesame: {} of {} profiles {what}: {}",
                names.len(),
                prepared.len(),
                names.join(", ")
            );
        }
    }
    Ok(status)
}

fn print_line(line: Line) {
    match line {
        Line::Out(l) => println!("{l}"),
        Line::Note(l) => eprintln!("sesame: {l}"),
    }
}

/// The profiles the command names, and whether there are several (more than one name, or a
/// group): names in the order given, groups expanded, each profile once.
fn targets(args: &OpenArgs) -> anyhow::Result<(Vec<Target>, bool)> {
    if let Some(p) = &args.which.profile {
        return Ok((
            vec![Target {
                name: None,
                path: p.clone(),
            }],
            false,
        ));
    }
    let mut out: Vec<Target> = Vec::new();
    let mut grouped = false;
    for word in &args.which.names {
        let (names, group) = match word.strip_prefix('@') {
            Some(g) => (groups::members(g)?, Some(g)),
            None => (vec![word.clone()], None),
        };
        grouped |= group.is_some();
        for name in names {
            if out.iter().any(|t| t.name.as_deref() == Some(&name)) {
                continue;
            }
            let path = match group {
                Some(g) => {
                    let path = crate::profiles::profile_path(&name)?;
                    if !path.exists() {
                        return Err(usage(format!(
                            "the group '{g}' names '{name}', which is not an installed profile ({} does not exist; see `sesame list`)",
                            path.display()
                        )));
                    }
                    path
                }
                None => crate::ProfileArg {
                    name: Some(name.clone()),
                    profile: None,
                }
                .path()?,
            };
            out.push(Target {
                name: Some(name),
                path,
            });
        }
    }
    let many = grouped || out.len() > 1;
    Ok((out, many))
}

/// Loads a profile and checks what the command asks of it.
fn prepare(t: Target, args: &OpenArgs) -> anyhow::Result<Prepared> {
    let k = Knocker::load(&t.path)?;
    let profile = &k.profile;
    let mut services = if args.ports.is_empty() {
        profile.open.clone()
    } else {
        args.ports.clone()
    };
    services.dedup();
    if services.len() > sesame_proto::wire::MAX_SERVICES {
        return Err(usage(format!(
            "at most {} services fit in one knock, {} given",
            sesame_proto::wire::MAX_SERVICES,
            services.len()
        )));
    }
    // A lease that admits one connection is the user's: `--wait` must not connect.
    let one_connection = profile.lease == LeaseKind::Connection;
    let wait_port = match args.wait.as_deref() {
        None => None,
        Some("") if one_connection => None,
        Some("") => Some(
            services
                .iter()
                .find(|s| s.proto == Proto::Tcp)
                .map(|s| s.port)
                .ok_or_else(|| {
                    usage("--wait needs a tcp service to try: give one, e.g. --wait tcp/22")
                })?,
        ),
        Some(text) => {
            let s: Service = text
                .parse()
                .map_err(|e: sesame_proto::ServiceParseError| usage(e.to_string()))?;
            if s.proto != Proto::Tcp {
                return Err(usage(format!(
                    "--wait {s}: only tcp services can be confirmed"
                )));
            }
            Some(s.port)
        }
    };
    let sequence_only = profile.payload == PayloadMode::None && profile.params.length > 0;
    if sequence_only && args.bind.allow_ip.is_some() {
        return Err(usage(
            "--allow-ip needs a payload, but the profile has payload = \"none\"",
        ));
    }
    Ok(Prepared {
        name: t.name,
        k,
        services,
        wait_port: wait_port.filter(|_| !one_connection),
        sequence_only,
    })
}

/// "IPv4" or "IPv6".
fn family_name(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

/// `--allow-ip` for the knock to `target`: when both families are knocked, it binds only the
/// knock of its own family (the other binds this host's address in its family, as without it).
fn allow_ip_for(args: &OpenArgs, target: IpAddr, dual: bool) -> Option<IpAddr> {
    args.bind
        .allow_ip
        .filter(|a| !dual || a.is_ipv4() == target.is_ipv4())
}

/// The binding of the knock to `target`.
fn binding(p: &Prepared, args: &OpenArgs, target: IpAddr, dual: bool) -> anyhow::Result<Binding> {
    if p.sequence_only {
        return Ok(Binding {
            address: None,
            how: "not bound: a sequence-only knock (mode none) names no address".into(),
        });
    }
    knock::choose_binding(
        allow_ip_for(args, target, dual),
        p.k.profile.bind_address && !args.bind.no_bind,
        p.k.profile.stun.as_deref(),
        target,
    )
}

/// Why a knock of a dual-stack `open` (`dual`, and a bound knock wanted: neither `--no-bind`
/// nor `bind_address = false` nor payload = "none") must not go with binding `b`, which names
/// no address (this host's address in that family is private or shared, behind a NAT): an
/// unbound knock is a bearer token for whoever captures it (on the client's Wi-Fi, say). Such
/// a knock goes out only where `sesame open` sent it before it knocked both families: to the
/// first address (`first`: the resolver's first, the one a connection tries first), and never
/// when `--allow-ip` was given (`allow_ip`: then every knock was bound). The knock of a family
/// `-4`/`-6` names alone (not `dual`) is as it always was.
fn unbound_refused(b: &Binding, dual: bool, first: bool, allow_ip: bool) -> Option<String> {
    if !dual || b.is_bound() || (first && !allow_ip) {
        return None;
    }
    Some(format!(
        "{}; an unbound knock (anyone who captures it can use it) goes only to the address connections try first{}, and the other family is knocked only when its knock is bound: -4 or -6 knocks one family as asked",
        b.how,
        if allow_ip {
            ", and never with --allow-ip"
        } else {
            ""
        }
    ))
}

/// Knocks one profile: over each family its host has (or the one `-4`/`-6` asks for); with
/// `--wait`, confirms the service at the address the resolver gives first, the one a
/// connection (ssh's) tries first, and knocks the other family once without checking it. When
/// the host has both families, one that cannot be knocked (no route, no STUN answer in it) is
/// a note, and the knock fails only if neither could be sent.
fn knock_one(p: &Prepared, args: &OpenArgs, out: &mut dyn FnMut(Line)) -> anyhow::Result<Done> {
    let profile = &p.k.profile;
    let host = profile.host.clone();
    let family = crate::family_of(args.ipv4, args.ipv6);
    let addresses = knock::resolve_each_family(&host, family)?;
    let dual = addresses.len() > 1;
    let (what, _) = crate::describe(
        &p.services,
        &Binding {
            address: None,
            how: String::new(),
        },
    );
    let mut done = Done {
        host: host.clone(),
        what: what.clone(),
        knocked: Vec::new(),
        answered: None,
    };
    let mut failures: Vec<String> = Vec::new();
    let mut not_knocked = |target: IpAddr, why: &anyhow::Error, out: &mut dyn FnMut(Line)| {
        let line = format!(
            "not knocked over {} ({target}): {why:#}",
            family_name(target)
        );
        out(Line::Note(line.clone()));
        failures.push(line);
    };
    // Each family's binding. With both families, one without a route from this host is left
    // out (a connection would not use it either), and so is a knock that would go unbound
    // where a single-family knock would have been bound ([`unbound_refused`]).
    let first = addresses.first().copied();
    let wants_binding = !p.sequence_only && profile.bind_address && !args.bind.no_bind;
    let mut usable: Vec<(IpAddr, Binding)> = Vec::new();
    for target in addresses {
        if dual {
            if let Err(e) = knock::local_source(target) {
                not_knocked(target, &anyhow!("no route from this host ({e})"), out);
                continue;
            }
        }
        match binding(p, args, target, dual) {
            Ok(b) => match unbound_refused(
                &b,
                dual && wants_binding,
                Some(target) == first,
                args.bind.allow_ip.is_some(),
            ) {
                Some(why) => not_knocked(target, &anyhow!("{why}"), out),
                None => usable.push((target, b)),
            },
            Err(e) if dual => not_knocked(target, &e, out),
            Err(e) => return Err(e),
        }
    }
    if args.dry_run {
        for (target, b) in &usable {
            let plan =
                p.k.plan(*target, args.time_offset, &p.services, b.address)?;
            let (_, whom) = crate::describe(&p.services, b);
            let now = crate::system_now().offset_millis(args.time_offset.saturating_mul(1000));
            out(Line::Out(format!(
                "# dry run: nothing is sent. server {target} ({host}), step {} ({} s), time {}",
                plan.counter,
                profile.params.step_seconds,
                crate::format_time(now)
            )));
            for packet in &plan.packets {
                out(Line::Out(packet.to_string()));
            }
            out(Line::Out(format!("# asks for {what} {whom}")));
            done.knocked.push((*target, whom));
        }
        return finish(done, failures);
    }
    let delay = Duration::from_millis(args.waiting.delay_ms);
    let send = |target: IpAddr, b: &Binding| -> anyhow::Result<String> {
        let plan = p.k.plan(target, args.time_offset, &p.services, b.address)?;
        knock::send(&plan, delay)?;
        let (_, whom) = crate::describe(&p.services, b);
        Ok(format!(
            "knocked {host} ({target}): {} packets at step {}, asking for {what} {whom}",
            plan.packets.len(),
            plan.counter
        ))
    };
    let Some(port) = p.wait_port else {
        for (target, b) in &usable {
            match send(*target, b) {
                Ok(line) => {
                    out(Line::Out(line));
                    done.knocked
                        .push((*target, crate::describe(&p.services, b).1));
                }
                Err(e) if dual => not_knocked(*target, &e, out),
                Err(e) => return Err(e),
            }
        }
        if args.wait.is_some() && !done.knocked.is_empty() {
            // What `--wait` still can do with a lease that admits one connection: give the
            // knock time to land, so that the connection made right after finds the lease with
            // its first SYN.
            std::thread::sleep(wait::CONNECTION_LEAD);
            out(Line::Note(ONE_CONNECTION_NOTE.to_owned()));
        }
        return finish(done, failures);
    };
    if usable.is_empty() {
        return finish(done, failures);
    }
    let (primary, binding) = usable.remove(0);
    // The other family: knocked once, so that a connection that falls back to it finds it
    // open too, but not checked.
    for (target, b) in &usable {
        match send(*target, b) {
            Ok(line) => {
                out(Line::Out(format!(
                    "{line}; not checked: --wait checks {primary}, the address connections try first"
                )));
                done.knocked
                    .push((*target, crate::describe(&p.services, b).1));
            }
            Err(e) => not_knocked(*target, &e, out),
        }
    }
    let service = SocketAddr::new(primary, port);
    let policy = wait::WaitPolicy {
        timeout: args.waiting.timeout,
        retries: args.waiting.retries,
        delay,
        one_connection: false,
    };
    let offset = args.time_offset;
    let other_address = crate::elsewhere(allow_ip_for(args, primary, dual), service);
    if let Some(ip) = other_address {
        out(Line::Note(format!(
            "--wait connects to {service} from this host, not from {ip}: it can confirm the knock only if the server sees this host's connections come from {ip} (a NAT's public address, say)"
        )));
    }
    let opened = wait::knock_and_wait(
        &|shift| {
            p.k.plan(primary, offset + shift, &p.services, binding.address)
        },
        offset,
        service,
        policy,
        &p.k.diagnosis(&binding, other_address),
        &mut |line| out(Line::Note(line.to_owned())),
    )?;
    if opened.answered_before {
        return Err(anyhow::Error::new(Unconfirmed(format!(
            "{service} already answered from this host before the knock (a lease for this address: an earlier knock's, or another client's behind the same NAT; or the port is not protected): the knock was sent, but --wait cannot confirm it"
        ))));
    }
    let (_, whom) = crate::describe(&p.services, &binding);
    out(Line::Out(format!(
        "{host} tcp/{port} answers (after {} knock{}, asking for {what} {whom})",
        opened.knocks,
        if opened.knocks == 1 { "" } else { "s" }
    )));
    done.knocked.insert(0, (primary, whom));
    done.answered = Some((service, opened.knocks));
    Ok(done)
}

/// `done` if a family was knocked, else the reasons none was, in one line.
fn finish(done: Done, failures: Vec<String>) -> anyhow::Result<Done> {
    if done.knocked.is_empty() {
        return Err(anyhow!("{}", failures.join("; ")));
    }
    Ok(done)
}

/// The one line that sums up a profile's knock among several.
fn summary(done: &Done) -> String {
    let each = |(ip, whom): &(IpAddr, String)| format!("{ip} {whom}");
    match done.answered {
        Some((service, knocks)) => {
            let others: Vec<String> = done.knocked.iter().skip(1).map(each).collect();
            format!(
                "{} tcp/{} answers at {} (after {knocks} knock{}, asking for {} {}){}",
                done.host,
                service.port(),
                service.ip(),
                if knocks == 1 { "" } else { "s" },
                done.what,
                done.knocked
                    .first()
                    .map(|k| k.1.as_str())
                    .unwrap_or_default(),
                if others.is_empty() {
                    String::new()
                } else {
                    format!("; also knocked {}", others.join(", "))
                }
            )
        }
        None => format!(
            "knocked {}, asking for {}: {}",
            done.host,
            done.what,
            done.knocked.iter().map(each).collect::<Vec<_>>().join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn unbound() -> Binding {
        Binding {
            address: None,
            how: "not bound: this host's address 10.0.0.5 is private or shared (behind a NAT)"
                .into(),
        }
    }

    /// A dual-stack open sends no unbound knock that the single-family open before it would
    /// not have sent: only to the first address, and never with --allow-ip.
    #[test]
    fn a_second_family_is_never_knocked_unbound() {
        let bound = Binding {
            address: Some("2001:db8::7".parse().unwrap()),
            how: "this host's public address".into(),
        };
        // (dual, first, allow_ip) -> refused?
        for (dual, first, allow_ip, refused) in [
            (true, true, false, false),
            (true, false, false, true),
            (true, true, true, true),
            (true, false, true, true),
            // -4/-6, --no-bind, bind_address = false, payload = "none": as always.
            (false, false, false, false),
            (false, true, true, false),
        ] {
            let why = unbound_refused(&unbound(), dual, first, allow_ip);
            assert_eq!(why.is_some(), refused, "{dual} {first} {allow_ip}: {why:?}");
            if let Some(why) = why {
                assert!(
                    why.starts_with("not bound: this host's address 10.0.0.5"),
                    "{why}"
                );
                assert!(why.contains("-4 or -6"), "{why}");
            }
            assert_eq!(unbound_refused(&bound, dual, first, allow_ip), None);
        }
    }
}
