//! The controller's unit tests, on scripted signals.

use super::*;
use crate::admission::limit::{class_of, KneeParams};
use crate::admission::params::HitGate;

/// A healthy tick: 50 completions at 5 ms, in the window and since the last tick.
fn healthy() -> SignalSnapshot {
    let mut s = SignalSnapshot {
        samples: 100,
        p50_ms: 5.0,
        p90_ms: 10.0,
        p99_ms: 20.0,
        hit_ratio: Some(0.9),
        error_rate: Some(0.0),
        ..Default::default()
    };
    s.class_n[class_of(3, 0)] = 50;
    s.class_us[class_of(3, 0)] = 50 * 5_000;
    s.gate.limit = 8;
    s
}

fn engaged(duration: f64) -> ControlParams {
    ControlParams {
        engage: Engage::OnStart,
        ramp_duration_s: duration,
        ..Default::default()
    }
}

/// Ticks every 100 ms for `secs` seconds with the same signals.
fn run(
    c: &mut Controller,
    p: &ControlParams,
    s: &SignalSnapshot,
    from_ms: u64,
    secs: u64,
) -> Decision {
    let mut last = c.tick(from_ms, p, s);
    for i in 1..=(secs * 10) {
        last = c.tick(from_ms + i * 100, p, s);
    }
    last
}

/// An outage tick: every request in flight failed (connections refused), the window full
/// of those failures.
fn down() -> SignalSnapshot {
    let mut s = SignalSnapshot {
        samples: 200,
        error_rate: Some(1.0),
        ..Default::default()
    };
    s.dropped = 20;
    s.gate.limit = 8;
    s.gate.peak_inflight = 8;
    s
}

#[test]
fn a_backend_back_from_an_outage_is_served_again_at_once() {
    let p = engaged(60.0);
    let mut c = Controller::new(&p);
    c.set_progress(0.6);
    let d = run(&mut c, &p, &healthy(), 0, 1);
    assert!(d.progress >= 0.6 && d.open[Priority::High.index()]);
    // Down for 5 s: backing off (a backend that only fails gets less).
    let d = run(&mut c, &p, &down(), 1_000, 5);
    assert_eq!(d.state, CtlState::BackingOff);
    assert!(d.progress < 0.4, "{}", d.progress);
    // Down: one probe at a time, the line held.
    assert!(d.outage);
    assert_eq!((d.limit, d.ceiling), (1, 1));
    // The first answers, with the last failures of requests sent while it was down...
    let mut back = healthy();
    back.error_rate = Some(0.9);
    back.dropped = 5;
    let d = c.tick(6_000, &p, &back);
    assert!(!d.recovered);
    assert!(!d.outage, "answers are coming: no longer held to one probe");
    // ...then answers only: the outage is over. The window still holds its failures (the
    // shell forgets them on this flag); the limit starts over in slow start.
    back.dropped = 0;
    let d = c.tick(6_100, &p, &back);
    assert!(d.recovered);
    assert!(d.slow_start);
    assert_ne!(d.state, CtlState::BackingOff);
    // Within about two seconds it is back where it was (the 60 s plan alone would take
    // half a minute), the stages opening in order on the way.
    let mut progress = vec![d.progress];
    for i in 0..15 {
        let d = c.tick(6_200 + i * 100, &p, &healthy());
        assert!(!d.recovered, "once");
        progress.push(d.progress);
    }
    assert!(progress.windows(2).all(|w| w[1] >= w[0]), "{progress:?}");
    assert!(progress[3] < 0.5, "a climb, not a jump: {progress:?}");
    assert!(progress[15] >= 0.6, "{progress:?}");
}

#[test]
fn a_burst_of_failures_is_not_an_outage() {
    let p = engaged(60.0);
    let mut c = Controller::new(&p);
    let _ = run(&mut c, &p, &healthy(), 0, 1);
    // 200 ms of failures, then answers: no recovery, no restart.
    let _ = c.tick(1_100, &p, &down());
    let _ = c.tick(1_200, &p, &down());
    let d = c.tick(1_300, &p, &healthy());
    assert!(!d.recovered);
    // One lost request on a quiet backend, an answer a second later: not an outage.
    let one = SignalSnapshot {
        dropped: 1,
        ..Default::default()
    };
    let _ = c.tick(1_400, &p, &one);
    let _ = run(&mut c, &p, &SignalSnapshot::default(), 1_500, 1);
    let answer = SignalSnapshot {
        class_n: std::array::from_fn(|c| u64::from(c == 0)),
        class_us: std::array::from_fn(|c| if c == 0 { 5_000 } else { 0 }),
        ..Default::default()
    };
    assert!(!c.tick(2_600, &p, &answer).recovered);
    // Down, then failures mixed with answers for seconds: a struggling backend, not one
    // coming back.
    let _ = run(&mut c, &p, &down(), 3_000, 1);
    let mut mixed = healthy();
    mixed.dropped = 10;
    let _ = run(&mut c, &p, &mixed, 4_100, 2);
    let d = c.tick(6_200, &p, &healthy());
    assert!(!d.recovered);
}

#[test]
fn without_a_ramp_everything_is_open_from_the_first_tick() {
    let p = ControlParams::default();
    let mut c = Controller::new(&p);
    let d = c.tick(0, &p, &SignalSnapshot::default());
    assert!(!d.engaged);
    assert_eq!(d.open, [true; 4]);
    assert_eq!(d.state, CtlState::Open);
    assert!(d.limit >= 1 && d.slow_start);
}

#[test]
fn no_traffic_no_progress() {
    let p = engaged(10.0);
    let mut c = Controller::new(&p);
    let d = run(&mut c, &p, &SignalSnapshot::default(), 0, 60);
    assert_eq!(d.progress, 0.0);
    assert_eq!(d.state, CtlState::Holding);
    assert_eq!(d.open, [false, false, false, true]);
}

#[test]
fn an_engaged_ramp_advances_on_answers_and_opens_stages_in_order() {
    let p = engaged(10.0);
    let mut c = Controller::new(&p);
    let d = run(&mut c, &p, &healthy(), 0, 3);
    assert_eq!(d.state, CtlState::Advancing);
    assert_eq!(d.open, [false, false, true, true]);
    assert!(d.eta_s[Priority::Low.index()] > 4.0);
    let d = run(&mut c, &p, &healthy(), 3_000, 3);
    assert_eq!(d.open, [false, true, true, true]);
    // Done: the ramp steps aside.
    let d = run(&mut c, &p, &healthy(), 6_000, 5);
    assert!(!d.engaged);
    assert_eq!(d.open, [true; 4]);
    assert_eq!(d.state, CtlState::Open);
}

#[test]
fn held_back_demand_on_an_idle_backend_advances() {
    let p = engaged(10.0);
    let mut c = Controller::new(&p);
    let mut s = SignalSnapshot::default();
    s.gate.limit = 8;
    s.gate.shed = 30;
    // Half idle: the 10 s plan runs five times faster.
    assert!(run(&mut c, &p, &s, 0, 1).progress > 0.45);
    // ...but not while the backend is full.
    let before = c.progress();
    s.gate.peak_inflight = 8;
    assert_eq!(run(&mut c, &p, &s, 3_000, 2).progress, before);
}

#[test]
fn a_long_line_of_open_priorities_holds_progress() {
    let p = engaged(10.0);
    let mut c = Controller::new(&p);
    let mut s = healthy();
    s.gate.waiting[Priority::Critical.index()] = 500;
    let d = run(&mut c, &p, &s, 0, 3);
    assert_eq!(d.state, CtlState::Holding);
    assert!(
        d.progress < 0.2 && d.progress > 0.19,
        "up to the next stage: {}",
        d.progress
    );
    assert_eq!(d.open, [false, false, false, true]);
    // Lower priorities waiting do not hold it: they are what the next stage is for.
    s.gate.waiting = [500, 0, 0, 0];
    assert!(run(&mut c, &p, &s, 3_000, 2).progress > 0.1);
}

#[test]
fn guard_rails_back_off_and_need_enough_samples() {
    let mut p = engaged(10.0);
    p.progress_floor = 0.3;
    let mut c = Controller::new(&p);
    c.set_progress(0.8);
    let crit = SignalSnapshot {
        error_rate: Some(0.5),
        ..healthy()
    };
    c.tick(0, &p, &crit);
    let d = c.tick(1_000, &p, &crit);
    assert_eq!(d.state, CtlState::BackingOff);
    assert!((d.progress - 0.56).abs() < 1e-6, "{}", d.progress);
    let d = run(&mut c, &p, &crit, 1_000, 10);
    assert!(
        (d.progress - 0.3).abs() < 1e-9,
        "floor holds: {}",
        d.progress
    );
    // One slow request in a quiet window is not critical.
    let quiet = SignalSnapshot {
        samples: 1,
        p99_ms: 60_000.0,
        ..healthy()
    };
    assert_eq!(classify(&p, &quiet), Health::Healthy);
}

#[test]
fn hit_ratio_gate_waits_for_the_cache() {
    let mut p = engaged(10.0);
    p.hit_gates = vec![HitGate {
        progress: 0.5,
        min_hit_ratio: 0.6,
    }];
    let mut c = Controller::new(&p);
    let cold = SignalSnapshot {
        hit_ratio: Some(0.2),
        ..healthy()
    };
    let d = run(&mut c, &p, &cold, 0, 9);
    assert_eq!(d.state, CtlState::WaitingForCache);
    assert!((d.progress - 0.5).abs() < 1e-9);
    let d = run(&mut c, &p, &healthy(), 9_000, 2);
    assert!(d.progress > 0.6);
}

#[test]
fn strain_engages_an_auto_ramp() {
    let p = ControlParams::default();
    let mut c = Controller::new(&p);
    let mut cold = SignalSnapshot {
        hit_ratio: Some(0.05),
        ..healthy()
    };
    // A cold cache while the limit is still in slow start does not engage it (the line is
    // the limit catching up)...
    cold.gate.pressed = 10;
    cold.gate.waiting = [0, 0, 0, 100];
    assert!(c.knee().slow_start());
    assert!(!run(&mut c, &p, &cold, 0, 3).engaged);
    // Leave slow start with one queueing tick.
    let mut queueing = cold;
    queueing.class_us[class_of(3, 0)] *= 3;
    c.tick(3_100, &p, &queueing);
    assert!(!c.knee().slow_start());
    // ...nor does demand alone once it has settled: a warm backend at its knee, with a
    // long line but latency at its baseline and a warm cache...
    let mut busy = healthy();
    busy.gate.pressed = 10;
    busy.gate.waiting = [0, 0, 0, 100];
    assert!(!run(&mut c, &p, &busy, 3_200, 5).engaged);
    assert!(!c.knee().slow_start(), "still settled");
    // ...but a cold cache with a long line does, after the configured time.
    assert!(!c.tick(8_300, &p, &cold).engaged);
    let d = run(&mut c, &p, &cold, 8_300, 3);
    assert!(d.engaged);
    assert_eq!(d.open, [false, false, false, true]);
}

#[test]
fn the_curve_caps_the_limit_while_engaged() {
    let mut p = engaged(100.0);
    p.limit = LimitMode::Adaptive(KneeParams {
        initial: 10,
        ..Default::default()
    });
    p.start_fraction = 0.1;
    let mut c = Controller::new(&p);
    let mut s = healthy();
    s.gate.pressed = 100;
    s.gate.limit = 10_000; // slow start on the data path ran far ahead
    let d = run(&mut c, &p, &s, 0, 5);
    // Progress 0.05 on a linear curve from 0.1: fraction 0.145, cap 10 × 1.45.
    assert_eq!(d.ceiling, 14);
    assert!(d.limit <= 14, "{}", d.limit);
    c.set_engaged(false);
    let d = c.tick(5_200, &p, &s);
    assert!(d.limit > 100, "{}", d.limit);
}

#[test]
fn a_fixed_capacity_follows_the_curve_only_while_engaged() {
    let mut p = engaged(10.0);
    p.limit = LimitMode::Fixed { full_capacity: 100 };
    let mut c = Controller::new(&p);
    assert_eq!(c.tick(0, &p, &healthy()).limit, 10);
    c.set_engaged(false);
    assert_eq!(c.tick(100, &p, &healthy()).limit, 100);
    c.pin_limit(Some(7));
    assert_eq!(c.tick(200, &p, &healthy()).limit, 7);
}

#[test]
fn drain_is_measured_per_priority_and_above() {
    let p = ControlParams::default();
    let mut c = Controller::new(&p);
    let mut s = healthy();
    s.gate.admitted = [1, 0, 2, 5]; // per 100 ms tick
    let d = run(&mut c, &p, &s, 0, 6);
    assert!(
        (d.drain_rps(Priority::Critical) - 50.0).abs() < 2.0,
        "{d:?}"
    );
    assert!((d.drain_rps(Priority::Low) - 80.0).abs() < 3.0, "{d:?}");
    assert!(
        (d.admit_rps[Priority::High.index()] - 20.0).abs() < 1.0,
        "{d:?}"
    );
}

/// An adaptive limit that may not pass 8 (so slow start does not run away from a check).
fn at_most_8() -> ControlParams {
    ControlParams {
        limit: LimitMode::Adaptive(KneeParams {
            max: 8,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn a_baseline_check_holds_the_gates_limit_low_until_a_tick_at_low_load() {
    // A storm from the first tick: 8 in flight (the most allowed), the line never empty, every
    // answer at 50 ms.
    let p = at_most_8();
    let mut c = Controller::new(&p);
    let mut s = healthy();
    s.class_n = [0; 12];
    s.class_us = [0; 12];
    s.class_n[class_of(3, 1)] = 16;
    s.class_us[class_of(3, 1)] = 16 * 50_000;
    (s.gate.pressed, s.gate.peak_inflight, s.gate.limit) = (40, 8, 8);
    let mut limits = Vec::new();
    for t in 1..=30u64 {
        let d = c.tick(t * 100, &p, &s);
        limits.push(d.limit);
        // What the gate ran at is what the decision told it.
        s.gate.peak_inflight = d.limit;
        s.gate.limit = d.limit;
    }
    // About 2 s after the first answers the gate is told a quarter of the limit, and given it
    // back on the tick whose answers came from there.
    let held: Vec<usize> = (0..limits.len()).filter(|&i| limits[i] <= 2).collect();
    assert!(!held.is_empty() && held.len() <= 2, "{limits:?}");
    assert!((18..=24).contains(&held[0]), "{limits:?}");
    assert!(limits[held[held.len() - 1] + 1] >= 8, "{limits:?}");
}

#[test]
fn a_baseline_check_does_not_slow_the_measured_drain() {
    let p = at_most_8();
    let mut c = Controller::new(&p);
    let mut s = healthy();
    (s.gate.pressed, s.gate.peak_inflight, s.gate.limit) = (40, 8, 8);
    // Answers from 2 in flight come slowly: the check holds for several ticks.
    s.class_n[class_of(3, 0)] = 1;
    s.class_us[class_of(3, 0)] = 5_000;
    let (mut before, mut held) = (0.0, 0);
    for t in 1..=40u64 {
        let d = c.tick(t * 100, &p, &s);
        let drain = d.admit_rps[Priority::Critical.index()];
        if d.limit <= 2 {
            held += 1;
            // Held low, a tick admitting next to nothing: the drain clients are told stays.
            assert!(drain >= 0.95 * before, "{before} then {drain}");
            s.gate.admitted[Priority::Critical.index()] = 1;
        } else {
            before = drain;
            s.gate.admitted[Priority::Critical.index()] = 16;
        }
        s.gate.peak_inflight = d.limit;
    }
    assert!(held >= 2 && before > 100.0, "held {held}, drain {before}");
}
