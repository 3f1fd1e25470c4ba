//! A monotonic millisecond clock shared by the data path and the controller. It reads tokio's
//! clock, so an async test that pauses time (`tokio::time::pause`) moves it by advancing
//! instead of sleeping; outside a paused runtime it is the system's monotonic clock.

use tokio::time::Instant;

/// Milliseconds since a day before the process started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    base: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock {
    /// A clock starting now at [`Clock::START_MS`]: "0" can mean "never" in stored times,
    /// and a first arrival up to a day before the process started (a signed return ticket
    /// from before a restart) has a place on it.
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
        }
    }

    /// Where the clock starts: one day.
    pub const START_MS: u64 = 86_400_000;

    /// Milliseconds on this clock.
    pub fn now_ms(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.base)
            .as_millis() as u64
            + Self::START_MS
    }

    /// `t` on this clock (an instant read already, so the caller reads the time once).
    pub fn at_ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_millis() as u64 + Self::START_MS
    }

    /// The time on this clock of a wall-clock instant `age_ms` before now (at least 1).
    pub fn ago(now_ms: u64, age_ms: u64) -> u64 {
        now_ms.saturating_sub(age_ms).max(1)
    }
}

/// Wall-clock milliseconds: for what other machines and later processes read (tickets, the
/// fleet's shared client memory, history points).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_paused_test_moves_the_clock_by_advancing_it() {
        let c = Clock::new();
        let before = c.now_ms();
        tokio::time::advance(std::time::Duration::from_secs(90)).await;
        assert_eq!(c.now_ms() - before, 90_000);
    }
}
