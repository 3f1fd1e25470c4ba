//! A cluster's endpoints and connection settings (what `[upstream]` takes).

use std::time::Duration;

use super::Errors;
use crate::config::file::FileUpstream;
use crate::config::parse::{duration_or, host_port};
use crate::config::{Balance, UpstreamConfig};

/// Validates a cluster's endpoints and connection settings; keys are relative to the cluster's
/// table (`[upstream]` or a `[[cluster]]`), whose prefix the caller set on `e`.
pub(super) fn upstream(
    e: &mut Errors,
    u: &FileUpstream,
    base: &std::path::Path,
) -> Option<UpstreamConfig> {
    let Some(raw) = u.endpoints.clone() else {
        e.push(
            "endpoints",
            "is required: the backend's host:port list, e.g. endpoints = [\"127.0.0.1:9000\"]",
        );
        return None;
    };
    if raw.is_empty() {
        e.push("endpoints", "is empty: list at least one host:port");
    }
    let endpoints: Vec<_> = raw
        .iter()
        .enumerate()
        .filter_map(|(i, s)| e.take(host_port(&format!("endpoints[{i}]"), s)))
        .collect();
    let balance = match u.balance.as_deref().unwrap_or("least_inflight") {
        "least_inflight" => Balance::LeastInflight,
        "round_robin" => Balance::RoundRobin,
        other => {
            e.push(
                "balance",
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
                "protocol",
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
            "connect_timeout",
            &u.connect_timeout,
            Duration::from_secs(2),
        ),
        response_header_timeout: e.positive(
            "response_header_timeout",
            &u.response_header_timeout,
            Duration::from_secs(30),
        ),
        body_idle_timeout: e.positive(
            "body_idle_timeout",
            &u.body_idle_timeout,
            Duration::from_secs(30),
        ),
        pool_idle_timeout: e.positive(
            "pool_idle_timeout",
            &u.pool_idle_timeout,
            Duration::from_secs(60),
        ),
        pool_max_idle_per_endpoint: u.pool_max_idle_per_endpoint.unwrap_or(512),
        eject_after_failures: u.eject_after_failures.unwrap_or(5),
        eject_cooldown: e.take(duration_or(
            "eject_cooldown",
            &u.eject_cooldown,
            Duration::from_secs(10),
        ))?,
        preserve_host: u.preserve_host.unwrap_or(true),
        connect_rate: match u.connect_rate.unwrap_or(256) {
            0 => {
                e.push("connect_rate", "must be at least 1 new connection a second");
                std::num::NonZeroU32::MIN
            }
            n => std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN),
        },
        dns_refresh: e.positive("dns_refresh", &u.dns_refresh, Duration::from_secs(5)),
        tls: u.tls.as_ref().and_then(|t| {
            e.take(crate::tls::upstream::load(
                &base.join(&t.ca),
                t.server_name.as_deref(),
                h2c,
                "tls",
            ))
        }),
    };
    (!cfg.endpoints.is_empty() && cfg.endpoints.len() == raw.len()).then_some(cfg)
}
