//! `sesamed status`: what the control socket answers.

use std::collections::BTreeMap;
use std::time::Instant;

use sesame_proto::UnixMillis;
use sesame_proto::params::PayloadMode;
use sesame_proto::tracker::Reason;

use super::core::Core;
use super::firewall_task::FwState;
use super::rfc3339;
use crate::config::Config;
use crate::control::{ClientStatus, Counters, LeaseStatus, Status};

/// What the client list of a status needs, copied on the packet thread: the names (shared,
/// not copied) and the last knock of the clients that knocked. [`ClientList::build`] makes
/// the list from it on another thread.
pub(super) struct ClientList {
    names: std::sync::Arc<Vec<String>>,
    /// (client index, when, from where, result), by index.
    knocked: Vec<(usize, UnixMillis, std::net::IpAddr, &'static str)>,
}

impl ClientList {
    /// The copy, on the packet thread: a pass over the clients' last knocks.
    pub(super) fn of(core: &Core, fw: &FwState) -> Self {
        let knocked = core
            .last
            .iter()
            .enumerate()
            .filter_map(|(i, last)| {
                let l = last.as_ref()?;
                let failed = core
                    .names
                    .get(i)
                    .and_then(|name| fw.failed_at.get(name))
                    .is_some_and(|t| *t >= l.at);
                let result = if l.result == "granted" && failed {
                    "firewall_failed"
                } else {
                    l.result
                };
                Some((i, l.at, l.source, result))
            })
            .collect();
        ClientList {
            names: std::sync::Arc::clone(&core.names),
            knocked,
        }
    }

    /// The `clients` of the status, in the order of the configuration.
    pub(super) fn build(self) -> Vec<ClientStatus> {
        let mut knocked = self.knocked.into_iter().peekable();
        self.names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let last = knocked.next_if(|k| k.0 == i);
                ClientStatus {
                    name: name.clone(),
                    last_knock: last.map(|l| rfc3339(l.1)),
                    last_source: last.map(|l| l.2.to_string()),
                    last_result: last.map(|l| l.3.to_owned()),
                }
            })
            .collect()
    }
}

/// What `sesamed status` shows, but for the list of clients (`clients` is empty: it is built
/// from a [`ClientList`], off the packet thread). Cheap: counters, leases, actions.
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
    // The client list (a line per configured client: 82 MB of JSON at 1 000 000) is built
    // off the packet thread from a [`ClientList`].
    let clients = Vec::new();
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
        after_crash_until: after_crash_until(
            core.tracker.crash_floor(),
            config.knock.payload,
            core.lost_writes_floor,
            super::system_now(),
        )
        .map(rfc3339),
        counters: Counters {
            packets_seen: stats.packets,
            capture_drops: filter.capture_drops().get(),
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

/// Until when the rules of a start after a crash hold, if they still do at `now` (the wall
/// clock, which knocks are stamped by): the tracker's crash floor (`crash`) where payloads
/// exist (it refuses unbound payloads, and sequences alone in `optional` mode; with `payload =
/// "none"` it refuses nothing, and the start's log line says nothing of it either), or the
/// floor of a machine crash under `state_sync = "fence"` (`lost_writes`), whichever is later.
fn after_crash_until(
    crash: Option<UnixMillis>,
    payload: PayloadMode,
    lost_writes: Option<UnixMillis>,
    now: UnixMillis,
) -> Option<UnixMillis> {
    let crash = crash.filter(|_| payload != PayloadMode::None);
    crash.max(lost_writes).filter(|until| *until > now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_of_a_start_after_a_crash_show_until_they_end() {
        let now = UnixMillis(1_764_000_000_000);
        let later = UnixMillis(1_764_000_090_000);
        let fence = UnixMillis(1_764_000_015_000);
        let until = |crash, payload, lost| after_crash_until(crash, payload, lost, now);
        // A clean start: none.
        assert_eq!(until(None, PayloadMode::Required, None), None);
        // After a crash, while they hold.
        assert_eq!(until(Some(later), PayloadMode::Required, None), Some(later));
        assert_eq!(until(Some(later), PayloadMode::Optional, None), Some(later));
        // Passed (or ending now): none.
        assert_eq!(until(Some(now), PayloadMode::Required, None), None);
        assert_eq!(
            until(Some(UnixMillis(now.0 - 1)), PayloadMode::Required, None),
            None
        );
        // Without payloads the crash floor refuses nothing.
        assert_eq!(until(Some(later), PayloadMode::None, None), None);
        // The floor of a machine crash under "fence" refuses every knock: it counts, in every
        // mode, and the later of the two shows.
        assert_eq!(until(None, PayloadMode::None, Some(fence)), Some(fence));
        assert_eq!(
            until(Some(later), PayloadMode::Required, Some(fence)),
            Some(later)
        );
        assert_eq!(
            until(Some(fence), PayloadMode::Required, Some(later)),
            Some(later)
        );
    }
}
