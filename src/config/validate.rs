//! Validation: the file model into a typed [`Config`], collecting every problem with its key.

use std::collections::HashSet;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{Method, StatusCode};
use regex::Regex;

use super::error::{bad, KeyError};
use super::file::{FileConfig, FileDurationMap, FilePriorityMap, FileThresholds};
use super::parse::{
    cidr, duration, duration_or, fraction, header_name, header_value, host_port, listen_addr,
};
use super::*;
use crate::admission::classify::{ClientKey, Route};
use crate::admission::curve::Curve;
use crate::admission::limit::KneeParams;
use crate::admission::params::{Engage, HitGate, LimitMode, Thresholds};
use crate::admission::{ControlParams, FeatureState, GatePolicy, Priority, RetryPolicy};

/// Collects errors while building; `take` keeps the value or records the error.
#[derive(Default)]
struct Errors(Vec<KeyError>);

impl Errors {
    fn take<T>(&mut self, r: Result<T, KeyError>) -> Option<T> {
        r.map_err(|e| self.0.push(e)).ok()
    }
    fn push(&mut self, key: impl Into<String>, msg: impl Into<String>) {
        self.0.push(bad(key, msg));
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
    let d = ControlParams::default();

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

    let upstream = upstream(&mut e, &f, base);
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
            crate::admin::api::load_tokens(admin_token_file.as_deref(), admin_token_env.as_deref())
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

    let sig = &f.signals;
    let header = |e: &mut Errors, key: &str, v: &str| e.take(header_name(key, v));
    let values =
        |e: &mut Errors, key: &str, vs: &Option<Vec<String>>, default: &str| -> Vec<HeaderValue> {
            let list = vs.clone().unwrap_or_else(|| vec![default.to_string()]);
            list.iter()
                .enumerate()
                .filter_map(|(i, v)| e.take(header_value(&format!("{key}[{i}]"), v)))
                .collect()
        };
    let window = e
        .take(duration_or(
            "signals.window",
            &sig.window,
            Duration::from_secs(5),
        ))
        .unwrap_or_default();
    if window < Duration::from_secs(1) || window > Duration::from_secs(15) {
        e.push("signals.window", "must be between 1s and 15s");
    }
    let scrape = sig.scrape.as_ref().and_then(|sc| {
        let url = e.take(
            sc.url
                .parse::<http::Uri>()
                .ok()
                .filter(|u| u.scheme_str() == Some("http") && u.authority().is_some())
                .ok_or_else(|| {
                    bad(
                        "signals.scrape.url",
                        format!("{:?} is not an http://host:port/path URL", sc.url),
                    )
                }),
        )?;
        let interval = e.positive(
            "signals.scrape.interval",
            &sc.interval,
            Duration::from_secs(1),
        );
        let format = match (&sc.json_pointer, &sc.prometheus_metric) {
            (Some(p), None) if p.starts_with('/') => ScrapeFormat::JsonPointer(p.clone()),
            (Some(p), None) => {
                e.push(
                    "signals.scrape.json_pointer",
                    format!("{p:?} must start with '/' (e.g. \"/hit_ratio\")"),
                );
                return None;
            }
            (None, Some(m)) => ScrapeFormat::Prometheus(m.clone()),
            _ => {
                e.push(
                    "signals.scrape",
                    "set exactly one of json_pointer or prometheus_metric",
                );
                return None;
            }
        };
        Some(ScrapeConfig {
            url,
            interval,
            format,
        })
    });
    let signals = SignalsConfig {
        window,
        scrape,
        cache_header: header(
            &mut e,
            "signals.cache_header",
            sig.cache_header.as_deref().unwrap_or("x-cache"),
        )
        .unwrap_or(HeaderName::from_static("x-cache")),
        hit_values: values(
            &mut e,
            "signals.cache_hit_values",
            &sig.cache_hit_values,
            "HIT",
        ),
        miss_values: values(
            &mut e,
            "signals.cache_miss_values",
            &sig.cache_miss_values,
            "MISS",
        ),
    };
    let unknown_hit_ratio_allows = match sig.unknown_hit_ratio.as_deref().unwrap_or("allow") {
        "allow" => true,
        "block" => false,
        other => {
            e.push(
                "signals.unknown_hit_ratio",
                format!("{other:?} must be allow or block"),
            );
            true
        }
    };
    let latency = sig.latency_p99.as_ref().and_then(|t| {
        let w = e.take(duration("signals.latency_p99.warn", &t.warn))?;
        let c = e.take(duration("signals.latency_p99.critical", &t.critical))?;
        Some(Thresholds {
            warn: w.as_secs_f64() * 1000.0,
            critical: c.as_secs_f64() * 1000.0,
        })
    });
    let latency_p99_ms =
        ordered(&mut e, "signals.latency_p99", latency).unwrap_or(d.latency_p99_ms);
    let error_rate = sig
        .error_rate
        .as_ref()
        .map(|t: &FileThresholds<f64>| Thresholds {
            warn: t.warn,
            critical: t.critical,
        });
    if let Some(t) = error_rate {
        e.take(fraction("signals.error_rate.warn", t.warn));
        e.take(fraction("signals.error_rate.critical", t.critical));
    }
    let error_rate = ordered(&mut e, "signals.error_rate", error_rate).unwrap_or(d.error_rate);

    let r = &f.ramp;
    let tick = e
        .take(duration_or(
            "ramp.tick",
            &r.tick,
            Duration::from_millis(100),
        ))
        .unwrap_or_default();
    if tick < Duration::from_millis(10) || tick > Duration::from_secs(1) {
        e.push("ramp.tick", "must be between 10ms and 1s");
    }
    let ramp_duration_s = e
        .take(duration_or(
            "ramp.duration",
            &r.duration,
            Duration::from_secs_f64(d.ramp_duration_s),
        ))
        .map_or(d.ramp_duration_s, |x| x.as_secs_f64());
    let start_fraction = r.start_fraction.map_or(d.start_fraction, |v| {
        e.take(fraction("ramp.start_fraction", v)).unwrap_or(v)
    });
    if start_fraction <= 0.0 {
        e.push("ramp.start_fraction", "must be above 0.0");
    }
    let curve = curve(&mut e, r.curve.as_deref(), &r.points);
    let backoff_factor = r.backoff_factor.unwrap_or(d.backoff_factor);
    if !(backoff_factor > 0.0 && backoff_factor <= 1.0) {
        e.push(
            "ramp.backoff_factor",
            format!("{backoff_factor} must be in (0.0, 1.0]"),
        );
    }
    let progress_floor = r.progress_floor.map_or(0.0, |v| {
        e.take(fraction("ramp.progress_floor", v)).unwrap_or(0.0)
    });
    let stages = per_priority(&mut e, "ramp.stages", &r.stages, d.stages);
    for w in Priority::ALL.windows(2) {
        if stages[w[0].index()] < stages[w[1].index()] {
            e.push(
                format!("ramp.stages.{}", w[0]),
                format!(
                    "{} is admitted before {} (stage {} < {})",
                    w[0],
                    w[1],
                    stages[w[0].index()],
                    stages[w[1].index()]
                ),
            );
        }
    }
    let engage = match r.engage.as_deref().unwrap_or("auto") {
        "auto" => Engage::Auto,
        "on_start" => Engage::OnStart,
        "manual" => Engage::Manual,
        other => {
            e.push(
                "ramp.engage",
                format!("{other:?} is not an engage mode (auto, on_start or manual)"),
            );
            Engage::Auto
        }
    };
    let auto_engage_after_s = e
        .positive(
            "ramp.auto_engage_after",
            &r.auto_engage_after,
            Duration::from_secs_f64(d.auto_engage_after_s),
        )
        .as_secs_f64();
    let auto_engage_hit_ratio = r
        .auto_engage_hit_ratio
        .map_or(d.auto_engage_hit_ratio, |v| {
            e.take(fraction("ramp.auto_engage_hit_ratio", v))
                .unwrap_or(v)
        });
    let hit_gates = r
        .hit_ratio_gate
        .iter()
        .enumerate()
        .map(|(i, g)| {
            e.take(fraction(
                &format!("ramp.hit_ratio_gate[{i}].progress"),
                g.progress,
            ));
            e.take(fraction(
                &format!("ramp.hit_ratio_gate[{i}].min_hit_ratio"),
                g.min_hit_ratio,
            ));
            HitGate {
                progress: g.progress,
                min_hit_ratio: g.min_hit_ratio,
            }
        })
        .collect();

    let limit = limit_mode(&mut e, &f);
    let min_samples = sig.min_samples.unwrap_or(d.min_samples);
    if min_samples == 0 {
        e.push("signals.min_samples", "must be at least 1");
    }
    let control = ControlParams {
        engage,
        auto_engage_after_s,
        auto_engage_hit_ratio,
        min_samples,
        ramp_duration_s,
        start_fraction,
        curve,
        backoff_factor,
        progress_floor,
        stages,
        hit_gates,
        unknown_hit_ratio_allows,
        latency_p99_ms,
        error_rate,
        limit,
        max_rps: f.limit.max_rps,
        paused: false,
    };
    if f.limit.max_rps == Some(0) {
        e.push(
            "limit.max_rps",
            "must be above 0 (leave it out for no rate limit)",
        );
    }

    let rt = &f.retry;
    let min_s = e
        .take(duration_or(
            "retry.min_retry_after",
            &rt.min_retry_after,
            Duration::from_secs(1),
        ))
        .unwrap_or_default();
    let max_s = e
        .take(duration_or(
            "retry.max_retry_after",
            &rt.max_retry_after,
            Duration::from_secs(120),
        ))
        .unwrap_or_default();
    if min_s > max_s {
        e.push("retry.min_retry_after", "is above retry.max_retry_after");
    }
    let spread = rt.jitter_spread.unwrap_or(0.5);
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
                Duration::from_secs(2),
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
                Duration::from_secs(30),
            ))
            .unwrap_or_default()
            .as_millis() as u64,
        grace_min_priority: Priority::High,
        max_wait_ms: max_waits(&mut e, &f.queue.max_wait),
        per_client_share: g.per_client_share.unwrap_or(0.5),
    };
    if !(gate.per_client_share > 0.0 && gate.per_client_share <= 1.0) {
        e.push(
            "gate.per_client_share",
            "must be above 0 and at most 1 (1: a client may hold the whole limit)",
        );
    }
    let queue = QueueConfig {
        max_len: f.queue.max_len.unwrap_or(8192),
        max_held: f.queue.max_held.unwrap_or(4096),
    };
    if queue.max_len == 0 {
        e.push(
            "queue.max_len",
            "must be at least 1 (set queue.max_wait to \"0s\" to reject at once instead)",
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
            .and_then(|h| header(&mut e, "retry.retry_header", h)),
        ratelimit_headers: rt.ratelimit_headers.unwrap_or(false),
    };
    let client_table_size = rt.client_table_size.unwrap_or(1 << 16);
    if !(1..=1 << 26).contains(&client_table_size) {
        e.push("retry.client_table_size", "must be between 1 and 67108864");
    }

    let (features, default_feature) = features(&mut e, &f);
    let routes = routes(&mut e, &f, &features);
    let client_key = match (&f.client_key.header, &f.client_key.cookie) {
        (Some(_), Some(_)) => {
            e.push("client_key", "set header or cookie, not both");
            ClientKey::Address
        }
        (Some(h), None) => {
            header(&mut e, "client_key.header", h).map_or(ClientKey::Address, ClientKey::Header)
        }
        (None, Some(c)) => ClientKey::Cookie(c.clone()),
        (None, None) => ClientKey::Address,
    };

    match (listen, upstream) {
        (Some(listen), Some(upstream)) if e.0.is_empty() => Ok(Config {
            listen,
            shadow,
            server,
            upstream,
            admin_listen,
            admin_token_file,
            admin_token_env,
            admin_tokens,
            admin_audit_log,
            reload_watch,
            tls,
            log,
            signals,
            tick,
            control,
            gate,
            queue,
            reject,
            client_table_size,
            features,
            routes,
            default_feature,
            client_key,
        }),
        _ => Err(e.0),
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

fn ordered(e: &mut Errors, key: &str, t: Option<Thresholds>) -> Option<Thresholds> {
    let t = t?;
    if t.warn >= t.critical {
        e.push(
            format!("{key}.warn"),
            format!("warn ({}) must be below critical ({})", t.warn, t.critical),
        );
    }
    Some(t)
}

fn upstream(e: &mut Errors, f: &FileConfig, base: &std::path::Path) -> Option<UpstreamConfig> {
    let u = &f.upstream;
    let Some(raw) = u.endpoints.clone() else {
        e.push(
            "upstream.endpoints",
            "is required: the backend's host:port list, e.g. endpoints = [\"127.0.0.1:9000\"]",
        );
        return None;
    };
    if raw.is_empty() {
        e.push(
            "upstream.endpoints",
            "is empty: list at least one host:port",
        );
    }
    let endpoints: Vec<_> = raw
        .iter()
        .enumerate()
        .filter_map(|(i, s)| e.take(host_port(&format!("upstream.endpoints[{i}]"), s)))
        .collect();
    let balance = match u.balance.as_deref().unwrap_or("least_inflight") {
        "least_inflight" => Balance::LeastInflight,
        "round_robin" => Balance::RoundRobin,
        other => {
            e.push(
                "upstream.balance",
                format!("{other:?} is not a balance (least_inflight or round_robin)"),
            );
            Balance::LeastInflight
        }
    };
    let h2c = match u.protocol.as_deref().unwrap_or("http1") {
        "http1" => false,
        "h2c" => true,
        other => {
            e.push(
                "upstream.protocol",
                format!("{other:?} is not a protocol (http1 or h2c)"),
            );
            false
        }
    };
    let cfg = UpstreamConfig {
        endpoints,
        balance,
        h2c,
        connect_timeout: e.positive(
            "upstream.connect_timeout",
            &u.connect_timeout,
            Duration::from_secs(2),
        ),
        response_header_timeout: e.positive(
            "upstream.response_header_timeout",
            &u.response_header_timeout,
            Duration::from_secs(30),
        ),
        body_idle_timeout: e.positive(
            "upstream.body_idle_timeout",
            &u.body_idle_timeout,
            Duration::from_secs(30),
        ),
        pool_idle_timeout: e.positive(
            "upstream.pool_idle_timeout",
            &u.pool_idle_timeout,
            Duration::from_secs(60),
        ),
        pool_max_idle_per_endpoint: u.pool_max_idle_per_endpoint.unwrap_or(512),
        eject_after_failures: u.eject_after_failures.unwrap_or(5),
        eject_cooldown: e.take(duration_or(
            "upstream.eject_cooldown",
            &u.eject_cooldown,
            Duration::from_secs(10),
        ))?,
        preserve_host: u.preserve_host.unwrap_or(true),
        connect_rate: match u.connect_rate.unwrap_or(256) {
            0 => {
                e.push(
                    "upstream.connect_rate",
                    "must be at least 1 new connection a second",
                );
                std::num::NonZeroU32::MIN
            }
            n => std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN),
        },
        tls: u.tls.as_ref().and_then(|t| {
            e.take(crate::tls::upstream::load(
                &base.join(&t.ca),
                t.server_name.as_deref(),
                h2c,
                "upstream.tls",
            ))
        }),
    };
    (!cfg.endpoints.is_empty() && cfg.endpoints.len() == raw.len()).then_some(cfg)
}

fn curve(e: &mut Errors, name: Option<&str>, points: &Option<Vec<[f64; 2]>>) -> Curve {
    match (
        name.unwrap_or(if points.is_some() { "points" } else { "linear" }),
        points,
    ) {
        ("linear", None) => Curve::Linear,
        ("exponential", None) => Curve::Exponential,
        ("points", Some(ps)) => {
            let pts: Vec<(f64, f64)> = ps.iter().map(|[x, y]| (*x, *y)).collect();
            for (i, (x, y)) in pts.iter().enumerate() {
                if !(0.0..=1.0).contains(x) || !(0.0..=1.0).contains(y) {
                    e.push(
                        format!("ramp.points[{i}]"),
                        "progress and fraction must be between 0.0 and 1.0",
                    );
                }
            }
            if pts.windows(2).any(|w| w[1].0 <= w[0].0) || pts.is_empty() {
                e.push(
                    "ramp.points",
                    "must be non-empty and sorted by strictly increasing progress",
                );
            }
            Curve::Points(pts)
        }
        ("points", None) => {
            e.push(
                "ramp.curve",
                "curve = \"points\" needs ramp.points = [[progress, fraction], ...]",
            );
            Curve::Linear
        }
        (c @ ("linear" | "exponential"), Some(_)) => {
            e.push(
                "ramp.points",
                format!("points are only used with curve = \"points\", not {c:?}"),
            );
            Curve::Linear
        }
        (other, _) => {
            e.push(
                "ramp.curve",
                format!("{other:?} is not a curve (linear, exponential or points)"),
            );
            Curve::Linear
        }
    }
}

fn per_priority(
    e: &mut Errors,
    key: &str,
    m: &Option<FilePriorityMap>,
    default: [f64; 4],
) -> [f64; 4] {
    let mut out = default;
    if let Some(m) = m {
        for (p, v) in [
            (Priority::Critical, m.critical),
            (Priority::High, m.high),
            (Priority::Normal, m.normal),
            (Priority::Low, m.low),
        ] {
            if let Some(v) = v {
                out[p.index()] = e.take(fraction(&format!("{key}.{p}"), v)).unwrap_or(v);
            }
        }
    }
    out
}

fn max_waits(e: &mut Errors, m: &Option<FileDurationMap>) -> [u64; 4] {
    let mut out = GatePolicy::default().max_wait_ms;
    if let Some(m) = m {
        for (p, v) in [
            (Priority::Critical, &m.critical),
            (Priority::High, &m.high),
            (Priority::Normal, &m.normal),
            (Priority::Low, &m.low),
        ] {
            if v.is_some() {
                let key = format!("queue.max_wait.{p}");
                if let Some(d) = e.take(duration_or(&key, v, Duration::ZERO)) {
                    if d > Duration::from_secs(300) {
                        e.push(
                            key,
                            "must be at most 300s (keep it below clients' timeouts)",
                        );
                    }
                    out[p.index()] = d.as_millis() as u64;
                }
            }
        }
    }
    out
}

fn limit_mode(e: &mut Errors, f: &FileConfig) -> LimitMode {
    let l = &f.limit;
    match l.mode.as_deref().unwrap_or("adaptive") {
        "fixed" => match l.full_capacity {
            Some(c) if c > 0 => LimitMode::Fixed { full_capacity: c },
            _ => {
                e.push(
                    "limit.full_capacity",
                    "mode = \"fixed\" needs full_capacity above 0",
                );
                LimitMode::Fixed { full_capacity: 1 }
            }
        },
        "adaptive" => {
            let dk = KneeParams::default();
            let (min, max) = (l.min.unwrap_or(dk.min), l.max.unwrap_or(dk.max));
            let initial = l.initial.unwrap_or(dk.initial.clamp(min, max.max(min)));
            if min == 0 || min > max {
                e.push(
                    "limit.min",
                    format!("min ({min}) must be at least 1 and at most max ({max})"),
                );
            } else if !(min..=max).contains(&initial) {
                e.push(
                    "limit.initial",
                    format!("{initial} must be between min ({min}) and max ({max})"),
                );
            }
            if l.full_capacity.is_some() {
                e.push(
                    "limit.full_capacity",
                    "is only used with mode = \"fixed\"; adaptive uses initial, min, max",
                );
            }
            let tolerance = l.tolerance.unwrap_or(dk.tolerance);
            if !(0.01..=2.0).contains(&tolerance) {
                e.push(
                    "limit.tolerance",
                    format!("{tolerance} must be between 0.01 and 2.0"),
                );
            }
            let idle_restart_ms = e
                .positive(
                    "limit.idle_restart",
                    &l.idle_restart,
                    Duration::from_millis(dk.idle_restart_ms),
                )
                .as_millis() as u64;
            let latency_floor_ms = e
                .take(duration_or(
                    "limit.latency_floor",
                    &l.latency_floor,
                    Duration::from_secs_f64(dk.latency_floor_ms / 1000.0),
                ))
                .map_or(dk.latency_floor_ms, |d| d.as_secs_f64() * 1000.0);
            LimitMode::Adaptive(KneeParams {
                initial,
                min,
                max,
                tolerance,
                idle_restart_ms,
                latency_floor_ms,
                ..dk
            })
        }
        other => {
            e.push(
                "limit.mode",
                format!("{other:?} is not a limit mode (adaptive or fixed)"),
            );
            LimitMode::Fixed { full_capacity: 1 }
        }
    }
}

fn features(e: &mut Errors, f: &FileConfig) -> (Vec<FeatureConfig>, usize) {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, ft) in f.feature.iter().enumerate() {
        let key = format!("feature[{i}]");
        if ft.name.is_empty()
            || !ft
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            e.push(
                format!("{key}.name"),
                format!(
                    "{:?} must be non-empty letters, digits, '_' or '-'",
                    ft.name
                ),
            );
        }
        if !seen.insert(ft.name.clone()) {
            e.push(
                format!("{key}.name"),
                format!("duplicate feature {:?}", ft.name),
            );
        }
        let priority = Priority::parse(&ft.priority).unwrap_or_else(|| {
            e.push(
                format!("{key}.priority"),
                format!(
                    "{:?} is not a priority (critical, high, normal or low)",
                    ft.priority
                ),
            );
            Priority::Normal
        });
        let state =
            FeatureState::parse(ft.state.as_deref().unwrap_or("auto")).unwrap_or_else(|| {
                e.push(
                    format!("{key}.state"),
                    format!("{:?} is not a feature state (auto, on or off)", ft.state),
                );
                FeatureState::Auto
            });
        out.push(FeatureConfig {
            name: ft.name.clone(),
            priority,
            state,
        });
    }
    let default_name = f
        .default_feature
        .clone()
        .unwrap_or_else(|| "default".into());
    let default = match out.iter().position(|x| x.name == default_name) {
        Some(i) => i,
        None if f.default_feature.is_some() => {
            e.push(
                "default_feature",
                format!("{default_name:?} is not a [[feature]]"),
            );
            0
        }
        None => {
            out.push(FeatureConfig {
                name: default_name,
                priority: Priority::Normal,
                state: FeatureState::Auto,
            });
            out.len() - 1
        }
    };
    (out, default)
}

fn routes(e: &mut Errors, f: &FileConfig, features: &[FeatureConfig]) -> Vec<Route> {
    let mut out = Vec::new();
    for (i, r) in f.route.iter().enumerate() {
        let key = format!("route[{i}]");
        let Some(feature) = features.iter().position(|x| x.name == r.feature) else {
            e.push(
                format!("{key}.feature"),
                format!("{:?} is not a [[feature]]", r.feature),
            );
            continue;
        };
        let method = r.method.as_deref().and_then(|m| {
            e.take(
                Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    bad(
                        format!("{key}.method"),
                        format!("{m:?} is not an HTTP method"),
                    )
                }),
            )
        });
        let path_regex = r.path_regex.as_deref().and_then(|re| {
            e.take(Regex::new(re).map_err(|err| {
                bad(
                    format!("{key}.path_regex"),
                    format!(
                        "invalid regex: {}",
                        err.to_string().lines().last().unwrap_or("")
                    ),
                )
            }))
        });
        if let Some(p) = &r.path_prefix {
            if !p.starts_with('/') {
                e.push(
                    format!("{key}.path_prefix"),
                    format!("{p:?} must start with '/'"),
                );
            }
        }
        let header = r
            .header
            .as_deref()
            .and_then(|h| e.take(header_name(&format!("{key}.header"), h)));
        let header_value = r
            .header_value
            .as_deref()
            .and_then(|v| e.take(header_value(&format!("{key}.header_value"), v)));
        if header_value.is_some() && r.header.is_none() {
            e.push(format!("{key}.header_value"), "needs header = \"name\"");
        }
        out.push(Route {
            host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
            method,
            path_prefix: r.path_prefix.clone(),
            path_regex,
            header,
            header_value,
            feature,
        });
    }
    out
}
