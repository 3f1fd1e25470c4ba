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
//!
//! `pool_max_idle_per_endpoint` is applied on the sweep (the controller tick), not as a
//! connection comes back: a connection returned is always kept, and the sweep closes, past the
//! limit, those no request took since the sweep before (the queue is first in, first out, so
//! those are the ones at its head). A load whose concurrency swings above the limit between
//! ticks keeps the connections it needs instead of closing them as they come back and opening
//! new ones a moment later (HAProxy keeps every idle connection and purges them on a period,
//! `pool-purge-delay`). The idle count never exceeds the concurrency of the last tick: every
//! idle connection was in use then.
//!
//! The sweep also drops bare connections the upstream closed while idle. It asks only those
//! idle through a whole tick, and asks the socket only when the reactor reported it readable:
//! a busy pool, or an idle one its upstream leaves alone, costs no system call on the tick.

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
    /// When the last sweep ran, on the pool's clock (only the sweep touches it).
    swept_ms: AtomicU64,
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

    /// Returns a bare connection whose response has ended, with its timer (unless pooling is
    /// off, `max_idle` 0; the sweep applies the limit).
    pub fn put_raw(
        &self,
        stream: tokio::net::TcpStream,
        timer: Lazy,
        now_ms: u64,
        max_idle: usize,
    ) {
        if max_idle > 0 {
            self.raw.push(RawIdle {
                stream,
                timer,
                since_ms: now_ms,
            });
        }
    }

    /// Returns a connection whose response has ended (unless pooling is off, `max_idle` 0; the
    /// sweep applies the limit).
    pub fn put(&self, lease: Lease, now_ms: u64, max_idle: usize) {
        if max_idle > 0 && !lease.tx.is_closed() {
            self.idle.push(Idle {
                tx: lease.tx,
                since_ms: now_ms,
            });
        }
    }

    /// Drops the idle connections older than `max_idle_ms` or closed by the upstream, and past
    /// `max_idle` those no request took since the last sweep (on the controller tick; a checkout
    /// skips the stale ones too).
    pub fn sweep(&self, now_ms: u64, max_idle_ms: u64, max_idle: usize) {
        let before = self.swept_ms.swap(now_ms, Ordering::Relaxed);
        trim(&self.idle, max_idle, |c| {
            (fresh(c, now_ms, max_idle_ms), c.since_ms < before)
        });
        trim(&self.raw, max_idle, |c| {
            let unused = c.since_ms < before;
            // One used since the last sweep answered in full within a tick; only those idle
            // through one are asked, and only when the reactor saw something on them.
            let alive = now_ms.saturating_sub(c.since_ms) < max_idle_ms
                && (!unused || seems_open(&c.stream));
            (alive, unused)
        });
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
    would_block(peek(s))
}

/// [`still_open`], asked of the socket only when the reactor reported it readable since it was
/// last found empty: an idle connection the upstream leaves alone costs no system call. A
/// close the reactor has not reported yet is seen on the next sweep (or, for a request that
/// can be sent again, when it is used).
fn seems_open(s: &tokio::net::TcpStream) -> bool {
    // A "would block" from the peek clears the readiness, so the next sweep asks no more.
    would_block(s.try_io(tokio::io::Interest::READABLE, || peek(s)))
}

fn peek(s: &tokio::net::TcpStream) -> std::io::Result<usize> {
    let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    socket2::SockRef::from(s).peek(&mut probe)
}

fn would_block(r: std::io::Result<usize>) -> bool {
    matches!(r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
/// One pass over `q`, oldest first: drops what `judge` finds dead, then, while more than
/// `max_idle` would stay, what it finds unused since the last sweep. `judge` says (alive, unused).
fn trim<T>(q: &SegQueue<T>, max_idle: usize, judge: impl Fn(&T) -> (bool, bool)) {
    let n = q.len();
    let mut over = n.saturating_sub(max_idle);
    for _ in 0..n {
        let Some(c) = q.pop() else { break };
        match judge(&c) {
            (false, _) => over = over.saturating_sub(1),
            (true, true) if over > 0 => over -= 1,
            _ => q.push(c),
        }
    }
}

fn fresh(c: &Idle, now_ms: u64, max_idle_ms: u64) -> bool {
    !c.tx.is_closed() && now_ms.saturating_sub(c.since_ms) < max_idle_ms
}

/// `d` in whole milliseconds, saturating.
pub fn millis(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// `n` connected loopback streams, and their far ends (kept open).
    async fn streams(n: usize) -> (Vec<tokio::net::TcpStream>, Vec<tokio::net::TcpStream>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (mut near, mut far) = (Vec::new(), Vec::new());
        for _ in 0..n {
            near.push(tokio::net::TcpStream::connect(addr).await.unwrap());
            far.push(l.accept().await.unwrap().0);
        }
        (near, far)
    }

    #[tokio::test]
    async fn connections_past_the_limit_are_kept_until_a_tick_passes_without_them() {
        let pool = IdlePool::default();
        let (near, mut far) = streams(6).await;
        // A burst of six comes back with a limit of two: all are kept.
        for s in near {
            pool.put_raw(s, Lazy::default(), 1_000, 2);
        }
        assert_eq!(pool.idle(), 6);
        // The first sweep has no tick behind it: nothing was unused through one.
        pool.sweep(1_100, 60_000, 2);
        assert_eq!(pool.idle(), 6);
        // One is taken and comes back after that sweep; five stayed unused through the tick.
        let (s, t) = pool.take_raw(1_200, 60_000).unwrap();
        pool.put_raw(s, t, 1_300, 2);
        // The upstream closes one of them.
        drop(far.remove(1));
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.sweep(2_000, 60_000, 2);
        // The closed one and three unused are gone; the one used since and one unused remain.
        assert_eq!(pool.idle(), 2);
        let mut since = Vec::new();
        while let Some(c) = pool.raw.pop() {
            since.push(c.since_ms);
        }
        since.sort_unstable();
        assert_eq!(since, [1_000, 1_300]);
    }

    #[tokio::test]
    async fn a_close_after_the_sweeps_found_a_connection_open_is_seen_on_the_next() {
        let pool = IdlePool::default();
        let (near, mut far) = streams(2).await;
        for s in near {
            pool.put_raw(s, Lazy::default(), 1_000, 8);
        }
        // Asked on the second sweep (idle through a tick) and found open; the third asks the
        // reactor only.
        for now in [1_100, 2_000, 3_000] {
            pool.sweep(now, 60_000, 8);
            assert_eq!(pool.idle(), 2, "sweep at {now}");
        }
        // The upstream closes one while it sits idle.
        drop(far.remove(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.sweep(4_000, 60_000, 8);
        assert_eq!(pool.idle(), 1);
        // So does the other, with bytes first (not an HTTP/1.1 idle connection either).
        use tokio::io::AsyncWriteExt;
        far[0].write_all(b"x").await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        pool.sweep(5_000, 60_000, 8);
        assert_eq!(pool.idle(), 0);
    }

    #[tokio::test]
    async fn connections_in_use_every_tick_are_never_trimmed_and_no_limit_keeps_none() {
        let pool = IdlePool::default();
        let (near, _far) = streams(4).await;
        for s in near {
            pool.put_raw(s, Lazy::default(), 1_000, 1);
        }
        for tick in 1..=3u64 {
            pool.sweep(tick * 1_000 + 500, 60_000, 1);
            // Each is taken and returned between ticks, as under a steady load of four.
            for _ in 0..4 {
                let (s, t) = pool.take_raw(tick * 1_000 + 600, 60_000).unwrap();
                pool.put_raw(s, t, tick * 1_000 + 700, 1);
            }
            assert_eq!(pool.idle(), 4, "tick {tick}");
        }
        // Idle past the limit for a whole tick: trimmed to it.
        pool.sweep(4_500, 60_000, 1);
        pool.sweep(5_500, 60_000, 1);
        assert_eq!(pool.idle(), 1);
        // Pooling off: nothing comes back.
        let (s, t) = pool.take_raw(5_600, 60_000).unwrap();
        pool.put_raw(s, t, 5_700, 0);
        assert_eq!(pool.idle(), 0);
    }
}
