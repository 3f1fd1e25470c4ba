//! `GET /status`: the controller state and signals as JSON.

use serde_json::{json, Value};

use crate::admission::limit::LimitAlgorithm;
use crate::admission::Priority;
use crate::metrics::Outcome;
use crate::runtime::{Cluster, ClusterView, Control, Shared};

/// Builds the status document: the first cluster's state at the top level (what a file with
/// one `[upstream]` has), and every cluster under `clusters`.
pub fn status(shared: &Shared) -> Value {
    let snap = shared.snapshot.load_full();
    let c = &snap.compiled;
    let now = shared.clock.now_ms();
    let Ok(ctl) = shared.control.lock() else {
        return json!({"error": "controller state unavailable"});
    };
    let clusters: Vec<Value> = c
        .clusters
        .iter()
        .zip(snap.clusters.iter())
        .zip(ctl.clusters.iter())
        .map(|((cluster, view), control)| cluster_status(cluster, view, control, now))
        .collect();
    let (version, retry_share, feature_overrides) =
        (ctl.version, ctl.retry_share, ctl.features.clone());
    drop(ctl);
    let features: Vec<Value> = c
        .features
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "cluster": c.clusters.get(f.cluster).map(|x| x.config.name.as_str()),
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
    let mut doc = clusters.first().cloned().unwrap_or_else(|| json!({}));
    if let Some(o) = doc.as_object_mut() {
        o.remove("name");
        o.insert("version".into(), json!(version));
        o.insert(
            "mode".into(),
            json!(if c.config.shadow { "shadow" } else { "enforce" }),
        );
        if let Some(sig) = o.get_mut("signals").and_then(Value::as_object_mut) {
            sig.insert("retry_share".into(), json!(retry_share));
        }
        if let Some(ov) = o.get_mut("overrides").and_then(Value::as_object_mut) {
            ov.insert(
                "features".into(),
                feature_overrides
                    .iter()
                    .map(|(k, v)| (k.clone(), json!(v.as_str())))
                    .collect::<serde_json::Map<String, Value>>()
                    .into(),
            );
            ov.insert(
                "note".into(),
                json!("operator overrides win over the file and are kept across reloads until released"),
            );
        }
        o.insert("features".into(), features.into());
        o.insert("clusters".into(), clusters.into());
        if let Some(link) = &shared.fleet {
            o.insert("fleet".into(), fleet(link, now));
        }
    }
    doc
}

/// The fleet as this instance sees it: the store, the leader, the last sync.
fn fleet(link: &crate::fleet::Link, now: u64) -> Value {
    let Ok(st) = link.state.lock() else {
        return json!({"error": "fleet state unavailable"});
    };
    json!({
        "name": link.config.name,
        "instance": link.config.instance,
        "store": link.config.store_text,
        "store_up": link.store_up(),
        "last_error": st.last_error,
        "leader": st.leader_name,
        "is_leader": st.leader.is_some(),
        "epoch": st.leader.or(st.plan.as_ref().map(|(p, _)| p.epoch)),
        "last_sync_age_ms": (st.last_ok_ms > 0).then(|| now.saturating_sub(st.last_ok_ms)),
        "sync_ms": link.config.sync.as_millis() as u64,
        "lease_ms": link.lease_ms(),
        "ops_applied": st.ops_seq,
    })
}

/// One cluster's controller, stages, signals, endpoints and operator overrides.
fn cluster_status(cluster: &Cluster, view: &ClusterView, ctl: &Control, now: u64) -> Value {
    let mut v = cluster_doc(cluster, view, ctl, now);
    if let (Some(o), Some(f)) = (v.as_object_mut(), fleet_side(ctl)) {
        o.insert("fleet".into(), f);
    }
    v
}

/// A cluster's place in its fleet: its share of the fleet's limit and every instance's.
fn fleet_side(ctl: &Control) -> Option<Value> {
    let f = &ctl.fleet;
    if f.share.is_none() && !f.fallback && f.shares.is_empty() {
        return None;
    }
    Some(json!({
        "role": if f.fallback { "alone" } else if f.leading { "leader" } else { "follower" },
        "share": f.share,
        "fleet_limit": f.fleet_limit,
        "instances": f.shares.iter().map(|(k, v)| json!({"instance": k, "share": v})).collect::<Vec<_>>(),
    }))
}

fn cluster_doc(cluster: &Cluster, view: &ClusterView, ctl: &Control, now: u64) -> Value {
    let d = view.decision;
    let params = &ctl.params;
    let signals = ctl.last_signals;
    let knee = ctl.controller.knee();
    let overrides = &ctl.overrides;
    let gate = cluster.state.gate;
    let waiting = gate.waiting_by_priority();
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
                    "max_wait_ms": cluster.config.gate.max_wait_ms[i],
                    "drain_rps": d.drain_rps(*p),
                }),
            )
        })
        .collect();
    let endpoints: Vec<Value> = cluster
        .endpoints
        .load()
        .endpoints
        .iter()
        .map(|e| {
            json!({
                "address": e.authority.as_str(),
                "ip": e.ip.map(|ip| ip.to_string()),
                "inflight": e.inflight(),
                "ejected": e.is_ejected(now),
                "ejections": e.ejections(),
            })
        })
        .collect();
    json!({
        "name": cluster.config.name,
        "overrides": {
            "limit": overrides.limit,
            "paused": params.paused,
            "curve": overrides.curve.as_ref().map(|c| c.name()),
            "stages": overrides.stages,
            "latency_p99_ms": overrides.latency_p99_ms.map(|t| json!({ "warn": t.warn, "critical": t.critical })),
            "error_rate": overrides.error_rate.map(|t| json!({ "warn": t.warn, "critical": t.critical })),
        },
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
            "baseline_ms": ctl.controller.baseline_ms(),
            "limit_mode": match params.limit {
                crate::admission::params::LimitMode::Fixed { .. } => "fixed",
                crate::admission::params::LimitMode::Adaptive { .. } => "adaptive",
            },
            "rps_limit": d.rps,
            "curve": params.curve.name(),
            "curve_points": curve_points(&params.curve, params.start_fraction),
            "points": match &params.curve {
                crate::admission::curve::Curve::Points(ps) => Some(ps.iter().map(|&(x, y)| [x, y]).collect::<Vec<_>>()),
                _ => None,
            },
            "start_fraction": params.start_fraction,
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
            "inflight": gate.inflight(),
            "queued": gate.waiting(),
            "held_early_returners": gate.held(),
            "waiting_clients": gate.waiting_clients(now),
        },
        "endpoints": endpoints,
        "dns": cluster
            .resolved
            .load()
            .iter()
            .map(|(name, r)| (name.clone(), json!({
                "addresses": r.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "error": r.error,
            })))
            .collect::<serde_json::Map<String, Value>>(),
    })
}

/// The curve as (progress, fraction of the full limit) points, for drawing it.
fn curve_points(c: &crate::admission::curve::Curve, start: f64) -> Vec<[f64; 2]> {
    (0..=20)
        .map(|i| {
            let p = f64::from(i) / 20.0;
            [p, c.fraction(p, start)]
        })
        .collect()
}
