//! The one place where a rejection or an error becomes an HTTP response.

use std::sync::LazyLock;

use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

use super::body::ProxyBody;
use super::edge::Refusal;
use crate::admission::{Reject, RejectReason};
use crate::config::RejectConfig;
use crate::runtime::FeatureRt;

/// Why the proxy answered instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// The backend is down: its connection refused, or no answer to the connect.
    UpstreamDown,
    /// No connection to the upstream for another reason (a failed TLS handshake, an unknown
    /// name, an unreachable network).
    UpstreamConnect,
    /// The upstream did not send response headers in time.
    UpstreamTimeout,
    /// The upstream connection broke mid-request.
    UpstreamBroken,
    /// No endpoint configured.
    NoEndpoint,
    /// The request cannot be forwarded as sent.
    BadRequest(&'static str),
    /// The client's request body failed while it was being forwarded.
    ClientBody,
    /// The client sent no body bytes for `server.client_body_timeout`.
    ClientTimeout,
}

static JSON: HeaderValue = HeaderValue::from_static("application/json");
static NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
static CLOSE: HeaderValue = HeaderValue::from_static("close");
static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// `Retry-After` values up to this are made once and shared (a clone copies a pointer).
const SHARED_SECONDS: usize = 600;

/// `n` as a header value, without an allocation for the common figures.
fn seconds(n: u32) -> HeaderValue {
    static COMMON: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
        (0..=SHARED_SECONDS)
            .map(|n| HeaderValue::from_static(String::leak(n.to_string())))
            .collect()
    });
    COMMON
        .get(n as usize)
        .cloned()
        .unwrap_or_else(|| HeaderValue::from(n))
}

static ALLOWED: HeaderValue =
    HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS");

fn json(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::local(body));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, JSON.clone());
    r.headers_mut().insert(CACHE_CONTROL, NO_STORE.clone());
    r
}

/// The response for a proxy error.
pub fn error(e: ProxyError) -> Response<ProxyBody> {
    let (status, what) = match e {
        ProxyError::UpstreamDown => (StatusCode::SERVICE_UNAVAILABLE, "upstream down"),
        ProxyError::UpstreamConnect => (StatusCode::BAD_GATEWAY, "upstream unreachable"),
        ProxyError::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "upstream timed out"),
        ProxyError::UpstreamBroken => (StatusCode::BAD_GATEWAY, "upstream connection failed"),
        ProxyError::NoEndpoint => (StatusCode::BAD_GATEWAY, "no upstream endpoint"),
        ProxyError::BadRequest(why) => (StatusCode::BAD_REQUEST, why),
        ProxyError::ClientBody => (StatusCode::BAD_REQUEST, "request body failed"),
        ProxyError::ClientTimeout => (StatusCode::REQUEST_TIMEOUT, "request body timed out"),
    };
    let mut r = json(status, format!("{{\"error\":\"{what}\"}}\n"));
    if status.is_server_error() {
        // A short pause before a retry: the upstream may be back, or another endpoint up.
        // Spread over 1-3 s, so the clients of a backend that restarts do not return as one.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n =
            crate::admission::retry::mix64(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        r.headers_mut()
            .insert(RETRY_AFTER, seconds(1 + (n % 3) as u32));
    }
    if status == StatusCode::REQUEST_TIMEOUT {
        r.headers_mut()
            .insert(http::header::CONNECTION, CLOSE.clone());
    }
    r
}

/// The response for a request refused at the edge (malformed authority, CONNECT, TRACE).
pub fn refused(r: Refusal) -> Response<ProxyBody> {
    let status = match r {
        Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut resp = json(status, format!("{{\"error\":\"{}\"}}\n", r.as_str()));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        resp.headers_mut()
            .insert(http::header::ALLOW, ALLOWED.clone());
    }
    // After a malformed request, nothing more on this connection is worth reading.
    resp.headers_mut()
        .insert(http::header::CONNECTION, CLOSE.clone());
    resp
}

/// A reject's status: over its own share is the client's doing (429, like any per-client
/// limit); anything else is shed with `reject.status`.
pub fn reject_status(r: Reject, cfg: &RejectConfig) -> StatusCode {
    if matches!(
        r.reason,
        RejectReason::ClientLimit | RejectReason::ClientRate
    ) {
        StatusCode::TOO_MANY_REQUESTS
    } else {
        cfg.shed_status
    }
}

/// The response for a rejected request: status, `Retry-After`, and a body saying why.
pub fn reject(
    r: Reject,
    feature: &FeatureRt,
    cfg: &RejectConfig,
    limit: u32,
) -> Response<ProxyBody> {
    let status = reject_status(r, cfg);
    let body = feature.reject_bodies.body(r.reason, r.retry_after_s);
    let mut resp = json(status, body);
    let h = resp.headers_mut();
    h.insert(RETRY_AFTER, seconds(r.retry_after_s));
    if cfg.ratelimit_headers {
        if let Ok(v) = HeaderValue::from_str(&format!("\"warmup\";q={limit}")) {
            h.insert(&RATELIMIT_POLICY, v);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("\"warmup\";r=0;t={}", r.retry_after_s)) {
            h.insert(&RATELIMIT, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn retry_after_is_the_figure_whether_shared_or_made() {
        for n in [
            0,
            1,
            59,
            SHARED_SECONDS as u32,
            SHARED_SECONDS as u32 + 1,
            u32::MAX,
        ] {
            assert_eq!(seconds(n).to_str().unwrap(), n.to_string());
        }
    }
}
