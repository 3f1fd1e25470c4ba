//! `GET /status`: the controller state and signals as JSON.

use serde_json::{json, Value};

use super::schema::{
    self, ClusterStatus, ControllerStatus, FleetShare, Overrides, Signals, Stages, Status,
    STATUS_SCHEMA,
};
use crate::admission::limit::LimitAlgorithm;
use crate::admission::Priority;
use crate::metrics::Outcome;
use crate::runtime::{Cluster, ClusterView, Control, Shared};

/// Builds the status document: the first cluster's state at the top level (what a file with
/// one `[upstream]` has), and every cluster under `clusters`.
pub fn status(shared: &Shared) -> Value {
    match document(shared) {
        Some(doc) => {
            serde_json::to_value(doc).unwrap_or_else(|e| json!({ "error": e.to_string() }))
        }
        None => json!({"error": "controller state unavailable"}),
    }
}

/// The typed status document (`None`: the controller state is unavailable).
pub fn document(shared: &Shared) -> Option<Status> {
    let snap = shared.snapshot.load_full();
    let c = &snap.compiled;
    let now = shared.clock.now_ms();
    let ctl = shared.control.lock().ok()?;
    let clusters: Vec<ClusterStatus> = c
        .clusters
        .iter()
        .zip(snap.clusters.iter())
        .zip(ctl.clusters.iter())
        .map(|((cluster, view), control)| cluster_status(cluster, view, control, now))
        .collect();
    let (version, retry_share, feature_overrides) =
        (ctl.version, ctl.retry_share, ctl.features.clone());
    drop(ctl);
    let features = c
        .features
        .iter()
        .map(|f| schema::Feature {
            name: f.name.clone(),
            cluster: c.clusters.get(f.cluster).map(|x| x.config.name.clone()),
            priority: f.priority.as_str().into(),
            state: f.state.get().as_str().into(),
            configured_state: f.configured.as_str().into(),
            admitted: f.counters.get(Outcome::Admitted),
            shed: f.counters.get(Outcome::Shed),
            rejected_queue: f.counters.get(Outcome::RejectedQueue),
            rejected_rate: f.counters.get(Outcome::RejectedRate),
            upstream_error: f.counters.get(Outcome::UpstreamError),
            shadow_reject: f.counters.get(Outcome::ShadowReject),
        })
        .collect();
    let first = clusters.first().cloned().unwrap_or_default();
    let mut overrides = first.overrides;
    overrides.features = Some(
        feature_overrides
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().to_string()))
            .collect(),
    );
    overrides.note = Some(
        "operator overrides win over the file and are kept across reloads until released".into(),
    );
    Some(Status {
        schema: STATUS_SCHEMA,
        version,
        mode: if c.config.shadow { "shadow" } else { "enforce" }.into(),
        controller: first.controller,
        stages: first.stages,
        signals: Signals {
            retry_share: Some(retry_share),
            ..first.signals
        },
        overrides,
        endpoints: first.endpoints,
        dns: first.dns,
        features,
        clusters,
        fleet: shared.fleet.as_ref().and_then(|link| fleet(link, now)),
    })
}

/// The fleet as this instance sees it: the store, the leader, the last sync.
fn fleet(link: &crate::fleet::Link, now: u64) -> Option<schema::Fleet> {
    let st = link.state.lock().ok()?;
    Some(schema::Fleet {
        name: link.config.name.clone(),
        instance: link.config.instance.clone(),
        store: link.config.store_text.clone(),
        store_up: link.store_up(),
        last_error: st.last_error.clone(),
        leader: st.leader_name.clone(),
        is_leader: st.leader.is_some(),
        epoch: st.leader.or(st.plan.as_ref().map(|(p, _)| p.epoch)),
        last_sync_age_ms: (st.last_ok_ms > 0).then(|| now.saturating_sub(st.last_ok_ms)),
        sync_ms: link.config.sync.as_millis() as u64,
        lease_ms: link.lease_ms(),
        ops_applied: st.ops_seq,
    })
}

/// One cluster's controller, stages, signals, endpoints, operator overrides and fleet share.
fn cluster_status(cluster: &Cluster, view: &ClusterView, ctl: &Control, now: u64) -> ClusterStatus {
    let d = view.decision;
    let params = &ctl.params;
    let signals = ctl.last_signals;
    let knee = ctl.controller.knee();
    let overrides = &ctl.overrides;
    let gate = cluster.state.gate;
    let waiting = gate.waiting_by_priority();
    let stage = |p: Priority| {
        let i = p.index();
        schema::Stage {
            admitted: d.open[i],
            stage: params.stages[i],
            eta_s: d.eta_s[i],
            waiting: waiting[i],
            max_wait_ms: cluster.config.gate.max_wait_ms[i],
            drain_rps: d.drain_rps(p),
        }
    };
    let stages = Stages {
        critical: stage(Priority::Critical),
        high: stage(Priority::High),
        normal: stage(Priority::Normal),
        low: stage(Priority::Low),
    };
    let band = |t: crate::admission::params::Thresholds| schema::Band {
        warn: t.warn,
        critical: t.critical,
    };
    ClusterStatus {
        name: cluster.config.name.clone(),
        overrides: Overrides {
            limit: overrides.limit,
            paused: params.paused,
            curve: overrides.curve.as_ref().map(|c| c.name().to_string()),
            stages: overrides.stages,
            latency_p99_ms: overrides.latency_p99_ms.map(band),
            error_rate: overrides.error_rate.map(band),
            features: None,
            note: None,
        },
        controller: ControllerStatus {
            state: d.state.as_str().into(),
            health: format!("{:?}", d.health).to_lowercase(),
            engage: params.engage.as_str().into(),
            engaged: d.engaged,
            progress: d.progress,
            paused: params.paused,
            limit: d.limit,
            limit_ceiling: d.ceiling,
            slow_start: d.slow_start,
            baseline_check: knee.checking(),
            latency_inflation: d.inflation,
            latency_inflation_smoothed: knee.smoothed_inflation(),
            limit_algorithm: knee.limit(),
            baseline_ms: ctl.controller.baseline_ms(),
            limit_mode: match params.limit {
                crate::admission::params::LimitMode::Fixed { .. } => "fixed",
                crate::admission::params::LimitMode::Adaptive { .. } => "adaptive",
            }
            .into(),
            rps_limit: d.rps,
            curve: params.curve.name().into(),
            curve_points: curve_points(&params.curve, params.start_fraction),
            points: match &params.curve {
                crate::admission::curve::Curve::Points(ps) => {
                    Some(ps.iter().map(|&(x, y)| [x, y]).collect())
                }
                _ => None,
            },
            start_fraction: params.start_fraction,
            ramp_duration_s: params.ramp_duration_s,
        },
        stages,
        signals: Signals {
            samples: signals.samples,
            p50_ms: signals.p50_ms,
            p90_ms: signals.p90_ms,
            p99_ms: signals.p99_ms,
            hit_ratio: signals.hit_ratio,
            error_rate: signals.error_rate,
            inflight: gate.inflight(),
            queued: gate.waiting(),
            held_early_returners: gate.held(),
            waiting_clients: gate.waiting_clients(now),
            retry_share: None,
        },
        endpoints: cluster
            .endpoints
            .load()
            .endpoints
            .iter()
            .map(|e| schema::Endpoint {
                address: e.authority.as_str().into(),
                ip: e.ip.map(|ip| ip.to_string()),
                inflight: e.inflight(),
                ejected: e.is_ejected(now),
                ejections: e.ejections(),
            })
            .collect(),
        dns: cluster
            .resolved
            .load()
            .iter()
            .map(|(name, r)| {
                (
                    name.clone(),
                    schema::Dns {
                        addresses: r.addresses.iter().map(ToString::to_string).collect(),
                        error: r.error.clone(),
                    },
                )
            })
            .collect(),
        fleet: fleet_side(ctl),
    }
}

/// A cluster's place in its fleet: its share of the fleet's limit and every instance's.
fn fleet_side(ctl: &Control) -> Option<FleetShare> {
    let f = &ctl.fleet;
    if f.share.is_none() && !f.fallback && f.shares.is_empty() {
        return None;
    }
    Some(FleetShare {
        role: if f.fallback {
            "alone"
        } else if f.leading {
            "leader"
        } else {
            "follower"
        }
        .into(),
        share: f.share,
        fleet_limit: f.fleet_limit,
        instances: f
            .shares
            .iter()
            .map(|(k, v)| schema::InstanceShare {
                instance: k.clone(),
                share: *v,
            })
            .collect(),
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
