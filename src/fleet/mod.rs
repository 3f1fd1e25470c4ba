//! Instances that act as one through a shared store (`[fleet]`, Redis): one limit per
//! cluster, found on the fleet's aggregate signals by an elected leader and handed out as
//! leases on shares; one ramp and one operator surface.
//!
//! Why a leader rather than every instance computing the same function of the shared state:
//! the knee-finding controller carries state from tick to tick (slow start, baselines,
//! backoff, outage memory). Run on every instance over slightly different snapshots, those
//! states drift apart and the shares stop adding up; run once, the shares add up by
//! construction and a new leader seeds itself from the last plan. The leader key is a Redis
//! lease renewed every sync, with an epoch that fences a deposed leader's plan.

pub mod link;
pub mod share;
pub mod store;
pub mod sync;
pub mod wire;

pub use link::{Link, Role};
