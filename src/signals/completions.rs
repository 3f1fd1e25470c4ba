//! Completions by class of request since the last tick, written lock-free by the data path and
//! taken (swapped to zero) by the controller: the limit's input.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::admission::limit::CLASSES;

/// Per-class count and summed latency, plus dropped requests.
pub struct Completions {
    n: [AtomicU64; CLASSES],
    us: [AtomicU64; CLASSES],
    dropped: AtomicU64,
}

impl Default for Completions {
    fn default() -> Self {
        Self {
            n: std::array::from_fn(|_| AtomicU64::new(0)),
            us: std::array::from_fn(|_| AtomicU64::new(0)),
            dropped: AtomicU64::new(0),
        }
    }
}

impl Completions {
    /// A response from the backend of `class` after `latency_us`.
    pub fn ok(&self, class: usize, latency_us: u64) {
        let c = class.min(CLASSES - 1);
        self.n[c].fetch_add(1, Ordering::Relaxed);
        self.us[c].fetch_add(latency_us, Ordering::Relaxed);
    }

    /// A 5xx, timeout or connect failure.
    pub fn dropped(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts since the last call: (count by class, microseconds by class, dropped).
    pub fn take(&self) -> ([u64; CLASSES], [u64; CLASSES], u64) {
        (
            std::array::from_fn(|i| self.n[i].swap(0, Ordering::AcqRel)),
            std::array::from_fn(|i| self.us[i].swap(0, Ordering::AcqRel)),
            self.dropped.swap(0, Ordering::AcqRel),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_returns_and_clears() {
        let c = Completions::default();
        c.ok(4, 1_000);
        c.ok(4, 3_000);
        c.dropped();
        let (n, us, d) = c.take();
        assert_eq!((n[4], us[4], d), (2, 4_000, 1));
        assert_eq!(c.take().0[4], 0);
    }
}
