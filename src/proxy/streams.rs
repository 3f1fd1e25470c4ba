//! An HTTP/2 connection's streams run inside the connection's own task.
//!
//! hyper hands each accepted stream's future to its executor; with tokio's, every stream is a
//! task of its own: a task cell allocated, the future (about 320 bytes) moved into it whole
//! several times on the way, scheduled and woken apart from its connection, and when it answers
//! it wakes the connection's task to write the answer out. Here the executor hands the future
//! to the connection being polled, and the connection's task runs it beside the connection
//! (`FuturesUnordered`): one box per stream, the future moved into it once, and an answer that
//! became ready is written on the same turn. nginx and HAProxy also run a connection's streams
//! where the connection runs.
//!
//! The streams of one connection run on the worker that runs the connection (a spawned task
//! could be taken by another worker); a stream's own work is small next to its wait for the
//! upstream.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;

/// A stream's future, boxed (hyper's futures for a connection are of more than one type, and
/// a stream's type names its executor).
type Task = Pin<Box<dyn Future<Output = ()> + Send>>;

thread_local! {
    /// The streams hyper hands over while a connection is polled on this thread
    /// ([`Streams::poll`]; `None` when none is). hyper hands a stream over only from inside its
    /// connection's poll, so the connection that is polled is the one it belongs to: no queue
    /// shared between the executor and the connection, and no atomic operation per stream.
    static ACCEPTED: RefCell<Option<Vec<Task>>> = const { RefCell::new(None) };
}

/// hyper's executor for HTTP/2 streams: hands each to the connection being polled
/// ([`Streams`]), or spawns it as a task of its own when none is.
#[derive(Clone, Copy, Default)]
pub struct Inline;

impl<F> hyper::rt::Executor<F> for Inline
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        // A stream that panics ends alone, as a task of its own would: its peers on the
        // connection, and the connection, run on (the stream is dropped: reset).
        let fut: Task = Box::pin(std::panic::AssertUnwindSafe(fut).catch_unwind().map(|r| {
            if r.is_err() {
                tracing::error!("an HTTP/2 stream's handler panicked; the stream is reset");
            }
        }));
        let outside = ACCEPTED.with_borrow_mut(|a| match a {
            Some(v) => {
                v.push(fut);
                None
            }
            None => Some(fut),
        });
        if let Some(fut) = outside {
            tokio::spawn(fut);
        }
    }
}

/// A connection future and the streams its executor ([`Inline`]) was given, run together.
/// Ends with the connection; streams still running then are dropped (the client is gone, or,
/// after a graceful shutdown, every stream has already ended).
pub struct Streams<C> {
    conn: Pin<Box<C>>,
    /// Lent to [`ACCEPTED`] while the connection is polled (kept to keep its capacity).
    accepted: Vec<Task>,
    running: FuturesUnordered<Task>,
}

impl<C: Future> Streams<C> {
    /// `conn`, served with [`Inline`] as its executor.
    pub fn new(conn: Pin<Box<C>>) -> Self {
        Self {
            conn,
            accepted: Vec::new(),
            running: FuturesUnordered::new(),
        }
    }

    /// The connection (for its graceful shutdown).
    pub fn conn(&mut self) -> Pin<&mut C> {
        self.conn.as_mut()
    }

    /// How many streams are running.
    #[cfg(test)]
    fn running(&self) -> usize {
        self.running.len()
    }

    /// Polls the running streams until none is ready.
    fn run(&mut self, cx: &mut Context<'_>) {
        while let Poll::Ready(Some(())) = self.running.poll_next_unpin(cx) {}
    }
}

impl<C: Future> Future for Streams<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        // Every field is `Unpin` (the connection and the streams are boxed).
        let this = Pin::into_inner(self);
        // The streams first: an answer that became ready is queued before the connection
        // writes, and goes out on this turn.
        this.run(cx);
        let out = {
            let _lent = Lent::new(&mut this.accepted);
            this.conn.as_mut().poll(cx)
        };
        if out.is_pending() && !this.accepted.is_empty() {
            // Streams accepted on this turn start now.
            for f in this.accepted.drain(..) {
                this.running.push(f);
            }
            this.run(cx);
        }
        out
    }
}

/// A connection's list of accepted streams, lent to [`ACCEPTED`] while the connection is
/// polled, and taken back when this ends, even if the poll unwinds: no list is left behind on
/// the thread to take a later stream that belongs to no connection.
struct Lent<'a>(&'a mut Vec<Task>);

impl<'a> Lent<'a> {
    fn new(list: &'a mut Vec<Task>) -> Self {
        let lent = std::mem::take(list);
        ACCEPTED.with_borrow_mut(|a| *a = Some(lent));
        Self(list)
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        *self.0 = ACCEPTED.with_borrow_mut(Option::take).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// The streams given to the executor run inside the connection's future, and the whole
    /// ends with the connection.
    #[tokio::test]
    async fn streams_run_in_the_connection_task() {
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done2 = Arc::clone(&done);
        let conn = Box::pin(async move {
            let here = tokio::task::try_id();
            for _ in 0..3 {
                let d = Arc::clone(&done2);
                Inline.execute(async move {
                    tokio::task::yield_now().await;
                    // In the connection's own task, not one spawned for it.
                    if tokio::task::try_id() == here {
                        d.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
            // The connection ends only once the streams have run.
            let _ = rx.await;
            7
        });
        let mut streams = Streams::new(conn);
        let watch = {
            let done = Arc::clone(&done);
            async move {
                while done.load(Ordering::SeqCst) < 3 {
                    tokio::task::yield_now().await;
                }
                let _ = tx.send(());
            }
        };
        let joined = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::join!(&mut streams, watch)
        })
        .await;
        let Ok((out, ())) = joined else {
            panic!("the streams did not run in the connection's task within 5 s");
        };
        assert_eq!(out, 7);
        assert_eq!(done.load(Ordering::SeqCst), 3);
        assert_eq!(streams.running(), 0);
    }

    /// Streams still running when the connection ends are dropped with it.
    #[tokio::test]
    async fn streams_left_when_the_connection_ends_are_dropped() {
        let dropped = Arc::new(AtomicUsize::new(0));
        struct Count(Arc<AtomicUsize>);
        impl Drop for Count {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let d = Arc::clone(&dropped);
        let conn = Box::pin(async move {
            Inline.execute(async move {
                let _c = Count(d);
                std::future::pending::<()>().await;
            });
            tokio::task::yield_now().await;
        });
        let streams = Streams::new(conn);
        streams.await;
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }

    /// A future handed over while no connection is polled runs as a task of its own.
    #[tokio::test]
    async fn a_stream_handed_over_outside_a_connection_runs_on_its_own() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        Inline.execute(async move {
            let _ = tx.send(5);
        });
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx).await;
        assert_eq!(got.ok().and_then(Result::ok), Some(5));
    }

    /// A stream that panics ends alone: the connection and its other streams run on.
    #[tokio::test]
    async fn a_panicking_stream_ends_alone() {
        let done = Arc::new(AtomicUsize::new(0));
        let (d1, d2) = (Arc::clone(&done), Arc::clone(&done));
        let conn = Box::pin(async move {
            Inline.execute(async move {
                tokio::task::yield_now().await;
                panic!("a handler bug");
            });
            Inline.execute(async move {
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                d1.fetch_add(1, Ordering::SeqCst);
            });
            while d2.load(Ordering::SeqCst) < 1 {
                tokio::task::yield_now().await;
            }
            9
        });
        let out = tokio::time::timeout(std::time::Duration::from_secs(5), Streams::new(conn)).await;
        assert_eq!(out.ok(), Some(9));
        assert_eq!(done.load(Ordering::SeqCst), 1);
    }

    /// A connection whose poll unwinds takes its list back: a stream handed over afterwards,
    /// outside any connection, runs as a task of its own instead of joining a stale list.
    #[tokio::test]
    async fn a_connection_poll_that_unwinds_leaves_no_list_behind() {
        let conn = Box::pin(async {
            panic!("a connection bug");
        });
        let mut streams = Streams::new(conn);
        let waker = futures_util::task::noop_waker();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = Pin::new(&mut streams).poll(&mut Context::from_waker(&waker));
        }));
        assert!(unwound.is_err());
        assert!(ACCEPTED.with_borrow(Option::is_none));
        let (tx, rx) = tokio::sync::oneshot::channel();
        Inline.execute(async move {
            let _ = tx.send(());
        });
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx).await;
        assert!(matches!(got, Ok(Ok(()))));
    }
}
