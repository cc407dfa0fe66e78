//! sesamed's log (and the floor's listener): where a knock's time goes.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::knock::Knock;
use crate::util::{ms, parse_rfc3339};

/// Per-knock stages from sesamed's debug log (ms since the client's start).
#[derive(Clone, Debug, Default)]
pub(crate) struct Stages {
    pub(crate) sequence: Vec<f64>,
    pub(crate) accepted: Vec<f64>,
    pub(crate) granted: Vec<f64>,
    /// granted → connection completed.
    pub(crate) after_grant: Vec<f64>,
    /// The knock's latency (for the same knocks).
    pub(crate) open: Vec<f64>,
    pub(crate) client_exit: Vec<f64>,
    /// The client's first and last datagram on its interface (the client's own time ends at
    /// the last; for the same knocks as `sequence`, empty without the client's packet tap).
    pub(crate) sent_first: Vec<f64>,
    pub(crate) sent_last: Vec<f64>,
    /// For the same knocks: the last datagram sent → `accepted` (the floor: the last datagram
    /// received; sesamed: the payload opened and the knock accepted): the network, the
    /// server's capture and its work on the knock.
    pub(crate) last_sent_to_accepted: Vec<f64>,
    /// Per knock (ms since the client's start): first and last datagram sent (None without
    /// the tap), the three events, the connection completed; for finding what made a slow
    /// knock slow.
    pub(crate) rows: Vec<[Option<f64>; 6]>,
}

/// Wall times of three events per source: (sequence complete, accepted, granted) for sesamed;
/// (first datagram received, last datagram received, nft exited) for the floor.
pub(crate) type EventTimes = HashMap<String, [Option<f64>; 3]>;

pub(crate) fn sesame_times(log: &Path) -> EventTimes {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut times = EventTimes::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let msg = v["message"].as_str().unwrap_or("");
        let idx = match msg {
            "sequence complete" => 0,
            "knock accepted; replay state saved" => 1,
            "granted" => 2,
            _ => continue,
        };
        let (Some(src), Some(ts)) = (
            v["source"].as_str(),
            v["timestamp"].as_str().and_then(parse_rfc3339),
        ) else {
            continue;
        };
        let slot = &mut times.entry(src.to_owned()).or_default()[idx];
        if slot.is_none() {
            *slot = Some(ts);
        }
    }
    times
}

pub(crate) fn stages(times: &EventTimes, knocks: &[Knock]) -> Stages {
    let mut st = Stages::default();
    for k in knocks {
        let (Some(open), Some(t)) = (k.open, times.get(&k.source.to_string())) else {
            continue;
        };
        let rel = |x: Option<f64>| x.map(|x| (x - k.started_wall) * 1000.0);
        if let (Some(s), Some(a), Some(g)) = (rel(t[0]), rel(t[1]), rel(t[2])) {
            st.sequence.push(s);
            st.accepted.push(a);
            st.granted.push(g);
            st.after_grant.push(ms(open) - g);
            st.open.push(ms(open));
            let sent = || k.sent_wall.iter().map(|&w| (w - k.started_wall) * 1000.0);
            let (first, last) = (sent().reduce(f64::min), sent().reduce(f64::max));
            if let (Some(first), Some(last)) = (first, last) {
                st.sent_first.push(first);
                st.sent_last.push(last);
                st.last_sent_to_accepted.push(a - last);
            }
            st.rows
                .push([first, last, Some(s), Some(a), Some(g), Some(ms(open))]);
        }
        if let Some(e) = k.client_exit {
            st.client_exit.push(ms(e));
        }
    }
    st
}
