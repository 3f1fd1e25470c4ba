//! The retry policy: how long a rejected client is told to wait.

/// Parameters of `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Never tell a client less than this.
    pub min_s: f64,
    /// Never tell a client more than this.
    pub max_s: f64,
    /// Uniform spread added on top of the base, so a wave of rejects comes back flat.
    pub jitter_s: f64,
    /// Each early return multiplies the base by this.
    pub escalation: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min_s: 1.0,
            max_s: 120.0,
            jitter_s: 10.0,
            escalation: 2.0,
        }
    }
}

impl RetryPolicy {
    /// Whole seconds to put in `Retry-After`.
    ///
    /// `eta_s` is when this client's priority is expected in; `strikes` how many times it came
    /// back too early; `rand` any uniformly random 64-bit value (the caller owns the randomness,
    /// so tests can seed it).
    pub fn retry_after(&self, eta_s: f64, strikes: u32, rand: u64) -> u32 {
        let base = eta_s.max(self.min_s) * self.escalation.max(1.0).powi(strikes.min(16) as i32);
        let unit = (rand >> 11) as f64 / (1u64 << 53) as f64;
        let total = base + unit * self.jitter_s.max(0.0);
        total
            .min(self.max_s)
            .max(self.min_s.min(self.max_s))
            .ceil()
            .max(1.0) as u32
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
    fn spreads_uniformly_across_the_jitter_window() {
        let p = RetryPolicy {
            min_s: 1.0,
            max_s: 600.0,
            jitter_s: 20.0,
            escalation: 2.0,
        };
        let mut buckets = [0u32; 20];
        for i in 0..20_000u64 {
            let s = p.retry_after(10.0, 0, mix64(i));
            assert!((11..=30).contains(&s), "{s}");
            buckets[(s - 11) as usize] += 1;
        }
        // Flat: every one-second slot of the window gets a fair share (1000 expected).
        for (i, b) in buckets.iter().enumerate() {
            assert!((800..1250).contains(b), "slot {i}: {b}");
        }
    }

    #[test]
    fn caps_at_max_and_floors_at_min() {
        let p = RetryPolicy {
            min_s: 2.0,
            max_s: 60.0,
            jitter_s: 5.0,
            escalation: 2.0,
        };
        for i in 0..1000 {
            assert!(p.retry_after(1000.0, 0, mix64(i)) <= 60);
            assert!(p.retry_after(0.0, 0, mix64(i)) >= 2);
        }
    }

    #[test]
    fn escalates_for_early_returners() {
        let p = RetryPolicy {
            min_s: 1.0,
            max_s: 1000.0,
            jitter_s: 0.0,
            escalation: 2.0,
        };
        assert_eq!(p.retry_after(5.0, 0, 0), 5);
        assert_eq!(p.retry_after(5.0, 1, 0), 10);
        assert_eq!(p.retry_after(5.0, 3, 0), 40);
        assert_eq!(p.retry_after(5.0, 30, 0), 1000, "capped");
    }
}
