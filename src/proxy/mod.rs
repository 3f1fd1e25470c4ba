//! The data path: listener, per-request handling, header hygiene, and the single place where
//! errors and rejections become responses.

pub mod body;
pub mod handler;
pub mod headers;
pub mod respond;
pub mod send_timeout;
pub mod server;

pub use server::serve;
