//! `GET /status`: the controller state and signals as JSON.

use serde_json::{json, Value};

use crate::admission::limit::LimitAlgorithm;
use crate::admission::Priority;
use crate::metrics::Outcome;
use crate::runtime::Shared;

/// Builds the status document.
pub fn status(shared: &Shared) -> Value {
    let snap = shared.snapshot.load_full();
    let d = snap.decision;
    let c = &snap.compiled;
    let now = shared.clock.now_ms();
    let (signals, params, retry_share, knee, version, overrides) = match shared.control.lock() {
        Ok(ctl) => (
            ctl.last_signals,
            ctl.params.clone(),
            ctl.retry_share,
            ctl.controller.knee().clone(),
            ctl.version,
            ctl.overrides.clone(),
        ),
        Err(_) => return json!({"error": "controller state unavailable"}),
    };
    let waiting = shared.gate.waiting_by_priority();
    let stages: serde_json::Map<String, Value> = Priority::ALL
        .iter()
        .rev()
        .map(|p| {
            let i = p.index();
            (
                p.as_str().to_string(),
                json!({
                    "admitted": d.open[i],
                    "stage": params.stages[i],
                    "eta_s": d.eta_s[i],
                    "waiting": waiting[i],
                    "max_wait_ms": c.config.gate.max_wait_ms[i],
                    "drain_rps": d.drain_rps(*p),
                }),
            )
        })
        .collect();
    let features: Vec<Value> = c
        .features
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "priority": f.priority.as_str(),
                "state": f.state.get().as_str(),
                "configured_state": f.configured.as_str(),
                "admitted": f.counters.get(Outcome::Admitted),
                "shed": f.counters.get(Outcome::Shed),
                "rejected_queue": f.counters.get(Outcome::RejectedQueue),
                "rejected_rate": f.counters.get(Outcome::RejectedRate),
                "upstream_error": f.counters.get(Outcome::UpstreamError),
                "shadow_reject": f.counters.get(Outcome::ShadowReject),
            })
        })
        .collect();
    let endpoints: Vec<Value> = c
        .endpoints
        .endpoints
        .iter()
        .map(|e| {
            json!({
                "address": e.authority.as_str(),
                "inflight": e.inflight(),
                "ejected": e.is_ejected(now),
                "ejections": e.ejections(),
            })
        })
        .collect();
    json!({
        "version": version,
        "overrides": {
            "features": overrides
                .features
                .iter()
                .map(|(k, v)| (k.clone(), json!(v.as_str())))
                .collect::<serde_json::Map<String, Value>>(),
            "limit": overrides.limit,
            "paused": params.paused,
            "curve": overrides.curve.as_ref().map(|c| c.name()),
            "stages": overrides.stages,
            "latency_p99_ms": overrides.latency_p99_ms.map(|t| json!({ "warn": t.warn, "critical": t.critical })),
            "error_rate": overrides.error_rate.map(|t| json!({ "warn": t.warn, "critical": t.critical })),
            "note": "operator overrides win over the file and are kept across reloads until released",
        },
        "mode": if c.config.shadow { "shadow" } else { "enforce" },
        "controller": {
            "state": d.state.as_str(),
            "health": format!("{:?}", d.health).to_lowercase(),
            "engage": params.engage.as_str(),
            "engaged": d.engaged,
            "progress": d.progress,
            "paused": params.paused,
            "limit": d.limit,
            "limit_ceiling": d.ceiling,
            "slow_start": d.slow_start,
            "latency_inflation": d.inflation,
            "latency_inflation_smoothed": knee.smoothed_inflation(),
            "limit_algorithm": knee.limit(),
            "baseline_ms": (0..crate::admission::limit::CLASSES)
                .filter_map(|c| knee.baseline_ms(c))
                .fold(None, |m: Option<f64>, b| Some(m.map_or(b, |m| m.min(b)))),
            "limit_mode": match params.limit {
                crate::admission::params::LimitMode::Fixed { .. } => "fixed",
                crate::admission::params::LimitMode::Adaptive { .. } => "adaptive",
            },
            "rps_limit": d.rps,
            "curve": params.curve.name(),
            "ramp_duration_s": params.ramp_duration_s,
        },
        "stages": stages,
        "signals": {
            "samples": signals.samples,
            "p50_ms": signals.p50_ms,
            "p90_ms": signals.p90_ms,
            "p99_ms": signals.p99_ms,
            "hit_ratio": signals.hit_ratio,
            "error_rate": signals.error_rate,
            "inflight": shared.gate.inflight(),
            "retry_share": retry_share,
            "queued": shared.gate.waiting(),
            "held_early_returners": shared.gate.held(),
            "waiting_clients": shared.gate.waiting_clients(now),
        },
        "features": features,
        "endpoints": endpoints,
    })
}
