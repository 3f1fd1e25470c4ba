//! A feature compiled for the hot path: its switch, counters and reject bodies.

use std::sync::atomic::Ordering;

use crate::admission::{FeatureState, Priority, RejectReason};
use crate::metrics::FeatureCounters;

/// One feature, compiled for the hot path.
#[derive(Debug)]
pub struct FeatureRt {
    pub name: String,
    pub priority: Priority,
    /// The state the config gives it.
    pub configured: FeatureState,
    /// The state in force: the configured one, or an operator's override (one atomic load
    /// per request; an override is a store, not a rebuild).
    pub state: FeatureSwitch,
    pub counters: FeatureCounters,
    /// Index of its cluster in [`super::Compiled::clusters`].
    pub cluster: usize,
    /// Its key in the client memory ([`crate::admission::gate::feature_key`] of the name).
    pub key: u64,
    /// The start of its reject bodies, per reason (only the `Retry-After` figure varies).
    pub reject_bodies: RejectBodies,
}

/// The reject bodies of one feature, per reason, up to the `Retry-After` figure.
#[derive(Debug)]
pub struct RejectBodies([bytes::Bytes; RejectReason::ALL.len()]);

impl RejectBodies {
    pub(super) fn new(name: &str, priority: Priority) -> Self {
        Self(RejectReason::ALL.map(|r| {
            bytes::Bytes::from(format!(
                "{{\"reason\":\"{}\",\"feature\":\"{name}\",\"priority\":\"{}\",\"retry_after_s\":",
                r.as_str(),
                priority.as_str()
            ))
        }))
    }

    /// The body for `reason` with `retry_after_s`: one allocation, no formatting.
    /// The body up to the `Retry-After` figure (followed by the figure and `}\n`).
    pub fn prefix(&self, reason: RejectReason) -> &[u8] {
        &self.0[reason.index()]
    }

    pub fn body(&self, reason: RejectReason, retry_after_s: u32) -> Vec<u8> {
        let head = &self.0[reason.index()];
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(retry_after_s).as_bytes();
        let mut b = Vec::with_capacity(head.len() + digits.len() + 2);
        b.extend_from_slice(head);
        b.extend_from_slice(digits);
        b.extend_from_slice(b"}\n");
        b
    }
}

/// A feature state that an operator can switch live.
#[derive(Debug)]
pub struct FeatureSwitch(std::sync::atomic::AtomicU8);

impl FeatureSwitch {
    pub fn new(s: FeatureState) -> Self {
        Self(std::sync::atomic::AtomicU8::new(Self::code(s)))
    }

    fn code(s: FeatureState) -> u8 {
        match s {
            FeatureState::Auto => 0,
            FeatureState::On => 1,
            FeatureState::Off => 2,
        }
    }

    pub fn get(&self) -> FeatureState {
        match self.0.load(Ordering::Relaxed) {
            1 => FeatureState::On,
            2 => FeatureState::Off,
            _ => FeatureState::Auto,
        }
    }

    pub fn set(&self, s: FeatureState) {
        self.0.store(Self::code(s), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_reject_body_is_the_json_of_its_reason_feature_priority_and_retry() {
        let bodies = RejectBodies::new("search-v2", Priority::Low);
        for (i, r) in RejectReason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
            for retry in [0, 7, 4_000_000_000] {
                let b = bodies.body(r, retry);
                assert!(b.ends_with(b"}\n"));
                let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
                assert_eq!(v["reason"], r.as_str());
                assert_eq!(v["feature"], "search-v2");
                assert_eq!(v["priority"], "low");
                assert_eq!(v["retry_after_s"], retry);
                assert_eq!(v.as_object().unwrap().len(), 4);
            }
        }
    }
}
