//! Fleet test helpers: a backend with a knee, instances on one store, their status.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Response;
use serde_json::Value;

use super::*;

pub const TOKEN: &str = "ops:0123456789abcdef0123";
pub const SECRET: &str = "0123456789abcdef0123";

/// A backend with `knee` workers (each request holds one for `service`, the rest queue),
/// counting what it holds and queues, and the most at once.
pub struct Backend {
    pub up: Upstream,
    pub peak: Arc<AtomicU64>,
}

pub async fn knee_backend(knee: usize, service: Duration) -> Backend {
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

pub fn config(upstream: &str, redis: u16, instance: &str) -> String {
    config_with(upstream, redis, instance, "")
}

pub fn config_with(upstream: &str, redis: u16, instance: &str, ramp: &str) -> String {
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

pub async fn instance(up: &Upstream, redis: u16, name: &str) -> (Proxy, tempfile::TempDir) {
    proxy_from_file(
        &config(&up.addr.to_string(), redis, name),
        &[("tokens", TOKEN)],
    )
    .await
}

/// [`instance`] without the per-client cap (`gate.per_client_share = 1.0`), for a test about
/// something else. With the default share (0.5) a client's cap is one slot whenever the limit
/// is two or less, and a client whose next request arrives while its last is still counted
/// (its slot is released just after the response's last write, and a loaded machine can pause
/// the thread in between) is then refused as over its share.
pub async fn instance_uncapped(
    up: &Upstream,
    redis: u16,
    name: &str,
) -> (Proxy, tempfile::TempDir) {
    let cfg = config_with(
        &up.addr.to_string(),
        redis,
        name,
        "[gate]\nper_client_share = 1.0",
    );
    proxy_from_file(&cfg, &[("tokens", TOKEN)]).await
}

/// `n` clients sending to `p` back to back until `stop`; (200s, anything else).
pub fn load(
    p: &Proxy,
    n: usize,
    stop: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<(u64, u64)>> {
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
pub fn side(st: &Value) -> Value {
    st["clusters"][0]["fleet"].clone()
}

/// (fleet limit, sum of the shares in the plan) as the leader among `ps` sees it.
pub async fn fleet_view(ps: &[&Proxy]) -> Option<(u64, u64)> {
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

pub async fn put(p: &Proxy, path: &str, body: &str) -> u16 {
    let req = http::Request::builder()
        .method("PUT")
        .uri(format!("http://{}{path}", p.admin))
        .header("authorization", format!("Bearer {SECRET}"))
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap();
    h1().request(req).await.unwrap().status().as_u16()
}

pub async fn post(p: &Proxy, path: &str) -> u16 {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", p.admin))
        .header("authorization", format!("Bearer {SECRET}"))
        .body(full(""))
        .unwrap();
    h1().request(req).await.unwrap().status().as_u16()
}

/// Polls `check` every 10 ms for up to `max`; how long it took to hold.
pub async fn until(max: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < max {
        if check().await {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}
