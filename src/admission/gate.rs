//! The gate: the per-request admit / reject decision. Atomics only: a shared in-flight count,
//! two bounded client tables, and the controller's last [`Decision`] passed in.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::clients::{ClientEntry, ClientTable};
use super::controller::Decision;
use super::priority::Priority;
use super::retry::{mix64, RetryPolicy};

/// Operator switch for a feature; a forced switch beats the ramp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureState {
    /// Follows the priority stages.
    Auto,
    /// Admitted whatever the stage (still within the limit).
    On,
    /// Always shed.
    Off,
}

impl FeatureState {
    /// Parses `auto`, `on` or `off`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "auto" => FeatureState::Auto,
            "on" => FeatureState::On,
            "off" => FeatureState::Off,
            _ => return None,
        })
    }

    /// The config / API name.
    pub fn as_str(self) -> &'static str {
        match self {
            FeatureState::Auto => "auto",
            FeatureState::On => "on",
            FeatureState::Off => "off",
        }
    }
}

/// Why a request was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The feature's priority stage is not reached yet (warming up).
    Stage,
    /// An operator switched the feature off.
    FeatureOff,
    /// In-flight is at this priority's share of the limit.
    Limit,
    /// The request-rate limit is spent.
    Rate,
    /// The client came back before its `Retry-After`.
    EarlyRetry,
}

impl RejectReason {
    /// All reasons, for pre-registering metrics.
    pub const ALL: [RejectReason; 5] = [
        RejectReason::Stage,
        RejectReason::FeatureOff,
        RejectReason::Limit,
        RejectReason::Rate,
        RejectReason::EarlyRetry,
    ];

    /// Label for bodies, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Stage => "warming_up",
            RejectReason::FeatureOff => "feature_off",
            RejectReason::Limit => "over_limit",
            RejectReason::Rate => "over_rate",
            RejectReason::EarlyRetry => "early_retry",
        }
    }

    /// Whether this is a per-client limit (429 by default) rather than shedding (503).
    pub fn is_per_client(self) -> bool {
        self == RejectReason::EarlyRetry
    }
}

/// A rejection and when to come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    pub retry_after_s: u32,
}

/// Everything the gate needs to know about one request.
#[derive(Clone, Copy, Debug)]
pub struct Ask {
    pub priority: Priority,
    pub state: FeatureState,
    /// Hash of the client key.
    pub client: u64,
    pub now_ms: u64,
}

/// Gate settings that change only on reload.
#[derive(Clone, Copy, Debug)]
pub struct GatePolicy {
    pub retry: RetryPolicy,
    /// How long after an admitted critical request the same client's follow-ups pass closed stages.
    pub session_grace_ms: u64,
    /// Lowest priority the session grace applies to.
    pub grace_min_priority: Priority,
}

impl Default for GatePolicy {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            session_grace_ms: 30_000,
            grace_min_priority: Priority::High,
        }
    }
}

/// Keeps a hot counter on its own cache line, so cores updating neighbours do not collide.
#[repr(align(64))]
#[derive(Default)]
struct Padded<T>(T);

/// Shared admission state, one per process, kept across reloads. It lives as long as the
/// process ([`Gate::leak`]), so a permit is a plain reference: no reference count to bounce
/// between cores on every request.
pub struct Gate {
    inflight: Padded<AtomicU32>,
    peak_inflight: Padded<AtomicU32>,
    limit_rejects: Padded<AtomicU64>,
    nonce: Padded<AtomicU64>,
    early: ClientTable,
    grace: ClientTable,
}

/// Held by an admitted request; releases its in-flight slot when dropped.
#[must_use]
pub struct Permit {
    gate: &'static Gate,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.inflight.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Gate {
    /// A gate whose client tables hold `client_slots` entries each.
    pub fn new(client_slots: usize) -> Self {
        Self {
            inflight: Padded::default(),
            peak_inflight: Padded::default(),
            limit_rejects: Padded::default(),
            nonce: Padded::default(),
            early: ClientTable::new(client_slots),
            grace: ClientTable::new(client_slots),
        }
    }

    /// A process-lifetime gate (one per process; reloads keep it).
    pub fn leak(client_slots: usize) -> &'static Gate {
        Box::leak(Box::new(Gate::new(client_slots)))
    }

    /// Requests admitted and not yet finished.
    pub fn inflight(&self) -> u32 {
        self.inflight.0.load(Ordering::Acquire)
    }

    /// Peak in-flight and limit rejects since the last call (the controller reads these).
    pub fn take_tick_counters(&self) -> (u32, u64) {
        let now = self.inflight();
        (
            self.peak_inflight.0.swap(now, Ordering::AcqRel).max(now),
            self.limit_rejects.0.swap(0, Ordering::AcqRel),
        )
    }

    /// Clients currently remembered as told to wait.
    pub fn waiting_clients(&self, now_ms: u64) -> usize {
        self.early.live(now_ms)
    }

    /// Whether this client was told to come back later than now (a retry that came early).
    pub fn is_early(&self, client: u64, priority: Priority, now_ms: u64) -> bool {
        let key = early_key(Ask {
            priority,
            state: FeatureState::Auto,
            client,
            now_ms,
        });
        self.early.get(key, now_ms).is_some()
    }

    /// Admits or rejects one request. `rate_ok` is asked only when everything else admits.
    pub fn try_admit(
        &'static self,
        d: &Decision,
        policy: &GatePolicy,
        ask: Ask,
        rate_ok: impl FnOnce() -> bool,
    ) -> Result<Permit, Reject> {
        self.decide(d, policy, ask, rate_ok, true)
    }

    /// As [`Gate::try_admit`], for a request that will wait and ask again: a reject is not
    /// remembered (the wait is not an early return). Call [`Gate::remember`] if it finally fails.
    pub fn try_admit_waiting(
        &'static self,
        d: &Decision,
        policy: &GatePolicy,
        ask: Ask,
        rate_ok: impl FnOnce() -> bool,
    ) -> Result<Permit, Reject> {
        self.decide(d, policy, ask, rate_ok, false)
    }

    fn decide(
        &'static self,
        d: &Decision,
        policy: &GatePolicy,
        ask: Ask,
        rate_ok: impl FnOnce() -> bool,
        memo: bool,
    ) -> Result<Permit, Reject> {
        let reject = |reason| {
            let r = self.reject(d, policy, ask, reason);
            if memo {
                self.remember(ask, r);
            }
            r
        };
        if let Some(e) = self.early.get(early_key(ask), ask.now_ms) {
            return Err(self.reject_early(policy, ask, e));
        }
        let p = ask.priority.index();
        let reason = match ask.state {
            FeatureState::Off => Some(RejectReason::FeatureOff),
            FeatureState::Auto if !d.open[p] && !self.in_grace(policy, ask) => {
                Some(RejectReason::Stage)
            }
            _ => None,
        };
        if let Some(reason) = reason {
            return Err(reject(reason));
        }
        if !self.acquire(d.caps[p]) {
            self.limit_rejects.0.fetch_add(1, Ordering::Relaxed);
            return Err(reject(RejectReason::Limit));
        }
        let permit = Permit { gate: self };
        if !rate_ok() {
            return Err(reject(RejectReason::Rate));
        }
        if ask.priority == Priority::Critical && policy.session_grace_ms > 0 {
            let until_ms = ask.now_ms + policy.session_grace_ms;
            self.grace.put(
                ask.client,
                ClientEntry {
                    until_ms,
                    strikes: 0,
                },
            );
        }
        Ok(permit)
    }

    /// Takes an in-flight slot whatever the limit (shadow mode: decisions recorded, never enforced).
    pub fn admit_unchecked(&'static self) -> Permit {
        let now = self.inflight.0.fetch_add(1, Ordering::AcqRel) + 1;
        self.note_peak(now);
        Permit { gate: self }
    }

    /// Raises the tick's peak; a plain read first, so the common case writes nothing.
    fn note_peak(&self, now: u32) {
        if now > self.peak_inflight.0.load(Ordering::Relaxed) {
            self.peak_inflight.0.fetch_max(now, Ordering::Relaxed);
        }
    }

    fn acquire(&self, cap: u32) -> bool {
        let mut cur = self.inflight.0.load(Ordering::Relaxed);
        loop {
            if cur >= cap {
                return false;
            }
            match self.inflight.0.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.note_peak(cur + 1);
                    return true;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    fn in_grace(&self, policy: &GatePolicy, ask: Ask) -> bool {
        ask.priority >= policy.grace_min_priority
            && self.grace.get(ask.client, ask.now_ms).is_some()
    }

    fn rand(&self, ask: Ask) -> u64 {
        mix64(self.nonce.0.fetch_add(1, Ordering::Relaxed) ^ ask.client)
    }

    fn reject(&self, d: &Decision, policy: &GatePolicy, ask: Ask, reason: RejectReason) -> Reject {
        let eta = match reason {
            RejectReason::Stage => d.eta_s[ask.priority.index()],
            RejectReason::FeatureOff => policy.retry.max_s,
            _ => 0.0,
        };
        let retry_after_s = policy.retry.retry_after(eta, 0, self.rand(ask));
        Reject {
            reason,
            retry_after_s,
        }
    }

    fn reject_early(&self, policy: &GatePolicy, ask: Ask, e: ClientEntry) -> Reject {
        let strikes = e.strikes + 1;
        let remaining_s = e.until_ms.saturating_sub(ask.now_ms) as f64 / 1000.0;
        let retry_after_s = policy
            .retry
            .retry_after(remaining_s, strikes, self.rand(ask));
        // The told delay escalates, but the deadline stays: a client that hammers is answered
        // cheaply and told to wait longer, yet is not locked out past its original turn.
        self.early.put(
            early_key(ask),
            ClientEntry {
                until_ms: e.until_ms,
                strikes,
            },
        );
        Reject {
            reason: RejectReason::EarlyRetry,
            retry_after_s,
        }
    }

    /// Remembers when the client may come back. A little slack (a quarter of the delay, at most
    /// a second) keeps a polite client whose clock rounds differently from counting as early.
    /// An early return already updated its own entry, so it is not remembered again.
    pub fn remember(&self, ask: Ask, r: Reject) {
        if r.reason != RejectReason::EarlyRetry {
            self.remember_for(ask, r.retry_after_s, 0);
        }
    }

    fn remember_for(&self, ask: Ask, retry_after_s: u32, strikes: u32) {
        let ms = u64::from(retry_after_s) * 1000;
        let until_ms = ask.now_ms + ms - (ms / 4).min(1000);
        self.early
            .put(early_key(ask), ClientEntry { until_ms, strikes });
    }
}

/// Early returns are remembered per client and priority: a client told to wait for its feed
/// may still log in.
fn early_key(ask: Ask) -> u64 {
    ask.client ^ mix64(ask.priority as u64 + 1)
}

#[cfg(test)]
mod tests {
    use super::super::controller::{CtlState, Health};
    use super::*;

    fn decision(open: [bool; 4], caps: [u32; 4]) -> Decision {
        Decision {
            progress: 0.3,
            state: CtlState::Advancing,
            health: Health::Healthy,
            limit: caps[3],
            caps,
            open,
            eta_s: [50.0, 20.0, 0.0, 0.0],
            rps: None,
        }
    }

    fn ask(priority: Priority, client: u64, now_ms: u64) -> Ask {
        Ask {
            priority,
            state: FeatureState::Auto,
            client,
            now_ms,
        }
    }

    #[test]
    fn sheds_by_stage_and_tells_when_to_return() {
        let g = Gate::leak(1024);
        let d = decision([false, false, true, true], [7, 8, 9, 10]);
        let pol = GatePolicy::default();
        let r = g
            .try_admit(&d, &pol, ask(Priority::Low, 1, 0), || true)
            .err();
        let r = r.map(|r| (r.reason, r.retry_after_s));
        assert!(
            matches!(r, Some((RejectReason::Stage, s)) if (50..=60).contains(&s)),
            "{r:?}"
        );
        assert!(g
            .try_admit(&d, &pol, ask(Priority::High, 2, 0), || true)
            .is_ok());
        assert_eq!(g.inflight(), 0, "permit dropped at end of statement");
    }

    #[test]
    fn headroom_keeps_room_for_critical_and_permits_release() {
        let g = Gate::leak(1024);
        let d = decision([true; 4], [2, 3, 3, 4]);
        let pol = GatePolicy::default();
        let mut held = Vec::new();
        for c in 0..2 {
            held.push(g.try_admit(&d, &pol, ask(Priority::Low, c, 0), || true));
        }
        assert!(held.iter().all(Result::is_ok));
        let r = g
            .try_admit(&d, &pol, ask(Priority::Low, 9, 0), || true)
            .err();
        assert_eq!(r.map(|r| r.reason), Some(RejectReason::Limit));
        for c in 10..12 {
            held.push(g.try_admit(&d, &pol, ask(Priority::Critical, c, 0), || true));
        }
        assert!(held.iter().all(Result::is_ok));
        assert_eq!(g.inflight(), 4);
        assert!(g
            .try_admit(&d, &pol, ask(Priority::Critical, 20, 0), || true)
            .is_err());
        held.clear();
        assert_eq!(g.inflight(), 0);
        assert_eq!(g.take_tick_counters(), (4, 2));
    }

    #[test]
    fn early_returners_escalate() {
        let g = Gate::leak(1024);
        let d = decision([false, false, false, true], [10; 4]);
        let pol = GatePolicy {
            retry: RetryPolicy {
                min_s: 1.0,
                max_s: 1000.0,
                jitter_s: 0.0,
                escalation: 2.0,
            },
            ..Default::default()
        };
        let first = g
            .try_admit(&d, &pol, ask(Priority::Normal, 7, 0), || true)
            .err();
        assert_eq!(first.map(|r| r.retry_after_s), Some(20));
        let again = g
            .try_admit(&d, &pol, ask(Priority::Normal, 7, 1_000), || true)
            .err();
        assert_eq!(again.map(|r| r.reason), Some(RejectReason::EarlyRetry));
        let s1 = again.map_or(0, |r| r.retry_after_s);
        assert!(s1 >= 30, "longer than what was left: {s1}");
        let third = g
            .try_admit(&d, &pol, ask(Priority::Normal, 7, 2_000), || true)
            .err();
        assert!(third.map_or(0, |r| r.retry_after_s) > s1);
        // Another client is unaffected; a critical request from it is admitted.
        assert!(g
            .try_admit(&d, &pol, ask(Priority::Critical, 8, 2_000), || true)
            .is_ok());
    }

    #[test]
    fn hammering_does_not_push_the_deadline() {
        let g = Gate::leak(1024);
        let d = decision([true; 4], [0; 4]);
        let pol = GatePolicy {
            retry: RetryPolicy {
                min_s: 2.0,
                max_s: 1000.0,
                jitter_s: 0.0,
                escalation: 2.0,
            },
            ..Default::default()
        };
        let a = |now_ms| ask(Priority::Critical, 5, now_ms);
        assert!(g.try_admit(&d, &pol, a(0), || true).is_err());
        for t in (250..1500).step_by(250) {
            let r = g.try_admit(&d, &pol, a(t), || true).err();
            assert_eq!(r.map(|r| r.reason), Some(RejectReason::EarlyRetry));
            if let Some(r) = r {
                g.remember(a(t), r);
            }
        }
        let open = decision([true; 4], [10; 4]);
        assert!(
            g.try_admit(&open, &pol, a(1_600), || true).is_ok(),
            "in at its original turn"
        );
    }

    #[test]
    fn a_polite_client_returning_on_time_is_not_early() {
        let g = Gate::leak(1024);
        let d = decision([true; 4], [0, 0, 0, 0]);
        let pol = GatePolicy {
            retry: RetryPolicy {
                min_s: 4.0,
                max_s: 100.0,
                jitter_s: 0.0,
                escalation: 2.0,
            },
            ..Default::default()
        };
        let r = g
            .try_admit(&d, &pol, ask(Priority::Critical, 3, 0), || true)
            .err();
        assert_eq!(
            r.map(|r| (r.reason, r.retry_after_s)),
            Some((RejectReason::Limit, 4))
        );
        assert!(g.is_early(3, Priority::Critical, 2_000));
        assert!(!g.is_early(3, Priority::High, 2_000), "per priority");
        assert!(!g.is_early(3, Priority::Critical, 4_000));
    }

    #[test]
    fn overrides_beat_the_stage() {
        let g = Gate::leak(64);
        let d = decision([false, false, false, true], [10; 4]);
        let pol = GatePolicy::default();
        let on = Ask {
            state: FeatureState::On,
            ..ask(Priority::Low, 1, 0)
        };
        assert!(g.try_admit(&d, &pol, on, || true).is_ok());
        let off = Ask {
            state: FeatureState::Off,
            ..ask(Priority::Critical, 2, 0)
        };
        let r = g.try_admit(&d, &pol, off, || true).err();
        assert_eq!(r.map(|r| r.reason), Some(RejectReason::FeatureOff));
    }

    #[test]
    fn session_grace_lets_follow_ups_through() {
        let g = Gate::leak(1024);
        let d = decision([false, false, false, true], [10; 4]);
        let pol = GatePolicy {
            session_grace_ms: 5_000,
            ..Default::default()
        };
        assert!(g
            .try_admit(&d, &pol, ask(Priority::High, 42, 0), || true)
            .is_err());
        // A fresh client: log in, then sync is admitted within the grace...
        assert!(g
            .try_admit(&d, &pol, ask(Priority::Critical, 43, 0), || true)
            .is_ok());
        assert!(g
            .try_admit(&d, &pol, ask(Priority::High, 43, 1_000), || true)
            .is_ok());
        // ...but not low priority, and not after the grace.
        assert!(g
            .try_admit(&d, &pol, ask(Priority::Low, 43, 1_000), || true)
            .is_err());
        let g2 = Gate::leak(1024);
        assert!(g2
            .try_admit(&d, &pol, ask(Priority::Critical, 44, 0), || true)
            .is_ok());
        assert!(g2
            .try_admit(&d, &pol, ask(Priority::High, 44, 6_000), || true)
            .is_err());
    }

    #[test]
    fn rate_limit_rejects_and_releases_the_slot() {
        let g = Gate::leak(64);
        let d = decision([true; 4], [10; 4]);
        let r = g
            .try_admit(
                &d,
                &GatePolicy::default(),
                ask(Priority::High, 1, 0),
                || false,
            )
            .err();
        assert_eq!(r.map(|r| r.reason), Some(RejectReason::Rate));
        assert_eq!(g.inflight(), 0);
    }
}
