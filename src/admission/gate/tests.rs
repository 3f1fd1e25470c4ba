//! The gate's unit tests: admission, the line, guards and the client memory.

use super::*;
use crate::admission::controller::{CtlState, Health};
use crate::admission::retry::RetryPolicy;

fn decision(engaged: bool, open: [bool; 4]) -> Decision {
    Decision {
        engaged,
        progress: 0.3,
        state: CtlState::Advancing,
        health: Health::Healthy,
        limit: 0,
        open,
        eta_s: [50.0, 20.0, 0.0, 0.0],
        admit_rps: [10.0, 10.0, 10.0, 10.0],
        ..Decision::default()
    }
}

fn ask(priority: Priority, client: u64, now_ms: u64) -> Ask {
    Ask {
        priority,
        state: FeatureState::Auto,
        feature: priority.index() as u64,
        client,
        now_ms,
        over_share: false,
        ticket_ms: 0,
    }
}

fn gate(limit: u32) -> &'static Gate {
    let g = Gate::leak(1024, 8);
    g.set_limit(limit, limit, false);
    g
}

fn admitted(a: Admission) -> Option<Permit> {
    match a {
        Admission::Admitted(p) => Some(p),
        _ => None,
    }
}

fn queued(a: Admission) -> Option<Ticket> {
    match a {
        Admission::Queued(t) => Some(t),
        _ => None,
    }
}

#[test]
#[allow(clippy::unwrap_used)]
fn a_client_over_its_share_takes_a_free_slot_but_no_place_in_line() {
    let g = Gate::leak(1024, 2);
    g.set_limit(1, 1, false);
    let policy = GatePolicy::default();
    let d = decision(false, [true; 4]);
    let over = |p: Priority, client: u64| Ask {
        over_share: true,
        ticket_ms: 0,
        ..ask(p, client, 0)
    };
    // A free slot goes to whoever asks, over its share or not.
    let held = admitted(g.admit(&d, &policy, over(Priority::Low, 1), || true));
    assert!(held.is_some());
    let w1 = queued(g.admit(&d, &policy, ask(Priority::Low, 2, 0), || true)).unwrap();
    let w2 = queued(g.admit(&d, &policy, ask(Priority::Low, 3, 0), || true)).unwrap();
    // The line is full of others: a critical request over its share would evict one of
    // them and wait ahead of both; it is refused, with a Retry-After from the drain.
    match g.admit(&d, &policy, over(Priority::Critical, 1), || true) {
        Admission::Rejected(r) => {
            assert_eq!(r.reason, RejectReason::ClientLimit);
            assert!(r.retry_after_s >= 1);
        }
        _ => panic!("refused"),
    }
    assert_eq!(g.waiting(), 2);
    assert!(
        matches!(w1.take(), Err(false)),
        "still waiting, not evicted"
    );
    assert!(matches!(w2.take(), Err(false)));
}

fn rejected(a: Admission) -> Option<Reject> {
    match a {
        Admission::Rejected(r) => Some(r),
        _ => None,
    }
}

#[test]
fn without_an_engaged_ramp_every_priority_is_admitted() {
    let g = gate(4);
    let d = decision(false, [false; 4]);
    let pol = GatePolicy::default();
    for p in Priority::ALL {
        assert!(admitted(g.admit(&d, &pol, ask(p, 1, 0), || true)).is_some());
    }
    assert_eq!(g.inflight(), 0, "permits dropped at end of statement");
}

#[test]
fn an_engaged_ramp_sheds_by_stage_and_tells_when_to_return() {
    let g = gate(10);
    let d = decision(true, [false, false, true, true]);
    let pol = GatePolicy::default();
    let r = rejected(g.admit(&d, &pol, ask(Priority::Low, 1, 0), || true));
    let r = r.map(|r| (r.reason, r.retry_after_s));
    assert!(
        matches!(r, Some((RejectReason::Stage, s)) if (50..=75).contains(&s)),
        "{r:?}"
    );
    assert!(admitted(g.admit(&d, &pol, ask(Priority::High, 2, 0), || true)).is_some());
}

#[test]
fn a_freed_slot_goes_to_the_highest_priority_then_the_oldest_first_arrival() {
    let g = gate(1);
    let d = decision(false, [true; 4]);
    let pol = GatePolicy::default();
    let held = admitted(g.admit(&d, &pol, ask(Priority::Low, 1, 0), || true));
    assert!(held.is_some());
    let low = queued(g.admit(&d, &pol, ask(Priority::Low, 2, 10), || true));
    let crit_new = queued(g.admit(&d, &pol, ask(Priority::Critical, 3, 30), || true));
    // Client 4 was told to come back earlier: it keeps its first arrival (5 ms).
    let mut a4 = ask(Priority::Critical, 4, 0);
    let r = rejected(g.admit(
        &d,
        &GatePolicy {
            max_wait_ms: [0; 4],
            ..pol
        },
        a4,
        || true,
    ));
    assert_eq!(r.map(|r| r.reason), Some(RejectReason::QueueFull));
    a4.now_ms = 40;
    let crit_old = queued(g.admit(&d, &pol, a4, || true));
    assert_eq!(crit_old.as_ref().map(|t| t.early), Some(true));
    assert_eq!(g.waiting(), 3);
    let (low, crit_new, crit_old) = (
        low.unwrap_or_else(|| panic!()),
        crit_new.unwrap_or_else(|| panic!()),
        crit_old.unwrap_or_else(|| panic!()),
    );
    drop(held);
    let first = crit_old.take();
    assert!(first.is_ok(), "oldest first arrival first");
    assert!(crit_new.take().is_err() && low.take().is_err());
    assert_eq!(g.inflight(), 1, "the slot moved, it was not freed");
    assert_eq!(g.waiting(), 2);
}

#[test]
fn leaving_the_line_leaves_no_residue() {
    let g = gate(1);
    let d = decision(false, [true; 4]);
    let pol = GatePolicy::default();
    let held = admitted(g.admit(&d, &pol, ask(Priority::High, 1, 0), || true));
    let t = queued(g.admit(&d, &pol, ask(Priority::High, 2, 0), || true));
    assert_eq!(g.waiting(), 1);
    drop(t); // the client went away
    assert_eq!(g.waiting(), 0);
    assert_eq!(g.waiting_by_priority(), [0; 4]);
    // Granted but never taken: the slot is passed on, not lost.
    let t = queued(g.admit(&d, &pol, ask(Priority::High, 3, 0), || true));
    let t2 = queued(g.admit(&d, &pol, ask(Priority::High, 4, 1), || true));
    drop(held);
    assert_eq!(g.inflight(), 1);
    drop(t);
    assert_eq!(g.inflight(), 1, "handed to the next in line");
    let p = t2.map(|t| t.take().is_ok());
    assert_eq!(p, Some(true));
    assert_eq!(g.inflight(), 0);
    assert_eq!(g.waiting(), 0);
}

#[test]
fn expiry_rejects_with_the_measured_drain() {
    let g = gate(1);
    let d = decision(false, [true; 4]); // 10 admissions a second
    let pol = GatePolicy {
        retry: RetryPolicy {
            min_s: 1.0,
            max_s: 600.0,
            jitter_s: 0.0,
            spread: 0.0,
        },
        ..Default::default()
    };
    let _held = admitted(g.admit(&d, &pol, ask(Priority::Normal, 1, 0), || true));
    let mut tickets = Vec::new();
    for c in 0..5 {
        tickets.push(queued(g.admit(
            &d,
            &pol,
            ask(Priority::Normal, 10 + c, c),
            || true,
        )));
    }
    let last = tickets.pop().flatten().unwrap_or_else(|| panic!());
    let r = g
        .expire(last, &d, &pol, ask(Priority::Normal, 14, 1_000))
        .err();
    // Four ahead, itself fifth, at 10/s: half a second, rounded up to whole seconds.
    assert_eq!(
        r.map(|r| (r.reason, r.retry_after_s)),
        Some((RejectReason::QueueTimeout, 1))
    );
    assert_eq!(g.waiting(), 4);
    tickets.clear();
    assert_eq!(g.waiting(), 0);
}

#[test]
fn at_the_bound_the_newest_lowest_is_evicted() {
    let g = Gate::leak(1024, 1);
    g.set_limit(1, 1, false);
    let d = decision(false, [true; 4]);
    let pol = GatePolicy::default();
    let _held = admitted(g.admit(&d, &pol, ask(Priority::Low, 1, 0), || true));
    let low = queued(g.admit(&d, &pol, ask(Priority::Low, 2, 0), || true));
    let r = rejected(g.admit(&d, &pol, ask(Priority::Low, 3, 5), || true));
    assert_eq!(r.map(|r| r.reason), Some(RejectReason::QueueFull));
    let crit = queued(g.admit(&d, &pol, ask(Priority::Critical, 4, 9), || true));
    assert!(crit.is_some());
    let low = low.unwrap_or_else(|| panic!());
    assert_eq!(low.take().err(), Some(true), "evicted");
    let r = g.expire(low, &d, &pol, ask(Priority::Low, 2, 100)).err();
    assert_eq!(r.map(|r| r.reason), Some(RejectReason::QueueFull));
    assert_eq!(g.waiting(), 1);
}

#[test]
fn overrides_beat_the_stage() {
    let g = gate(10);
    let d = decision(true, [false, false, false, true]);
    let pol = GatePolicy::default();
    let on = Ask {
        state: FeatureState::On,
        ..ask(Priority::Low, 1, 0)
    };
    assert!(admitted(g.admit(&d, &pol, on, || true)).is_some());
    let off = Ask {
        state: FeatureState::Off,
        ..ask(Priority::Critical, 2, 0)
    };
    let r = rejected(g.admit(&d, &pol, off, || true));
    assert_eq!(r.map(|r| r.reason), Some(RejectReason::FeatureOff));
}

#[test]
fn session_grace_lets_follow_ups_through() {
    let g = gate(10);
    let d = decision(true, [false, false, false, true]);
    let pol = GatePolicy {
        session_grace_ms: 5_000,
        ..Default::default()
    };
    assert!(rejected(g.admit(&d, &pol, ask(Priority::High, 42, 0), || true)).is_some());
    assert!(admitted(g.admit(&d, &pol, ask(Priority::Critical, 43, 0), || true)).is_some());
    assert!(admitted(g.admit(&d, &pol, ask(Priority::High, 43, 1_000), || true)).is_some());
    assert!(rejected(g.admit(&d, &pol, ask(Priority::Low, 43, 1_000), || true)).is_some());
    assert!(rejected(g.admit(&d, &pol, ask(Priority::High, 43, 6_000), || true)).is_some());
}

#[test]
fn rate_limit_rejects_without_taking_a_slot() {
    let g = gate(10);
    let d = decision(false, [true; 4]);
    let r = rejected(g.admit(
        &d,
        &GatePolicy::default(),
        ask(Priority::High, 1, 0),
        || false,
    ));
    assert_eq!(r.map(|r| r.reason), Some(RejectReason::Rate));
    assert_eq!(g.inflight(), 0);
}

#[test]
fn slow_start_grows_on_fast_completions_up_to_the_ceiling() {
    let g = Gate::leak(16, 8);
    g.set_limit(2, 4, true);
    let d = decision(false, [true; 4]);
    let pol = GatePolicy::default();
    let a = admitted(g.admit(&d, &pol, ask(Priority::High, 1, 0), || true));
    let b = admitted(g.admit(&d, &pol, ask(Priority::High, 2, 0), || true));
    for _ in 0..10 {
        g.fast_completion();
    }
    assert_eq!(g.limit(), 4, "capped at the ceiling");
    drop((a, b));
    g.set_limit(2, 100, true);
    g.fast_completion();
    assert_eq!(g.limit(), 2, "no growth without demand");
    let counters = g.take_tick_counters();
    assert_eq!(counters.admitted[Priority::High.index()], 2);
}

#[test]
fn holds_are_bounded_and_released() {
    let g = gate(1);
    let a = g.hold(1);
    assert!(a.is_some());
    assert!(g.hold(1).is_none());
    drop(a);
    assert_eq!(g.held(), 0);
}
