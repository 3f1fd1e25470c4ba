//! The upstream cluster: pooled client, endpoint selection, passive health.

pub mod client;
pub mod connector;
pub mod dns;
pub mod endpoints;
pub mod pool;
pub mod request_body;

pub use client::{build as build_client, UpstreamClient};
pub use endpoints::{Ejection, Endpoint, EndpointGuard, EndpointSet};
