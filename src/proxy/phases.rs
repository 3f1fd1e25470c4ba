//! Connection phases and their timers. A client connection is *busy* while any request on it is
//! being answered (from the service call until the response body ends), and *idle* otherwise.
//! An idle connection is closed quietly after `keepalive_timeout`. On HTTP/1, once the first
//! byte of the next request head arrives, the head must be complete within
//! `client_header_timeout`, or the client gets a `408` and the connection closes (hyper's own
//! header timer also ran while idle and closed without a word).
//!
//! The timer lives per connection and is armed only while the connection waits for the client.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Requests being answered on one connection.
#[derive(Debug, Default)]
pub struct Phase {
    active: AtomicU32,
    /// The connection's reader, woken when the last request ends (hyper may have polled the
    /// socket while the connection was busy, and would not look again until bytes arrive).
    reader: AtomicWaker,
    /// Told when the connection has been idle for the keep-alive timeout: its server then
    /// closes it gracefully (on HTTP/2 with a GOAWAY, so the client opens no stream into a
    /// closing connection).
    pub idle: tokio::sync::Notify,
    /// Requests started on the connection (a head timer belongs to one of them).
    started: AtomicU32,
    /// The admission slot of the HTTP/1 response streaming now, as its gate's id + 1 (0:
    /// none): released by the write path if the client stops reading (`server.stall_release`).
    held: AtomicU32,
}

impl Phase {
    /// Marks a request (or an upgraded tunnel) as being answered until the guard drops.
    pub fn enter(self: &Arc<Self>) -> Active {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        Active(Some(Arc::clone(self)))
    }

    fn busy(&self) -> bool {
        self.active.load(Ordering::Relaxed) > 0
    }

    /// A response's slot, handed to the connection while its body streams; given back if its
    /// gate is not one of the process's.
    pub fn hold(&self, permit: crate::admission::Permit) -> Option<crate::admission::Permit> {
        let id = permit.gate_id();
        if id == u32::MAX {
            return Some(permit);
        }
        permit.disarm();
        self.held.store(id + 1, Ordering::Release);
        None
    }

    /// The body is done with the slot: freed now unless a stall freed it already.
    pub fn release(&self) {
        self.release_stalled();
    }

    /// The client stopped reading: frees the streaming response's slot, if one is held.
    /// True if it freed one.
    pub fn release_stalled(&self) -> bool {
        match self.held.swap(0, Ordering::AcqRel) {
            0 => false,
            v => {
                if let Some(g) = crate::admission::Gate::by_id(v - 1) {
                    g.release_disarmed();
                }
                true
            }
        }
    }
}

/// One request in progress on its connection.
#[derive(Debug)]
pub struct Active(Option<Arc<Phase>>);

impl Active {
    fn release(&mut self) {
        if let Some(p) = self.0.take() {
            if p.active.fetch_sub(1, Ordering::Relaxed) == 1 {
                p.reader.wake();
            }
        }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.release();
    }
}

/// A response body that keeps its connection busy until it ends.
pub struct Tracked<B> {
    body: B,
    active: Active,
}

impl<B> Tracked<B> {
    pub fn new(body: B, active: Active) -> Self {
        Self { body, active }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(r, Poll::Ready(None | Some(Err(_)))) {
            this.active.release();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

const TIMEOUT_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// What the connection is waiting for while idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Nothing armed (busy, or not yet polled while idle).
    None,
    /// The next request (quiet close at the deadline).
    Next,
    /// The rest of a request head (`408` at the deadline).
    Head,
    /// Idle past the keep-alive timeout: the server is closing the connection.
    Closing,
}

/// `S`, with the idle and head timers of its connection.
pub struct Phases<S> {
    inner: S,
    phase: Arc<Phase>,
    /// HTTP/1: a started head has its own deadline and a 408. HTTP/2 frames are not heads.
    h1: bool,
    keepalive: Duration,
    head: Duration,
    /// HTTP/1: how long a connection stays idle before it is parked (see [`Phases::parked`]).
    park_after: Option<Duration>,
    wait: Wait,
    /// `Phase::started` when the timer was armed: a request since then ends that wait.
    epoch: u32,
    /// When the connection last went idle.
    idle_since: Instant,
    /// When the current wait ends. The timer may be set earlier (it is only moved forward
    /// when it fires, so a busy connection does not touch the timer wheel per request).
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    /// Every byte handed to a write has been flushed.
    flushed: bool,
    parked: bool,
}

impl<S> Phases<S> {
    pub fn new(
        inner: S,
        phase: Arc<Phase>,
        h1: bool,
        keepalive: Duration,
        head: Duration,
        park_after: Option<Duration>,
    ) -> Self {
        let now = Instant::now();
        Self {
            inner,
            phase,
            h1,
            keepalive,
            head,
            park_after,
            wait: Wait::None,
            epoch: 0,
            idle_since: now,
            deadline: now,
            timer: None,
            flushed: true,
            parked: false,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Whether the connection ended its HTTP/1 session to be parked: it was idle for
    /// `park_after` with everything flushed, so its server was told the stream ended (and
    /// the socket stays open). The server drops the session's buffers, waits for the socket to
    /// become readable (or the rest of the keep-alive timeout), and starts a new session on
    /// the same stream. The next read unparks it.
    pub fn parked(&self) -> bool {
        self.parked
    }

    /// When the keep-alive timeout of the current idle period ends.
    pub fn idle_deadline(&self) -> Instant {
        self.idle_since + self.keepalive
    }

    fn arm(&mut self, wait: Wait) {
        let now = Instant::now();
        let deadline = match wait {
            Wait::Head => now + self.head,
            _ => {
                self.idle_since = now;
                match self.park_after {
                    Some(p) if p < self.keepalive => now + p,
                    _ => now + self.keepalive,
                }
            }
        };
        self.set_deadline(deadline);
        self.wait = wait;
    }

    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
        match self.timer.as_mut() {
            // Fires early: moved forward then.
            Some(t) if t.deadline() <= deadline => {}
            Some(t) => t.as_mut().reset(deadline),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// Whether the current wait's deadline has passed (registering for it otherwise).
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(t) = self.timer.as_mut() else {
            return false;
        };
        loop {
            if t.as_mut().poll(cx).is_pending() {
                return false;
            }
            if t.deadline() >= self.deadline {
                return true;
            }
            t.as_mut().reset(self.deadline);
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Phases<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.parked {
            // A new session on the parked stream.
            this.parked = false;
            this.wait = Wait::None;
        }
        if this.phase.busy() {
            this.wait = Wait::None;
            this.phase.reader.register(cx.waker());
            if this.phase.busy() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
        }
        let epoch = this.phase.started.load(Ordering::Relaxed);
        if this.wait == Wait::None || epoch != this.epoch {
            // Idle since the last request ended (hyper need not have read while it was busy).
            this.epoch = epoch;
            this.arm(Wait::Next);
        }
        if this.wait == Wait::Closing {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        match r {
            Poll::Ready(Ok(())) => {
                if this.h1 && this.wait == Wait::Next && buf.filled().len() > before {
                    this.arm(Wait::Head);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if !this.expired(cx) {
                    return Poll::Pending;
                }
                if this.wait == Wait::Next {
                    let now = Instant::now();
                    if now < this.idle_deadline() {
                        if this.park_after.is_some() && this.flushed {
                            // End of stream for this session; the socket stays open.
                            this.parked = true;
                            this.wait = Wait::None;
                            return Poll::Ready(Ok(()));
                        }
                        // Not parkable now: wait out the keep-alive timeout.
                        this.park_after = None;
                        let d = this.idle_deadline();
                        this.set_deadline(d);
                        if !this.expired(cx) {
                            return Poll::Pending;
                        }
                    }
                    // Idle: the server shuts the connection down gracefully; reads go on
                    // meanwhile (an HTTP/2 client's answer to the GOAWAY).
                    this.phase.idle.notify_one();
                    this.wait = Wait::Closing;
                    return Poll::Pending;
                }
                // Best effort: one write of a few bytes into an idle socket.
                let _ = Pin::new(&mut this.inner).poll_write(cx, TIMEOUT_408);
                let _ = Pin::new(&mut this.inner).poll_flush(cx);
                tracing::debug!(
                    timeout_s = this.head.as_secs_f64(),
                    "request head timed out (408)"
                );
                // End of stream: hyper closes the connection.
                this.wait = Wait::None;
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Phases<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.flushed = false;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.flushed = false;
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            this.flushed = true;
        }
        r
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.parked {
            // The session ends, the connection does not.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn conn(
        h1: bool,
    ) -> (
        Phases<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<Phase>,
    ) {
        let (a, b) = tokio::io::duplex(4096);
        let phase = Arc::new(Phase::default());
        let p = Phases::new(
            a,
            Arc::clone(&phase),
            h1,
            Duration::from_secs(75),
            Duration::from_secs(10),
            None,
        );
        (p, b, phase)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_handed_to_a_graceful_close_after_the_keepalive_timeout() {
        let (mut p, mut client, phase) = conn(true);
        let start = Instant::now();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let n = p.read(&mut buf).await.unwrap();
            (n, p)
        });
        phase.idle.notified().await;
        assert!(start.elapsed() >= Duration::from_secs(75));
        assert!(!reader.is_finished(), "reads go on while the server closes");
        client.write_all(b"x").await.unwrap();
        let (n, p) = reader.await.unwrap();
        assert_eq!(n, 1);
        drop(p);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "no 408 for an idle connection");
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_head_gets_a_408_after_the_head_timeout() {
        let (mut p, mut client, _phase) = conn(true);
        tokio::time::sleep(Duration::from_secs(60)).await;
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(p.read(&mut buf).await.unwrap() > 0);
        let started = Instant::now();
        assert_eq!(p.read(&mut buf).await.unwrap(), 0);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(p);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(
            rest.starts_with(b"HTTP/1.1 408 "),
            "{:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_has_no_idle_timer() {
        let (mut p, mut client, phase) = conn(false);
        let active = phase.enter();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            let n = p.read(&mut buf).await.unwrap();
            (n, p)
        });
        tokio::time::sleep(Duration::from_secs(300)).await;
        client.write_all(b"x").await.unwrap();
        let (n, _p) = reader.await.unwrap();
        assert_eq!(n, 1, "still open after 300 s busy");
        drop(active);
    }
}
