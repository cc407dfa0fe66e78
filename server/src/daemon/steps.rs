//! The step tables, kept up to date off the packet thread where that is safe.
//!
//! The tracker keeps the tables of the window and of the step after it. At a step turn the
//! table of the new step-after-the-window is missing; it is needed only at the *next* turn, so
//! it is built on a blocking thread (109 ms at 100 000 clients, BENCHMARKS.md) and installed
//! when ready, while packets keep flowing. A missing table of the window itself (after the
//! process was stopped for more than a step, or the clock jumped) is built at once on this
//! thread, as before: a knock valid now must not wait for it.
//!
//! The capture filter follows the tables: it is recomputed once they are all there. Until
//! then the filter built before the turn stays, and it covers the new window (it was computed
//! for the window and the step after it, see `Tracker::live_ports`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use sesame_proto::UnixMillis;
use sesame_proto::tracker::StepTable;

use super::core::Core;
use super::system_now;
use crate::capture::LiveFilter;

/// Called on every tick (twice a second).
pub(super) fn refresh(
    core: &Rc<RefCell<Core>>,
    live: &Rc<RefCell<LiveFilter>>,
    building: &Rc<Cell<bool>>,
    now: UnixMillis,
) {
    let mut c = core.borrow_mut();
    let missing = c.tracker.missing_counters(now);
    // live_counters is the window and the step after it.
    let ahead = *c.tracker.live_counters(now).end();
    if missing.is_empty() || missing.iter().any(|&k| k != ahead) {
        if let Err(e) = c.tracker.advance(now) {
            tracing::error!(error = %e, "step tables could not be computed");
        }
        live.borrow_mut().update(&c.tracker, now, false);
        return;
    }
    // The turn: the old table goes now (else the packet path would call advance and build
    // the new one itself), the new one is built elsewhere.
    c.tracker.retire(now);
    if building.get() {
        return;
    }
    building.set(true);
    let clients = c.tracker.clients_shared();
    let params = c.tracker.config().params.clone();
    let mode = c.tracker.config().payload;
    drop(c);
    let (core, live, building) = (Rc::clone(core), Rc::clone(live), Rc::clone(building));
    tokio::task::spawn_local(async move {
        let shared = Arc::clone(&clients);
        let started = std::time::Instant::now();
        let built = tokio::task::spawn_blocking(move || {
            missing
                .iter()
                .map(|&k| StepTable::build(&shared, &params, mode, k))
                .collect::<Result<Vec<_>, _>>()
        })
        .await;
        building.set(false);
        let now = system_now();
        let mut c = core.borrow_mut();
        // A reload replaced the tracker meanwhile: it built its own tables.
        if !Arc::ptr_eq(&c.tracker.clients_shared(), &clients) {
            return;
        }
        match built {
            Ok(Ok(tables)) => {
                for t in tables {
                    c.tracker.install(t, now);
                }
                tracing::debug!(
                    ms = started.elapsed().as_millis() as u64,
                    "step table of the next step built off the packet thread"
                );
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "step tables could not be computed");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "step table build failed");
                return;
            }
        }
        // Nothing is left to build unless a step passed meanwhile.
        if let Err(e) = c.tracker.advance(now) {
            tracing::error!(error = %e, "step tables could not be computed");
        }
        live.borrow_mut().update(&c.tracker, now, false);
    });
}
