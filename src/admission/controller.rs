//! The controller: every tick, signals → progress, limit and per-priority caps. Pure: the clock
//! and the signals are arguments.

use super::params::{ControlParams, LimitMode, Thresholds};
use super::priority::{PerPriority, Priority};

/// What the data path measured over the signal window, read once per tick.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SignalSnapshot {
    /// Upstream responses in the window.
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// `None` when no response carried the cache header.
    pub hit_ratio: Option<f64>,
    /// 5xx, connect failures and timeouts over forwarded requests; `None` with no traffic.
    pub error_rate: Option<f64>,
    /// Requests in flight to the upstream right now.
    pub inflight: u32,
    /// Highest in-flight count seen since the last tick.
    pub peak_inflight: u32,
    /// Requests refused by the limit (not by a stage) since the last tick: demand exceeds it.
    pub limit_rejects: u64,
}

/// Health of the signals taken together, worst first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Critical,
    Warn,
    Healthy,
}

/// What the controller did on its last tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtlState {
    Advancing,
    Holding,
    BackingOff,
    /// Healthy, but a hit-ratio gate keeps progress where it is.
    WaitingForCache,
    Paused,
    Complete,
}

impl CtlState {
    /// Label for status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CtlState::Advancing => "advancing",
            CtlState::Holding => "holding",
            CtlState::BackingOff => "backing_off",
            CtlState::WaitingForCache => "waiting_for_cache",
            CtlState::Paused => "paused",
            CtlState::Complete => "complete",
        }
    }
}

/// The published result of a tick, read by the gate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub progress: f64,
    pub state: CtlState,
    pub health: Health,
    /// Max requests in flight.
    pub limit: u32,
    /// Max in-flight (all priorities counted) that a request of each priority may join.
    pub caps: PerPriority<u32>,
    /// Whether each priority's stage is reached.
    pub open: PerPriority<bool>,
    /// Expected seconds until each priority's stage opens (0 when open).
    pub eta_s: PerPriority<f64>,
    /// Requests per second allowed now, if rate limited.
    pub rps: Option<u32>,
}

/// Controller state carried from tick to tick (and across reloads).
#[derive(Clone, Debug)]
pub struct Controller {
    progress: f64,
    adaptive_limit: f64,
    last_tick_ms: Option<u64>,
}

impl Controller {
    /// A controller at progress 0 with the adaptive limit at its initial value.
    pub fn new(params: &ControlParams) -> Self {
        let adaptive_limit = match params.limit {
            LimitMode::Adaptive { initial, .. } => f64::from(initial),
            LimitMode::Fixed { full_capacity } => f64::from(full_capacity),
        };
        Self {
            progress: 0.0,
            adaptive_limit,
            last_tick_ms: None,
        }
    }

    /// Current progress.
    pub fn progress(&self) -> f64 {
        self.progress
    }

    /// Operator override of progress.
    pub fn set_progress(&mut self, progress: f64) {
        self.progress = progress.clamp(0.0, 1.0);
    }

    /// Operator override of the adaptive limit's current value.
    pub fn set_adaptive_limit(&mut self, limit: u32) {
        self.adaptive_limit = f64::from(limit.max(1));
    }

    /// Advances the controller to `now_ms` and returns what the gate should enforce.
    pub fn tick(&mut self, now_ms: u64, params: &ControlParams, s: &SignalSnapshot) -> Decision {
        let dt = match self.last_tick_ms {
            Some(last) => (now_ms.saturating_sub(last) as f64 / 1000.0).min(5.0),
            None => 0.0,
        };
        self.last_tick_ms = Some(now_ms);
        let health = classify(params, s);
        let state = self.step_progress(dt, params, s, health);
        self.step_limit(dt, params, s, health);
        self.decide(params, state, health)
    }

    fn step_progress(
        &mut self,
        dt: f64,
        params: &ControlParams,
        s: &SignalSnapshot,
        health: Health,
    ) -> CtlState {
        if params.paused {
            return CtlState::Paused;
        }
        match health {
            Health::Critical => {
                let floor = params.progress_floor.clamp(0.0, 1.0);
                if self.progress > floor {
                    let shrunk = self.progress * params.backoff_factor.clamp(0.0, 1.0).powf(dt);
                    self.progress = shrunk.max(floor);
                }
                CtlState::BackingOff
            }
            // With a fixed capacity, progress *is* the load, so warn holds it. With an adaptive
            // limit the limit holds (and keeps the backend at its knee) while progress goes on
            // opening stages: sitting in the warn band is that limit's normal operating point.
            Health::Warn if !matches!(params.limit, LimitMode::Adaptive { .. }) => {
                CtlState::Holding
            }
            _ if self.progress >= 1.0 => CtlState::Complete,
            Health::Warn | Health::Healthy => {
                let step = if params.ramp_duration_s > 0.0 {
                    dt / params.ramp_duration_s
                } else {
                    1.0
                };
                let wanted = (self.progress + step).min(1.0);
                let allowed = hit_gate_ceiling(params, s, self.progress);
                if wanted > allowed {
                    self.progress = self.progress.max(allowed);
                    CtlState::WaitingForCache
                } else {
                    self.progress = wanted;
                    CtlState::Advancing
                }
            }
        }
    }

    fn step_limit(&mut self, dt: f64, params: &ControlParams, s: &SignalSnapshot, health: Health) {
        let LimitMode::Adaptive { min, max, .. } = params.limit else {
            return;
        };
        let (min, max) = (f64::from(min.max(1)), f64::from(max.max(min.max(1))));
        let saturated =
            s.limit_rejects > 0 || f64::from(s.peak_inflight) >= 0.8 * self.adaptive_limit;
        match health {
            // Multiplicative decrease: quick to leave the knee.
            Health::Critical => self.adaptive_limit *= 0.9f64.powf(dt * 4.0),
            Health::Warn => {}
            // Grow only with evidence that more is wanted: at most +25 % a second, at least +1 a tick.
            Health::Healthy if saturated => {
                let grown = self.adaptive_limit * 1.25f64.powf(dt);
                self.adaptive_limit = grown.max(self.adaptive_limit + 1.0);
            }
            Health::Healthy => {}
        }
        self.adaptive_limit = self.adaptive_limit.clamp(min, max);
    }

    fn decide(&self, params: &ControlParams, state: CtlState, health: Health) -> Decision {
        let fraction = params.curve.fraction(self.progress, params.start_fraction);
        let limit = match params.limit {
            LimitMode::Fixed { full_capacity } => (fraction * f64::from(full_capacity)).ceil(),
            LimitMode::Adaptive { .. } => self.adaptive_limit.floor(),
        }
        .max(1.0) as u32;
        let mut caps = [0u32; 4];
        let mut open = [false; 4];
        let mut eta_s = [0f64; 4];
        for p in Priority::ALL {
            let i = p.index();
            caps[i] = ((f64::from(limit) * params.headroom[i].clamp(0.0, 1.0)).floor() as u32)
                .max(u32::from(p == Priority::Critical));
            open[i] = self.progress >= params.stages[i];
            let remaining = (params.stages[i] - self.progress).max(0.0);
            eta_s[i] = remaining * params.ramp_duration_s.max(0.0);
        }
        let rps = params
            .max_rps
            .map(|r| ((fraction * f64::from(r)).ceil() as u32).max(1));
        Decision {
            progress: self.progress,
            state,
            health,
            limit,
            caps,
            open,
            eta_s,
            rps,
        }
    }
}

/// The worst band any signal is in. No traffic means no evidence of trouble.
pub fn classify(params: &ControlParams, s: &SignalSnapshot) -> Health {
    let mut worst = Health::Healthy;
    if s.samples > 0 {
        worst = worse(worst, band(s.p99_ms, params.latency_p99_ms));
    }
    if let Some(e) = s.error_rate {
        worst = worse(worst, band(e, params.error_rate));
    }
    worst
}

fn band(value: f64, t: Thresholds) -> Health {
    if value >= t.critical {
        Health::Critical
    } else if value >= t.warn {
        Health::Warn
    } else {
        Health::Healthy
    }
}

fn worse(a: Health, b: Health) -> Health {
    match (a, b) {
        (Health::Critical, _) | (_, Health::Critical) => Health::Critical,
        (Health::Warn, _) | (_, Health::Warn) => Health::Warn,
        _ => Health::Healthy,
    }
}

/// Highest progress the hit-ratio gates allow from `progress`.
fn hit_gate_ceiling(params: &ControlParams, s: &SignalSnapshot, progress: f64) -> f64 {
    params
        .hit_gates
        .iter()
        .filter(|g| g.progress >= progress)
        .filter(|g| match s.hit_ratio {
            Some(h) => h < g.min_hit_ratio,
            None => !params.unknown_hit_ratio_allows,
        })
        .map(|g| g.progress)
        .fold(1.0, f64::min)
}

#[cfg(test)]
mod tests {
    use super::super::params::HitGate;
    use super::*;

    fn healthy() -> SignalSnapshot {
        SignalSnapshot {
            samples: 100,
            p50_ms: 5.0,
            p90_ms: 10.0,
            p99_ms: 20.0,
            hit_ratio: Some(0.9),
            error_rate: Some(0.0),
            ..Default::default()
        }
    }

    fn fixed(duration: f64) -> ControlParams {
        ControlParams {
            ramp_duration_s: duration,
            limit: LimitMode::Fixed { full_capacity: 100 },
            ..Default::default()
        }
    }

    /// Ticks every 250 ms for `secs` seconds with the same signals.
    fn run(
        c: &mut Controller,
        p: &ControlParams,
        s: &SignalSnapshot,
        from_ms: u64,
        secs: u64,
    ) -> Decision {
        let mut last = c.tick(from_ms, p, s);
        for i in 1..=(secs * 4) {
            last = c.tick(from_ms + i * 250, p, s);
        }
        last
    }

    #[test]
    fn advances_at_one_over_duration_while_healthy() {
        let p = fixed(10.0);
        let mut c = Controller::new(&p);
        let d = run(&mut c, &p, &healthy(), 0, 5);
        assert_eq!(d.state, CtlState::Advancing);
        assert!((d.progress - 0.5).abs() < 1e-6, "{}", d.progress);
        let d = run(&mut c, &p, &healthy(), 5_000, 6);
        assert_eq!(d.state, CtlState::Complete);
        assert!((d.progress - 1.0).abs() < 1e-9);
        assert_eq!(d.limit, 100);
    }

    #[test]
    fn holds_in_the_warn_band() {
        let p = fixed(10.0);
        let mut c = Controller::new(&p);
        run(&mut c, &p, &healthy(), 0, 2);
        let before = c.progress();
        let warn = SignalSnapshot {
            p99_ms: 300.0,
            ..healthy()
        };
        let d = run(&mut c, &p, &warn, 2_000, 3);
        assert_eq!(d.state, CtlState::Holding);
        assert!((d.progress - before).abs() < 1e-9);
    }

    #[test]
    fn backs_off_multiplicatively_to_the_floor() {
        let mut p = fixed(10.0);
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
        // Back-off never raises progress that is already under the floor.
        c.set_progress(0.1);
        let d = c.tick(12_000, &p, &crit);
        assert!((d.progress - 0.1).abs() < 1e-9);
    }

    #[test]
    fn hit_ratio_gate_waits_for_the_cache() {
        let mut p = fixed(10.0);
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
    fn unknown_hit_ratio_blocks_only_when_configured() {
        let mut p = fixed(10.0);
        p.hit_gates = vec![HitGate {
            progress: 0.3,
            min_hit_ratio: 0.5,
        }];
        p.unknown_hit_ratio_allows = false;
        let unknown = SignalSnapshot {
            hit_ratio: None,
            ..healthy()
        };
        let mut c = Controller::new(&p);
        assert!((run(&mut c, &p, &unknown, 0, 8).progress - 0.3).abs() < 1e-9);
        p.unknown_hit_ratio_allows = true;
        assert!(run(&mut c, &p, &unknown, 8_000, 2).progress > 0.3);
    }

    #[test]
    fn stages_open_in_priority_order_with_headroom() {
        let p = fixed(10.0);
        let mut c = Controller::new(&p);
        let d = c.tick(0, &p, &healthy());
        assert_eq!(d.open, [false, false, false, true]);
        let d = run(&mut c, &p, &healthy(), 0, 3);
        assert_eq!(d.open, [false, false, true, true]);
        let d = run(&mut c, &p, &healthy(), 3_000, 3);
        assert_eq!(d.open, [false, true, true, true]);
        assert!(d.eta_s[Priority::Low.index()] > 1.0);
        let d = run(&mut c, &p, &healthy(), 6_000, 3);
        assert_eq!(d.open, [true; 4]);
        assert_eq!(d.limit, 91, "linear from 5 % at progress 0.9");
        assert!(d.caps[0] < d.caps[1] && d.caps[1] < d.caps[2] && d.caps[2] < d.caps[3]);
        assert_eq!(d.caps[3], d.limit);
    }

    #[test]
    fn adaptive_mode_holds_the_limit_but_not_progress_in_the_warn_band() {
        let p = ControlParams {
            ramp_duration_s: 10.0,
            limit: LimitMode::Adaptive {
                initial: 10,
                min: 4,
                max: 50,
            },
            ..Default::default()
        };
        let mut c = Controller::new(&p);
        let warn = SignalSnapshot {
            p99_ms: 300.0,
            limit_rejects: 9,
            ..healthy()
        };
        let d = run(&mut c, &p, &warn, 0, 3);
        assert_eq!(d.state, CtlState::Advancing);
        assert!((d.progress - 0.3).abs() < 1e-6, "{}", d.progress);
        assert_eq!(d.limit, 10, "the limit holds in the warn band");
    }

    #[test]
    fn paused_freezes_progress() {
        let mut p = fixed(10.0);
        let mut c = Controller::new(&p);
        run(&mut c, &p, &healthy(), 0, 2);
        p.paused = true;
        let before = c.progress();
        let d = run(&mut c, &p, &healthy(), 2_000, 5);
        assert_eq!(d.state, CtlState::Paused);
        assert!((d.progress - before).abs() < 1e-9);
    }

    #[test]
    fn adaptive_limit_grows_when_saturated_and_shrinks_when_critical() {
        let p = ControlParams {
            limit: LimitMode::Adaptive {
                initial: 10,
                min: 4,
                max: 50,
            },
            ..Default::default()
        };
        let mut c = Controller::new(&p);
        let idle = healthy();
        assert_eq!(
            run(&mut c, &p, &idle, 0, 2).limit,
            10,
            "no demand, no growth"
        );
        let busy = SignalSnapshot {
            limit_rejects: 5,
            ..healthy()
        };
        let grown = run(&mut c, &p, &busy, 2_000, 4).limit;
        assert!(grown > 20, "{grown}");
        assert_eq!(run(&mut c, &p, &busy, 6_000, 30).limit, 50, "capped at max");
        let slow = SignalSnapshot {
            p99_ms: 5_000.0,
            ..busy
        };
        let shrunk = run(&mut c, &p, &slow, 36_000, 2).limit;
        assert!(shrunk < 25, "{shrunk}");
        assert_eq!(
            run(&mut c, &p, &slow, 38_000, 60).limit,
            4,
            "floored at min"
        );
    }
}
