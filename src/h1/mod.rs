//! The HTTP/1.1 path of our own, for the proxy's hot path.
pub mod chunked;
pub mod head;
pub mod response;
pub mod write;
