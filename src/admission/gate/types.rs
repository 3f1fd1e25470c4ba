//! The gate's vocabulary: what a request asks, what the gate answers, and why it refuses.

use super::super::budget::Rate;
use super::super::priority::{PerPriority, Priority};
use super::super::retry::RetryPolicy;
use super::guards::{Permit, Ticket};

/// Operator switch for a feature; a forced switch beats the ramp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureState {
    /// Follows the ramp's stages while one is engaged.
    Auto,
    /// Admitted whatever the stage (still within the limit), never held.
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
    /// An engaged ramp has not reached the feature's priority stage yet.
    Stage,
    /// An operator switched the feature off.
    FeatureOff,
    /// The wait line was full of requests at least as important.
    QueueFull,
    /// The request waited its priority's longest wait without a slot.
    QueueTimeout,
    /// The request-rate limit is spent.
    Rate,
    /// The client key already holds its share of the limit (`gate.per_client_share`).
    ClientLimit,
    /// The client key is over its own request-rate budget (`gate.per_client_rate`).
    ClientRate,
}

impl RejectReason {
    /// Every reason, in [`RejectReason::index`] order.
    pub const ALL: [RejectReason; 7] = [
        RejectReason::Stage,
        RejectReason::FeatureOff,
        RejectReason::QueueFull,
        RejectReason::QueueTimeout,
        RejectReason::Rate,
        RejectReason::ClientLimit,
        RejectReason::ClientRate,
    ];

    /// Its place in [`RejectReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Label for bodies, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Stage => "warming_up",
            RejectReason::FeatureOff => "feature_off",
            RejectReason::QueueFull => "queue_full",
            RejectReason::QueueTimeout => "queue_timeout",
            RejectReason::Rate => "over_rate",
            RejectReason::ClientLimit => "client_limit",
            RejectReason::ClientRate => "client_rate",
        }
    }
}

/// A rejection and when to come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    pub retry_after_s: u32,
    /// The client came back before the time it was told (it is held before this answer).
    pub early: bool,
    /// The client's first arrival (the clock's ms), for its return ticket.
    pub first_ms: u64,
}

/// Everything the gate needs to know about one request.
#[derive(Clone, Copy, Debug)]
pub struct Ask {
    pub priority: Priority,
    pub state: FeatureState,
    /// The feature's key ([`feature_key`]: early-return memory is per feature, and a reload
    /// that reorders features keeps whose history is whose).
    pub feature: u64,
    /// Hash of the client key.
    pub client: u64,
    pub now_ms: u64,
    /// The client already holds its share of the limit while others hold or wait for slots
    /// too (`gate.per_client_share`): it may take a free slot, not a place in line.
    pub over_share: bool,
    /// The first arrival a valid return ticket vouches for (the clock's ms; 0: none).
    pub ticket_ms: u64,
}

/// Gate settings that change only on reload.
#[derive(Clone, Copy, Debug)]
pub struct GatePolicy {
    pub retry: RetryPolicy,
    /// How long after an admitted critical request the same client's follow-ups pass closed stages.
    pub session_grace_ms: u64,
    /// Lowest priority the session grace applies to.
    pub grace_min_priority: Priority,
    /// Longest wait in line per priority; 0 means a full limit rejects at once.
    pub max_wait_ms: PerPriority<u64>,
    /// The share of the limit one client key may hold at once (1: no cap of its own).
    pub per_client_share: f64,
    /// One client key's request-rate budget (`None`: none).
    pub per_client_rate: Option<Rate>,
}

impl Default for GatePolicy {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            session_grace_ms: 30_000,
            grace_min_priority: Priority::High,
            max_wait_ms: [1_500; 4],
            per_client_share: 0.5,
            per_client_rate: None,
        }
    }
}

/// What the gate decided.
#[must_use]
pub enum Admission {
    /// In: forward the request, holding the permit until the response ends.
    Admitted(Permit),
    /// Wait in line: await [`Ticket::notified`], then [`Ticket::take`], or [`Gate::expire`] at
    /// the priority's longest wait.
    Queued(Ticket),
    Rejected(Reject),
}
