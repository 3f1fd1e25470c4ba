//! Test harness: in-process upstreams and proxies on loopback ephemeral ports.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

pub mod clusters;
pub mod fleet;
pub mod process;
pub mod redis;
pub mod tls;

pub type Body = BoxBody<Bytes, hyper::Error>;
pub type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync,
>;

/// A small body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A backend with `knee` workers: each request holds one for `service`; the rest queue.
pub async fn knee_upstream(knee: usize, service: Duration) -> Upstream {
    let sem = Arc::new(tokio::sync::Semaphore::new(knee));
    upstream(Arc::new(move |_req| {
        let sem = sem.clone();
        Box::pin(async move {
            let _w = sem.acquire().await.unwrap();
            tokio::time::sleep(service).await;
            Response::builder()
                .header("x-cache", "MISS")
                .body(full("ok"))
                .unwrap()
        })
    }))
    .await
}

/// An upstream that logs the `x-user` of each request in the order they arrive, and answers
/// after `delay`.
pub async fn ordered_upstream(
    delay: Duration,
    log: Arc<std::sync::Mutex<Vec<String>>>,
) -> Upstream {
    upstream(Arc::new(move |req| {
        let log = log.clone();
        Box::pin(async move {
            let user = req
                .headers()
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            log.lock().unwrap().push(user);
            tokio::time::sleep(delay).await;
            Response::new(full("ok"))
        })
    }))
    .await
}

/// A running test upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicU64>,
    /// Connections accepted.
    pub conns: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
}

impl Upstream {
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Starts an upstream (h1 and h2c) that answers with `handler`, counting requests.
pub async fn upstream(handler: Handler) -> Upstream {
    upstream_on("127.0.0.1:0", handler).await
}

/// [`upstream`] on a given loopback address.
pub async fn upstream_on(bind: &str, handler: Handler) -> Upstream {
    let listener = TcpListener::bind(bind).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let conns = Arc::new(AtomicU64::new(0));
    let (tx, mut rx) = oneshot::channel();
    let h = hits.clone();
    let cn = conns.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut rx => break,
                Ok((s, _)) = listener.accept() => {
                    cn.fetch_add(1, Ordering::SeqCst);
                    let handler = handler.clone();
                    let h = h.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            h.fetch_add(1, Ordering::SeqCst);
                            let f = handler(req);
                            async move { Ok::<_, Infallible>(f.await) }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(s), svc)
                            .await;
                    });
                }
            }
        }
    });
    Upstream {
        addr,
        hits,
        conns,
        stop: Some(tx),
    }
}

/// An upstream answering 200 "ok" (with `X-Cache: HIT`) after `delay`.
pub async fn ok_upstream(delay: Duration) -> Upstream {
    upstream(Arc::new(move |_req| {
        Box::pin(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Response::builder()
                .header("x-cache", "HIT")
                .body(full("ok"))
                .unwrap()
        })
    }))
    .await
}

/// A running in-process proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub done: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// A proxy started by the test itself.
    pub fn new(
        addr: SocketAddr,
        admin: SocketAddr,
        stop: oneshot::Sender<()>,
        done: tokio::task::JoinHandle<()>,
    ) -> Self {
        Self {
            addr,
            admin,
            stop: Some(stop),
            done: Some(done),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Stops accepting and waits for the drain.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), d).await;
        }
    }

    pub async fn status(&self) -> serde_json::Value {
        let (_, body) = get(&format!("http://{}/status", self.admin), &[]).await;
        serde_json::from_slice(&body).unwrap()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Starts warmgate in-process with `config` (listen and admin on ephemeral loopback ports).
pub async fn proxy(config: &str) -> Proxy {
    proxy_with_resolver(config, Arc::new(warmgate::upstream::dns::System)).await
}

/// [`proxy`] looking endpoint names up with `resolver`.
pub async fn proxy_with_resolver(
    config: &str,
    resolver: Arc<dyn warmgate::upstream::dns::Resolve>,
) -> Proxy {
    let text = format!("listen = \"127.0.0.1:0\"\n{config}\n");
    let text = if text.contains("[admin]") {
        text
    } else {
        format!("{text}\n[admin]\nlisten = \"127.0.0.1:0\"\n")
    };
    let cfg = warmgate::config::load_str("test.toml", &text).unwrap_or_else(|e| panic!("{e:?}"));
    let listeners = warmgate::app::bind(&cfg).await.unwrap();
    let addr = listeners.0.local_addr().unwrap();
    let admin = listeners.1.as_ref().unwrap().local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        let _ = warmgate::app::run_with(
            cfg,
            listeners,
            None,
            async move {
                let _ = rx.await;
            },
            resolver,
        )
        .await;
    });
    Proxy {
        addr,
        admin,
        stop: Some(tx),
        done: Some(done),
    }
}

/// Starts warmgate in-process from `config` written to `w.toml` in a new temporary directory,
/// beside `files` (name, contents), so relative paths in it resolve there and the file can be
/// reloaded. Returns the directory too (it lives as long as the caller keeps it).
pub async fn proxy_from_file(config: &str, files: &[(&str, &str)]) -> (Proxy, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let path = dir.path().join("w.toml");
    std::fs::write(&path, config).unwrap();
    let cfg = warmgate::config::load_file(&path).unwrap_or_else(|e| panic!("{e:?}"));
    let listeners = warmgate::app::bind(&cfg).await.unwrap();
    let addr = listeners.0.local_addr().unwrap();
    let admin = listeners.1.as_ref().unwrap().local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        let _ = warmgate::app::run(cfg, listeners, Some(path), async move {
            let _ = rx.await;
        })
        .await;
    });
    (Proxy::new(addr, admin, tx, done), dir)
}

/// An h1 client with a pool.
pub fn h1() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c (prior knowledge) client.
pub fn h2() -> Client<hyper_util::client::legacy::connect::HttpConnector, Body> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// GET with headers, returning status and body (bounded by a 10 s timeout).
pub async fn get(url: &str, headers: &[(&str, &str)]) -> (Response<()>, Bytes) {
    send(&h1(), "GET", url, headers, full(Bytes::new())).await
}

pub async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Body>,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Body,
) -> (Response<()>, Bytes) {
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let fut = async {
        let resp = client.request(b.body(body).unwrap()).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (Response::from_parts(parts, ()), bytes)
    };
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("request timed out")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
