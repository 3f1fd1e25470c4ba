//! Outages: a backend that answers nothing but failures for a while is down, not slow. While
//! it is down the limit is one probe; when it answers again it is served at once, and what the
//! outage looked like is not taken as evidence about its capacity.

use super::{Controller, Decision, SignalSnapshot};

/// An outage in progress: nothing but failures since `since_ms`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Outage {
    pub(super) since_ms: u64,
    pub(super) progress: f64,
    /// Failures seen during it (one lost request on a quiet backend is not an outage).
    pub(super) failures: u64,
    /// The first answers came at this time, still mixed with failures (the requests sent
    /// while it was down fail as it comes back).
    pub(super) answering_since_ms: Option<u64>,
}

/// Answers still mixed with failures this long after the first: a struggling backend, not
/// one coming back.
pub(super) const MIXED_MS: u64 = 1_000;

/// An outage is failures only for at least this long (a burst of errors is not one)...
pub(super) const OUTAGE_MS: u64 = 500;
/// ...and at least this many of them.
pub(super) const OUTAGE_FAILURES: u64 = 3;
/// After an outage the ramp climbs back to where it was within about this long, as far as the
/// backend's answers allow (the stages still open in order, hit-ratio gates still hold).
pub(super) const RECOVERY_S: f64 = 2.0;

impl Controller {
    /// Notes an outage (only failures, for [`OUTAGE_MS`] or more) and its end (answers and no
    /// failures): true on the tick the backend is back.
    pub(super) fn step_outage(&mut self, now_ms: u64, s: &SignalSnapshot) -> bool {
        let ok: u64 = s.class_n.iter().sum();
        match (ok, s.dropped, self.outage) {
            (0, d, None) if d > 0 => {
                self.outage = Some(Outage {
                    since_ms: now_ms,
                    progress: self.progress,
                    failures: d,
                    answering_since_ms: None,
                });
                false
            }
            (0, d, Some(mut o)) => {
                o.failures += d;
                self.outage = Some(o);
                false
            }
            (n, 0, Some(o)) if n > 0 => {
                self.outage = None;
                if now_ms.saturating_sub(o.since_ms) < OUTAGE_MS || o.failures < OUTAGE_FAILURES {
                    return false;
                }
                if self.engaged {
                    self.recover_to = Some(o.progress.max(self.progress));
                }
                true
            }
            // Answers among the failures: coming back, or struggling if it lasts.
            (n, d, Some(mut o)) if n > 0 => {
                o.failures += d;
                let first = *o.answering_since_ms.get_or_insert(now_ms);
                self.outage = (now_ms.saturating_sub(first) < MIXED_MS).then_some(o);
                false
            }
            _ => false,
        }
    }
}

/// During an outage: one request in flight at a time, a probe of whether the backend is back.
pub(super) fn probing(d: Decision) -> Decision {
    Decision {
        limit: 1,
        ceiling: 1,
        slow_start: false,
        ..d
    }
}
