//! Configuration: the TOML file model, validation into a typed [`Config`], and loading with
//! errors that name the file, line and key.

pub mod diff;
pub mod error;
pub mod file;
pub mod load;
pub mod locate;
pub mod parse;
pub mod summary;
pub mod tokens;
pub mod validate;

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;
use http::StatusCode;

use crate::admission::classify::{ClientKey, Route};
use crate::admission::{ControlParams, FeatureState, GatePolicy, Priority};

pub use error::ConfigError;
pub use load::{load_file, load_str};
pub use summary::{plan, settings_json, summary, summary_json};

/// How an endpoint is picked for each request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Balance {
    /// Two random endpoints, the one with fewer requests in flight.
    LeastInflight,
    RoundRobin,
}

/// Admin bearer tokens as (name, secret); never printed.
#[derive(Clone, Default)]
pub struct Tokens(pub Vec<(String, String)>);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|(n, _)| n.as_str()).collect();
        write!(f, "Tokens({names:?}, secrets redacted)")
    }
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Decide and record, but admit everything.
    pub shadow: bool,
    pub server: ServerConfig,
    /// The backends, in file order (at least one; a file with `[upstream]` has one, `default`).
    pub clusters: Vec<ClusterConfig>,
    /// Problems that do not stop the file from loading (logged at load and reload).
    pub warnings: Vec<String>,
    pub admin_listen: Option<SocketAddr>,
    /// Bearer tokens for the admin API: a file and/or an environment variable, read at load
    /// and at every reload.
    pub admin_token_file: Option<std::path::PathBuf>,
    pub admin_token_env: Option<String>,
    pub admin_tokens: Tokens,
    /// The audit log file, if any.
    pub admin_audit_log: Option<std::path::PathBuf>,
    /// Watch the config file and reload on a change that then stays put for this long.
    pub reload_watch: Option<Duration>,
    /// TLS on the client listener (certificates read at load and at every reload).
    pub tls: Option<crate::tls::TlsServer>,
    pub log: LogConfig,
    /// The controller's tick, one for every cluster.
    pub tick: Duration,
    pub reject: RejectConfig,
    pub client_table_size: usize,
    pub features: Vec<FeatureConfig>,
    pub routes: Vec<Route>,
    pub default_feature: usize,
    pub client_key: ClientKey,
    /// Signed return tickets on rejects, if configured.
    pub ticket: Option<TicketConfig>,
    /// The fleet this instance is part of, if any.
    pub fleet: Option<FleetConfig>,
}

/// `[ticket]`: the key ring (the first signs), how long a ticket holds, the cookie.
#[derive(Clone)]
pub struct TicketConfig {
    pub keys: Vec<(String, String)>,
    pub ttl: Duration,
    /// The cookie's name, when tickets are also set as a cookie.
    pub cookie: Option<String>,
    /// Keys the client hash.
    pub client_secret: String,
}

impl std::fmt::Debug for TicketConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("TicketConfig")
            .field("keys", &ids)
            .field("ttl", &self.ttl)
            .field("cookie", &self.cookie)
            .finish_non_exhaustive()
    }
}

/// `[fleet]`: the store and this instance's place in the fleet.
#[derive(Clone)]
pub struct FleetConfig {
    pub store: redis::ConnectionInfo,
    /// The address as written (no password), for status and logs.
    pub store_text: String,
    pub name: String,
    pub instance: String,
    pub sync: Duration,
    pub lease: Duration,
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetConfig")
            .field("store", &self.store_text)
            .field("name", &self.name)
            .field("instance", &self.instance)
            .field("sync", &self.sync)
            .field("lease", &self.lease)
            .finish()
    }
}

/// Client-facing listener settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Runtime worker threads; `None` = one per CPU.
    pub workers: Option<usize>,
    /// Bounds reading a request head once its first byte has arrived (then `408`), and a
    /// TLS handshake.
    pub client_header_timeout: Duration,
    /// How long a keep-alive connection may sit idle between requests (closed quietly).
    pub keepalive_timeout: Duration,
    /// How long a request body may go without a byte from the client (then `408`).
    pub client_body_timeout: Duration,
    /// The longest request head (request line and headers), in bytes (then `431`).
    pub max_header_bytes: usize,
    /// The most header fields in a request head (then `431`).
    pub max_headers: usize,
    /// Open client connections at most; at the cap the listener stops accepting until one closes.
    pub max_connections: usize,
    /// Peers whose `X-Forwarded-*` headers are believed; everyone else's are replaced.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// A WebSocket tunnel with no byte either way for this long is closed.
    pub websocket_idle_timeout: Duration,
    /// How long in-flight requests may run after SIGTERM.
    pub drain_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    /// A client that accepts no response bytes for this long is disconnected.
    pub send_timeout: Duration,
    /// A client that accepts no response bytes for this long no longer holds an admission slot
    /// (the response keeps streaming, outside the limit).
    pub stall_release: Duration,
    /// Cleartext HTTP/1.1 clients are served by warmgate's own HTTP/1.1 path (`h1`); false:
    /// by hyper's server, like TLS and HTTP/2 clients.
    pub own_http1: bool,
}

/// One backend service: its endpoints and its own admission (limit, line, signals, ramp).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub name: String,
    pub upstream: UpstreamConfig,
    pub signals: SignalsConfig,
    pub control: ControlParams,
    /// The gate's policy: the file's `[gate]` and `[retry]`, this cluster's longest waits.
    pub gate: GatePolicy,
    pub queue: QueueConfig,
}

impl Config {
    /// The cluster a file with `[upstream]` has, and the one the unscoped admin routes steer.
    pub fn first_cluster(&self) -> &ClusterConfig {
        &self.clusters[0]
    }
}

/// A cluster's endpoints and how warmgate talks to them.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub endpoints: Vec<Authority>,
    pub balance: Balance,
    /// Speak HTTP/2 without TLS (prior knowledge) to the upstream.
    pub h2c: bool,
    pub connect_timeout: Duration,
    pub response_header_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_endpoint: usize,
    pub eject_after_failures: u32,
    pub eject_cooldown: Duration,
    pub preserve_host: bool,
    /// An upstream that sends no response body bytes for this long is cut off.
    pub body_idle_timeout: Duration,
    /// New connections a second to all endpoints together; requests wait for one (or for a
    /// pooled connection that frees up first).
    pub connect_rate: std::num::NonZeroU32,
    /// TLS to the endpoints (CA bundle and name), if configured.
    pub tls: Option<crate::tls::TlsUpstream>,
    /// Endpoints given by name are resolved again this often.
    pub dns_refresh: Duration,
}

/// Logging.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub json: bool,
    pub level: String,
    /// The access log: `stderr` or a file path; `None` for off.
    pub access: Option<String>,
}

/// Which response header carries the cache result.
#[derive(Debug, Clone)]
pub struct SignalsConfig {
    /// Seconds of history the controller looks at.
    pub window: Duration,
    /// A backend stats endpoint to read the hit ratio from.
    pub scrape: Option<ScrapeConfig>,
    pub cache_header: HeaderName,
    pub hit_values: Vec<HeaderValue>,
    pub miss_values: Vec<HeaderValue>,
}

/// Where to read a hit ratio from, and how.
#[derive(Debug, Clone)]
pub struct ScrapeConfig {
    pub url: http::Uri,
    pub interval: Duration,
    pub format: ScrapeFormat,
}

/// How the stats document gives the hit ratio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScrapeFormat {
    /// A JSON pointer (RFC 6901) into a JSON document.
    JsonPointer(String),
    /// A Prometheus text-format metric name (first sample wins).
    Prometheus(String),
}

/// The wait line's bounds (the longest wait per priority is in [`GatePolicy`]).
#[derive(Debug, Clone, Copy)]
pub struct QueueConfig {
    pub max_len: u32,
    /// Early returners held (before their reject) at once, at most.
    pub max_held: u32,
}

/// How a reject is written.
#[derive(Debug, Clone)]
pub struct RejectConfig {
    pub shed_status: StatusCode,
    /// A client header that marks retries (e.g. `X-Retry-Attempt`).
    pub retry_header: Option<HeaderName>,
    /// Send the IETF `RateLimit-Policy` / `RateLimit` headers.
    pub ratelimit_headers: bool,
}

/// A `[[feature]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureConfig {
    pub name: String,
    pub priority: Priority,
    pub state: FeatureState,
    /// Index into [`Config::clusters`].
    pub cluster: usize,
}
