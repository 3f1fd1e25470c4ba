//! Instances acting as one through a real `redis-server` of the test's own (loopback port,
//! killed by PID): one limit found on the fleet's aggregate and split into shares; operator
//! writes in force everywhere; the store killed under traffic and back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::Response;
use serde_json::Value;

const TOKEN: &str = "ops:0123456789abcdef0123";
const SECRET: &str = "0123456789abcdef0123";

/// A backend with `knee` workers (each request holds one for `service`, the rest queue),
/// counting what it holds and queues, and the most at once.
struct Backend {
    up: Upstream,
    peak: Arc<AtomicU64>,
}

async fn knee_backend(knee: usize, service: Duration) -> Backend {
    let sem = Arc::new(tokio::sync::Semaphore::new(knee));
    let now = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    let (n, pk) = (now.clone(), peak.clone());
    let up = upstream(Arc::new(move |_req| {
        let (sem, n, pk) = (sem.clone(), n.clone(), pk.clone());
        Box::pin(async move {
            let at = n.fetch_add(1, Ordering::SeqCst) + 1;
            pk.fetch_max(at, Ordering::SeqCst);
            let w = sem.acquire().await.unwrap();
            tokio::time::sleep(service).await;
            drop(w);
            n.fetch_sub(1, Ordering::SeqCst);
            Response::builder()
                .header("x-cache", "MISS")
                .body(full("ok"))
                .unwrap()
        })
    }))
    .await;
    Backend { up, peak }
}

fn config(upstream: &str, redis: u16, instance: &str) -> String {
    config_with(upstream, redis, instance, "")
}

fn config_with(upstream: &str, redis: u16, instance: &str, ramp: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"tokens\"\n\
         [upstream]\nendpoints = [\"{upstream}\"]\n\
         [ramp]\ntick = \"50ms\"\n{ramp}\n\
         [queue]\nmax_wait = {{ critical = \"5s\", low = \"400ms\" }}\n\
         [fleet]\nstore = \"redis://127.0.0.1:{redis}/0\"\ninstance = \"{instance}\"\nsync = \"50ms\"\nlease = \"500ms\"\n\
         [client_key]\nheader = \"x-user\"\n\
         [[feature]]\nname = \"login\"\npriority = \"critical\"\n\
         [[feature]]\nname = \"recommend\"\npriority = \"low\"\n\
         [[route]]\nfeature = \"recommend\"\npath_prefix = \"/api/recommend\"\n\
         [[route]]\nfeature = \"login\"\npath_prefix = \"/api/login\"\n"
    )
}

async fn instance(up: &Upstream, redis: u16, name: &str) -> (Proxy, tempfile::TempDir) {
    proxy_from_file(
        &config(&up.addr.to_string(), redis, name),
        &[("tokens", TOKEN)],
    )
    .await
}

/// `n` clients sending to `p` back to back until `stop`; (200s, anything else).
fn load(p: &Proxy, n: usize, stop: &Arc<AtomicU64>) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
    (0..n)
        .map(|i| {
            let (url, stop) = (p.url("/api/login"), stop.clone());
            let user = format!("{}-{i}", p.addr.port());
            tokio::spawn(async move {
                let client = h1();
                let (mut ok, mut other) = (0, 0);
                while stop.load(Ordering::SeqCst) == 0 {
                    let (r, body) =
                        send(&client, "GET", &url, &[("x-user", &user)], full("")).await;
                    if r.status() == 200 {
                        ok += 1;
                    } else {
                        if other == 0 {
                            eprintln!(
                                "first refusal: {} {}",
                                r.status(),
                                String::from_utf8_lossy(&body)
                            );
                        }
                        other += 1;
                    }
                }
                (ok, other)
            })
        })
        .collect()
}

/// The default cluster's fleet section of an instance's status.
fn side(st: &Value) -> Value {
    st["clusters"][0]["fleet"].clone()
}

/// (fleet limit, sum of the shares in the plan) as the leader among `ps` sees it.
async fn fleet_view(ps: &[&Proxy]) -> Option<(u64, u64)> {
    for p in ps {
        let st = p.status().await;
        if st["fleet"]["is_leader"] == true {
            let f = side(&st);
            let sum: u64 = f["instances"]
                .as_array()?
                .iter()
                .map(|i| i["share"].as_u64().unwrap_or(0))
                .sum();
            return Some((f["fleet_limit"].as_u64()?, sum));
        }
    }
    None
}

async fn put(p: &Proxy, path: &str, body: &str) -> u16 {
    let req = http::Request::builder()
        .method("PUT")
        .uri(format!("http://{}{path}", p.admin))
        .header("authorization", format!("Bearer {SECRET}"))
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap();
    h1().request(req).await.unwrap().status().as_u16()
}

async fn post(p: &Proxy, path: &str) -> u16 {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", p.admin))
        .header("authorization", format!("Bearer {SECRET}"))
        .body(full(""))
        .unwrap();
    h1().request(req).await.unwrap().status().as_u16()
}

/// Polls `check` every 10 ms for up to `max`; how long it took to hold.
async fn until(max: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < max {
        if check().await {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_find_one_knee_and_share_it_and_a_fourth_joins_within_it() {
    let port = free_port();
    let _redis = redis::start(port);
    let backend = knee_backend(8, Duration::from_millis(100)).await;
    let (a, _da) = instance(&backend.up, port, "a").await;
    let (b, _db) = instance(&backend.up, port, "b").await;
    let (c, _dc) = instance(&backend.up, port, "c").await;
    let stop = Arc::new(AtomicU64::new(0));
    let mut clients = load(&a, 16, &stop);
    clients.extend(load(&b, 16, &stop));
    clients.extend(load(&c, 16, &stop));
    tokio::time::sleep(Duration::from_secs(4)).await;
    backend.peak.store(0, Ordering::SeqCst);
    let mut samples = Vec::new();
    for _ in 0..20 {
        if let Some(v) = fleet_view(&[&a, &b, &c]).await {
            samples.push(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak3 = backend.peak.load(Ordering::SeqCst);
    // A fourth instance joins under load.
    let (d, _dd) = instance(&backend.up, port, "d").await;
    clients.extend(load(&d, 16, &stop));
    backend.peak.store(0, Ordering::SeqCst);
    let mut joined = Vec::new();
    for _ in 0..20 {
        if let Some(v) = fleet_view(&[&a, &b, &c, &d]).await {
            joined.push(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak4 = backend.peak.load(Ordering::SeqCst);
    let d_share = side(&d.status().await)["share"].as_u64();
    stop.store(1, Ordering::SeqCst);
    let (mut ok, mut other) = (0, 0);
    for c in clients {
        let (o, x) = c.await.unwrap();
        ok += o;
        other += x;
    }
    eprintln!("fleet limit, sum of shares (3): {samples:?}\n(4): {joined:?}\nbackend peak in flight+queued: {peak3} (3), {peak4} (4 joining); ok {ok} other {other}; d's share {d_share:?}");
    assert!(
        samples.len() >= 10 && joined.len() >= 10,
        "a leader answers"
    );
    for &(limit, sum) in samples.iter().chain(&joined) {
        assert!(
            sum <= limit,
            "the shares add up to no more than the fleet limit: {limit} < {sum}"
        );
    }
    let mean = samples.iter().map(|s| s.0 as f64).sum::<f64>() / samples.len() as f64;
    let max = samples.iter().map(|s| s.0).max().unwrap();
    eprintln!("fleet limit mean {mean:.1}, max {max}");
    // One knee for the fleet (alone on this machine the mean reads 8.9-10.6 for a knee of 8:
    // the limit's 20 % latency tolerance lets it sit a little above, as one instance does),
    // not three instances' limits on top of each other (24 and more).
    assert!((6.0..=11.0).contains(&mean), "fleet limit: {samples:?}");
    assert!(max <= 16, "fleet limit: {samples:?}");
    assert!(
        peak3 <= 16,
        "the backend holds {peak3} at once: not held to one knee"
    );
    assert!(
        peak4 <= 16,
        "the joining instance pushes the backend to {peak4}"
    );
    assert!(
        d_share.is_some_and(|s| s >= 1),
        "the newcomer has a share: {d_share:?}"
    );
    assert!(ok > 500);
    for p in [a, b, c, d] {
        p.stop().await;
    }
}

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
    let (a, _da) = instance(&backend.up, port, "a").await;
    let (b, _db) = instance(&backend.up, port, "b").await;
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
