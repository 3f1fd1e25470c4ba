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
        // A trailer line that is not a field (found by the differential fuzz target).
        format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nhello\r\n0\r\n\r\n{next}"),
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

/// The head and body of a raw answer, with the fields that change per answer (the date and
/// the signed ticket) reduced to their names, in order of name.
fn normalised(raw: &str) -> (String, Vec<String>, String) {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    let mut lines = head.lines();
    let status = lines.next().unwrap_or_default().to_string();
    let mut fields: Vec<String> = lines
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            let k = k.to_ascii_lowercase();
            match k.as_str() {
                "date" | "warmgate-ticket" => k,
                "set-cookie" => format!("{k}: {}", v.split_once('=').map_or("", |x| x.0).trim()),
                _ => format!("{k}: {}", v.trim()),
            }
        })
        .collect();
    fields.sort();
    (status, fields, body.to_string())
}

#[tokio::test]
async fn a_reject_is_answered_alike_on_both_paths() {
    let (up, _seen) = recorder().await;
    let extra = "[retry]\nratelimit_headers = true\n[ticket]\nkeys_file = \"keys\"\ncookie = true\nttl = \"5m\"\n[[feature]]\nname = \"default\"\npriority = \"normal\"\nstate = \"off\"\n";
    let keys = [("keys", "k1 0123456789abcdef0123456789abcdef\n")];
    let file = |http1: &str| {
        format!(
            "listen = \"127.0.0.1:0\"\n{}[admin]\nlisten = \"127.0.0.1:0\"\n{extra}",
            config(&up.addr.to_string(), http1)
        )
    };
    let (ours, _d1) = proxy_from_file(&file("warmgate"), &keys).await;
    let (theirs, _d2) = proxy_from_file(&file("hyper"), &keys).await;
    let req = b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let a = normalised(&send(ours.addr, req).await);
    let b = normalised(&send(theirs.addr, req).await);
    assert!(a.0.starts_with("HTTP/1.1 503"), "{a:?}");
    assert!(a.1.iter().any(|f| f.starts_with("retry-after: ")), "{a:?}");
    assert!(a.1.iter().any(|f| f == "warmgate-ticket"), "{a:?}");
    assert!(
        a.1.iter().any(|f| f.starts_with("ratelimit-policy: ")),
        "{a:?}"
    );
    assert!(a.1.iter().any(|f| f.starts_with("set-cookie: ")), "{a:?}");
    // The Retry-After is jittered: compared by presence above, the rest alike.
    let strip = |x: &(String, Vec<String>, String)| {
        let fields: Vec<String> =
            x.1.iter()
                .filter(|f| {
                    !f.starts_with("retry-after")
                        && !f.starts_with("ratelimit:")
                        && !f.starts_with("content-length")
                })
                .cloned()
                .collect();
        let body =
            x.2.split("\"retry_after_s\"")
                .next()
                .unwrap_or_default()
                .to_string();
        (x.0.clone(), fields, body)
    };
    assert_eq!(strip(&a), strip(&b));
    ours.stop().await;
    theirs.stop().await;
}

/// A loopback upstream that hands each connection it accepts to `serve`, on a task of its own.
async fn each_connection<F, Fut>(serve: F) -> std::net::SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s));
        }
    });
    addr
}

/// A raw upstream on loopback: each connection, once it has sent a request head (the proxy's
/// check at start sends none), is handed to `answer`.
async fn raw_upstream<F, Fut>(answer: F) -> std::net::SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let answer = Arc::new(answer);
    each_connection(move |mut s| {
        let answer = Arc::clone(&answer);
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                }
            }
            answer(s).await;
        }
    })
    .await
}

/// An upstream that answers each request on a connection and closes the connection 30 ms
/// after, like a backend with a short keep-alive timeout; counts the requests it read.
async fn short_keepalive() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicU32>) {
    let n = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = Arc::clone(&n);
    let addr = each_connection(move |mut s| {
        let count = Arc::clone(&count);
        async move {
            // One request (head and body), one answer, then a close.
            if read_request(&mut s, &mut Vec::new()).await.is_none() {
                return;
            }
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    })
    .await;
    (addr, n)
}

/// Each request finds the last one's pooled connection closed by the upstream, and its body
/// comes after its head: a small one is read in full first, a larger one is still streaming
/// when the connection is picked. Neither can be sent twice (a POST; a body being streamed), so
/// the connection is checked first and none is sent on a closed one.
#[tokio::test]
async fn a_body_is_never_sent_on_a_connection_the_upstream_closed_while_idle() {
    for (method, len) in [("POST", 5), ("PUT", 20_000)] {
        let (up, served) = short_keepalive().await;
        let p = proxy(&config(&up.to_string(), "warmgate")).await;
        for i in 0..10 {
            let mut s = TcpStream::connect(p.addr).await.unwrap();
            let head = format!(
                "{method} /x HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
            );
            s.write_all(head.as_bytes()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.write_all(&vec![b'b'; len]).await.unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut got)).await;
            let got = String::from_utf8_lossy(&got);
            assert!(got.starts_with("HTTP/1.1 200"), "{method} {i}: {got}");
            // Past the upstream's close, before the pool's sweep on the controller's tick.
            tokio::time::sleep(Duration::from_millis(80)).await;
        }
        assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), 10);
        p.stop().await;
    }
}

/// Reads one request (head and `Content-Length` body) off `s` into `buf`; its request line.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            let len = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.trim().parse::<usize>().unwrap());
            if buf.len() >= i + 4 + len {
                buf.drain(..i + 4 + len);
                return head.lines().next().map(str::to_owned);
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

/// An upstream that answers the first request on each connection, then reads the second whole
/// and closes without answering it; the request lines it read, in order.
async fn answers_once_then_closes() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&log);
    let addr = each_connection(move |mut s| {
        let seen = Arc::clone(&seen);
        async move {
            let mut buf = Vec::new();
            let Some(first) = read_request(&mut s, &mut buf).await else {
                return;
            };
            seen.lock().unwrap().push(first);
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await;
            if let Some(second) = read_request(&mut s, &mut buf).await {
                seen.lock().unwrap().push(second);
            }
        }
    })
    .await;
    (addr, log)
}

/// A pooled connection the upstream closes after reading the request, without an answer: a GET
/// is sent again on a new connection; a POST is not (the upstream may have acted on it), and
/// the client gets a 502. On both HTTP/1 servers (a POST with its body in the first write on
/// ours, an empty POST on the bare connections of the general one).
#[tokio::test]
async fn a_post_is_never_sent_twice_when_its_pooled_connection_closes_unanswered() {
    for (http1, post) in [
        (
            "warmgate",
            "POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        ),
        (
            "hyper",
            "POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let (up, log) = answers_once_then_closes().await;
        let p = proxy(&config(&up.to_string(), http1)).await;
        let get =
            |path: &str| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        // The first request on a connection: answered, the connection pooled.
        let a = send(p.addr, get("/a").as_bytes()).await;
        assert!(a.starts_with("HTTP/1.1 200"), "{http1}: {a}");
        // On the pooled connection, closed unanswered: sent again on a new one.
        let b = send(p.addr, get("/b").as_bytes()).await;
        assert!(b.starts_with("HTTP/1.1 200"), "{http1}: {b}");
        // On that new connection, pooled after its answer, closed unanswered: not sent again.
        let c = send(p.addr, post.as_bytes()).await;
        assert!(c.starts_with("HTTP/1.1 502"), "{http1}: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = log.lock().unwrap().clone();
        let count = |line: &str| log.iter().filter(|l| *l == line).count();
        assert_eq!(count("GET /b HTTP/1.1"), 2, "{http1}: {log:?}");
        assert_eq!(count("POST /c HTTP/1.1"), 1, "{http1}: {log:?}");
        p.stop().await;
    }
}

/// An upstream that answers `POST` bodies of `helloworld` sent with their length (200; 500
/// without it); how many bytes it has heard, from the first.
async fn hears_helloworld() -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let heard = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = Arc::clone(&heard);
    let up = each_connection(move |mut s| {
        let h = Arc::clone(&h);
        async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => {
                        h.fetch_add(k, std::sync::atomic::Ordering::SeqCst);
                        buf.extend_from_slice(&chunk[..k]);
                    }
                }
                if buf.ends_with(b"\r\n\r\nhelloworld") {
                    let text = String::from_utf8_lossy(&buf).to_lowercase();
                    let cl = text.contains("content-length: 10\r\n");
                    let answer = if cl {
                        "HTTP/1.1 200 OK"
                    } else {
                        "HTTP/1.1 500 No"
                    };
                    let answer = format!("{answer}\r\ncontent-length: 0\r\n\r\n");
                    let _ = s.write_all(answer.as_bytes()).await;
                    buf.clear();
                }
            }
        }
    })
    .await;
    (up, heard)
}

/// On both HTTP/1 servers, a small body of a declared length is read in full before the
/// request goes upstream (head and body in one write): a client that pauses mid-body costs the
/// upstream nothing, and one that stops gets a 408 without the upstream hearing of it.
#[tokio::test]
async fn a_small_body_is_read_whole_before_the_upstream_hears_of_it() {
    for http1 in ["warmgate", "hyper"] {
        let (up, heard) = hears_helloworld().await;
        let heard = || heard.load(std::sync::atomic::Ordering::SeqCst);
        let p = proxy(&config(&up.to_string(), http1)).await;
        let head = "POST /f HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nConnection: close\r\n\r\n";
        // Half the body, a pause shorter than the body timeout (300 ms), the rest.
        let mut c = TcpStream::connect(p.addr).await.unwrap();
        c.write_all(format!("{head}hello").as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(heard(), 0, "{http1}");
        c.write_all(b"world").await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut answer)).await;
        assert!(read.is_ok(), "{http1}");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{http1}: {answer}");
        let whole = heard();
        assert!(whole > 10, "{http1}");
        // Half the body, then nothing: a 408 once the body timeout passes, nothing upstream.
        let stalled = send(p.addr, format!("{head}hello").as_bytes()).await;
        assert!(stalled.starts_with("HTTP/1.1 408"), "{http1}: {stalled}");
        assert_eq!(heard(), whole, "{http1}");
        p.stop().await;
    }
}

/// A body the upstream sends in bursts that fill the proxy's read buffer: each burst is sent
/// on as followed by more (`MSG_MORE`), and when nothing follows yet it goes out at once, not
/// when the kernel's hold on a partial segment runs out (200 ms).
#[tokio::test]
async fn a_burst_that_fills_the_read_buffer_reaches_the_client_before_the_upstream_pauses_ends() {
    const BUF: usize = 16 * 1024;
    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 2 * BUF);
    let first = BUF - head.len();
    let up = raw_upstream(move |mut s| {
        let head = head.clone();
        async move {
            // The head and the first part of the body fill the proxy's buffer in one read;
            // the rest comes after a pause.
            let mut burst = head.into_bytes();
            burst.resize(BUF, b'a');
            let _ = s.write_all(&burst).await;
            tokio::time::sleep(Duration::from_millis(600)).await;
            let _ = s.write_all(&vec![b'b'; 2 * BUF - first]).await;
        }
    })
    .await;
    let p = proxy(&config(&up.to_string(), "warmgate")).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let sent = std::time::Instant::now();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let body_at = |got: &[u8]| {
        got.windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |i| got.len() - i - 4)
    };
    while body_at(&got) < first {
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "nothing more in 2 s after {} bytes: {:?}",
                    got.len(),
                    String::from_utf8_lossy(&got[..got.len().min(300)])
                )
            })
            .unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&chunk[..n]);
    }
    let took = sent.elapsed();
    assert!(
        took < Duration::from_millis(150),
        "the first burst arrived after {took:?} (held back for what was to follow)"
    );
    while body_at(&got) < 2 * BUF {
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&chunk[..n]);
    }
    let body = &got[got.len() - 2 * BUF..];
    assert!(body[..first].iter().all(|b| *b == b'a'));
    assert!(body[first..].iter().all(|b| *b == b'b'));
    p.stop().await;
}

/// An upload the client sends in bursts that fill the proxy's read buffer: each burst goes on to
/// the upstream as followed by more (`MSG_MORE`), and when nothing follows yet it goes out at
/// once, not when the kernel's hold on a partial segment runs out (200 ms). The client sends a
/// burst only once the upstream has the one before.
#[tokio::test]
async fn an_upload_burst_that_fills_the_read_buffer_reaches_the_upstream_before_the_client_pauses()
{
    // The client buffer (4 KiB), then the buffer lent to a large body (64 KiB), then the end.
    let bursts = [4 * 1024, 64 * 1024, 1000];
    let total: usize = bursts.iter().sum();
    // The upstream says how many body bytes it has, as they come; it answers once all have.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    // (The proxy's first connection, its reachability check, sends nothing.)
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut chunk = vec![0u8; 128 * 1024];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&chunk[..n]);
                    if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let body = got.len() - i - 4;
                        let _ = tx.send(body);
                        if body >= total {
                            break;
                        }
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            });
        }
    });
    let p = proxy(&config(&up.to_string(), "warmgate")).await;
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let head = format!("POST /up HTTP/1.1\r\nHost: x\r\ncontent-length: {total}\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut want, mut seen) = (0, 0);
    for (i, burst) in bursts.into_iter().enumerate() {
        let sent = std::time::Instant::now();
        s.write_all(&vec![b'a' + i as u8; burst]).await.unwrap();
        want += burst;
        while seen < want {
            seen = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .unwrap_or_else(|_| panic!("burst {i}: {seen} of {want} bytes after 2 s"))
                .unwrap();
        }
        let took = sent.elapsed();
        assert!(
            took < Duration::from_millis(150),
            "burst {i} ({burst} bytes) reached the upstream after {took:?} (held back for what was to follow)"
        );
    }
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
    p.stop().await;
}
