//! Differential: the same arbitrary bytes to two in-process warmgates, one on the HTTP/1.1
//! path of its own (`server.http1 = "warmgate"`) and one on hyper's server, each in front of
//! its own recording upstream. What the first forwards, the second must forward alike (method,
//! target and body, in order): our path may refuse more than hyper, never read a request's
//! framing differently.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Seen = Arc<Mutex<Vec<Vec<u8>>>>;

struct Rig {
    rt: tokio::runtime::Runtime,
    ours: (SocketAddr, Seen),
    hyper: (SocketAddr, Seen),
}

/// Records each request's head line and body as it arrives, read with a strict little parser
/// of its own (Content-Length or nothing; warmgate sends nothing else for these), and answers
/// 200.
async fn recorder(l: TcpListener, seen: Seen) {
    while let Ok((mut s, _)) = l.accept().await {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let line = head.lines().next().unwrap_or_default().to_string();
                    let len = head
                        .lines()
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
                    let body_start = end + 4;
                    // A chunked body is recorded as its data (the two paths may cut it into
                    // chunks differently, and keep or drop extensions and trailers).
                    let (body, body_end) = if chunked {
                        match dechunk(&buf[body_start..]) {
                            Some((data, n)) => (data, body_start + n),
                            None => break,
                        }
                    } else if buf.len() >= body_start + len {
                        (buf[body_start..body_start + len].to_vec(), body_start + len)
                    } else {
                        break;
                    };
                    let mut rec = line.into_bytes();
                    rec.push(b' ');
                    rec.extend_from_slice(&body);
                    if let Ok(mut v) = seen.lock() {
                        v.push(rec);
                    }
                    buf.drain(..body_end);
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await;
                }
                match tokio::time::timeout(Duration::from_millis(300), s.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
        });
    }
}

/// A chunked body's data and its length on the wire, once it is all there.
fn dechunk(b: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut data = Vec::new();
    let mut at = 0;
    loop {
        let eol = at + b[at..].windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&b[at..eol]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        at = eol + 2;
        if size == 0 {
            // Trailer lines, then the empty line.
            loop {
                let eol = at + b[at..].windows(2).position(|w| w == b"\r\n")?;
                let empty = eol == at;
                at = eol + 2;
                if empty {
                    return Some((data, at));
                }
            }
        }
        if b.len() < at + size + 2 {
            return None;
        }
        data.extend_from_slice(&b[at..at + size]);
        at += size + 2;
    }
}

async fn start(http1: &str) -> (SocketAddr, Seen) {
    let Ok(up) = TcpListener::bind("127.0.0.1:0").await else {
        panic!("bind upstream");
    };
    let Ok(up_addr) = up.local_addr() else {
        panic!("upstream address");
    };
    let seen: Seen = Arc::default();
    tokio::spawn(recorder(up, Arc::clone(&seen)));
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[server]\nhttp1 = \"{http1}\"\nclient_header_timeout = \"200ms\"\nclient_body_timeout = \"200ms\"\n[upstream]\nendpoints = [\"{up_addr}\"]\nresponse_header_timeout = \"500ms\"\n[limit]\nmode = \"fixed\"\nfull_capacity = 1000\n[log]\nlevel = \"off\"\n"
    );
    let Ok(cfg) = warmgate::config::load_str("fuzz.toml", &text) else {
        panic!("config");
    };
    let Ok(listeners) = warmgate::app::bind(&cfg).await else {
        panic!("bind proxy");
    };
    let Ok(addr) = listeners.0.local_addr() else {
        panic!("proxy address");
    };
    tokio::spawn(warmgate::app::run(cfg, listeners, None, std::future::pending()));
    (addr, seen)
}

fn rig() -> &'static Rig {
    static R: OnceLock<Rig> = OnceLock::new();
    R.get_or_init(|| {
        let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        else {
            panic!("runtime");
        };
        let (ours, hyper) = rt.block_on(async { (start("warmgate").await, start("hyper").await) });
        Rig { rt, ours, hyper }
    })
}

/// Sends `data` and reads until the proxy closes or goes quiet.
async fn send(addr: SocketAddr, data: &[u8]) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let _ = s.write_all(data).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_millis(800), s.read_to_end(&mut out)).await;
}

fn take(seen: &Seen) -> Vec<Vec<u8>> {
    seen.lock().map(|mut v| std::mem::take(&mut *v)).unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    let r = rig();
    r.rt.block_on(async {
        take(&r.ours.1);
        take(&r.hyper.1);
        send(r.ours.0, data).await;
        send(r.hyper.0, data).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let ours = take(&r.ours.1);
        let hyper = take(&r.hyper.1);
        assert!(
            hyper.starts_with(&ours),
            "ours forwarded {:?}, hyper's {:?}",
            ours.iter().map(|x| String::from_utf8_lossy(x).into_owned()).collect::<Vec<_>>(),
            hyper.iter().map(|x| String::from_utf8_lossy(x).into_owned()).collect::<Vec<_>>()
        );
    });
});
