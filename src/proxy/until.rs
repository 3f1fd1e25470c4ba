//! A connection served until a signal (shutdown, or the keep-alive timeout) without polling
//! the signal on every wake-up of the connection: the signal has its own waker and is polled
//! only when that waker fired. A `select!` would poll both, every time, per request several
//! times over.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// Which finished first.
pub enum Done<M, S> {
    Main(M),
    Signal(S),
}

/// `main` until it finishes, or until `signal` does.
pub struct Until<M, S> {
    main: M,
    signal: S,
    flag: Arc<Flag>,
    waker: Waker,
}

/// Set when the signal's waker fires; the task to wake then.
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<M: Future + Unpin, S: Future + Unpin> Until<M, S> {
    pub fn new(main: M, signal: S) -> Self {
        // Woken to begin with: the first poll registers the signal's waker.
        let flag = Arc::new(Flag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(Arc::clone(&flag));
        Self {
            main,
            signal,
            flag,
            waker,
        }
    }
}

impl<M: Future + Unpin, S: Future + Unpin> Future for Until<M, S> {
    type Output = Done<M::Output, S::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.flag.task.register(cx.waker());
        if let Poll::Ready(v) = Pin::new(&mut this.main).poll(cx) {
            return Poll::Ready(Done::Main(v));
        }
        if this.flag.woken.swap(false, Ordering::AcqRel) {
            let mut own = Context::from_waker(&this.waker);
            if let Poll::Ready(s) = Pin::new(&mut this.signal).poll(&mut own) {
                return Poll::Ready(Done::Signal(s));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::{mpsc, oneshot};

    /// `F`, counting its polls.
    struct Counted<F> {
        polls: Arc<AtomicUsize>,
        inner: F,
    }

    impl<F: Future + Unpin> Future for Counted<F> {
        type Output = F::Output;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll(cx)
        }
    }

    fn sum_of(mut rx: mpsc::UnboundedReceiver<u32>) -> Pin<Box<impl Future<Output = u32>>> {
        Box::pin(async move {
            let mut n = 0;
            while let Some(x) = rx.recv().await {
                n += x;
            }
            n
        })
    }

    #[tokio::test]
    async fn the_signal_is_polled_only_when_its_own_waker_fired() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let polls = Arc::new(AtomicUsize::new(0));
        let signal = Counted {
            polls: Arc::clone(&polls),
            inner: stopped,
        };
        let task = tokio::spawn(Until::new(sum_of(rx), signal));
        for _ in 0..10 {
            tx.send(1).unwrap();
            tokio::task::yield_now().await;
        }
        assert_eq!(
            polls.load(Ordering::Relaxed),
            1,
            "once, to register its waker"
        );
        stop.send(()).unwrap();
        assert!(matches!(task.await.unwrap(), Done::Signal(Ok(()))));
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn the_main_future_finishing_first_is_its_output() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (_stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(Until::new(sum_of(rx), stopped));
        tx.send(2).unwrap();
        tx.send(3).unwrap();
        drop(tx);
        assert!(matches!(task.await.unwrap(), Done::Main(5)));
    }
}
