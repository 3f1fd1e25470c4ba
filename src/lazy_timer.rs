//! A timer for a connection's waits that is moved forward only when it fires: a busy
//! connection does not register a timer with the runtime per wait.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Instant;

/// A connection's timer for its waits, moved forward only when it fires: a busy connection
/// does not register a timer per wait (a wait whose deadline is later than the timer's lets it
/// fire early and sets it again then). A client connection of the HTTP/1.1 path has one; a
/// bare upstream connection has one that goes into the pool with it, for the waits of the
/// requests sent on it. The one task waiting on the connection at a time is the one woken;
/// a timer that fires while its connection is idle wakes the task that waited last, which
/// finds nothing to do.
#[derive(Default)]
pub struct Lazy(Option<Pin<Box<tokio::time::Sleep>>>);

impl Lazy {
    /// Ready once `deadline` has passed.
    pub fn poll_until(&mut self, cx: &mut Context<'_>, deadline: Instant) -> Poll<()> {
        let s = self
            .0
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if s.deadline() > deadline {
            s.as_mut().reset(deadline);
        }
        loop {
            if s.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if s.deadline() >= deadline {
                return Poll::Ready(());
            }
            s.as_mut().reset(deadline);
        }
    }
}
