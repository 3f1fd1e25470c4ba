//! One request through the proxy: classify → gate (admit, wait in line, or reject with a
//! Retry-After) → forward (`forward.rs`: send, record signals, stream back).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;

use super::body::{Held, ProxyBody};
use super::edge;
use super::forward::forward;
use super::headers::ConnHeaders;
use super::phases::{Active, Phase, Tracked};
use super::respond::{self, ProxyError};
use crate::admission::admit::{self, Step};
use crate::admission::classify::PeerHash;
use crate::admission::Decision;
use crate::admission::{Ask, Permit, Reject, RejectReason, Ticket};
use crate::fields::Fields;
use crate::metrics::Outcome;
use crate::runtime::access::{Note, Pending};
use crate::runtime::{Cluster, ClusterView, FeatureRt, Shared, Snapshot};

/// What the handler knows about the client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: std::net::SocketAddr,
    pub headers: ConnHeaders,
    /// Whether the connection is busy (its idle and head timers wait meanwhile).
    pub phase: Arc<Phase>,
    /// The address hash its first request made, for the next ones (an HTTP/2 connection's
    /// streams share it; the hash is made again if a reload changed its keys).
    pub peer_hash: std::sync::OnceLock<PeerHash>,
}

/// Handles one request; never fails (every error becomes a response). With the access log on,
/// the request's line is written when its answer is ready (or as 499 if the client left).
/// `active` (the connection's busy mark) goes with the response body.
///
/// A plain function around an `async` block, here and in `handle_inner` and `forward`: an
/// `async fn` moves its arguments into locals of its future, and the request would be held
/// twice at every level (264 bytes each, in a future that is boxed and copied per stream).
#[allow(clippy::manual_async_fn)] // on purpose, as said above
pub fn handle(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
    active: Active,
) -> impl Future<Output = Result<Response<Tracked<ProxyBody>>, std::convert::Infallible>> {
    async move {
        let resp = if let Some(log) = shared.access.as_ref() {
            let mut pending = Pending::new(
                log.clone(),
                req.method().as_str(),
                req.uri().path(),
                conn.peer.ip(),
            );
            pending.note.on = true;
            let resp = handle_inner(Arc::clone(&shared), conn, req, &mut pending.note).await?;
            pending.finish(resp.status().as_u16());
            resp
        } else {
            let mut note = Note::default();
            handle_inner(shared, conn, req, &mut note).await?
        };
        // The connection stays busy (no idle timer) until the response body ends.
        Ok(resp.map(|b| Tracked::new(b, active)))
    }
}

#[allow(clippy::manual_async_fn)] // see `handle`
fn handle_inner<'a>(
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
    note: &'a mut Note,
) -> impl Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>> + 'a {
    async move {
        let host = match edge::authority(req.method(), req.version(), req.uri(), req.headers()) {
            Ok(h) => h,
            Err(r) => return Ok(respond::refused(r)),
        };
        let mut kept = conn.peer_hash.get().copied().unwrap_or_default();
        let asked = Asked {
            method: req.method(),
            host,
            path: req.uri().path().as_bytes(),
            fields: req.headers(),
            peer_hash: Some(&mut kept),
        };
        let snap = shared.snapshot.load_full();
        let a = admit(
            &shared,
            snap,
            conn.peer.ip(),
            conn.headers.trusted,
            asked,
            note,
        )
        .await;
        if kept.is_known() && conn.peer_hash.get().is_none() {
            let _ = conn.peer_hash.set(kept);
        }
        let mut a = match a {
            Ok(a) => a,
            Err(Turned::Answer(resp)) => return Ok(*resp),
            Err(Turned::Reject(r)) => return Ok(r.response(&shared)),
        };
        let held = a.take_held();
        let Some((cluster, view, feature)) = a.parts() else {
            return Ok(respond::error(ProxyError::NoEndpoint));
        };
        let sent = note.on.then(Instant::now);
        let mut resp = forward(&shared, &a.snap, cluster, view, &conn, req, held, feature).await;
        a.stamp_ours(&shared, &mut resp);
        if let Some(t) = sent {
            note.upstream = Some(t.elapsed());
            note.outcome = "forwarded";
        }
        Ok(resp)
    }
}

/// What admission reads of a request.
pub(crate) struct Asked<'a, H: ?Sized> {
    pub method: &'a http::Method,
    /// The validated authority (Host, or the target's).
    pub host: Option<&'a [u8]>,
    /// The path, without the query.
    pub path: &'a [u8],
    pub fields: &'a H,
    /// The connection's address hash, kept for its next requests (its requests one at a
    /// time).
    pub peer_hash: Option<&'a mut PeerHash>,
}

/// An admitted request: its slot, and where it goes.
pub(crate) struct Admitted {
    pub snap: Arc<Snapshot>,
    cluster: usize,
    feature: usize,
    permit: Option<Permit>,
    client_slot: Option<crate::admission::per_client::ClientSlot>,
    client: u64,
    /// The return ticket's first arrival, 0 without one.
    ticket_ms: u64,
    /// When the request arrived.
    now_ms: u64,
}

impl Admitted {
    /// The admission slot and the client's share, to hold while the answer streams.
    pub fn take_held(&mut self) -> Held {
        Held {
            permit: self.permit.take(),
            endpoint: None,
            client: self.client_slot.take(),
        }
    }

    /// The request's cluster, its decision, and its feature.
    pub fn parts(&self) -> Option<(&Cluster, &ClusterView, &FeatureRt)> {
        let c = &self.snap.compiled;
        Some((
            c.clusters.get(self.cluster)?,
            self.snap.clusters.get(self.cluster)?,
            c.features.get(self.feature)?,
        ))
    }

    /// Our own 503 after admission (the backend found down) carries a ticket too: the client
    /// keeps its place for its retry, wherever it lands.
    pub fn stamp_ours(&self, shared: &Shared, resp: &mut Response<ProxyBody>) {
        let (Some(t), Some(feature)) = (
            &self.snap.compiled.tickets,
            self.snap.compiled.features.get(self.feature),
        ) else {
            return;
        };
        if resp.status() != http::StatusCode::SERVICE_UNAVAILABLE
            || !matches!(resp.body(), ProxyBody::Local(_))
        {
            return;
        }
        let first = if self.ticket_ms > 0 {
            self.ticket_ms.min(self.now_ms)
        } else {
            self.now_ms
        };
        let now = shared.clock.now_ms();
        t.stamp(
            resp.headers_mut(),
            (first, now),
            feature.key,
            self.client,
            &shared.metrics,
        );
    }
}

/// Classifies the request and passes it through its cluster's gate: admitted (at once or
/// after waiting in line), or the answer it gets instead.
pub(crate) async fn admit<H: Fields + ?Sized>(
    shared: &Arc<Shared>,
    snap: Arc<Snapshot>,
    peer: std::net::IpAddr,
    trusted: bool,
    req: Asked<'_, H>,
    note: &mut Note,
) -> Result<Admitted, Turned> {
    let c = &snap.compiled;
    let now_ms = shared.clock.now_ms();
    let fidx = c
        .classifier
        .feature(req.method, req.host, req.path, req.fields);
    let Some(feature) = c.features.get(fidx) else {
        return Err(Turned::Answer(Box::new(respond::error(
            ProxyError::BadRequest("no feature"),
        ))));
    };
    // The feature's cluster (resolved at load): its gate, signals, endpoints and decision.
    let (Some(cluster), Some(view)) = (
        c.clusters.get(feature.cluster),
        snap.clusters.get(feature.cluster),
    ) else {
        return Err(Turned::Answer(Box::new(respond::error(
            ProxyError::NoEndpoint,
        ))));
    };
    let gate = cluster.state.gate;
    let policy = &cluster.config.gate;
    // Behind a trusted proxy the peer is the proxy: the client is in X-Forwarded-For.
    let ip = if trusted {
        edge::forwarded_client(req.fields, &c.config.server.trusted_proxies).unwrap_or(peer)
    } else {
        peer
    };
    let client = c.classifier.client_hash_kept(req.fields, ip, req.peer_hash);
    if note.on {
        note.feature = Some(feature.name.clone());
        note.priority = Some(feature.priority.as_str());
        note.client = client;
    }
    let marked_retry = c
        .config
        .reject
        .retry_header
        .as_ref()
        .is_some_and(|h| req.fields.has(h.as_str()));

    // The per-client cap, decided before the request may join the line (see `admit`). A
    // request is counted once admitted or in line (a refused one never is); two arriving at
    // once may both pass, which only lets the client one past its share.
    let share = policy.per_client_share;
    let capped = admit::capped(share, c.config.shadow);
    let over_share = capped
        && admit::over_share(admit::ShareFacts {
            held: cluster.state.per_client.held(client),
            limit: view.decision.limit,
            fleet_limit: view.fleet_limit,
            share,
            inflight: gate.inflight(),
            waiting: gate.waiting(),
        });
    let ask = Ask {
        priority: feature.priority,
        state: feature.state.get(),
        feature: feature.key,
        client,
        now_ms,
        over_share,
        // A valid return ticket (from this instance, another, or before a restart) brings
        // the client's first arrival with it; anything else about a ticket is ignored.
        ticket_ms: c.tickets.as_ref().map_or(0, |t| {
            t.recall(req.fields, feature.key, client, now_ms, &shared.metrics)
        }),
    };
    let rate = view.rate.as_deref();
    let rate_ok = || rate.is_none_or(|r| r.check().is_ok());
    let (step, retry) = admit::step(
        gate.admit(&view.decision, policy, ask, rate_ok),
        admit::Context {
            shadow: c.config.shadow,
            marked_retry,
            max_wait_ms: policy.max_wait_ms[feature.priority.index()],
        },
    );
    if retry {
        shared.metrics.attempts_retry.inc();
    } else {
        shared.metrics.attempts_first.inc();
    }
    let client_slot = (capped && !matches!(step, Step::Refuse { .. }))
        .then(|| cluster.state.per_client.enter(client).0);
    let permit = match step {
        Step::Forward(p) => p,
        Step::Shadow => {
            feature.counters.inc(Outcome::ShadowReject);
            gate.admit_unchecked()
        }
        Step::Wait(ticket) => {
            let waited = Instant::now();
            let r = Box::pin(wait(shared, cluster, ticket, ask)).await;
            note.queue_wait = Some(waited.elapsed());
            match r {
                Ok(p) => p,
                Err(r) => {
                    note.outcome = r.reason.as_str();
                    let limit = view.decision.limit;
                    turn_away(cluster, feature, r, 0).await;
                    return Err(Turned::Reject(Rejection {
                        limit,
                        snap,
                        feature: fidx,
                        reject: r,
                        client,
                        now_ms: shared.clock.now_ms(),
                    }));
                }
            }
        }
        Step::Refuse { reject, hold_ms } => {
            note.outcome = reject.reason.as_str();
            let limit = view.decision.limit;
            turn_away(cluster, feature, reject, hold_ms).await;
            return Err(Turned::Reject(Rejection {
                snap,
                feature: fidx,
                reject,
                limit,
                client,
                now_ms,
            }));
        }
    };
    let cidx = feature.cluster;
    let ticket_ms = ask.ticket_ms;
    Ok(Admitted {
        snap,
        cluster: cidx,
        feature: fidx,
        permit: Some(permit),
        client_slot,
        client,
        ticket_ms,
        now_ms,
    })
}

/// Waits in line until a slot is granted, the place is lost to a better request, or the
/// priority's longest wait runs out. Dropping this future (the client went away) drops the
/// ticket, which leaves the line.
async fn wait(
    shared: &Shared,
    cluster: &Cluster,
    ticket: Ticket,
    ask: Ask,
) -> Result<Permit, Reject> {
    let p = ask.priority.index();
    let policy = &cluster.config.gate;
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(policy.max_wait_ms[p]);
    let granted = ticket.granted_by(deadline).await;
    let m = &cluster.state.metrics;
    m.queue_wait[p].observe(start.elapsed().as_secs_f64());
    let gate = cluster.state.gate;
    if let Some(permit) = granted {
        gate.note_queued_admit(policy, ask);
        return Ok(permit);
    }
    let now = Ask {
        now_ms: shared.clock.now_ms(),
        ..ask
    };
    // The drain as measured now (a reload meanwhile may have moved the cluster's index).
    let snap = shared.snapshot.load();
    let fresh = snap
        .compiled
        .clusters
        .iter()
        .position(|c| Arc::ptr_eq(&c.state, &cluster.state))
        .and_then(|i| snap.clusters.get(i));
    let r = match fresh {
        Some(v) => gate.expire(ticket, &v.decision, policy, now),
        None => gate.expire(ticket, &Decision::default(), policy, now),
    };
    if matches!(r, Err(r) if r.reason == RejectReason::QueueTimeout) {
        m.queue_timeouts[p].inc();
    }
    r
}

/// Counts a reject, and holds it `hold_ms` first (an early returner refused without waiting,
/// see [`admit::hold_ms`]) when a place among `queue.max_held` is free.
async fn turn_away(cluster: &Cluster, feature: &FeatureRt, r: Reject, hold_ms: u64) {
    feature.counters.inc(Outcome::of(r.reason));
    if hold_ms > 0 {
        if let Some(_hold) = cluster.state.gate.hold(cluster.config.queue.max_held) {
            // Boxed, as the wait in line: the admission future stays small for the
            // requests that neither wait nor are held.
            Box::pin(tokio::time::sleep(Duration::from_millis(hold_ms))).await;
        }
    }
}

/// A request admission turned away, and how it is answered.
pub(crate) enum Turned {
    /// Refused, or its wait in line ran out: a reject (each HTTP path writes it its way).
    Reject(Rejection),
    /// Anything else (no feature or cluster to send it to).
    Answer(Box<Response<ProxyBody>>),
}

/// A reject, with what its answer says.
pub(crate) struct Rejection {
    pub snap: Arc<Snapshot>,
    feature: usize,
    pub reject: Reject,
    /// The cluster's limit (for `RateLimit-Policy`).
    pub limit: u32,
    client: u64,
    /// When it was turned away (on the shared clock).
    pub now_ms: u64,
}

impl Rejection {
    /// The rejected request's feature.
    pub fn feature(&self) -> Option<&FeatureRt> {
        self.snap.compiled.features.get(self.feature)
    }

    /// The response status.
    pub fn status(&self) -> http::StatusCode {
        respond::reject_status(self.reject, &self.snap.compiled.config.reject)
    }

    /// With `[ticket]`: the return ticket for the client, and its cookie when cookies are on.
    pub fn ticket(&self, shared: &Shared) -> Option<(String, Option<String>)> {
        let t = self.snap.compiled.tickets.as_ref()?;
        let feature = self.feature()?;
        Some(t.issue(
            (self.reject.first_ms, shared.clock.now_ms()),
            feature.key,
            self.client,
            &shared.metrics,
        ))
    }

    /// The answer as a response (status, `Retry-After`, a body saying why, the ticket).
    pub fn response(&self, shared: &Shared) -> Response<ProxyBody> {
        let Some(feature) = self.feature() else {
            return respond::error(ProxyError::NoEndpoint);
        };
        let mut resp = respond::reject(
            self.reject,
            feature,
            &self.snap.compiled.config.reject,
            self.limit,
        );
        if let Some(t) = &self.snap.compiled.tickets {
            t.stamp(
                resp.headers_mut(),
                (self.reject.first_ms, shared.clock.now_ms()),
                feature.key,
                self.client,
                &shared.metrics,
            );
        }
        resp
    }
}
