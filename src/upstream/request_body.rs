//! The request body on its way to the upstream: cut off when the client sends nothing for
//! `client_body_timeout` (the client gets a `408`, and the backend is not blamed), and telling
//! the forwarder when it has been sent in full, so the upstream's response-head timer starts
//! then and not while a slow client is still uploading.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
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
