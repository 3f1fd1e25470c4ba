//! Clusters: one warmgate in front of several backends, each with its own limit, wait line,
//! signals and ramp; a reload that changes one leaves the others alone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::clusters::*;
use common::*;

const TOKEN: &str = "ops:0123456789abcdef0123";

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
