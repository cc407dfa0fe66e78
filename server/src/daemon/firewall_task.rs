//! The firewall task: feeds grants, reloads, ticks and table rebuilds to the pure
//! [`LeaseTable`] and carries out the actions it returns with the backend, at most
//! `concurrency` at once (one at a time for nftables, which keeps them in order).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use sesame_keys::PublicKey;
use sesame_proto::UnixMillis;
use tokio::sync::mpsc;

use super::Clock;
use super::core::GrantJob;
use crate::firewall::{AnyFirewall, Firewall, Lease};
use crate::lease::{Action, Granted, LeaseTable, Op, Policy};

/// What the firewall task is asked to do.
pub(super) enum FwMsg {
    /// Open (or refresh) leases.
    Grant(GrantJob),
    /// Use another backend and policy from now on (after a reload).
    Replace(Box<AnyFirewall>, Policy),
    /// End the leases of every client key not in the set (removed, or its key replaced).
    KeepOnly(HashSet<PublicKey>),
}

/// The firewall task's state, readable by the control socket.
pub(super) struct FwState {
    /// The leases.
    pub(super) table: LeaseTable,
    /// Per client name, when a grant of theirs last failed in the firewall (shown by
    /// `status` as the last knock's result while no newer knock came).
    pub(super) failed_at: HashMap<String, UnixMillis>,
}

/// A grant whose services are being opened (for its one log line).
struct JobProgress {
    client: String,
    source: std::net::IpAddr,
    /// The address (or block) opened, as logged.
    address: String,
    remaining: usize,
    opened: Vec<String>,
}

/// The result of one backend action.
struct Done {
    action: Action,
    /// The grant job it belongs to, if any.
    job: Option<u64>,
    result: Result<(), crate::firewall::FirewallError>,
}

/// Where the active leases are saved, and what to do with those adopted at start.
pub(super) struct Persist {
    /// The state directory (`leases` is written there when the leases change).
    pub(super) state_dir: std::path::PathBuf,
    /// Leases of the previous run were adopted: put them back in the firewall.
    pub(super) restore: bool,
    /// The client keys configured now (adopted leases of others end at once).
    pub(super) keep: HashSet<PublicKey>,
}

/// The active leases as saved (wall-clock ends), to notice a change.
fn saved(table: &LeaseTable, clock: &Clock) -> Vec<crate::state::SavedLease> {
    let now = clock.now();
    let wall = super::system_now();
    table
        .active(now)
        .into_iter()
        .map(|l| crate::state::SavedLease {
            client: l.key.client,
            name: l.client_name,
            address: l.key.address,
            prefix: l.key.prefix,
            service: l.key.service,
            // Rounded down to the second (never longer than the kernel's), so a table that did
            // not change is not rewritten.
            end: UnixMillis(wall.plus_millis(l.end.since(now)).0 / 1000 * 1000),
        })
        .collect()
}

/// Runs until `stop` fires: then closes the leases a backend does not expire by itself.
pub(super) async fn firewall_task(
    mut firewall: AnyFirewall,
    mut jobs: mpsc::UnboundedReceiver<FwMsg>,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    state: Rc<RefCell<FwState>>,
    clock: Clock,
    persist: Persist,
) {
    let mut limit = Rc::new(tokio::sync::Semaphore::new(
        firewall.traits().concurrency.max(1),
    ));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    let mut progress: HashMap<u64, JobProgress> = HashMap::new();
    let mut next_job = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut verify = tokio::time::interval(Duration::from_secs(5));
    verify.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    let spawn = |firewall: &AnyFirewall,
                 limit: &Rc<tokio::sync::Semaphore>,
                 action: Action,
                 job: Option<u64>| {
        let mut fw = firewall.clone();
        let limit = Rc::clone(limit);
        let done = done_tx.clone();
        let now = clock.now();
        tokio::task::spawn_local(async move {
            let _permit = limit.acquire().await;
            let result = run_action(&mut fw, &action, now).await;
            let _ = done.send(Done {
                action,
                job,
                result,
            });
        });
    };

    if persist.restore {
        let now = clock.now();
        let gone = state
            .borrow_mut()
            .table
            .revoke(now, |k| persist.keep.contains(k));
        for action in gone {
            tracing::info!(client = %action.client_name, address = %action.lease.address, service = %action.lease.service, "lease ended: client removed or its key replaced while sesamed was stopped");
            spawn(&firewall, &limit, action, None);
        }
        let actions = state.borrow_mut().table.rebuilt(now);
        tracing::info!(
            leases = actions.len(),
            "leases of the previous run restored"
        );
        for action in actions {
            spawn(&firewall, &limit, action, None);
        }
    }
    let mut saver = LeaseSaver::new(
        persist.state_dir.clone(),
        saved(&state.borrow().table, &clock),
    );
    loop {
        saver.save_if_changed(|| saved(&state.borrow().table, &clock));
        tokio::select! {
            _ = &mut stop => {
                let current = saved(&state.borrow().table, &clock);
                saver.finish(current).await;
                let actions = state.borrow_mut().table.drain(clock.now());
                let now = clock.now();
                for action in actions {
                    match run_action(&mut firewall, &action, now).await {
                        Ok(()) => tracing::info!(client = %action.client_name, address = %action.lease.address, service = %action.lease.service, "lease closed at shutdown"),
                        Err(e) => tracing::error!(client = %action.client_name, address = %action.lease.address, service = %action.lease.service, error = %e, "closing the lease failed"),
                    }
                }
                return;
            }
            msg = jobs.recv() => {
                let job = match msg {
                    None => break,
                    Some(FwMsg::Grant(job)) => job,
                    Some(FwMsg::Replace(fw, policy)) => {
                        firewall = *fw;
                        limit = Rc::new(tokio::sync::Semaphore::new(firewall.traits().concurrency.max(1)));
                        state.borrow_mut().table.reconfigure(firewall.traits(), policy);
                        continue;
                    }
                    Some(FwMsg::KeepOnly(keep)) => {
                        let actions = state.borrow_mut().table.revoke(clock.now(), |k| keep.contains(k));
                        for action in actions {
                            tracing::info!(client = %action.client_name, address = %action.lease.address, service = %action.lease.service, "lease ended: client removed or its key replaced");
                            spawn(&firewall, &limit, action, None);
                        }
                        continue;
                    }
                };
                let id = next_job;
                next_job += 1;
                let (actions, outcome) = state.borrow_mut().table.grant(
                    clock.now(),
                    job.client,
                    &job.client_name,
                    job.address,
                    job.prefix,
                    &job.services,
                );
                let mut entry = JobProgress {
                    client: job.client_name.clone(),
                    source: job.source,
                    address: crate::lease::show_address(
                        crate::lease::block_start(job.address, job.prefix),
                        job.prefix,
                    ),
                    remaining: actions.len(),
                    opened: Vec::new(),
                };
                for (service, granted) in outcome {
                    match granted {
                        Granted::Kept | Granted::Extended => entry.opened.push(service.to_string()),
                        Granted::Cooldown => tracing::warn!(
                            client = %job.client_name,
                            address = %job.address,
                            service = %service,
                            "hook cooldown: open_command not run for this new lease"
                        ),
                        Granted::Opening | Granted::Refreshing => {}
                    }
                }
                if actions.is_empty() {
                    log_granted(&entry, &state.borrow().table);
                } else {
                    progress.insert(id, entry);
                    for action in actions {
                        spawn(&firewall, &limit, action, Some(id));
                    }
                }
            }
            Some(done) = done_rx.recv() => {
                let now = clock.now();
                let ok = done.result.is_ok();
                state.borrow_mut().table.done(now, done.action.id, ok);
                if let Err(e) = &done.result {
                    let what = match done.action.op {
                        Op::Open { .. } => "firewall grant failed",
                        Op::Close => "closing the lease failed",
                    };
                    state.borrow_mut().failed_at.insert(done.action.client_name.clone(), super::system_now());
                    tracing::error!(
                        client = %done.action.client_name,
                        address = %done.action.lease.address,
                        service = %done.action.lease.service,
                        error = %e,
                        "{what}"
                    );
                }
                if let Some(job) = done.job {
                    if let Some(entry) = progress.get_mut(&job) {
                        entry.remaining -= 1;
                        if ok {
                            entry.opened.push(done.action.lease.service.to_string());
                        }
                        if entry.remaining == 0 {
                            if let Some(entry) = progress.remove(&job) {
                                log_granted(&entry, &state.borrow().table);
                            }
                        }
                    }
                }
            }
            _ = verify.tick() => {
                let _permit = limit.acquire().await;
                match firewall.verify().await {
                    Ok(false) => {}
                    Ok(true) => {
                        let actions = state.borrow_mut().table.rebuilt(clock.now());
                        tracing::error!(
                            backend = %firewall,
                            leases = actions.len(),
                            "the firewall table had been removed or replaced (nft flush ruleset, a reloaded boot ruleset): it is rebuilt, and the active leases are restored"
                        );
                        drop(_permit);
                        for action in actions {
                            spawn(&firewall, &limit, action, None);
                        }
                    }
                    Err(e) => tracing::error!(backend = %firewall, error = %e, "cannot check or rebuild the firewall table"),
                }
            }
            _ = tick.tick() => {
                let (actions, ended) = state.borrow_mut().table.tick(clock.now());
                for (key, name) in ended {
                    tracing::info!(client = %name, address = %key.address, service = %key.service, "lease ended");
                }
                for action in actions {
                    spawn(&firewall, &limit, action, None);
                }
            }
        }
    }
    let current = saved(&state.borrow().table, &clock);
    saver.finish(current).await;
}

/// Writes `state_dir/leases` when the active leases change, on a blocking thread and one
/// write at a time, so the packet thread never waits for the disk: a refresh's firewall
/// update used to wait behind the file's create, write and rename (0.2 ms at the median,
/// 2.7 ms at p99 and 7.6 ms at worst on this project's shared disk). A change made while a
/// write is in flight is written by the next one (the task's 250 ms tick comes back here), so
/// a crash can lose the last quarter second of changes. That is safe because the file only
/// tells the next start what the kernel already holds (every element expires by itself), and
/// the start restores only leases of clients still configured with the same key.
struct LeaseSaver {
    dir: std::path::PathBuf,
    /// What the file holds once `writing` is done.
    last: Vec<crate::state::SavedLease>,
    writing: Option<tokio::task::JoinHandle<()>>,
}

impl LeaseSaver {
    fn new(dir: std::path::PathBuf, last: Vec<crate::state::SavedLease>) -> Self {
        LeaseSaver {
            dir,
            last,
            writing: None,
        }
    }

    /// Starts a write of `current()` if it differs from the file and no write is in flight.
    fn save_if_changed(&mut self, current: impl FnOnce() -> Vec<crate::state::SavedLease>) {
        if self.writing.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        let current = current();
        if current == self.last {
            return;
        }
        let dir = self.dir.clone();
        let leases = current.clone();
        self.writing = Some(tokio::task::spawn_blocking(move || {
            write_leases(&dir, &leases)
        }));
        self.last = current;
    }

    /// At the end: waits for the write in flight, then writes `current` if it still differs.
    async fn finish(&mut self, current: Vec<crate::state::SavedLease>) {
        if let Some(w) = self.writing.take() {
            let _ = w.await;
        }
        if current != self.last {
            write_leases(&self.dir, &current);
            self.last = current;
        }
    }
}

fn write_leases(dir: &std::path::Path, leases: &[crate::state::SavedLease]) {
    if let Err(e) = crate::state::save_leases(dir, leases) {
        tracing::warn!(error = %e, "cannot save the active leases (state_dir/leases); after a restart status will not show them");
    }
}

/// Carries out one action with the backend.
async fn run_action(
    firewall: &mut AnyFirewall,
    action: &Action,
    now: UnixMillis,
) -> Result<(), crate::firewall::FirewallError> {
    let lease = |until: UnixMillis| Lease {
        client: action.client_name.clone(),
        address: action.lease.address,
        prefix: action.lease.prefix,
        service: action.lease.service,
        timeout_ms: until.since(now).max(1000),
    };
    match action.op {
        Op::Open { refresh, until } => firewall.grant(&lease(until), refresh).await,
        Op::Close => firewall.revoke(&lease(now)).await,
    }
}

/// One line per grant, once the firewall has every rule, so a client that connects after this
/// line is let in.
fn log_granted(entry: &JobProgress, table: &LeaseTable) {
    if entry.opened.is_empty() {
        return;
    }
    tracing::info!(
        client = %entry.client,
        source = %entry.source,
        address = %entry.address,
        services = %entry.opened.join(","),
        lease_seconds = table.policy().lease_ms / 1000,
        "granted"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::state::{SavedLease, load_leases};
    use sesame_proto::Service;

    fn lease(name: &str, end: u64) -> SavedLease {
        SavedLease {
            client: PublicKey::from_bytes([name.len() as u8; 32]),
            name: name.to_owned(),
            address: "198.18.0.2".parse().unwrap(),
            prefix: 32,
            service: "tcp/22".parse::<Service>().unwrap(),
            end: UnixMillis(end),
        }
    }

    fn run<F: std::future::Future<Output = ()>>(f: F) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f);
    }

    /// A change made while a write is in flight waits for it (one write at a time, in order)
    /// and is not lost: `finish` writes it. No write happens for a table that did not change.
    #[test]
    fn a_change_during_a_write_reaches_the_file_by_the_end() {
        let tmp = sesame_test_support::TempDir::new("lease-saver");
        run(async {
            let mut saver = LeaseSaver::new(tmp.0.clone(), Vec::new());
            saver.save_if_changed(Vec::new);
            assert!(saver.writing.is_none(), "nothing changed, nothing written");
            // A write still in flight (one that takes its time).
            saver.writing = Some(tokio::task::spawn_blocking(|| {
                std::thread::sleep(Duration::from_millis(300))
            }));
            saver.save_if_changed(|| vec![lease("laptop", 1_000)]);
            assert!(
                saver.last.is_empty(),
                "a second write started beside the first"
            );
            saver.finish(vec![lease("laptop", 1_000)]).await;
        });
        assert_eq!(load_leases(&tmp.0), vec![lease("laptop", 1_000)]);
    }

    /// The write runs off the calling thread: the first call returns with the write started,
    /// and the file appears once it is done.
    #[test]
    fn the_write_is_started_and_finished_off_the_thread() {
        let tmp = sesame_test_support::TempDir::new("lease-saver");
        run(async {
            let mut saver = LeaseSaver::new(tmp.0.clone(), Vec::new());
            saver.save_if_changed(|| vec![lease("laptop", 3_000)]);
            let writing = saver.writing.take().unwrap();
            writing.await.unwrap();
        });
        assert_eq!(load_leases(&tmp.0), vec![lease("laptop", 3_000)]);
    }
}
