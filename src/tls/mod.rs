//! TLS: termination at the listener (certificates by SNI, ALPN) and, optionally, to the upstream.

pub mod server;
pub mod upstream;

pub use server::{CertFiles, TlsServer};
pub use upstream::{TlsUpstream, UpstreamIo};
