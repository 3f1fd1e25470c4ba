//! The response body: the upstream's stream (holding the admission permit and the endpoint
//! slot until it ends or the client goes away) or a small local body.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::admission::per_client::ClientSlot;
use crate::admission::Permit;
use crate::clock::Clock;
use crate::h1::bare::BareBody;
use crate::idle::IdleTimer;
use crate::upstream::pool::Lease;
use crate::upstream::EndpointGuard;

/// Any error a body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What keeps counts exact while a response streams; released on drop (the permit's slot goes
/// straight to the head of the wait line).
#[derive(Default)]
pub struct Held {
    pub permit: Option<Permit>,
    pub endpoint: Option<EndpointGuard>,
    /// The client's share of the limit.
    pub client: Option<ClientSlot>,
}

/// Where an upstream body is read from.
pub enum Source {
    /// hyper's client connection.
    Hyper(Incoming),
    /// A bare connection of the HTTP/1.1 path's pool.
    Bare(BareBody),
}

impl Source {
    fn is_end_stream(&self) -> bool {
        match self {
            Source::Hyper(b) => b.is_end_stream(),
            Source::Bare(b) => b.is_end_stream(),
        }
    }
}

/// An upstream body, cut off when the upstream sends nothing for `idle`.
pub struct UpstreamBody {
    body: Source,
    held: Held,
    /// The HTTP/1 connection holding this response's admission slot while it streams (its
    /// write path frees the slot if the client stops reading).
    conn: Option<std::sync::Arc<super::phases::Phase>>,
    idle: IdleTimer,
    /// The connection it came on, back to its endpoint's pool once the body has ended.
    back: Option<Back>,
}

/// A pooled connection to give back, and what the pool needs to know.
pub struct Back {
    /// hyper's connection (a bare one is held by its body).
    pub lease: Option<Lease>,
    pub clock: Clock,
    pub max_idle: usize,
}

impl UpstreamBody {
    /// The stream is over: every count it held is released now, not when hyper drops it.
    fn settle(&mut self) {
        self.back = None;
        self.held = Held::default();
        if let Some(c) = self.conn.take() {
            c.release();
        }
    }

    /// The body has ended: its connection is free for the next request.
    fn give_back(&mut self) {
        if let (Some(b), Some(ep)) = (self.back.take(), self.held.endpoint.as_ref()) {
            let pool = &ep.endpoint.pool;
            match (&mut self.body, b.lease) {
                (Source::Hyper(_), Some(lease)) => pool.put(lease, b.clock.now_ms(), b.max_idle),
                (Source::Bare(bare), _) => bare.give_back(pool, b.clock.now_ms(), b.max_idle),
                _ => {}
            }
        }
    }

    fn poll_source(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.body {
            Source::Hyper(b) => Pin::new(b)
                .poll_frame(cx)
                .map(|r| r.map(|x| x.map_err(BoxError::from))),
            Source::Bare(b) => b.poll_frame(cx),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // hyper drops a body that is empty from the start without polling it.
        if self.body.is_end_stream() {
            self.give_back();
        }
        if let Some(c) = self.conn.take() {
            c.release();
        }
    }
}

/// A response body.
pub enum ProxyBody {
    /// Boxed: a response is moved whole several times between the exchange and the client's
    /// connection (about 320 bytes with the upstream body inline, 150 boxed).
    Upstream(Box<UpstreamBody>),
    Local(Full<Bytes>),
}

impl ProxyBody {
    /// A small local body.
    pub fn local(b: impl Into<Bytes>) -> Self {
        ProxyBody::Local(Full::new(b.into()))
    }

    /// The upstream's body, holding `held` until it ends. On an HTTP/1 connection (`conn`)
    /// the admission slot is handed to the connection, whose write path frees it early if the
    /// client stops reading.
    pub fn upstream(
        body: Source,
        mut held: Held,
        idle: Duration,
        back: Option<Back>,
        conn: Option<std::sync::Arc<super::phases::Phase>>,
    ) -> Self {
        let conn = match (conn, held.permit.take()) {
            (Some(c), Some(permit)) => match c.hold(permit) {
                None => Some(c),
                back => {
                    held.permit = back;
                    None
                }
            },
            (_, permit) => {
                held.permit = permit;
                None
            }
        };
        ProxyBody::Upstream(Box::new(UpstreamBody {
            body,
            held,
            conn,
            idle: IdleTimer::new(idle),
            back,
        }))
    }
}

#[derive(Debug)]
struct UpstreamIdle(Duration);

impl std::fmt::Display for UpstreamIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream sent no body bytes for {:?}", self.0)
    }
}

impl std::error::Error for UpstreamIdle {}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Upstream(u) => match u.poll_source(cx) {
                Poll::Ready(r) => {
                    if r.is_none() {
                        u.give_back();
                    }
                    if matches!(r, None | Some(Err(_))) {
                        u.settle();
                    } else {
                        u.idle.progress();
                    }
                    Poll::Ready(r)
                }
                Poll::Pending => match u.idle.poll_expired(cx) {
                    Poll::Ready(()) => {
                        u.settle();
                        Poll::Ready(Some(Err(Box::new(UpstreamIdle(u.idle.after())))))
                    }
                    Poll::Pending => Poll::Pending,
                },
            },
            ProxyBody::Local(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(u) => u.body.is_end_stream(),
            ProxyBody::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(u) => match &u.body {
                Source::Hyper(b) => b.size_hint(),
                Source::Bare(b) => b.size_hint(),
            },
            ProxyBody::Local(b) => b.size_hint(),
        }
    }
}
