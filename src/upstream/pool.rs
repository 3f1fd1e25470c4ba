//! The keep-alive pool of HTTP/1.1 upstream connections, one per endpoint: a lock-free queue
//! of idle `SendRequest` handles on `hyper::client::conn`. A checkout is a pop, a return a
//! push, with nothing hashed, no lock taken and no task spawned per request (hyper-util's
//! legacy pool keys a map under a mutex and spawns a task per request to wait for the
//! connection to be ready again).
//!
//! A connection goes back to the queue when its response body has been read to the end. One
//! taken from the queue may not have noticed yet that it is free again (its task runs next):
//! the checkout waits for it. A connection the upstream closed while idle is skipped; one it
//! closed just as the request went out gives the request back untouched, and it is sent on a
//! new connection.

use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_queue::SegQueue;
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tower_service::Service;

use super::connector::Paced;
use super::request_body::ClientBody;
use crate::lazy_timer::Lazy;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection to one endpoint, between requests.
pub struct Idle {
    tx: http1::SendRequest<ClientBody>,
    /// When it was last returned, in ms on the pool's clock.
    since_ms: u64,
}

/// A bare connection to one endpoint, between requests (the HTTP/1.1 path of our own,
/// `h1::exchange`, speaks on it itself).
pub struct RawIdle {
    stream: tokio::net::TcpStream,
    /// The timer of the waits on it, kept with it (not registered per request).
    timer: Lazy,
    since_ms: u64,
}

/// The idle connections of one endpoint.
#[derive(Default)]
pub struct IdlePool {
    idle: SegQueue<Idle>,
    raw: SegQueue<RawIdle>,
    /// Connections opened, over the pool's life (for tests and metrics).
    opened: AtomicU64,
}

impl std::fmt::Debug for IdlePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdlePool")
            .field("idle", &self.idle.len())
            .field("raw", &self.raw.len())
            .field("opened", &self.opened.load(Ordering::Relaxed))
            .finish()
    }
}

/// Why a request did not get a response head.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened (refused, unreachable, connect timeout, TLS).
    Connect(BoxError),
    /// The connection failed while sending or waiting (hyper's error, its chain kept).
    Request(hyper::Error),
    /// Any other failure after connecting (the h2c client's errors).
    Other(BoxError),
    /// No response head before the deadline (`upstream.response_header_timeout`).
    Timeout,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e) => write!(f, "connect: {e}"),
            SendError::Request(e) => write!(f, "{e}"),
            SendError::Other(e) => write!(f, "{e}"),
            SendError::Timeout => f.write_str("no response head in time"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e.as_ref()),
            SendError::Request(e) => Some(e),
            SendError::Other(e) => Some(e.as_ref()),
            SendError::Timeout => None,
        }
    }
}

impl SendError {
    /// Whether no connection could be made (the endpoint counts a failure).
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_))
    }
}

/// A connection checked out for one request; put it back with [`IdlePool::put`] once its
/// response body has ended (dropped otherwise, which closes it).
pub struct Lease {
    tx: http1::SendRequest<ClientBody>,
}

impl IdlePool {
    /// Connections opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Idle connections now.
    pub fn idle(&self) -> usize {
        self.idle.len() + self.raw.len()
    }

    /// Counts a connection opened.
    pub fn note_opened(&self) {
        self.opened.fetch_add(1, Ordering::Relaxed);
    }

    /// A bare idle connection idle for less than `max_idle_ms`, with its timer.
    pub fn take_raw(&self, now_ms: u64, max_idle_ms: u64) -> Option<(tokio::net::TcpStream, Lazy)> {
        while let Some(c) = self.raw.pop() {
            if now_ms.saturating_sub(c.since_ms) < max_idle_ms {
                return Some((c.stream, c.timer));
            }
        }
        None
    }

    /// Returns a bare connection whose response has ended, with its timer, unless `max_idle`
    /// are idle.
    pub fn put_raw(
        &self,
        stream: tokio::net::TcpStream,
        timer: Lazy,
        now_ms: u64,
        max_idle: usize,
    ) {
        if self.raw.len() < max_idle {
            self.raw.push(RawIdle {
                stream,
                timer,
                since_ms: now_ms,
            });
        }
    }

    /// Returns a connection whose response has ended, unless `max_idle` are idle already.
    pub fn put(&self, lease: Lease, now_ms: u64, max_idle: usize) {
        if self.idle.len() < max_idle && !lease.tx.is_closed() {
            self.idle.push(Idle {
                tx: lease.tx,
                since_ms: now_ms,
            });
        }
    }

    /// Drops the idle connections older than `max_idle_ms` or closed by the upstream (on the
    /// controller tick; a checkout skips them too).
    pub fn sweep(&self, now_ms: u64, max_idle_ms: u64) {
        for _ in 0..self.idle.len() {
            let Some(c) = self.idle.pop() else { break };
            if fresh(&c, now_ms, max_idle_ms) {
                self.idle.push(c);
            }
        }
        for _ in 0..self.raw.len() {
            let Some(c) = self.raw.pop() else { break };
            if still_open(&c.stream) && now_ms.saturating_sub(c.since_ms) < max_idle_ms {
                self.raw.push(c);
            }
        }
    }

    /// Drops every idle connection (the connection settings changed).
    pub fn clear(&self) {
        while self.idle.pop().is_some() {}
        while self.raw.pop().is_some() {}
    }

    /// Sends `req` (origin-form target) on an idle connection, or on a new one from
    /// `connector` to `dst`. Returns the response head and the connection's lease.
    pub async fn send(
        &self,
        connector: &Paced,
        dst: &Uri,
        mut req: Request<ClientBody>,
        now_ms: u64,
        max_idle_ms: u64,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        while let Some(c) = self.idle.pop() {
            if !fresh(&c, now_ms, max_idle_ms) {
                continue;
            }
            let mut tx = c.tx;
            if !tx.is_ready() && poll_fn(|cx| tx.poll_ready(cx)).await.is_err() {
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok((resp, Lease { tx })),
                Err(mut e) => match e.take_message() {
                    // Closed before the request went out: it is untouched, try another.
                    Some(r) => req = r,
                    None => return Err(SendError::Request(e.into_error())),
                },
            }
        }
        let mut tx = self.connect(connector, dst).await?;
        let resp = tx.send_request(req).await.map_err(SendError::Request)?;
        Ok((resp, Lease { tx }))
    }

    async fn connect(
        &self,
        connector: &Paced,
        dst: &Uri,
    ) -> Result<http1::SendRequest<ClientBody>, SendError> {
        let mut connector = connector.clone();
        let io = connector
            .call(dst.clone())
            .await
            .map_err(SendError::Connect)?;
        let (tx, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Request)?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }
}

/// Whether an idle upstream connection is still open: nothing to read on it, asked of the
/// socket itself (one `recv` with `MSG_PEEK`, whatever readiness the reactor last reported).
/// An end of stream, an error or unexpected bytes mean it is not to be used.
pub fn still_open(s: &tokio::net::TcpStream) -> bool {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(socket2::SockRef::from(s).peek(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
fn fresh(c: &Idle, now_ms: u64, max_idle_ms: u64) -> bool {
    !c.tx.is_closed() && now_ms.saturating_sub(c.since_ms) < max_idle_ms
}

/// `d` in whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}
