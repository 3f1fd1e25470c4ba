//! One admitted request forwarded on the HTTP/1.1 path of our own: its head written upstream
//! from the spans of the client's buffer, its body relayed as it was framed, the response head
//! parsed from the upstream's buffer and written to the client with hop-by-hop fields dropped,
//! and the response body relayed chunk by chunk. The upstream connection goes back to its
//! endpoint's pool once the response has ended cleanly.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::buffers::{self, Buf};
use super::chunked::Chunked;
use super::head::{Framing, Head, View};
use super::io::{
    read_by, read_else_push, send_all, try_send, writable_within, write_all, IoFail, Lazy,
};
use super::response::{self, BodyKind};
use super::write::{self, Upstream};
use crate::config::ServerConfig;
use crate::proxy::body::Held;
use crate::proxy::forward::{backend_down, cache_of, Exchange};
use crate::proxy::handler::ConnInfo;
use crate::proxy::respond::ProxyError;
use crate::runtime::Cluster;
use crate::upstream::pool::{millis, still_open};
use crate::upstream::request_body::READ_WHOLE_MAX;
use crate::upstream::EndpointGuard;

/// How a forwarded request ended, for the client connection.
pub enum Forwarded {
    /// The response was relayed: its status, and whether the connection may carry another.
    Relayed { status: u16, keep: bool },
    /// No response head: answer this error (the connection closes after it if `close`).
    Failed { err: ProxyError, close: bool },
    /// The response head went out but the exchange broke after it: close the connection.
    Broken { status: u16 },
}

/// What a failure before the response head was.
enum Fail {
    Connect(std::io::Error),
    /// The upstream connection failed or sent something malformed.
    Broken(String),
    Timeout,
    /// The client's body: malformed, cut off, or too slow.
    Client(ProxyError),
}

/// The request, as the exchange needs it.
pub(crate) struct Request<'a> {
    pub head: &'a Head,
    pub conn: &'a ConnInfo,
    pub cluster: &'a Cluster,
    pub ep: &'a EndpointGuard,
    pub server: &'a ServerConfig,
    /// The client's validated Host, in the head.
    pub host: Option<super::head::Span>,
}

/// Forwards the request whose head starts `b`'s pending bytes (consumed here, with its
/// body), and relays the response to `client`.
pub(crate) async fn forward(
    at: &Exchange<'_>,
    client: &TcpStream,
    b: &mut Buf,
    req: Request<'_>,
    held: &mut Held,
    (start, now_ms): (Instant, u64),
    timer: &mut Lazy,
) -> Forwarded {
    let up = &req.cluster.config.upstream;
    let shared = at.shared;
    // The head for the upstream, and as much of the body as is buffered already.
    {
        let pending = &b.data[b.start..b.end];
        let framing = match req.head.framing {
            Framing::None => write::Framing::Keep,
            Framing::Length(n) => write::Framing::Length(n),
            Framing::Chunked => write::Framing::Chunked,
        };
        let ep = &req.ep.endpoint;
        let target = Upstream {
            conn: &req.conn.headers,
            host: req.host.map(|h| h.in_buf(pending)),
            preserve_host: up.preserve_host,
            endpoint_host: ep.host_header.as_bytes(),
            via: b"1.1 warmgate",
        };
        b.out.clear();
        write::request_head(
            &mut b.out,
            pending,
            req.head.method.as_str().as_bytes(),
            req.head.target,
            &b.fields,
            req.head.conn_names,
            &target,
            framing,
        );
    }
    b.consume(req.head.len);
    let mut body = BodyLeft::new(req.head.framing, req.server.max_header_bytes);
    if let Err(e) = body.take(b) {
        return Forwarded::Failed {
            err: e,
            close: true,
        };
    }
    // A small body of a declared length still on its way is read in full first, as on hyper's
    // server: it goes out with its head in one write, and no upstream connection waits on a
    // client that pauses mid-body. The request's clock starts again once it is here.
    let (start, now_ms) = if body.small_rest() {
        if let Err(e) = read_rest(client, b, &mut body, req.server, timer).await {
            return Forwarded::Failed {
                err: e,
                close: true,
            };
        }
        (Instant::now(), now_ms + millis(start.elapsed()))
    } else {
        (start, now_ms)
    };
    let mut ubuf = b.take_upstream();
    let result = send(
        client,
        b,
        &mut ubuf,
        &req,
        &mut body,
        (start, now_ms),
        timer,
    )
    .await;
    let answered_at = Instant::now();
    let elapsed_all = answered_at.saturating_duration_since(start);
    let ((stream, kept), sent_at, resp) = match result {
        Ok(r) => r,
        Err(f) => {
            b.give_upstream(ubuf);
            let elapsed = elapsed_all;
            let now_ms = now_ms + millis(elapsed);
            let (err, why) = match f {
                Fail::Client(e) => {
                    tracing::debug!(error = ?e, "request body failed");
                    return Forwarded::Failed {
                        err: e,
                        close: true,
                    };
                }
                Fail::Connect(e) => {
                    let err = if backend_down(&e) {
                        ProxyError::UpstreamDown
                    } else {
                        ProxyError::UpstreamConnect
                    };
                    (err, format!("connect: {e}"))
                }
                Fail::Broken(why) => (ProxyError::UpstreamBroken, why),
                Fail::Timeout => (ProxyError::UpstreamTimeout, String::new()),
            };
            // The answer (and its Retry-After) is the caller's; the wait after a failed
            // probe happens here.
            let _ = at.failed(err, elapsed, now_ms, &why).await;
            // A body not read to its end leaves the connection unusable.
            return Forwarded::Failed {
                err,
                close: !body.done(),
            };
        }
    };
    // The backend's latency: from the last body byte sent.
    let elapsed = elapsed_all.saturating_sub(sent_at);
    let status = resp.status;
    {
        let view = View {
            buf: ubuf.pending(),
            fields: &ubuf.fields,
        };
        let cache = cache_of(&view, &req.cluster.config.signals);
        at.answered(status >= 500, cache, elapsed, now_ms + millis(elapsed_all));
    }
    held.endpoint = None;
    let draining = shared.draining.load(std::sync::atomic::Ordering::Relaxed);
    let keep_client = !req.head.close && !draining && status != 101;
    let to_client = match resp.body {
        BodyKind::None => write::Framing::Keep,
        BodyKind::Length(n) => write::Framing::Length(n),
        BodyKind::Chunked | BodyKind::Close => write::Framing::Chunked,
    };
    b.out.clear();
    write::response_head(
        &mut b.out,
        ubuf.pending(),
        status,
        resp.reason,
        &ubuf.fields,
        resp.conn_names,
        to_client,
        !keep_client,
    );
    ubuf.consume(resp.len);
    let relay = Relay {
        client,
        upstream: &stream,
        body_idle: up.body_idle_timeout,
        send: req.server.send_timeout,
        stall: req.server.stall_release,
        stalled: &shared.metrics.stalled_released,
    };
    let relayed = relay
        .run(&mut ubuf, &mut b.out, resp.body, held, timer)
        .await;
    let reusable = relayed && resp.reusable && ubuf.is_empty() && status != 101;
    b.give_upstream(ubuf);
    if reusable {
        req.ep.endpoint.pool.put_raw(
            stream,
            kept,
            now_ms + millis(elapsed_all),
            up.pool_max_idle_per_endpoint,
        );
    }
    done(status, relayed, keep_client)
}

fn done(status: u16, relayed: bool, keep: bool) -> Forwarded {
    if relayed {
        Forwarded::Relayed { status, keep }
    } else {
        Forwarded::Broken { status }
    }
}

/// Sends the head and body, and waits for the response head (1xx skipped). Returns the
/// connection, when the body was sent in full (from the start), and the response head at
/// the front of `ubuf`. A pooled connection found closed before any answer is replaced by a
/// new one once when the request is idempotent and was whole in the first write; otherwise it
/// is checked before the request goes out on it, and the request is not sent again.
#[allow(clippy::too_many_arguments)]
async fn send(
    client: &TcpStream,
    b: &mut Buf,
    ubuf: &mut Buf,
    req: &Request<'_>,
    body: &mut BodyLeft,
    (start, now_ms): (Instant, u64),
    timer: &mut Lazy,
) -> Result<((TcpStream, Lazy), Duration, response::Response), Fail> {
    let up = &req.cluster.config.upstream;
    let pool = &req.ep.endpoint.pool;
    let max_idle_ms = millis(up.pool_idle_timeout);
    // Everything to send is in the first write (the head, and the body if it came with it),
    // and sending it twice means what sending it once does: it can be sent again. A POST or
    // a PATCH is never sent twice (RFC 9110 §9.2.2): the upstream may have acted on it before
    // it closed.
    let resendable = body.done() && req.head.method.is_idempotent();
    let mut fresh_only = false;
    loop {
        let pooled = if fresh_only {
            None
        } else if resendable {
            // Sent again on a new connection if this one turns out closed.
            pool.take_raw(now_ms, max_idle_ms)
        } else {
            // A body still streaming from the client cannot be sent twice, nor can a request
            // that is not idempotent: the connection is checked first (an upstream that closed
            // it while idle has left its end of stream to read).
            std::iter::from_fn(|| pool.take_raw(now_ms, max_idle_ms)).find(|(s, _)| still_open(s))
        };
        let reused = pooled.is_some();
        // The pooled connection's own timer goes back with it (this path waits on the client
        // connection's).
        let (stream, kept) = match pooled {
            Some(p) => p,
            // Boxed: most requests go out on a pooled connection.
            None => (
                Box::pin(connect(req.cluster, req.ep))
                    .await
                    .map_err(Fail::Connect)?,
                Lazy::default(),
            ),
        };
        // The head and what is buffered of the body, in one write.
        if let Err(e) = write_all(&stream, &b.out, up.response_header_timeout).await {
            if reused && resendable {
                fresh_only = true;
                continue;
            }
            return Err(broken("writing the request", e));
        }
        let sent = if body.done() {
            start
        } else {
            relay_request_body(client, &stream, b, body, req.server, timer).await?;
            Instant::now()
        };
        let sent_at = sent.saturating_duration_since(start);
        let deadline = sent + up.response_header_timeout;
        match read_head(&stream, ubuf, req.head, deadline, timer).await {
            Ok(r) => return Ok(((stream, kept), sent_at, r)),
            Err(Fail::Broken(_)) if reused && resendable && ubuf.is_empty() => {
                fresh_only = true;
                ubuf.consume(usize::MAX);
                continue;
            }
            Err(f) => return Err(f),
        }
    }
}

fn broken(what: &str, e: IoFail) -> Fail {
    match e {
        IoFail::Timeout => Fail::Timeout,
        IoFail::Io(e) => Fail::Broken(format!("{what}: {e}")),
    }
}

/// A new connection to the endpoint, paced by the cluster's connector.
pub(super) async fn connect(cluster: &Cluster, ep: &EndpointGuard) -> std::io::Result<TcpStream> {
    let up = &cluster.config.upstream;
    cluster.client.connector.turn().await;
    let uri = &ep.endpoint.uri;
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(80);
    let s = match tokio::time::timeout(up.connect_timeout, TcpStream::connect((host, port))).await {
        Ok(r) => r?,
        Err(_) => return Err(std::io::ErrorKind::TimedOut.into()),
    };
    let _ = s.set_nodelay(true);
    ep.endpoint.pool.note_opened();
    Ok(s)
}

/// Reads the response head into `ubuf` (skipping interim 1xx heads) until `deadline`.
async fn read_head(
    s: &TcpStream,
    ubuf: &mut Buf,
    head: &Head,
    deadline: Instant,
    timer: &mut Lazy,
) -> Result<response::Response, Fail> {
    let is_head = head.method == http::Method::HEAD;
    loop {
        if !ubuf.is_empty() {
            let Buf {
                data,
                start,
                end,
                fields,
                ..
            } = &mut *ubuf;
            match response::parse(&data[*start..*end], fields, is_head) {
                // Switching protocols unasked: passed on as it is, and both connections end.
                Ok(Some(r)) if r.status == 101 => return Ok(r),
                Ok(Some(r)) if (100..200).contains(&r.status) => {
                    ubuf.consume(r.len);
                    continue;
                }
                Ok(Some(r)) => return Ok(r),
                Ok(None) => {}
                Err(why) => return Err(Fail::Broken(why.into())),
            }
        }
        let room = ubuf.room(buffers::UPSTREAM * 4);
        if room.is_empty() {
            return Err(Fail::Broken("response head too large".into()));
        }
        match read_by(s, room, deadline, timer).await {
            Ok(0) => return Err(Fail::Broken("upstream closed before answering".into())),
            Ok(n) => ubuf.filled(n),
            Err(e) => return Err(broken("reading the response head", e)),
        }
    }
}

/// What is left of a request body to send.
struct BodyLeft {
    framing: Framing,
    left: u64,
    chunked: Chunked,
    finished: bool,
}

impl BodyLeft {
    fn new(framing: Framing, limit: usize) -> Self {
        Self {
            framing,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunked: Chunked::new(limit),
            finished: framing == Framing::None,
        }
    }

    fn done(&self) -> bool {
        self.finished
    }

    /// Moves the body bytes pending in `b` to `b.out` (to send), as much as keeps the first
    /// write small.
    fn take(&mut self, b: &mut Buf) -> Result<(), ProxyError> {
        let n = self.next(b, buffers::UPSTREAM * 4)?;
        b.out.extend_from_slice(&b.data[b.start..b.start + n]);
        b.consume(n);
        Ok(())
    }

    /// How many of the bytes pending in `b` are body (up to `cap`), their framing checked and
    /// counted as sent: they go out as they are, from `b.pending()`.
    fn next(&mut self, b: &Buf, cap: usize) -> Result<usize, ProxyError> {
        if self.finished || b.is_empty() {
            return Ok(0);
        }
        let avail = b.pending();
        let n = match self.framing {
            Framing::None => 0,
            Framing::Length(_) => {
                let n = avail
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX))
                    .min(cap);
                self.left -= n as u64;
                self.finished = self.left == 0;
                n
            }
            Framing::Chunked => {
                let n = self
                    .chunked
                    .scan(&avail[..avail.len().min(cap)])
                    .map_err(|e| {
                        tracing::debug!(error = e.as_str(), "malformed chunked request body");
                        ProxyError::ClientBody
                    })?;
                self.finished = self.chunked.done();
                n
            }
        };
        Ok(n)
    }

    /// Whether the rest of a body of a declared length, at most [`READ_WHOLE_MAX`], is still
    /// to come.
    fn small_rest(&self) -> bool {
        matches!(self.framing, Framing::Length(_)) && !self.finished && self.left <= READ_WHOLE_MAX
    }

    /// Whether more body than a client buffer holds is still to come.
    fn large(&self) -> bool {
        match self.framing {
            Framing::Length(_) => self.left > buffers::CLIENT as u64,
            Framing::Chunked => !self.finished,
            Framing::None => false,
        }
    }
}

/// Reads the rest of a small body from the client into `b.out`, after its head; each wait for
/// more bounded by `client_body_timeout`.
async fn read_rest(
    client: &TcpStream,
    b: &mut Buf,
    body: &mut BodyLeft,
    server: &ServerConfig,
    timer: &mut Lazy,
) -> Result<(), ProxyError> {
    while !body.done() {
        let deadline = Instant::now() + server.client_body_timeout;
        match read_by(client, b.room(buffers::CLIENT), deadline, timer).await {
            Ok(0) | Err(IoFail::Io(_)) => return Err(ProxyError::ClientBody),
            Ok(n) => b.filled(n),
            Err(IoFail::Timeout) => return Err(ProxyError::ClientTimeout),
        }
        body.take(b)?;
    }
    Ok(())
}

/// Relays the rest of the request body from the client to the upstream.
async fn relay_request_body(
    client: &TcpStream,
    upstream: &TcpStream,
    b: &mut Buf,
    body: &mut BodyLeft,
    server: &ServerConfig,
    timer: &mut Lazy,
) -> Result<(), Fail> {
    // Whether the last write held its tail back for what follows (`MSG_MORE`).
    let mut held_back = false;
    while !body.done() {
        // A read that filled the buffer leaves more in the client's socket, most likely: what
        // goes out now is sent as followed at once, as a response body is.
        let full = b.is_full();
        // The body bytes go out straight from the buffer they were read into.
        let n = body.next(b, usize::MAX).map_err(Fail::Client)?;
        let more = full && !body.done();
        if n > 0 {
            send_all(upstream, &b.pending()[..n], more, server.send_timeout)
                .await
                .map_err(|e| broken("writing the request body", e))?;
            held_back = more;
            b.consume(n);
        }
        if body.done() {
            break;
        }
        // A body that filled the buffer and goes on is read through a large buffer, lent
        // until the connection gives its buffer back: fewer reads and writes an upload.
        if more && body.large() {
            b.lend_large();
        }
        let deadline = Instant::now() + server.client_body_timeout;
        let room = b.room(buffers::CLIENT);
        match read_else_push((client, upstream), room, &mut held_back, deadline, timer).await {
            Ok(0) => return Err(Fail::Client(ProxyError::ClientBody)),
            Ok(n) => b.filled(n),
            Err(IoFail::Timeout) => return Err(Fail::Client(ProxyError::ClientTimeout)),
            Err(IoFail::Io(_)) => return Err(Fail::Client(ProxyError::ClientBody)),
        }
    }
    Ok(())
}

/// The response body's way from the upstream to the client.
struct Relay<'a> {
    client: &'a TcpStream,
    upstream: &'a TcpStream,
    body_idle: Duration,
    send: Duration,
    stall: Duration,
    stalled: &'a prometheus::IntCounter,
}

impl Relay<'_> {
    /// Writes `out` (the head) and the body after it; true if the body ended cleanly.
    async fn run(
        &self,
        ubuf: &mut Buf,
        out: &mut Vec<u8>,
        body: BodyKind,
        held: &mut Held,
        timer: &mut Lazy,
    ) -> bool {
        let mut left = match body {
            BodyKind::Length(n) => n,
            _ => 0,
        };
        let mut chunked = Chunked::new(64 * 1024);
        let mut ended = matches!(body, BodyKind::None) || (matches!(body, BodyKind::Length(0)));
        // Whether the last write held its tail back for what follows (`MSG_MORE`).
        let mut held_back = false;
        loop {
            // A read that filled the buffer leaves more in the upstream's socket, most likely:
            // what goes out now is sent as followed at once.
            let full = ubuf.is_full();
            // What is buffered of the body goes out: after what is pending in `out` (the head),
            // or straight from the buffer (`direct` bytes of it) when nothing is.
            let mut direct = 0;
            if !ended && !ubuf.is_empty() {
                let avail = ubuf.pending();
                let n = match body {
                    BodyKind::Length(_) => {
                        let n = avail.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                        left -= n as u64;
                        ended = left == 0;
                        n
                    }
                    BodyKind::Chunked => match chunked.scan(avail) {
                        Ok(n) => {
                            ended = chunked.done();
                            n
                        }
                        Err(e) => {
                            tracing::debug!(error = e.as_str(), "malformed chunked response body");
                            return false;
                        }
                    },
                    BodyKind::Close => {
                        let n = avail.len();
                        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                        out.extend_from_slice(avail);
                        out.extend_from_slice(b"\r\n");
                        n
                    }
                    BodyKind::None => 0,
                };
                if body == BodyKind::Close {
                    ubuf.consume(n);
                } else if out.is_empty() {
                    direct = n;
                } else {
                    out.extend_from_slice(&avail[..n]);
                    ubuf.consume(n);
                }
            }
            let more = full && !ended;
            if !out.is_empty() {
                if self.to_client(out, held, more).await.is_err() {
                    return false;
                }
                held_back = more;
                out.clear();
            } else if direct > 0 {
                if self
                    .to_client(&ubuf.pending()[..direct], held, more)
                    .await
                    .is_err()
                {
                    return false;
                }
                held_back = more;
                ubuf.consume(direct);
            }
            if ended {
                return true;
            }
            let deadline = Instant::now() + self.body_idle;
            // A body that filled the buffer and goes on is read through a buffer four times as
            // large, lent for the response: fewer reads and writes a response.
            let large = more
                && match body {
                    BodyKind::Length(_) => left > buffers::UPSTREAM as u64,
                    _ => true,
                };
            if large {
                ubuf.lend_large();
            }
            let room = ubuf.room(buffers::UPSTREAM);
            let ends = (self.upstream, self.client);
            match read_else_push(ends, room, &mut held_back, deadline, timer).await {
                Ok(0) if body == BodyKind::Close => {
                    out.extend_from_slice(b"0\r\n\r\n");
                    ended = true;
                }
                Ok(0) => return false,
                Ok(n) => ubuf.filled(n),
                Err(e) => {
                    tracing::debug!(error = ?e, "upstream body failed");
                    return false;
                }
            }
        }
    }

    /// Writes to the client; a client that takes nothing for `stall` gives up the admission
    /// slot (the response goes on outside the limit), and for `send` is cut off.
    /// With `more`, the bytes are sent as followed at once ([`try_send`]).
    async fn to_client(&self, mut bytes: &[u8], held: &mut Held, more: bool) -> Result<(), IoFail> {
        let s = self.client;
        while !bytes.is_empty() {
            match try_send(s, bytes, more) {
                Ok(0) => return Err(IoFail::Io(std::io::ErrorKind::WriteZero.into())),
                Ok(n) => bytes = &bytes[n..],
                // The waits are boxed: a full socket is rare next to the requests whose
                // futures they would make larger.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut wait = self.send;
                    if held.permit.is_some() && self.stall < self.send {
                        match Box::pin(writable_within(s, self.stall)).await {
                            Ok(()) => continue,
                            Err(IoFail::Timeout) => {}
                            Err(e) => return Err(e),
                        }
                        held.permit = None;
                        self.stalled.inc();
                        wait = self.send - self.stall;
                    }
                    Box::pin(writable_within(s, wait)).await?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(IoFail::Io(e)),
            }
        }
        Ok(())
    }
}
