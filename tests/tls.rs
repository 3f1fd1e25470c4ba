//! TLS at the listener: ALPN picks h2 or HTTP/1.1 on one port, SNI picks the certificate, and
//! a certificate reload under load fails no request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{hup, spawn};
use common::tls::{get, Ca};
use common::*;

fn tls_config(dir: &std::path::Path, upstream: &str) -> String {
    format!(
        "[upstream]\nendpoints = [\"{upstream}\"]\n[limit]\nmode = \"fixed\"\nfull_capacity = 1000\n\
         [tls]\ncertificates = [\n  {{ cert = \"{d}/a.pem\", key = \"{d}/a.key\" }},\n  {{ cert = \"{d}/b.pem\", key = \"{d}/b.key\" }},\n]\n",
        d = dir.display()
    )
}

#[tokio::test]
async fn alpn_picks_the_protocol_and_sni_the_certificate() {
    let up = ok_upstream(Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test root");
    let a = ca.leaf(dir.path(), "a", &["a.example"]);
    let b = ca.leaf(dir.path(), "b", &["*.b.example"]);
    let p = proxy(&tls_config(dir.path(), &up.addr.to_string())).await;
    let roots = [ca.der()];

    let s = get(p.addr, "a.example", &roots, &[b"h2", b"http/1.1"], "/x")
        .await
        .unwrap();
    assert_eq!((s.version, s.status), (http::Version::HTTP_2, 200));
    assert_eq!(s.leaf, a);
    assert_eq!(&s.body[..], b"ok");

    let s = get(p.addr, "api.b.example", &roots, &[b"http/1.1"], "/x")
        .await
        .unwrap();
    assert_eq!((s.version, s.status), (http::Version::HTTP_11, 200));
    assert_eq!(s.leaf, b, "the wildcard certificate for *.b.example");

    // No ALPN at all: HTTP/1.1.
    let s = get(p.addr, "a.example", &roots, &[], "/x").await.unwrap();
    assert_eq!(s.version, http::Version::HTTP_11);

    // A cleartext request on the TLS port is not served.
    let plain = tokio::time::timeout(
        Duration::from_secs(5),
        h1().get(p.url("/x").parse().unwrap()),
    )
    .await
    .unwrap();
    assert!(plain.is_err() || plain.unwrap().status() != 200);
    assert_eq!(up.hits(), 3);
    p.stop().await;
}

#[tokio::test]
async fn the_upstream_is_told_the_client_spoke_https() {
    let up = upstream(Arc::new(|req| {
        Box::pin(async move {
            let proto = req
                .headers()
                .get("x-forwarded-proto")
                .map(|v| v.to_str().unwrap_or("?").to_string())
                .unwrap_or_default();
            http::Response::new(full(proto))
        })
    }))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test root");
    ca.leaf(dir.path(), "a", &["a.example"]);
    ca.leaf(dir.path(), "b", &["b.example"]);
    let p = proxy(&tls_config(dir.path(), &up.addr.to_string())).await;
    let s = get(p.addr, "a.example", &[ca.der()], &[b"h2"], "/")
        .await
        .unwrap();
    assert_eq!(&s.body[..], b"https");
    p.stop().await;
}

#[tokio::test]
async fn a_certificate_reload_under_load_fails_no_request() {
    let up = ok_upstream(Duration::ZERO).await;
    let certs = tempfile::tempdir().unwrap();
    let old_ca = Ca::new("old root");
    let new_ca = Ca::new("new root");
    old_ca.leaf(certs.path(), "a", &["a.example"]);
    old_ca.leaf(certs.path(), "b", &["b.example"]);
    let port = free_port();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\n{}",
        tls_config(certs.path(), &up.addr.to_string())
    );
    let (child, _dir) = spawn(&config, port);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let roots = Arc::new([old_ca.der(), new_ca.der()]);

    // Four clients, each a new connection (a new handshake) per request, h2 and h1 in turn.
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..4 {
        let (ok, failed, stop, roots) = (ok.clone(), failed.clone(), stop.clone(), roots.clone());
        load.push(tokio::spawn(async move {
            let alpn: &[&[u8]] = if i % 2 == 0 { &[b"h2"] } else { &[b"http/1.1"] };
            while !stop.load(Ordering::Relaxed) {
                match get(addr, "a.example", &roots[..], alpn, "/").await {
                    Ok(s) if s.status == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(s) => panic!("status {}", s.status),
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    // Long enough for a dozen handshakes on a loaded machine (a debug build's are slow).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let new_leaf = new_ca.leaf(certs.path(), "a", &["a.example"]);
    new_ca.leaf(certs.path(), "b", &["b.example"]);
    let before = ok.load(Ordering::Relaxed);
    hup(&child);
    let t = Instant::now();
    loop {
        let s = get(addr, "a.example", &roots[..], &[b"h2"], "/")
            .await
            .unwrap();
        if s.leaf == new_leaf {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "new certificate not served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let after = ok.load(Ordering::Relaxed);
    assert!(
        before > 10 && after > before + 10,
        "load ran across the reload: {before} then {after}"
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    // Only the new root is needed now.
    let s = get(addr, "a.example", &[new_ca.der()], &[b"http/1.1"], "/")
        .await
        .unwrap();
    assert_eq!(s.status, 200);
    drop(child);
}

#[tokio::test]
async fn tls_to_the_upstream_checks_the_backends_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("backend root");
    let up = common::tls::upstream(&ca, dir.path(), &["backend.test"]).await;
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    let cfg = |name: &str| {
        format!(
            "[upstream]\nendpoints = [\"{up}\"]\n[upstream.tls]\nca = \"{}\"\nserver_name = \"{name}\"\n[limit]\nmode = \"fixed\"\nfull_capacity = 100\n",
            dir.path().join("ca.pem").display()
        )
    };
    let p = proxy(&cfg("backend.test")).await;
    let (resp, body) = common::get(&p.url("/"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&body[..], b"tls ok");
    p.stop().await;
    // A name the certificate does not carry: refused at the handshake, a 502.
    let p = proxy(&cfg("other.test")).await;
    let (resp, _) = common::get(&p.url("/"), &[]).await;
    assert_eq!(resp.status(), 502);
    p.stop().await;
}
