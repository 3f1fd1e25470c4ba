//! The TOML file model: what an operator writes. Every table rejects unknown keys; every key is
//! optional unless validation says otherwise, and `validate.rs` turns this into [`super::Config`].

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    /// `enforce` (default) or `shadow` (decide and record, admit everything).
    pub mode: Option<String>,
    #[serde(default)]
    pub server: FileServer,
    #[serde(default)]
    pub upstream: FileUpstream,
    #[serde(default)]
    pub admin: FileAdmin,
    /// TLS on the client listener; absent for cleartext.
    pub tls: Option<FileTls>,
    #[serde(default)]
    pub log: FileLog,
    #[serde(default)]
    pub reload: FileReload,
    #[serde(default)]
    pub signals: FileSignals,
    #[serde(default)]
    pub ramp: FileRamp,
    #[serde(default)]
    pub limit: FileLimit,
    #[serde(default)]
    pub gate: FileGate,
    #[serde(default)]
    pub queue: FileQueue,
    #[serde(default)]
    pub retry: FileRetry,
    #[serde(default)]
    pub client_key: FileClientKey,
    /// Signed return tickets on rejects (absent: none).
    pub ticket: Option<FileTicket>,
    /// Instances that act as one through a shared store (absent: this instance alone).
    pub fleet: Option<FileFleet>,
    pub default_feature: Option<String>,
    /// Named backends, each with its own admission (absent: `[upstream]` is one, `default`).
    #[serde(default)]
    pub cluster: Vec<FileCluster>,
    #[serde(default)]
    pub feature: Vec<FileFeature>,
    #[serde(default)]
    pub route: Vec<FileRoute>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileServer {
    pub workers: Option<usize>,
    pub client_header_timeout: Option<String>,
    pub drain_timeout: Option<String>,
    pub h2_max_concurrent_streams: Option<u32>,
    pub send_timeout: Option<String>,
    /// A client that stops reading a response frees its admission slot after this long.
    pub stall_release: Option<String>,
    pub keepalive_timeout: Option<String>,
    pub client_body_timeout: Option<String>,
    pub max_header_bytes: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_connections: Option<usize>,
    /// CIDRs (or single addresses) of proxies in front of warmgate.
    pub trusted_proxies: Option<Vec<String>>,
    pub websocket_idle_timeout: Option<String>,
    /// Which HTTP/1.1 server the client side runs: `warmgate` (its own) or `hyper`.
    pub http1: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    pub endpoints: Option<Vec<String>>,
    pub balance: Option<String>,
    pub protocol: Option<String>,
    pub connect_timeout: Option<String>,
    pub response_header_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_endpoint: Option<usize>,
    pub eject_after_failures: Option<u32>,
    pub eject_cooldown: Option<String>,
    pub preserve_host: Option<bool>,
    pub body_idle_timeout: Option<String>,
    /// New upstream connections a second, at most (all endpoints together).
    pub connect_rate: Option<u32>,
    /// How often endpoints given by name are resolved again.
    pub dns_refresh: Option<String>,
    /// TLS to the endpoints.
    pub tls: Option<FileUpstreamTls>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstreamTls {
    /// CA bundle (PEM) the backends' certificates must chain to.
    pub ca: String,
    /// Name sent as SNI and checked in the certificate (default: each endpoint's host).
    pub server_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// Certificate chains and keys (PEM); the first is served when no name matches.
    #[serde(default)]
    pub certificates: Vec<FileCert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCert {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub listen: Option<String>,
    /// A file of `name:secret` lines: bearer tokens for admin writes.
    pub token_file: Option<String>,
    /// An environment variable holding one bearer token.
    pub token_env: Option<String>,
    /// Append every admin write as a JSON line to this file.
    pub audit_log: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReload {
    /// Reload when the file changes (besides SIGHUP and the admin API).
    pub watch: Option<bool>,
    /// How long the file must stay unchanged before a watched change is reloaded.
    pub debounce: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    pub format: Option<String>,
    pub level: Option<String>,
    /// `off` (default), `stderr`, or a file to append JSON lines to.
    pub access: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSignals {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_hit_values: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_miss_values: Option<Vec<String>>,
    /// `allow` or `block`: what an unknown hit ratio does to a hit-ratio gate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown_hit_ratio: Option<String>,
    /// Also read the hit ratio from a backend stats endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrape: Option<FileScrape>,
    /// Upstream responses the window needs before a guard rail can call the backend critical.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_p99: Option<FileThresholds<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<FileThresholds<f64>>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileScrape {
    pub url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// JSON pointer to the ratio in a JSON document, e.g. `/hit_ratio`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_pointer: Option<String>,
    /// Or the name of a Prometheus metric holding it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prometheus_metric: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileThresholds<T> {
    pub warn: T,
    pub critical: T,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileRamp {
    /// `auto` (default), `on_start` or `manual`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_engage_after: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_engage_hit_ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tick: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_fraction: Option<f64>,
    /// `linear`, `exponential` or `points`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub curve: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub points: Option<Vec<[f64; 2]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backoff_factor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub progress_floor: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stages: Option<FilePriorityMap>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hit_ratio_gate: Vec<FileHitGate>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilePriorityMap {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub critical: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normal: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low: Option<f64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileDurationMap {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub critical: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub normal: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileHitGate {
    pub progress: f64,
    pub min_hit_ratio: f64,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimit {
    /// `adaptive` (default) or `fixed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_capacity: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_rps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// Latency above the no-load latency taken as noise (0.15 = 15 %).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
    /// No completion for this long: restart from `initial`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_restart: Option<String>,
    /// Latency differences below this are noise, not queueing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_floor: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGate {
    pub session_grace: Option<String>,
    /// The share of the limit one client key may hold at once.
    pub per_client_share: Option<f64>,
    /// Requests a second one client key may send (a token bucket; off when absent).
    pub per_client_rate: Option<f64>,
    /// Requests one client key may send at once after a quiet spell (default: one second's).
    pub per_client_burst: Option<f64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileQueue {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_len: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_wait: Option<FileDurationMap>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_held: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRetry {
    pub shed_status: Option<u16>,
    pub min_retry_after: Option<String>,
    pub max_retry_after: Option<String>,
    pub jitter_window: Option<String>,
    pub jitter_spread: Option<f64>,
    pub client_table_size: Option<usize>,
    pub retry_header: Option<String>,
    pub ratelimit_headers: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileClientKey {
    pub header: Option<String>,
    pub cookie: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTicket {
    /// A file of `id secret` lines: the first key signs, every key verifies.
    pub keys_file: Option<String>,
    /// An environment variable holding `id=secret` entries, comma separated.
    pub keys_env: Option<String>,
    /// How long a ticket is good for.
    pub ttl: Option<String>,
    /// Also set the ticket as a cookie (and read it back from one).
    pub cookie: Option<bool>,
    pub cookie_name: Option<String>,
    /// Keys the client hash (so every instance hashes a client alike); default: the first key.
    pub client_secret_file: Option<String>,
    pub client_secret_env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFleet {
    /// `redis://host:port/db` or `rediss://…`.
    pub store: Option<String>,
    /// Separates several fleets on one store.
    pub name: Option<String>,
    /// This instance's name (default: host name and process id).
    pub instance: Option<String>,
    /// How often this instance reports and reads the fleet (default: the controller tick).
    pub sync: Option<String>,
    /// How long a share of the fleet limit holds without renewal.
    pub lease: Option<String>,
    pub password_file: Option<String>,
    pub password_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileFeature {
    pub name: String,
    pub priority: String,
    /// `auto` (default), `on` or `off`.
    pub state: Option<String>,
    /// The `[[cluster]]` it is sent to (default: the first).
    pub cluster: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRoute {
    pub feature: String,
    pub host: Option<String>,
    pub method: Option<String>,
    pub path_prefix: Option<String>,
    pub path_regex: Option<String>,
    pub header: Option<String>,
    pub header_value: Option<String>,
}

/// A `[[cluster]]`: a name, everything `[upstream]` takes, and its own admission tables, each
/// laid over the file's top-level table of that name. The upstream keys are written out again
/// rather than `#[serde(flatten)]`ed: a flattened table accepts unknown keys and loses their
/// lines (a test holds this).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCluster {
    pub name: String,
    pub endpoints: Option<Vec<String>>,
    pub balance: Option<String>,
    pub protocol: Option<String>,
    pub connect_timeout: Option<String>,
    pub response_header_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub pool_max_idle_per_endpoint: Option<usize>,
    pub eject_after_failures: Option<u32>,
    pub eject_cooldown: Option<String>,
    pub preserve_host: Option<bool>,
    pub body_idle_timeout: Option<String>,
    pub connect_rate: Option<u32>,
    pub dns_refresh: Option<String>,
    pub tls: Option<FileUpstreamTls>,
    pub signals: Option<FileSignals>,
    pub ramp: Option<FileRamp>,
    pub limit: Option<FileLimit>,
    pub queue: Option<FileQueue>,
}

impl FileCluster {
    /// Its endpoints and connection settings, as an `[upstream]` would give them.
    pub fn upstream(&self) -> FileUpstream {
        FileUpstream {
            endpoints: self.endpoints.clone(),
            balance: self.balance.clone(),
            protocol: self.protocol.clone(),
            connect_timeout: self.connect_timeout.clone(),
            response_header_timeout: self.response_header_timeout.clone(),
            pool_idle_timeout: self.pool_idle_timeout.clone(),
            pool_max_idle_per_endpoint: self.pool_max_idle_per_endpoint,
            eject_after_failures: self.eject_after_failures,
            eject_cooldown: self.eject_cooldown.clone(),
            preserve_host: self.preserve_host,
            body_idle_timeout: self.body_idle_timeout.clone(),
            connect_rate: self.connect_rate,
            dns_refresh: self.dns_refresh.clone(),
            tls: self.tls.clone(),
        }
    }
}

/// `own` laid over `top`, key by key (nested tables too): what a cluster's table inherits.
pub fn inherit<T>(top: &T, own: Option<&T>) -> Result<T, String>
where
    T: Serialize + serde::de::DeserializeOwned,
{
    fn merge(base: &mut toml::Value, over: toml::Value) {
        match (base, over) {
            (toml::Value::Table(b), toml::Value::Table(o)) => {
                for (k, v) in o {
                    match b.get_mut(&k) {
                        Some(slot) => merge(slot, v),
                        None => {
                            b.insert(k, v);
                        }
                    }
                }
            }
            (slot, v) => *slot = v,
        }
    }
    let mut base = toml::Value::try_from(top).map_err(|e| e.to_string())?;
    if let Some(own) = own {
        merge(
            &mut base,
            toml::Value::try_from(own).map_err(|e| e.to_string())?,
        );
    }
    base.try_into().map_err(|e: toml::de::Error| e.to_string())
}
