//! The clusters: `[[cluster]]` tables, or the one `default` cluster of a file with `[upstream]`.
//! A cluster's `[cluster.signals]`, `[cluster.ramp]`, `[cluster.limit]` and `[cluster.queue]`
//! are laid over the file's top-level tables key by key, so it states only what differs.

use std::collections::HashSet;

use super::admission::{admission, Sections};
use super::upstream::upstream;
use super::Errors;
use crate::admission::GatePolicy;
use crate::config::file::{inherit, FileConfig, FileUpstream};
use crate::config::ClusterConfig;

/// The name of the one cluster a file with `[upstream]` has.
pub const DEFAULT_CLUSTER: &str = "default";

/// Validates every cluster; `gate` is the file's gate policy, which each cluster's longest
/// waits complete. Keys are named `upstream.…` and `limit.…` for the default cluster and
/// `cluster[i].…` for a `[[cluster]]`.
pub(super) fn clusters(
    e: &mut Errors,
    f: &FileConfig,
    base: &std::path::Path,
    gate: &GatePolicy,
) -> Vec<ClusterConfig> {
    let top = Sections {
        signals: &f.signals,
        ramp: &f.ramp,
        limit: &f.limit,
        queue: &f.queue,
    };
    if f.cluster.is_empty() {
        return one(
            e,
            DEFAULT_CLUSTER,
            "upstream.",
            "",
            &f.upstream,
            top,
            base,
            gate,
        )
        .into_iter()
        .collect();
    }
    if has_upstream(&f.upstream) {
        e.push(
            "upstream",
            "a file with [[cluster]] tables gives each cluster its endpoints: move [upstream]'s keys into a [[cluster]]",
        );
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, c) in f.cluster.iter().enumerate() {
        let at = format!("cluster[{i}].");
        if !valid_name(&c.name) {
            e.push(
                format!("{at}name"),
                format!("{:?} must be non-empty letters, digits, '_' or '-'", c.name),
            );
        }
        if !seen.insert(c.name.as_str()) {
            e.push(
                format!("{at}name"),
                format!("two clusters are named {:?}", c.name),
            );
        }
        if c.ramp.as_ref().is_some_and(|r| r.tick.is_some()) {
            e.push(
                format!("{at}ramp.tick"),
                "the controller's tick is one for the process: set it in the top-level [ramp]",
            );
        }
        let merged = (
            inherit(&f.signals, c.signals.as_ref()),
            inherit(&f.ramp, c.ramp.as_ref()),
            inherit(&f.limit, c.limit.as_ref()),
            inherit(&f.queue, c.queue.as_ref()),
        );
        let (Ok(signals), Ok(ramp), Ok(limit), Ok(queue)) = merged else {
            e.push(
                format!("{at}name"),
                "its tables could not be laid over the file's top-level ones",
            );
            continue;
        };
        let sections = Sections {
            signals: &signals,
            ramp: &ramp,
            limit: &limit,
            queue: &queue,
        };
        out.extend(one(
            e,
            &c.name,
            &at,
            &at,
            &c.upstream(),
            sections,
            base,
            gate,
        ));
    }
    out
}

/// One cluster, its upstream keys prefixed with `upstream_at` and its admission keys with
/// `admission_at`.
#[allow(clippy::too_many_arguments)]
fn one(
    e: &mut Errors,
    name: &str,
    upstream_at: &str,
    admission_at: &str,
    u: &FileUpstream,
    sections: Sections<'_>,
    base: &std::path::Path,
    gate: &GatePolicy,
) -> Option<ClusterConfig> {
    e.prefix = upstream_at.to_string();
    let up = upstream(e, u, base);
    e.prefix = admission_at.to_string();
    let a = admission(e, sections);
    e.prefix.clear();
    Some(ClusterConfig {
        name: name.to_string(),
        upstream: up?,
        signals: a.signals,
        control: a.control,
        queue: a.queue,
        gate: GatePolicy {
            max_wait_ms: a.max_wait_ms,
            ..*gate
        },
    })
}

/// Whether `[upstream]` sets anything.
fn has_upstream(u: &FileUpstream) -> bool {
    let FileUpstream {
        endpoints,
        balance,
        protocol,
        connect_timeout,
        response_header_timeout,
        pool_idle_timeout,
        pool_max_idle_per_endpoint,
        eject_after_failures,
        eject_cooldown,
        preserve_host,
        body_idle_timeout,
        connect_rate,
        tls,
    } = u;
    endpoints.is_some()
        || balance.is_some()
        || protocol.is_some()
        || connect_timeout.is_some()
        || response_header_timeout.is_some()
        || pool_idle_timeout.is_some()
        || pool_max_idle_per_endpoint.is_some()
        || eject_after_failures.is_some()
        || eject_cooldown.is_some()
        || preserve_host.is_some()
        || body_idle_timeout.is_some()
        || connect_rate.is_some()
        || tls.is_some()
}

/// Letters, digits, `_` and `-`: safe in a URL path and a metric label.
pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
