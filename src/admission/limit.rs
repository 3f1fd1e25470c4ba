//! The in-flight limit, found from the backend's own answers (control model v2, §5.1).
//!
//! [`KneeLimit`] learns the no-load latency of each class of request (priority × cache hit /
//! miss / unknown, so a cache warming up is not mistaken for a backend getting faster), and
//! steers on the *inflation*: the time the requests of a tick took over the time the same mix
//! takes at no load. That one ratio answers both of §5's questions: queueing shows as latency
//! above the baseline, and past the knee more in flight stops buying throughput exactly when
//! latency grows in proportion (Little's law: throughput = in flight / latency).
//!
//! - Slow start while the inflation stays within `tolerance` (20 % by default: on a busy
//!   machine scheduling noise alone reads as 10–15 %): the limit doubles once per
//!   round trip (the data path also adds one per fast completion, see `Gate`), so a warm backend
//!   reaches its demand in a few round trips.
//! - At the knee: a gentle probe (+√limit / 2 per tick) while within tolerance, one step back
//!   between one and two tolerances, and above that a proportional drop to
//!   `peak in flight × (1 + tolerance / 2) / inflation`, which lands on the knee in one tick
//!   whatever the overshoot (Gradient2's gradient applied to what was really in flight).
//! - Guard rails: a tick whose share of dropped requests (5xx, timeouts, connect failures)
//!   reaches `drop_ratio` cuts the limit to 70 %.
//! - After `idle_restart_ms` with no completion the limit restarts from `initial` in slow start:
//!   a standby DC is idle until the cutover and must not meet the storm with a stale limit.
//! - A baseline check (Envoy adaptive concurrency's min-RTT window): a storm that fills the limit
//!   from the first request never lets the backend be seen at no load, so its first latencies
//!   (taken at `initial`, possibly past a sharp knee) would pass for the baseline and the limit
//!   would settle wherever it started. Under demand, when no tick has run at a quarter of the
//!   limit for [`CHECK_FIRST_MS`] (then half a baseline window), the limit drops to that quarter
//!   until one tick's answers come from it (at most [`CHECK_MAX_MS`]); those set the baseline,
//!   and the next ticks measure the limit against it. It costs a few hundred milliseconds at a
//!   quarter of the limit every half window, and nothing while demand is low.
//!
//! Why not plain Vegas or Gradient2: Vegas' queue thresholds (α, β in requests) are absolute,
//! too wide for a knee of 4 and too tight for 400; Gradient2 compares against a long-term
//! average that follows a sustained overload up. A windowed minimum per class keeps the
//! baseline honest while the cache mix shifts under it; BBR's and Envoy's periodic low-concurrency
//! probes are not needed because the limit starts conservative and the proportional drop takes it
//! back under the knee, where the minimum is measured again.

/// Classes of request with their own no-load latency: priority (4) × cache result (3).
pub const CLASSES: usize = 12;

/// The class of a request: `priority index * 3 + cache` (0 hit, 1 miss, 2 unknown).
pub fn class_of(priority_index: usize, cache: usize) -> usize {
    (priority_index.min(3) * 3 + cache.min(2)).min(CLASSES - 1)
}

/// How a request ended, as far as the limit cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response from the backend (any status below 500).
    Ok,
    /// A 5xx, a timeout or a connect failure: the backend did not cope.
    Dropped,
}

/// A limit algorithm: fed samples, asked for a limit once per tick. Pure: time is an argument.
pub trait LimitAlgorithm: Send {
    /// `count` requests of `class` completed with a mean round trip of `rtt_ms`, with about
    /// `inflight` requests in flight.
    fn sample(&mut self, class: usize, rtt_ms: f64, count: u64, inflight: u32, outcome: Outcome);
    /// Closes a tick: `demand` says whether requests waited or were refused for the limit.
    fn update(&mut self, now_ms: u64, demand: bool) -> u32;
    /// The limit now.
    fn limit(&self) -> u32;
}

/// The first baseline check comes this long after the first answers under demand.
pub const CHECK_FIRST_MS: u64 = 2_000;
/// A baseline check lasts at most this long (a backend at a second a request needs it).
pub const CHECK_MAX_MS: u64 = 2_000;

/// Parameters of [`KneeLimit`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KneeParams {
    /// Where the limit starts, and restarts after an idle period.
    pub initial: u32,
    pub min: u32,
    pub max: u32,
    /// Inflation tolerated as noise (0.15: 15 % above the no-load latency).
    pub tolerance: f64,
    /// Completions a tick needs before it moves the limit (fewer are carried over).
    pub min_samples: u64,
    /// No completion for this long: restart from `initial` in slow start.
    pub idle_restart_ms: u64,
    /// The baseline is the minimum over about this long.
    pub baseline_window_ms: u64,
    /// Share of dropped requests in a tick that cuts the limit.
    pub drop_ratio: f64,
    /// A no-load latency counts as at least this, in milliseconds: in front of a backend that
    /// answers in a fraction of a millisecond, scheduling noise alone doubles the latency, and
    /// differences that small are not queueing worth limiting.
    pub latency_floor_ms: f64,
}

impl Default for KneeParams {
    fn default() -> Self {
        Self {
            initial: 8,
            min: 2,
            max: 10_000,
            tolerance: 0.2,
            min_samples: 8,
            idle_restart_ms: 10_000,
            baseline_window_ms: 60_000,
            drop_ratio: 0.1,
            latency_floor_ms: 2.0,
        }
    }
}

/// A windowed minimum: the lower of this half-window's minimum and the last one's.
#[derive(Clone, Copy, Debug)]
struct Baseline {
    cur: f64,
    prev: f64,
    since_ms: u64,
}

impl Baseline {
    const EMPTY: Baseline = Baseline {
        cur: f64::INFINITY,
        prev: f64::INFINITY,
        since_ms: 0,
    };

    fn value(&self) -> Option<f64> {
        let v = self.cur.min(self.prev);
        v.is_finite().then_some(v)
    }

    fn observe(&mut self, ms: f64, now_ms: u64, half_window_ms: u64) {
        if now_ms.saturating_sub(self.since_ms) >= half_window_ms {
            self.prev = self.cur;
            self.cur = f64::INFINITY;
            self.since_ms = now_ms;
        }
        self.cur = self.cur.min(ms);
    }
}

/// The knee-finding limit. See the module documentation.
#[derive(Clone, Debug)]
pub struct KneeLimit {
    p: KneeParams,
    limit: f64,
    slow_start: bool,
    base: [Baseline; CLASSES],
    acc_n: [u64; CLASSES],
    acc_ms: [f64; CLASSES],
    acc_dropped: u64,
    acc_peak: u32,
    acc_since_ms: Option<u64>,
    last_sample_ms: u64,
    last_growth_ms: u64,
    now_ms: u64,
    inflation: Option<f64>,
    /// The inflation averaged over the last few ticks: what grow / step back decide on, so one
    /// noisy tick does not move the limit (the big drop still acts on a single tick).
    smoothed: f64,
    /// A baseline check in progress: the limit it holds and when it gives up.
    check: Option<(u32, u64)>,
    /// When the next baseline check is due: half a window after the last tick whose answers
    /// came from a quarter of the limit or less ([`CHECK_FIRST_MS`] after the first answers).
    next_check_ms: Option<u64>,
}

impl KneeLimit {
    /// A limit at `initial`, in slow start, with nothing learned.
    pub fn new(p: KneeParams) -> Self {
        let p = KneeParams {
            min: p.min.max(1),
            max: p.max.max(p.min.max(1)),
            ..p
        };
        Self {
            limit: f64::from(p.initial.clamp(p.min, p.max)),
            p,
            slow_start: true,
            base: [Baseline::EMPTY; CLASSES],
            acc_n: [0; CLASSES],
            acc_ms: [0.0; CLASSES],
            acc_dropped: 0,
            acc_peak: 0,
            acc_since_ms: None,
            last_sample_ms: 0,
            last_growth_ms: 0,
            now_ms: 0,
            inflation: None,
            smoothed: 1.0,
            check: None,
            next_check_ms: None,
        }
    }

    /// New parameters (a reload); what was learned is kept.
    pub fn set_params(&mut self, p: KneeParams) {
        self.p = KneeParams {
            min: p.min.max(1),
            max: p.max.max(p.min.max(1)),
            ..p
        };
        self.limit = self
            .limit
            .clamp(f64::from(self.p.min), f64::from(self.p.max));
    }

    /// Whether the limit is still doubling (no queueing seen yet). Not during a baseline
    /// check: the data path must not grow a limit held low on purpose.
    pub fn slow_start(&self) -> bool {
        self.slow_start && self.check.is_none()
    }

    /// The limit found (what a baseline check returns to).
    pub fn level(&self) -> u32 {
        self.limit.floor().max(1.0) as u32
    }

    /// Whether a baseline check holds the limit low now.
    pub fn checking(&self) -> bool {
        self.check.is_some()
    }

    /// The in-flight count a baseline check holds: a quarter of the limit.
    fn check_limit(&self) -> u32 {
        (self.level() / 4).max(self.p.min).max(1)
    }

    /// The last tick's inflation (latency over the no-load latency of the same mix).
    pub fn inflation(&self) -> Option<f64> {
        self.inflation
    }

    /// The inflation averaged over the last few ticks.
    pub fn smoothed_inflation(&self) -> f64 {
        self.smoothed
    }

    /// The learned no-load latency of a class, in milliseconds.
    pub fn baseline_ms(&self, class: usize) -> Option<f64> {
        self.base.get(class).and_then(Baseline::value)
    }

    /// The data path raised the limit during slow start (one per fast completion).
    pub fn raise_to(&mut self, limit: u32) {
        if self.slow_start && self.check.is_none() {
            self.limit = self.limit.max(f64::from(limit).min(f64::from(self.p.max)));
        }
    }

    /// Operator override of the current value (the algorithm goes on from there).
    pub fn set(&mut self, limit: u32) {
        self.limit = f64::from(limit.clamp(self.p.min, self.p.max));
    }

    fn grow(&mut self, now_ms: u64, rtt_ms: f64) {
        if self.slow_start {
            // Double once per round trip: the samples of a tick come from requests admitted a
            // round trip ago, so doubling faster would overshoot blind.
            if now_ms.saturating_sub(self.last_growth_ms) as f64 >= rtt_ms {
                self.limit *= 2.0;
                self.last_growth_ms = now_ms;
            }
        } else {
            self.limit += (self.limit.sqrt() / 2.0).max(1.0);
        }
    }
}

impl KneeLimit {
    /// The baseline check (see the module documentation): `Some(limit)` while one holds the
    /// limit low (this tick's samples are used for the baseline only), `None` to go on.
    fn step_check(&mut self, now_ms: u64, demand: bool) -> Option<u32> {
        let ok: u64 = self.acc_n.iter().sum();
        // Three answers at a quarter of the limit say what the backend does at low load.
        let low = ok >= 3 && self.acc_peak <= self.check.map_or(self.check_limit(), |c| c.0);
        let half = self.p.baseline_window_ms / 2;
        if low {
            self.next_check_ms = Some(now_ms + half);
        }
        let next = *self.next_check_ms.get_or_insert(now_ms + CHECK_FIRST_MS);
        if let Some((held, until_ms)) = self.check {
            if low {
                for c in 0..CLASSES {
                    if self.acc_n[c] > 0 {
                        let mean = self.acc_ms[c] / self.acc_n[c] as f64;
                        self.base[c].observe(mean, now_ms, half);
                    }
                }
            }
            // Answers from the held limit are kept across ticks until there are three (a
            // backend slower than a tick answers fewer per tick); any from before are dropped.
            if low || self.acc_peak > held {
                self.clear_tick();
            }
            if low || now_ms >= until_ms {
                self.check = None;
                self.clear_tick();
                return Some(self.limit());
            }
            return Some(held);
        }
        if demand && now_ms >= next && self.level() >= 2 * self.check_limit() {
            let held = self.check_limit();
            self.check = Some((held, now_ms + CHECK_MAX_MS));
            self.next_check_ms = Some(now_ms + half);
            self.clear_tick();
            return Some(held);
        }
        None
    }

    fn clear_tick(&mut self) {
        self.acc_n = [0; CLASSES];
        self.acc_ms = [0.0; CLASSES];
        self.acc_dropped = 0;
        self.acc_peak = 0;
        self.acc_since_ms = None;
    }

    /// A backend that failed answers again: start over from `initial` in slow start (what it
    /// can take after a restart is unknown; the baselines are kept, so growth is fast while
    /// its latency is at them).
    pub fn restart(&mut self) {
        self.check = None;
        self.limit = f64::from(self.p.initial.clamp(self.p.min, self.p.max));
        self.slow_start = true;
        self.inflation = None;
        self.smoothed = 1.0;
    }
}

impl LimitAlgorithm for KneeLimit {
    fn sample(&mut self, class: usize, rtt_ms: f64, count: u64, inflight: u32, outcome: Outcome) {
        if count == 0 {
            return;
        }
        self.acc_since_ms.get_or_insert(self.now_ms);
        self.acc_peak = self.acc_peak.max(inflight);
        match outcome {
            Outcome::Dropped => self.acc_dropped += count,
            Outcome::Ok => {
                let c = class.min(CLASSES - 1);
                self.acc_n[c] += count;
                self.acc_ms[c] += rtt_ms.max(0.0) * count as f64;
            }
        }
    }

    fn update(&mut self, now_ms: u64, demand: bool) -> u32 {
        self.now_ms = now_ms;
        let ok: u64 = self.acc_n.iter().sum();
        let total = ok + self.acc_dropped;
        if total == 0 {
            if !demand && now_ms.saturating_sub(self.last_sample_ms) >= self.p.idle_restart_ms {
                self.limit = self.limit.min(f64::from(self.p.initial));
                self.check = None;
                self.slow_start = true;
                self.inflation = None;
                self.smoothed = 1.0;
            }
            return self.limit();
        }
        self.last_sample_ms = now_ms;
        if let Some(held) = self.step_check(now_ms, demand) {
            return held;
        }
        let age = now_ms.saturating_sub(self.acc_since_ms.unwrap_or(now_ms));
        if total < self.p.min_samples && age < 1_000 {
            return self.limit();
        }
        let tol = self.p.tolerance.max(0.0);
        let peak = f64::from(self.acc_peak.max(1));
        let (mut took, mut expected) = (0.0, 0.0);
        let half = self.p.baseline_window_ms / 2;
        for c in 0..CLASSES {
            let n = self.acc_n[c];
            if n == 0 {
                continue;
            }
            let mean = self.acc_ms[c] / n as f64;
            // A class seen in very small numbers says little about its no-load latency.
            if n >= 3 || self.base[c].value().is_none() {
                self.base[c].observe(mean, now_ms, half);
            }
            let base = self.base[c]
                .value()
                .unwrap_or(mean)
                .max(self.p.latency_floor_ms)
                .max(1e-3);
            took += self.acc_ms[c];
            expected += base * n as f64;
        }
        let inflation = if expected > 0.0 {
            (took / expected).max(1.0)
        } else {
            1.0
        };
        let mean_rtt = if ok > 0 { took / ok as f64 } else { 0.0 };
        self.inflation = (ok > 0).then_some(inflation);
        self.smoothed = 0.5 * self.smoothed + 0.5 * inflation;
        let dropped = self.acc_dropped as f64 / total as f64;
        if dropped >= self.p.drop_ratio {
            self.limit *= 0.7;
            self.slow_start = false;
        } else if inflation > 1.0 + 2.0 * tol {
            // From what was in flight when these samples were taken, so a second tick of
            // samples from before the drop does not compound it.
            let target = peak * (1.0 + tol / 2.0) / inflation;
            self.limit = self.limit.min(target.max(self.limit * 0.5));
            self.slow_start = false;
        } else if inflation > 1.0 + tol && self.smoothed > 1.0 + tol {
            // Two readings agree (this tick's and the recent average): one noisy tick does not
            // move the limit, and the average's memory of a big drop does not either.
            self.limit = self.limit.min(peak - 1.0);
            self.slow_start = false;
        } else if demand && peak >= (0.9 * self.limit).floor() && inflation <= 1.0 + tol {
            // Grow only once the samples come from the current limit: growing on samples
            // taken under a smaller one would overshoot blind.
            self.grow(now_ms, mean_rtt);
        }
        self.limit = self
            .limit
            .clamp(f64::from(self.p.min), f64::from(self.p.max));
        self.clear_tick();
        self.limit()
    }

    /// The limit in force: a baseline check's while one holds it low.
    fn limit(&self) -> u32 {
        self.check.map_or(self.level(), |(held, _)| held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted backend: `knee` requests run at full speed; past it they share the knee's
    /// throughput (latency grows in proportion), and `contention` slows everyone further.
    struct Backend {
        knee: f64,
        base_ms: f64,
        contention: f64,
    }

    impl Backend {
        fn rtt(&self, inflight: f64) -> f64 {
            let over = (inflight - self.knee).max(0.0);
            self.base_ms * (inflight / self.knee).max(1.0) * (1.0 + self.contention * over)
        }
    }

    const TICK: u64 = 100;

    /// Drives `alg` against `b` with demand far above any limit for `secs` of simulated time.
    /// What a tick sees completed was admitted under the previous tick's limit.
    fn drive(alg: &mut KneeLimit, b: &Backend, from_ms: u64, secs: u64) -> Vec<u32> {
        let mut limits = Vec::new();
        let mut prev = alg.limit();
        let mut last = prev;
        for i in 1..=(secs * 1000 / TICK) {
            let n = f64::from(prev);
            let rtt = b.rtt(n);
            let done = (n * TICK as f64 / rtt).round().max(1.0) as u64;
            alg.sample(class_of(3, 1), rtt, done, prev, Outcome::Ok);
            prev = last;
            last = alg.update(from_ms + i * TICK, true);
            limits.push(last);
        }
        limits
    }

    fn mean(xs: &[u32]) -> f64 {
        xs.iter().map(|&x| f64::from(x)).sum::<f64>() / xs.len().max(1) as f64
    }

    #[test]
    fn converges_to_within_a_quarter_of_each_knee() {
        for knee in [4.0, 16.0, 64.0] {
            for contention in [0.0, 0.1] {
                let b = Backend {
                    knee,
                    base_ms: 20.0,
                    contention,
                };
                let mut alg = KneeLimit::new(KneeParams {
                    initial: 2,
                    min: 1,
                    ..Default::default()
                });
                let limits = drive(&mut alg, &b, 0, 10);
                // The last 3 s of the 10: settled, oscillating gently around the knee.
                let tail = &limits[limits.len() - 30..];
                let m = mean(tail);
                assert!(
                    (m - knee).abs() <= 0.25 * knee,
                    "knee {knee}, contention {contention}: mean {m:.1} of {tail:?}"
                );
                assert!(
                    tail.iter().all(|&l| f64::from(l) <= 1.5 * knee),
                    "knee {knee}: {tail:?}"
                );
            }
        }
    }

    #[test]
    fn a_storm_from_the_first_request_still_finds_a_sharp_knee_below_initial() {
        // The limit starts at 10 in front of a knee of 4, past slow start, and demand fills it
        // from the first tick: its first latencies (2.5x the no-load one) pass for the
        // baseline, and it holds near 10 unless it goes and looks at low load.
        let b = Backend {
            knee: 4.0,
            base_ms: 20.0,
            contention: 0.0,
        };
        let mut alg = KneeLimit::new(KneeParams {
            initial: 10,
            ..Default::default()
        });
        alg.slow_start = false;
        let limits = drive(&mut alg, &b, 0, 12);
        // Before the check (2 s in), stuck near where it started.
        assert!(limits[5..18].iter().all(|&l| l >= 8), "{limits:?}");
        let tail = &limits[limits.len() - 30..];
        let m = mean(tail);
        assert!((m - 4.0).abs() <= 1.0, "mean {m:.1} of {limits:?}");
        assert_eq!(alg.baseline_ms(class_of(3, 1)), Some(20.0));
    }

    #[test]
    fn a_check_in_front_of_a_backend_slower_than_a_tick_gathers_answers_across_ticks() {
        // 300 ms a request: at 2 in flight about one answer comes back per 100 ms tick.
        let b = Backend {
            knee: 4.0,
            base_ms: 300.0,
            contention: 0.0,
        };
        let mut alg = KneeLimit::new(KneeParams {
            initial: 10,
            ..Default::default()
        });
        alg.slow_start = false;
        drive(&mut alg, &b, 0, 6);
        assert_eq!(alg.baseline_ms(class_of(3, 1)), Some(300.0));
    }

    #[test]
    fn without_demand_there_is_no_check() {
        let b = Backend {
            knee: 4.0,
            base_ms: 20.0,
            contention: 0.3,
        };
        let mut alg = KneeLimit::new(KneeParams::default());
        for t in 1..=60u64 {
            let n = f64::from(alg.limit());
            alg.sample(class_of(3, 1), b.rtt(n), 10, alg.limit(), Outcome::Ok);
            assert_eq!(alg.update(t * 100, false), 8, "tick {t}");
            assert!(!alg.checking());
        }
    }

    #[test]
    fn a_warm_backend_is_reached_in_about_a_second() {
        // A fast backend far from its knee: slow start doubles once its samples come from the
        // current limit (every other 100 ms tick here; the data path's +1 per fast completion
        // makes it faster in the proxy).
        let b = Backend {
            knee: 500.0,
            base_ms: 5.0,
            contention: 0.0,
        };
        let mut alg = KneeLimit::new(KneeParams::default());
        let limits = drive(&mut alg, &b, 0, 2);
        assert!(limits[14] >= 400, "{limits:?}");
        assert!(alg.slow_start() || alg.limit() >= 400);
    }

    #[test]
    fn backs_off_within_two_ticks_of_a_latency_step() {
        let mut b = Backend {
            knee: 16.0,
            base_ms: 20.0,
            contention: 0.0,
        };
        let mut alg = KneeLimit::new(KneeParams::default());
        let settled = drive(&mut alg, &b, 0, 10);
        let before = *settled.last().unwrap_or(&0);
        // The backend loses half its capacity (a node fails, a cache flushes): latency doubles.
        b.knee = 8.0;
        let after = drive(&mut alg, &b, 10_000, 1);
        assert!(
            after[1] < before && f64::from(after[1]) <= 1.25 * 8.0 + 1.0,
            "{before} then {after:?}"
        );
    }

    #[test]
    fn restarts_low_after_idle_and_keeps_its_baselines() {
        let b = Backend {
            knee: 64.0,
            base_ms: 10.0,
            contention: 0.0,
        };
        let mut alg = KneeLimit::new(KneeParams::default());
        drive(&mut alg, &b, 0, 10);
        assert!(alg.limit() > 40);
        // Quiet: no completions for 15 s.
        for t in (10_100..25_000).step_by(100) {
            alg.update(t, false);
        }
        assert_eq!(alg.limit(), 8);
        assert!(alg.slow_start());
        assert_eq!(alg.baseline_ms(class_of(3, 1)), Some(10.0));
    }

    #[test]
    fn a_fractional_limit_still_grows() {
        // The gate enforces the floor of the limit: 6.95 admits 6, so the peak is 6.
        let mut alg = KneeLimit::new(KneeParams::default());
        alg.sample(0, 10.0, 20, 8, Outcome::Ok);
        alg.update(100, false);
        alg.slow_start = false;
        alg.limit = 6.95;
        for t in 2..6u64 {
            let peak = alg.limit();
            alg.sample(0, 10.0, 20, peak, Outcome::Ok);
            alg.update(t * 100, true);
        }
        assert!(alg.limit() >= 9, "{}", alg.limit());
    }

    #[test]
    fn sub_millisecond_noise_is_not_queueing() {
        // A warm backend at 0.3 ms whose latency doubles and triples with scheduling noise.
        let mut alg = KneeLimit::new(KneeParams::default());
        for t in 1..=30u64 {
            let rtt = 0.3 * (1 + t % 3) as f64;
            let peak = alg.limit();
            alg.sample(0, rtt, 50, peak, Outcome::Ok);
            alg.update(t * 100, true);
        }
        assert!(alg.limit() >= 64, "{}", alg.limit());
    }

    #[test]
    fn no_demand_no_growth_and_drops_cut() {
        let mut alg = KneeLimit::new(KneeParams::default());
        for t in 1..=20u64 {
            alg.sample(0, 5.0, 20, 2, Outcome::Ok);
            alg.update(t * 100, false);
        }
        assert_eq!(alg.limit(), 8, "nothing presses on it");
        alg.sample(0, 5.0, 10, 8, Outcome::Ok);
        alg.sample(0, 5.0, 10, 8, Outcome::Dropped);
        assert_eq!(alg.update(2_100, true), 5, "half dropped: cut to 70 %");
    }

    #[test]
    fn a_warming_cache_is_not_read_as_a_faster_backend() {
        // Hits take 1 ms and misses 50 ms at no load; the mix moves from misses to hits.
        let mut alg = KneeLimit::new(KneeParams::default());
        let (hit, miss) = (class_of(3, 0), class_of(3, 1));
        alg.sample(hit, 1.0, 10, 4, Outcome::Ok);
        alg.sample(miss, 50.0, 10, 4, Outcome::Ok);
        alg.update(100, false);
        // Later: mostly hits, misses twice as slow as at no load. The mean fell (6 ms vs 25 ms)
        // but the misses are queueing: the limit must not grow.
        alg.sample(hit, 1.0, 90, 8, Outcome::Ok);
        alg.sample(miss, 100.0, 10, 8, Outcome::Ok);
        let before = alg.limit();
        let after = alg.update(200, true);
        assert!(after < before, "{before} -> {after}");
        assert!(alg.inflation().unwrap_or(1.0) > 1.3);
    }
}
