//! warmgate: an L7 reverse proxy that ramps traffic into a cold data center after a failover.
#![forbid(unsafe_code)]

pub mod admission;
