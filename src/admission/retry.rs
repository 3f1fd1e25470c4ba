//! The retry policy: how long a rejected client is told to wait.

/// Parameters of `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Never tell a client less than this.
    pub min_s: f64,
    /// Never tell a client more than this.
    pub max_s: f64,
    /// The smallest jitter window: rejects spread uniformly over at least this.
    pub jitter_s: f64,
    /// The jitter window grows with the wait: this share of the expected wait.
    pub spread: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_s: 1.0,
            max_s: 120.0,
            jitter_s: 2.0,
            spread: 0.5,
        }
    }
}

impl RetryPolicy {
    /// Whole seconds to put in `Retry-After`.
    ///
    /// `eta_s` is when this client's turn is expected (its place in line over the measured
    /// admission rate, or its stage's expected opening); `rand` any uniformly random 64-bit
    /// value (the caller owns the randomness, so tests can seed it). The answer is spread over
    /// a window that grows with the wait; near `max_s` the window slides down under the cap
    /// instead of collapsing onto it, so a herd told "come back at the cap" still returns flat.
    pub fn retry_after(&self, eta_s: f64, rand: u64) -> u32 {
        let max = self.max_s.max(self.min_s).max(1.0);
        let min = self.min_s.clamp(0.0, max);
        let eta = if eta_s.is_finite() { eta_s } else { max }.max(min);
        let window = self
            .jitter_s
            .max(self.spread.max(0.0) * eta)
            .min((max - min).max(0.0))
            .min(max / 2.0);
        let base = eta.min(max - window).max(min);
        let unit = (rand >> 11) as f64 / (1u64 << 53) as f64;
        ceil(base + unit * window).clamp(1.0, ceil(max)) as u32
    }
}

/// `x` rounded up to a whole number, for the small non-negative figures here (`f64::ceil` is a
/// library call on the baseline x86-64 target, and this is on every reject's path).
fn ceil(x: f64) -> f64 {
    let t = x as i64 as f64;
    if t < x {
        t + 1.0
    } else {
        t
    }
}

/// A fast, well-mixed step of SplitMix64: turns a counter into a uniform 64-bit value.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_rounds_up_as_the_library_does() {
        for x in [
            0.0,
            0.2,
            1.0,
            1.000_001,
            2.5,
            59.99,
            3600.0,
            1e9 + 0.5,
            -0.5,
            -1.5,
        ] {
            assert_eq!(ceil(x), x.ceil(), "{x}");
        }
    }

    fn spread_of(p: &RetryPolicy, eta: f64) -> Vec<u32> {
        (0..20_000u64)
            .map(|i| p.retry_after(eta, mix64(i)))
            .collect()
    }

    #[test]
    fn spreads_uniformly_over_a_window_that_grows_with_the_wait() {
        let p = RetryPolicy {
            min_s: 1.0,
            max_s: 600.0,
            jitter_s: 2.0,
            spread: 0.5,
        };
        let s = spread_of(&p, 40.0);
        // 40 s expected: spread over 40..60 s.
        assert!(
            s.iter().all(|x| (40..=60).contains(x)),
            "{:?}",
            s.iter().max()
        );
        let mut buckets = [0u32; 20];
        for x in &s {
            buckets[((x - 41).min(19)) as usize] += 1;
        }
        for (i, b) in buckets.iter().enumerate() {
            assert!((800..1250).contains(b), "slot {i}: {b}");
        }
        // A short wait still gets the minimum window.
        let short = spread_of(&p, 1.0);
        assert!(short.iter().all(|&x| x <= 3));
        assert!(short.contains(&2) && short.contains(&3));
    }

    #[test]
    fn keeps_the_jitter_at_the_cap() {
        let p = RetryPolicy {
            min_s: 1.0,
            max_s: 60.0,
            jitter_s: 2.0,
            spread: 0.5,
        };
        let s = spread_of(&p, 10_000.0);
        assert!(s.iter().all(|&x| (30..=60).contains(&x)));
        let at_cap = s.iter().filter(|&&x| x == 60).count();
        assert!(
            at_cap < s.len() / 10,
            "{at_cap} of {} told exactly the cap",
            s.len()
        );
        let distinct: std::collections::HashSet<_> = s.iter().collect();
        assert!(distinct.len() >= 25, "{}", distinct.len());
    }

    #[test]
    fn floors_at_min() {
        let p = RetryPolicy {
            min_s: 2.0,
            ..Default::default()
        };
        assert!(spread_of(&p, 0.0).iter().all(|&x| x >= 2));
        assert!(spread_of(&p, f64::NAN).iter().all(|&x| x <= 120));
    }
}
