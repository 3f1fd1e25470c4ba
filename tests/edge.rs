//! The edge against broken and hostile clients: strict HTTP, client faults kept out of the
//! backend's health, a timer on every phase, budgets, and WebSocket tunnels.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn open(upstream: &str, extra: &str) -> String {
    format!(
        "{extra}\n[upstream]\nendpoints = [\"{upstream}\"]\n[limit]\nmode = \"fixed\"\nfull_capacity = 1000\n"
    )
}

/// Writes `bytes` on a new connection and reads until the server closes it or `wait` passes.
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// An upstream that answers with the Host it received.
async fn host_echo() -> Upstream {
    upstream(Arc::new(|req| {
        Box::pin(async move {
            let host = req
                .headers()
                .get_all("host")
                .iter()
                .map(|v| v.to_str().unwrap_or("?").to_string())
                .collect::<Vec<_>>()
                .join("|");
            let xff = req
                .headers()
                .get("x-forwarded-for")
                .map(|v| v.to_str().unwrap_or("?").to_string())
                .unwrap_or_default();
            let xfh = req
                .headers()
                .get("x-forwarded-host")
                .map(|v| v.to_str().unwrap_or("?").to_string())
                .unwrap_or_default();
            Response::new(full(format!("host={host} xff={xff} xfh={xfh}")))
        })
    }))
    .await
}

#[tokio::test]
async fn hosts_are_required_single_and_valid_and_an_absolute_target_wins() {
    let up = host_echo().await;
    let p = proxy(&open(&up.addr.to_string(), "")).await;
    let w = Duration::from_secs(3);
    for (req, want) in [
        ("GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400"),
        (
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "HTTP/1.1 400",
        ),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "HTTP/1.1 400"),
        ("GET / HTTP/1.1\r\nHost: user@evil\r\n\r\n", "HTTP/1.1 400"),
        (
            "CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
            "HTTP/1.1 405",
        ),
        ("TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 405"),
    ] {
        let got = exchange(p.addr, req.as_bytes(), w).await;
        assert!(got.starts_with(want), "{req:?}: {got}");
    }
    assert_eq!(up.hits(), 0, "none of them reached the upstream");

    let got = exchange(
        p.addr,
        b"GET http://real.example/x HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
        w,
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        got.contains("host=real.example "),
        "the target's authority wins: {got}"
    );
    // HTTP/1.0 may leave Host out.
    let got = exchange(p.addr, b"GET / HTTP/1.0\r\n\r\n", w).await;
    assert!(got.starts_with("HTTP/1.0 200"), "{got}");
    p.stop().await;
}

#[tokio::test]
async fn forwarding_headers_from_an_untrusted_client_are_replaced() {
    let up = host_echo().await;
    let p = proxy(&open(&up.addr.to_string(), "")).await;
    let (resp, body) = get(
        &p.url("/"),
        &[
            ("host", "app.example"),
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-host", "admin.internal"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("xff=127.0.0.1 "), "{body}");
    assert!(body.ends_with("xfh=app.example"), "{body}");
    p.stop().await;
}

/// An HTTP/2 request's `:authority` is its Host on the way out (it wins over a `host` field),
/// kept as Host with `preserve_host` and as `X-Forwarded-Host` either way.
#[tokio::test]
async fn an_h2_authority_is_forwarded_as_the_host() {
    let up = host_echo().await;
    for preserve in [true, false] {
        let p = proxy(&format!(
            "[upstream]\nendpoints = [\"{}\"]\npreserve_host = {preserve}\n[limit]\nmode = \"fixed\"\nfull_capacity = 1000\n",
            up.addr
        ))
        .await;
        let authority = p.addr.to_string();
        for fields in [&[][..], &[("host", "other.example")][..]] {
            let (resp, body) = send(&h2(), "GET", &p.url("/"), fields, full(Bytes::new())).await;
            assert_eq!(resp.status(), 200);
            let body = String::from_utf8_lossy(&body);
            let host = if preserve {
                authority.clone()
            } else {
                up.addr.to_string()
            };
            assert!(
                body.starts_with(&format!("host={host} ")),
                "preserve_host = {preserve}, {fields:?}: {body}"
            );
            assert!(body.ends_with(&format!("xfh={authority}")), "{body}");
        }
        p.stop().await;
    }
}

#[tokio::test]
async fn a_malformed_chunked_body_is_a_400() {
    let up = upstream(Arc::new(|req| {
        Box::pin(async move {
            let _ = req.into_body().collect().await;
            Response::new(full("ok"))
        })
    }))
    .await;
    let p = proxy(&open(&up.addr.to_string(), "")).await;
    let got = exchange(
        p.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        Duration::from_secs(3),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    let st = p.status().await;
    assert!(
        st["signals"]["error_rate"].is_null() || st["signals"]["error_rate"] == 0.0,
        "{st}"
    );
    p.stop().await;
}

#[tokio::test]
async fn an_idle_keepalive_connection_outlives_the_head_timeout_and_a_slow_head_gets_a_408() {
    let up = ok_upstream(Duration::ZERO).await;
    let p = proxy(&open(
        &up.addr.to_string(),
        "[server]\nclient_header_timeout = \"300ms\"\nkeepalive_timeout = \"1500ms\"",
    ))
    .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let mut buf = [0u8; 4096];
    for _ in 0..2 {
        assert!(get_on(&mut s).await.starts_with(b"HTTP/1.1 200"));
        // Idle for longer than the head timeout: still open.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Idle past the keep-alive timeout: closed quietly.
    let t = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a response");
    assert!(t.elapsed() < Duration::from_secs(2));

    // A head that starts and stalls: 408 after the head timeout.
    let t = Instant::now();
    let got = exchange(
        p.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        Duration::from_secs(5),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(t.elapsed() < Duration::from_secs(2));
    p.stop().await;
}

/// An upstream that reads the whole body, then answers with its length.
async fn body_counter() -> Upstream {
    upstream(Arc::new(|req| {
        Box::pin(async move {
            let n = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .unwrap_or(0);
            Response::new(full(n.to_string()))
        })
    }))
    .await
}

#[tokio::test]
async fn a_slow_upload_is_not_an_upstream_timeout_and_a_stalled_one_is_a_408() {
    let up = body_counter().await;
    let p = proxy(
        &open(
            &up.addr.to_string(),
            "[server]\nclient_body_timeout = \"400ms\"\n[upstream.x]\n",
        )
        .replace("[upstream.x]\n", "")
        .replace(
            "[upstream]\n",
            "[upstream]\nresponse_header_timeout = \"300ms\"\neject_after_failures = 1\n",
        ),
    )
    .await;
    // Ten chunks, 150 ms apart: 1.5 s of upload, each gap under the body timeout.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        s.write_all(b"x").await.unwrap();
    }
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("10"), "{text}");

    // A body that stops: 408, and the endpoint is not blamed.
    let t = Instant::now();
    let got = exchange(
        p.addr,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
        Duration::from_secs(5),
    )
    .await;
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(t.elapsed() < Duration::from_secs(2));
    let st = p.status().await;
    assert_eq!(st["endpoints"][0]["ejected"], false, "{st}");
    assert!(
        st["signals"]["error_rate"].is_null() || st["signals"]["error_rate"] == 0.0,
        "{st}"
    );
    // Still served.
    assert_eq!(get(&p.url("/"), &[]).await.0.status(), 200);
    p.stop().await;
}

#[tokio::test]
async fn oversized_heads_get_a_431() {
    let up = ok_upstream(Duration::ZERO).await;
    let p = proxy(&open(
        &up.addr.to_string(),
        "[server]\nmax_header_bytes = 16384\nmax_headers = 20",
    ))
    .await;
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let got = exchange(p.addr, big.as_bytes(), Duration::from_secs(3)).await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    let mut many = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
    for i in 0..30 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let got = exchange(p.addr, many.as_bytes(), Duration::from_secs(3)).await;
    assert!(got.starts_with("HTTP/1.1 431"), "{got}");
    assert_eq!(up.hits(), 0);
    p.stop().await;
}

#[tokio::test]
async fn at_the_connection_cap_new_clients_wait_for_a_free_slot() {
    let up = ok_upstream(Duration::ZERO).await;
    let p = proxy(&open(&up.addr.to_string(), "[server]\nmax_connections = 2")).await;
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    // The third is accepted by the kernel but not served while two are open.
    let mut third = TcpStream::connect(p.addr).await.unwrap();
    third.write_all(req).await.unwrap();
    let mut buf = [0u8; 1024];
    let waited = tokio::time::timeout(Duration::from_millis(400), third.read(&mut buf)).await;
    assert!(waited.is_err(), "served past the cap");
    let (_, m) = get(&format!("http://{}/metrics", p.admin), &[]).await;
    let m = String::from_utf8_lossy(&m);
    assert!(m.contains("warmgate_client_connections 2"), "{m}");
    assert!(
        !m.contains("warmgate_connection_cap_reached_total 0"),
        "{m}"
    );
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(3), third.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "served once a slot freed"
    );
    p.stop().await;
}

/// An upstream that accepts a WebSocket-style upgrade and echoes bytes back, upper-cased.
async fn upgrade_echo() -> Upstream {
    upstream(Arc::new(|mut req| {
        Box::pin(async move {
            let on = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(up) = on.await else { return };
                let mut io = hyper_util::rt::TokioIo::new(up);
                let mut buf = [0u8; 64];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let upper = buf[..n].to_ascii_uppercase();
                    if io.write_all(&upper).await.is_err() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(101)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
                .body(full(Bytes::new()))
                .unwrap()
        })
    }))
    .await
}

#[tokio::test]
async fn a_websocket_upgrade_becomes_a_tunnel_that_holds_no_slot() {
    let up = upgrade_echo().await;
    let p = proxy(
        &open(
            &up.addr.to_string(),
            "[server]\nwebsocket_idle_timeout = \"500ms\"",
        )
        .replace("full_capacity = 1000", "full_capacity = 1"),
    )
    .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(
        b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );
    s.write_all(b"hello").await.unwrap();
    let mut echo = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut echo))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo, b"HELLO");
    // The limit is one request in flight; the open tunnel does not take it.
    assert_eq!(get(&p.url("/plain"), &[]).await.0.status(), 101);
    let (_, m) = get(&format!("http://{}/metrics", p.admin), &[]).await;
    assert!(String::from_utf8_lossy(&m).contains("warmgate_websocket_tunnels 1"));
    // Idle past the tunnel's timeout: closed.
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    p.stop().await;
}

#[tokio::test]
async fn streams_reset_right_after_they_open_do_not_grow_the_upstream_pool_unbounded() {
    // An upstream that counts the connections it accepts and answers after 300 ms.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, std::convert::Infallible>(Response::new(full("ok")))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let p = proxy(
        &open(&up_addr.to_string(), "[upstream.x]\n")
            .replace("[upstream.x]\n", "")
            .replace("[upstream]\n", "[upstream]\nconnect_rate = 20\n"),
    )
    .await;
    // One h2 connection; 300 streams, each reset 20 ms after it opens.
    let tcp = TcpStream::connect(p.addr).await.unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..300 {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::builder()
                .uri(format!("http://x/r{i}"))
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap();
            let _ = tokio::time::timeout(Duration::from_millis(20), send.send_request(req)).await;
        }));
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let secs = started.elapsed().as_secs_f64();
    let opened = accepted.load(std::sync::atomic::Ordering::Relaxed);
    // A burst of 20, then 20 a second.
    assert!(
        (opened as f64) <= 20.0 + 20.0 * secs + 2.0,
        "{opened} upstream connections in {secs:.1} s"
    );
    p.stop().await;
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The frames in an HTTP/2 byte stream, as (type, payload).
fn h2_frames(mut b: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while b.len() >= 9 {
        let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
        if b.len() < 9 + len {
            break;
        }
        out.push((b[3], b[9..9 + len].to_vec()));
        b = &b[9 + len..];
    }
    out
}

#[tokio::test]
async fn settings_and_ping_floods_get_goaway_enhance_your_calm() {
    let up = ok_upstream(Duration::ZERO).await;
    let p = proxy(&open(&up.addr.to_string(), "")).await;
    for kind in [0x4u8, 0x6] {
        let mut s = TcpStream::connect(p.addr).await.unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(h2_frame(0x4, 0, 0, &[]));
        let payload: &[u8] = if kind == 0x6 { &[0; 8] } else { &[] };
        for _ in 0..3000 {
            out.extend(h2_frame(kind, 0, 0, payload));
        }
        // The peer may close before it has read everything: ignore write errors.
        let _ = s.write_all(&out).await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        let frames = h2_frames(&got);
        let goaway = frames.iter().find(|(t, _)| *t == 0x7);
        let code = goaway.map(|(_, p)| u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        assert_eq!(
            code,
            Some(0xb),
            "frame type {kind}: GOAWAY ENHANCE_YOUR_CALM"
        );
        let acks = frames.iter().filter(|(t, _)| *t == kind).count();
        assert!(acks <= 1100, "{acks} acknowledgements");
    }
    // Ordinary h2 traffic is unaffected.
    let (resp, _) = send(&h2(), "GET", &p.url("/"), &[], full(Bytes::new())).await;
    assert_eq!(resp.status(), 200);
    p.stop().await;
}

#[tokio::test]
async fn one_client_cannot_take_the_whole_limit_while_others_wait() {
    let up = ok_upstream(Duration::from_millis(400)).await;
    let p = proxy(
        &open(&up.addr.to_string(), "[client_key]\nheader = \"x-user\"")
            .replace("full_capacity = 1000", "full_capacity = 4"),
    )
    .await;
    let ask = |user: &'static str, url: String| {
        tokio::spawn(async move {
            let (resp, body) = get(&url, &[("x-user", user)]).await;
            (
                resp.status().as_u16(),
                String::from_utf8_lossy(&body).into_owned(),
            )
        })
    };
    // The hog fills the limit; alice waits in line.
    let hog: Vec<_> = (0..4).map(|_| ask("hog", p.url("/"))).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let alice = ask("alice", p.url("/"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    // More from the hog would wait ahead of alice (it arrived first): refused instead.
    let more: Vec<_> = (0..4).map(|_| ask("hog", p.url("/"))).collect();
    for m in more {
        let (status, body) = m.await.unwrap();
        assert_eq!(status, 429, "{body}");
        assert!(body.contains("\"reason\":\"client_limit\""), "{body}");
    }
    let (status, _) = alice.await.unwrap();
    assert_eq!(status, 200);
    for h in hog {
        assert_eq!(h.await.unwrap().0, 200);
    }
    p.stop().await;
}

#[tokio::test]
async fn a_client_over_its_own_rate_budget_gets_429_and_others_do_not() {
    let up = ok_upstream(Duration::ZERO).await;
    let p = proxy(&open(
        &up.addr.to_string(),
        "[client_key]\nheader = \"x-user\"\n[gate]\nper_client_rate = 2\nper_client_burst = 5",
    ))
    .await;
    let mut statuses = Vec::new();
    let mut afters = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (resp, body) = get(&p.url("/"), &[("x-user", "abuser")]).await;
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            assert!(
                String::from_utf8_lossy(&body).contains("\"reason\":\"client_rate\""),
                "{body:?}"
            );
            afters.insert(resp.headers()["retry-after"].to_str().unwrap().to_string());
        }
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    // The burst of 5, and perhaps one or two refilled while the 40 went by.
    assert!((5..=7).contains(&ok), "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 40 - ok);
    assert!(afters.len() >= 2, "the Retry-After is jittered: {afters:?}");
    let (resp, _) = get(&p.url("/"), &[("x-user", "someone-else")]).await;
    assert_eq!(resp.status(), 200, "another client has its own budget");
    p.stop().await;
}

/// An upstream that records the path of every request it receives.
async fn path_log() -> (Upstream, Arc<std::sync::Mutex<Vec<String>>>) {
    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
    let l = Arc::clone(&log);
    let up = upstream(Arc::new(move |req| {
        let l = Arc::clone(&l);
        Box::pin(async move {
            l.lock().unwrap().push(req.uri().path().to_string());
            let _ = req.into_body().collect().await;
            Response::new(full("ok"))
        })
    }))
    .await;
    (up, log)
}

#[tokio::test]
async fn request_smuggling_payloads_never_reach_the_upstream_as_a_second_request() {
    let (up, log) = path_log().await;
    let p = proxy(&open(&up.addr.to_string(), "")).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let payloads = [
        // CL.TE and TE.CL
        format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n{smuggled}"),
        // Two Content-Lengths that disagree
        format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n{smuggled}"),
        // Obfuscated Transfer-Encoding
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
        // Obsolete line folding
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{smuggled}"),
        // A chunk size with an extension hiding data, and an oversized chunk size
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0;x=\"\r\n\r\n{smuggled}\"\r\n\r\n"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF\r\n\r\n{smuggled}"),
        // Bare LF line ends
        format!("POST / HTTP/1.1\nHost: x\nContent-Length: 4\nTransfer-Encoding: chunked\n\n0\n\n{smuggled}"),
    ];
    // What the upstream saw must be exactly what warmgate answered with the upstream's
    // responses: one upstream request per 200 on the client connection, no more (a request
    // hidden in a body and parsed by the upstream as its own would be one more).
    for payload in &payloads {
        let before = log.lock().unwrap().len();
        let got = exchange(p.addr, payload.as_bytes(), Duration::from_millis(500)).await;
        assert!(
            got.is_empty() || got.starts_with("HTTP/1.1 "),
            "{payload:?}: {got}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let seen = log.lock().unwrap()[before..].to_vec();
        let answered = got.matches("HTTP/1.1 200 ").count();
        assert_eq!(
            seen.len(),
            answered,
            "{payload:?}: upstream saw {seen:?}, client got {got}"
        );
    }
    p.stop().await;
}

#[tokio::test]
async fn rapid_reset_is_cut_off_and_the_proxy_keeps_serving() {
    let up = ok_upstream(Duration::from_millis(50)).await;
    let p = proxy(&open(&up.addr.to_string(), "")).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    // GET / with :authority x (HPACK static indices, one literal), then RST_STREAM (CANCEL).
    let headers = [0x82, 0x86, 0x84, 0x41, 0x01, b'x'];
    for i in 0..5000u32 {
        let id = 2 * i + 1;
        out.extend(h2_frame(0x1, 0x5, id, &headers));
        out.extend(h2_frame(0x3, 0, id, &8u32.to_be_bytes()));
    }
    let _ = s.write_all(&out).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    let frames = h2_frames(&got);
    let goaway = frames.iter().find(|(t, _)| *t == 0x7);
    assert!(goaway.is_some(), "the connection was told to go away");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        up.hits() < 5000,
        "{} of 5000 reset streams reached the upstream",
        up.hits()
    );
    let (resp, _) = send(&h2(), "GET", &p.url("/"), &[], full(Bytes::new())).await;
    assert_eq!(resp.status(), 200);
    p.stop().await;
}

#[tokio::test]
async fn the_access_log_has_a_line_per_request_and_499_for_a_client_that_left() {
    let up = ok_upstream(Duration::from_millis(400)).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let p = proxy(&open(
        &up.addr.to_string(),
        &format!("[log]\naccess = \"{}\"", log.display()),
    ))
    .await;
    let (resp, _) = get(&p.url("/ok"), &[]).await;
    assert_eq!(resp.status(), 200);
    let got = exchange(p.addr, b"GET / HTTP/1.1\r\n\r\n", Duration::from_secs(2)).await;
    assert!(got.starts_with("HTTP/1.1 400"));
    // A client that gives up before the answer.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    let by_path = |p: &str| lines.iter().find(|l| l["path"] == p).unwrap().clone();
    let ok = by_path("/ok");
    assert_eq!(
        (ok["status"].as_u64(), ok["outcome"].as_str()),
        (Some(200), Some("forwarded"))
    );
    assert!(ok["upstream_ms"].as_f64().unwrap() >= 350.0, "{ok}");
    assert_eq!(ok["feature"], "default");
    assert_eq!(by_path("/")["status"], 400);
    let gone = by_path("/gone");
    assert_eq!(
        (gone["status"].as_u64(), gone["outcome"].as_str()),
        (Some(499), Some("client_closed"))
    );
    p.stop().await;
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed_with_a_goaway() {
    let up = ok_upstream(Duration::ZERO).await;
    let p = proxy(&open(
        &up.addr.to_string(),
        "[server]\nkeepalive_timeout = \"500ms\"",
    ))
    .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    s.write_all(&out).await.unwrap();
    // Read frames until a GOAWAY (hyper then pings and closes once the client answers).
    let t = Instant::now();
    let mut got = Vec::new();
    let code = loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break None,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if let Some((_, p)) = h2_frames(&got).iter().find(|(t, _)| *t == 0x7) {
            break Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "no GOAWAY after the keep-alive timeout"
        );
    };
    assert_eq!(code, Some(0), "GOAWAY NO_ERROR: {:?}", h2_frames(&got));
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "not before the keep-alive timeout"
    );
    drop(s);
    p.stop().await;
}

/// HPACK: a header as a literal without indexing, new name (RFC 7541 §6.2.2), short strings.
fn hpack_literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
    out
}

/// Sends `frames` after the preface and SETTINGS; returns the frames read within `wait`.
async fn h2_exchange(
    addr: std::net::SocketAddr,
    frames: &[Vec<u8>],
    wait: Duration,
) -> Vec<(u8, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[]));
    for f in frames {
        out.extend_from_slice(f);
    }
    let _ = s.write_all(&out).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut got)).await;
    h2_frames(&got)
}

#[tokio::test]
async fn h2_protocol_violations_never_reach_the_upstream() {
    let (up, log) = path_log().await;
    let p = proxy(&open(&up.addr.to_string(), "")).await;
    // :method POST, :scheme http, :path /, :authority x (static indices + one literal).
    let post = |extra: &[(&str, &str)]| {
        let mut h = vec![0x83, 0x86, 0x84, 0x41, 0x01, b'x'];
        for (n, v) in extra {
            h.extend(hpack_literal(n, v));
        }
        h
    };
    let wait = Duration::from_millis(700);
    // H2.TE: a connection-specific header is malformed in HTTP/2.
    let f = h2_exchange(
        p.addr,
        &[
            h2_frame(0x1, 0x4, 1, &post(&[("transfer-encoding", "chunked")])),
            h2_frame(0x0, 0x1, 1, b"0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"),
        ],
        wait,
    )
    .await;
    assert!(
        f.iter().any(|(t, _)| *t == 0x3 || *t == 0x7),
        "reset or GOAWAY: {f:?}"
    );
    // H2.CL: a content-length that disagrees with the DATA sent.
    let f = h2_exchange(
        p.addr,
        &[
            h2_frame(0x1, 0x4, 1, &post(&[("content-length", "0")])),
            h2_frame(0x0, 0x1, 1, b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
        ],
        wait,
    )
    .await;
    let answered_400 = f.iter().any(|(t, p)| *t == 0x1 && p.first() == Some(&0x8c));
    assert!(
        answered_400 || f.iter().any(|(t, _)| *t == 0x3 || *t == 0x7),
        "a 400, a reset or a GOAWAY: {f:?}"
    );
    // An upper-case header name is malformed in HTTP/2.
    let f = h2_exchange(
        p.addr,
        &[h2_frame(0x1, 0x5, 1, &post(&[("X-Upper", "1")]))],
        wait,
    )
    .await;
    assert!(
        f.iter().any(|(t, _)| *t == 0x3 || *t == 0x7),
        "reset or GOAWAY: {f:?}"
    );
    // DATA on stream 0 is a connection error.
    let f = h2_exchange(p.addr, &[h2_frame(0x0, 0x0, 0, b"x")], wait).await;
    assert!(f.iter().any(|(t, _)| *t == 0x7), "GOAWAY: {f:?}");
    // A bad preface is not served.
    let got = exchange(p.addr, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", wait).await;
    assert!(!got.contains("200"), "{got}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = log.lock().unwrap().clone();
    assert!(!seen.iter().any(|p| p == "/smuggled"), "{seen:?}");
    // The proxy still serves HTTP/2.
    let (resp, _) = send(&h2(), "GET", &p.url("/"), &[], full(Bytes::new())).await;
    assert_eq!(resp.status(), 200);
    p.stop().await;
}

/// An HTTP/1 connection idle for a second is parked (its session buffers freed): it still
/// answers its next requests, a slow head on it still gets a 408, and the keep-alive timeout
/// counts from its last answer, not from the park.
#[tokio::test]
async fn an_idle_connection_is_parked_and_still_serves_and_times_out() {
    let up = ok_upstream(Duration::ZERO).await;
    let p = proxy(&open(
        &up.addr.to_string(),
        "[server]\nclient_header_timeout = \"500ms\"\nkeepalive_timeout = \"2500ms\"",
    ))
    .await;
    let parked = || async {
        let (_, m) = get(&format!("http://{}/metrics", p.admin), &[]).await;
        let m = String::from_utf8_lossy(&m).to_string();
        m.lines()
            .find_map(|l| l.strip_prefix("warmgate_client_connections_parked "))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let mut buf = [0u8; 4096];
    for round in 0..3 {
        assert!(
            get_on(&mut s).await.starts_with(b"HTTP/1.1 200"),
            "round {round}"
        );
        assert_eq!(parked().await, "0", "busy a moment ago: not parked");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(parked().await, "1", "idle for 1.5 s: parked");
    }
    // A head sent in two parts to the parked connection: the first part unparks it, the
    // second never comes, and the head timeout answers.
    s.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut got)).await;
    assert!(
        got.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(t.elapsed() < Duration::from_millis(1500));

    // Parked, then closed quietly at the keep-alive timeout counted from the last answer.
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    assert!(get_on(&mut s).await.starts_with(b"HTTP/1.1 200"));
    let t = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(6), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a response");
    let waited = t.elapsed();
    assert!(
        waited > Duration::from_millis(2000) && waited < Duration::from_millis(3500),
        "{waited:?}"
    );
    assert_eq!(parked().await, "0");
    p.stop().await;

    // Shutdown closes a parked connection at once: the drain does not wait for its keep-alive
    // timeout.
    let p = proxy(&open(
        &up.addr.to_string(),
        "[server]\nkeepalive_timeout = \"60s\"",
    ))
    .await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    assert!(get_on(&mut s).await.starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t = Instant::now();
    p.stop().await;
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "closed on shutdown");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

/// One `GET /` on a kept-alive raw connection: the first read of its answer.
async fn get_on(s: &mut TcpStream) -> Vec<u8> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    buf[..n].to_vec()
}
