//! A timer for "nothing happened for this long", allocated the first time something makes us
//! wait (most bodies never do) and pushed back on each sign of progress.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

pub struct IdleTimer {
    after: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    pub fn new(after: Duration) -> Self {
        Self { after, timer: None }
    }

    /// The idle time that expires it.
    pub fn after(&self) -> Duration {
        self.after
    }

    /// Something moved: the idle time counts from now.
    pub fn progress(&mut self) {
        if let Some(t) = self.timer.as_mut() {
            t.as_mut().reset(Instant::now() + self.after);
        }
    }

    /// Nothing moved this poll: ready once the idle time has passed.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let after = self.after;
        self.timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)))
            .as_mut()
            .poll(cx)
    }
}
