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
        dns_refresh,
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
        || dns_refresh.is_some()
        || tls.is_some()
}

/// Letters, digits, `_` and `-`: safe in a URL path and a metric label.
pub(super) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::admission::params::LimitMode;
    use crate::config::load_str;

    const TWO: &str = r#"
[limit]
min = 2
max = 64
[queue]
max_wait = { critical = "3s", low = "1s" }
[ramp]
stages = { critical = 0.0, high = 0.2, normal = 0.5, low = 0.8 }

[[cluster]]
name = "auth"
endpoints = ["127.0.0.1:9001"]
[cluster.limit]
max = 8
[cluster.ramp.stages]
low = 0.9

[[cluster]]
name = "feed"
endpoints = ["127.0.0.1:9002"]
protocol = "h2c"

[[feature]]
name = "login"
priority = "critical"
cluster = "auth"

[[feature]]
name = "feed"
priority = "normal"
cluster = "feed"
"#;

    fn errors(text: &str) -> Vec<String> {
        load_str("w.toml", text)
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_cluster_lays_its_tables_over_the_files_key_by_key() {
        let c = load_str("w.toml", TWO).unwrap();
        let names: Vec<&str> = c.clusters.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["auth", "feed"]);
        let (auth, feed) = (&c.clusters[0], &c.clusters[1]);
        let knee = |cc: &crate::config::ClusterConfig| match cc.control.limit {
            LimitMode::Adaptive(k) => (k.min, k.max),
            LimitMode::Fixed { .. } => (0, 0),
        };
        assert_eq!(knee(auth), (2, 8), "its own max, the file's min");
        assert_eq!(knee(feed), (2, 64), "the file's");
        // Stages: low is its own, the rest the file's.
        assert_eq!(auth.control.stages, [0.9, 0.5, 0.2, 0.0]);
        assert_eq!(feed.control.stages, [0.8, 0.5, 0.2, 0.0]);
        assert_eq!(auth.gate.max_wait_ms[3], 3000);
        assert!(feed.upstream.h2c && !auth.upstream.h2c);
        let login = c.features.iter().find(|f| f.name == "login").unwrap();
        assert_eq!(c.clusters[login.cluster].name, "auth");
        // The default feature goes to the first cluster.
        assert_eq!(c.features[c.default_feature].cluster, 0);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }

    #[test]
    fn a_file_with_upstream_has_one_cluster_named_default() {
        let c = load_str("w.toml", "[upstream]\nendpoints = [\"127.0.0.1:9\"]\n").unwrap();
        assert_eq!(c.clusters.len(), 1);
        assert_eq!(c.clusters[0].name, "default");
    }

    #[test]
    fn cluster_errors_name_the_key_and_the_line() {
        let unknown = TWO.replace("cluster = \"feed\"", "cluster = \"fed\"");
        let e = errors(&unknown);
        assert!(
            e.iter().any(|m| m.contains("w.toml:31: feature[1].cluster")
                && m.contains("\"fed\" is not a [[cluster]] (clusters: auth, feed)")),
            "{e:?}"
        );
        let twice = TWO.replace("name = \"feed\"\nendpoints", "name = \"auth\"\nendpoints");
        let e = errors(&twice);
        assert!(
            e.iter()
                .any(|m| m.contains("w.toml:19: cluster[1].name: two clusters are named \"auth\"")),
            "{e:?}"
        );
        let both = format!("[upstream]\nendpoints = [\"127.0.0.1:9\"]\n{TWO}");
        let e = errors(&both);
        assert!(
            e.iter()
                .any(|m| m.contains("w.toml:1: upstream: a file with [[cluster]] tables")),
            "{e:?}"
        );
        let own = TWO.replace("max = 8", "max = 0");
        let e = errors(&own);
        assert!(
            e.iter().any(|m| m.contains(":3: limit.min")
                && m.contains("at most max (0) (in cluster[0], which inherits limit.min)")),
            "{e:?}"
        );
        let no_endpoints = TWO.replace("endpoints = [\"127.0.0.1:9002\"]\n", "");
        let e = errors(&no_endpoints);
        assert!(
            e.iter()
                .any(|m| m.contains("cluster[1].endpoints: is required")),
            "{e:?}"
        );
        let typo = TWO.replace(
            "protocol = \"h2c\"",
            "protocol = \"h2c\"\nconect_timeout = \"1s\"",
        );
        let e = errors(&typo);
        assert!(
            e.iter().any(|m| m.contains("w.toml:22: cluster[1]: unknown key `conect_timeout`: did you mean `connect_timeout`?")),
            "{e:?}"
        );
        let tick = TWO.replace(
            "[cluster.limit]",
            "[cluster.ramp]\ntick = \"50ms\"\n[cluster.limit]",
        );
        let e = errors(&tick);
        assert!(
            e.iter().any(|m| m.contains("cluster[0].ramp.tick")),
            "{e:?}"
        );
    }

    #[test]
    fn an_inherited_bad_value_is_reported_once_where_it_is_written() {
        let bad = TWO.replace("min = 2\nmax = 64", "min = 2\nmax = 64\ntolerance = 9.0");
        let e = errors(&bad);
        let hits: Vec<&String> = e.iter().filter(|m| m.contains("tolerance")).collect();
        assert_eq!(hits.len(), 1, "{e:?}");
        assert!(hits[0].contains("w.toml:5: limit.tolerance"), "{e:?}");
    }

    #[test]
    fn a_cluster_no_feature_uses_is_a_warning() {
        let unused = TWO.replace("cluster = \"feed\"\n", "");
        let c = load_str("w.toml", &unused).unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].contains("(\"feed\"): no feature is sent to it"));
    }
}
