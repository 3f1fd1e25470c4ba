//! Arbitrary bytes into a running warmgate listener (loopback, in process) in front of a canned
//! upstream: whatever a client sends, the proxy answers or closes, and keeps serving.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct Rig {
    rt: tokio::runtime::Runtime,
    proxy: SocketAddr,
}

/// A canned upstream: reads a request head, answers 200 with a small body, closes.
async fn canned(l: TcpListener) {
    while let Ok((mut s, _)) = l.accept().await {
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
        });
    }
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
        let proxy = rt.block_on(async {
            let Ok(up) = TcpListener::bind("127.0.0.1:0").await else {
                panic!("bind upstream");
            };
            let Ok(up_addr) = up.local_addr() else {
                panic!("upstream address");
            };
            tokio::spawn(canned(up));
            let text = format!(
                "listen = \"127.0.0.1:0\"\n[server]\nclient_header_timeout = \"200ms\"\nclient_body_timeout = \"200ms\"\n[upstream]\nendpoints = [\"{up_addr}\"]\nresponse_header_timeout = \"500ms\"\n[log]\nlevel = \"off\"\n"
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
            addr
        });
        Rig { rt, proxy }
    })
}

/// Sends `data`; with `close`, half-closes the connection afterwards (a client that hangs up
/// early: warmgate, like hyper by default, drops what it was doing for it).
async fn send(addr: SocketAddr, data: &[u8], close: bool) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    let _ = s.write_all(data).await;
    if close {
        let _ = s.shutdown().await;
    }
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let r = rig();
    r.rt.block_on(async {
        let _ = send(r.proxy, data, true).await;
        // Still serving.
        let ok = send(
            r.proxy,
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            false,
        )
        .await;
        let ok = ok.unwrap_or_default();
        assert!(ok.starts_with(b"HTTP/1.1 "), "the proxy stopped answering");
    });
});
