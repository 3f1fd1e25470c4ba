//! The client listener: accept, terminate TLS (ALPN picks h2 or HTTP/1.1) or pick h1 or h2
//! (prior knowledge) from the first bytes of a cleartext connection, serve with timeouts, and
//! drain gracefully on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::handler::{handle, ConnInfo};
use super::headers::ConnHeaders;
use super::send_timeout::SendTimeout;
use crate::config::ServerConfig;
use crate::runtime::Shared;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Which protocol a connection speaks.
#[derive(Debug, PartialEq, Eq)]
enum Proto {
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
/// deadline. Returns when every connection is closed or the deadline passes.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
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
                spawn_connection(stream, peer, &shared, &graceful);
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    let drain = shared.snapshot.load().compiled.config.server.drain_timeout;
    tracing::info!(
        drain_s = drain.as_secs_f64(),
        "stopped accepting; draining in-flight requests"
    );
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; closing remaining connections");
    }
}

fn spawn_connection(
    stream: TcpStream,
    peer: std::net::SocketAddr,
    shared: &Arc<Shared>,
    graceful: &GracefulShutdown,
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
    let info = Arc::new(ConnInfo {
        peer,
        headers: ConnHeaders {
            client_ip: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static(if tls.is_some() { "https" } else { "http" }),
        },
    });
    let shared = Arc::clone(shared);
    let watcher = graceful.watcher();
    tokio::spawn(async move {
        let handshake = server_cfg.client_header_timeout;
        let result = match tls {
            None => {
                let Some(proto) = detect(&stream, handshake).await else {
                    return;
                };
                serve_io(stream, proto, &server_cfg, shared, info, watcher).await
            }
            Some(acceptor) => {
                let tls = match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let proto = match tls.get_ref().1.alpn_protocol() {
                    Some(b"h2") => Proto::H2,
                    _ => Proto::H1,
                };
                serve_io(tls, proto, &server_cfg, shared, info, watcher).await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    });
}

/// Serves one accepted connection (cleartext or TLS) as `proto` until it closes.
async fn serve_io<I>(
    io: I,
    proto: Proto,
    server_cfg: &ServerConfig,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    watcher: Watcher,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| handle(Arc::clone(&shared), Arc::clone(&info), req));
    let io = TokioIo::new(SendTimeout::new(io, server_cfg.send_timeout));
    match proto {
        Proto::H1 => {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(server_cfg.client_header_timeout)
                .keep_alive(true)
                .serve_connection(io, svc);
            watcher.watch(conn).await.map_err(Into::into)
        }
        Proto::H2 => {
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(server_cfg.h2_max_concurrent_streams)
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .serve_connection(io, svc);
            watcher.watch(conn).await.map_err(Into::into)
        }
    }
}
