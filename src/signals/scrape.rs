//! The hit ratio read from a backend stats endpoint (JSON or Prometheus text) on an interval,
//! for backends whose responses carry no cache header. Parsing is pure; the task that fetches
//! it is `runtime::background::scrape_hit_ratio`.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::ScrapeFormat;

/// The last scraped ratio and when it was read (0: never).
#[derive(Default)]
pub struct Scraped {
    bits: AtomicU64,
    at_ms: AtomicU64,
}

impl Scraped {
    /// Stores a fresh reading.
    pub fn store(&self, ratio: f64, now_ms: u64) {
        self.bits.store(ratio.to_bits(), Ordering::Relaxed);
        self.at_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The reading, if one was taken within `max_age_ms`.
    pub fn fresh(&self, now_ms: u64, max_age_ms: u64) -> Option<f64> {
        let at = self.at_ms.load(Ordering::Relaxed);
        (at != 0 && now_ms.saturating_sub(at) <= max_age_ms)
            .then(|| f64::from_bits(self.bits.load(Ordering::Relaxed)))
    }
}

/// Extracts a ratio in 0..=1 from a stats document.
pub fn parse(body: &[u8], format: &ScrapeFormat) -> Result<f64, String> {
    let v = match format {
        ScrapeFormat::JsonPointer(p) => {
            let doc: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
            doc.pointer(p)
                .and_then(serde_json::Value::as_f64)
                .ok_or_else(|| format!("no number at {p}"))?
        }
        ScrapeFormat::Prometheus(name) => {
            let text = std::str::from_utf8(body).map_err(|_| "not UTF-8 text".to_string())?;
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .find(|l| {
                    l.strip_prefix(name.as_str())
                        .is_some_and(|rest| rest.starts_with([' ', '{']))
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.trim().parse::<f64>().ok())
                .ok_or_else(|| format!("no sample of {name}"))?
        }
    };
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v} is not a ratio between 0 and 1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_json_and_prometheus() {
        let j = ScrapeFormat::JsonPointer("/cache/hit_ratio".into());
        assert_eq!(parse(br#"{"cache":{"hit_ratio":0.42}}"#, &j), Ok(0.42));
        assert!(parse(br#"{"cache":{}}"#, &j).is_err());
        assert!(parse(b"nope", &j).is_err());
        let p = ScrapeFormat::Prometheus("cache_hit_ratio".into());
        let text = b"# HELP cache_hit_ratio x\n# TYPE cache_hit_ratio gauge\ncache_hit_ratio_total 5\ncache_hit_ratio{shard=\"a\"} 0.75\n";
        assert_eq!(parse(text, &p), Ok(0.75));
        assert!(parse(b"cache_hit_ratio 7\n", &p).is_err(), "not a ratio");
    }

    #[test]
    fn stale_readings_are_unknown() {
        let s = Scraped::default();
        assert_eq!(s.fresh(1_000, 3_000), None);
        s.store(0.5, 1_000);
        assert_eq!(s.fresh(3_000, 3_000), Some(0.5));
        assert_eq!(s.fresh(5_000, 3_000), None);
    }
}
