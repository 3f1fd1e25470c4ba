//! Validation: the file model into a typed [`Config`], collecting every problem with its key.

mod admission;
mod clusters;
mod features;
mod fleet;
mod upstream;

use std::time::Duration;

use http::StatusCode;

use super::error::{bad, KeyError};
use super::file::FileConfig;
use super::parse::{cidr, duration_or, header_name, listen_addr};
use super::*;
use crate::admission::classify::ClientKey;
use crate::admission::{GatePolicy, RetryPolicy};
use clusters::clusters;
pub use clusters::DEFAULT_CLUSTER;
use features::{features, routes};

/// Collects errors while building; `take` keeps the value or records the error. Keys are
/// written relative to `prefix` (a cluster's table), which every recorded key gets in front.
#[derive(Default)]
struct Errors {
    errors: Vec<KeyError>,
    prefix: String,
}

impl Errors {
    fn take<T>(&mut self, r: Result<T, KeyError>) -> Option<T> {
        r.map_err(|mut e| {
            e.key.insert_str(0, &self.prefix);
            self.errors.push(e)
        })
        .ok()
    }
    fn push(&mut self, key: impl Into<String>, msg: impl Into<String>) {
        let mut key = key.into();
        key.insert_str(0, &self.prefix);
        self.errors.push(bad(key, msg));
    }
    /// A duration that must be above zero (a "0s" timeout would refuse everything).
    fn positive(&mut self, key: &str, v: &Option<String>, default: Duration) -> Duration {
        let d = self.take(duration_or(key, v, default)).unwrap_or(default);
        if d.is_zero() {
            self.push(key, "must be above 0s");
        }
        d
    }
}

/// Validates the whole file; relative file paths in it (certificates) are taken from `base`,
/// the config file's directory.
pub fn validate(f: FileConfig, base: &std::path::Path) -> Result<Config, Vec<KeyError>> {
    let mut e = Errors::default();

    let listen = e.take(listen_addr(
        "listen",
        f.listen.as_deref().unwrap_or("127.0.0.1:8080"),
    ));
    let shadow = match f.mode.as_deref().unwrap_or("enforce") {
        "enforce" => false,
        "shadow" => true,
        other => {
            e.push(
                "mode",
                format!("{other:?} is not a mode (enforce or shadow)"),
            );
            false
        }
    };

    let s = &f.server;
    if s.workers == Some(0) || s.workers.is_some_and(|w| w > 1024) {
        e.push(
            "server.workers",
            "must be between 1 and 1024 (leave it out for one per CPU)",
        );
    }
    let server = ServerConfig {
        workers: s.workers,
        client_header_timeout: e.positive(
            "server.client_header_timeout",
            &s.client_header_timeout,
            Duration::from_secs(10),
        ),
        drain_timeout: e.positive(
            "server.drain_timeout",
            &s.drain_timeout,
            Duration::from_secs(30),
        ),
        h2_max_concurrent_streams: s.h2_max_concurrent_streams.unwrap_or(256),
        send_timeout: e.positive(
            "server.send_timeout",
            &s.send_timeout,
            Duration::from_secs(15),
        ),
        stall_release: e.positive(
            "server.stall_release",
            &s.stall_release,
            Duration::from_secs(1),
        ),
        keepalive_timeout: e.positive(
            "server.keepalive_timeout",
            &s.keepalive_timeout,
            Duration::from_secs(75),
        ),
        client_body_timeout: e.positive(
            "server.client_body_timeout",
            &s.client_body_timeout,
            Duration::from_secs(60),
        ),
        max_header_bytes: s.max_header_bytes.unwrap_or(64 * 1024),
        max_headers: s.max_headers.unwrap_or(100),
        max_connections: s.max_connections.unwrap_or(20_000),
        trusted_proxies: s
            .trusted_proxies
            .iter()
            .flatten()
            .enumerate()
            .filter_map(|(i, v)| e.take(cidr(&format!("server.trusted_proxies[{i}]"), v)))
            .collect(),
        websocket_idle_timeout: e.positive(
            "server.websocket_idle_timeout",
            &s.websocket_idle_timeout,
            Duration::from_secs(60),
        ),
        own_http1: match s.http1.as_deref().unwrap_or("warmgate") {
            "warmgate" => true,
            "hyper" => false,
            other => {
                e.push(
                    "server.http1",
                    format!("{other:?} is not an HTTP/1.1 server (warmgate or hyper)"),
                );
                true
            }
        },
    };
    if !(8192..=1 << 20).contains(&server.max_header_bytes) {
        e.push(
            "server.max_header_bytes",
            "must be between 8192 and 1048576",
        );
    }
    if !(8..=1000).contains(&server.max_headers) {
        e.push("server.max_headers", "must be between 8 and 1000");
    }
    if server.max_connections == 0 {
        e.push(
            "server.max_connections",
            "must be at least 1 (0 would accept nobody)",
        );
    }
    if server.h2_max_concurrent_streams == 0 {
        e.push(
            "server.h2_max_concurrent_streams",
            "must be at least 1 (0 would refuse every HTTP/2 request)",
        );
    }

    let admin_listen = f
        .admin
        .listen
        .as_deref()
        .and_then(|a| e.take(listen_addr("admin.listen", a)));
    let reload_watch = f.reload.watch.unwrap_or(false).then(|| {
        e.positive(
            "reload.debounce",
            &f.reload.debounce,
            Duration::from_millis(500),
        )
    });
    let admin_token_file = f.admin.token_file.as_ref().map(|p| base.join(p));
    let admin_token_env = f.admin.token_env.clone();
    let admin_audit_log = f.admin.audit_log.as_ref().map(|p| base.join(p));
    let admin_tokens = Tokens(
        e.take(
            super::tokens::load_tokens(admin_token_file.as_deref(), admin_token_env.as_deref())
                .map_err(|(key, msg)| bad(key, msg)),
        )
        .unwrap_or_default(),
    );
    if admin_listen.is_some_and(|a| !a.ip().is_loopback())
        && admin_token_file.is_none()
        && admin_token_env.is_none()
    {
        e.push(
            "admin.listen",
            "an admin listener off loopback needs admin.token_file or admin.token_env (anyone who reaches it could steer the ramp)",
        );
    }
    let tls = f.tls.as_ref().and_then(|t| {
        let files: Vec<_> = t
            .certificates
            .iter()
            .map(|c| crate::tls::CertFiles {
                cert: base.join(&c.cert),
                key: base.join(&c.key),
            })
            .collect();
        e.take(crate::tls::server::load(&files, "tls.certificates"))
    });
    let log = LogConfig {
        access: match f.log.access.as_deref() {
            None | Some("off") => None,
            Some("stderr") => Some("stderr".to_string()),
            Some("") => {
                e.push("log.access", "is empty: \"off\", \"stderr\" or a file path");
                None
            }
            Some(path) => Some(base.join(path).display().to_string()),
        },
        json: match f.log.format.as_deref().unwrap_or("text") {
            "text" => false,
            "json" => true,
            other => {
                e.push(
                    "log.format",
                    format!("{other:?} is not a log format (text or json)"),
                );
                false
            }
        },
        level: {
            let level = f.log.level.clone().unwrap_or_else(|| "info".into());
            if !valid_log_level(&level) {
                e.push(
                    "log.level",
                    format!("{level:?} is not a level (off, error, warn, info, debug, trace, or directives such as \"info,warmgate=debug\")"),
                );
            }
            level
        },
    };

    let tick = e
        .take(duration_or(
            "ramp.tick",
            &f.ramp.tick,
            Duration::from_millis(100),
        ))
        .unwrap_or_default();
    if tick < Duration::from_millis(10) || tick > Duration::from_secs(1) {
        e.push("ramp.tick", "must be between 10ms and 1s");
    }

    let rt = &f.retry;
    let dg = GatePolicy::default();
    let min_s = e
        .take(duration_or(
            "retry.min_retry_after",
            &rt.min_retry_after,
            Duration::from_secs_f64(dg.retry.min_s),
        ))
        .unwrap_or_default();
    let max_s = e
        .take(duration_or(
            "retry.max_retry_after",
            &rt.max_retry_after,
            Duration::from_secs_f64(dg.retry.max_s),
        ))
        .unwrap_or_default();
    if min_s > max_s {
        e.push("retry.min_retry_after", "is above retry.max_retry_after");
    }
    let spread = rt.jitter_spread.unwrap_or(dg.retry.spread);
    if !(0.0..=2.0).contains(&spread) {
        e.push(
            "retry.jitter_spread",
            format!("{spread} must be between 0.0 and 2.0"),
        );
    }
    let retry = RetryPolicy {
        min_s: min_s.as_secs_f64(),
        max_s: max_s.as_secs_f64(),
        jitter_s: e
            .take(duration_or(
                "retry.jitter_window",
                &rt.jitter_window,
                Duration::from_secs_f64(dg.retry.jitter_s),
            ))
            .unwrap_or_default()
            .as_secs_f64(),
        spread,
    };
    let g = &f.gate;
    let gate = GatePolicy {
        retry,
        session_grace_ms: e
            .take(duration_or(
                "gate.session_grace",
                &g.session_grace,
                Duration::from_millis(dg.session_grace_ms),
            ))
            .unwrap_or_default()
            .as_millis() as u64,
        grace_min_priority: dg.grace_min_priority,
        // Each cluster's own, from its [queue].
        max_wait_ms: dg.max_wait_ms,
        per_client_share: g.per_client_share.unwrap_or(dg.per_client_share),
        per_client_rate: match (g.per_client_rate, g.per_client_burst) {
            (None, None) => None,
            (None, Some(_)) => {
                e.push(
                    "gate.per_client_burst",
                    "needs gate.per_client_rate (requests a second per client)",
                );
                None
            }
            (Some(r), burst) => {
                let burst = burst.unwrap_or(r.max(1.0));
                if !(r > 0.0 && r.is_finite()) {
                    e.push(
                        "gate.per_client_rate",
                        format!("{r} must be above 0 requests a second (leave it out for none)"),
                    );
                }
                if !(1.0..=1e9).contains(&burst) {
                    e.push(
                        "gate.per_client_burst",
                        format!("{burst} must be at least 1 request"),
                    );
                }
                Some(crate::admission::budget::Rate { per_s: r, burst })
            }
        },
    };
    if !(gate.per_client_share > 0.0 && gate.per_client_share <= 1.0) {
        e.push(
            "gate.per_client_share",
            "must be above 0 and at most 1 (1: a client may hold the whole limit)",
        );
    }
    let status = |e: &mut Errors, key: &str, v: Option<u16>, default: u16| {
        let code = v.unwrap_or(default);
        match StatusCode::from_u16(code) {
            Ok(s) if s.is_client_error() || s.is_server_error() => s,
            _ => {
                e.push(key, format!("{code} is not a 4xx or 5xx status"));
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    };
    let reject = RejectConfig {
        shed_status: status(&mut e, "retry.shed_status", rt.shed_status, 503),
        retry_header: rt
            .retry_header
            .as_deref()
            .and_then(|h| e.take(header_name("retry.retry_header", h))),
        ratelimit_headers: rt.ratelimit_headers.unwrap_or(false),
    };
    let client_table_size = rt.client_table_size.unwrap_or(1 << 16);
    if !(1..=1 << 26).contains(&client_table_size) {
        e.push("retry.client_table_size", "must be between 1 and 67108864");
    }

    let clusters = clusters(&mut e, &f, base, &gate);
    let names: Vec<String> = clusters.iter().map(|c| c.name.clone()).collect();
    let (features, default_feature) = features(&mut e, &f, &names);
    let routes = routes(&mut e, &f, &features);
    let warnings = names
        .iter()
        .enumerate()
        .filter(|(i, _)| names.len() > 1 && !features.iter().any(|ft| ft.cluster == *i))
        .map(|(i, n)| {
            format!("cluster[{i}] ({n:?}): no feature is sent to it (set cluster = {n:?} on a [[feature]])")
        })
        .collect();
    let client_key = match (&f.client_key.header, &f.client_key.cookie) {
        (Some(_), Some(_)) => {
            e.push("client_key", "set header or cookie, not both");
            ClientKey::Address
        }
        (Some(h), None) => e
            .take(header_name("client_key.header", h))
            .map_or(ClientKey::Address, ClientKey::Header),
        (None, Some(c)) => ClientKey::Cookie(c.clone()),
        (None, None) => ClientKey::Address,
    };

    let ticket = f
        .ticket
        .as_ref()
        .and_then(|t| fleet::ticket(&mut e, t, base));
    let fleet = f
        .fleet
        .as_ref()
        .and_then(|fl| fleet::fleet(&mut e, fl, base, tick));

    match listen {
        Some(listen) if e.errors.is_empty() && !clusters.is_empty() => Ok(Config {
            listen,
            shadow,
            server,
            clusters,
            warnings,
            admin_listen,
            admin_token_file,
            admin_token_env,
            admin_tokens,
            admin_audit_log,
            reload_watch,
            tls,
            log,
            tick,
            reject,
            client_table_size,
            features,
            routes,
            default_feature,
            client_key,
            ticket,
            fleet,
        }),
        _ => Err(e.errors),
    }
}

/// A level name, or comma-separated `target=level` directives whose levels are all valid.
fn valid_log_level(s: &str) -> bool {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    !s.trim().is_empty()
        && s.split(',').all(|d| {
            let level = d.rsplit_once('=').map_or(d, |(_, l)| l).trim();
            LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level))
        })
}
