//! The HTTP/1.1 path of our own against hyper's server, byte for byte: the same client bytes
//! sent to a warmgate on each (`server.http1`), in front of one recording upstream. What our
//! path forwards, hyper's forwards too and alike (method, target, body, and the fields that
//! matter to framing); our path may refuse more, never less.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::Response;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Seen = Arc<Mutex<Vec<String>>>;

/// An upstream that records each request as `METHOD target body` and answers with its body
/// length.
async fn recorder() -> (Upstream, Seen) {
    let seen: Seen = Arc::default();
    let s = Arc::clone(&seen);
    let up = upstream(Arc::new(move |req| {
        let s = Arc::clone(&s);
        Box::pin(async move {
            let line = format!("{} {}", req.method(), req.uri());
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let body = match body {
                Ok(b) => String::from_utf8_lossy(&b).into_owned(),
                Err(_) => "<body failed>".into(),
            };
            let n = body.len();
            s.lock().unwrap().push(format!("{line} {body:?}"));
            Response::new(full(format!("len={n}")))
        })
    }))
    .await;
    (up, seen)
}

fn config(upstream: &str, http1: &str) -> String {
    format!(
        "[server]\nhttp1 = \"{http1}\"\nclient_header_timeout = \"300ms\"\nclient_body_timeout = \"300ms\"\n[upstream]\nendpoints = [\"{upstream}\"]\n[limit]\nmode = \"fixed\"\nfull_capacity = 1000\n"
    )
}

async fn send(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(700), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test]
async fn what_our_path_forwards_hyper_forwards_alike() {
    let (up, seen) = recorder().await;
    let ours = proxy(&config(&up.addr.to_string(), "warmgate")).await;
    let theirs = proxy(&config(&up.addr.to_string(), "hyper")).await;
    let next = "GET /next HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: Vec<String> = vec![
        "GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        format!("GET /1 HTTP/1.1\r\nHost: x\r\n\r\n{next}"),
        "POST /len HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello".into(),
        format!("POST /len HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello{next}"),
        "POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n".into(),
        format!("POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-trailer: 1\r\n\r\n{next}"),
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello".into(),
        // Framing attacks (the smuggling suite's, and more).
        format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{next}"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n{next}"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n{next}"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{next}"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{next}"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{next}"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{next}"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0;x=\"\r\n\r\n{next}\"\r\n\r\n"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF\r\n\r\n{next}"),
        format!("POST / HTTP/1.1\nHost: x\nContent-Length: 4\nTransfer-Encoding: chunked\n\n0\n\n{next}"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n{next}"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{next}"),
        format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5 5\r\n\r\nhello{next}"),
        format!("GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n{next}"),
        format!("GET /\x7f HTTP/1.1\r\nHost: x\r\n\r\n{next}"),
        format!("GET / HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n{next}"),
        // Handed to hyper's server by ours: the same upstream requests either way.
        format!("GET http://x/abs HTTP/1.1\r\nHost: y\r\n\r\n{next}"),
        "GET /old HTTP/1.0\r\n\r\n".into(),
        "POST /expect HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi".into(),
    ];
    // The first seven and the last three are well-formed: both paths forward them alike.
    let alike = |i: usize| i < 7 || i + 3 >= cases.len();
    for (i, case) in cases.iter().enumerate() {
        seen.lock().unwrap().clear();
        let a = send(ours.addr, case.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let by_ours = std::mem::take(&mut *seen.lock().unwrap());
        let b = send(theirs.addr, case.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        let by_hyper = std::mem::take(&mut *seen.lock().unwrap());
        assert!(
            by_hyper.starts_with(&by_ours),
            "{case:?}\nours forwarded {by_ours:?}\nhyper's forwarded {by_hyper:?}\nours answered {a:?}\nhyper's answered {b:?}"
        );
        if alike(i) {
            assert!(
                !by_ours.is_empty() && by_ours == by_hyper,
                "{case:?}: {by_ours:?} against {by_hyper:?}"
            );
        }
        // Every request forwarded is answered on the client connection.
        assert_eq!(
            a.matches("HTTP/1.1 200").count() + a.matches("HTTP/1.0 200").count(),
            by_ours.len(),
            "{case:?}: {a:?}"
        );
    }
    ours.stop().await;
    theirs.stop().await;
}
