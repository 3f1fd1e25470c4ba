//! The admission step around the gate, pure: what the gate's answer becomes for one request
//! (forward, forward in shadow mode, wait in line, or refuse, held first or not), whether a
//! client is over its share of the limit before it may join the line, and whether the request
//! counts as a retry. The gate keeps the mechanism (atomics, the line, permits); the request
//! path only carries out the [`Step`].

use super::gate::{Admission, Permit, Reject, RejectReason, Ticket};
use super::per_client::ClientInflight;

/// What the per-client cap reads, all from atomics at the moment of asking.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShareFacts {
    /// Requests this client key holds (in flight and in line).
    pub held: u32,
    /// The cluster's limit, and the fleet's (a share of a fleet limit is reckoned on the
    /// fleet's whole limit, not on this instance's part of it).
    pub limit: u32,
    pub fleet_limit: u32,
    /// `gate.per_client_share`: 1.0 is off.
    pub share: f64,
    /// The cluster's requests in flight and in line.
    pub inflight: u32,
    pub waiting: u32,
}

/// Whether the per-client cap applies at all: a share under 1, and not in shadow mode (where
/// nothing is refused).
pub fn capped(share: f64, shadow: bool) -> bool {
    share < 1.0 && !shadow
}

/// The client already holds its share of the limit while others hold or wait for slots too:
/// it may take a free slot, but not a place in line ahead of them. (Alone, it may queue behind
/// itself: there is no one to protect.) Decided before the request joins the line, so a
/// request that would be refused for its share never evicts a legitimate waiter.
pub fn over_share(f: ShareFacts) -> bool {
    f.share < 1.0
        && f.held >= ClientInflight::cap(f.limit.max(f.fleet_limit), f.share)
        && f.inflight.saturating_add(f.waiting) > f.held
}

/// What the request path does with one request.
#[must_use]
pub enum Step {
    /// Forward it, holding the permit until the response ends.
    Forward(Permit),
    /// Shadow mode: the gate would not have let it in now; record that and forward it anyway.
    Shadow,
    /// Wait in line for a slot (see [`Ticket`]).
    Wait(Ticket),
    /// Refuse it; `hold_ms` first when it is an early returner refused without waiting (a
    /// blind retrier is slowed to the pace of the wait bound instead of being answered in
    /// microseconds). The hold also needs a place among `queue.max_held`.
    Refuse { reject: Reject, hold_ms: u64 },
}

/// What besides the gate's answer decides the step.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context {
    pub shadow: bool,
    /// The request carries the configured retry header.
    pub marked_retry: bool,
    /// The priority's longest wait in line, ms (also how long an early returner is held).
    pub max_wait_ms: u64,
}

/// The step for the gate's answer, and whether the request counts as a retry (marked as one,
/// or from a client that came back before its time).
pub fn step(a: Admission, cx: Context) -> (Step, bool) {
    let early = match &a {
        Admission::Queued(t) => t.early,
        Admission::Rejected(r) => r.early,
        Admission::Admitted(_) => false,
    };
    let retry = cx.marked_retry || early;
    let s = match a {
        Admission::Admitted(p) => Step::Forward(p),
        // A ticket dropped here leaves the line at once.
        _ if cx.shadow => Step::Shadow,
        Admission::Queued(t) => Step::Wait(t),
        Admission::Rejected(r) => Step::Refuse {
            hold_ms: hold_ms(&r, cx.max_wait_ms),
            reject: r,
        },
    };
    (s, retry)
}

/// How long a request refused without waiting is held before its answer: an early returner
/// for its priority's longest wait; a feature switched off is answered at once (holding it
/// would only tie up a connection).
pub fn hold_ms(r: &Reject, max_wait_ms: u64) -> u64 {
    if r.early && r.reason != RejectReason::FeatureOff {
        max_wait_ms
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(held: u32, limit: u32, inflight: u32, waiting: u32) -> ShareFacts {
        ShareFacts {
            held,
            limit,
            fleet_limit: 0,
            share: 0.25,
            inflight,
            waiting,
        }
    }

    #[test]
    fn a_client_over_its_share_is_only_over_it_when_others_want_slots_too() {
        // A share of 0.25 of 8 is 2.
        assert!(!over_share(facts(1, 8, 5, 0)));
        assert!(over_share(facts(2, 8, 5, 0)));
        // Alone: everything in flight is its own, it may queue behind itself.
        assert!(!over_share(facts(2, 8, 2, 0)));
        // Others waiting count too.
        assert!(over_share(facts(2, 8, 2, 1)));
        // The fleet's limit, not this instance's share of it.
        assert!(!over_share(ShareFacts {
            fleet_limit: 40,
            ..facts(2, 8, 5, 0)
        }));
        // Off at a share of 1, and a share never rounds down to nothing.
        assert!(!over_share(ShareFacts {
            share: 1.0,
            ..facts(50, 8, 60, 0)
        }));
        assert!(over_share(facts(1, 1, 3, 0)));
        assert!(!capped(0.25, true) && capped(0.25, false) && !capped(1.0, false));
    }

    fn reject(reason: RejectReason, early: bool) -> Reject {
        Reject {
            reason,
            retry_after_s: 2,
            early,
            first_ms: 0,
        }
    }

    #[test]
    fn early_returners_are_held_except_for_a_feature_switched_off() {
        assert_eq!(hold_ms(&reject(RejectReason::Stage, true), 1500), 1500);
        assert_eq!(hold_ms(&reject(RejectReason::Stage, false), 1500), 0);
        assert_eq!(hold_ms(&reject(RejectReason::FeatureOff, true), 1500), 0);
    }

    #[test]
    fn a_refusal_is_a_step_to_refuse_or_in_shadow_mode_to_forward_and_early_is_a_retry() {
        let cx = Context {
            max_wait_ms: 700,
            ..Context::default()
        };
        let (s, retry) = step(Admission::Rejected(reject(RejectReason::Stage, true)), cx);
        assert!(retry);
        assert!(matches!(s, Step::Refuse { hold_ms: 700, .. }));
        let (s, retry) = step(
            Admission::Rejected(reject(RejectReason::QueueFull, false)),
            Context { shadow: true, ..cx },
        );
        assert!(!retry);
        assert!(matches!(s, Step::Shadow));
        let (_, retry) = step(
            Admission::Rejected(reject(RejectReason::QueueFull, false)),
            Context {
                marked_retry: true,
                ..cx
            },
        );
        assert!(retry, "marked by the client as a retry");
    }
}
