//! Bounded per-client memory: a fixed array of atomic slots, indexed by a hash of the client
//! key. Random keys can evict each other but can never grow it; no lock, no allocation after
//! construction.

use std::sync::atomic::{AtomicU64, Ordering};

const TAG_BITS: u32 = 16;
const STRIKE_BITS: u32 = 6;
const TIME_BITS: u32 = 64 - TAG_BITS - STRIKE_BITS;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
const STRIKE_MASK: u64 = (1 << STRIKE_BITS) - 1;

/// What is remembered of one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientEntry {
    /// Milliseconds (on the caller's clock) until which the entry applies.
    pub until_ms: u64,
    /// How many times the client came back early.
    pub strikes: u32,
}

/// A direct-mapped table of client entries.
pub struct ClientTable {
    slots: Box<[AtomicU64]>,
    mask: u64,
}

impl ClientTable {
    /// A table of at least `size` slots (rounded up to a power of two, at least 1).
    pub fn new(size: usize) -> Self {
        let n = size.max(1).next_power_of_two();
        Self {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: (n - 1) as u64,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    fn slot(&self, hash: u64) -> (&AtomicU64, u64) {
        let idx = (hash & self.mask) as usize;
        let tag = (hash >> 48) | 1; // never 0, so an empty slot matches nobody
        (&self.slots[idx], tag)
    }

    /// The entry for `hash` if one is stored and still applies at `now_ms`.
    pub fn get(&self, hash: u64, now_ms: u64) -> Option<ClientEntry> {
        let (slot, tag) = self.slot(hash);
        let v = slot.load(Ordering::Relaxed);
        if v >> (64 - TAG_BITS) != tag {
            return None;
        }
        let until_ms = v & TIME_MASK;
        (now_ms < until_ms).then_some(ClientEntry {
            until_ms,
            strikes: ((v >> TIME_BITS) & STRIKE_MASK) as u32,
        })
    }

    /// Remembers `entry` for `hash`, replacing whatever shared its slot.
    pub fn put(&self, hash: u64, entry: ClientEntry) {
        let (slot, tag) = self.slot(hash);
        let v = (tag << (64 - TAG_BITS))
            | ((u64::from(entry.strikes) & STRIKE_MASK) << TIME_BITS)
            | (entry.until_ms & TIME_MASK);
        slot.store(v, Ordering::Relaxed);
    }

    /// Slots holding an entry that still applies (a scan: for status, not the hot path).
    pub fn live(&self, now_ms: u64) -> usize {
        self.slots
            .iter()
            .filter(|s| {
                let v = s.load(Ordering::Relaxed);
                v != 0 && now_ms < v & TIME_MASK
            })
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::retry::mix64;

    #[test]
    fn remembers_until_expiry() {
        let t = ClientTable::new(64);
        let h = mix64(1);
        t.put(
            h,
            ClientEntry {
                until_ms: 1_000,
                strikes: 2,
            },
        );
        assert_eq!(
            t.get(h, 999),
            Some(ClientEntry {
                until_ms: 1_000,
                strikes: 2
            })
        );
        assert_eq!(t.get(h, 1_000), None);
        assert_eq!(t.get(mix64(2), 0), None);
    }

    #[test]
    fn random_keys_cannot_grow_it() {
        let t = ClientTable::new(1000);
        assert_eq!(t.capacity(), 1024);
        for i in 0..100_000 {
            t.put(
                mix64(i),
                ClientEntry {
                    until_ms: 10_000,
                    strikes: 1,
                },
            );
        }
        assert_eq!(t.capacity(), 1024);
        assert!(t.live(0) <= 1024);
    }

    #[test]
    fn a_different_key_in_the_same_slot_is_not_confused() {
        let t = ClientTable::new(1);
        let (a, b) = (mix64(10), mix64(11));
        t.put(
            a,
            ClientEntry {
                until_ms: 5_000,
                strikes: 0,
            },
        );
        assert!(t.get(b, 0).is_none(), "tag differs");
        t.put(
            b,
            ClientEntry {
                until_ms: 5_000,
                strikes: 0,
            },
        );
        assert!(t.get(a, 0).is_none(), "evicted");
    }
}
