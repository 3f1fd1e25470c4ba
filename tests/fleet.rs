//! Instances acting as one through a real `redis-server` of the test's own (loopback port,
//! killed by PID): operator writes in force everywhere, the leader replaced, the store killed
//! under traffic and back, client memory shared. (The fleet's knee: `fleet_knee.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::fleet::*;
use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_write_on_one_instance_is_in_force_on_every_other() {
    let port = free_port();
    let _redis = redis::start(port);
    let backend = knee_backend(64, Duration::from_millis(5)).await;
    let (a, _da) = instance(&backend.up, port, "a").await;
    let (b, _db) = instance(&backend.up, port, "b").await;
    // Both synced once.
    let synced = until(Duration::from_secs(5), async || {
        b.status().await["fleet"]["last_sync_age_ms"].is_u64()
            && a.status().await["fleet"]["last_sync_age_ms"].is_u64()
    })
    .await;
    assert!(synced.is_some(), "the instances reach the store");
    // A feature switched off on a.
    assert_eq!(
        put(&a, "/api/v1/features/recommend", r#"{"state":"off"}"#).await,
        200
    );
    let took = until(Duration::from_secs(3), async || {
        b.status().await["features"][1]["state"] == "off"
    })
    .await;
    eprintln!("feature switch in force on b after {took:?} (sync 50 ms)");
    assert!(took.is_some(), "the switch reaches b");
    let (resp, _) = get(&b.url("/api/recommend"), &[("x-user", "u")]).await;
    assert_eq!(resp.status(), 503, "b sheds the feature a switched off");
    // Audited on b with where it came from.
    let (_, audit) = get(
        &format!("http://{}/api/v1/audit", b.admin),
        &[("authorization", &format!("Bearer {SECRET}"))],
    )
    .await;
    let audit: Value = serde_json::from_slice(&audit).unwrap();
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["caller"]["token"] == "ops@a"),
        "{audit}"
    );
    // The ramp engaged through b (a follower or the leader) is engaged on both.
    assert_eq!(post(&b, "/api/v1/ramp/engage").await, 200);
    let took = until(Duration::from_secs(3), async || {
        a.status().await["clusters"][0]["controller"]["engaged"] == true
            && b.status().await["clusters"][0]["controller"]["engaged"] == true
    })
    .await;
    eprintln!("engage in force on both after {took:?}");
    assert!(took.is_some(), "engaged everywhere");
    // Progress set on a: the fleet's ramp stands there on both.
    assert_eq!(
        put(&a, "/api/v1/ramp/progress", r#"{"value":0.7}"#).await,
        200
    );
    let took = until(Duration::from_secs(3), async || {
        let pa = a.status().await["clusters"][0]["controller"]["progress"]
            .as_f64()
            .unwrap_or(0.0);
        let pb = b.status().await["clusters"][0]["controller"]["progress"]
            .as_f64()
            .unwrap_or(0.0);
        pa >= 0.7 && pb >= 0.7
    })
    .await;
    eprintln!("progress in force on both after {took:?}");
    if took.is_none() {
        for p in [&a, &b] {
            let st = p.status().await;
            eprintln!(
                "{:#}\n{:#}\n{:#}",
                st["fleet"],
                st["clusters"][0]["controller"],
                side(&st)
            );
        }
    }
    assert!(took.is_some(), "progress everywhere");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_killed_under_traffic_fails_no_request_and_the_fleet_rejoins() {
    let port = free_port();
    let mut redis = redis::start(port);
    let backend = knee_backend(16, Duration::from_millis(20)).await;
    // What is checked is the store's part. One run in CI saw two `429 client_limit` here: the
    // per-client cap's business (see `instance_uncapped`); when the limit fell that low was
    // not pinned down.
    let (a, _da) = instance_uncapped(&backend.up, port, "a").await;
    let (b, _db) = instance_uncapped(&backend.up, port, "b").await;
    let stop = Arc::new(AtomicU64::new(0));
    let mut clients = load(&a, 4, &stop);
    clients.extend(load(&b, 4, &stop));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        fleet_view(&[&a, &b]).await.is_some(),
        "a leader before the kill"
    );
    let _ = redis.kill();
    let _ = redis.wait();
    // Past the lease: both steer alone, say so, and keep serving.
    let alone = until(Duration::from_secs(5), async || {
        let (sa, sb) = (a.status().await, b.status().await);
        sa["fleet"]["store_up"] == false
            && side(&sa)["role"] == "alone"
            && side(&sb)["role"] == "alone"
    })
    .await;
    assert!(
        alone.is_some(),
        "both fall back: {:#}",
        a.status().await["fleet"]
    );
    let m = String::from_utf8_lossy(&get(&format!("http://{}/metrics", a.admin), &[]).await.1)
        .to_string();
    assert!(m.contains("warmgate_fleet_store_up 0"), "{m}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _redis = redis::start(port);
    let back = until(Duration::from_secs(10), async || {
        let (sa, sb) = (a.status().await, b.status().await);
        sa["fleet"]["store_up"] == true
            && sb["fleet"]["store_up"] == true
            && side(&sa)["role"] != "alone"
            && side(&sb)["role"] != "alone"
    })
    .await;
    eprintln!("rejoined {back:?} after the store came back");
    assert!(
        back.is_some(),
        "both rejoin: {:#}",
        a.status().await["fleet"]
    );
    stop.store(1, Ordering::SeqCst);
    let (mut ok, mut other) = (0, 0);
    for c in clients {
        let (o, x) = c.await.unwrap();
        ok += o;
        other += x;
    }
    assert!(ok > 100);
    assert_eq!(other, 0, "no request failed because of the store");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_goes_another_takes_over_from_its_plan() {
    let port = free_port();
    let _redis = redis::start(port);
    let backend = knee_backend(8, Duration::from_millis(50)).await;
    let mut ps = Vec::new();
    let mut dirs = Vec::new();
    for name in ["a", "b", "c"] {
        let (p, d) = instance(&backend.up, port, name).await;
        ps.push(p);
        dirs.push(d);
    }
    let stops: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut clients: Vec<Vec<_>> = ps.iter().zip(&stops).map(|(p, s)| load(p, 6, s)).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut leader = None;
    for (i, p) in ps.iter().enumerate() {
        if p.status().await["fleet"]["is_leader"] == true {
            leader = Some(i);
        }
    }
    let leader = leader.expect("one of them leads");
    let before = fleet_view(&[&ps[0], &ps[1], &ps[2]]).await.unwrap();
    // The leader's clients leave first, then it stops.
    stops[leader].store(1, Ordering::SeqCst);
    for c in clients.remove(leader) {
        c.await.unwrap();
    }
    let gone = ps.remove(leader);
    gone.stop().await;
    let took = until(Duration::from_secs(5), async || {
        let mut leaders = 0;
        for p in &ps {
            let st = p.status().await;
            let f = side(&st);
            let listed = f["instances"].as_array().map_or(0, Vec::len);
            if st["fleet"]["is_leader"] == true && listed == 2 {
                leaders += 1;
            }
        }
        leaders == 1
    })
    .await;
    let after = fleet_view(&[&ps[0], &ps[1]]).await;
    eprintln!("leader gone: another leads after {took:?} (lease 500 ms); fleet limit and shares {before:?} -> {after:?}");
    assert!(took.is_some(), "a new leader plans for the two left");
    let (limit, sum) = after.unwrap();
    assert!(sum <= limit && limit >= 2, "{after:?}");
    for s in &stops {
        s.store(1, Ordering::SeqCst);
    }
    let mut ok = 0;
    for c in clients.into_iter().flatten() {
        ok += c.await.unwrap().0;
    }
    assert!(ok > 0);
    for p in ps {
        p.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_told_to_wait_by_one_instance_is_early_on_another() {
    let port = free_port();
    let _redis = redis::start(port);
    let backend = knee_backend(64, Duration::from_millis(5)).await;
    let ramp = "engage = \"on_start\"\nduration = \"10m\"";
    let mut ps = Vec::new();
    let mut dirs = Vec::new();
    for name in ["a", "b"] {
        let text = config_with(&backend.up.addr.to_string(), port, name, ramp);
        let (p, d) = proxy_from_file(&text, &[("tokens", TOKEN)]).await;
        ps.push(p);
        dirs.push(d);
    }
    let (a, b) = (&ps[0], &ps[1]);
    let synced = until(Duration::from_secs(5), async || {
        a.status().await["fleet"]["last_sync_age_ms"].is_u64()
            && b.status().await["fleet"]["last_sync_age_ms"].is_u64()
    })
    .await;
    assert!(synced.is_some());
    // A new client on b is answered at once (the low stage is closed).
    let t = Instant::now();
    let (resp, _) = get(&b.url("/api/recommend"), &[("x-user", "fresh")]).await;
    assert_eq!(resp.status(), 503);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    // Told to wait by a...
    let (resp, _) = get(&a.url("/api/recommend"), &[("x-user", "blind")]).await;
    assert_eq!(resp.status(), 503);
    // ...and back on b after a few syncs, well before its time: held like an early returner.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let (resp, _) = get(&b.url("/api/recommend"), &[("x-user", "blind")]).await;
    assert_eq!(resp.status(), 503);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "b knows what a told the client: held for the longest wait first ({:?})",
        t.elapsed()
    );
    for p in ps {
        p.stop().await;
    }
}
