//! A request-rate budget per client key (`gate.per_client_rate`): a token bucket in a bounded,
//! direct-mapped table of atomic slots, like the client memory. A client over its own budget is
//! answered `429` (DESIGN §6); nothing else about it changes, its place in line included.
//! Two clients that share a slot share a budget, which errs on the side of less for them only;
//! racing updates of one slot may let a request or two through, never refuse one wrongly twice.

use std::sync::atomic::{AtomicU64, Ordering};

/// Tokens are counted in thousandths, so a budget below one request a second still refills.
const MILLI: u64 = 1000;

/// Per-client token buckets.
pub struct ClientBudget {
    /// Per slot: the client's tag (high 16 bits) and the last refill time in ms (low 48), and the
    /// tokens left in thousandths.
    slots: Box<[[AtomicU64; 2]]>,
    mask: u64,
}

/// A client's budget.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Requests a second, sustained.
    pub per_s: f64,
    /// Requests at once after a quiet spell.
    pub burst: f64,
}

impl ClientBudget {
    /// A table of at least `size` buckets (rounded up to a power of two).
    pub fn new(size: usize) -> Self {
        let n = size.max(1).next_power_of_two();
        Self {
            slots: (0..n)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            mask: n as u64 - 1,
        }
    }

    /// Takes one token for `client` at `now_ms`: `Ok` if it had one, else `Err` with the
    /// seconds until its next token.
    pub fn take(&self, client: u64, rate: Rate, now_ms: u64) -> Result<(), f64> {
        let slot = &self.slots[(client & self.mask) as usize];
        let tag = (client >> 48) | 1;
        let cap = (rate.burst.max(1.0) * MILLI as f64) as u64;
        let head = slot[0].load(Ordering::Acquire);
        let now = now_ms & ((1 << 48) - 1);
        let tokens = if head >> 48 == tag {
            let last = head & ((1 << 48) - 1);
            let refill = (now.saturating_sub(last) as f64 * rate.per_s) as u64;
            (slot[1].load(Ordering::Acquire) + refill).min(cap)
        } else {
            // A client not seen (or evicted): a full bucket.
            cap
        };
        slot[0].store((tag << 48) | now, Ordering::Release);
        if tokens >= MILLI {
            slot[1].store(tokens - MILLI, Ordering::Release);
            Ok(())
        } else {
            slot[1].store(tokens, Ordering::Release);
            Err((MILLI - tokens) as f64 / MILLI as f64 / rate.per_s.max(1e-6))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_client_gets_its_burst_then_its_rate_and_others_are_untouched() {
        let b = ClientBudget::new(64);
        let rate = Rate {
            per_s: 10.0,
            burst: 5.0,
        };
        let ok = (0..8).filter(|_| b.take(7, rate, 1_000).is_ok()).count();
        assert_eq!(ok, 5, "the burst");
        let wait = b.take(7, rate, 1_000).unwrap_err();
        assert!((0.09..=0.11).contains(&wait), "{wait}");
        assert!(b.take(8, rate, 1_000).is_ok(), "another client has its own");
        // 10 a second: 100 ms later one more, not two.
        assert!(b.take(7, rate, 1_100).is_ok());
        assert!(b.take(7, rate, 1_100).is_err());
        // A long quiet spell refills to the burst, no more.
        let ok = (0..8).filter(|_| b.take(7, rate, 60_000).is_ok()).count();
        assert_eq!(ok, 5);
    }
}
