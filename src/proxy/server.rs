//! The client listener: accept, terminate TLS (ALPN picks h2 or HTTP/1.1) or pick h1 or h2
//! (prior knowledge) from the first bytes of a cleartext connection, serve with timeouts, and
//! drain gracefully on shutdown.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::h2_guard::H2Guard;
use super::handler::{handle, ConnInfo};
use super::headers::ConnHeaders;
use super::lot::Lot;
use super::phases::{Phase, Phases, Tracked};
use super::send_timeout::{SendTimeout, Stall};
use super::until::{Done, Until};
use crate::config::ServerConfig;
use crate::runtime::Shared;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Streams a client may reset before we accept them, per connection (rapid reset).
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams we may reset for protocol errors before the connection is closed.
const H2_MAX_LOCAL_RESETS: usize = 256;

/// How long an HTTP/1 connection is idle before its session (hyper's read and write buffers,
/// the parser's state) is dropped, leaving the bare socket waiting for readability. A busy
/// connection is never idle that long; a mobile client's keep-alive connection mostly is.
const PARK_AFTER: Duration = Duration::from_secs(1);

/// What a parked connection waits on: its socket becoming readable. A cleartext socket is
/// handed to the [`Lot`] instead (a TLS session's state cannot be dropped while idle).
trait Parkable: Sized {
    /// The stream is the socket alone: it can wait in the lot.
    const BARE: bool;
    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send + '_;
    /// The bare socket, for the lot; `None` when there is more to the stream than the socket.
    fn into_tcp(self) -> Option<TcpStream>;
}

impl Parkable for TcpStream {
    const BARE: bool = true;

    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send + '_ {
        TcpStream::readable(self)
    }

    fn into_tcp(self) -> Option<TcpStream> {
        Some(self)
    }
}

impl Parkable for tokio_rustls::server::TlsStream<TcpStream> {
    const BARE: bool = false;

    fn readable(&self) -> impl Future<Output = std::io::Result<()>> + Send + '_ {
        self.get_ref().0.readable()
    }

    fn into_tcp(self) -> Option<TcpStream> {
        None
    }
}

/// Idle cleartext connections; each keeps what its server needs to resume it.
type ParkingLot = Lot<Resume>;

/// What a parked connection keeps to be served again: no allocation of its own (it lives in
/// the lot's slot), so a parked connection leaves nothing behind on the heap.
struct Resume {
    peer: std::net::SocketAddr,
    trusted: bool,
    conn: Conn,
}

/// What the handler is told about a connection.
fn conn_info(peer: std::net::SocketAddr, tls: bool, trusted: bool) -> Arc<ConnInfo> {
    Arc::new(ConnInfo {
        peer,
        headers: ConnHeaders {
            client_ip: HeaderValue::from_str(&peer.ip().to_canonical().to_string())
                .unwrap_or(HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
            trusted,
        },
        phase: Arc::new(Phase::default()),
    })
}

/// hyper's limit on request header lines when none is set.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
/// deadline. Returns when every connection is closed or the deadline passes. At most
/// `server.max_connections` are open at once: at the cap the listener stops accepting (new
/// clients wait in the kernel's backlog) until one closes.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: impl Future<Output = ()>) {
    let (stop_tx, stop_rx) = watch::channel(false);
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
                    stop: stop_rx.clone(),
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
    let _ = stop_tx.send(true);
    // Parked connections are idle: closed at once.
    drop(lot);
    if tokio::time::timeout(drain, live_rx.recv()).await.is_err() {
        tracing::warn!("drain deadline passed; closing remaining connections");
    }
}

/// Starts the thread that watches parked connections; `None` if the system refuses it (an
/// epoll set or a thread), and idle connections then wait on their own tasks. The lot is
/// closed when the returned guard drops.
fn parking_lot(shared: &Arc<Shared>) -> Option<LotGuard> {
    let started = Lot::new(shared.metrics.connections_parked.clone()).and_then(|(lot, watch)| {
        let (watcher, shared) = (Arc::clone(&lot), Arc::clone(shared));
        let rt = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("warmgate-parked".into())
            .spawn(move || {
                let resumer = Arc::clone(&watcher);
                watcher.watch(watch, |stream, parked| {
                    let (shared, lot) = (Arc::clone(&shared), Arc::clone(&resumer));
                    rt.spawn(resume(stream, parked, shared, lot));
                });
            })?;
        Ok(lot)
    });
    match started {
        Ok(lot) => Some(LotGuard(lot)),
        Err(e) => {
            tracing::warn!(error = %e, "idle connections wait on their own tasks");
            None
        }
    }
}

/// Closes the parking lot (its connections and its thread) when the listener stops.
struct LotGuard(Arc<ParkingLot>);

impl Drop for LotGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Serves a parked connection again: its next request has arrived (or the client closed).
async fn resume(
    stream: std::net::TcpStream,
    parked: Resume,
    shared: Arc<Shared>,
    lot: Arc<ParkingLot>,
) {
    let Resume {
        peer,
        trusted,
        conn,
    } = parked;
    let info = conn_info(peer, false, trusted);
    let stream = match TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "resuming a parked connection failed");
            return;
        }
    };
    let cfg = shared.snapshot.load().compiled.config.server.clone();
    if let Err(e) = serve_io(stream, Proto::H1, &cfg, shared, info, conn, Some(lot)).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// What a connection task holds: its place under the connection cap, its part in the drain,
/// and the shutdown signal.
struct Conn {
    stop: watch::Receiver<bool>,
    _live: mpsc::Sender<()>,
    _slot: OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
    parked: prometheus::IntGauge,
}

/// Counts a parked connection while it lives.
struct Parked(prometheus::IntGauge);

impl Parked {
    fn new(g: &prometheus::IntGauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Conn {
    fn open(self) -> Self {
        self.gauge.inc();
        self
    }

    /// Resolves once shutdown has begun.
    async fn stopping(&mut self) {
        let _ = self.stop.wait_for(|s| *s).await;
    }

    /// Resolves once shutdown has begun or the connection has been idle for the keep-alive
    /// timeout: either way its session is asked to finish and close.
    async fn closing(&mut self, phase: &Phase) {
        tokio::select! {
            () = self.stopping() => {}
            () = phase.idle.notified() => {}
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.gauge.dec();
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
    let info = conn_info(peer, tls.is_some(), trusted);
    let shared = Arc::clone(shared);
    let lot = lot.cloned();
    let conn = conn.open();
    tokio::spawn(async move {
        let handshake = server_cfg.client_header_timeout;
        let result = match tls {
            None => {
                let Some(proto) = detect(&stream, handshake).await else {
                    return;
                };
                serve_io(stream, proto, &server_cfg, shared, info, conn, lot).await
            }
            Some(acceptor) => {
                // Boxed: a TLS session is large, and the connection task is as large as its
                // largest state (a parked cleartext connection's included).
                Box::pin(serve_tls(
                    stream,
                    acceptor,
                    handshake,
                    &server_cfg,
                    shared,
                    info,
                    conn,
                ))
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

/// Serves one accepted connection (cleartext or TLS) as `proto` until it closes or is parked
/// in `lot`.
async fn serve_io<I>(
    io: I,
    proto: Proto,
    server_cfg: &ServerConfig,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    mut conn: Conn,
    lot: Option<Arc<ParkingLot>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Parkable + Unpin + Send + Sync + 'static,
{
    let phase = Arc::clone(&info.phase);
    let (peer, trusted) = (info.peer, info.headers.trusted);
    let stalled = shared.metrics.stalled_released.clone();
    let idle = Arc::clone(&phase);
    let answer = move |req| {
        // Busy from here until the response body ends: no idle timer meanwhile.
        let active = info.phase.enter();
        let answer = handle(Arc::clone(&shared), Arc::clone(&info), req);
        async move {
            let resp = answer.await?;
            Ok::<_, std::convert::Infallible>(resp.map(|b| Tracked::new(b, active)))
        }
    };
    match proto {
        Proto::H1 => {
            let stall = Stall {
                phase: Arc::clone(&phase),
                after: server_cfg.stall_release,
                released: stalled,
            };
            let mut io = phased(io, phase, true, server_cfg, Some(PARK_AFTER), Some(stall));
            let lot = lot.filter(|_| I::BARE);
            loop {
                // Boxed: while parked, the task holds none of a session's state.
                // hyper's HTTP/1 server boxes the request's future itself.
                let svc = service_fn(answer.clone());
                let session = h1_session(io, server_cfg, svc, &idle, &mut conn);
                let Some(parked) = Box::pin(session).await? else {
                    return Ok(());
                };
                if let Some(lot) = lot {
                    let phases = parked.into_inner().into_inner();
                    let deadline = phases.idle_deadline();
                    let tcp = phases.into_inner().into_tcp().map(TcpStream::into_std);
                    if let Some(Ok(tcp)) = tcp {
                        // The task ends here (its connection's state with it); the lot holds the
                        // socket and resumes it on a new one.
                        let parked = Resume {
                            peer,
                            trusted,
                            conn,
                        };
                        lot.park(tcp, deadline.into_std(), parked);
                    }
                    return Ok(());
                }
                io = parked;
                let phases = io.inner().get_ref();
                let deadline = phases.idle_deadline();
                let _parked = Parked::new(&conn.parked);
                tokio::select! {
                    r = phases.get_ref().readable() => r?,
                    () = tokio::time::sleep_until(deadline) => return Ok(()),
                    () = conn.stopping() => return Ok(()),
                }
            }
        }
        Proto::H2 => {
            let c = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(server_cfg.h2_max_concurrent_streams)
                .max_header_list_size(server_cfg.max_header_bytes as u32)
                .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
                .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
                .keep_alive_interval(Some(Duration::from_secs(30)))
                .serve_connection(
                    phased(H2Guard::new(io), phase, false, server_cfg, None, None),
                    // Boxed: a request's future is large (about 6 KB), and each stream's is
                    // spawned as a task, moved whole by value several times on the way; a box
                    // is one pointer to move.
                    service_fn(move |req| Box::pin(answer(req))),
                );
            // Boxed: an HTTP/2 session is large, and the connection task is as large as its
            // largest state (a parked HTTP/1 connection's included).
            let mut c = Box::pin(c);
            let closing = std::pin::pin!(conn.closing(&idle));
            match Until::new(c.as_mut(), closing).await {
                Done::Main(r) => r.map_err(Into::into),
                Done::Signal(()) => {
                    c.as_mut().graceful_shutdown();
                    c.await.map_err(Into::into)
                }
            }
        }
    }
}

/// One HTTP/1 session on `io`: requests until the client closes, shutdown or the keep-alive
/// timeout ends it (`None`), or until it is parked (the stream back, the session's buffers
/// freed).
async fn h1_session<I, S, B>(
    io: H1Io<I>,
    server_cfg: &ServerConfig,
    svc: S,
    phase: &Phase,
    conn: &mut Conn,
) -> Result<Option<H1Io<I>>, BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B> + Unpin,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        // The head and idle timers are `Phases`' (hyper's would also run while idle, and
        // close without a 408).
        .header_read_timeout(None)
        .max_buf_size(server_cfg.max_header_bytes)
        .keep_alive(true);
    // hyper parses into an array on the stack for its default of 100, and into a vector
    // allocated per request for any other figure set here.
    if server_cfg.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        b.max_headers(server_cfg.max_headers);
    }
    let mut c = b.serve_connection(io, svc).with_upgrades();
    let closing = std::pin::pin!(conn.closing(phase));
    match Until::new(&mut c, closing).await {
        Done::Main(r) => r?,
        Done::Signal(()) => {
            Pin::new(&mut c).graceful_shutdown();
            c.await?;
            return Ok(None);
        }
    }
    // Upgraded (the tunnel has the stream), or closed by the client.
    let Some(parts) = c.into_parts() else {
        return Ok(None);
    };
    if !parts.io.inner().get_ref().parked() {
        return Ok(None);
    }
    if !parts.read_buf.is_empty() {
        // Cannot happen: a session is parked only with nothing read since its last answer.
        // Closing is the safe answer if it ever does.
        tracing::debug!("parked with unparsed bytes; closing");
        return Ok(None);
    }
    Ok(Some(parts.io))
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type H1Io<I> = TokioIo<SendTimeout<Phases<I>>>;

/// The connection's timers around `io`: idle and head ([`Phases`]), then stalled writes.
fn phased<I>(
    io: I,
    phase: Arc<Phase>,
    h1: bool,
    cfg: &ServerConfig,
    park_after: Option<Duration>,
    stall: Option<Stall>,
) -> TokioIo<SendTimeout<Phases<I>>> {
    let io = Phases::new(
        io,
        phase,
        h1,
        cfg.keepalive_timeout,
        cfg.client_header_timeout,
        park_after,
    );
    let io = SendTimeout::new(io, cfg.send_timeout);
    TokioIo::new(match stall {
        Some(s) => io.with_stall(s),
        None => io,
    })
}
