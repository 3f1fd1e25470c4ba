//! A cap on what one client key may hold at once (in flight and waiting in line), as a share of
//! the current limit, so one client (a retry loop, a scraper, a broken app) cannot take every
//! slot. It is work-conserving: a free slot goes to whoever asks, and the cap bites only when a
//! request would have to wait in line while other clients hold or wait for slots too. Counters live in a fixed table indexed by the client hash; two
//! clients that share a counter share a cap, which errs on the side of less for them only.

use std::sync::atomic::{AtomicU32, Ordering};

/// Per-client counters.
pub struct ClientInflight {
    slots: Box<[AtomicU32]>,
    mask: u64,
}

/// One request of a client, counted until dropped.
#[derive(Debug)]
pub struct ClientSlot(&'static AtomicU32);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ClientInflight {
    /// A table of `size` counters (rounded up to a power of two).
    pub fn new(size: usize) -> Self {
        let n = size.max(1).next_power_of_two();
        Self {
            slots: (0..n).map(|_| AtomicU32::new(0)).collect(),
            mask: n as u64 - 1,
        }
    }

    /// The most one client may hold under `limit`: `share` of it, at least one.
    pub fn cap(limit: u32, share: f64) -> u32 {
        ((f64::from(limit) * share).ceil() as u32).max(1)
    }

    /// Counts one more request for `client`; with it, what the client held before.
    pub fn enter(&'static self, client: u64) -> (ClientSlot, u32) {
        let slot = &self.slots[(client & self.mask) as usize];
        let before = slot.fetch_add(1, Ordering::Relaxed);
        (ClientSlot(slot), before)
    }

    /// What `client` holds now.
    pub fn held(&self, client: u64) -> u32 {
        self.slots[(client & self.mask) as usize].load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_a_client_holds() {
        let t: &'static ClientInflight = Box::leak(Box::new(ClientInflight::new(1000)));
        assert_eq!(ClientInflight::cap(10, 0.5), 5);
        assert_eq!(ClientInflight::cap(1, 0.1), 1, "at least one");
        let held: Vec<_> = (0..5).map(|_| t.enter(7)).collect();
        assert_eq!(
            held.iter().map(|h| h.1).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(t.enter(8).1, 0, "another client is not affected");
        drop(held);
        assert_eq!(t.held(7), 0);
    }
}
