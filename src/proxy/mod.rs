//! The data path: listener, per-request handling, header hygiene, and the single place where
//! errors and rejections become responses.

pub mod body;
pub(crate) mod connection;
pub mod edge;
pub mod forward;
pub mod h2_guard;
pub mod handler;
pub mod headers;
pub mod lot;
pub(crate) mod park;
pub mod phases;
pub mod respond;
pub mod rewind;
pub mod send_timeout;
pub mod server;
pub mod streams;
pub mod tunnel;
pub mod until;

pub use server::serve;
