//! warmgate: an L7 reverse proxy that ramps traffic into a cold data center after a failover.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod app;
pub mod clock;
pub mod config;
pub mod ctl;
pub mod fields;
pub mod fleet;
pub mod h1;
pub mod idle;
pub mod lazy_timer;
pub mod metrics;
pub mod proxy;
pub mod runtime;
pub mod signals;
pub mod ticket;
pub mod tls;
pub mod upstream;
