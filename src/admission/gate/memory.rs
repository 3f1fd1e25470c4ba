//! What the gate remembers of clients and what it tells them: first arrivals and early
//! returns (per client and feature), the critical session's grace, the fleet's shared memory,
//! and the reject with its `Retry-After` from the measured drain.

use std::sync::atomic::Ordering;

use super::super::clients::ClientEntry;
use super::super::controller::Decision;
use super::super::retry::mix64;
use super::{Ask, FeatureState, Gate, GatePolicy, Reject, RejectReason, TOLD_QUEUE};

impl Gate {
    /// From now on, note what clients are told so the fleet can share it.
    pub fn share_told(&self) {
        let _ = self.told.set(crossbeam_queue::ArrayQueue::new(TOLD_QUEUE));
    }

    /// What clients were told since the last call (client memory key, entry), oldest first.
    pub fn drain_told(&self) -> Vec<(u64, ClientEntry)> {
        let Some(q) = self.told.get() else {
            return Vec::new();
        };
        std::iter::from_fn(|| q.pop()).take(TOLD_QUEUE).collect()
    }

    /// What another instance told a client: remembered as if told here (the earlier first
    /// arrival and the later return time win).
    pub fn learn(&self, key: u64, e: ClientEntry, now_ms: u64) {
        let e = match self.early.get(key, now_ms) {
            Some(mine) => ClientEntry {
                until_ms: mine.until_ms.max(e.until_ms),
                first_ms: mine.first_ms.min(e.first_ms),
            },
            None => e,
        };
        self.early.put(key, e);
    }

    pub(super) fn in_grace(&self, policy: &GatePolicy, ask: Ask) -> bool {
        ask.priority >= policy.grace_min_priority
            && self.grace.get(ask.client, ask.now_ms).is_some()
    }

    /// The client's first arrival (remembered here, vouched for by its ticket, or now: the
    /// earliest) and whether it came back early.
    pub(super) fn recall(&self, ask: Ask) -> (u64, bool) {
        let told = if ask.ticket_ms > 0 {
            ask.ticket_ms.min(ask.now_ms)
        } else {
            ask.now_ms
        };
        match self.early.get(early_key(ask), ask.now_ms) {
            Some(e) => (e.first_ms.min(told), ask.now_ms < e.until_ms),
            None => (told, false),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn refuse(
        &self,
        d: &Decision,
        policy: &GatePolicy,
        ask: Ask,
        reason: RejectReason,
        first_ms: u64,
        early: bool,
        (ahead, ahead_same): (usize, usize),
    ) -> Reject {
        let p = ask.priority.index();
        // Everyone ahead is served at the rate of this priority and above, and those of the
        // same priority at this priority's own rate: the turn comes after the slower of the two.
        let rate = |n: usize, rps: f64| (rps > 0.0).then(|| (n as f64 + 1.0) / rps);
        let eta_s = match reason {
            RejectReason::Stage => d.eta_s[p],
            RejectReason::FeatureOff => policy.retry.max_s,
            _ => match (
                rate(ahead, d.drain_rps(ask.priority)),
                rate(ahead_same, d.admit_rps[p]),
            ) {
                (Some(a), Some(b)) => a.max(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => policy.retry.min_s,
            },
        };
        let rand = mix64(self.nonce.0.fetch_add(1, Ordering::Relaxed) ^ ask.client);
        let retry_after_s = policy.retry.retry_after(eta_s, rand);
        // A little slack (a quarter of the delay, at most a second) keeps a polite client whose
        // clock rounds differently from counting as early.
        let ms = u64::from(retry_after_s) * 1000;
        let until_ms = ask.now_ms + ms - (ms / 4).min(1000);
        let told = ClientEntry { until_ms, first_ms };
        self.early.put(early_key(ask), told);
        if let Some(q) = self.told.get() {
            let _ = q.push((early_key(ask), told));
        }
        Reject {
            reason,
            retry_after_s,
            early: early && ask.state != FeatureState::On,
            first_ms,
        }
    }
}

/// Early returns and first arrivals are remembered per client and feature: a client told to
/// wait for its feed may still log in.
pub(super) fn early_key(ask: Ask) -> u64 {
    ask.client ^ mix64(ask.feature)
}

/// A feature's key for the client memory: a hash of its name (FNV-1a), the same in every
/// process and across reloads.
pub fn feature_key(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
