//! A monotonic millisecond clock shared by the data path and the controller.

use std::time::Instant;

/// Milliseconds since the process started.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock starting now. It begins at 1 s so that "0" can mean "never" in stored times.
    pub fn new() -> Self {
        Self {
            base: Instant::now() - std::time::Duration::from_secs(1),
        }
    }

    /// Milliseconds on this clock.
    pub fn now_ms(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }
}
