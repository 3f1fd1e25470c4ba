//! The effective config in words (`check-config`), as JSON (`check-config --json`, the
//! admin API, the reload diff), and the admission plan for the startup log.

use std::time::Duration;

use serde_json::json;

use super::{Balance, ClusterConfig, Config};

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
    let sv = &c.server;
    let _ = writeln!(
        s,
        "client timeouts  keep-alive {:?}, body {:?}, send {:?} (slot freed after {:?}), websocket idle {:?}, header {:?}, drain {:?}",
        sv.keepalive_timeout,
        sv.client_body_timeout,
        sv.send_timeout,
        sv.stall_release,
        sv.websocket_idle_timeout,
        sv.client_header_timeout,
        sv.drain_timeout
    );
    let trusted: Vec<String> = sv.trusted_proxies.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        s,
        "budgets          head {} bytes, {} headers, {} connections, {} h2 streams, {:.0} % of the limit per client; HTTP/1.1 served by {}",
        sv.max_header_bytes,
        sv.max_headers,
        sv.max_connections,
        sv.h2_max_concurrent_streams,
        c.first_cluster().gate.per_client_share * 100.0,
        if sv.own_http1 { "warmgate" } else { "hyper" }
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
    for cc in &c.clusters {
        cluster_summary(&mut s, c, cc);
    }
    for f in &c.features {
        let routes = c
            .routes
            .iter()
            .filter(|r| c.features[r.feature].name == f.name)
            .count();
        let _ = writeln!(
            s,
            "feature          {:<12} {:<8} {:<4} {} route(s), cluster {}",
            f.name,
            f.priority.as_str(),
            f.state.as_str(),
            routes,
            c.clusters[f.cluster].name
        );
    }
    for w in &c.warnings {
        let _ = writeln!(s, "warning          {w}");
    }
    s
}

/// One cluster's lines of the summary.
fn cluster_summary(s: &mut String, c: &Config, cc: &ClusterConfig) {
    use std::fmt::Write;
    let _ = writeln!(s, "cluster          {}", cc.name);
    let eps: Vec<&str> = cc.upstream.endpoints.iter().map(|e| e.as_str()).collect();
    let _ = writeln!(
        s,
        "  upstream       {}  ({}, {}{})",
        eps.join(", "),
        match cc.upstream.balance {
            Balance::LeastInflight => "least_inflight",
            Balance::RoundRobin => "round_robin",
        },
        if cc.upstream.h2c { "h2c" } else { "http1" },
        match &cc.upstream.tls {
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
        "  timeouts       connect {:?}, response header {:?}, upstream body idle {:?}, {} new connections/s",
        cc.upstream.connect_timeout,
        cc.upstream.response_header_timeout,
        cc.upstream.body_idle_timeout,
        cc.upstream.connect_rate,
    );
    let p = &cc.control;
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
        "  limit          {limit}{}",
        p.max_rps
            .map_or(String::new(), |r| format!(", max {r} req/s"))
    );
    let _ = writeln!(
        s,
        "  ramp           engage {}; {} over {}s from {:.0} %, tick {:?}",
        p.engage.as_str(),
        p.curve.name(),
        p.ramp_duration_s,
        p.start_fraction * 100.0,
        c.tick
    );
    let w = cc.gate.max_wait_ms;
    let _ = writeln!(
        s,
        "  queue          up to {} waiting; longest wait critical {} ms, high {} ms, normal {} ms, low {} ms",
        cc.queue.max_len, w[3], w[2], w[1], w[0]
    );
    let _ = writeln!(
        s,
        "  stages         critical {}, high {}, normal {}, low {}",
        p.stages[3], p.stages[2], p.stages[1], p.stages[0]
    );
    let _ = writeln!(
        s,
        "  signals        p99 warn {} ms / critical {} ms, errors warn {} / critical {}",
        p.latency_p99_ms.warn, p.latency_p99_ms.critical, p.error_rate.warn, p.error_rate.critical
    );
}

/// The effective settings as JSON, for scripts (`check-config --json` and `/api/v1/config`):
/// [`settings_json`], the file's path, and the first cluster's `upstream`, `limit`, `ramp` and
/// `queue` at the top level (where a file with one `[upstream]` has them).
pub fn summary_json(c: &Config, path: &std::path::Path) -> serde_json::Value {
    let mut v = settings_json(c);
    if let Some(o) = v.as_object_mut() {
        o.insert("config".into(), json!(path.display().to_string()));
        let first = cluster_json(c.first_cluster());
        for k in ["upstream", "limit", "ramp", "queue"] {
            if let Some(x) = first.get(k) {
                o.insert(k.into(), x.clone());
            }
        }
    }
    v
}

/// Every effective setting a reload can change, each once, clusters keyed by name: what a
/// reload compares to say what it changed.
pub fn settings_json(c: &Config) -> serde_json::Value {
    let secs = |d: Duration| d.as_secs_f64();
    json!({
        "listen": c.listen.to_string(),
        "mode": if c.shadow { "shadow" } else { "enforce" },
        "admin": c.admin_listen.map(|a| a.to_string()),
        "tls": c.tls.as_ref().map(|t| t.files.iter().zip(&t.names).map(|(f, n)| json!({
            "cert": f.cert.display().to_string(), "key": f.key.display().to_string(), "names": n,
        })).collect::<Vec<_>>()),
        "server": {
            "client_header_timeout_s": secs(c.server.client_header_timeout),
            "keepalive_timeout_s": secs(c.server.keepalive_timeout),
            "client_body_timeout_s": secs(c.server.client_body_timeout),
            "send_timeout_s": secs(c.server.send_timeout),
            "stall_release_s": secs(c.server.stall_release),
            "http1": if c.server.own_http1 { "warmgate" } else { "hyper" },
            "drain_timeout_s": secs(c.server.drain_timeout),
            "websocket_idle_timeout_s": secs(c.server.websocket_idle_timeout),
            "max_header_bytes": c.server.max_header_bytes,
            "max_headers": c.server.max_headers,
            "max_connections": c.server.max_connections,
            "h2_max_concurrent_streams": c.server.h2_max_concurrent_streams,
            "trusted_proxies": c.server.trusted_proxies.iter().map(ToString::to_string).collect::<Vec<_>>(),
        },
        "tick_s": secs(c.tick),
        // Key ids only: secrets never leave the process.
        "ticket": c.ticket.as_ref().map(|t| json!({
            "key_ids": t.keys.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            "ttl_s": secs(t.ttl),
            "cookie": t.cookie,
        })),
        "fleet": c.fleet.as_ref().map(|f| json!({
            "store": f.store_text, "name": f.name, "instance": f.instance,
            "sync_s": secs(f.sync), "lease_s": secs(f.lease),
        })),
        "per_client_share": c.first_cluster().gate.per_client_share,
        "retry": {
            "min_retry_after_s": c.first_cluster().gate.retry.min_s,
            "max_retry_after_s": c.first_cluster().gate.retry.max_s,
            "jitter_window_s": c.first_cluster().gate.retry.jitter_s,
            "jitter_spread": c.first_cluster().gate.retry.spread,
            "session_grace_ms": c.first_cluster().gate.session_grace_ms,
            "shed_status": c.reject.shed_status.as_u16(),
            "retry_header": c.reject.retry_header.as_ref().map(|h| h.as_str()),
            "ratelimit_headers": c.reject.ratelimit_headers,
        },
        "clusters": c.clusters.iter().map(|cc| (cc.name.clone(), cluster_json(cc))).collect::<serde_json::Map<_, _>>(),
        "features": c.features.iter().map(|f| json!({
            "name": f.name, "priority": f.priority.as_str(), "state": f.state.as_str(),
            "cluster": c.clusters[f.cluster].name,
            "routes": c.routes.iter().filter(|r| c.features[r.feature].name == f.name).count(),
        })).collect::<Vec<_>>(),
        "routes": c.routes.iter().map(|r| json!({
            "feature": c.features[r.feature].name,
            "host": r.host, "method": r.method.as_ref().map(|m| m.as_str()),
            "path_prefix": r.path_prefix, "path_regex": r.path_regex.as_ref().map(|x| x.as_str()),
            "header": r.header.as_ref().map(|h| h.as_str()),
            "header_value": r.header_value.as_ref().and_then(|h| h.to_str().ok()),
        })).collect::<Vec<_>>(),
        "default_feature": c.features.get(c.default_feature).map(|f| f.name.as_str()),
    })
}

/// One cluster's effective settings.
fn cluster_json(cc: &ClusterConfig) -> serde_json::Value {
    let secs = |d: Duration| d.as_secs_f64();
    let p = &cc.control;
    let limit = match p.limit {
        crate::admission::params::LimitMode::Fixed { full_capacity } => {
            json!({ "mode": "fixed", "full_capacity": full_capacity, "max_rps": p.max_rps })
        }
        crate::admission::params::LimitMode::Adaptive(k) => json!({
            "mode": "adaptive", "initial": k.initial, "min": k.min, "max": k.max,
            "tolerance": k.tolerance, "idle_restart_ms": k.idle_restart_ms,
            "latency_floor_ms": k.latency_floor_ms, "max_rps": p.max_rps,
        }),
    };
    let by_priority =
        |v: [f64; 4]| json!({ "critical": v[3], "high": v[2], "normal": v[1], "low": v[0] });
    let w = cc.gate.max_wait_ms;
    let u = &cc.upstream;
    let sig = &cc.signals;
    json!({
        "upstream": {
            "endpoints": u.endpoints.iter().map(|e| e.as_str()).collect::<Vec<_>>(),
            "balance": match u.balance {
                Balance::LeastInflight => "least_inflight",
                Balance::RoundRobin => "round_robin",
            },
            "protocol": if u.h2c { "h2c" } else { "http1" },
            "tls": u.tls.as_ref().map(|t| json!({
                "ca": t.ca.display().to_string(),
                "server_name": t.server_name.as_ref().map(|n| n.to_str().into_owned()),
            })),
            "connect_timeout_s": secs(u.connect_timeout),
            "response_header_timeout_s": secs(u.response_header_timeout),
            "body_idle_timeout_s": secs(u.body_idle_timeout),
            "pool_idle_timeout_s": secs(u.pool_idle_timeout),
            "pool_max_idle_per_endpoint": u.pool_max_idle_per_endpoint,
            "eject_after_failures": u.eject_after_failures,
            "eject_cooldown_s": secs(u.eject_cooldown),
            "preserve_host": u.preserve_host,
            "connect_rate": u.connect_rate.get(),
        },
        "limit": limit,
        "ramp": {
            "engage": p.engage.as_str(), "curve": p.curve.name(),
            "points": match &p.curve {
                crate::admission::curve::Curve::Points(pts) => Some(pts.clone()),
                _ => None,
            },
            "duration_s": p.ramp_duration_s, "start_fraction": p.start_fraction,
            "backoff_factor": p.backoff_factor, "progress_floor": p.progress_floor,
            "auto_engage_after_s": p.auto_engage_after_s,
            "auto_engage_hit_ratio": p.auto_engage_hit_ratio,
            "stages": by_priority(p.stages),
            "hit_ratio_gates": p.hit_gates.iter().map(|g| json!({
                "progress": g.progress, "min_hit_ratio": g.min_hit_ratio,
            })).collect::<Vec<_>>(),
        },
        "queue": {
            "max_len": cc.queue.max_len,
            "max_held": cc.queue.max_held,
            "max_wait_ms": { "critical": w[3], "high": w[2], "normal": w[1], "low": w[0] },
        },
        "signals": {
            "window_s": secs(sig.window),
            "cache_header": sig.cache_header.as_str(),
            "min_samples": p.min_samples,
            "unknown_hit_ratio": if p.unknown_hit_ratio_allows { "allow" } else { "block" },
            "latency_p99_ms": { "warn": p.latency_p99_ms.warn, "critical": p.latency_p99_ms.critical },
            "error_rate": { "warn": p.error_rate.warn, "critical": p.error_rate.critical },
            "scrape": sig.scrape.as_ref().map(|s| s.url.to_string()),
        },
    })
}

/// The admission plan in a sentence, for the startup log line.
pub fn plan(c: &Config) -> String {
    let clusters: Vec<String> = c
        .clusters
        .iter()
        .map(|cc| {
            if c.clusters.len() == 1 {
                cluster_plan(cc)
            } else {
                format!("cluster {}: {}", cc.name, cluster_plan(cc))
            }
        })
        .collect();
    format!(
        "{}; {}",
        if c.shadow {
            "shadow mode: every decision is recorded, every request admitted"
        } else {
            "enforce mode"
        },
        clusters.join("; ")
    )
}

/// One cluster's admission plan.
fn cluster_plan(cc: &ClusterConfig) -> String {
    use crate::admission::params::{Engage, LimitMode};
    let p = &cc.control;
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
        "{limit}; {engage}; once engaged, priorities open {} (at the ramp's nominal pace)",
        stages.join(", ")
    )
}
