//! The step tables at the window's edges: which ones the tracker keeps, which ones a server
//! must build ([`Tracker::missing_counters`]), which ones it may install, which ones leave, and
//! what the packet path builds itself (since the step-ahead table is built off the packet
//! thread: only a missing table of the window, never the step ahead).
//!
//! With one step of skew, the window at counter `c` is `c - 1 ..= c + 1` and the tracker keeps
//! `c - 1 ..= c + 2`.

use super::*;

#[test]
fn a_new_tracker_holds_the_window_and_the_step_ahead_in_order() {
    let lab = Lab::new(PayloadMode::Required, 2);
    let c = c0();
    assert_eq!(lab.table_counters(), vec![c - 1, c, c + 1, c + 2]);
    assert!(lab.tracker.missing_counters(T0).is_empty());
    assert_eq!(lab.tracker.live_counters(T0), c - 1..=c + 2);
}

#[test]
fn missing_counters_are_exactly_what_a_turn_or_a_jump_needs() {
    let lab = Lab::new(PayloadMode::Required, 2);
    let c = c0();
    // Within the step: nothing; at the turn: the new step ahead only.
    assert_eq!(
        lab.tracker.missing_counters(at(0, STEP_MS - 1)),
        Vec::<u64>::new()
    );
    assert_eq!(lab.tracker.missing_counters(at(1, 0)), vec![c + 3]);
    // Two steps on: the window's new edge and the step ahead, lowest first.
    assert_eq!(lab.tracker.missing_counters(at(2, 0)), vec![c + 3, c + 4]);
    // Far on, or back: every table.
    assert_eq!(
        lab.tracker.missing_counters(at(10, 0)),
        vec![c + 9, c + 10, c + 11, c + 12]
    );
    let back = T0.offset_millis(-(5 * STEP_MS as i64));
    assert_eq!(
        lab.tracker.missing_counters(back),
        vec![c - 6, c - 5, c - 4, c - 3]
    );
}

#[test]
fn install_takes_tables_of_the_window_and_the_step_ahead_only() {
    let mut lab = Lab::new(PayloadMode::Required, 2);
    let c = c0();
    // Ten steps on, every table has left: the window is c + 9 ..= c + 11, ahead c + 12.
    let now = at(10, 500);
    lab.tracker.retire(now);
    assert_eq!(lab.table_counters(), Vec::<u64>::new());
    // Just outside on either side: ignored.
    lab.tracker.install(lab.build(c + 8), now);
    lab.tracker.install(lab.build(c + 13), now);
    assert_eq!(lab.table_counters(), Vec::<u64>::new());
    // The step ahead and both edges of the window are taken, kept in counter order whatever
    // the order they come in.
    lab.tracker.install(lab.build(c + 12), now);
    lab.tracker.install(lab.build(c + 9), now);
    lab.tracker.install(lab.build(c + 11), now);
    assert_eq!(lab.table_counters(), vec![c + 9, c + 11, c + 12]);
    assert_eq!(lab.tracker.missing_counters(now), vec![c + 10]);
    assert!(lab.tracker.live_ports(now).is_none(), "c + 10 is missing");
    lab.tracker.install(lab.build(c + 10), now);
    assert_eq!(lab.table_counters(), vec![c + 9, c + 10, c + 11, c + 12]);
    assert!(lab.tracker.missing_counters(now).is_empty());
    assert_eq!(
        lab.tracker.live_ports(now).map(|l| l.counters),
        Some(c + 9..=c + 12)
    );
    // A second table of a counter that is there: ignored.
    lab.tracker.install(lab.build(c + 10), now);
    assert_eq!(lab.table_counters(), vec![c + 9, c + 10, c + 11, c + 12]);
}

#[test]
fn installed_tables_leave_oldest_first_at_the_next_turn() {
    // The order install keeps is what retire relies on (it pops from the front).
    let mut lab = Lab::new(PayloadMode::Required, 2);
    let c = c0();
    let now = at(10, 0);
    lab.tracker.retire(now);
    for k in [c + 12, c + 10, c + 9, c + 11] {
        lab.tracker.install(lab.build(k), now);
    }
    lab.tracker.retire(at(11, 0));
    assert_eq!(lab.table_counters(), vec![c + 10, c + 11, c + 12]);
}

#[test]
fn an_installed_step_ahead_table_serves_the_knocks_of_the_next_step() {
    // A server builds the step-ahead table elsewhere and installs it; at the next turn the
    // packet path must find it there (and build nothing).
    let mut lab = Lab::new(PayloadMode::None, 2);
    let c = c0();
    lab.tracker.retire(at(1, 0));
    lab.tracker.install(lab.build(c + 3), at(1, 0));
    assert_eq!(lab.table_counters(), vec![c, c + 1, c + 2, c + 3]);
    // Next turn: the window is c + 1 ..= c + 3. A client one step ahead knocks for c + 3.
    let now = at(2, 100);
    lab.knocks(1, c + 3, now, v4(7));
    assert_eq!(lab.grants(), vec![(ClientId(1), c + 3)]);
    assert_eq!(lab.table_counters(), vec![c + 1, c + 2, c + 3]);
    assert_eq!(lab.tracker.missing_counters(now), vec![c + 4]);
}

#[test]
fn retire_drops_the_tables_that_left_the_window_and_builds_nothing() {
    let mut lab = Lab::new(PayloadMode::Required, 2);
    let c = c0();
    lab.tracker.retire(at(0, STEP_MS - 1));
    assert_eq!(lab.table_counters(), vec![c - 1, c, c + 1, c + 2]);
    lab.tracker.retire(at(1, 0));
    assert_eq!(lab.table_counters(), vec![c, c + 1, c + 2]);
    assert_eq!(lab.tracker.missing_counters(at(1, 0)), vec![c + 3]);
    lab.tracker.retire(at(2, 0));
    assert_eq!(lab.table_counters(), vec![c + 1, c + 2]);
}

#[test]
fn retire_after_the_clock_went_back_drops_the_tables_beyond_the_step_ahead() {
    // Started three steps ahead (a clock that was then set back): tables c + 2 ..= c + 5.
    let lab_config = config(PayloadMode::Required);
    let mut lab = Lab::starting_at(lab_config, 2, |_| Policy::default(), at(3, 0));
    let c = c0();
    assert_eq!(lab.table_counters(), vec![c + 2, c + 3, c + 4, c + 5]);
    // Back at T0 the tracker keeps c - 1 ..= c + 2: only c + 2 stays.
    lab.tracker.retire(T0);
    assert_eq!(lab.table_counters(), vec![c + 2]);
    assert_eq!(lab.tracker.missing_counters(T0), vec![c - 1, c, c + 1]);
}

#[test]
fn advance_builds_every_missing_table_at_once() {
    let mut lab = Lab::new(PayloadMode::Required, 2);
    let c = c0();
    lab.tracker.advance(at(10, 0)).unwrap();
    assert_eq!(lab.table_counters(), vec![c + 9, c + 10, c + 11, c + 12]);
    lab.tracker.advance(T0).unwrap();
    assert_eq!(lab.table_counters(), vec![c - 1, c, c + 1, c + 2]);
    // Nothing to do: nothing changes.
    lab.tracker.advance(T0).unwrap();
    assert_eq!(lab.table_counters(), vec![c - 1, c, c + 1, c + 2]);
}

#[test]
fn a_packet_at_the_turn_drops_the_old_table_and_builds_nothing() {
    // Since the step-ahead table is built off the packet thread, the first packet after a
    // turn must not build it (109 ms at 100 000 clients): it only drops the table that left.
    let mut lab = Lab::new(PayloadMode::None, 2);
    let c = c0();
    let now = at(1, 100);
    lab.send(now, v4(9), Proto::Udp, 10001, None);
    assert_eq!(lab.table_counters(), vec![c, c + 1, c + 2]);
    assert_eq!(lab.tracker.missing_counters(now), vec![c + 3]);
    // Knocks of the whole new window are served meanwhile, and still nothing is built.
    for (i, k) in [(0, c), (1, c + 1), (0, c + 2)] {
        lab.knocks(i, k, now, v4(10 + i as u8));
        assert_eq!(lab.grants(), vec![(ClientId(i as u32), k)]);
    }
    assert_eq!(lab.tracker.missing_counters(now), vec![c + 3]);
}

#[test]
fn a_packet_after_a_jump_builds_the_missing_window_tables_at_once() {
    // The process was stopped for two steps: the window's new edge is missing, and a knock
    // valid now (from a client one step ahead) must not wait for the server's tick.
    let mut lab = Lab::new(PayloadMode::None, 2);
    let c = c0();
    let now = at(2, 100);
    assert_eq!(lab.tracker.missing_counters(now), vec![c + 3, c + 4]);
    lab.knocks(1, c + 3, now, v4(7));
    assert_eq!(lab.grants(), vec![(ClientId(1), c + 3)]);
    assert_eq!(lab.table_counters(), vec![c + 1, c + 2, c + 3, c + 4]);
}

#[test]
fn a_packet_outside_the_range_touches_no_table() {
    let mut lab = Lab::new(PayloadMode::None, 1);
    let c = c0();
    assert_eq!(
        lab.send(at(2, 0), v4(9), Proto::Udp, OUT_OF_RANGE, None),
        Outcome::OutOfRange
    );
    assert_eq!(lab.table_counters(), vec![c - 1, c, c + 1, c + 2]);
}

#[test]
fn a_sequence_begun_before_the_turn_completes_after_it() {
    // Its counter is still in the window after the turn (the window's lower edge).
    let mut lab = Lab::new(PayloadMode::None, 1);
    let c = c0();
    let seq = lab.sequence(0, c);
    for k in &seq.knocks[..2] {
        lab.send(at(0, STEP_MS - 10), v4(3), k.proto, k.port, None);
    }
    let last = seq.knocks[2];
    assert_eq!(
        lab.send(at(1, 10), v4(3), last.proto, last.port, None),
        Outcome::Complete
    );
    assert_eq!(lab.grants(), vec![(ClientId(0), c)]);
}

#[test]
fn a_table_holds_every_client_on_every_port_when_clients_share_ports() {
    // 40 ports for 30 clients' four ports each: most ports are shared by several clients, so
    // the table's counting sort must place each client's slot at its own index.
    let params = KnockParams::new(STEP, 3, (20000, 20039), &[], KnockProtocol::Udp).unwrap();
    let cfg = TrackerConfig::new(params, 1, TIMEOUT_MS, PayloadMode::Required);
    let lab = Lab::with(cfg, 30, |_| Policy::default());
    let c = c0();
    let table = lab.build(c);
    let mut shared = 0;
    for i in 0..30 {
        let seq = lab.sequence(i, c);
        let ports = seq.knocks.iter().map(|k| k.port).chain([seq.payload_port]);
        for (position, port) in ports.enumerate() {
            let slots = table.slots_on(port);
            shared += usize::from(slots.len() > 1);
            assert!(
                slots
                    .iter()
                    .any(|s| s.client == i as u32 && usize::from(s.position) == position),
                "client {i}, position {position}, port {port}: {slots:?}"
            );
        }
    }
    assert!(shared > 30, "{shared}");
}
