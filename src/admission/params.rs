//! The control surface: every knob the controller reads. Built from the config file at load,
//! edited live by operators, and carried over a reload.

use super::curve::Curve;
use super::limit::KneeParams;
use super::priority::PerPriority;

/// `warn` / `critical` bounds for one guard-rail signal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    pub warn: f64,
    pub critical: f64,
}

/// Progress may not pass `progress` until the cache hit ratio reaches `min_hit_ratio`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HitGate {
    pub progress: f64,
    pub min_hit_ratio: f64,
}

/// How the admission limit (max in flight) is found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LimitMode {
    /// A known capacity: `full_capacity`, times `curve(progress)` while a ramp is engaged.
    Fixed { full_capacity: u32 },
    /// Discovered from the backend's answers ([`super::limit::KneeLimit`]).
    Adaptive(KneeParams),
}

/// When the ramp (the operator's cutover plan) is engaged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engage {
    /// From the start: a standby DC's proxy, waiting for the cutover.
    OnStart,
    /// When the backend shows strain (demand pressing on the limit while latency rises above
    /// its baseline or the cache is cold), or when an operator engages it.
    Auto,
    /// Only when an operator engages it.
    Manual,
}

impl Engage {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            Engage::OnStart => "on_start",
            Engage::Auto => "auto",
            Engage::Manual => "manual",
        }
    }
}

/// All controller parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlParams {
    pub engage: Engage,
    /// Strain must last this long before the ramp engages by itself.
    pub auto_engage_after_s: f64,
    /// Under load, a hit ratio below this counts as strain (a cold cache).
    pub auto_engage_hit_ratio: f64,
    /// Seconds for progress to go 0 → 1 while the backend keeps up.
    pub ramp_duration_s: f64,
    pub start_fraction: f64,
    pub curve: Curve,
    /// Progress is multiplied by this once per second while a guard rail is critical.
    pub backoff_factor: f64,
    /// Back-off never takes progress below this.
    pub progress_floor: f64,
    /// Progress at which each priority is admitted while the ramp is engaged.
    pub stages: PerPriority<f64>,
    pub hit_gates: Vec<HitGate>,
    /// Whether an unknown hit ratio (no header seen) lets progress pass a hit-ratio gate.
    pub unknown_hit_ratio_allows: bool,
    /// Guard rail: the latency SLO on the window's p99.
    pub latency_p99_ms: Thresholds,
    /// Guard rail: the share of 5xx, timeouts and connect failures.
    pub error_rate: Thresholds,
    /// Upstream responses the window needs before the guard rails can call anything critical.
    pub min_samples: u64,
    pub limit: LimitMode,
    /// Requests per second at full capacity (scaled by the curve while engaged); `None` for none.
    pub max_rps: Option<u32>,
    /// Operators froze progress.
    pub paused: bool,
}

impl ControlParams {
    /// Latency above the no-load latency taken as noise, not queueing: the adaptive limit's
    /// `tolerance`, and the same default for a fixed limit (read here only).
    pub fn tolerance(&self) -> f64 {
        match self.limit {
            LimitMode::Adaptive(kp) => kp.tolerance,
            LimitMode::Fixed { .. } => crate::admission::limit::KneeParams::default().tolerance,
        }
    }
}

impl Default for ControlParams {
    fn default() -> Self {
        Self {
            engage: Engage::Auto,
            auto_engage_after_s: 2.0,
            auto_engage_hit_ratio: 0.2,
            ramp_duration_s: 60.0,
            start_fraction: 0.1,
            curve: Curve::Linear,
            backoff_factor: 0.7,
            progress_floor: 0.0,
            stages: [0.8, 0.5, 0.2, 0.0],
            hit_gates: Vec::new(),
            unknown_hit_ratio_allows: true,
            latency_p99_ms: Thresholds {
                warn: 500.0,
                critical: 2000.0,
            },
            error_rate: Thresholds {
                warn: 0.05,
                critical: 0.25,
            },
            min_samples: 20,
            limit: LimitMode::Adaptive(KneeParams::default()),
            max_rps: None,
            paused: false,
        }
    }
}
