//! Two clusters in front of two test backends, and load to press on them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::*;

/// Two clusters, `auth` (login) and `feed` (feed), with `auth_extra` and `feed_extra` as their
/// own tables.
pub fn two(auth: &str, feed: &str, auth_extra: &str, feed_extra: &str) -> String {
    format!(
        r#"
[client_key]
header = "x-user"
[gate]
per_client_share = 1.0
[limit]
initial = 2
# Tighter than the default 0.2: at 0.2 the limits sit about 30 % above the knees.
tolerance = 0.1
[queue]
max_wait = {{ critical = "5s", normal = "5s" }}

[[cluster]]
name = "auth"
endpoints = ["{auth}"]
{auth_extra}

[[cluster]]
name = "feed"
endpoints = ["{feed}"]
{feed_extra}

[[feature]]
name = "login"
priority = "critical"
cluster = "auth"
[[feature]]
name = "feed"
priority = "normal"
cluster = "feed"
[[route]]
feature = "login"
path_prefix = "/api/login"
[[route]]
feature = "feed"
path_prefix = "/api/feed"
"#
    )
}

/// `n` clients sending to `path` back to back until `stop` is set; counts answers by status.
pub fn load(
    p: &Proxy,
    path: &str,
    n: usize,
    stop: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    (0..n)
        .map(|i| {
            let (url, stop) = (p.url(path), stop.clone());
            let user = format!("{path}{i}");
            tokio::spawn(async move {
                let client = h1();
                let (mut ok, mut other) = (0, 0);
                while stop.load(Ordering::SeqCst) == 0 {
                    let (r, _) = send(&client, "GET", &url, &[("x-user", &user)], full("")).await;
                    if r.status() == 200 {
                        ok += 1;
                    } else {
                        other += 1;
                    }
                }
                (ok, other)
            })
        })
        .collect()
}

/// The limit of each named cluster in the status document.
pub fn limits(st: &serde_json::Value) -> (u64, u64) {
    let of = |name: &str| {
        st["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["controller"]["limit"].as_u64().unwrap())
            .unwrap()
    };
    (of("auth"), of("feed"))
}
