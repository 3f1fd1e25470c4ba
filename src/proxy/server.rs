//! The client listener: accept, terminate TLS (ALPN picks h2 or HTTP/1.1) or pick h1 or h2
//! (prior knowledge) from the first bytes of a cleartext connection, serve with timeouts, and
//! drain gracefully on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::connection::{serve_io, BoxError, Conn, Stop};
use super::handler::ConnInfo;
use super::headers::ConnHeaders;
use super::park::{parking_lot, ParkingLot};
use super::phases::Phase;
use crate::config::ServerConfig;
use crate::runtime::Shared;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the handler is told about a connection.
pub(crate) fn conn_info(peer: std::net::SocketAddr, tls: bool, trusted: bool) -> Arc<ConnInfo> {
    Arc::new(ConnInfo {
        peer,
        headers: ConnHeaders {
            client_ip: HeaderValue::from_str(&peer.ip().to_canonical().to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
            trusted,
        },
        phase: Arc::new(Phase::default()),
        peer_hash: std::sync::OnceLock::new(),
    })
}

/// What the handler is told about a connection on the HTTP/1.1 path of our own: the same, with
/// no phase of its own (only hyper's sessions keep one; a connection handed to hyper gets a
/// fresh [`conn_info`]).
pub(crate) fn conn_info_own(peer: std::net::SocketAddr, trusted: bool) -> Arc<ConnInfo> {
    static NO_PHASE: std::sync::LazyLock<Arc<Phase>> = std::sync::LazyLock::new(Arc::default);
    Arc::new(ConnInfo {
        peer,
        headers: ConnHeaders {
            client_ip: HeaderValue::from_str(&peer.ip().to_canonical().to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static("http"),
            trusted,
        },
        phase: Arc::clone(&NO_PHASE),
        peer_hash: std::sync::OnceLock::new(),
    })
}

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proto {
    H1,
    H2,
}

/// Waits until the first bytes tell h2 prior knowledge from HTTP/1, within `timeout`.
/// A client that sends nothing (or a slow partial preface) is dropped: `None`.
async fn detect(stream: &TcpStream, timeout: Duration) -> Option<Proto> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; 24];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = tokio::time::timeout_at(deadline, stream.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if buf[..n] != H2_PREFACE[..n] {
            return Some(Proto::H1);
        }
        if n == H2_PREFACE.len() {
            return Some(Proto::H2);
        }
        // A partial preface: wait for more without spinning.
        if tokio::time::Instant::now() + pause > deadline {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Serves until `shutdown` resolves, then drains in-flight requests for up to the configured
/// deadline. Returns when every connection is closed or the deadline passes. At most
/// `server.max_connections` are open at once: at the cap the listener stops accepting (new
/// clients wait in the kernel's backlog) until one closes.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let stop = Arc::new(Stop::default());
    // Every connection task holds a sender; the drain ends when the last one is dropped.
    let (live_tx, mut live_rx) = mpsc::channel::<()>(1);
    let cap = shared
        .snapshot
        .load()
        .compiled
        .config
        .server
        .max_connections;
    let slots = Arc::new(Semaphore::new(cap));
    let lot = parking_lot(&shared);
    tokio::pin!(shutdown);
    loop {
        let slot = match Arc::clone(&slots).try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                shared.metrics.connections_capped.inc();
                tracing::warn!(
                    max_connections = cap,
                    "connection cap reached; accepting again when one closes"
                );
                tokio::select! {
                    s = Arc::clone(&slots).acquire_owned() => match s {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let conn = Conn {
                    stop: Arc::clone(&stop),
                    _live: live_tx.clone(),
                    _slot: slot,
                    gauge: shared.metrics.connections.clone(),
                    parked: shared.metrics.connections_parked.clone(),
                };
                spawn_connection(stream, peer, &shared, conn, lot.as_ref().map(|l| &l.0));
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    drop(live_tx);
    shared
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let drain = shared.snapshot.load().compiled.config.server.drain_timeout;
    tracing::info!(
        drain_s = drain.as_secs_f64(),
        "stopped accepting; draining in-flight requests"
    );
    stop.set();
    // Parked connections are idle: closed at once.
    drop(lot);
    if tokio::time::timeout(drain, live_rx.recv()).await.is_err() {
        tracing::warn!("drain deadline passed; closing remaining connections");
    }
}

fn spawn_connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    shared: &Arc<Shared>,
    conn: Conn,
    lot: Option<&Arc<ParkingLot>>,
) {
    let snap = shared.snapshot.load();
    let server_cfg = snap.compiled.config.server.clone();
    // Read per connection, so a reload's certificates serve the next handshake.
    let tls = snap
        .compiled
        .config
        .tls
        .as_ref()
        .map(|t| TlsAcceptor::from(Arc::clone(&t.config)));
    let ip = peer.ip().to_canonical();
    let trusted = server_cfg.trusted_proxies.iter().any(|n| n.contains(&ip));
    let is_tls = tls.is_some();
    let shared = Arc::clone(shared);
    let lot = lot.cloned();
    let conn = conn.open();
    let handshake = server_cfg.client_header_timeout;
    let own_http1 = server_cfg.own_http1;
    // Only what the connection needs lives in its task (the task is as large as its largest
    // state, an idle connection's included): the server settings are read again by the
    // sessions that need them.
    drop(server_cfg);
    drop(snap);
    if tls.is_none() && own_http1 {
        // Cleartext on the path of our own: it tells HTTP/2's preface from HTTP/1.1 itself,
        // and its task is exactly as large as an idle connection's state.
        let info = conn_info_own(peer, trusted);
        tokio::spawn(crate::h1::server::serve(stream, shared, info, conn, lot));
        return;
    }
    tokio::spawn(async move {
        let result = match tls {
            None => {
                let Some(proto) = detect(&stream, handshake).await else {
                    return;
                };
                // Boxed: a hyper session is large.
                Box::pin(async move {
                    let info = conn_info(peer, false, trusted);
                    let cfg = shared.snapshot.load().compiled.config.server.clone();
                    serve_io(stream, proto, &cfg, shared, info, conn, lot).await
                })
                .await
            }
            Some(acceptor) => {
                // Boxed: a TLS session is large.
                Box::pin(async move {
                    let info = conn_info(peer, is_tls, trusted);
                    let cfg = shared.snapshot.load().compiled.config.server.clone();
                    serve_tls(stream, acceptor, handshake, &cfg, shared, info, conn).await
                })
                .await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    });
}

/// Serves a TLS connection: the handshake (within `handshake`), then ALPN's protocol.
async fn serve_tls(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    handshake: Duration,
    server_cfg: &ServerConfig,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    conn: Conn,
) -> Result<(), BoxError> {
    let peer = info.peer;
    let tls = match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return Ok(());
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return Ok(());
        }
    };
    let proto = match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => Proto::H2,
        _ => Proto::H1,
    };
    serve_io(tls, proto, server_cfg, shared, info, conn, None).await
}
