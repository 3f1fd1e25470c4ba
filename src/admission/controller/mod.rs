//! The controller: every tick, signals → limit, engaged ramp progress, stages and drain rates.
//! Pure: the clock and the signals are arguments.
//!
//! Three things, kept apart (control model v2): the **limit** (how much the backend takes now,
//! [`KneeLimit`] or a fixed capacity), the **queue** (served by the gate; the controller only
//! measures how fast each priority drains), and the **ramp** (the operator's cutover plan:
//! engaged on start, by an operator, or on strain; invisible otherwise). Progress advances only
//! on the backend's answers: no completions, no progress.

use super::limit::{KneeLimit, LimitAlgorithm, Outcome, CLASSES};
use super::params::{ControlParams, Engage, LimitMode};
use super::priority::{PerPriority, Priority};

mod health;
mod outage;
#[cfg(test)]
mod tests;
mod types;

pub use health::classify;
use health::hit_gate_ceiling;
use outage::{probing, Outage, OUTAGE_FAILURES, OUTAGE_MS, RECOVERY_S};
pub use types::{CtlState, Decision, Health, SignalSnapshot, TickCounters};

/// Controller state carried from tick to tick (and across reloads).
#[derive(Clone, Debug)]
pub struct Controller {
    progress: f64,
    engaged: bool,
    /// The limit when the ramp engaged: the curve scales up from it.
    engage_limit: f64,
    knee: KneeLimit,
    pinned: Option<u32>,
    strain_s: f64,
    drain: PerPriority<f64>,
    last_tick_ms: Option<u64>,
    /// Since when every answer has been a failure, and the progress then.
    outage: Option<Outage>,
    /// After an outage, the progress to climb back to at the recovery pace.
    recover_to: Option<f64>,
}

impl Controller {
    /// A controller before its first tick; the ramp is engaged if the params say `on_start`.
    pub fn new(params: &ControlParams) -> Self {
        let kp = match params.limit {
            LimitMode::Adaptive(kp) => kp,
            LimitMode::Fixed { .. } => Default::default(),
        };
        let knee = KneeLimit::new(kp);
        Self {
            progress: 0.0,
            engaged: params.engage == Engage::OnStart,
            engage_limit: f64::from(knee.limit()),
            knee,
            pinned: None,
            strain_s: 0.0,
            drain: [0.0; 4],
            last_tick_ms: None,
            outage: None,
            recover_to: None,
        }
    }

    /// Current progress.
    pub fn progress(&self) -> f64 {
        self.progress
    }

    /// The limit algorithm (its own limit, before the ramp's cap or a pin; its baselines).
    pub fn knee(&self) -> &KneeLimit {
        &self.knee
    }

    /// The lowest no-load latency learned over every class, ms (none learned yet: `None`).
    pub fn baseline_ms(&self) -> Option<f64> {
        (0..CLASSES)
            .filter_map(|c| self.knee.baseline_ms(c))
            .fold(None, |m: Option<f64>, b| Some(m.map_or(b, |m| m.min(b))))
    }

    /// Whether the ramp is engaged.
    pub fn engaged(&self) -> bool {
        self.engaged
    }

    /// Operator: engage the ramp from progress 0 (or disengage it).
    pub fn set_engaged(&mut self, engaged: bool) {
        if engaged && !self.engaged {
            self.progress = 0.0;
            // The limit found, not a baseline check's moment at a quarter of it.
            self.engage_limit = f64::from(self.knee.level());
        }
        self.engaged = engaged;
        self.strain_s = 0.0;
    }

    /// Operator override of progress.
    pub fn set_progress(&mut self, progress: f64) {
        self.progress = progress.clamp(0.0, 1.0);
    }

    /// Takes the fleet's ramp (a follower keeps its own controller in step with the
    /// leader's plan, so that steering alone later starts where the fleet was).
    pub fn adopt(&mut self, progress: f64, engaged: bool) {
        self.progress = progress.clamp(0.0, 1.0);
        self.engaged = engaged;
    }

    /// Starts the limit algorithm from `limit` (a share of the fleet's, or the fleet's own
    /// when taking over as its leader); an engaged ramp's cap is rescaled to allow it now.
    pub fn adopt_limit(&mut self, limit: u32, params: &ControlParams) {
        self.knee.set(limit.max(1));
        if self.engaged {
            let start = params.curve.fraction(0.0, params.start_fraction).max(1e-3);
            let now = params
                .curve
                .fraction(self.progress, params.start_fraction)
                .max(1e-3);
            self.engage_limit = f64::from(limit.max(1)) * start / now;
        }
    }

    /// Operator: pin the limit to a value, or release it to the algorithm.
    pub fn pin_limit(&mut self, limit: Option<u32>) {
        self.pinned = limit.map(|l| l.max(1));
    }

    /// Per class, the latency under which a completion counts as fast for slow start on the
    /// data path: the baseline plus the tolerance (0 where nothing is learned yet).
    pub fn fast_us(&self, params: &ControlParams) -> [u64; CLASSES] {
        let tol = params.tolerance();
        std::array::from_fn(|c| {
            self.knee
                .baseline_ms(c)
                .map_or(0, |b| (b * (1.0 + tol) * 1000.0).ceil() as u64)
        })
    }

    /// Advances the controller to `now_ms` and returns what the gate should enforce.
    pub fn tick(&mut self, now_ms: u64, params: &ControlParams, s: &SignalSnapshot) -> Decision {
        let dt = match self.last_tick_ms {
            Some(last) => (now_ms.saturating_sub(last) as f64 / 1000.0).min(5.0),
            None => 0.0,
        };
        self.last_tick_ms = Some(now_ms);
        let recovered = self.step_outage(now_ms, s);
        // The window still holds the outage's failures this tick; they are no evidence now.
        let health = if recovered {
            Health::Healthy
        } else {
            classify(params, s)
        };
        let demand = s.gate.pressed > 0 || s.gate.waiting.iter().any(|&w| w > 0);
        self.step_limit(now_ms, dt, params, s, demand);
        if recovered {
            self.knee.restart();
        }
        self.step_drain(dt, s);
        self.step_engage(dt, params, s, demand);
        let state = self.step_progress(dt, params, s, health);
        let outage = self.outage.is_some_and(|o| {
            o.answering_since_ms.is_none()
                && now_ms.saturating_sub(o.since_ms) >= OUTAGE_MS
                && o.failures >= OUTAGE_FAILURES
        });
        let d = self.decide(params, state, health);
        Decision {
            recovered,
            outage,
            ..if outage { probing(d) } else { d }
        }
    }

    fn step_limit(
        &mut self,
        now_ms: u64,
        dt: f64,
        params: &ControlParams,
        s: &SignalSnapshot,
        demand: bool,
    ) {
        let LimitMode::Adaptive(kp) = params.limit else {
            return;
        };
        self.knee.set_params(kp);
        self.knee.raise_to(s.gate.limit);
        let peak = s.gate.peak_inflight;
        for c in 0..CLASSES {
            let n = s.class_n[c];
            if n > 0 {
                let mean_ms = s.class_us[c] as f64 / n as f64 / 1000.0;
                self.knee.sample(c, mean_ms, n, peak, Outcome::Ok);
            }
        }
        self.knee.sample(0, 0.0, s.dropped, peak, Outcome::Dropped);
        let limit = self.knee.update(now_ms, demand);
        // The latency SLO is a guard rail, not the control signal: past it the limit comes
        // down by `backoff_factor` a second whatever the inflation says.
        if !self.knee.checking()
            && s.samples >= params.min_samples
            && s.p99_ms >= params.latency_p99_ms.critical
        {
            let f = params.backoff_factor.clamp(0.1, 1.0).powf(dt);
            self.knee.set((f64::from(limit) * f).floor() as u32);
        }
    }

    fn step_drain(&mut self, dt: f64, s: &SignalSnapshot) {
        // A baseline check holds admissions low on purpose for a moment: what drains then is
        // not what a client told when to come back will meet.
        if dt <= 0.0 || self.knee.checking() {
            return;
        }
        // An exponential average over about a second of ticks.
        let a = (dt / 1.0).min(1.0);
        for p in 0..4 {
            let rate = s.gate.admitted[p] as f64 / dt;
            self.drain[p] += a * (rate - self.drain[p]);
        }
    }

    fn step_engage(&mut self, dt: f64, params: &ControlParams, s: &SignalSnapshot, demand: bool) {
        if self.engaged || params.engage != Engage::Auto {
            self.strain_s = 0.0;
            return;
        }
        // A baseline check holds the limit low on purpose: the line it makes is not strain.
        if self.knee.checking() {
            return;
        }
        let tol = params.tolerance();
        // Strain: the limit has found its level (a line during slow start is the limit catching
        // up, not a backend in trouble), more than one limit's worth waits, and the backend
        // shows why: latency above its baseline, or a cold cache.
        let waiting: u32 = s.gate.waiting.iter().sum();
        let settled = !self.knee.slow_start() || matches!(params.limit, LimitMode::Fixed { .. });
        let queueing = self.knee.inflation().is_some_and(|i| i > 1.0 + tol)
            || self.knee.smoothed_inflation() > 1.0 + tol;
        let cold = s.samples >= params.min_samples
            && s.hit_ratio
                .is_some_and(|h| h < params.auto_engage_hit_ratio);
        let long_line = waiting > s.gate.limit.max(1);
        if demand && settled && long_line && (queueing || cold) {
            self.strain_s += dt;
        } else {
            self.strain_s = 0.0;
        }
        if self.strain_s >= params.auto_engage_after_s {
            self.set_engaged(true);
        }
    }

    fn step_progress(
        &mut self,
        dt: f64,
        params: &ControlParams,
        s: &SignalSnapshot,
        health: Health,
    ) -> CtlState {
        if !self.engaged {
            return CtlState::Open;
        }
        if params.paused {
            return CtlState::Paused;
        }
        if health == Health::Critical {
            let floor = params.progress_floor.clamp(0.0, 1.0);
            if self.progress > floor {
                let shrunk = self.progress * params.backoff_factor.clamp(0.0, 1.0).powf(dt);
                self.progress = shrunk.max(floor);
            }
            return CtlState::BackingOff;
        }
        // Evidence: the backend answered this window, is not queueing past the knee, and the
        // priorities already open are served (their line is shorter than one limit's worth).
        let tol = params.tolerance();
        // With every remaining request behind a closed stage nothing reaches the backend, so
        // there are no answers to read: held-back demand while the backend has room and nobody
        // waits is the evidence then (no traffic at all is not).
        let room =
            s.gate.waiting.iter().all(|&w| w == 0) && s.gate.peak_inflight < s.gate.limit.max(1);
        let answered = s.samples >= params.min_samples || (s.gate.shed > 0 && room);
        let not_queueing = self.knee.inflation().is_none_or(|i| i <= 1.0 + 2.0 * tol)
            || matches!(params.limit, LimitMode::Fixed { .. });
        let open_waiting: u32 = Priority::ALL
            .iter()
            .filter(|p| self.progress >= params.stages[p.index()])
            .map(|p| s.gate.waiting[p.index()])
            .sum();
        let served = open_waiting <= s.gate.limit.max(1);
        if !(answered && not_queueing && health == Health::Healthy) {
            return CtlState::Holding;
        }
        // The plan's duration is its pace while the backend is busy; with demand held back and
        // the backend half idle, the bottleneck allows more, so the plan runs five times faster.
        let idle = s.gate.shed > 0
            && room
            && u64::from(s.gate.peak_inflight) * 2 <= u64::from(s.gate.limit.max(1));
        let pace = if idle { 5.0 } else { 1.0 };
        let mut step = if params.ramp_duration_s > 0.0 {
            pace * dt / params.ramp_duration_s
        } else {
            1.0
        };
        // Back after an outage: climb to where the ramp was at the recovery pace.
        match self.recover_to {
            Some(target) if self.progress < target => {
                step = step.max((dt / RECOVERY_S).min(target - self.progress));
            }
            Some(_) => self.recover_to = None,
            None => {}
        }
        let mut wanted = (self.progress + step).min(1.0);
        if !served {
            // The next stage waits until the priorities already admitted are served; progress
            // within this stage's band goes on (the curve's cap on the limit rises with it).
            let next = params
                .stages
                .iter()
                .copied()
                .filter(|&st| st > self.progress)
                .fold(1.0, f64::min);
            wanted = wanted.min(next - 1e-6);
            if wanted <= self.progress {
                return CtlState::Holding;
            }
        }
        let allowed = hit_gate_ceiling(params, s, self.progress);
        if wanted > allowed {
            self.progress = self.progress.max(allowed);
            return CtlState::WaitingForCache;
        }
        self.progress = wanted;
        if self.progress >= 1.0 {
            // The plan is done: the ramp steps aside until strain or an operator engages it again.
            self.engaged = false;
            return CtlState::Open;
        }
        CtlState::Advancing
    }

    fn decide(&self, params: &ControlParams, state: CtlState, health: Health) -> Decision {
        let fraction = if self.engaged {
            params.curve.fraction(self.progress, params.start_fraction)
        } else {
            1.0
        };
        let (limit, ceiling, slow_start) = match params.limit {
            LimitMode::Fixed { full_capacity } => {
                let l = (fraction * f64::from(full_capacity)).ceil().max(1.0) as u32;
                (l, l, false)
            }
            LimitMode::Adaptive(kp) => {
                let cap = if self.engaged {
                    let start = params.curve.fraction(0.0, params.start_fraction).max(1e-3);
                    (self.engage_limit * fraction / start).max(f64::from(kp.min))
                } else {
                    f64::from(kp.max)
                };
                let cap = cap.min(f64::from(kp.max)).max(1.0) as u32;
                (self.knee.limit().min(cap), cap, self.knee.slow_start())
            }
        };
        let (limit, ceiling, slow_start) = match self.pinned {
            Some(p) => (p, p, false),
            None => (limit, ceiling, slow_start),
        };
        let mut open = [true; 4];
        let mut eta_s = [0f64; 4];
        let mut admit_rps = [0f64; 4];
        for p in Priority::ALL {
            let i = p.index();
            if self.engaged {
                open[i] = self.progress >= params.stages[i];
                eta_s[i] = (params.stages[i] - self.progress).max(0.0) * params.ramp_duration_s;
            }
            admit_rps[i] = self.drain[i];
        }
        let rps = params
            .max_rps
            .map(|r| ((fraction * f64::from(r)).ceil() as u32).max(1));
        Decision {
            engaged: self.engaged,
            progress: self.progress,
            state,
            health,
            limit,
            ceiling,
            slow_start,
            open,
            eta_s,
            admit_rps,
            inflation: self.knee.inflation(),
            rps,
            recovered: false,
            outage: false,
        }
    }
}
