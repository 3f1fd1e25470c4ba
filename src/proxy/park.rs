//! Idle HTTP/1 connections parked: after [`PARK_AFTER`] without a request a hyper session
//! (its buffers, the parser's state) is dropped; a cleartext socket waits in the [`Lot`] (one
//! epoll set, one thread), anything else on its own task, until its next request. The HTTP/1.1
//! path of our own parks its idle connections in the same lot, after
//! `h1::server::OWN_PARK_AFTER`, and the lot resumes them on that path.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use super::connection::{serve_io, Conn};
use super::lot::Lot;
use super::server::{conn_info, Proto};
use crate::runtime::Shared;

/// How long an HTTP/1 connection is idle before its session (hyper's read and write buffers,
/// the parser's state) is dropped, leaving the bare socket waiting for readability. A busy
/// connection is never idle that long; a mobile client's keep-alive connection mostly is.
pub(crate) const PARK_AFTER: Duration = Duration::from_secs(1);

/// What a parked connection waits on: its socket becoming readable. A cleartext socket is
/// handed to the [`Lot`] instead (a TLS session's state cannot be dropped while idle).
pub(crate) trait Parkable: Sized {
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
pub(crate) type ParkingLot = Lot<Resume>;

/// What a parked connection keeps to be served again: no allocation of its own (it lives in
/// the lot's slot), so a parked connection leaves nothing behind on the heap.
pub(crate) struct Resume {
    pub(crate) peer: std::net::SocketAddr,
    pub(crate) trusted: bool,
    pub(crate) conn: Conn,
}

/// Starts the thread that watches parked connections; `None` if the system refuses it (an
/// epoll set or a thread), and idle connections then wait on their own tasks. The lot is
/// closed when the returned guard drops.
pub(super) fn parking_lot(shared: &Arc<Shared>) -> Option<LotGuard> {
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
pub(super) struct LotGuard(pub(super) Arc<ParkingLot>);

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
    let stream = match TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "resuming a parked connection failed");
            return;
        }
    };
    let cfg = shared.snapshot.load().compiled.config.server.clone();
    if cfg.own_http1 {
        let info = super::server::conn_info_own(peer, trusted);
        crate::h1::server::serve(stream, shared, info, conn, Some(lot)).await;
        return;
    }
    let info = conn_info(peer, false, trusted);
    if let Err(e) = serve_io(stream, Proto::H1, &cfg, shared, info, conn, Some(lot)).await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Counts a parked connection while it lives.
pub(crate) struct Parked(prometheus::IntGauge);

impl Parked {
    pub(crate) fn new(g: &prometheus::IntGauge) -> Self {
        g.inc();
        Self(g.clone())
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.0.dec();
    }
}
