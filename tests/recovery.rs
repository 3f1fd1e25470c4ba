//! Chaos: the backend is killed under traffic and restarted on the same port. warmgate must
//! serve it again at once: the limit restarts in slow start, the outage's failures are
//! forgotten, and an engaged ramp climbs back to where it was within about two seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use http::Response;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

const TOKEN: &str = "ops:0123456789abcdef0123";

/// A backend on `port` whose process can be killed: the listener and every open connection
/// go at once, as when the process dies.
fn backend(port: u16) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            conns.spawn(async move {
                let svc = service_fn(|_req| async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("x-cache", "HIT")
                            .body(full("ok"))
                            .unwrap(),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_killed_and_restarted_under_traffic_is_served_again_within_two_seconds() {
    let port = free_port();
    let mut up = backend(port);
    let text = format!(
        r#"listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
token_file = "tokens"
[upstream]
endpoints = ["127.0.0.1:{port}"]
connect_timeout = "200ms"
eject_after_failures = 0
[ramp]
engage = "on_start"
duration = "60s"
tick = "50ms"
stages = {{ critical = 0.0, high = 0.0, normal = 0.2, low = 0.5 }}
[client_key]
header = "x-user"
[gate]
per_client_share = 1.0
[[feature]]
name = "feed"
priority = "normal"
[[feature]]
name = "recommend"
priority = "low"
[[route]]
feature = "feed"
path_prefix = "/api/feed"
[[route]]
feature = "recommend"
path_prefix = "/api/recommend"
"#
    );
    let (p, _dir) = proxy_from_file(&text, &[("tokens", TOKEN)]).await;
    let secret = TOKEN.split_once(':').unwrap().1;
    let (r, _) = send(
        &h1(),
        "PUT",
        &format!("http://{}/api/v1/ramp/progress", p.admin),
        &[("authorization", &format!("Bearer {secret}"))],
        full(r#"{"value": 0.8}"#),
    )
    .await;
    assert_eq!(r.status(), 200);

    // 16 clients, half feed and half recommend, each noting when it got a 200.
    let start = Instant::now();
    let oks: Arc<Mutex<Vec<(Duration, bool)>>> = Arc::default();
    let stop = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let path = if i % 2 == 0 {
                "/api/feed"
            } else {
                "/api/recommend"
            };
            let (url, oks, stop) = (p.url(path), oks.clone(), stop.clone());
            tokio::spawn(async move {
                let client = h1();
                let user = format!("u{i}");
                while stop.load(Ordering::SeqCst) == 0 {
                    let (r, _) = send(&client, "GET", &url, &[("x-user", &user)], full("")).await;
                    if r.status() == 200 {
                        oks.lock().unwrap().push((start.elapsed(), i % 2 == 1));
                    } else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    up.abort();
    let _ = (&mut up).await;
    let killed = start.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _up = backend(port);
    let back = start.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = p.status().await;
    stop.store(1, Ordering::SeqCst);
    for c in clients {
        let _ = c.await;
    }
    let oks = oks.lock().unwrap().clone();
    let rate = |from: Duration, to: Duration| {
        oks.iter().filter(|(t, _)| *t >= from && *t < to).count() as f64 / (to - from).as_secs_f64()
    };
    let before = rate(killed - Duration::from_secs(1), killed);
    let down = rate(killed + Duration::from_millis(500), back);
    // After the return, the first 250 ms bucket at 80 % of the rate before the kill.
    let recovered_at = (0..20)
        .map(|k| back + Duration::from_millis(250 * k))
        .find(|t| rate(*t, *t + Duration::from_millis(250)) >= 0.8 * before)
        .map(|t| t - back);
    assert!(before > 50.0, "served before the kill: {before}/s");
    assert_eq!(down, 0.0, "nothing is served while the backend is down");
    let recovered_at = recovered_at.unwrap_or_else(|| panic!("never back to {before}/s"));
    assert!(
        recovered_at <= Duration::from_secs(2),
        "back to the rate before the kill after {recovered_at:?}"
    );
    // The low stage (0.5) is open again: the ramp climbed back, it did not start over.
    let low_back = oks
        .iter()
        .any(|(t, low)| *low && *t > back + Duration::from_secs(2));
    assert!(low_back, "recommend (low) served again: {st}");
    assert!(
        st["controller"]["progress"].as_f64().unwrap() >= 0.5,
        "{st}"
    );
    p.stop().await;
}
