//! A cleartext HTTP/1.1 client connection on the path of our own: wait for bytes holding no
//! buffer, read and parse the head, admit, forward, answer, and around again (pipelined bytes
//! first). What this path does not do goes to hyper's server with the bytes read so far.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Body;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::buffers::{self, Buf};
use super::chunked::Chunked;
use super::exchange::{self, Forwarded};
use super::head::{self, Framing, Head, HeadError, KnownHost, View};
use super::io::{gone, read_by, write_all, IoFail, Lazy};
use crate::admission::classify::PeerHash;
use crate::proxy::body::ProxyBody;
use crate::proxy::connection::{serve_io, Conn};
use crate::proxy::forward::Exchange;
use crate::proxy::handler::{admit, Asked, ConnInfo, Rejection, Turned};
use crate::proxy::park::{Parked, ParkingLot, Resume};
use crate::proxy::respond::{self, ProxyError};
use crate::proxy::rewind::Rewind;
use crate::proxy::server::{conn_info, Proto};
use crate::runtime::access::{Note, Pending};
use crate::runtime::{Shared, Snapshot};

/// Whether every cluster's upstream speaks cleartext HTTP/1.1 (the path's upstream side).
fn all_plain(snap: &Snapshot) -> bool {
    snap.compiled
        .clusters
        .iter()
        .all(|c| !c.config.upstream.h2c && c.config.upstream.tls.is_none())
}

/// Serves `stream` until the client closes, the keep-alive timeout, shutdown, or a request
/// that hands the connection to hyper's server.
pub(crate) async fn serve(
    stream: TcpStream,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    conn: Conn,
    lot: Option<Arc<ParkingLot>>,
) {
    // The idle timer, inline (pinned in this task): moved forward only when it fires.
    let idle_timer = tokio::time::sleep_until(Instant::now() + OWN_PARK_AFTER);
    tokio::pin!(idle_timer);
    let mut upstream_timer = Lazy::default();
    let mut first = true;
    let mut keepalive_until: Option<Instant> = None;
    // Bytes of a next request that came with the last one.
    let mut pipelined: Option<Box<Buf>> = None;
    // A request was answered since the connection last went quiet.
    let mut busy_spell = false;
    loop {
        let b = match pipelined.take() {
            Some(b) => b,
            None => {
                // Idle: the connection waits holding no buffer. A new connection's first
                // bytes are due within the head timeout (the keep-alive timeout is for
                // connections that have been answered).
                let limit = {
                    let snap = shared.snapshot.load();
                    let server = &snap.compiled.config.server;
                    match keepalive_until {
                        Some(t) => t.saturating_duration_since(Instant::now()),
                        None if first => server.client_header_timeout.min(server.keepalive_timeout),
                        None => server.keepalive_timeout,
                    }
                };
                let waited = wait_for_bytes(
                    &stream,
                    idle_timer.as_mut(),
                    &mut upstream_timer,
                    (&conn, lot.is_some()),
                    limit,
                )
                .await;
                match waited {
                    Waited::Bytes(b) => b,
                    Waited::Close => return,
                    Waited::Park(deadline) => {
                        park(stream, lot, &info, conn, deadline);
                        return;
                    }
                }
            }
        };
        first = false;
        let ended = if busy_spell {
            // A second request soon after the first: the rest of the busy spell runs in one
            // boxed future, the waits between its requests included.
            Box::pin(active(
                &stream,
                b,
                (&shared, &info, &conn),
                idle_timer.as_mut(),
                &mut upstream_timer,
            ))
            .await
        } else {
            // The first request after a quiet spell, in a box of its own: a connection that
            // asks once and goes quiet (most idle ones) holds no request state while it waits.
            match Box::pin(one(&stream, b, (&shared, &info), &mut upstream_timer)).await {
                Next::Keep(b) if !conn.stop.is_set() => {
                    busy_spell = true;
                    keepalive_until = None;
                    if b.is_empty() {
                        buffers::give(b);
                    } else {
                        pipelined = Some(b);
                    }
                    continue;
                }
                Next::Keep(b) | Next::Close(b) => {
                    buffers::give(b);
                    Ended::Close
                }
                Next::HandOver(b, proto) => Ended::HandOver(b, proto),
            }
        };
        match ended {
            Ended::Close => return,
            Ended::Idle(deadline) => {
                busy_spell = false;
                match lot {
                    Some(_) => {
                        park(stream, lot, &info, conn, deadline);
                        return;
                    }
                    None => keepalive_until = Some(deadline),
                }
            }
            Ended::HandOver(b, proto) => {
                let cfg = shared.snapshot.load().compiled.config.server.clone();
                Box::pin(hand_over(stream, (b, proto), cfg, shared, info, conn, lot)).await;
                return;
            }
        }
    }
}

/// One request, with what a busy spell would keep made for it alone.
async fn one(
    stream: &TcpStream,
    b: Box<Buf>,
    (shared, info): (&Arc<Shared>, &Arc<ConnInfo>),
    upstream_timer: &mut Lazy,
) -> Next {
    let snap = shared.snapshot.load_full();
    let mut kept = Kept::default();
    busy(stream, b, (shared, info, &snap), upstream_timer, &mut kept).await
}

/// Hands an idle connection to the parking lot until `deadline`: its task ends here, and
/// everything it held with it; the lot keeps the socket and what resumes it (a few dozen
/// bytes).
fn park(
    stream: TcpStream,
    lot: Option<Arc<ParkingLot>>,
    info: &ConnInfo,
    conn: Conn,
    deadline: Instant,
) {
    if let (Some(lot), Ok(tcp)) = (lot, stream.into_std()) {
        let resume = Resume {
            peer: info.peer,
            trusted: info.headers.trusted,
            conn,
        };
        lot.park(tcp, deadline.into_std(), resume);
    }
}

/// What a connection keeps from one request to the next while it is busy.
#[derive(Default)]
struct Kept {
    peer_hash: PeerHash,
    host: KnownHost,
}

/// How a busy spell ended.
enum Ended {
    Close,
    /// Idle for `OWN_PARK_AFTER`: to the parking lot (or, without one, to the connection's
    /// own idle wait) until this deadline.
    Idle(Instant),
    HandOver(Box<Buf>, Proto),
}

/// Serves requests from their first bytes in `b` until the connection closes, is handed
/// over, or has been idle for `OWN_PARK_AFTER`: the waits between requests happen here, so a
/// keep-alive connection's requests share one future (not one each).
async fn active(
    stream: &TcpStream,
    mut b: Box<Buf>,
    (shared, info, conn): (&Arc<Shared>, &Arc<ConnInfo>, &Conn),
    mut idle_timer: Pin<&mut tokio::time::Sleep>,
    upstream_timer: &mut Lazy,
) -> Ended {
    let mut kept = Kept::default();
    // The snapshot, read again only when a reload has swapped it (one load a request).
    let mut snaps = arc_swap::Cache::new(&shared.snapshot);
    loop {
        let snap = snaps.load();
        match busy(stream, b, (shared, info, snap), upstream_timer, &mut kept).await {
            // Pipelined bytes: the next head is there already.
            Next::Keep(next) if !conn.stop.is_set() && !next.is_empty() => b = next,
            Next::Keep(idle) if !conn.stop.is_set() => {
                buffers::give(idle);
                let keepalive = snaps.load().compiled.config.server.keepalive_timeout;
                // Parked or not, a connection idle this long leaves the busy spell.
                b = match wait_for_bytes(
                    stream,
                    idle_timer.as_mut(),
                    upstream_timer,
                    (conn, true),
                    keepalive,
                )
                .await
                {
                    Waited::Bytes(b) => b,
                    Waited::Close => return Ended::Close,
                    Waited::Park(deadline) => return Ended::Idle(deadline),
                };
            }
            Next::Keep(b) | Next::Close(b) => {
                buffers::give(b);
                return Ended::Close;
            }
            Next::HandOver(b, proto) => return Ended::HandOver(b, proto),
        }
    }
}

/// What follows a request on its connection.
enum Next {
    /// The next request (its bytes, if any came already).
    Keep(Box<Buf>),
    Close(Box<Buf>),
    /// A request for hyper's server: the connection goes there, with the bytes read.
    HandOver(Box<Buf>, Proto),
}

/// The first bytes of an HTTP/2 connection (prior knowledge).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// One request from its first bytes in `b`: the head read, then forwarded or answered.
async fn busy(
    stream: &TcpStream,
    mut b: Box<Buf>,
    (shared, info, snap): (&Arc<Shared>, &Arc<ConnInfo>, &Arc<Snapshot>),
    upstream_timer: &mut Lazy,
    kept: &mut Kept,
) -> Next {
    let server = &snap.compiled.config.server;
    // HTTP/2 with prior knowledge goes to hyper's server (a preface in pieces is waited for).
    if b.pending().first() == Some(&H2_PREFACE[0]) {
        let deadline = Instant::now() + server.client_header_timeout;
        while b.pending().len() < H2_PREFACE.len() && H2_PREFACE.starts_with(b.pending()) {
            match read_by(stream, b.room(buffers::CLIENT), deadline, upstream_timer).await {
                Ok(n) if n > 0 => b.filled(n),
                _ => return Next::Close(b),
            }
        }
        if b.pending().starts_with(H2_PREFACE) {
            return Next::HandOver(b, Proto::H2);
        }
    }
    // A head that came whole in the first read is parsed without waiting.
    let head = match parse_now(&mut b, server, &mut kept.host) {
        Ok(Some(h)) => h,
        _ => match read_head(stream, &mut b, server, (upstream_timer, &mut kept.host)).await {
            Ok(h) => h,
            Err(Some(bad)) => {
                local(&mut b, bad.response(), (true, false), &shared.clock);
                let _ = flush(stream, &b, server.send_timeout).await;
                return Next::Close(b);
            }
            Err(None) => return Next::Close(b),
        },
    };
    if head.general || !all_plain(snap) {
        return Next::HandOver(b, Proto::H1);
    }
    let keep = request(
        stream,
        &mut b,
        head,
        (shared, info, snap),
        (upstream_timer, &mut kept.peer_hash),
    )
    .await;
    if keep {
        Next::Keep(b)
    } else {
        Next::Close(b)
    }
}

/// Hands the connection to hyper's server, the bytes read so far put back in front.
async fn hand_over(
    stream: TcpStream,
    (b, proto): (Box<Buf>, Proto),
    cfg: crate::config::ServerConfig,
    shared: Arc<Shared>,
    info: Arc<ConnInfo>,
    conn: Conn,
    lot: Option<Arc<ParkingLot>>,
) {
    let pre = Bytes::copy_from_slice(b.pending());
    buffers::give(b);
    let io = Rewind::new(stream, pre);
    // hyper's sessions keep the connection's phase.
    let info = conn_info(info.peer, false, info.headers.trusted);
    if let Err(e) = serve_io(io, proto, &cfg, shared, info, conn, lot).await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

/// The head at the front of `b`: `Ok(None)` while it is not whole yet, or the answer to a
/// head that cannot be served.
fn parse_now(
    b: &mut Buf,
    server: &crate::config::ServerConfig,
    known: &mut KnownHost,
) -> Result<Option<Head>, BadHead> {
    let Buf {
        data,
        start,
        end,
        fields,
        ..
    } = &mut *b;
    let max = server.max_header_bytes;
    match head::parse_known(&data[*start..*end], server.max_headers, fields, known) {
        Ok(Some(h)) if h.len <= max => Ok(Some(h)),
        Ok(Some(_)) | Err(HeadError::TooManyFields) => Err(BadHead::TooLarge),
        Ok(None) if *end - *start >= max => Err(BadHead::TooLarge),
        Ok(None) => Ok(None),
        Err(HeadError::Malformed(why)) => {
            tracing::debug!(why, "malformed request head");
            Err(BadHead::Malformed(why))
        }
    }
}

/// Why a head cannot be served.
#[derive(Debug, Clone, Copy)]
enum BadHead {
    /// Past `server.max_header_bytes` or `server.max_headers` (431).
    TooLarge,
    Malformed(&'static str),
    /// Not whole within `server.client_header_timeout` (408).
    Timeout,
}

impl BadHead {
    fn response(self) -> http::Response<ProxyBody> {
        match self {
            BadHead::TooLarge => {
                let mut r =
                    respond::error(ProxyError::BadRequest("request header fields too large"));
                *r.status_mut() = http::StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
                r
            }
            BadHead::Malformed(why) => respond::error(ProxyError::BadRequest(why)),
            BadHead::Timeout => {
                let mut r = respond::error(ProxyError::ClientTimeout);
                *r.body_mut() = ProxyBody::local(Bytes::new());
                r
            }
        }
    }
}

/// How an idle wait ended.
enum Waited {
    /// The client's next bytes.
    Bytes(Box<Buf>),
    Close,
    /// Idle for `OWN_PARK_AFTER`: to the parking lot, until this deadline.
    Park(Instant),
}

/// How long a connection on this path is idle before it goes to the parking lot (it holds no
/// buffer before that either; parking also lets go of its task, its reactor registration and
/// its timers).
pub(crate) const OWN_PARK_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// What ended an idle wait.
enum Woke {
    Readable,
    Timer,
    Stop,
    Closed,
}

/// Waits until the client sends bytes, holding no buffer meanwhile; `None` when the connection
/// is to close (the client did, the keep-alive timeout passed, or shutdown began). The wait is
/// polled by hand (no readiness future, no shutdown future kept): an idle connection's state is
/// a few words. Idle for `OWN_PARK_AFTER`, it goes to the parking lot (or, without one, lets go of
/// its upstream timer and waits on).
async fn wait_for_bytes(
    stream: &TcpStream,
    mut sleep: Pin<&mut tokio::time::Sleep>,
    upstream_timer: &mut Lazy,
    (conn, can_park): (&Conn, bool),
    keepalive: std::time::Duration,
) -> Waited {
    let mut idle_since: Option<Instant> = None;
    // Without a lot: counted as parked once idle for `OWN_PARK_AFTER`.
    let mut parked = None;
    loop {
        // Until it parks (at most `OWN_PARK_AFTER`), a connection looks at shutdown only when
        // its timer fires: a wait between two requests registers nothing but its readiness.
        // Only a long wait without a lot registers for shutdown.
        let mut stop = parked.is_some().then(|| Box::pin(conn.stop.notified()));
        if let Some(n) = stop.as_mut() {
            n.as_mut().enable();
        }
        if conn.stop.is_set() {
            return Waited::Close;
        }
        let woke = std::future::poll_fn(|cx| {
            // The next request is often there already: nothing else is looked at then.
            if let Poll::Ready(r) = stream.poll_read_ready(cx) {
                return Poll::Ready(if r.is_ok() {
                    Woke::Readable
                } else {
                    Woke::Closed
                });
            }
            if idle_since.is_none() {
                let since = Instant::now();
                idle_since = Some(since);
                let park_at = since + OWN_PARK_AFTER;
                if parked.is_none() && sleep.deadline() > park_at {
                    sleep.as_mut().reset(park_at);
                }
            }
            if let Some(n) = stop.as_mut() {
                if n.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Woke::Stop);
                }
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::Timer);
            }
            Poll::Pending
        })
        .await;
        match woke {
            Woke::Readable => {}
            Woke::Closed | Woke::Stop => return Waited::Close,
            Woke::Timer => {
                let Some(since) = idle_since else {
                    return Waited::Close;
                };
                if conn.stop.is_set() {
                    return Waited::Close;
                }
                let now = Instant::now();
                if now >= since + keepalive {
                    return Waited::Close;
                }
                let park_at = since + OWN_PARK_AFTER;
                if now >= park_at && can_park {
                    return Waited::Park(since + keepalive);
                }
                if now >= park_at {
                    parked.get_or_insert_with(|| Parked::new(&conn.parked));
                    *upstream_timer = Lazy::default();
                    sleep.as_mut().reset(since + keepalive);
                } else {
                    sleep.as_mut().reset(park_at);
                }
                continue;
            }
        }
        // Readable: a buffer is taken for the bytes (and given back at once if readiness was
        // stale).
        let mut b = buffers::take();
        match super::io::read_now(stream, b.room(buffers::CLIENT)) {
            Ok(0) => {
                buffers::give(b);
                return Waited::Close;
            }
            Ok(n) => {
                b.filled(n);
                return Waited::Bytes(b);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => buffers::give(b),
            Err(_) => {
                buffers::give(b);
                return Waited::Close;
            }
        }
    }
}

/// Polls `f` once: its output if it is ready at once.
async fn poll_once<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        Poll::Ready(match f.as_mut().poll(cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        })
    })
    .await
}

/// Reads until `b` holds a whole head: the head, or the answer to give before closing
/// (`None`: close without one).
async fn read_head(
    s: &TcpStream,
    b: &mut Buf,
    server: &crate::config::ServerConfig,
    (timer, known): (&mut Lazy, &mut KnownHost),
) -> Result<Head, Option<BadHead>> {
    let deadline = Instant::now() + server.client_header_timeout;
    let max = server.max_header_bytes;
    loop {
        if let Some(h) = parse_now(b, server, known).map_err(Some)? {
            return Ok(h);
        }
        let room = b.room(max.max(buffers::CLIENT));
        match read_by(s, room, deadline, timer).await {
            Ok(0) => return Err(None),
            Ok(n) => b.filled(n),
            Err(IoFail::Timeout) => {
                tracing::debug!(
                    timeout_s = server.client_header_timeout.as_secs_f64(),
                    "request head timed out (408)"
                );
                return Err(Some(BadHead::Timeout));
            }
            Err(IoFail::Io(_)) => return Err(None),
        }
    }
}

/// One request: admitted and forwarded, or answered here. Whether the connection may carry
/// another.
async fn request(
    s: &TcpStream,
    b: &mut Buf,
    head: Head,
    (shared, info, snap): (&Arc<Shared>, &ConnInfo, &Arc<Snapshot>),
    (timer, peer_hash): (&mut Lazy, &mut PeerHash),
) -> bool {
    let server = &snap.compiled.config.server;
    let is_head = head.method == http::Method::HEAD;
    // The path (without the query) and the Host, as spans of the head.
    let path = {
        let target = head.target.in_buf(b.pending());
        let len = target
            .iter()
            .position(|c| *c == b'?')
            .unwrap_or(target.len());
        head::Span {
            at: head.target.at,
            len: len as u32,
        }
    };
    let mut log = shared.access.as_ref().map(|l| {
        let p = String::from_utf8_lossy(path.in_buf(b.pending()));
        // Boxed: the request's future is the smaller for those that log nothing.
        Box::new(Pending::new(
            l.clone(),
            head.method.as_str(),
            &p,
            info.peer.ip(),
        ))
    });
    if let Some(r) = head.refused {
        let resp = respond::refused(r);
        let status = resp.status().as_u16();
        local(b, resp, (true, is_head), &shared.clock);
        let _ = flush(s, b, server.send_timeout).await;
        if let Some(l) = log {
            l.finish(status);
        }
        return false;
    }
    let mut quiet = Note::default();
    let note = match log.as_mut() {
        Some(p) => {
            p.note.on = true;
            &mut p.note
        }
        None => &mut quiet,
    };
    let admitted = {
        let pending = &b.data[b.start..b.end];
        let host = head.host.map(|h| h.in_buf(pending));
        let path = path.in_buf(pending);
        let asked = Asked {
            method: &head.method,
            host,
            path,
            fields: &View {
                buf: pending,
                fields: &b.fields,
            },
            peer_hash: Some(peer_hash),
        };
        let mut admission = std::pin::pin!(admit(
            shared,
            Arc::clone(snap),
            info.peer.ip(),
            info.headers.trusted,
            asked,
            note
        ));
        match poll_once(admission.as_mut()).await {
            Some(a) => a,
            // A client that leaves while in line gives up its place.
            // `biased`: the admission first, and no random draw to pick the order.
            None if head.framing == Framing::None => tokio::select! {
                biased;
                a = admission => a,
                () = gone(s) => return false,
            },
            None => admission.await,
        }
    };
    let mut a = match admitted {
        Ok(a) => a,
        Err(Turned::Answer(resp)) => {
            let status = resp.status().as_u16();
            // The body is skipped if it is here already; the connection closes otherwise.
            let keep = !head.close && skip_body(b, &head);
            local(b, *resp, (!keep, is_head), &shared.clock);
            let ok = flush(s, b, server.send_timeout).await;
            if let Some(l) = log {
                l.finish(status);
            }
            return keep && ok;
        }
        Err(Turned::Reject(r)) => {
            let status = r.status().as_u16();
            let keep = !head.close && skip_body(b, &head);
            let rendered = rejected(b, shared, &r, !keep, is_head);
            drop(r);
            let ok = rendered && flush(s, b, server.send_timeout).await;
            if let Some(l) = log {
                l.finish(status);
            }
            return keep && ok;
        }
    };
    let mut held = a.take_held();
    let Some((cluster, view, feature)) = a.parts() else {
        return false;
    };
    let endpoints = cluster.endpoints.load();
    let sent = log.is_some().then(Instant::now);
    let start = Instant::now();
    let now_ms = shared.clock.at_ms(start);
    let Some(ep) = endpoints.pick(now_ms, shared.rand()) else {
        feature.counters.inc(crate::metrics::Outcome::UpstreamError);
        drop(held);
        let keep = !head.close && skip_body(b, &head);
        let r = respond::error(ProxyError::NoEndpoint);
        let status = r.status().as_u16();
        local(b, r, (!keep, is_head), &shared.clock);
        let ok = flush(s, b, server.send_timeout).await;
        if let Some(l) = log {
            l.finish(status);
        }
        return keep && ok;
    };
    let at = Exchange {
        shared,
        cluster,
        view,
        feature,
        ep: &ep,
    };
    let req = exchange::Request {
        head: &head,
        conn: info,
        cluster,
        ep: &ep,
        server,
        host: head.host,
    };
    let framing = head.framing;
    let forwarding = exchange::forward(&at, s, b, req, &mut held, (start, now_ms), timer);
    let out = if framing == Framing::None {
        tokio::select! {
            biased;
            o = forwarding => o,
            () = gone(s) => return false,
        }
    } else {
        forwarding.await
    };
    if let (Some(l), Some(sent)) = (log.as_mut(), sent) {
        l.note.upstream = Some(sent.elapsed());
        l.note.outcome = "forwarded";
    }
    drop(held);
    let (status, keep) = match out {
        Forwarded::Relayed { status, keep } => (status, keep),
        Forwarded::Broken { status } => (status, false),
        Forwarded::Failed { err, close } => {
            let mut r = respond::error(err);
            a.stamp_ours(shared, &mut r);
            let status = r.status().as_u16();
            let keep = !close && !head.close && err != ProxyError::ClientTimeout;
            local(b, r, (!keep, is_head), &shared.clock);
            let ok = flush(s, b, server.send_timeout).await;
            (status, keep && ok)
        }
    };
    if let Some(l) = log {
        l.finish(status);
    }
    keep
}

/// Consumes the request's head and body from `b` when the body is all there; false if it is
/// not (the connection must then close).
fn skip_body(b: &mut Buf, head: &Head) -> bool {
    b.consume(head.len);
    match head.framing {
        Framing::None => true,
        Framing::Length(n) => match usize::try_from(n) {
            Ok(n) if n <= b.pending().len() => {
                b.consume(n);
                true
            }
            _ => false,
        },
        Framing::Chunked => {
            let mut c = Chunked::new(buffers::UPSTREAM);
            match c.scan(b.pending()) {
                Ok(n) if c.done() => {
                    b.consume(n);
                    true
                }
                _ => false,
            }
        }
    }
}

/// Renders a reject into `b.out`; false if it has no feature to answer for.
fn rejected(b: &mut Buf, shared: &Shared, r: &Rejection, close: bool, is_head: bool) -> bool {
    let Some(feature) = r.feature() else {
        return false;
    };
    let ticket = r.ticket(shared);
    let cfg = &r.snap.compiled.config.reject;
    let head = super::write::Reject {
        status: r.status().as_u16(),
        retry_after_s: r.reject.retry_after_s,
        ratelimit: cfg.ratelimit_headers.then_some(r.limit),
        ticket: ticket.as_ref().map(|(t, c)| (t.as_str(), c.as_deref())),
        body_prefix: feature.reject_bodies.prefix(r.reject.reason),
        now: (shared.clock, r.now_ms),
    };
    b.out.clear();
    super::write::reject(&mut b.out, &head, close, is_head);
    true
}

/// Renders a response of our own into `b.out` (rendered before the write, so that the
/// response is not part of the request's future).
fn local(
    b: &mut Buf,
    resp: http::Response<ProxyBody>,
    (close, is_head): (bool, bool),
    clock: &crate::clock::Clock,
) {
    let (parts, mut body) = resp.into_parts();
    let bytes = local_bytes(&mut body);
    b.out.clear();
    super::write::local(
        &mut b.out,
        &parts,
        &bytes,
        (close, is_head),
        (*clock, clock.now_ms()),
    );
}

/// Writes what is rendered in `b.out`. True if it was written.
async fn flush(s: &TcpStream, b: &Buf, send_timeout: std::time::Duration) -> bool {
    write_all(s, &b.out, send_timeout).await.is_ok()
}

/// A local body's bytes (it is ready at once).
fn local_bytes(body: &mut ProxyBody) -> Bytes {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(f))) => f.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}
