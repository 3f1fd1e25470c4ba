//! The controller: every tick, signals → limit, engaged ramp progress, stages and drain rates.
//! Pure: the clock and the signals are arguments.
//!
//! Three things, kept apart (control model v2): the **limit** (how much the backend takes now,
//! [`KneeLimit`] or a fixed capacity), the **queue** (served by the gate; the controller only
//! measures how fast each priority drains), and the **ramp** (the operator's cutover plan:
//! engaged on start, by an operator, or on strain; invisible otherwise). Progress advances only
//! on the backend's answers: no completions, no progress.

use super::gate::TickCounters;
use super::limit::{KneeLimit, LimitAlgorithm, Outcome, CLASSES};
use super::params::{ControlParams, Engage, LimitMode, Thresholds};
use super::priority::{PerPriority, Priority};

/// What the data path measured, read once per tick.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SignalSnapshot {
    /// Upstream responses in the guard-rail window.
    pub samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// `None` when no response carried the cache header.
    pub hit_ratio: Option<f64>,
    /// 5xx, connect failures and timeouts over forwarded requests in the window; `None` with no traffic.
    pub error_rate: Option<f64>,
    /// Requests in flight to the upstream right now.
    pub inflight: u32,
    /// Completions since the last tick by class (see [`super::limit::class_of`]).
    pub class_n: [u64; CLASSES],
    /// Their summed latency, microseconds.
    pub class_us: [u64; CLASSES],
    /// Dropped requests (5xx, timeouts, connect failures) since the last tick.
    pub dropped: u64,
    /// The gate's counters since the last tick.
    pub gate: TickCounters,
}

/// Health of the guard rails, worst first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Health {
    Critical,
    Warn,
    #[default]
    Healthy,
}

/// What the controller did on its last tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CtlState {
    /// No ramp engaged: every priority admitted within the limit.
    #[default]
    Open,
    Advancing,
    /// Engaged, waiting for evidence (completions, a short line) before advancing.
    Holding,
    BackingOff,
    /// A hit-ratio gate keeps progress where it is.
    WaitingForCache,
    Paused,
}

impl CtlState {
    /// Every state, for pre-registering metrics.
    pub const ALL: [CtlState; 6] = [
        CtlState::Open,
        CtlState::Advancing,
        CtlState::Holding,
        CtlState::BackingOff,
        CtlState::WaitingForCache,
        CtlState::Paused,
    ];

    /// Label for status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CtlState::Open => "open",
            CtlState::Advancing => "advancing",
            CtlState::Holding => "holding",
            CtlState::BackingOff => "backing_off",
            CtlState::WaitingForCache => "waiting_for_cache",
            CtlState::Paused => "paused",
        }
    }
}

/// The published result of a tick, read by the gate.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Decision {
    /// Whether the ramp is engaged (stages apply, the curve caps the limit).
    pub engaged: bool,
    pub progress: f64,
    pub state: CtlState,
    pub health: Health,
    /// Max requests in flight.
    pub limit: u32,
    /// How far slow start on the data path may raise the limit before the next tick.
    pub ceiling: u32,
    /// The limit is still doubling (no queueing seen since the last restart).
    pub slow_start: bool,
    /// Whether each priority is admitted (always, unless an engaged ramp has not reached it).
    pub open: PerPriority<bool>,
    /// Expected seconds until each priority's stage opens (0 when open).
    pub eta_s: PerPriority<f64>,
    /// Measured admissions per second of each priority alone.
    pub admit_rps: PerPriority<f64>,
    /// Latency over the no-load latency of the same mix, last tick.
    pub inflation: Option<f64>,
    /// Requests per second allowed now, if rate limited.
    pub rps: Option<u32>,
    /// The backend answers again after an outage: the signals recorded during it are no
    /// evidence about its capacity and are to be forgotten.
    pub recovered: bool,
    /// The backend is down (nothing but failures for [`OUTAGE_MS`] and [`OUTAGE_FAILURES`]):
    /// one request at a time probes it, the rest keep their places in line.
    pub outage: bool,
}

impl Decision {
    /// Measured admissions per second of `p` and every priority above it: the pace at which
    /// everyone ahead of a place of `p` in line is served.
    pub fn drain_rps(&self, p: Priority) -> f64 {
        self.admit_rps[p.index()..].iter().sum()
    }
}

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

/// An outage in progress: nothing but failures since `since_ms`.
#[derive(Clone, Copy, Debug)]
struct Outage {
    since_ms: u64,
    progress: f64,
    /// Failures seen during it (one lost request on a quiet backend is not an outage).
    failures: u64,
    /// The first answers came at this time, still mixed with failures (the requests sent
    /// while it was down fail as it comes back).
    answering_since_ms: Option<u64>,
}

/// Answers still mixed with failures this long after the first: a struggling backend, not
/// one coming back.
const MIXED_MS: u64 = 1_000;

/// An outage is failures only for at least this long (a burst of errors is not one)...
const OUTAGE_MS: u64 = 500;
/// ...and at least this many of them.
const OUTAGE_FAILURES: u64 = 3;
/// After an outage the ramp climbs back to where it was within about this long, as far as the
/// backend's answers allow (the stages still open in order, hit-ratio gates still hold).
const RECOVERY_S: f64 = 2.0;

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
            self.engage_limit = f64::from(self.knee.limit());
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

    /// Notes an outage (only failures, for [`OUTAGE_MS`] or more) and its end (answers and no
    /// failures): true on the tick the backend is back.
    fn step_outage(&mut self, now_ms: u64, s: &SignalSnapshot) -> bool {
        let ok: u64 = s.class_n.iter().sum();
        match (ok, s.dropped, self.outage) {
            (0, d, None) if d > 0 => {
                self.outage = Some(Outage {
                    since_ms: now_ms,
                    progress: self.progress,
                    failures: d,
                    answering_since_ms: None,
                });
                false
            }
            (0, d, Some(mut o)) => {
                o.failures += d;
                self.outage = Some(o);
                false
            }
            (n, 0, Some(o)) if n > 0 => {
                self.outage = None;
                if now_ms.saturating_sub(o.since_ms) < OUTAGE_MS || o.failures < OUTAGE_FAILURES {
                    return false;
                }
                if self.engaged {
                    self.recover_to = Some(o.progress.max(self.progress));
                }
                true
            }
            // Answers among the failures: coming back, or struggling if it lasts.
            (n, d, Some(mut o)) if n > 0 => {
                o.failures += d;
                let first = *o.answering_since_ms.get_or_insert(now_ms);
                self.outage = (now_ms.saturating_sub(first) < MIXED_MS).then_some(o);
                false
            }
            _ => false,
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
        if s.samples >= params.min_samples && s.p99_ms >= params.latency_p99_ms.critical {
            let f = params.backoff_factor.clamp(0.1, 1.0).powf(dt);
            self.knee.set((f64::from(limit) * f).floor() as u32);
        }
    }

    fn step_drain(&mut self, dt: f64, s: &SignalSnapshot) {
        if dt <= 0.0 {
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

/// During an outage: one request in flight at a time, a probe of whether the backend is back.
fn probing(d: Decision) -> Decision {
    Decision {
        limit: 1,
        ceiling: 1,
        slow_start: false,
        ..d
    }
}

/// The worst band any guard rail is in. Too few samples is no evidence of trouble.
pub fn classify(params: &ControlParams, s: &SignalSnapshot) -> Health {
    if s.samples < params.min_samples.max(1) {
        return Health::Healthy;
    }
    let mut worst = band(s.p99_ms, params.latency_p99_ms);
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
    use super::super::limit::{class_of, KneeParams};
    use super::super::params::HitGate;
    use super::*;

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
}
