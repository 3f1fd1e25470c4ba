//! The control surface: every knob the controller reads. Built from the config file at load,
//! edited live by operators, and carried over a reload.

use super::curve::Curve;
use super::priority::PerPriority;

/// `warn` / `critical` bounds for one signal: healthy below `warn`, hold in between, back off above.
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

/// How the admission limit (max in-flight) is found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LimitMode {
    /// `curve(progress) * full_capacity`.
    Fixed { full_capacity: u32 },
    /// Discovered from the signals: grows while healthy and saturated, shrinks when critical.
    Adaptive { initial: u32, min: u32, max: u32 },
}

/// All controller parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct ControlParams {
    /// Seconds for progress to go 0 → 1 while healthy.
    pub ramp_duration_s: f64,
    pub start_fraction: f64,
    pub curve: Curve,
    /// Progress is multiplied by this once per second while any signal is critical.
    pub backoff_factor: f64,
    /// Back-off never takes progress below this.
    pub progress_floor: f64,
    /// Progress at which each priority is admitted.
    pub stages: PerPriority<f64>,
    /// Share of the limit each priority may fill (in-flight of all priorities counted).
    pub headroom: PerPriority<f64>,
    pub hit_gates: Vec<HitGate>,
    /// Whether an unknown hit ratio (no header seen) lets progress pass a hit-ratio gate.
    pub unknown_hit_ratio_allows: bool,
    pub latency_p99_ms: Thresholds,
    pub error_rate: Thresholds,
    pub limit: LimitMode,
    /// Requests per second at full capacity (scaled by the curve); `None` for no rate limit.
    pub max_rps: Option<u32>,
    /// Operators froze progress.
    pub paused: bool,
}

impl Default for ControlParams {
    fn default() -> Self {
        Self {
            ramp_duration_s: 300.0,
            start_fraction: 0.05,
            curve: Curve::Linear,
            backoff_factor: 0.7,
            progress_floor: 0.0,
            stages: [0.8, 0.5, 0.2, 0.0],
            headroom: [0.7, 0.85, 0.95, 1.0],
            hit_gates: Vec::new(),
            unknown_hit_ratio_allows: true,
            latency_p99_ms: Thresholds {
                warn: 250.0,
                critical: 1000.0,
            },
            error_rate: Thresholds {
                warn: 0.02,
                critical: 0.10,
            },
            limit: LimitMode::Adaptive {
                initial: 16,
                min: 4,
                max: 10_000,
            },
            max_rps: None,
            paused: false,
        }
    }
}
