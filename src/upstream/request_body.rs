//! The request body on its way to the upstream: cut off when the client sends nothing for
//! `client_body_timeout` (the client gets a `408`, and the backend is not blamed), and telling
//! the forwarder when it has been sent in full, so the upstream's response-head timer starts
//! then and not while a slow client is still uploading. A small body of a declared length is
//! read in full first instead ([`read_whole`]), and goes out with its head in one write.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

/// What a body can fail with.
type BoxError = Box<dyn std::error::Error + Send + Sync>;
use crate::idle::IdleTimer;

/// When a request body was sent in full, in microseconds after the request started (0: not
/// yet). Shared between the body and the forwarder.
#[derive(Debug, Default)]
pub struct SentAt(AtomicU64);

impl SentAt {
    /// When the body was sent in full, if it has been.
    pub fn get(&self) -> Option<Duration> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    fn set(&self, d: Duration) {
        let us = (d.as_micros().min(u128::from(u64::MAX)) as u64).max(1);
        self.0.store(us, Ordering::Release);
    }
}

/// The client stopped sending its body for longer than `client_body_timeout`.
#[derive(Debug)]
pub struct ClientBodyTimeout(pub Duration);

impl std::fmt::Display for ClientBodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "client sent no body bytes for {:?}", self.0)
    }
}

impl std::error::Error for ClientBodyTimeout {}

/// The largest request body read in full before its request is sent (by [`read_whole`] on
/// hyper's server, into the output buffer on the HTTP/1.1 path of our own); one larger, or of
/// no declared length, is streamed to the upstream as it comes.
pub const READ_WHOLE_MAX: u64 = 16 * 1024;

/// Why a body was not read in full.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadFault {
    /// The client sent nothing for the idle time.
    Timeout,
    /// The body failed (a reset, a malformed chunk), or was not as long as it said.
    Failed,
}

/// Reads a body of `len` bytes, its declared length, in full; each wait for more is bounded by
/// `idle`. A frame already received is taken without a timer; a body in one frame is kept as
/// it came (no copy). Trailers are dropped (a body sent with a length has nowhere to put them).
pub async fn read_whole<B>(body: &mut B, len: usize, idle: Duration) -> Result<Bytes, ReadFault>
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut first: Option<Bytes> = None;
    let mut more = BytesMut::new();
    loop {
        let ready = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx)));
        let frame = match ready.await {
            Poll::Ready(f) => f,
            Poll::Pending => match tokio::time::timeout(idle, body.frame()).await {
                Ok(f) => f,
                Err(_) => return Err(ReadFault::Timeout),
            },
        };
        let data = match frame {
            None => break,
            Some(Err(_)) => return Err(ReadFault::Failed),
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_trailers) => continue,
            },
        };
        let had = first.as_ref().map_or(0, Bytes::len) + more.len();
        if had + data.len() > len {
            return Err(ReadFault::Failed);
        }
        match first.take() {
            None if more.is_empty() => first = Some(data),
            f => {
                more.reserve(len - more.len());
                if let Some(f) = f {
                    more.extend_from_slice(&f);
                }
                more.extend_from_slice(&data);
            }
        }
        if body.is_end_stream() {
            break;
        }
    }
    let whole = match first {
        Some(f) => f,
        None => more.freeze(),
    };
    if whole.len() == len {
        Ok(whole)
    } else {
        Err(ReadFault::Failed)
    }
}

/// A client's request body, as forwarded.
pub struct ClientBody {
    body: Incoming,
    idle: IdleTimer,
    /// `None` for a body that is empty from the start (nothing to wait for).
    sent: Option<(Instant, Arc<SentAt>)>,
}

impl ClientBody {
    /// Wraps `body`; `sent` learns when it has been sent in full (skipped for an empty body).
    pub fn new(body: Incoming, idle: Duration, start: Instant) -> (Self, Option<Arc<SentAt>>) {
        let sent = (!body.is_end_stream()).then(|| Arc::new(SentAt::default()));
        let me = Self {
            body,
            idle: IdleTimer::new(idle),
            sent: sent.as_ref().map(|s| (start, Arc::clone(s))),
        };
        (me, sent)
    }

    fn finished(&mut self) {
        if let Some((start, s)) = self.sent.take() {
            s.set(start.elapsed());
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(r) => {
                match &r {
                    None => this.finished(),
                    Some(Ok(_)) => {
                        if this.body.is_end_stream() {
                            this.finished();
                        }
                        this.idle.progress();
                    }
                    Some(Err(_)) => {}
                }
                Poll::Ready(r.map(|x| x.map_err(BoxError::from)))
            }
            Poll::Pending => match this.idle.poll_expired(cx) {
                Poll::Ready(()) => {
                    Poll::Ready(Some(Err(Box::new(ClientBodyTimeout(this.idle.after())))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::collections::VecDeque;

    use super::*;

    type Step = Option<Result<Frame<Bytes>, &'static str>>;

    /// A body that hands out its frames in order; `None` in the script is a wait that nothing
    /// ends.
    struct Script(VecDeque<Step>, bool);

    fn script(frames: Vec<Step>) -> Script {
        Script(frames.into(), false)
    }

    fn data(s: &'static str) -> Step {
        Some(Ok(Frame::data(Bytes::from_static(s.as_bytes()))))
    }

    impl Body for Script {
        type Data = Bytes;
        type Error = &'static str;

        fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Step> {
            match self.0.front() {
                None => {
                    self.1 = true;
                    Poll::Ready(None)
                }
                Some(None) => Poll::Pending,
                Some(Some(_)) => Poll::Ready(self.0.pop_front().flatten()),
            }
        }

        fn is_end_stream(&self) -> bool {
            self.1
        }
    }

    const IDLE: Duration = Duration::from_secs(1);

    #[tokio::test]
    async fn a_body_in_one_frame_is_kept_as_it_came() {
        let whole = read_whole(&mut script(vec![data("hello")]), 5, IDLE).await;
        assert_eq!(whole.unwrap(), "hello");
    }

    #[tokio::test]
    async fn frames_are_joined_and_trailers_dropped() {
        let trailers = Some(Ok(Frame::trailers(http::HeaderMap::new())));
        let mut body = script(vec![data("he"), data(""), data("llo"), trailers]);
        assert_eq!(read_whole(&mut body, 5, IDLE).await.unwrap(), "hello");
    }

    #[tokio::test]
    async fn a_body_longer_or_shorter_than_it_said_or_failing_fails() {
        let cases: [fn() -> Vec<Step>; 4] = [
            || vec![data("hello!")],
            || vec![data("hel"), data("lo!")],
            || vec![data("hell")],
            || vec![data("he"), Some(Err("reset"))],
        ];
        for (i, frames) in cases.iter().enumerate() {
            let got = read_whole(&mut script(frames()), 5, IDLE).await;
            assert_eq!(got, Err(ReadFault::Failed), "case {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_sending_times_out_after_the_idle_time() {
        let started = Instant::now();
        let got = read_whole(&mut script(vec![data("he"), None]), 5, IDLE).await;
        assert_eq!(got, Err(ReadFault::Timeout));
        assert_eq!(started.elapsed(), IDLE);
    }
}
