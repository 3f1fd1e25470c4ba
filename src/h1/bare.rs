//! A request that came through hyper's server (an HTTP/2 stream, a TLS client) with no body,
//! sent upstream on the HTTP/1.1 path's bare connections instead of hyper's client: its head
//! written from the header map in one pass, the response head parsed with `httparse`, and the
//! body read by [`BareBody`] straight from the connection, which goes back to the endpoint's
//! pool once the body has ended cleanly. No connection task, channel or codec per exchange.
//!
//! Requests with a body, WebSocket upgrades and upstreams over TLS or h2c stay on hyper's
//! client: they are rarer, and a streamed request body needs hyper's flow control.

use std::future::poll_fn;
use std::io;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, COOKIE};
use http::{Method, StatusCode, Version};
use http_body::{Frame, SizeHint};
use tokio::net::TcpStream;

use super::buffers::{self, Buf};
use super::chunked::Chunked;
use super::exchange::connect;
use super::io::{read_now, write_all, IoFail};
use super::response::{self, BodyKind};
use super::write::line;
use crate::proxy::body::BoxError;
use crate::runtime::Cluster;
use crate::upstream::pool::{millis, IdlePool, SendError};
use crate::upstream::EndpointGuard;

/// Sends the request (its head already rewritten for the upstream, `forward_request`) and
/// waits for the response head; the caller bounds the wait.
pub(crate) async fn send(
    cluster: &Cluster,
    ep: &EndpointGuard,
    req: &http::request::Parts,
    now_ms: u64,
) -> Result<(http::response::Parts, BareBody), SendError> {
    let mut ub = buffers::take_for_stream();
    request_head(&mut ub.out, req);
    match exchange(cluster, ep, &mut ub, req.method == Method::HEAD, now_ms).await {
        Ok((stream, r)) => match response_parts(&ub, &r) {
            Ok(parts) => {
                ub.consume(r.len);
                Ok((parts, BareBody::new(stream, ub, r.body, r.reusable)))
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

/// Writes `ub.out` and reads the response head into `ub`. A pooled connection found closed
/// before any answer is replaced by a new one once (the request has no body: it can be sent
/// again).
async fn exchange(
    cluster: &Cluster,
    ep: &EndpointGuard,
    ub: &mut Buf,
    is_head: bool,
    now_ms: u64,
) -> Result<(TcpStream, response::Response), SendError> {
    let up = &cluster.config.upstream;
    let pool = &ep.endpoint.pool;
    let mut fresh_only = false;
    loop {
        let pooled = if fresh_only {
            None
        } else {
            pool.take_raw(now_ms, millis(up.pool_idle_timeout))
        };
        let reused = pooled.is_some();
        let stream = match pooled {
            Some(s) => s,
            None => Box::pin(connect(cluster, ep))
                .await
                .map_err(|e| SendError::Connect(Box::new(e)))?,
        };
        if let Err(e) = write_all(&stream, &ub.out, up.response_header_timeout).await {
            if reused {
                fresh_only = true;
                continue;
            }
            return Err(SendError::Other(match e {
                IoFail::Io(e) => Box::new(e),
                IoFail::Timeout => "writing the request timed out".into(),
            }));
        }
        match read_head(&stream, ub, is_head).await {
            Ok(r) => return Ok((stream, r)),
            Err(_) if reused && ub.is_empty() => {
                fresh_only = true;
                ub.consume(usize::MAX);
            }
            Err(e) => return Err(SendError::Other(e)),
        }
    }
}

/// The request head in HTTP/1.1 (origin form). An HTTP/2 request's `cookie` fields are
/// joined into one (RFC 9113 §8.2.3); a method that usually has a body says it is empty.
fn request_head(out: &mut Vec<u8>, req: &http::request::Parts) {
    out.clear();
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &req.headers {
        if name != COOKIE {
            line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    let mut cookies = req.headers.get_all(COOKIE).iter();
    if let Some(first) = cookies.next() {
        out.extend_from_slice(b"cookie: ");
        out.extend_from_slice(first.as_bytes());
        for c in cookies {
            out.extend_from_slice(b"; ");
            out.extend_from_slice(c.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    let usually_has_body = matches!(req.method, Method::POST | Method::PUT | Method::PATCH);
    if usually_has_body && !req.headers.contains_key(CONTENT_LENGTH) {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Reads the response head into `ub` (interim 1xx heads skipped).
async fn read_head(
    s: &TcpStream,
    ub: &mut Buf,
    is_head: bool,
) -> Result<response::Response, BoxError> {
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
        let n = loop {
            match read_now(s, room) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    poll_fn(|cx| s.poll_read_ready(cx)).await?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            return Err("upstream closed before answering".into());
        }
        ub.filled(n);
    }
}

/// The response head as hyper's server takes it: one copy of the head's bytes, each value a
/// slice of it.
fn response_parts(ub: &Buf, r: &response::Response) -> Result<http::response::Parts, BoxError> {
    let head = Bytes::copy_from_slice(&ub.pending()[..r.len]);
    let mut headers = HeaderMap::with_capacity(ub.fields.len());
    for f in &ub.fields {
        let name = HeaderName::from_bytes(f.name.in_buf(&head))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(f.value.in_buf(&head)))?;
        headers.append(name, value);
    }
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = StatusCode::from_u16(r.status)?;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Ok(parts)
}

/// A response body read from a bare upstream connection, its framing taken off.
pub struct BareBody {
    stream: Option<TcpStream>,
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
    fn new(stream: TcpStream, buf: Box<Buf>, kind: BodyKind, reusable: bool) -> Self {
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
        let (Some(stream), Some(ub)) = (self.stream.as_ref(), self.buf.as_mut()) else {
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
        if let (Some(s), true, true) = (stream, self.ended && self.reusable, buf.is_empty()) {
            pool.put_raw(s, now_ms, max_idle);
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

    fn head(p: &http::request::Parts) -> String {
        let mut out = Vec::new();
        request_head(&mut out, p);
        String::from_utf8(out).unwrap()
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
            "GET /a?b=1 HTTP/1.1\r\nhost: up\r\nx-y: z\r\ncookie: a=1; b=2\r\n\r\n"
        );
    }

    #[test]
    fn an_empty_post_says_its_length() {
        let p = parts(Method::POST, "/form", &[("host", "up")]);
        assert_eq!(
            head(&p),
            "POST /form HTTP/1.1\r\nhost: up\r\ncontent-length: 0\r\n\r\n"
        );
        let p = parts(Method::POST, "/form", &[("content-length", "0")]);
        assert_eq!(head(&p), "POST /form HTTP/1.1\r\ncontent-length: 0\r\n\r\n");
    }

    #[test]
    fn response_values_are_slices_of_one_copy() {
        let mut ub = buffers::take_for_stream();
        let raw = b"HTTP/1.1 203 Fine\r\nX-A: 1\r\nx-a: 2\r\nContent-Length: 3\r\n\r\nabc";
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
        let p = response_parts(&ub, &r).unwrap();
        assert_eq!(p.status, StatusCode::NON_AUTHORITATIVE_INFORMATION);
        let all: Vec<_> = p.headers.get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert_eq!(p.headers["content-length"], "3");
        assert_eq!(r.body, BodyKind::Length(3));
    }
}
