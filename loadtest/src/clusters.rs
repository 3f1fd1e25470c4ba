//! `drill --clusters`: one warmgate in front of two cold backends, an auth database (a sharp
//! knee) for login and sync and a feed database (a wider one) for feed and recommend. Here: the
//! warmgate config with two `[[cluster]]`s, HAProxy's two backends, and the report's part per
//! cluster.

use std::path::Path;

use crate::drill::{take_table, with_addresses, DrillConfig, Run};

/// The features each cluster serves (the storm's four kinds; anything else goes to feed).
const AUTH_FEATURES: [&str; 2] = ["login", "sync"];

/// The user's config with the drill's addresses and two clusters, `auth` and `feed`. A config
/// that names its own `[[cluster]]`s keeps them (each needs a cluster of that name) and only gets
/// the endpoints; one with a single `[upstream]` has it copied into both clusters, and each
/// feature is put in its cluster.
pub fn drill_config(
    path: &Path,
    listen: u16,
    admin: u16,
    upstreams: &[(&str, String)],
) -> anyhow::Result<String> {
    with_addresses(path, listen, admin, |t| set_clusters(t, path, upstreams))
}

/// Puts the two clusters (with their endpoints) into `t`, and each feature in its cluster.
fn set_clusters(
    t: &mut toml::Table,
    path: &Path,
    upstreams: &[(&str, String)],
) -> anyhow::Result<()> {
    let endpoints = |addr: &str| toml::Value::Array(vec![toml::Value::String(addr.into())]);
    match t.remove("cluster") {
        Some(toml::Value::Array(mut clusters)) => {
            for (name, addr) in upstreams {
                let found = clusters.iter_mut().find_map(|c| match c {
                    toml::Value::Table(c)
                        if c.get("name").and_then(|n| n.as_str()) == Some(name) =>
                    {
                        Some(c)
                    }
                    _ => None,
                });
                let Some(c) = found else {
                    anyhow::bail!(
                        "{}: --clusters needs a [[cluster]] named {name:?}",
                        path.display()
                    );
                };
                c.insert("endpoints".into(), endpoints(addr));
            }
            t.insert("cluster".into(), toml::Value::Array(clusters));
        }
        Some(_) => anyhow::bail!("{}: cluster must be an array of tables", path.display()),
        None => {
            let base = take_table(t, "upstream", path)?;
            let clusters = upstreams
                .iter()
                .map(|(name, addr)| {
                    let mut c = base.clone();
                    c.insert("name".into(), toml::Value::String((*name).into()));
                    c.insert("endpoints".into(), endpoints(addr));
                    toml::Value::Table(c)
                })
                .collect();
            t.insert("cluster".into(), toml::Value::Array(clusters));
            if let Some(toml::Value::Array(features)) = t.get_mut("feature") {
                for f in features.iter_mut() {
                    if let toml::Value::Table(f) = f {
                        let auth = f
                            .get("name")
                            .and_then(|n| n.as_str())
                            .is_some_and(|n| AUTH_FEATURES.contains(&n));
                        let cluster = if auth { "auth" } else { "feed" };
                        f.insert("cluster".into(), toml::Value::String(cluster.into()));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The feed backend's `maxconn` for an auth `maxconn` of `n`: scaled by the ratio of the
/// knees, the same static judgement applied to each database.
pub fn feed_maxconn(cfg: &DrillConfig, n: u32) -> u32 {
    let ratio = cfg.feed_db_knee as f64 / cfg.sim.db_knee.max(1) as f64;
    ((f64::from(n) * ratio).ceil() as u32).max(1)
}

/// HAProxy's routing for two clusters: login and sync to auth, the rest to feed.
pub fn haproxy_backends(cfg: &DrillConfig, maxconn: u32, upstreams: &[(&str, String)]) -> String {
    let addr = |name: &str| {
        upstreams
            .iter()
            .find(|u| u.0 == name)
            .map_or("", |u| u.1.as_str())
    };
    format!(
        "  acl auth path_beg /api/login /api/sync\n  use_backend auth if auth\n  default_backend feed\n\n\
backend auth\n  server s1 {} maxconn {maxconn}\n\nbackend feed\n  server s1 {} maxconn {}\n",
        addr("auth"),
        addr("feed"),
        feed_maxconn(cfg, maxconn)
    )
}

/// One cluster's figures over a run.
pub struct Figures {
    pub name: String,
    pub knee: u64,
    pub peak_db: u64,
    pub mean_busy_db: f64,
    /// The median of the cluster's limit over the run's second half (behind warmgate).
    pub settled_limit: Option<f64>,
    pub p99_over_500ms_s: usize,
}

/// Each cluster's figures, in the run's order (none without --clusters).
pub fn figures(run: &Run) -> Vec<Figures> {
    let half = run.samples.len() / 2;
    run.clusters
        .iter()
        .enumerate()
        .map(|(i, (name, knee))| {
            let of = |s: &crate::drill::Sample| s.clusters.get(i).cloned();
            let all: Vec<_> = run.samples.iter().filter_map(of).collect();
            let busy: Vec<f64> = all
                .iter()
                .filter(|c| c.db_active > 0)
                .map(|c| c.db_active as f64)
                .collect();
            let mut limits: Vec<f64> = run.samples[half..]
                .iter()
                .filter_map(of)
                .filter_map(|c| c.limit.map(|l| l as f64))
                .collect();
            limits.sort_by(f64::total_cmp);
            Figures {
                name: name.clone(),
                knee: *knee,
                peak_db: all.iter().map(|c| c.db_active).max().unwrap_or(0),
                mean_busy_db: if busy.is_empty() {
                    0.0
                } else {
                    busy.iter().sum::<f64>() / busy.len() as f64
                },
                settled_limit: limits.get(limits.len() / 2).copied(),
                p99_over_500ms_s: all.iter().filter(|c| c.backend_p99_ms > 500.0).count(),
            }
        })
        .collect()
}

/// The report table's rows per cluster: (row name, one cell per run).
pub fn rows(runs: &[Run]) -> Vec<(String, Vec<String>)> {
    let per_run: Vec<Vec<Figures>> = runs.iter().map(figures).collect();
    let Some(names) = per_run.iter().find(|f| !f.is_empty()) else {
        return Vec::new();
    };
    let names: Vec<(String, u64)> = names.iter().map(|f| (f.name.clone(), f.knee)).collect();
    let mut out = Vec::new();
    for (i, (name, knee)) in names.iter().enumerate() {
        let cell = |f: &dyn Fn(&Figures) -> String| -> Vec<String> {
            per_run
                .iter()
                .map(|r| r.get(i).map_or_else(|| "-".into(), f))
                .collect()
        };
        out.push((
            format!("{name} database: peak / mean busy queries at once (knee {knee})"),
            cell(&|f| format!("{} / {:.1}", f.peak_db, f.mean_busy_db)),
        ));
        out.push((
            format!("{name} limit, median of the second half"),
            cell(&|f| {
                f.settled_limit.map_or_else(
                    || "-".into(),
                    |l| format!("{l:.0} ({:.2}x knee)", l / f.knee.max(1) as f64),
                )
            }),
        ));
        out.push((
            format!("{name} seconds with backend p99 over 500 ms"),
            cell(&|f| f.p99_over_500ms_s.to_string()),
        ));
    }
    out
}

/// A sentence per run on its clusters, or none without --clusters.
pub fn sentence(run: &Run) -> Option<String> {
    let f = figures(run);
    if f.is_empty() {
        return None;
    }
    let parts: Vec<String> = f
        .iter()
        .map(|c| {
            let limit = c.settled_limit.map_or_else(String::new, |l| {
                format!(", its limit settled at {l:.0} ({:.2}x the knee)", l / c.knee.max(1) as f64)
            });
            format!(
                "the {} database (knee {}) ran at most {} queries at once, {:.1} on average while busy{limit}",
                c.name, c.knee, c.peak_db, c.mean_busy_db
            )
        })
        .collect();
    Some(format!("Per cluster, {}.", parts.join("; ")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    const UPS: [(&str, &str); 2] = [("auth", "127.0.0.1:7001"), ("feed", "127.0.0.1:7002")];

    fn ups() -> Vec<(&'static str, String)> {
        UPS.iter().map(|(n, a)| (*n, (*a).to_string())).collect()
    }

    #[test]
    fn one_upstream_becomes_two_clusters_and_each_feature_goes_to_its_own() {
        let (_d, path) = write(
            "[upstream]\nendpoints = [\"10.0.0.1:80\"]\nconnect_timeout = \"1s\"\n[[feature]]\nname = \"login\"\npriority = \"critical\"\n[[feature]]\nname = \"recommend\"\npriority = \"low\"\n",
        );
        let t: toml::Table = drill_config(&path, 1, 2, &ups()).unwrap().parse().unwrap();
        assert!(t.get("upstream").is_none());
        let clusters = t["cluster"].as_array().unwrap();
        let names: Vec<_> = clusters
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["auth", "feed"]);
        assert_eq!(clusters[1]["endpoints"][0].as_str(), Some("127.0.0.1:7002"));
        assert_eq!(
            clusters[0]["connect_timeout"].as_str(),
            Some("1s"),
            "the upstream's keys kept"
        );
        let features = t["feature"].as_array().unwrap();
        assert_eq!(features[0]["cluster"].as_str(), Some("auth"));
        assert_eq!(features[1]["cluster"].as_str(), Some("feed"));
        assert_eq!(t["admin"]["listen"].as_str(), Some("127.0.0.1:2"));
    }

    #[test]
    fn a_config_with_its_own_clusters_keeps_them_and_must_name_both() {
        let (_d, path) = write(
            "[[cluster]]\nname = \"auth\"\nendpoints = [\"10.0.0.1:80\"]\n[cluster.limit]\nmax = 9\n[[cluster]]\nname = \"feed\"\nendpoints = [\"10.0.0.2:80\"]\n",
        );
        let t: toml::Table = drill_config(&path, 1, 2, &ups()).unwrap().parse().unwrap();
        let clusters = t["cluster"].as_array().unwrap();
        assert_eq!(clusters[0]["endpoints"][0].as_str(), Some("127.0.0.1:7001"));
        assert_eq!(clusters[0]["limit"]["max"].as_integer(), Some(9));
        let (_d, path) = write("[[cluster]]\nname = \"auth\"\nendpoints = [\"10.0.0.1:80\"]\n");
        let err = drill_config(&path, 1, 2, &ups()).unwrap_err().to_string();
        assert!(err.contains("named \"feed\""), "{err}");
    }
}
