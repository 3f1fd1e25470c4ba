//! Forwarding an admitted request: pick an endpoint, rewrite the head, send it on a pooled
//! connection, wait for the response head (the backend's time, not the client's), record the
//! signals, and stream the answer back holding the admission slot.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderValue, CONNECTION, UPGRADE};
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use super::body::{Back, Held, ProxyBody, Source};
use super::edge;
use super::handler::ConnInfo;
use super::headers;
use super::respond::{self, ProxyError};
use super::tunnel;
use crate::admission::limit::class_of;
use crate::h1::bare::{self, BareBody};
use crate::h1::write::Upstream;
use crate::metrics::Outcome;
use crate::runtime::{Cluster, ClusterView, FeatureRt, Shared, Snapshot};
use crate::signals::Cache;
use crate::upstream::pool::{millis, Lease, SendError};
use crate::upstream::request_body::{
    read_whole, ClientBody, ClientBodyTimeout, ReadFault, SentAt, READ_WHOLE_MAX,
};
use crate::upstream::EndpointGuard;

static UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("upgrade");

/// Sends the request to an endpoint and streams the answer back. Not an `async fn`, so the
/// request is held once in its future (see `handler::handle`).
#[allow(clippy::too_many_arguments, clippy::manual_async_fn)]
pub(super) fn forward<'a>(
    shared: &'a Arc<Shared>,
    snap: &'a Snapshot,
    cluster: &'a Cluster,
    view: &'a ClusterView,
    conn: &'a ConnInfo,
    mut req: Request<Incoming>,
    mut held: Held,
    feature: &'a FeatureRt,
) -> impl Future<Output = Response<ProxyBody>> + 'a {
    async move {
        let cfg = &cluster.config.upstream;
        let server = &snap.compiled.config.server;
        let h2c = cluster.client.h2c.as_ref();
        let websocket = edge::wants_websocket(req.version(), req.headers());
        // Where the request can go out on the bare connections of the HTTP/1.1 path (a
        // cleartext HTTP/1.1 upstream, no upgrade), a small body of a declared length is read
        // in full first, as nginx buffers one: it goes out with its head in one write, and no
        // upstream connection waits on a slow client. A larger body streams through hyper's
        // client.
        let bare_upstream = h2c.is_none()
            && !websocket
            && cfg.tls.is_none()
            && req.method() != http::Method::CONNECT;
        let whole = match req.body().size_hint().exact() {
            Some(n @ 1..=READ_WHOLE_MAX) if bare_upstream && !req.body().is_end_stream() => {
                match read_whole(req.body_mut(), n as usize, server.client_body_timeout).await {
                    Ok(b) => Some(b),
                    Err(fault) => {
                        tracing::debug!(?fault, "request body failed");
                        return respond::error(match fault {
                            ReadFault::Timeout => ProxyError::ClientTimeout,
                            ReadFault::Failed => ProxyError::ClientBody,
                        });
                    }
                }
            }
            _ => None,
        };
        // Read now, not at arrival: a request that waited in line (or for its body) starts its
        // clock here.
        let now_ms = shared.clock.now_ms();
        let endpoints = cluster.endpoints.load();
        let Some(ep) = endpoints.pick(now_ms, shared.rand()) else {
            feature.counters.inc(Outcome::UpstreamError);
            return respond::error(ProxyError::NoEndpoint);
        };
        // A WebSocket upgrade keeps its Upgrade and Connection headers (hop-by-hop otherwise).
        let upgrade = websocket
            .then(|| req.headers().get(UPGRADE).cloned())
            .flatten();
        if upgrade.is_some() && cfg.h2c {
            return respond::error(ProxyError::BadRequest(
                "WebSocket needs an HTTP/1.1 upstream (upstream.protocol = \"http1\")",
            ));
        }
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let client_version = req.version();
        // A request with no body, or with its body read in full, to a cleartext HTTP/1.1
        // upstream (no upgrade: `bare_upstream`) goes out on the bare connections of the
        // HTTP/1.1 path, its forwarding fields written on the way out; the rest on hyper's
        // client, its header map rewritten first.
        let bare = bare_upstream && (whole.is_some() || req.body().is_end_stream());
        let via = headers::via(req.version());
        let start = tokio::time::Instant::now();
        // The head is taken apart and put in `out` inside this block: its parts are not held
        // in this future beside `out` across the waits below.
        let (out, body_sent) = {
            let (mut parts, body) = req.into_parts();
            if !bare {
                let host = edge::host_of(&parts.uri, &parts.headers)
                    .and_then(|h| HeaderValue::from_bytes(h).ok());
                headers::forward_request(
                    &mut parts.headers,
                    &conn.headers,
                    parts.version,
                    host,
                    cfg.preserve_host,
                    &ep.endpoint.host_header,
                );
            }
            if let Some(u) = &upgrade {
                parts.headers.insert(CONNECTION, UPGRADE_TOKEN.clone());
                parts.headers.insert(UPGRADE, u.clone());
            }
            if h2c.is_some() {
                let mut uri = http::uri::Parts::default();
                uri.scheme = Some(Scheme::HTTP);
                uri.authority = Some(ep.endpoint.authority.clone());
                uri.path_and_query = Some(path_and_query(&parts.uri));
                parts.uri = match Uri::from_parts(uri) {
                    Ok(u) => u,
                    Err(_) => {
                        return respond::error(ProxyError::BadRequest(
                            "unforwardable request target",
                        ))
                    }
                };
                parts.version = Version::HTTP_2;
            } else if !bare {
                // HTTP/1.1 upstreams get the origin form (an absolute-form request is
                // rewritten; the bare way writes only the path and query, and reads the
                // authority from the target for Host).
                if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
                    parts.uri = Uri::from(path_and_query(&parts.uri));
                }
                parts.version = Version::HTTP_11;
            }
            if bare {
                (Outgoing::Bare(parts), None)
            } else {
                let (body, sent) = ClientBody::new(body, server.client_body_timeout, start);
                (Outgoing::Hyper(Request::from_parts(parts, body)), sent)
            }
        };
        let via = via.as_bytes();
        // The bare way waits for the answer on the upstream connection's own timer, kept with
        // it in the pool (`bare::send`): no timer registered per request. hyper's client waits
        // under a timer of the exchange's (`response_head`).
        let sent = match out {
            Outgoing::Bare(ref parts) => {
                let up = Upstream {
                    conn: &conn.headers,
                    // Validated at arrival (`edge::authority`).
                    host: edge::host_of(&parts.uri, &parts.headers),
                    preserve_host: cfg.preserve_host,
                    endpoint_host: ep.endpoint.host_header.as_bytes(),
                    via,
                };
                let deadline = start + cfg.response_header_timeout;
                let body = whole.as_deref().unwrap_or_default();
                bare::send(cluster, &ep, (parts, body), &up, (now_ms, deadline))
                    .await
                    .map(Answer::Bare)
            }
            Outgoing::Hyper(req) => {
                // Pinned where it is made: moved into `response_head` by value it would be held
                // twice in this request's future (the argument and the pinned copy). hyper's
                // client futures are boxed: a request's future is as large as its largest
                // state, and the bare way (every request without a body or with a small one)
                // needs 0.3 KB where hyper's HTTP/1 pool needs 1.2 KB.
                let exchange = std::pin::pin!(async {
                    match h2c {
                        Some(client) => Box::pin(client.request(req))
                            .await
                            .map(|r| Answer::Hyper(r, None))
                            .map_err(|e| {
                                if e.is_connect() {
                                    SendError::Connect(Box::new(e))
                                } else {
                                    SendError::Other(Box::new(e))
                                }
                            }),
                        None => Box::pin(ep.endpoint.pool.send(
                            &cluster.client.connector,
                            &ep.endpoint.uri,
                            req,
                            now_ms,
                            millis(cfg.pool_idle_timeout),
                        ))
                        .await
                        .map(|(r, lease)| Answer::Hyper(r, Some(lease))),
                    }
                });
                response_head(
                    exchange,
                    start,
                    body_sent.as_deref(),
                    cfg.response_header_timeout,
                )
                .await
                .unwrap_or(Err(SendError::Timeout))
            }
        };
        let total = start.elapsed();
        // The backend's latency: from the last body byte sent (an upload's pace is the client's).
        let elapsed =
            total.saturating_sub(body_sent.as_ref().and_then(|s| s.get()).unwrap_or_default());
        let now_ms = now_ms + total.as_millis() as u64;
        let at = Exchange {
            shared,
            cluster,
            view,
            feature,
            ep: &ep,
        };
        let (mut parts, body, lease, tunnel) = match sent {
            Ok(Answer::Bare((parts, body))) => (parts, Source::Bare(body), None, None),
            Ok(Answer::Hyper(mut resp, lease)) => {
                let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
                let tunnel = match (switched, client_upgrade) {
                    (true, Some(client)) => Some((client, hyper::upgrade::on(&mut resp))),
                    _ => None,
                };
                let (parts, body) = resp.into_parts();
                (parts, Source::Hyper(body), lease, tunnel)
            }
            // The client's own request body failed (a malformed chunk, a hang-up mid-upload): a
            // client fault. It says nothing about the backend, so it is not recorded as a signal
            // and does not count against the endpoint; the client gets a 400.
            Err(SendError::Timeout) => {
                return at
                    .failed(ProxyError::UpstreamTimeout, elapsed, now_ms, "")
                    .await;
            }
            Err(e) if client_fault(&e).is_some() => {
                tracing::debug!(error = %error_chain(&e), "request body failed");
                return respond::error(match client_fault(&e) {
                    Some(ClientFault::Timeout) => ProxyError::ClientTimeout,
                    _ => ProxyError::ClientBody,
                });
            }
            Err(e) => {
                let connect = e.is_connect();
                let err = if !connect {
                    ProxyError::UpstreamBroken
                } else if backend_down(&e) {
                    ProxyError::UpstreamDown
                } else {
                    ProxyError::UpstreamConnect
                };
                return at.failed(err, elapsed, now_ms, &error_chain(&e)).await;
            }
        };
        let cache = cache_of(&parts.headers, &cluster.config.signals);
        at.answered(parts.status.is_server_error(), cache, elapsed, now_ms);
        let switch_to = parts.headers.get(UPGRADE).cloned();
        if !matches!(body, Source::Bare(_)) {
            // The bare connections' heads are built without hop-by-hop fields and with `Via`.
            headers::forward_response(&mut parts.headers, parts.version);
        }
        parts.version = Version::HTTP_11;
        if let (Some((client, upstream)), Some(proto)) = (tunnel, switch_to) {
            // The backend accepted the upgrade: the request is done as far as admission goes;
            // the tunnel runs on its own and holds no slot.
            parts.headers.insert(CONNECTION, UPGRADE_TOKEN.clone());
            parts.headers.insert(UPGRADE, proto);
            tokio::spawn(tunnel::run(
                client,
                upstream,
                server.websocket_idle_timeout,
                shared.metrics.tunnels.clone(),
                // The connection's own idle and head timers stand aside for the tunnel.
                conn.phase.enter(),
            ));
            drop(held);
            return Response::from_parts(parts, ProxyBody::local(bytes::Bytes::new()));
        }
        held.endpoint = Some(ep);
        Response::from_parts(
            parts,
            ProxyBody::upstream(
                body,
                held,
                cfg.body_idle_timeout,
                Some(Back {
                    lease,
                    clock: shared.clock,
                    max_idle: cfg.pool_max_idle_per_endpoint,
                }),
                // One response at a time on an HTTP/1 connection: its slot can be the
                // connection's to release (HTTP/2 streams share theirs).
                (client_version != Version::HTTP_2).then(|| Arc::clone(&conn.phase)),
            ),
        )
    }
}

/// The request as it goes out.
enum Outgoing {
    /// No body, or one read in full: on a bare connection of the HTTP/1.1 path.
    Bare(http::request::Parts),
    Hyper(Request<ClientBody>),
}

/// The response head, and where its body comes from.
enum Answer {
    Bare((http::response::Parts, BareBody)),
    Hyper(Response<Incoming>, Option<Lease>),
}

/// One request's exchange with an endpoint, as the signals see it.
pub(crate) struct Exchange<'a> {
    pub shared: &'a Shared,
    pub cluster: &'a Cluster,
    pub view: &'a ClusterView,
    pub feature: &'a FeatureRt,
    pub ep: &'a EndpointGuard,
}

impl Exchange<'_> {
    /// The response head arrived after `elapsed` (from the last request byte sent): the
    /// endpoint answered, and the latency and cache signals are recorded.
    pub fn answered(&self, server_error: bool, cache: Cache, elapsed: Duration, now_ms: u64) {
        let (st, view) = (&self.cluster.state, self.view);
        self.ep.success();
        let us = micros(elapsed);
        st.window.record(now_ms, us, server_error, cache);
        if server_error {
            st.completions.dropped();
        } else {
            let class = class_of(self.feature.priority.index(), cache as usize);
            st.completions.ok(class, us);
            if view.decision.outage {
                // The outage's probe got an answer: the controller learns it now, not a
                // tick later, and the line starts moving.
                self.shared.wake.notify_one();
            }
            if view.decision.slow_start {
                // Only against a learned baseline: before the first tick has one, growth
                // waits for the tick (a cold backend must not see the limit run ahead blind).
                let fast = view.fast_us[class];
                if fast != 0 && us <= fast {
                    st.gate.fast_completion();
                }
            }
        }
        st.metrics.upstream_latency.observe(elapsed.as_secs_f64());
        self.feature.counters.inc(Outcome::Admitted);
    }

    /// No response head: the failure is recorded (against the endpoint unless the
    /// connection broke after it was made), and the error to answer with returned.
    pub async fn failed(
        &self,
        err: ProxyError,
        elapsed: Duration,
        now_ms: u64,
        detail: &str,
    ) -> Response<ProxyBody> {
        let st = &self.cluster.state;
        let ep = self.ep;
        let cfg = &self.cluster.config.upstream;
        if err != ProxyError::UpstreamBroken {
            ep.failure(self.cluster.endpoints.load().ejection, now_ms);
        }
        st.window
            .record(now_ms, micros(elapsed), true, Cache::Unknown);
        st.completions.dropped();
        self.feature.counters.inc(Outcome::UpstreamError);
        if ep.endpoint.first_failure_this_second(now_ms) {
            if err == ProxyError::UpstreamTimeout {
                tracing::warn!(endpoint = %ep.endpoint.authority, timeout_ms = cfg.response_header_timeout.as_millis() as u64, "upstream response timed out (at most one line a second per endpoint)");
            } else {
                tracing::warn!(endpoint = %ep.endpoint.authority, error = %detail, "upstream request failed (at most one line a second per endpoint)");
            }
        }
        if err == ProxyError::UpstreamDown && self.view.decision.outage {
            // This request was the outage's probe: its slot is held a moment longer, so
            // the line waits for the backend instead of draining into refused connects.
            tokio::time::sleep(PROBE_GAP).await;
        }
        respond::error(err)
    }
}

/// While the backend is down, a failed probe holds its slot this long: at most a few probes a
/// second, and the requests in line keep their places until it is back or their wait ends.
const PROBE_GAP: Duration = Duration::from_millis(100);

fn path_and_query(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

pub(crate) fn micros(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

pub(crate) fn cache_of<H: crate::fields::Fields + ?Sized>(
    h: &H,
    s: &crate::config::SignalsConfig,
) -> Cache {
    match h.first(s.cache_header.as_str()) {
        Some(v)
            if s.hit_values
                .iter()
                .any(|x| x.as_bytes().eq_ignore_ascii_case(v)) =>
        {
            Cache::Hit
        }
        Some(v)
            if s.miss_values
                .iter()
                .any(|x| x.as_bytes().eq_ignore_ascii_case(v)) =>
        {
            Cache::Miss
        }
        _ => Cache::Unknown,
    }
}

/// How the client's own request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientFault {
    /// Malformed (a bad chunk) or cut off (a hang-up mid-upload).
    Body,
    /// Nothing sent for `client_body_timeout`.
    Timeout,
}

/// Whether a forwarding error came from the request body the client sent (hyper reports an
/// error of the body it was handed as a "user" error).
fn client_fault(e: &(dyn std::error::Error + 'static)) -> Option<ClientFault> {
    let mut cur = Some(e);
    let mut user = false;
    while let Some(err) = cur {
        if err.downcast_ref::<ClientBodyTimeout>().is_some() {
            return Some(ClientFault::Timeout);
        }
        user |= err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_user);
        cur = err.source();
    }
    user.then_some(ClientFault::Body)
}

/// Waits for the upstream's response head. The `timeout` starts once the request body has
/// been sent in full (at once for a request without one): a slow upload is bounded by the
/// client's body timer, not blamed on the backend.
async fn response_head<F: std::future::Future>(
    mut fut: std::pin::Pin<&mut F>,
    start: tokio::time::Instant,
    body_sent: Option<&SentAt>,
    timeout: Duration,
) -> Result<F::Output, ()> {
    loop {
        let deadline = match body_sent.map(SentAt::get) {
            None => start + timeout,
            Some(Some(at)) => start + at + timeout,
            // Still uploading: look again later.
            Some(None) => tokio::time::Instant::now() + timeout,
        };
        tokio::select! {
            // The answer first: a timer that ran out in the same turn loses to it.
            biased;
            r = fut.as_mut() => return Ok(r),
            () = tokio::time::sleep_until(deadline) => {
                if body_sent.is_none_or(|s| s.get().is_some_and(|at| start + at + timeout <= tokio::time::Instant::now())) {
                    return Err(());
                }
            }
        }
    }
}

/// Whether a connect error says the backend is down (refused, reset, or no answer in time)
/// rather than something else (TLS, a name, a route).
pub(crate) fn backend_down(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::TimedOut
            );
        }
        cur = err.source();
    }
    false
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
