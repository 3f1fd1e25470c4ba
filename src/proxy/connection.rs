//! One client connection served: HTTP/1 sessions (parked when idle) or an HTTP/2 session,
//! inside the connection's timers, until the client closes, shutdown or the keep-alive timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::h2_guard::H2Guard;
use super::handler::{handle, ConnInfo};
use super::park::{Parkable, Parked, ParkingLot, Resume, PARK_AFTER};
use super::phases::{Phase, Phases};
use super::send_timeout::{SendTimeout, Stall};
use super::server::Proto;
use super::streams::{Inline, Streams};
use super::until::{Done, Until};
use crate::config::ServerConfig;
use crate::runtime::Shared;

/// Streams a client may reset before we accept them, per connection (rapid reset).
const H2_MAX_PENDING_RESETS: usize = 20;
/// Streams we may reset for protocol errors before the connection is closed.
const H2_MAX_LOCAL_RESETS: usize = 256;

/// hyper's limit on request header lines when none is set.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Shutdown, as every connection sees it: a flag, and a wake-up for those waiting on it.
#[derive(Debug, Default)]
pub(crate) struct Stop {
    set: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Stop {
    /// Begins shutdown: every connection waiting on it wakes.
    pub(crate) fn set(&self) {
        self.set.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A wait for shutdown, registered now (so a `set` after this call is not missed).
    pub(crate) fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }

    /// Resolves once shutdown has begun.
    pub(crate) async fn wait(&self) {
        loop {
            let n = self.notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_set() {
                return;
            }
            n.await;
        }
    }
}

/// What a connection task holds: its place under the connection cap, its part in the drain,
/// and the shutdown signal.
pub(crate) struct Conn {
    pub(crate) stop: Arc<Stop>,
    pub(super) _live: mpsc::Sender<()>,
    pub(super) _slot: OwnedSemaphorePermit,
    pub(super) gauge: prometheus::IntGauge,
    pub(crate) parked: prometheus::IntGauge,
}

impl Conn {
    pub(super) fn open(self) -> Self {
        self.gauge.inc();
        self
    }

    /// Resolves once shutdown has begun.
    pub(crate) async fn stopping(&mut self) {
        self.stop.wait().await;
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

/// Serves one accepted connection (cleartext or TLS) as `proto` until it closes or is parked
/// in `lot`.
pub(crate) async fn serve_io<I>(
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
    // The handler's future is the request's whole future: no future around it holding the
    // request (and its own copy of the handler's state) as well.
    let answer = move |req| {
        // Busy from here until the response body ends: no idle timer meanwhile.
        let active = info.phase.enter();
        handle(Arc::clone(&shared), Arc::clone(&info), req, active)
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
            // Each stream's future runs in this task, beside the connection (`streams.rs`).
            let c = hyper::server::conn::http2::Builder::new(Inline)
                .timer(TokioTimer::new())
                .max_concurrent_streams(server_cfg.h2_max_concurrent_streams)
                .max_header_list_size(server_cfg.max_header_bytes as u32)
                .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
                .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS)
                // No keep-alive PING: an idle connection ends at `keepalive_timeout` and a
                // stalled write at `send_timeout` (the `phased` timers), as nginx's and
                // HAProxy's do. hyper's pinger would lock its state and read the clock on every
                // poll of the connection and every frame received (about 450 instructions a
                // request).
                .serve_connection(
                    phased(H2Guard::new(io), phase, false, server_cfg, None, None),
                    // Boxed: a request's future is large (about 2.8 KB), and hyper moves each
                    // stream's by value into its own future, which is boxed again to run
                    // (`streams.rs`); a box is one pointer to move. The box is allocated first
                    // and the future made in it: `Box::pin(answer(req))` made it on the stack
                    // and copied all of it, whichever state is live, into memory not yet in
                    // the cache.
                    service_fn(move |req| {
                        let slot = Box::new_uninit();
                        Box::into_pin(Box::write(slot, answer(req)))
                    }),
                );
            // Boxed: an HTTP/2 session is large, and the connection task is as large as its
            // largest state (a parked HTTP/1 connection's included).
            let mut c = Streams::new(Box::pin(c));
            let closing = std::pin::pin!(conn.closing(&idle));
            match Until::new(&mut c, closing).await {
                Done::Main(r) => r.map_err(Into::into),
                Done::Signal(()) => {
                    c.conn().graceful_shutdown();
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

pub(super) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub(super) type H1Io<I> = TokioIo<SendTimeout<Phases<I>>>;

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
