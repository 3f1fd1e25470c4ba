//! The reverse-proxy core on real loopback sockets: round trips, streaming, header hygiene,
//! upstream failures, passive health, timeouts, malformed input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Open ramp: everything admitted from the start, so these tests see the proxy alone.
fn open_config(endpoints: &str, extra: &str) -> String {
    format!(
        "[upstream]\nendpoints = [{endpoints}]\n{extra}\n[limit]\nmode = \"fixed\"\nfull_capacity = 1000\n"
    )
}

/// An upstream that echoes the request headers it received as `name: value` lines.
async fn echo_headers() -> Upstream {
    upstream(Arc::new(|req| {
        Box::pin(async move {
            let mut out = format!("version: {:?}\n", req.version());
            for (k, v) in req.headers() {
                out.push_str(&format!("{}: {}\n", k, v.to_str().unwrap_or("?")));
            }
            Response::builder()
                .header("connection", "x-up-private")
                .header("x-up-private", "1")
                .header("keep-alive", "timeout=5")
                .body(full(out))
                .unwrap()
        })
    }))
    .await
}

#[tokio::test]
async fn h1_round_trip_with_header_hygiene() {
    let up = echo_headers().await;
    // The test client is a trusted proxy here: its X-Forwarded-For chain is extended.
    let p = proxy(&format!(
        "[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n{}",
        open_config(&format!("\"{}\"", up.addr), "")
    ))
    .await;
    let (resp, body) = get(
        &p.url("/hello?x=1"),
        &[
            ("host", "app.example"),
            ("connection", "x-private"),
            ("x-private", "secret"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("x-forwarded-for", "192.0.2.7"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("host: app.example\n"),
        "Host preserved: {body}"
    );
    assert!(
        body.contains("x-forwarded-for: 192.0.2.7, 127.0.0.1\n"),
        "{body}"
    );
    assert!(body.contains("x-forwarded-proto: http\n"), "{body}");
    assert!(body.contains("x-forwarded-host: app.example\n"), "{body}");
    assert!(body.contains("via: 1.1 warmgate\n"), "{body}");
    for gone in ["x-private", "proxy-authorization", "te:", "connection"] {
        assert!(!body.contains(gone), "{gone} forwarded: {body}");
    }
    assert!(
        resp.headers().get("x-up-private").is_none(),
        "response hop-by-hop stripped"
    );
    assert!(resp.headers().get("keep-alive").is_none());
    assert_eq!(resp.headers()["via"], "1.1 warmgate");
    assert_eq!(up.hits(), 1);
    p.stop().await;
}

#[tokio::test]
async fn h2c_round_trip() {
    let up = echo_headers().await;
    let p = proxy(&open_config(&format!("\"{}\"", up.addr), "")).await;
    let (resp, body) = send(&h2(), "GET", &p.url("/h2"), &[], full(Bytes::new())).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("version: HTTP/1.1"),
        "h1 to the upstream: {body}"
    );
    assert!(
        body.contains(&format!("host: {}", p.addr)),
        "authority became Host: {body}"
    );
    p.stop().await;
}

/// h2c uploads on both sides of the size read in full before sending (16 KiB): each reaches the
/// upstream whole, with its length.
#[tokio::test]
async fn h2c_uploads_reach_the_upstream_whole_with_their_length() {
    let up = upstream(Arc::new(|req| {
        Box::pin(async move {
            let cl = req.headers().get("content-length").cloned();
            let te = req.headers().get("transfer-encoding").cloned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            Response::new(full(format!("{cl:?} {te:?} {}", body.len())))
        })
    }))
    .await;
    let p = proxy(&open_config(&format!("\"{}\"", up.addr), "")).await;
    for n in [5, 16 * 1024, 16 * 1024 + 1, 100_000] {
        let body = full(vec![b'x'; n]);
        let (resp, got) = send(&h2(), "POST", &p.url("/up"), &[], body).await;
        assert_eq!(resp.status(), 200, "{n}");
        assert_eq!(
            String::from_utf8_lossy(&got),
            format!("Some({:?}) None {n}", n.to_string()),
            "{n}"
        );
    }
    p.stop().await;
}

#[tokio::test]
async fn h2c_to_the_upstream() {
    let up = echo_headers().await;
    let p = proxy(&open_config(
        &format!("\"{}\"", up.addr),
        "protocol = \"h2c\"",
    ))
    .await;
    let (resp, body) = get(&p.url("/"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert!(String::from_utf8_lossy(&body).contains("version: HTTP/2.0"));
    p.stop().await;
}

const BIG: u64 = 32 * 1024 * 1024;

#[tokio::test]
async fn large_bodies_stream_both_ways() {
    // Upload: the upstream counts what arrives. Download: it streams BIG bytes in chunks.
    let up = upstream(Arc::new(|req| {
        Box::pin(async move {
            if req.uri().path() == "/upload" {
                let mut n = 0u64;
                let mut body = req.into_body();
                while let Some(Ok(f)) = body.frame().await {
                    if let Some(d) = f.data_ref() {
                        n += d.len() as u64;
                    }
                }
                Response::new(full(n.to_string()))
            } else {
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                Response::new(chunks(chunk, BIG))
            }
        })
    }))
    .await;
    let p = proxy(&open_config(&format!("\"{}\"", up.addr), "")).await;
    let chunk = Bytes::from(vec![b'y'; 64 * 1024]);
    let upload = chunks(chunk, BIG);
    let (resp, body) = send(&h1(), "POST", &p.url("/upload"), &[], upload).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body, BIG.to_string());
    let (resp, body) = get(&p.url("/download"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body.len() as u64, BIG);
    p.stop().await;
}

/// A body of `total` bytes sent in `chunk`-sized frames, generated as it is read.
fn chunks(chunk: Bytes, total: u64) -> Body {
    Chunks { chunk, left: total }.boxed()
}

struct Chunks {
    chunk: Bytes,
    left: u64,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if self.left == 0 {
            return std::task::Poll::Ready(None);
        }
        let n = self.left.min(self.chunk.len() as u64);
        self.left -= n;
        std::task::Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }
    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}

#[tokio::test]
async fn upstream_down_is_a_503_with_a_short_spread_retry_after() {
    let port = free_port();
    let p = proxy(&open_config(
        &format!("\"127.0.0.1:{port}\""),
        "connect_timeout = \"500ms\"",
    ))
    .await;
    let mut afters = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (resp, body) = get(&p.url("/"), &[]).await;
        assert_eq!(resp.status(), 503);
        assert!(String::from_utf8_lossy(&body).contains("upstream down"));
        let ra: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=3).contains(&ra), "{ra}");
        afters.insert(ra);
    }
    assert!(afters.len() >= 2, "spread, not one herd: {afters:?}");
    p.stop().await;
}

#[tokio::test]
async fn slow_upstream_is_a_504() {
    let up = ok_upstream(Duration::from_secs(3)).await;
    let p = proxy(&open_config(
        &format!("\"{}\"", up.addr),
        "response_header_timeout = \"200ms\"",
    ))
    .await;
    let t = std::time::Instant::now();
    let (resp, _) = get(&p.url("/"), &[]).await;
    assert_eq!(resp.status(), 504);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "answered at the timeout, not the upstream"
    );
    p.stop().await;
}

/// HTTP/2 requests wait for their answer on the pooled upstream connection's own timer: one
/// armed by an earlier request (and run out while the connection sat idle) still ends a later
/// request's wait at that request's deadline, and the connection serves on after fast answers.
#[tokio::test]
async fn an_h2_request_times_out_on_a_pooled_connection_with_an_older_timer() {
    let up = upstream(Arc::new(|req| {
        Box::pin(async move {
            if req.uri().path() == "/slow" {
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Response::new(full("ok"))
        })
    }))
    .await;
    let p = proxy(&open_config(
        &format!("\"{}\"", up.addr),
        "response_header_timeout = \"300ms\"\neject_after_failures = 100",
    ))
    .await;
    let client = h2();
    let get = |path: &'static str| {
        let (client, url) = (client.clone(), p.url(path));
        async move {
            let t = std::time::Instant::now();
            let (resp, _) = send(&client, "GET", &url, &[], full(Bytes::new())).await;
            (resp.status().as_u16(), t.elapsed())
        }
    };
    // A 504 at the request's own deadline (300 ms), not before it and not at the upstream's.
    let times_out = || async {
        let (status, took) = get("/slow").await;
        assert_eq!(status, 504);
        assert!(
            took >= Duration::from_millis(250),
            "not before its deadline: {took:?}"
        );
        assert!(took < Duration::from_secs(2), "at its deadline: {took:?}");
    };
    // Straight after a fast answer, on the connection it came on.
    assert_eq!(get("/fast").await.0, 200);
    times_out().await;
    // After the connection sat idle past its timer's last deadline.
    assert_eq!(get("/fast").await.0, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(get("/fast").await.0, 200);
    times_out().await;
    // Many fast ones in a row reuse a pooled connection and its timer.
    let before = up.conns.load(Ordering::Relaxed);
    for _ in 0..20 {
        assert_eq!(get("/fast").await.0, 200);
    }
    let opened = up.conns.load(Ordering::Relaxed) - before;
    assert!(
        opened <= 1,
        "pooled: {opened} connections opened for 20 requests"
    );
    p.stop().await;
}

/// A load whose concurrency is above `pool_max_idle_per_endpoint` keeps its upstream
/// connections while it lasts (the limit is applied on the tick, to connections no request took
/// since the tick before), and once it stops the pool is cut down to the limit.
#[tokio::test]
async fn a_burst_above_the_idle_limit_keeps_its_connections_until_it_stops() {
    let up = ok_upstream(Duration::from_millis(20)).await;
    let p = proxy(&open_config(
        &format!("\"{}\"", up.addr),
        "pool_max_idle_per_endpoint = 4\n[ramp]\ntick = \"100ms\"",
    ))
    .await;
    let client = h1();
    let burst = || async {
        let all: Vec<_> = (0..24)
            .map(|_| {
                let (client, url) = (client.clone(), p.url("/"));
                tokio::spawn(async move {
                    send(&client, "GET", &url, &[], full(Bytes::new()))
                        .await
                        .0
                        .status()
                })
            })
            .collect();
        for t in all {
            assert_eq!(t.await.unwrap(), 200);
        }
    };
    // Fifteen bursts of 24 back to back, over several ticks: the 24 connections the first
    // opened serve them all (returned beyond the limit of 4, they used to be closed and opened
    // again each time: about 300 in all).
    for _ in 0..15 {
        burst().await;
    }
    let opened = up.conns.load(Ordering::SeqCst);
    assert!(
        (24..=36).contains(&opened),
        "{opened} upstream connections for bursts of 24"
    );
    // Quiet for several ticks: all but 4 are closed, and the next burst opens the rest again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    burst().await;
    let again = up.conns.load(Ordering::SeqCst) - opened;
    assert!(
        (18..=20).contains(&again),
        "{again} opened after the quiet spell (4 of 24 kept)"
    );
    p.stop().await;
}

#[tokio::test]
async fn failing_endpoint_is_ejected_then_retried() {
    let good = ok_upstream(Duration::ZERO).await;
    let dead = free_port();
    let extra = "balance = \"round_robin\"\neject_after_failures = 2\neject_cooldown = \"600ms\"\nconnect_timeout = \"300ms\"";
    let p = proxy(&open_config(
        &format!("\"{}\", \"127.0.0.1:{dead}\"", good.addr),
        extra,
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&p.url("/"), &[]).await.0.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        2,
        "{statuses:?}"
    );
    let st = p.status().await;
    assert_eq!(st["endpoints"][1]["ejected"], true, "{st}");
    // While ejected, every request goes to the healthy endpoint.
    for _ in 0..6 {
        assert_eq!(get(&p.url("/"), &[]).await.0.status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let st = p.status().await;
    assert_eq!(
        st["endpoints"][1]["ejected"], false,
        "cooldown over: tried again"
    );
    assert_eq!(st["endpoints"][1]["ejections"], 1);
    p.stop().await;
}

#[tokio::test]
async fn malformed_request_gets_a_400() {
    let up = ok_upstream(Duration::ZERO).await;
    let p = proxy(&open_config(&format!("\"{}\"", up.addr), "")).await;
    let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(up.hits(), 0);
    p.stop().await;
}

#[tokio::test]
async fn slowloris_client_is_cut_off() {
    let up = ok_upstream(Duration::ZERO).await;
    let p = proxy(&format!(
        "[server]\nclient_header_timeout = \"300ms\"\n{}",
        open_config(&format!("\"{}\"", up.addr), "")
    ))
    .await;
    for partial in [
        &b""[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        b"PRI * HTTP/2.0\r\n",
    ] {
        let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        s.write_all(partial).await.unwrap();
        let t = std::time::Instant::now();
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "connection not closed for {partial:?}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }
    assert_eq!(up.hits(), 0);
    p.stop().await;
}

#[tokio::test]
async fn in_flight_request_finishes_after_shutdown_starts() {
    let up = ok_upstream(Duration::from_millis(600)).await;
    let p = proxy(&open_config(&format!("\"{}\"", up.addr), "")).await;
    let url = p.url("/slow");
    let req = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = p.addr;
    p.stop().await;
    let (resp, body) = req.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(body, "ok");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

/// The same over HTTP/2: the streams run inside their connection's task, and a graceful
/// shutdown lets each one in flight finish.
#[tokio::test]
async fn in_flight_h2_streams_finish_after_shutdown_starts() {
    let up = ok_upstream(Duration::from_millis(600)).await;
    let p = proxy(&open_config(&format!("\"{}\"", up.addr), "")).await;
    let client = h2();
    let mut reqs = Vec::new();
    for _ in 0..3 {
        let (client, url) = (client.clone(), p.url("/slow"));
        reqs.push(tokio::spawn(async move {
            send(&client, "GET", &url, &[], full(Bytes::new())).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.stop().await;
    for r in reqs {
        let (resp, body) = r.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(&body[..], b"ok");
    }
}

#[tokio::test]
async fn upstream_bytes_counted_once() {
    let counter = Arc::new(AtomicU64::new(0));
    let c = counter.clone();
    let up = upstream(Arc::new(move |_req| {
        c.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Response::new(full("x")) })
    }))
    .await;
    let p = proxy(&open_config(&format!("\"{}\"", up.addr), "")).await;
    let client = h1();
    for _ in 0..20 {
        let (r, _) = send(&client, "GET", &p.url("/"), &[], full(Bytes::new())).await;
        assert_eq!(r.status(), 200);
    }
    assert_eq!(
        counter.load(Ordering::SeqCst),
        20,
        "no request duplicated or retried"
    );
    p.stop().await;
}

/// Sequential requests reuse one pooled upstream connection whatever the response body is:
/// empty (hyper never polls it), fixed length, or chunked. An upstream that closes its side
/// after every answer costs a new connection per request, never a failed request.
#[tokio::test]
async fn upstream_connections_are_reused_for_every_kind_of_body() {
    let up = upstream(Arc::new(|req| {
        Box::pin(async move {
            let b = Response::builder();
            match req.uri().path() {
                "/empty" => b.body(full(Bytes::new())).unwrap(),
                "/chunked" => b.body(chunks(Bytes::from_static(b"abcd"), 64)).unwrap(),
                "/close" => b.header("connection", "close").body(full("bye")).unwrap(),
                _ => b.body(full("fixed")).unwrap(),
            }
        })
    }))
    .await;
    let p = proxy(&open_config(&format!("\"{}\"", up.addr), "")).await;
    let mut before = 0;
    for i in 0..30 {
        let path = ["/empty", "/fixed", "/chunked"][i % 3];
        let (resp, body) = get(&p.url(path), &[]).await;
        assert_eq!(resp.status(), 200, "{path}");
        let want = match path {
            "/empty" => 0,
            "/fixed" => 5,
            _ => 64,
        };
        assert_eq!(body.len(), want, "{path}");
        if i == 0 {
            // (The startup probe may have opened one too.)
            before = up.conns.load(Ordering::SeqCst);
        }
    }
    assert_eq!(
        up.conns.load(Ordering::SeqCst),
        before,
        "one upstream connection for 30 requests"
    );
    for _ in 0..5 {
        let (resp, body) = get(&p.url("/close"), &[]).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(&body[..], b"bye");
    }
    assert_eq!(up.hits(), 35);
}

/// HTTP/2 streams without a body go upstream on the bare HTTP/1.1 connections: every kind of
/// response body arrives whole and unframed, one upstream connection serves them all in turn,
/// a HEAD gets no body, and split `cookie` fields reach the upstream as one.
#[tokio::test]
async fn h2_streams_reuse_bare_upstream_connections_for_every_kind_of_body() {
    let up = upstream(Arc::new(|req| {
        Box::pin(async move {
            let b = Response::builder().header("x-kind", req.uri().path());
            let cookies: Vec<_> = req
                .headers()
                .get_all("cookie")
                .iter()
                .map(|c| c.to_str().unwrap_or("?").to_string())
                .collect();
            match req.uri().path() {
                "/empty" => b.body(full(Bytes::new())).unwrap(),
                "/chunked" => b.body(chunks(Bytes::from_static(b"abcd"), 64)).unwrap(),
                "/cookies" => b.body(full(cookies.join("|"))).unwrap(),
                _ => b.body(full("fixed")).unwrap(),
            }
        })
    }))
    .await;
    let p = proxy(&open_config(&format!("\"{}\"", up.addr), "")).await;
    let client = h2();
    let mut before = 0;
    for i in 0..30 {
        let path = ["/empty", "/fixed", "/chunked"][i % 3];
        let (resp, body) = send(&client, "GET", &p.url(path), &[], full(Bytes::new())).await;
        assert_eq!(resp.status(), 200, "{path}");
        assert_eq!(resp.version(), http::Version::HTTP_2);
        assert_eq!(resp.headers()["x-kind"], path);
        assert_eq!(resp.headers()["via"], "1.1 warmgate");
        assert!(resp.headers().get("transfer-encoding").is_none());
        let want: &[u8] = match path {
            "/empty" => b"",
            "/fixed" => b"fixed",
            _ => &b"abcd".repeat(16),
        };
        assert_eq!(&body[..], want, "{path}");
        if i == 0 {
            before = up.conns.load(Ordering::SeqCst);
        }
    }
    assert_eq!(
        up.conns.load(Ordering::SeqCst),
        before,
        "one upstream connection for 30 streams"
    );
    let (resp, body) = send(&client, "HEAD", &p.url("/fixed"), &[], full(Bytes::new())).await;
    assert_eq!(resp.status(), 200);
    assert!(body.is_empty());
    let (_, body) = send(
        &client,
        "GET",
        &p.url("/cookies"),
        &[("cookie", "a=1"), ("cookie", "b=2")],
        full(Bytes::new()),
    )
    .await;
    assert_eq!(&body[..], b"a=1; b=2", "cookie fields joined for HTTP/1.1");
    assert_eq!(up.hits(), 32);
    p.stop().await;
}

/// A raw upstream that answers every connection with `answer` and closes.
async fn raw_upstream(answer: &'static [u8]) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s.write_all(answer).await;
            });
        }
    });
    addr
}

/// On the bare path too, a malformed upstream response is a 502, and an upstream that
/// closes mid-body cuts the stream off instead of ending it as if it were whole.
#[tokio::test]
async fn h2_stream_from_a_broken_upstream() {
    let bad = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").await;
    let p = proxy(&open_config(&format!("\"{bad}\""), "")).await;
    let (resp, _) = send(&h2(), "GET", &p.url("/"), &[], full(Bytes::new())).await;
    assert_eq!(resp.status(), 502);
    p.stop().await;

    let cut = raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this").await;
    let p = proxy(&open_config(&format!("\"{cut}\""), "")).await;
    let req = http::Request::get(p.url("/"))
        .body(full(Bytes::new()))
        .unwrap();
    // The reset may overtake the head (h2 drops frames still queued for a reset stream).
    let whole = tokio::time::timeout(Duration::from_secs(10), async {
        let resp = h2().request(req).await.ok()?;
        resp.into_body().collect().await.ok()
    })
    .await
    .unwrap();
    assert!(
        whole.is_none(),
        "a cut-off body is an error, not a short body"
    );
    p.stop().await;
}

/// Without the dynamic table, every kind of response field reaches an HTTP/2 client whole:
/// a status the static table has no whole entry for, a field it has whole, fields it has by
/// name only, unknown names, and several values of one name (each value after the first
/// written without its name).
#[tokio::test]
async fn h2_response_fields_of_every_kind_arrive_whole() {
    let up = raw_upstream(
        b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\
          X-Custom: v1\r\nX-Custom: v2\r\nCache-Control: no-store\r\n\
          Accept-Encoding: gzip, deflate\r\nX-Empty: \r\n\r\nok",
    )
    .await;
    let p = proxy(&open_config(&format!("\"{up}\""), "")).await;
    for _ in 0..2 {
        let (resp, body) = send(&h2(), "GET", &p.url("/"), &[], full(Bytes::new())).await;
        assert_eq!(resp.status(), 201);
        assert_eq!(&body[..], b"ok");
        let h = resp.headers();
        let all = |n: &str| {
            h.get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(all("set-cookie"), ["a=1", "b=2"]);
        assert_eq!(all("x-custom"), ["v1", "v2"]);
        assert_eq!(all("cache-control"), ["no-store"]);
        assert_eq!(all("accept-encoding"), ["gzip, deflate"]);
        assert_eq!(all("x-empty"), [""]);
        assert_eq!(all("content-length"), ["2"]);
        assert_eq!(all("via"), ["1.1 warmgate"]);
    }
    p.stop().await;
}

/// The header blocks of the HEADERS frames the proxy answers `streams` GETs with, read off
/// the wire of an h2c connection (prior knowledge). The requests' own blocks use no dynamic
/// table either: indexed pseudo-headers and a literal `:authority` without indexing.
async fn raw_h2_response_blocks(addr: std::net::SocketAddr, streams: u32) -> Vec<Vec<u8>> {
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    let authority = addr.to_string();
    let mut block = vec![0x82, 0x86, 0x84, 0x01, authority.len() as u8];
    block.extend_from_slice(authority.as_bytes());
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    for i in 0..streams {
        // HEADERS with END_STREAM | END_HEADERS on the odd stream ids 1, 3, 5...
        out.extend(frame(0x1, 0x5, 2 * i + 1, &block));
    }
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&out).await.unwrap();
    let mut blocks = Vec::new();
    let mut ended = 0;
    let read = async {
        while ended < streams {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await.unwrap();
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await.unwrap();
            let (kind, flags) = (head[3], head[4]);
            if kind == 0x4 && flags & 0x1 == 0 {
                s.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap();
            }
            if kind == 0x1 {
                assert_eq!(flags & 0x4, 0x4, "one HEADERS frame, no CONTINUATION");
                blocks.push(payload);
            }
            if (kind == 0x0 || kind == 0x1) && flags & 0x1 == 0x1 {
                ended += 1;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the responses within 10 s");
    blocks
}

#[tokio::test]
async fn h2_responses_are_encoded_from_the_static_table_and_raw_literals() {
    let up = echo_headers().await;
    let p = proxy(&open_config(&format!("\"{}\"", up.addr), "")).await;
    let blocks = raw_h2_response_blocks(p.addr, 3).await;
    assert_eq!(blocks.len(), 3);
    for (i, b) in blocks.iter().enumerate() {
        // `:status: 200` is static index 8, a whole match: its indexed form is the first byte.
        assert_eq!(
            b[0], 0x88,
            "response {i} starts with :status 200 indexed: {b:02x?}"
        );
        // Every response carries `via` (the upstream answered in HTTP/1.1) as the same raw
        // literal: neither Huffman-coded nor replaced by a dynamic table entry later on.
        let via = b"\x0c1.1 warmgate";
        assert!(
            b.windows(via.len()).any(|w| w == via),
            "response {i} has a raw via literal: {b:02x?}"
        );
    }
    p.stop().await;
}
