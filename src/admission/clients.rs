//! Bounded per-client memory: a fixed array of atomic slots, indexed by a hash of the client
//! key. Random keys can evict each other but can never grow it; no lock, no allocation after
//! construction.

use std::sync::atomic::{AtomicU64, Ordering};

const TAG_BITS: u32 = 16;
const TIME_BITS: u32 = 64 - TAG_BITS;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;

/// What is remembered of one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientEntry {
    /// Milliseconds (on the caller's clock) until which the client was told to stay away.
    pub until_ms: u64,
    /// When the client first asked (kept across its retries, so it keeps its place in line).
    pub first_ms: u64,
}

/// A direct-mapped table of client entries; an entry is kept `keep_ms` past its `until_ms`.
pub struct ClientTable {
    slots: Box<[[AtomicU64; 2]]>,
    mask: u64,
    keep_ms: u64,
}

impl ClientTable {
    /// A table of at least `size` slots (rounded up to a power of two, at least 1).
    pub fn new(size: usize, keep_ms: u64) -> Self {
        let n = size.max(1).next_power_of_two();
        Self {
            slots: (0..n)
                .map(|_| [AtomicU64::new(0), AtomicU64::new(0)])
                .collect(),
            mask: (n - 1) as u64,
            keep_ms,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn slot(&self, hash: u64) -> (&[AtomicU64; 2], u64) {
        let idx = (hash & self.mask) as usize;
        let tag = (hash >> 48) | 1; // never 0, so an empty slot matches nobody
        (&self.slots[idx], tag)
    }

    /// The entry for `hash` if one is stored and still kept at `now_ms`.
    pub fn get(&self, hash: u64, now_ms: u64) -> Option<ClientEntry> {
        let (slot, tag) = self.slot(hash);
        let v = slot[0].load(Ordering::Acquire);
        if v >> TIME_BITS != tag {
            return None;
        }
        let until_ms = v & TIME_MASK;
        // A racing writer can pair this word with another client's first arrival: that only
        // moves one place in line, never admits or refuses anyone.
        let first_ms = slot[1].load(Ordering::Relaxed);
        (now_ms < until_ms + self.keep_ms).then_some(ClientEntry { until_ms, first_ms })
    }

    /// Remembers `entry` for `hash`, replacing whatever shared its slot.
    pub fn put(&self, hash: u64, entry: ClientEntry) {
        let (slot, tag) = self.slot(hash);
        slot[1].store(entry.first_ms, Ordering::Relaxed);
        slot[0].store(
            (tag << TIME_BITS) | (entry.until_ms & TIME_MASK),
            Ordering::Release,
        );
    }

    /// Slots holding a client told to stay away at `now_ms` (a scan: for status, not the hot path).
    pub fn live(&self, now_ms: u64) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                let v = s[0].load(Ordering::Relaxed);
                v != 0 && now_ms < v & TIME_MASK
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::retry::mix64;

    fn e(until_ms: u64, first_ms: u64) -> ClientEntry {
        ClientEntry { until_ms, first_ms }
    }

    #[test]
    fn remembers_until_expiry_plus_keep() {
        let t = ClientTable::new(64, 500);
        let h = mix64(1);
        t.put(h, e(1_000, 7));
        assert_eq!(t.get(h, 999), Some(e(1_000, 7)));
        assert_eq!(t.get(h, 1_499), Some(e(1_000, 7)), "kept past its deadline");
        assert_eq!(t.get(h, 1_500), None);
        assert_eq!(t.get(mix64(2), 0), None);
        assert_eq!(t.live(999), 1);
        assert_eq!(t.live(1_000), 0);
    }

    #[test]
    fn random_keys_cannot_grow_it() {
        let t = ClientTable::new(1000, 0);
        assert_eq!(t.capacity(), 1024);
        for i in 0..100_000 {
            t.put(mix64(i), e(10_000, 1));
        }
        assert_eq!(t.capacity(), 1024);
        assert!(t.live(0) <= 1024);
    }

    #[test]
    fn a_different_key_in_the_same_slot_is_not_confused() {
        let t = ClientTable::new(1, 0);
        let (a, b) = (mix64(10), mix64(11));
        t.put(a, e(5_000, 0));
        assert!(t.get(b, 0).is_none(), "tag differs");
        t.put(b, e(5_000, 0));
        assert!(t.get(a, 0).is_none(), "evicted");
    }
}
