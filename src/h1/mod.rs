//! The HTTP/1.1 path of our own, for the proxy's hot path.
pub mod bare;
pub mod buffers;
pub mod chunked;
pub mod exchange;
pub mod head;
pub mod io;
pub mod response;
pub mod server;
pub mod write;
