//! Endpoints given by name follow DNS: each address is an endpoint of its own, a name that
//! moves takes new requests with it within one refresh, and a failed lookup keeps the last
//! good addresses. Driven through a resolver the test controls (and the system's `localhost`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::net::{IpAddr, ToSocketAddrs};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::Response;

/// A resolver whose answer the test sets.
struct Scripted(Mutex<Result<Vec<IpAddr>, String>>);

impl warmgate::upstream::dns::Resolve for Scripted {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>> {
        let answer = if host == "svc.test" {
            self.0.lock().unwrap().clone()
        } else {
            Err(format!("{host}: unknown"))
        };
        Box::pin(async move { answer.map_err(std::io::Error::other) })
    }
}

/// An upstream on `ip:port` that answers with its own address.
async fn named(ip: &str, port: u16) -> Upstream {
    let me = ip.to_string();
    upstream_on(
        &format!("{ip}:{port}"),
        Arc::new(move |_req| {
            let me = me.clone();
            Box::pin(async move { Response::builder().body(full(me)).unwrap() })
        }),
    )
    .await
}

async fn who(p: &Proxy) -> String {
    let (resp, body) = get(&p.url("/"), &[]).await;
    assert_eq!(resp.status(), 200);
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn a_name_that_moves_takes_new_requests_with_it_and_a_failed_lookup_keeps_the_last() {
    let port = free_port();
    let a = named("127.0.0.1", port).await;
    let b = named("127.0.0.2", port).await;
    let dns = Arc::new(Scripted(Mutex::new(Ok(vec!["127.0.0.1".parse().unwrap()]))));
    let p = proxy_with_resolver(
        &format!("[upstream]\nendpoints = [\"svc.test:{port}\"]\ndns_refresh = \"200ms\"\n"),
        dns.clone(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    for _ in 0..5 {
        assert_eq!(who(&p).await, "127.0.0.1");
    }
    let st = p.status().await;
    assert_eq!(st["endpoints"][0]["address"], format!("svc.test:{port}"));
    assert_eq!(st["endpoints"][0]["ip"], "127.0.0.1");

    // The GSLB moves the name: within one refresh new requests go to the new address.
    *dns.0.lock().unwrap() = Ok(vec!["127.0.0.2".parse().unwrap()]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let hits_a = a.hits();
    for _ in 0..5 {
        assert_eq!(who(&p).await, "127.0.0.2");
    }
    assert_eq!(
        a.hits(),
        hits_a,
        "nothing more reaches the address that left"
    );
    assert_eq!(b.hits(), 5);

    // The resolver fails: the last good address stays, and the status says why.
    *dns.0.lock().unwrap() = Err("SERVFAIL".into());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(who(&p).await, "127.0.0.2");
    let st = p.status().await;
    assert_eq!(st["endpoints"].as_array().unwrap().len(), 1);
    assert_eq!(
        st["clusters"][0]["dns"]["svc.test"]["addresses"][0],
        "127.0.0.2"
    );
    assert!(
        st["clusters"][0]["dns"]["svc.test"]["error"]
            .as_str()
            .unwrap()
            .contains("SERVFAIL"),
        "{st}"
    );

    // Two addresses: two endpoints, both served.
    *dns.0.lock().unwrap() = Ok(vec![
        "127.0.0.1".parse().unwrap(),
        "127.0.0.2".parse().unwrap(),
    ]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = p.status().await;
    assert_eq!(st["endpoints"].as_array().unwrap().len(), 2, "{st}");
    let (before_a, before_b) = (a.hits(), b.hits());
    for _ in 0..40 {
        who(&p).await;
    }
    assert!(a.hits() > before_a && b.hits() > before_b);
    p.stop().await;
}

#[tokio::test]
async fn localhost_is_one_endpoint_per_address() {
    let up = ok_upstream(Duration::ZERO).await;
    let port = up.addr.port();
    let p = proxy(&format!(
        "[upstream]\nendpoints = [\"localhost:{port}\"]\ndns_refresh = \"100ms\"\n"
    ))
    .await;
    let want: std::collections::BTreeSet<String> = ("localhost", port)
        .to_socket_addrs()
        .unwrap()
        .map(|a| a.ip().to_string())
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let st = p.status().await;
        seen = st["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["ip"].as_str().map(str::to_string))
            .collect();
        if seen == want {
            break;
        }
    }
    assert_eq!(
        seen, want,
        "every address localhost resolves to is an endpoint"
    );
    p.stop().await;
}
