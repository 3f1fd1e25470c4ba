//! One request through the proxy:
//! classify → gate (reject cheaply, or wait briefly if critical) → forward → record signals.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, HOST};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::body::{Held, ProxyBody};
use super::headers::{self, ConnHeaders};
use super::respond::{self, ProxyError};
use crate::admission::{Ask, Permit, Priority, Reject, RejectReason};
use crate::metrics::Outcome;
use crate::runtime::{FeatureRt, Shared, Snapshot};
use crate::signals::Cache;

/// What the handler knows about the client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
    pub headers: ConnHeaders,
}

/// Handles one request; never fails (every error becomes a response).
pub async fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let snap = shared.snapshot.load_full();
    let c = &snap.compiled;
    let now_ms = shared.clock.now_ms();
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let fidx = c
        .classifier
        .feature(req.method(), host, req.uri().path(), req.headers());
    let Some(feature) = c.features.get(fidx) else {
        return Ok(respond::error(ProxyError::BadRequest("no feature")));
    };
    let client = c.classifier.client_hash(req.headers(), conn.peer.ip());
    let ask = Ask {
        priority: feature.priority,
        state: feature.state,
        client,
        now_ms,
    };
    let marked_retry = c
        .config
        .reject
        .retry_header
        .as_ref()
        .is_some_and(|h| req.headers().contains_key(h));

    let verdict = admit(&shared, &snap, ask).await;
    let retry = marked_retry || matches!(verdict, Err(r) if r.reason == RejectReason::EarlyRetry);
    if retry {
        shared.metrics.attempts_retry.inc();
    } else {
        shared.metrics.attempts_first.inc();
    }
    let permit = match verdict {
        Ok(p) => p,
        Err(_) if c.config.shadow => {
            feature.counters.inc(Outcome::ShadowReject);
            shared.gate.admit_unchecked()
        }
        Err(r) => return Ok(rejected(&shared, &snap, feature, r).await),
    };
    Ok(forward(&shared, &snap, &conn, req, permit, feature, now_ms).await)
}

/// The gate, plus the bounded wait for critical requests that only missed the limit.
async fn admit(shared: &Arc<Shared>, snap: &Snapshot, ask: Ask) -> Result<Permit, Reject> {
    let q = snap.compiled.config.queue;
    let may_wait = ask.priority == Priority::Critical && q.max_len > 0 && !q.max_wait.is_zero();
    let try_once = |s: &Snapshot, now_ms, waiting: bool| {
        let ask = Ask { now_ms, ..ask };
        let rate = s.rate.as_deref();
        let rate_ok = || rate.is_none_or(|r| r.check().is_ok());
        let policy = &s.compiled.config.gate;
        if waiting {
            shared
                .gate
                .try_admit_waiting(&s.decision, policy, ask, rate_ok)
        } else {
            shared.gate.try_admit(&s.decision, policy, ask, rate_ok)
        }
    };
    if !may_wait {
        return try_once(snap, ask.now_ms, false);
    }
    let first = try_once(snap, ask.now_ms, true);
    // Only a request that missed the limit touches the shared queue counter.
    let missed_limit = matches!(first, Err(r) if r.reason == RejectReason::Limit);
    if !missed_limit || shared.queue.queued.fetch_add(1, Ordering::AcqRel) >= q.max_len {
        if missed_limit {
            shared.queue.queued.fetch_sub(1, Ordering::AcqRel);
        }
        if let Err(r) = first {
            shared.gate.remember(ask, r);
        }
        return first;
    }
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + q.max_wait;
    let mut result = first;
    while result.is_err() {
        let notified = shared.queue.notify.notified();
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            break;
        }
        let s = shared.snapshot.load_full();
        result = try_once(&s, shared.clock.now_ms(), true);
    }
    shared.queue.queued.fetch_sub(1, Ordering::AcqRel);
    shared
        .metrics
        .queue_wait
        .observe(start.elapsed().as_secs_f64());
    if let Err(r) = result {
        shared.gate.remember(
            Ask {
                now_ms: shared.clock.now_ms(),
                ..ask
            },
            r,
        );
    }
    result
}

async fn rejected(
    shared: &Shared,
    snap: &Snapshot,
    feature: &FeatureRt,
    r: Reject,
) -> Response<ProxyBody> {
    feature.counters.inc(Outcome::of(r.reason));
    let cfg = &snap.compiled.config.reject;
    if r.reason == RejectReason::EarlyRetry && !cfg.tarpit.is_zero() {
        // Hold a blind retrier's answer, within a cap on how many are held at once.
        if shared.tarpit_held.fetch_add(1, Ordering::AcqRel) < cfg.tarpit_max_held {
            tokio::time::sleep(cfg.tarpit).await;
        }
        shared.tarpit_held.fetch_sub(1, Ordering::AcqRel);
    }
    respond::reject(r, feature, cfg, snap.decision.limit)
}

fn host_of(req: &Request<Incoming>) -> Option<HeaderValue> {
    req.headers().get(HOST).cloned().or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// Sends the request to an endpoint and streams the answer back.
async fn forward(
    shared: &Arc<Shared>,
    snap: &Snapshot,
    conn: &ConnInfo,
    req: Request<Incoming>,
    permit: Permit,
    feature: &FeatureRt,
    now_ms: u64,
) -> Response<ProxyBody> {
    // Released (and a waiting critical request woken) when the response ends or on any error.
    let mut held = Held {
        permit: Some(permit),
        endpoint: None,
        queue: Some(shared.queue),
    };
    let c = &snap.compiled;
    let cfg = &c.config.upstream;
    let Some(ep) = c.endpoints.pick(now_ms, shared.rand()) else {
        feature.counters.inc(Outcome::UpstreamError);
        return respond::error(ProxyError::NoEndpoint);
    };
    let host = host_of(&req);
    let (mut parts, body) = req.into_parts();
    headers::forward_request(
        &mut parts.headers,
        &conn.headers,
        parts.version,
        host,
        cfg.preserve_host,
        &ep.endpoint.host_header,
    );
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(ep.endpoint.authority.clone());
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
    );
    parts.uri = match Uri::from_parts(uri) {
        Ok(u) => u,
        Err(_) => return respond::error(ProxyError::BadRequest("unforwardable request target")),
    };
    parts.version = if cfg.h2c {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };

    let start = Instant::now();
    let sent = tokio::time::timeout(
        cfg.response_header_timeout,
        c.client.request(Request::from_parts(parts, body)),
    )
    .await;
    let elapsed = start.elapsed();
    let now_ms = now_ms + elapsed.as_millis() as u64;
    let ej = c.endpoints.ejection;
    match sent {
        Ok(Ok(resp)) => {
            ep.success();
            let (mut parts, body) = resp.into_parts();
            let cache = cache_of(&parts.headers, c);
            shared.window.record(
                now_ms,
                micros(elapsed),
                parts.status.is_server_error(),
                cache,
            );
            shared
                .metrics
                .upstream_latency
                .observe(elapsed.as_secs_f64());
            feature.counters.inc(Outcome::Admitted);
            headers::forward_response(&mut parts.headers, parts.version);
            parts.version = Version::HTTP_11;
            held.endpoint = Some(ep);
            Response::from_parts(parts, ProxyBody::Upstream { body, held })
        }
        Ok(Err(e)) => {
            let connect = e.is_connect();
            if connect {
                ep.failure(ej, now_ms);
            }
            shared
                .window
                .record(now_ms, micros(elapsed), true, Cache::Unknown);
            feature.counters.inc(Outcome::UpstreamError);
            tracing::warn!(endpoint = %ep.endpoint.authority, error = %error_chain(&e), "upstream request failed");
            respond::error(if connect {
                ProxyError::UpstreamConnect
            } else {
                ProxyError::UpstreamBroken
            })
        }
        Err(_) => {
            ep.failure(ej, now_ms);
            shared
                .window
                .record(now_ms, micros(elapsed), true, Cache::Unknown);
            feature.counters.inc(Outcome::UpstreamError);
            tracing::warn!(endpoint = %ep.endpoint.authority, timeout_ms = cfg.response_header_timeout.as_millis() as u64, "upstream response timed out");
            respond::error(ProxyError::UpstreamTimeout)
        }
    }
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

fn cache_of(h: &http::HeaderMap, c: &crate::runtime::Compiled) -> Cache {
    let s = &c.config.signals;
    match h.get(&s.cache_header) {
        Some(v)
            if s.hit_values
                .iter()
                .any(|x| x.as_bytes().eq_ignore_ascii_case(v.as_bytes())) =>
        {
            Cache::Hit
        }
        Some(v)
            if s.miss_values
                .iter()
                .any(|x| x.as_bytes().eq_ignore_ascii_case(v.as_bytes())) =>
        {
            Cache::Miss
        }
        _ => Cache::Unknown,
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
