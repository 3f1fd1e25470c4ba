//! The last 15 minutes of each cluster, one point a second, kept in the process so a dashboard
//! opened mid-cutover starts with its charts drawn (`GET /api/v1/history`). Written on the
//! controller tick, read by the admin API; never touched per request.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

use crate::admission::Priority;
use crate::metrics::Outcome;
use crate::runtime::{Cluster, ClusterView, Control, FeatureRt};

/// How many points are kept (15 minutes at one a second).
pub const KEEP: usize = 900;

/// One second of one cluster: what the dashboard draws. Per-priority counts are running
/// totals, differenced by the reader as it does with live status documents.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    pub time_unix_ms: u64,
    pub progress: f64,
    pub engaged: bool,
    pub limit: u32,
    pub inflight: u32,
    /// Admitted so far by priority (critical, high, normal, low).
    pub admitted: [u64; 4],
    /// Refused so far by priority (shed, line, rate).
    pub refused: [u64; 4],
    /// Waiting in line now by priority.
    pub waiting: [u32; 4],
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub baseline_ms: Option<f64>,
    pub hit_ratio: Option<f64>,
}

/// A cluster's points, oldest first.
#[derive(Default)]
pub struct History(Mutex<VecDeque<Point>>);

impl History {
    /// Adds this second's point.
    pub fn push(&self, p: Point) {
        let mut h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if h.len() >= KEEP {
            h.pop_front();
        }
        h.push_back(p);
    }

    /// Every point kept, oldest first.
    pub fn points(&self) -> Vec<Point> {
        let h = self.0.lock().unwrap_or_else(|e| e.into_inner());
        h.iter().cloned().collect()
    }
}

/// The point for `cluster` (index `i` of the snapshot) now: its decision, its controller's last
/// signals, and its features' running totals.
pub fn point(
    i: usize,
    cluster: &Cluster,
    view: &ClusterView,
    control: &Control,
    features: &[FeatureRt],
    time_unix_ms: u64,
) -> Point {
    let d = &view.decision;
    let (mut admitted, mut refused) = ([0u64; 4], [0u64; 4]);
    for f in features.iter().filter(|f| f.cluster == i) {
        // In the order the dashboard draws: critical first.
        let k = 3 - f.priority.index();
        admitted[k] += f.counters.get(Outcome::Admitted);
        refused[k] += f.counters.get(Outcome::Shed)
            + f.counters.get(Outcome::RejectedQueue)
            + f.counters.get(Outcome::RejectedRate);
    }
    let gate = cluster.state.gate;
    let by = gate.waiting_by_priority();
    let s = &control.last_signals;
    Point {
        time_unix_ms,
        progress: d.progress,
        engaged: d.engaged,
        limit: d.limit,
        inflight: gate.inflight(),
        admitted,
        refused,
        waiting: [
            Priority::Critical,
            Priority::High,
            Priority::Normal,
            Priority::Low,
        ]
        .map(|p| by[p.index()]),
        p50_ms: s.p50_ms,
        p99_ms: s.p99_ms,
        baseline_ms: control.controller.baseline_ms(),
        hit_ratio: s.hit_ratio,
    }
}
