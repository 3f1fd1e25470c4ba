//! A connection that fails a write the client has not accepted for `timeout` (nginx's
//! `send_timeout`). A client that stops reading a response otherwise holds its admission slot
//! for as long as it likes: hyper stops polling the body while the socket is full, so nothing
//! on the request side would ever notice. The timer lives per connection and is armed only
//! while a write is stalled.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `S`, with a deadline on stalled writes.
pub struct SendTimeout<S> {
    inner: S,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// When the current stall began.
    armed_at: Option<Instant>,
    stall: Option<Stall>,
    /// This stall has released the response's slot already.
    released: bool,
}

/// Frees the admission slot of a response whose client stopped reading (`server.stall_release`):
/// time spent on a slow client is not backend work. The connection still ends at the send
/// timeout.
pub struct Stall {
    pub phase: std::sync::Arc<super::phases::Phase>,
    pub after: Duration,
    /// Counts the slots released.
    pub released: prometheus::IntCounter,
}

impl<S> SendTimeout<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            timer: None,
            armed: false,
            armed_at: None,
            stall: None,
            released: false,
        }
    }

    /// Also frees the streaming response's slot once a write has stalled for `stall.after`.
    pub fn with_stall(mut self, stall: Stall) -> Self {
        self.stall = Some(stall);
        self
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let timeout = self.timeout;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        let release_after = self
            .stall
            .as_ref()
            .map(|s| s.after)
            .filter(|a| *a < timeout);
        if !self.armed {
            let now = Instant::now();
            timer.as_mut().reset(now + release_after.unwrap_or(timeout));
            self.armed = true;
            self.armed_at = Some(now);
            self.released = false;
        }
        loop {
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) if !self.released && release_after.is_some() => {
                    self.released = true;
                    if let Some(s) = &self.stall {
                        if s.phase.release_stalled() {
                            s.released.inc();
                        }
                    }
                    let since = self.armed_at.unwrap_or_else(Instant::now);
                    timer.as_mut().reset(since + timeout);
                }
                Poll::Ready(()) => {
                    return Poll::Ready(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("client accepted no response bytes for {timeout:?}"),
                    ))
                }
            }
        }
    }

    fn wrote<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match r {
            Poll::Ready(x) => {
                self.armed = false;
                Poll::Ready(x)
            }
            Poll::Pending => self.stalled(cx).map(Err),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for SendTimeout<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for SendTimeout<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(r, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.wrote(r, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_fails_after_the_timeout() {
        // A pipe whose reader never reads: writes stall once its buffer is full.
        let (a, _b) = tokio::io::duplex(64);
        let mut w = SendTimeout::new(a, Duration::from_secs(5));
        let started = Instant::now();
        let r = w.write_all(&[0u8; 4096]).await;
        assert_eq!(r.err().map(|e| e.kind()), Some(io::ErrorKind::TimedOut));
        assert!(started.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_rearms_the_timer() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = SendTimeout::new(a, Duration::from_secs(5));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let mut total = 0;
            while total < 4096 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                total += tokio::io::AsyncReadExt::read(&mut b, &mut buf)
                    .await
                    .unwrap_or(0);
            }
        });
        // Slow (64 bytes a second) but steady: never 5 s without progress.
        assert!(w.write_all(&[0u8; 4096]).await.is_ok());
        let _ = reader.await;
    }
}
