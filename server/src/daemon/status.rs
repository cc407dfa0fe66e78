//! `sesamed status`: what the control socket answers.

use std::collections::BTreeMap;
use std::time::Instant;

use sesame_proto::{Reason, UnixMillis};

use super::core::Core;
use super::firewall_task::FwState;
use super::rfc3339;
use crate::config::Config;
use crate::control::{ClientStatus, Counters, LeaseStatus, Status};

/// What `sesamed status` shows.
pub(super) fn status(
    config: &Config,
    started: Instant,
    core: &Core,
    fw: &FwState,
    filter: &crate::capture::LiveFilter,
    now: UnixMillis,
) -> Status {
    let stats = core.tracker.stats();
    let mut lease_list: Vec<LeaseStatus> = fw
        .table
        .active(now)
        .into_iter()
        .map(|l| LeaseStatus {
            client: l.client_name,
            address: crate::lease::show_address(l.key.address, l.key.prefix),
            service: l.key.service.to_string(),
            seconds_left: l.end.since(now).div_ceil(1000),
        })
        .collect();
    lease_list.sort_by(|a, b| {
        (&a.client, &a.address, &a.service).cmp(&(&b.client, &b.address, &b.service))
    });
    let clients = core
        .names
        .iter()
        .zip(&core.last)
        .map(|(name, last)| ClientStatus {
            name: name.clone(),
            last_knock: last.as_ref().map(|l| rfc3339(l.at)),
            last_source: last.as_ref().map(|l| l.source.to_string()),
            last_result: last.as_ref().map(|l| {
                let failed = fw.failed_at.get(name).is_some_and(|t| *t >= l.at);
                if l.result == "granted" && failed {
                    "firewall_failed".to_owned()
                } else {
                    l.result.to_owned()
                }
            }),
        })
        .collect();
    let lc = fw.table.counters();
    let rejections: BTreeMap<String, u64> = Reason::CODES
        .iter()
        .zip(stats.rejections.iter())
        .filter(|(_, n)| **n > 0)
        .map(|(code, n)| ((*code).to_owned(), *n))
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: started.elapsed().as_secs(),
        pid: std::process::id(),
        config: config.path.display().to_string(),
        uid: Some(nix::unistd::geteuid().as_raw()),
        gid: Some(nix::unistd::getegid().as_raw()),
        server_key_id: crate::control::key_id(&core.server_key.public_key()),
        knock: crate::control::KnockStatus::of(config),
        leases: lease_list,
        clients,
        actions: core.actions.borrow().statuses(),
        action_runner: core.actions.borrow().runner_status(),
        capture_filter: Some(filter.status()),
        counters: Counters {
            packets_seen: stats.packets,
            packets_in_range: stats.in_range,
            resets: stats.resets,
            sequences_completed: stats.sequences_completed,
            payloads_seen: stats.payloads_seen,
            replays_cached: stats.replays_cached,
            gate_passed: stats.gate_passed,
            x25519: stats.x25519,
            payloads_accepted: stats.payloads_accepted,
            payloads_missing: stats.payloads_missing,
            grants: stats.grants,
            leases_opened: lc.opened,
            leases_refreshed: lc.refreshed,
            firewall_failures: lc.failures,
            hook_cooldown_skips: lc.cooldown_skips,
            leases_kept: lc.kept,
            state_write_failures: core.state_write_failures,
            sources_evicted: stats.sources_evicted,
            sources_tracked: core.tracker.tracked_sources() as u64,
            macs_remembered: core.tracker.seen_macs() as u64,
            rejections,
        },
    }
}
