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
                    // 25 ms: a busy machine's scheduling noise is small beside it (it would
                    // read as queueing at 5 ms and hold the limit down).
                    tokio::time::sleep(Duration::from_millis(25)).await;
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
    let downs: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let stop = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let path = if i % 2 == 0 {
                "/api/feed"
            } else {
                "/api/recommend"
            };
            let (url, oks, downs, stop) = (p.url(path), oks.clone(), downs.clone(), stop.clone());
            tokio::spawn(async move {
                let client = h1();
                let user = format!("u{i}");
                while stop.load(Ordering::SeqCst) == 0 {
                    let (r, body) =
                        send(&client, "GET", &url, &[("x-user", &user)], full("")).await;
                    if r.status() == 200 {
                        oks.lock().unwrap().push((start.elapsed(), i % 2 == 1));
                    } else {
                        if String::from_utf8_lossy(&body).contains("upstream down") {
                            downs.lock().unwrap().push(start.elapsed());
                        }
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
    // Once the outage is established, one probe at a time: the line is not drained into
    // refused connections (16 clients retrying every 20 ms would meet ~800 a second).
    let refused = downs
        .lock()
        .unwrap()
        .iter()
        .filter(|t| **t >= killed + Duration::from_secs(1) && **t < back)
        .count();
    eprintln!("upstream-down answers in the 2 s of outage after the first second: {refused}");
    assert!(refused <= 40, "{refused} requests sent to a dead backend");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_stop_reading_a_download_hold_no_backend_slot() {
    use tokio::io::AsyncWriteExt;
    // /download is 200 MB, streamed; everything else a small answer.
    let up = upstream(Arc::new(|req| {
        Box::pin(async move {
            if req.uri().path() == "/download" {
                let chunk = bytes::Bytes::from(vec![0u8; 64 * 1024]);
                Response::builder().body(chunks(chunk, 3200)).unwrap()
            } else {
                Response::builder().body(full("ok")).unwrap()
            }
        })
    }))
    .await;
    let p = proxy(&format!(
        "[upstream]\nendpoints = [\"{}\"]\n[limit]\nmode = \"fixed\"\nfull_capacity = 24\n[queue]\nmax_wait = {{ critical = \"3s\", normal = \"3s\" }}\n[server]\nsend_timeout = \"30s\"\n[client_key]\nheader = \"x-user\"\n[gate]\nper_client_share = 1.0\n[[feature]]\nname = \"login\"\npriority = \"critical\"\n[[route]]\nfeature = \"login\"\npath_prefix = \"/api/login\"\n",
        up.addr
    ))
    .await;
    // 24 clients start a download and never read it: every slot is theirs.
    let mut stalled = Vec::new();
    for i in 0..24 {
        let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        let head = format!("GET /download HTTP/1.1\r\nhost: x\r\nx-user: d{i}\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.status().await["signals"]["inflight"], 24);
    // 30 logins: each answered, once the stalled downloads give their slots up
    // (server.stall_release, 1 s by default; with it off they would wait out the line).
    let t = Instant::now();
    let logins: Vec<_> = (0..30)
        .map(|i| {
            let url = p.url("/api/login");
            tokio::spawn(async move {
                let user = format!("l{i}");
                get(&url, &[("x-user", &user)]).await.0.status().as_u16()
            })
        })
        .collect();
    let mut ok = 0;
    for l in logins {
        if l.await.unwrap() == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 30, "every login answered");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    // Every stalled download gives its slot up (the send timeout, not the release, will end
    // the connections); the logins above needed only the first few.
    let released = || async {
        let m = get(&format!("http://{}/metrics", p.admin), &[]).await.1;
        String::from_utf8_lossy(&m)
            .lines()
            .find_map(|l| l.strip_prefix("warmgate_stalled_responses_released_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap()
    };
    let mut last = (0, serde_json::Value::Null);
    for _ in 0..30 {
        last = (
            released().await,
            p.status().await["signals"]["inflight"].clone(),
        );
        if last.0 == 24 && last.1 == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(last.0, 24, "released: {last:?}");
    assert_eq!(last.1, 0, "in flight: {last:?}");
    drop(stalled);
    p.stop().await;
}

/// A body of `n` copies of `chunk`, made as it is read.
fn chunks(chunk: bytes::Bytes, n: usize) -> Body {
    use http_body_util::BodyExt;
    struct Chunks(bytes::Bytes, usize);
    impl http_body::Body for Chunks {
        type Data = bytes::Bytes;
        type Error = hyper::Error;
        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>>
        {
            if self.1 == 0 {
                return std::task::Poll::Ready(None);
            }
            self.1 -= 1;
            std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(self.0.clone()))))
        }
    }
    Chunks(chunk, n).boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_answers_503_for_a_while_is_served_again_when_it_recovers() {
    // Answers 503 while `failing` is set, 200 otherwise.
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = failing.clone();
    let up = upstream(Arc::new(move |_req| {
        let failing = f.load(Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(25)).await;
            let status = if failing { 503 } else { 200 };
            Response::builder()
                .status(status)
                .header("x-cache", "HIT")
                .body(full("x"))
                .unwrap()
        })
    }))
    .await;
    let p = proxy(&format!(
        "[upstream]\nendpoints = [\"{}\"]\n[ramp]\ntick = \"50ms\"\n[client_key]\nheader = \"x-user\"\n[gate]\nper_client_share = 1.0\n",
        up.addr
    ))
    .await;
    let start = Instant::now();
    let oks: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let stop = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (url, oks, stop) = (p.url("/"), oks.clone(), stop.clone());
            tokio::spawn(async move {
                let client = h1();
                let user = format!("c{i}");
                while stop.load(Ordering::SeqCst) == 0 {
                    let (r, _) = send(&client, "GET", &url, &[("x-user", &user)], full("")).await;
                    if r.status() == 200 {
                        oks.lock().unwrap().push(start.elapsed());
                    } else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    failing.store(true, Ordering::SeqCst);
    let failed_at = start.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    failing.store(false, Ordering::SeqCst);
    let back = start.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(1, Ordering::SeqCst);
    for c in clients {
        let _ = c.await;
    }
    let oks = oks.lock().unwrap().clone();
    let rate = |from: Duration, to: Duration| {
        oks.iter().filter(|t| **t >= from && **t < to).count() as f64 / (to - from).as_secs_f64()
    };
    let before = rate(failed_at - Duration::from_secs(1), failed_at);
    assert!(before > 100.0, "{before}/s before");
    assert_eq!(rate(failed_at + Duration::from_millis(200), back), 0.0);
    let recovered_at = (0..12)
        .map(|k| back + Duration::from_millis(250 * k))
        .find(|t| rate(*t, *t + Duration::from_millis(250)) >= 0.8 * before)
        .map(|t| t - back);
    let recovered_at = recovered_at.unwrap_or_else(|| panic!("never back to {before}/s"));
    assert!(recovered_at <= Duration::from_secs(2), "{recovered_at:?}");
    let st = p.status().await;
    assert_ne!(st["controller"]["state"], "backing_off", "{st}");
    p.stop().await;
}
