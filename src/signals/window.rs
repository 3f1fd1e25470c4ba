//! Windowed signals written lock-free by the data path: one-second slots of atomic counters and
//! a log-scale latency histogram. The controller rotates slots and reads one snapshot per tick.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::admission::SignalSnapshot;

/// Slots kept; the window can span up to `SLOTS - 1` seconds.
pub const SLOTS: usize = 16;
/// Histogram buckets: bucket `i` holds latencies below `BASE_US * 2^((i+1)/4)`.
const BUCKETS: usize = 88;
const BASE_US: f64 = 50.0;

#[derive(Default)]
struct Slot {
    epoch: AtomicU64,
    hist: Hist,
    responses: AtomicU64,
    errors: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct Hist([AtomicU64; BUCKETS]);

impl Default for Hist {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

/// Result of a forwarded request, as far as the signals care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cache {
    Hit,
    Miss,
    Unknown,
}

/// The windowed recorder.
pub struct Window {
    slots: [Slot; SLOTS],
}

impl Default for Window {
    fn default() -> Self {
        Self::new()
    }
}

fn bucket(us: u64) -> usize {
    if (us as f64) < BASE_US {
        return 0;
    }
    let i = (4.0 * (us as f64 / BASE_US).log2()).floor() as usize;
    i.min(BUCKETS - 1)
}

/// Upper bound of a bucket, in milliseconds.
fn bucket_upper_ms(i: usize) -> f64 {
    BASE_US * 2f64.powf((i as f64 + 1.0) / 4.0) / 1000.0
}

impl Window {
    /// An empty window.
    pub fn new() -> Self {
        Self {
            slots: std::array::from_fn(|_| Slot::default()),
        }
    }

    fn slot(&self, now_ms: u64) -> &Slot {
        &self.slots[((now_ms / 1000) as usize) % SLOTS]
    }

    /// Records one upstream response (or failure: `error` with latency to the failure).
    pub fn record(&self, now_ms: u64, latency_us: u64, error: bool, cache: Cache) {
        let s = self.slot(now_ms);
        s.hist.0[bucket(latency_us)].fetch_add(1, Ordering::Relaxed);
        s.responses.fetch_add(1, Ordering::Relaxed);
        if error {
            s.errors.fetch_add(1, Ordering::Relaxed);
        }
        match cache {
            Cache::Hit => s.hits.fetch_add(1, Ordering::Relaxed),
            Cache::Miss => s.misses.fetch_add(1, Ordering::Relaxed),
            Cache::Unknown => 0,
        };
    }

    /// Forgets everything recorded (the backend came back from an outage).
    pub fn forget(&self) {
        for s in self.slots.iter() {
            for b in &s.hist.0 {
                b.store(0, Ordering::Relaxed);
            }
            for c in [&s.responses, &s.errors, &s.hits, &s.misses] {
                c.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Clears slots that fell out of the ring and the one about to be written next
    /// (controller tick).
    pub fn rotate(&self, now_ms: u64) {
        let now_s = now_ms / 1000;
        for ahead in 0..=1u64 {
            let sec = now_s + ahead;
            let s = &self.slots[(sec as usize) % SLOTS];
            if s.epoch.load(Ordering::Acquire) != sec {
                for b in &s.hist.0 {
                    b.store(0, Ordering::Relaxed);
                }
                for c in [&s.responses, &s.errors, &s.hits, &s.misses] {
                    c.store(0, Ordering::Relaxed);
                }
                s.epoch.store(sec, Ordering::Release);
            }
        }
    }

    /// Sums the last `window_s` seconds (the current, partial second included).
    pub fn snapshot(&self, now_ms: u64, window_s: u64) -> SignalSnapshot {
        let now_s = now_ms / 1000;
        let window_s = window_s.clamp(1, SLOTS as u64 - 1);
        let mut hist = [0u64; BUCKETS];
        let (mut n, mut errors, mut hits, mut misses) = (0, 0, 0, 0);
        for s in &self.slots {
            let epoch = s.epoch.load(Ordering::Acquire);
            if epoch > now_s || epoch + window_s <= now_s {
                continue;
            }
            for (acc, b) in hist.iter_mut().zip(&s.hist.0) {
                *acc += b.load(Ordering::Relaxed);
            }
            n += s.responses.load(Ordering::Relaxed);
            errors += s.errors.load(Ordering::Relaxed);
            hits += s.hits.load(Ordering::Relaxed);
            misses += s.misses.load(Ordering::Relaxed);
        }
        let pct = |q: f64| -> f64 {
            let total: u64 = hist.iter().sum();
            if total == 0 {
                return 0.0;
            }
            let rank = (q * total as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in hist.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return bucket_upper_ms(i);
                }
            }
            bucket_upper_ms(BUCKETS - 1)
        };
        SignalSnapshot {
            samples: n,
            p50_ms: pct(0.50),
            p90_ms: pct(0.90),
            p99_ms: pct(0.99),
            hit_ratio: (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64),
            error_rate: (n > 0).then(|| errors as f64 / n as f64),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_within_a_bucket_of_truth() {
        let w = Window::new();
        w.rotate(0);
        for i in 0..1000u64 {
            w.record(500, 1000 + i * 10, false, Cache::Unknown); // 1 ms .. 11 ms
        }
        let s = w.snapshot(900, 5);
        assert_eq!(s.samples, 1000);
        assert!((5.5..=7.0).contains(&s.p50_ms), "{}", s.p50_ms);
        assert!((10.5..=13.0).contains(&s.p99_ms), "{}", s.p99_ms);
        assert_eq!(s.hit_ratio, None, "no cache header seen is unknown");
        assert_eq!(s.error_rate, Some(0.0));
    }

    #[test]
    fn old_seconds_leave_the_window() {
        let w = Window::new();
        w.rotate(0);
        w.record(100, 500_000, true, Cache::Miss);
        for sec in 1..=3u64 {
            w.rotate(sec * 1000);
            w.record(sec * 1000 + 10, 2_000, false, Cache::Hit);
        }
        let s = w.snapshot(3_500, 10);
        assert_eq!(s.samples, 4);
        assert_eq!(s.hit_ratio, Some(0.75));
        assert_eq!(s.error_rate, Some(0.25));
        let s = w.snapshot(3_500, 2);
        assert_eq!(s.samples, 2, "seconds 2 and 3 only");
        assert!(s.p99_ms < 5.0);
        // Sixteen seconds later the ring has come round: the old slot was cleared, not re-counted.
        for sec in 4..=20u64 {
            w.rotate(sec * 1000);
        }
        assert_eq!(w.snapshot(20_500, 15).samples, 0);
    }
}
