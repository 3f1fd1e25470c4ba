//! The response body: the upstream's stream (holding the admission permit and the endpoint
//! slot until it ends or the client goes away) or a small local body.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::admission::Permit;
use crate::runtime::WaitQueue;
use crate::upstream::EndpointGuard;

/// What keeps counts exact while a response streams; released on drop.
#[derive(Default)]
pub struct Held {
    pub permit: Option<Permit>,
    pub endpoint: Option<EndpointGuard>,
    /// Told when the permit is released, so a waiting critical request can take the slot.
    pub queue: Option<&'static WaitQueue>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.permit.take().is_some() {
            if let Some(q) = self.queue {
                q.slot_released();
            }
        }
    }
}

/// A response body.
pub enum ProxyBody {
    Upstream { body: Incoming, held: Held },
    Local(Full<Bytes>),
}

impl ProxyBody {
    /// A small local body.
    pub fn local(b: impl Into<Bytes>) -> Self {
        ProxyBody::Local(Full::new(b.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream { body, held } => {
                let r = Pin::new(body).poll_frame(cx);
                if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
                    // The stream is over: release the slot now, not when hyper drops the body.
                    *held = Held::default();
                }
                r
            }
            ProxyBody::Local(b) => Pin::new(b).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Local(b) => b.size_hint(),
        }
    }
}
