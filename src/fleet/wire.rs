//! What instances write to the store and read back: each one's report, the leader's plan,
//! and operator writes to replay. Compact JSON (a few hundred bytes per cluster).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::admission::limit::CLASSES;
use crate::admission::SignalSnapshot;

/// One instance's report for one cluster: counters since its last report that reached the
/// store, and its state now.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterReport {
    /// Completions and their summed latency (µs) by class.
    pub n: Vec<u64>,
    pub us: Vec<u64>,
    pub dropped: u64,
    pub admitted: [u64; 4],
    pub shed: u64,
    pub pressed: u64,
    pub peak: u32,
    /// The guard-rail window now.
    pub samples: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub hit: Option<f64>,
    pub err: Option<f64>,
    pub inflight: u32,
    pub waiting: [u32; 4],
    /// The share it applies now.
    pub share: u32,
}

impl ClusterReport {
    /// Adds one tick's signals (counters add up; the rest is the latest).
    pub fn add(&mut self, s: &SignalSnapshot, share: u32) {
        self.n.resize(CLASSES, 0);
        self.us.resize(CLASSES, 0);
        for c in 0..CLASSES {
            self.n[c] += s.class_n[c];
            self.us[c] += s.class_us[c];
        }
        self.dropped += s.dropped;
        for p in 0..4 {
            self.admitted[p] += s.gate.admitted[p];
        }
        self.shed += s.gate.shed;
        self.pressed += s.gate.pressed;
        self.peak = self.peak.max(s.gate.peak_inflight);
        self.samples = s.samples;
        (self.p50, self.p90, self.p99) = (s.p50_ms, s.p90_ms, s.p99_ms);
        self.hit = s.hit_ratio;
        self.err = s.error_rate;
        self.inflight = s.inflight;
        self.waiting = s.gate.waiting;
        self.share = share;
    }

    /// What is left after `sent` reached the store (counters that came in meanwhile).
    pub fn subtract(&mut self, sent: &ClusterReport) {
        for (a, b) in self.n.iter_mut().zip(&sent.n) {
            *a = a.saturating_sub(*b);
        }
        for (a, b) in self.us.iter_mut().zip(&sent.us) {
            *a = a.saturating_sub(*b);
        }
        self.dropped = self.dropped.saturating_sub(sent.dropped);
        for p in 0..4 {
            self.admitted[p] = self.admitted[p].saturating_sub(sent.admitted[p]);
        }
        self.shed = self.shed.saturating_sub(sent.shed);
        self.pressed = self.pressed.saturating_sub(sent.pressed);
        self.peak = 0;
    }
}

/// One instance's report: a sequence number (so the leader counts each once) and a
/// report per cluster, by name.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Report {
    pub seq: u64,
    pub clusters: BTreeMap<String, ClusterReport>,
}

/// The leader's plan for one cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterPlan {
    /// The fleet's limit and where its ramp stands.
    pub limit: u32,
    pub engaged: bool,
    pub progress: f64,
    pub open: [bool; 4],
    pub eta_s: [f64; 4],
    pub rps: Option<u32>,
    /// Outages the fleet came back from (a new one: every instance forgets its window's).
    pub recoveries: u64,
    /// Each instance's share, by instance name.
    pub shares: BTreeMap<String, u32>,
}

/// The leader's plan.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Plan {
    pub leader: String,
    pub epoch: u64,
    /// The last operator write the leader had applied when it made this plan.
    pub ops_seq: u64,
    pub clusters: BTreeMap<String, ClusterPlan>,
}

/// An operator write taken by one instance, to be applied by every other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Op {
    pub instance: String,
    pub token: String,
    pub method: String,
    pub path: String,
    pub body: serde_json::Value,
}

/// What one instance told clients since its last sync, per cluster: (client memory key,
/// return time, first arrival), wall-clock ms, so that a client who retries on another
/// instance is known there as early (and keeps its place in line).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Told {
    pub instance: String,
    pub clusters: BTreeMap<String, Vec<[u64; 3]>>,
}

/// The fleet's aggregate signals for one cluster, from every live instance's report.
pub fn aggregate(reports: &[&ClusterReport], limit: u32) -> SignalSnapshot {
    let mut s = SignalSnapshot::default();
    let (mut hit_w, mut hit_sum, mut err_w, mut err_sum) = (0.0, 0.0, 0.0, 0.0);
    let mut lat_w = 0.0;
    for r in reports {
        for c in 0..CLASSES.min(r.n.len()).min(r.us.len()) {
            s.class_n[c] += r.n[c];
            s.class_us[c] += r.us[c];
        }
        s.dropped += r.dropped;
        for p in 0..4 {
            s.gate.admitted[p] += r.admitted[p];
            s.gate.waiting[p] += r.waiting[p];
        }
        s.gate.shed += r.shed;
        s.gate.pressed += r.pressed;
        s.gate.peak_inflight += r.peak;
        s.inflight += r.inflight;
        s.samples += r.samples;
        // Window figures weighted by each instance's samples.
        let w = r.samples as f64;
        if w > 0.0 {
            s.p50_ms += w * r.p50;
            s.p90_ms += w * r.p90;
            s.p99_ms += w * r.p99;
            lat_w += w;
        }
        if let Some(h) = r.hit {
            hit_sum += w.max(1.0) * h;
            hit_w += w.max(1.0);
        }
        if let Some(e) = r.err {
            err_sum += w.max(1.0) * e;
            err_w += w.max(1.0);
        }
    }
    if lat_w > 0.0 {
        s.p50_ms /= lat_w;
        s.p90_ms /= lat_w;
        s.p99_ms /= lat_w;
    }
    s.hit_ratio = (hit_w > 0.0).then(|| hit_sum / hit_w);
    s.error_rate = (err_w > 0.0).then(|| err_sum / err_w);
    s.gate.limit = limit;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_adds_ticks_and_keeps_what_came_in_while_it_was_sent() {
        let mut s = SignalSnapshot::default();
        s.class_n[2] = 5;
        s.class_us[2] = 5000;
        s.gate.admitted[3] = 4;
        s.gate.peak_inflight = 3;
        let mut r = ClusterReport::default();
        r.add(&s, 4);
        let sent = r.clone();
        r.add(&s, 4);
        r.subtract(&sent);
        assert_eq!((r.n[2], r.us[2], r.admitted[3]), (5, 5000, 4));
        assert_eq!(r.share, 4);
        let text = serde_json::to_string(&r).unwrap_or_default();
        assert_eq!(serde_json::from_str::<ClusterReport>(&text).ok(), Some(r));
    }

    #[test]
    fn the_aggregate_sums_counters_and_weights_latency_by_samples() {
        let a = ClusterReport {
            n: vec![10; CLASSES],
            us: vec![1000; CLASSES],
            samples: 300,
            p99: 10.0,
            inflight: 4,
            waiting: [1, 0, 0, 2],
            hit: Some(0.9),
            ..Default::default()
        };
        let b = ClusterReport {
            samples: 100,
            p99: 50.0,
            inflight: 3,
            waiting: [0, 0, 0, 5],
            hit: Some(0.5),
            ..Default::default()
        };
        let s = aggregate(&[&a, &b], 8);
        assert_eq!(s.inflight, 7);
        assert_eq!(s.gate.waiting, [1, 0, 0, 7]);
        assert_eq!(s.class_n[0], 10);
        assert!((s.p99_ms - 20.0).abs() < 1e-9);
        assert!((s.hit_ratio.unwrap_or(0.0) - 0.8).abs() < 1e-9);
        assert_eq!(s.gate.limit, 8);
        assert_eq!(s.error_rate, None);
    }
}
