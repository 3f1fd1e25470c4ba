//! Clusters: one warmgate in front of several backends, each with its own limit, wait line,
//! signals and ramp; a reload that changes one leaves the others alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "ops:0123456789abcdef0123";

/// Two clusters, `auth` (login) and `feed` (feed), with `auth_extra` and `feed_extra` as their
/// own tables.
fn two(auth: &str, feed: &str, auth_extra: &str, feed_extra: &str) -> String {
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
fn load(
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
fn limits(st: &serde_json::Value) -> (u64, u64) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cluster_finds_its_own_backends_knee() {
    let auth = knee_upstream(4, Duration::from_millis(20)).await;
    let feed = knee_upstream(32, Duration::from_millis(20)).await;
    let text = two(
        &auth.addr.to_string(),
        &feed.addr.to_string(),
        "",
        "[cluster.limit]\nmax = 256",
    );
    let p = proxy(&text).await;
    let stop = Arc::new(AtomicU64::new(0));
    let mut clients = load(&p, "/api/login", 24, &stop);
    clients.extend(load(&p, "/api/feed", 96, &stop));
    // Sample both limits over seconds 3..5 of the load.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut samples = Vec::new();
    for _ in 0..20 {
        samples.push(limits(&p.status().await));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(1, Ordering::SeqCst);
    let mut ok = 0;
    for c in clients {
        ok += c.await.map_or(0, |(ok, _)| ok);
    }
    let mean = |f: fn(&(u64, u64)) -> u64| {
        samples.iter().map(f).sum::<u64>() as f64 / samples.len() as f64
    };
    let (a, f) = (mean(|s| s.0), mean(|s| s.1));
    assert!(ok > 0);
    // Each near its own knee: the wide backend is not held to the sharp one's limit, and the
    // sharp one is not pushed to the wide one's.
    // Measured here: auth 4.0-4.3, feed 36-39 (within 25 % of 4 and 32); the feed's bound
    // leaves room for a loaded CI machine.
    assert!((3.0..=5.0).contains(&a), "auth mean limit {a}: {samples:?}");
    assert!(
        (24.0..=44.0).contains(&f),
        "feed mean limit {f}: {samples:?}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_cluster_leaves_logins_alone() {
    let auth = ok_upstream(Duration::from_millis(5)).await;
    // A feed backend that can take 2 at a time, 200 ms each, pressed by 48 clients.
    let feed = knee_upstream(2, Duration::from_millis(200)).await;
    let text = two(&auth.addr.to_string(), &feed.addr.to_string(), "", "");
    let p = proxy(&text).await;
    let stop = Arc::new(AtomicU64::new(0));
    let pressing = load(&p, "/api/feed", 48, &stop);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let st = p.status().await;
    let feed_state = &st["clusters"][1];
    assert!(
        feed_state["signals"]["queued"].as_u64().unwrap() > 0
            || feed_state["controller"]["limit"].as_u64().unwrap() <= 4,
        "the feed cluster is saturated: {feed_state}"
    );
    // Logins meanwhile: every one admitted at once, at the auth backend's own pace.
    let client = h1();
    let t = Instant::now();
    for i in 0..100 {
        let user = format!("u{i}");
        let (r, _) = send(
            &client,
            "GET",
            &p.url("/api/login"),
            &[("x-user", &user)],
            full(""),
        )
        .await;
        assert_eq!(r.status(), 200);
    }
    let per_login = t.elapsed() / 100;
    let st = p.status().await;
    assert_eq!(st["clusters"][0]["name"], "auth");
    assert_eq!(st["clusters"][0]["signals"]["queued"], 0);
    assert_eq!(st["clusters"][0]["controller"]["engaged"], false);
    stop.store(1, Ordering::SeqCst);
    for c in pressing {
        let _ = c.await;
    }
    // 5 ms of backend time each: waiting in the feed's line would cost 100 ms and more.
    assert!(per_login < Duration::from_millis(50), "{per_login:?}");
    assert_eq!(auth.hits(), 100);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_one_cluster_leaves_the_others_connections_and_limit() {
    let auth = ok_upstream(Duration::from_millis(1)).await;
    let feed = ok_upstream(Duration::from_millis(1)).await;
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"tokens\"\n";
    let first = format!(
        "listen = \"127.0.0.1:0\"\n{admin}{}",
        two(&auth.addr.to_string(), &feed.addr.to_string(), "", "")
    );
    let (p, dir) = proxy_from_file(&first, &[("tokens", TOKEN)]).await;
    let client = h1();
    for i in 0..50 {
        for path in ["/api/login", "/api/feed"] {
            let user = format!("r{i}");
            let (r, _) = send(&client, "GET", &p.url(path), &[("x-user", &user)], full("")).await;
            assert_eq!(r.status(), 200);
        }
    }
    // An operator pins the auth cluster's limit: it must survive the reload.
    let admin_url = format!("http://{}", p.admin);
    let secret = TOKEN.split_once(':').unwrap().1;
    let bearer = format!("Bearer {secret}");
    let (r, body) = send(
        &client,
        "PUT",
        &format!("{admin_url}/api/v1/clusters/auth/limit"),
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        full(r#"{"value": 7}"#),
    )
    .await;
    assert_eq!(r.status(), 200, "{}", String::from_utf8_lossy(&body));
    let (r, _) = send(
        &client,
        "PUT",
        &format!("{admin_url}/api/v1/clusters/nope/limit"),
        &[
            ("authorization", &bearer),
            ("content-type", "application/json"),
        ],
        full(r#"{"value": 7}"#),
    )
    .await;
    assert_eq!(r.status(), 404);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (auth_conns, feed_conns) = (
        auth.conns.load(Ordering::SeqCst),
        feed.conns.load(Ordering::SeqCst),
    );
    assert!(auth_conns >= 1 && feed_conns >= 1);
    // Change the feed cluster only: its stages, and a new connection timeout.
    let second = format!(
        "listen = \"127.0.0.1:0\"\n{admin}{}",
        two(
            &auth.addr.to_string(),
            &feed.addr.to_string(),
            "",
            "connect_timeout = \"3s\"\n[cluster.ramp.stages]\nnormal = 0.7",
        )
    );
    std::fs::write(dir.path().join("w.toml"), second).unwrap();
    let (r, body) = send(
        &client,
        "POST",
        &format!("{admin_url}/api/v1/reload"),
        &[("authorization", &bearer)],
        full(""),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let changed: Vec<String> = v["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert!(
        changed
            .iter()
            .any(|c| c.starts_with("clusters.feed.ramp.stages.normal: 0.5 -> 0.7")),
        "{changed:?}"
    );
    assert!(
        changed
            .iter()
            .any(|c| c.starts_with("clusters.feed.upstream.connect_timeout_s")),
        "{changed:?}"
    );
    assert!(
        !changed.iter().any(|c| c.starts_with("clusters.auth")),
        "{changed:?}"
    );
    for i in 0..50 {
        for path in ["/api/login", "/api/feed"] {
            let user = format!("s{i}");
            let (r, _) = send(&client, "GET", &p.url(path), &[("x-user", &user)], full("")).await;
            assert_eq!(r.status(), 200);
        }
    }
    // The auth cluster's pooled connections were reused; the feed's were remade.
    assert_eq!(auth.conns.load(Ordering::SeqCst), auth_conns);
    assert!(feed.conns.load(Ordering::SeqCst) > feed_conns);
    let st = p.status().await;
    let (a, _) = limits(&st);
    assert_eq!(a, 7, "the operator's pin on auth holds: {st}");
    assert_eq!(st["clusters"][1]["stages"]["normal"]["stage"], 0.7);
    p.stop().await;
}
