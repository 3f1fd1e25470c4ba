//! A request that came through hyper's server (an HTTP/2 stream, a TLS client) with no body,
//! or with a small one read in full first, sent upstream on the HTTP/1.1 path's bare
//! connections instead of hyper's client: its head written from the header map in one pass
//! (the body after it, in the same write), the response head parsed with `httparse`, and the
//! body read by [`BareBody`] straight from the connection, which goes back to the endpoint's
//! pool once the body has ended cleanly. No connection task, channel or codec per exchange.
//!
//! Requests with a larger body or one of no declared length, WebSocket upgrades and upstreams
//! over TLS or h2c stay on hyper's client: they are rarer, and a streamed request body needs
//! hyper's flow control.

use std::io;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, VIA};
use http::{Method, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::buffers::{self, Buf};
use super::chunked::Chunked;
use super::exchange::connect;
use super::io::{read_by, read_now, write_all, IoFail, Lazy};
use super::response::{self, BodyKind};
use super::write::{self, Fields, Framing, Kind, Spans, Upstream};
use crate::proxy::body::BoxError;
use crate::proxy::headers;
use crate::runtime::Cluster;
use crate::upstream::pool::{millis, still_open, IdlePool, SendError};
use crate::upstream::EndpointGuard;

/// Sends the request (its head as the client sent it: the forwarding fields are written
/// from `up` on the way out; then `body`, whole) and waits for the response head; the caller
/// bounds the wait.
pub(crate) async fn send(
    cluster: &Cluster,
    ep: &EndpointGuard,
    (req, body): (&http::request::Parts, &[u8]),
    up: &Upstream<'_>,
    (now_ms, deadline): (u64, Instant),
) -> Result<(http::response::Parts, BareBody), SendError> {
    let mut ub = buffers::take_for_stream();
    request_head(&mut ub.out, req, body.len(), up);
    ub.out.extend_from_slice(body);
    let is_head = req.method == Method::HEAD;
    let resendable = req.method.is_idempotent();
    match exchange(
        cluster,
        ep,
        &mut ub,
        (is_head, resendable),
        (now_ms, deadline),
    )
    .await
    {
        Ok((stream, timer, r)) => match response_parts(&ub, &r) {
            Ok(parts) => {
                ub.consume(r.len);
                Ok((
                    parts,
                    BareBody::new((stream, timer), ub, r.body, r.reusable),
                ))
            }
            Err(why) => {
                buffers::give_for_stream(ub);
                Err(SendError::Other(why))
            }
        },
        Err(e) => {
            buffers::give_for_stream(ub);
            Err(e)
        }
    }
}

/// Writes `ub.out` and reads the response head into `ub` by `deadline` (timed by the
/// connection's own timer, kept with it in the pool). A pooled connection found closed before
/// any answer is replaced by a new one once when the request is `resendable` (idempotent; its
/// body, if any, is in `ub.out` with its head); otherwise the connection is checked before the
/// request goes out on it, and the request is not sent again (the upstream may have acted on it
/// before it closed).
async fn exchange(
    cluster: &Cluster,
    ep: &EndpointGuard,
    ub: &mut Buf,
    (is_head, resendable): (bool, bool),
    (now_ms, deadline): (u64, Instant),
) -> Result<(TcpStream, Lazy, response::Response), SendError> {
    let up = &cluster.config.upstream;
    let pool = &ep.endpoint.pool;
    let max_idle_ms = millis(up.pool_idle_timeout);
    let mut fresh_only = false;
    loop {
        let pooled = if fresh_only {
            None
        } else if resendable {
            pool.take_raw(now_ms, max_idle_ms)
        } else {
            std::iter::from_fn(|| pool.take_raw(now_ms, max_idle_ms)).find(|(s, _)| still_open(s))
        };
        let reused = pooled.is_some();
        let (stream, mut timer) = match pooled {
            Some(p) => p,
            None => (
                Box::pin(connect(cluster, ep))
                    .await
                    .map_err(|e| SendError::Connect(Box::new(e)))?,
                Lazy::default(),
            ),
        };
        if let Err(e) = write_all(&stream, &ub.out, up.response_header_timeout).await {
            if reused && resendable {
                fresh_only = true;
                continue;
            }
            return Err(SendError::Other(match e {
                IoFail::Io(e) => Box::new(e),
                IoFail::Timeout => "writing the request timed out".into(),
            }));
        }
        match read_head(&stream, ub, is_head, deadline, &mut timer).await {
            Ok(r) => return Ok((stream, timer, r)),
            Err(Head::Timeout) => return Err(SendError::Timeout),
            Err(_) if reused && resendable && ub.is_empty() => {
                fresh_only = true;
                ub.consume(usize::MAX);
            }
            Err(Head::Failed(e)) => return Err(SendError::Other(e)),
        }
    }
}

/// The request head in HTTP/1.1 (origin form), with the rules of the HTTP/1.1 path
/// ([`write::request_fields`]). An HTTP/2 request's `cookie` fields are joined into one (RFC
/// 9113 §8.2.3); a request with a body of `len` bytes says so, whatever framing the client
/// used, and a method that usually has a body says it is empty when it has none.
fn request_head(out: &mut Vec<u8>, req: &http::request::Parts, len: usize, up: &Upstream<'_>) {
    out.clear();
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    write::request_line(out, req.method.as_str().as_bytes(), target.as_bytes());
    let usually_has_body = matches!(req.method, Method::POST | Method::PUT | Method::PATCH);
    let body = if len > 0 || usually_has_body {
        Framing::Length(len as u64)
    } else {
        Framing::Keep
    };
    // Whether `Connection` names fields to drop (not just `close` or `keep-alive`).
    let conn_names = req
        .headers
        .get_all(CONNECTION)
        .iter()
        .any(headers::names_other_headers);
    write::request_fields(out, &req.headers, conn_names, true, up, body);
}

/// Why no response head was read.
enum Head {
    Failed(BoxError),
    Timeout,
}

impl<E: Into<BoxError>> From<E> for Head {
    fn from(e: E) -> Self {
        Head::Failed(e.into())
    }
}

/// Reads the response head into `ub` (interim 1xx heads skipped) by `deadline`.
async fn read_head(
    s: &TcpStream,
    ub: &mut Buf,
    is_head: bool,
    deadline: Instant,
    timer: &mut Lazy,
) -> Result<response::Response, Head> {
    loop {
        if !ub.is_empty() {
            let Buf {
                data,
                start,
                end,
                fields,
                ..
            } = &mut *ub;
            match response::parse(&data[*start..*end], fields, is_head)? {
                Some(r) if r.status == 101 => {
                    return Err("upstream switched protocols unasked".into())
                }
                Some(r) if r.status < 200 => {
                    ub.consume(r.len);
                    continue;
                }
                Some(r) => return Ok(r),
                None => {}
            }
        }
        let room = ub.room(buffers::UPSTREAM * 4);
        if room.is_empty() {
            return Err("response head too large".into());
        }
        let n = match read_by(s, room, deadline, timer).await {
            Ok(n) => n,
            Err(IoFail::Timeout) => return Err(Head::Timeout),
            Err(IoFail::Io(e)) => return Err(e.into()),
        };
        if n == 0 {
            return Err("upstream closed before answering".into());
        }
        ub.filled(n);
    }
}

/// The response head as hyper's server takes it, ready for the client as `forward_response`
/// makes it: one copy of the head's bytes, each value a slice of it; hop-by-hop fields (and
/// those `Connection` lists) left out, our `Via` entry added to the upstream's.
fn response_parts(ub: &Buf, r: &response::Response) -> Result<http::response::Parts, BoxError> {
    let head = Bytes::copy_from_slice(&ub.pending()[..r.len]);
    let fields = Spans(&head, &ub.fields);
    let mut headers = HeaderMap::with_capacity(ub.fields.len() + 1);
    let mut via = false;
    for (name, value) in fields.pairs() {
        match write::kind(name) {
            Kind::HopByHop => continue,
            // The body is unframed here; HTTP/2 has no Transfer-Encoding.
            Kind::Framing if name.len() != 14 => continue,
            Kind::Via => {
                via = true;
                continue;
            }
            _ if r.conn_names && write::listed(fields, name) => continue,
            _ => {}
        }
        let name = match known_name(name) {
            Some(n) => n,
            None => HeaderName::from_bytes(name)?,
        };
        headers.append(name, HeaderValue::from_maybe_shared(head.slice_ref(value))?);
    }
    let ours = headers::via(Version::HTTP_11);
    if via {
        let mut all = Vec::with_capacity(64);
        write::joined_values(&mut all, fields, Kind::Via, ours.as_bytes());
        headers.append(VIA, HeaderValue::from_bytes(&all)?);
    } else {
        headers.append(VIA, ours.clone());
    }
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = StatusCode::from_u16(r.status)?;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Ok(parts)
}

/// The usual response fields' names, matched without `HeaderName`'s general parse (a copy
/// into a scratch buffer, then a lookup among every standard name). `name` is a token
/// (`httparse` checked it), so a name equal to one of these apart from case is that name.
fn known_name(name: &[u8]) -> Option<HeaderName> {
    use http::header::{
        ACCEPT_RANGES, AGE, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, DATE,
        ETAG, EXPIRES, LAST_MODIFIED, LOCATION, SERVER, SET_COOKIE, VARY,
    };
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    Some(match name.len() {
        3 if is(b"age") => AGE,
        4 if is(b"date") => DATE,
        4 if is(b"etag") => ETAG,
        4 if is(b"vary") => VARY,
        6 if is(b"server") => SERVER,
        7 if is(b"expires") => EXPIRES,
        8 if is(b"location") => LOCATION,
        10 if is(b"set-cookie") => SET_COOKIE,
        12 if is(b"content-type") => CONTENT_TYPE,
        13 if is(b"last-modified") => LAST_MODIFIED,
        13 if is(b"accept-ranges") => ACCEPT_RANGES,
        13 if is(b"cache-control") => CACHE_CONTROL,
        14 if is(b"content-length") => CONTENT_LENGTH,
        16 if is(b"content-encoding") => CONTENT_ENCODING,
        _ => return None,
    })
}

/// A response body read from a bare upstream connection, its framing taken off.
pub struct BareBody {
    /// The connection and its timer, back to the pool when the body is over.
    stream: Option<(TcpStream, Lazy)>,
    /// The buffer it reads into, back to the shared pool when the body is over.
    buf: Option<Box<Buf>>,
    kind: BodyKind,
    /// Bytes of a `Content-Length` body not yet handed on.
    left: u64,
    chunked: Chunked,
    ended: bool,
    reusable: bool,
}

impl BareBody {
    fn new(stream: (TcpStream, Lazy), buf: Box<Buf>, kind: BodyKind, reusable: bool) -> Self {
        let left = match kind {
            BodyKind::Length(n) => n,
            _ => 0,
        };
        Self {
            stream: Some(stream),
            buf: Some(buf),
            kind,
            left,
            chunked: Chunked::new(64 * 1024),
            ended: matches!(kind, BodyKind::None | BodyKind::Length(0)),
            reusable,
        }
    }

    /// Whether the body has been read to its end.
    pub fn is_end_stream(&self) -> bool {
        self.ended
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.kind {
            _ if self.ended => SizeHint::with_exact(0),
            BodyKind::Length(_) => SizeHint::with_exact(self.left),
            _ => SizeHint::default(),
        }
    }

    /// The next piece of the body (trailers of a chunked body are dropped).
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (Some((stream, _)), Some(ub)) = (self.stream.as_ref(), self.buf.as_mut()) else {
            return Poll::Ready(None);
        };
        loop {
            if self.ended {
                return Poll::Ready(None);
            }
            if !ub.is_empty() {
                let avail = ub.pending();
                let (data, n) = match self.kind {
                    BodyKind::Length(_) => {
                        let n = avail
                            .len()
                            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                        self.left -= n as u64;
                        self.ended = self.left == 0;
                        (Bytes::copy_from_slice(&avail[..n]), n)
                    }
                    BodyKind::Chunked => {
                        let mut data = BytesMut::new();
                        let n = self
                            .chunked
                            .scan_data(avail, |d| data.extend_from_slice(d))
                            .map_err(|e| BoxError::from(e.as_str()))?;
                        self.ended = self.chunked.done();
                        (data.freeze(), n)
                    }
                    BodyKind::Close => (Bytes::copy_from_slice(avail), avail.len()),
                    BodyKind::None => (Bytes::new(), 0),
                };
                ub.consume(n);
                if !data.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                continue;
            }
            match read_now(stream, ub.room(buffers::UPSTREAM)) {
                Ok(0) if self.kind == BodyKind::Close => self.ended = true,
                Ok(0) => {
                    self.stream = None;
                    return Poll::Ready(Some(Err(Box::new(io::Error::from(
                        io::ErrorKind::UnexpectedEof,
                    )))));
                }
                Ok(n) => ub.filled(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    match stream.poll_read_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
            }
        }
    }

    /// The body is over: the connection goes back to `pool` if the body ended cleanly and the
    /// upstream sent nothing after it; the buffers go back either way.
    pub fn give_back(&mut self, pool: &IdlePool, now_ms: u64, max_idle: usize) {
        let stream = self.stream.take();
        let Some(buf) = self.buf.take() else { return };
        if let (Some((s, timer)), true, true) =
            (stream, self.ended && self.reusable, buf.is_empty())
        {
            pool.put_raw(s, timer, now_ms, max_idle);
        }
        buffers::give_for_stream(buf);
    }
}

impl Drop for BareBody {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            buffers::give_for_stream(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::proxy::headers::ConnHeaders;

    /// Every name `known_name` matches is the name `HeaderName` parses, whatever its case;
    /// anything else is left to the general parse.
    #[test]
    fn known_names_are_the_parsed_names() {
        for n in [
            "Age",
            "Date",
            "ETag",
            "Vary",
            "Server",
            "Expires",
            "Location",
            "Set-Cookie",
            "Content-Type",
            "Last-Modified",
            "Accept-Ranges",
            "Cache-Control",
            "Content-Length",
            "Content-Encoding",
            "CONTENT-TYPE",
            "date",
        ] {
            let known = super::known_name(n.as_bytes());
            assert_eq!(known, HeaderName::from_bytes(n.as_bytes()).ok(), "{n}");
        }
        for n in ["x-date", "dat", "datum", "content-types", "x-custom", "via"] {
            assert_eq!(super::known_name(n.as_bytes()), None, "{n}");
        }
    }

    fn parts(
        method: Method,
        uri: &str,
        fields: &[(&'static str, &'static str)],
    ) -> http::request::Parts {
        let mut b = http::Request::builder().method(method).uri(uri);
        for (n, v) in fields {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn head_with(p: &http::request::Parts, conn: &ConnHeaders, host: Option<&[u8]>) -> String {
        head_of(p, 0, conn, host)
    }

    fn head_of(
        p: &http::request::Parts,
        len: usize,
        conn: &ConnHeaders,
        host: Option<&[u8]>,
    ) -> String {
        let up = Upstream {
            conn,
            host,
            preserve_host: true,
            endpoint_host: b"10.0.0.9:8080",
            via: b"2 warmgate",
        };
        let mut out = Vec::new();
        request_head(&mut out, p, len, &up);
        String::from_utf8(out).unwrap()
    }

    fn conn(trusted: bool) -> ConnHeaders {
        ConnHeaders {
            client_ip: HeaderValue::from_static("10.1.2.3"),
            proto: HeaderValue::from_static("http"),
            trusted,
        }
    }

    /// The forwarding fields every head below ends with (no Host from the client).
    const TAIL: &str = "x-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\nvia: 2 warmgate\r\nhost: 10.0.0.9:8080\r\n";

    fn head(p: &http::request::Parts) -> String {
        head_with(p, &conn(false), None)
    }

    #[test]
    fn writes_the_origin_form_and_joins_cookies() {
        let p = parts(
            Method::GET,
            "http://example.com/a?b=1",
            &[
                ("host", "up"),
                ("cookie", "a=1"),
                ("x-y", "z"),
                ("cookie", "b=2"),
            ],
        );
        assert_eq!(
            head(&p),
            format!("GET /a?b=1 HTTP/1.1\r\nx-y: z\r\ncookie: a=1; b=2\r\n{TAIL}\r\n")
        );
    }

    #[test]
    fn forwarding_fields_follow_the_http1_rules() {
        // Hop-by-hop fields and what Connection lists go; a trusted peer's forwarding fields
        // are extended or kept; the client's Host is kept (preserve_host).
        let p = parts(
            Method::GET,
            "/",
            &[
                ("connection", "x-secret"),
                ("x-secret", "1"),
                ("te", "trailers"),
                ("x-forwarded-for", "192.0.2.1"),
                ("x-forwarded-proto", "https"),
                ("via", "1.1 edge"),
                ("content-length", "0"),
                ("x-keep", "yes"),
            ],
        );
        assert_eq!(
            head_with(&p, &conn(true), Some(b"app.example")),
            "GET / HTTP/1.1\r\nx-forwarded-proto: https\r\nx-keep: yes\r\n\
             x-forwarded-for: 192.0.2.1, 10.1.2.3\r\nx-forwarded-host: app.example\r\n\
             via: 1.1 edge, 2 warmgate\r\nhost: app.example\r\n\r\n"
        );
        // Anyone else's are replaced by what the proxy saw.
        assert_eq!(
            head_with(&p, &conn(false), Some(b"app.example")),
            "GET / HTTP/1.1\r\nx-keep: yes\r\nx-forwarded-for: 10.1.2.3\r\n\
             x-forwarded-proto: http\r\nx-forwarded-host: app.example\r\n\
             via: 1.1 edge, 2 warmgate\r\nhost: app.example\r\n\r\n"
        );
    }

    #[test]
    fn an_empty_post_says_its_length() {
        let p = parts(Method::POST, "/form", &[("host", "up")]);
        let want = format!("POST /form HTTP/1.1\r\n{TAIL}content-length: 0\r\n\r\n");
        assert_eq!(head(&p), want);
        let p = parts(Method::POST, "/form", &[("content-length", "0")]);
        assert_eq!(head(&p), want);
    }

    #[test]
    fn a_body_read_in_full_goes_with_its_length_whatever_framing_the_client_used() {
        let want = format!("PUT /doc HTTP/1.1\r\n{TAIL}content-length: 5\r\n\r\n");
        for fields in [
            &[][..],
            &[("content-length", "5")][..],
            &[("transfer-encoding", "chunked")][..],
        ] {
            let p = parts(Method::PUT, "/doc", fields);
            assert_eq!(head_of(&p, 5, &conn(false), None), want, "{fields:?}");
        }
        // A method that usually has none says its length too when it has one.
        let p = parts(Method::DELETE, "/doc", &[]);
        let want = format!("DELETE /doc HTTP/1.1\r\n{TAIL}content-length: 2\r\n\r\n");
        assert_eq!(head_of(&p, 2, &conn(false), None), want);
    }

    /// `raw` as if read from an upstream into a stream buffer, and its head parsed.
    fn read(raw: &[u8]) -> (Box<Buf>, response::Response) {
        let mut ub = buffers::take_for_stream();
        ub.room(1024)[..raw.len()].copy_from_slice(raw);
        ub.filled(raw.len());
        let r = {
            let Buf {
                data, end, fields, ..
            } = &mut *ub;
            response::parse(&data[..*end], fields, false)
                .unwrap()
                .unwrap()
        };
        (ub, r)
    }

    #[test]
    fn response_values_are_slices_of_one_copy() {
        let (ub, r) =
            read(b"HTTP/1.1 203 Fine\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 3\r\n\r\nabc");
        let p = response_parts(&ub, &r).unwrap();
        assert_eq!(p.status, StatusCode::NON_AUTHORITATIVE_INFORMATION);
        let all: Vec<_> = p.headers.get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert_eq!(p.headers["content-length"], "3");
        assert_eq!(p.headers["via"], "1.1 warmgate");
        assert_eq!(r.body, BodyKind::Length(3));
        buffers::give_for_stream(ub);
    }

    #[test]
    fn a_response_head_loses_its_hop_by_hop_fields_and_gains_via() {
        let (ub, r) = read(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Up\r\nX-Up: 1\r\nKeep-Alive: timeout=5\r\nVia: 1.0 a\r\nTransfer-Encoding: chunked\r\nX-Keep: yes\r\nvia: 1.1 b\r\n\r\n0\r\n\r\n");
        let p = response_parts(&ub, &r).unwrap();
        let names: Vec<_> = p.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-keep", "via"]);
        assert_eq!(p.headers["via"], "1.0 a, 1.1 b, 1.1 warmgate");
        assert_eq!(r.body, BodyKind::Chunked);
        buffers::give_for_stream(ub);
    }
}
