//! Header fields as the decisions read them, whatever holds them: hyper's `HeaderMap` (HTTP/2,
//! TLS and the fallback HTTP/1 path) or the slices of a connection's read buffer that the
//! HTTP/1 path of our own parses into (`h1::head`). Names are asked for in lower case and
//! matched without regard to case.

use http::HeaderMap;

/// Read access to a request's header fields.
pub trait Fields {
    /// The first value of `name`.
    fn first(&self, name: &str) -> Option<&[u8]>;

    /// Calls `f` with each value of `name`, in order, until it returns `Some`.
    fn find_map<'a, T>(&'a self, name: &str, f: impl FnMut(&'a [u8]) -> Option<T>) -> Option<T>;

    /// Whether `name` is present.
    fn has(&self, name: &str) -> bool {
        self.first(name).is_some()
    }
}

impl Fields for HeaderMap {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.get(name).map(http::HeaderValue::as_bytes)
    }

    fn find_map<'a, T>(
        &'a self,
        name: &str,
        mut f: impl FnMut(&'a [u8]) -> Option<T>,
    ) -> Option<T> {
        self.get_all(name).iter().find_map(|v| f(v.as_bytes()))
    }
}
