//! The guard rails: the latency and error-rate bands a backend is in, and how far the
//! hit-ratio gates let the ramp go.

use super::super::params::{ControlParams, Thresholds};
use super::{Health, SignalSnapshot};

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
pub(super) fn hit_gate_ceiling(params: &ControlParams, s: &SignalSnapshot, progress: f64) -> f64 {
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
