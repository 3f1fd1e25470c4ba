//! The status document's one schema: produced by `/status` (and `/api/v1/status`), read by
//! `warmgate ctl`, the drill tool and, as JSON, the dashboard. Every reader deserialises these
//! types, so a field renamed here is renamed for all of them; fields added later default when an
//! older warmgate leaves them out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The schema's version, bumped when a field changes meaning or goes away.
pub const STATUS_SCHEMA: u32 = 1;

/// `GET /status`: the first cluster's state at the top level (all a file with one `[upstream]`
/// has), every cluster under `clusters`, the features and the fleet.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub schema: u32,
    /// The operator state's version (`if_version` on writes).
    pub version: u64,
    /// `enforce` or `shadow`.
    pub mode: String,
    pub controller: ControllerStatus,
    pub stages: Stages,
    pub signals: Signals,
    pub overrides: Overrides,
    pub endpoints: Vec<Endpoint>,
    pub dns: BTreeMap<String, Dns>,
    pub features: Vec<Feature>,
    pub clusters: Vec<ClusterStatus>,
    /// This instance's link to its fleet (absent without `[fleet]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Fleet>,
}

impl Status {
    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&ClusterStatus> {
        self.clusters.iter().find(|c| c.name == name)
    }
}

/// One cluster: its controller, stages, signals, endpoints, operator overrides and fleet share.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ClusterStatus {
    pub name: String,
    pub controller: ControllerStatus,
    pub stages: Stages,
    pub signals: Signals,
    pub overrides: Overrides,
    pub endpoints: Vec<Endpoint>,
    pub dns: BTreeMap<String, Dns>,
    /// Its place in the fleet (absent when it steers alone without `[fleet]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetShare>,
}

/// The controller's state and settings in force.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ControllerStatus {
    /// `open`, `advancing`, `holding`, `backing_off` or `paused`.
    pub state: String,
    /// `healthy`, `warn` or `critical`.
    pub health: String,
    /// How the ramp engages: `on_start`, `auto` or `manual`.
    pub engage: String,
    pub engaged: bool,
    #[serde(deserialize_with = "lenient")]
    pub progress: f64,
    pub paused: bool,
    /// Requests in flight admitted now.
    pub limit: u32,
    /// What the curve allows at this progress.
    pub limit_ceiling: u32,
    pub slow_start: bool,
    /// A baseline check holds the limit at a quarter for a moment, to see the backend's
    /// no-load latency under a storm that never lets up.
    pub baseline_check: bool,
    pub latency_inflation: Option<f64>,
    #[serde(deserialize_with = "lenient")]
    pub latency_inflation_smoothed: f64,
    /// The knee-finding algorithm's own limit (before the curve and pins).
    pub limit_algorithm: u32,
    pub baseline_ms: Option<f64>,
    /// `adaptive` or `fixed`.
    pub limit_mode: String,
    pub rps_limit: Option<u32>,
    pub curve: String,
    /// The curve as (progress, fraction of the full limit) points, for drawing it.
    pub curve_points: Vec<[f64; 2]>,
    /// A curve of points as written (`None` for linear and exponential).
    pub points: Option<Vec<[f64; 2]>>,
    #[serde(deserialize_with = "lenient")]
    pub start_fraction: f64,
    #[serde(deserialize_with = "lenient")]
    pub ramp_duration_s: f64,
}

/// Each priority's stage.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Stages {
    pub critical: Stage,
    pub high: Stage,
    pub normal: Stage,
    pub low: Stage,
}

impl Stages {
    /// The stage of a priority by name.
    pub fn get(&self, priority: &str) -> Option<&Stage> {
        Some(match priority {
            "critical" => &self.critical,
            "high" => &self.high,
            "normal" => &self.normal,
            "low" => &self.low,
            _ => return None,
        })
    }
}

/// One priority's stage: whether it is admitted, where it opens, and its line.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Stage {
    pub admitted: bool,
    /// The progress at which it opens.
    #[serde(deserialize_with = "lenient")]
    pub stage: f64,
    /// When it is expected to open (or its turn to come), in seconds.
    #[serde(deserialize_with = "lenient")]
    pub eta_s: f64,
    pub waiting: u32,
    pub max_wait_ms: u64,
    /// How fast its line (and everything above it) is served.
    #[serde(deserialize_with = "lenient")]
    pub drain_rps: f64,
}

/// The backend's signals as the controller read them last.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Signals {
    pub samples: u64,
    #[serde(deserialize_with = "lenient")]
    pub p50_ms: f64,
    #[serde(deserialize_with = "lenient")]
    pub p90_ms: f64,
    #[serde(deserialize_with = "lenient")]
    pub p99_ms: f64,
    pub hit_ratio: Option<f64>,
    pub error_rate: Option<f64>,
    pub inflight: u32,
    pub queued: u32,
    pub held_early_returners: u32,
    pub waiting_clients: usize,
    /// The share of requests that were retries (top level only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_share: Option<f64>,
}

/// A warn / critical pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Band {
    #[serde(deserialize_with = "lenient")]
    pub warn: f64,
    #[serde(deserialize_with = "lenient")]
    pub critical: f64,
}

/// What operators set live, over the file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Overrides {
    pub limit: Option<u32>,
    pub paused: bool,
    pub curve: Option<String>,
    /// Stages by priority index (low, normal, high, critical).
    pub stages: Option<[f64; 4]>,
    pub latency_p99_ms: Option<Band>,
    pub error_rate: Option<Band>,
    /// Feature switches by feature (top level only: switches are not a cluster's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One upstream address.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Endpoint {
    pub address: String,
    pub ip: Option<String>,
    pub inflight: u32,
    pub ejected: bool,
    pub ejections: u64,
}

/// What a name given as an endpoint resolves to.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Dns {
    pub addresses: Vec<String>,
    /// The last resolution's failure (the last good addresses are kept).
    pub error: Option<String>,
}

/// One feature: its switch and its counts.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Feature {
    pub name: String,
    pub cluster: Option<String>,
    pub priority: String,
    /// The state in force: `auto`, `on` or `off`.
    pub state: String,
    /// The file's state.
    pub configured_state: String,
    pub admitted: u64,
    pub shed: u64,
    pub rejected_queue: u64,
    pub rejected_rate: u64,
    pub upstream_error: u64,
    pub shadow_reject: u64,
}

/// This instance's link to its fleet.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Fleet {
    pub name: String,
    pub instance: String,
    pub store: String,
    pub store_up: bool,
    pub last_error: Option<String>,
    pub leader: String,
    pub is_leader: bool,
    pub epoch: Option<u64>,
    pub last_sync_age_ms: Option<u64>,
    pub sync_ms: u64,
    pub lease_ms: u64,
    pub ops_applied: u64,
}

/// A cluster's place in its fleet.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct FleetShare {
    /// `leader`, `follower` or `alone` (the store is out of reach).
    pub role: String,
    /// This instance's share of the fleet's limit.
    pub share: Option<u32>,
    pub fleet_limit: u32,
    pub instances: Vec<InstanceShare>,
}

/// One instance's share.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct InstanceShare {
    pub instance: String,
    pub share: u32,
}

/// A number that JSON could not carry (infinite or not a number is written as `null`) reads
/// back as NaN instead of failing the whole document.
fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_json_cannot_carry_reads_back_as_nan() {
        let mut st = Status::default();
        st.stages.low.eta_s = f64::INFINITY;
        let text = serde_json::to_string(&st).unwrap_or_default();
        let back: Result<Status, _> = serde_json::from_str(&text);
        assert!(back.is_ok_and(|b| b.stages.low.eta_s.is_nan()), "{text}");
    }
}
