//! TLS: termination at the listener (certificates by SNI, ALPN) and, optionally, to the upstream.

pub mod server;

pub use server::{CertFiles, TlsServer};
