//! Configuration: the TOML file model, validation into a typed [`Config`], and loading with
//! errors that name the file, line and key.

pub mod error;
pub mod file;
pub mod load;
pub mod locate;
pub mod parse;
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
    pub upstream: UpstreamConfig,
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
    pub signals: SignalsConfig,
    pub tick: Duration,
    pub control: ControlParams,
    pub gate: GatePolicy,
    pub queue: QueueConfig,
    pub reject: RejectConfig,
    pub client_table_size: usize,
    pub features: Vec<FeatureConfig>,
    pub routes: Vec<Route>,
    pub default_feature: usize,
    pub client_key: ClientKey,
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
    /// A client that accepts no response bytes for this long is disconnected (its slot freed).
    pub send_timeout: Duration,
}

/// The upstream cluster.
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
}

/// A human-readable summary of the effective config (for `check-config`).
pub fn summary(c: &Config) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(s, "config ok");
    let _ = writeln!(
        s,
        "listen           {}  (mode: {})",
        c.listen,
        if c.shadow { "shadow" } else { "enforce" }
    );
    let _ = writeln!(
        s,
        "admin            {}",
        c.admin_listen.map_or("off".to_string(), |a| a.to_string())
    );
    match &c.tls {
        None => {
            let _ = writeln!(s, "tls              off (cleartext HTTP/1.1 and h2c)");
        }
        Some(t) => {
            for (f, names) in t.files.iter().zip(&t.names) {
                let _ = writeln!(
                    s,
                    "tls              {}  (names: {})",
                    f.cert.display(),
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                );
            }
        }
    }
    let eps: Vec<&str> = c.upstream.endpoints.iter().map(|e| e.as_str()).collect();
    let _ = writeln!(
        s,
        "upstream         {}  ({}, {}{})",
        eps.join(", "),
        match c.upstream.balance {
            Balance::LeastInflight => "least_inflight",
            Balance::RoundRobin => "round_robin",
        },
        if c.upstream.h2c { "h2c" } else { "http1" },
        match &c.upstream.tls {
            None => String::new(),
            Some(t) => format!(
                ", TLS trusting {}{}",
                t.ca.display(),
                t.server_name
                    .as_ref()
                    .map(|n| format!(" as {}", n.to_str()))
                    .unwrap_or_default()
            ),
        }
    );
    let _ = writeln!(
        s,
        "timeouts         connect {:?}, response header {:?}, upstream body idle {:?}, client header {:?}, drain {:?}",
        c.upstream.connect_timeout,
        c.upstream.response_header_timeout,
        c.upstream.body_idle_timeout,
        c.server.client_header_timeout,
        c.server.drain_timeout
    );
    let sv = &c.server;
    let _ = writeln!(
        s,
        "client timeouts  keep-alive {:?}, body {:?}, send {:?}, websocket idle {:?}",
        sv.keepalive_timeout, sv.client_body_timeout, sv.send_timeout, sv.websocket_idle_timeout
    );
    let trusted: Vec<String> = sv.trusted_proxies.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        s,
        "budgets          head {} bytes, {} headers, {} connections, {} h2 streams, {} upstream connects/s, {:.0} % of the limit per client",
        sv.max_header_bytes,
        sv.max_headers,
        sv.max_connections,
        sv.h2_max_concurrent_streams,
        c.upstream.connect_rate,
        c.gate.per_client_share * 100.0
    );
    let _ = writeln!(
        s,
        "trusted proxies  {}",
        if trusted.is_empty() {
            "none (X-Forwarded-* from clients are replaced)".to_string()
        } else {
            trusted.join(", ")
        }
    );
    let p = &c.control;
    let limit = match p.limit {
        crate::admission::params::LimitMode::Fixed { full_capacity } => {
            format!("fixed at {full_capacity} in flight")
        }
        crate::admission::params::LimitMode::Adaptive(k) => format!(
            "adaptive: starts at {} in flight (between {} and {}), latency tolerance {:.0} %",
            k.initial,
            k.min,
            k.max,
            k.tolerance * 100.0
        ),
    };
    let _ = writeln!(
        s,
        "limit            {limit}{}",
        p.max_rps
            .map_or(String::new(), |r| format!(", max {r} req/s"))
    );
    let _ = writeln!(
        s,
        "ramp             engage {}; {} over {}s from {:.0} %, tick {:?}",
        p.engage.as_str(),
        p.curve.name(),
        p.ramp_duration_s,
        p.start_fraction * 100.0,
        c.tick
    );
    let w = c.gate.max_wait_ms;
    let _ = writeln!(
        s,
        "queue            up to {} waiting; longest wait critical {} ms, high {} ms, normal {} ms, low {} ms",
        c.queue.max_len, w[3], w[2], w[1], w[0]
    );
    let _ = writeln!(
        s,
        "stages           critical {}, high {}, normal {}, low {}",
        p.stages[3], p.stages[2], p.stages[1], p.stages[0]
    );
    let _ = writeln!(
        s,
        "signals          p99 warn {} ms / critical {} ms, errors warn {} / critical {}",
        p.latency_p99_ms.warn, p.latency_p99_ms.critical, p.error_rate.warn, p.error_rate.critical
    );
    for f in &c.features {
        let routes = c
            .routes
            .iter()
            .filter(|r| c.features[r.feature].name == f.name)
            .count();
        let _ = writeln!(
            s,
            "feature          {:<12} {:<8} {:<4} {} route(s)",
            f.name,
            f.priority.as_str(),
            f.state.as_str(),
            routes
        );
    }
    s
}

/// The effective settings as JSON, for scripts (`check-config --json`).
pub fn summary_json(c: &Config, path: &std::path::Path) -> serde_json::Value {
    use serde_json::json;
    let secs = |d: Duration| d.as_secs_f64();
    let p = &c.control;
    let limit = match p.limit {
        crate::admission::params::LimitMode::Fixed { full_capacity } => {
            json!({ "mode": "fixed", "full_capacity": full_capacity })
        }
        crate::admission::params::LimitMode::Adaptive(k) => json!({
            "mode": "adaptive", "initial": k.initial, "min": k.min, "max": k.max,
            "tolerance": k.tolerance,
        }),
    };
    let w = c.gate.max_wait_ms;
    json!({
        "config": path.display().to_string(),
        "listen": c.listen.to_string(),
        "mode": if c.shadow { "shadow" } else { "enforce" },
        "admin": c.admin_listen.map(|a| a.to_string()),
        "tls": c.tls.as_ref().map(|t| t.files.iter().zip(&t.names).map(|(f, n)| json!({
            "cert": f.cert.display().to_string(), "key": f.key.display().to_string(), "names": n,
        })).collect::<Vec<_>>()),
        "upstream": {
            "endpoints": c.upstream.endpoints.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
            "balance": match c.upstream.balance {
                Balance::LeastInflight => "least_inflight",
                Balance::RoundRobin => "round_robin",
            },
            "protocol": if c.upstream.h2c { "h2c" } else { "http1" },
            "tls": c.upstream.tls.as_ref().map(|t| json!({
                "ca": t.ca.display().to_string(),
                "server_name": t.server_name.as_ref().map(|n| n.to_str().into_owned()),
            })),
            "connect_timeout_s": secs(c.upstream.connect_timeout),
            "response_header_timeout_s": secs(c.upstream.response_header_timeout),
            "body_idle_timeout_s": secs(c.upstream.body_idle_timeout),
            "connect_rate": c.upstream.connect_rate.get(),
        },
        "server": {
            "client_header_timeout_s": secs(c.server.client_header_timeout),
            "keepalive_timeout_s": secs(c.server.keepalive_timeout),
            "client_body_timeout_s": secs(c.server.client_body_timeout),
            "send_timeout_s": secs(c.server.send_timeout),
            "drain_timeout_s": secs(c.server.drain_timeout),
            "websocket_idle_timeout_s": secs(c.server.websocket_idle_timeout),
            "max_header_bytes": c.server.max_header_bytes,
            "max_headers": c.server.max_headers,
            "max_connections": c.server.max_connections,
            "h2_max_concurrent_streams": c.server.h2_max_concurrent_streams,
            "trusted_proxies": c.server.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "limit": limit,
        "ramp": {
            "engage": p.engage.as_str(), "curve": p.curve.name(),
            "duration_s": p.ramp_duration_s, "start_fraction": p.start_fraction,
            "tick_s": secs(c.tick),
        },
        "queue": {
            "max_len": c.queue.max_len,
            "max_wait_ms": { "critical": w[3], "high": w[2], "normal": w[1], "low": w[0] },
        },
        "per_client_share": c.gate.per_client_share,
        "features": c.features.iter().map(|f| json!({
            "name": f.name, "priority": f.priority.as_str(), "state": f.state.as_str(),
            "routes": c.routes.iter().filter(|r| c.features[r.feature].name == f.name).count(),
        })).collect::<Vec<_>>(),
    })
}

/// The admission plan in a sentence, for the startup log line.
pub fn plan(c: &Config) -> String {
    use crate::admission::params::{Engage, LimitMode};
    let p = &c.control;
    let limit = match p.limit {
        LimitMode::Fixed { full_capacity } => format!("a fixed limit of {full_capacity} in flight"),
        LimitMode::Adaptive(k) => format!(
            "an adaptive limit starting at {} in flight (it finds the backend's knee between {} and {})",
            k.initial, k.min, k.max
        ),
    };
    let engage = match p.engage {
        Engage::OnStart => "the warm-up ramp is engaged from the start".to_string(),
        Engage::Auto => format!(
            "the warm-up ramp engages on its own after {:.0} s of strain (demand pressing on the limit while latency rises or the hit ratio is under {:.2})",
            p.auto_engage_after_s, p.auto_engage_hit_ratio
        ),
        Engage::Manual => "the warm-up ramp engages only when an operator engages it".to_string(),
    };
    let stages: Vec<String> = crate::admission::Priority::ALL
        .iter()
        .rev()
        .map(|pr| {
            let at = p.stages[pr.index()];
            if at <= 0.0 {
                format!("{} at once", pr.as_str())
            } else {
                format!("{} at {:.0} s", pr.as_str(), at * p.ramp_duration_s)
            }
        })
        .collect();
    format!(
        "{}; {limit}; {engage}; once engaged, priorities open {} (at the ramp's nominal pace)",
        if c.shadow {
            "shadow mode: every decision is recorded, every request admitted"
        } else {
            "enforce mode"
        },
        stages.join(", ")
    )
}
