//! Heads written out to the other side, straight from the spans of the buffer they were read
//! into: hop-by-hop fields (and any the `Connection` field names) dropped, the forwarding
//! fields set, the framing our own.

use std::cell::RefCell;

use super::head::{Field, Span};
use crate::proxy::headers::ConnHeaders;

/// What a request head going upstream needs besides its own fields.
pub struct Upstream<'a> {
    pub conn: &'a ConnHeaders,
    /// The client's Host (validated).
    pub host: Option<&'a [u8]>,
    pub preserve_host: bool,
    /// The endpoint's authority, the Host otherwise.
    pub endpoint_host: &'a [u8],
    /// Our `Via` entry (`1.1 warmgate`, or `2 warmgate` for an HTTP/2 request).
    pub via: &'a [u8],
}

/// A head's fields as name and value pairs: spans of the buffer the head was read into, or a
/// header map's entries. Walked again for what `Connection` lists and for joined lists.
pub trait Fields<'f>: Copy {
    fn pairs(self) -> impl Iterator<Item = (&'f [u8], &'f [u8])>;

    /// The buffer the fields were read into (empty for a header map): a field line kept as
    /// it came is copied from it ([`Lines`]).
    fn source(self) -> &'f [u8] {
        &[]
    }
}

/// The fields of a head read into a buffer: the buffer, and the spans of the fields in it.
#[derive(Clone, Copy)]
pub struct Spans<'f>(pub &'f [u8], pub &'f [Field]);

impl<'f> Fields<'f> for Spans<'f> {
    fn pairs(self) -> impl Iterator<Item = (&'f [u8], &'f [u8])> {
        let Spans(buf, fields) = self;
        fields
            .iter()
            .map(move |f| (f.name.in_buf(buf), f.value.in_buf(buf)))
    }

    fn source(self) -> &'f [u8] {
        self.0
    }
}

impl<'f> Fields<'f> for &'f http::HeaderMap {
    fn pairs(self) -> impl Iterator<Item = (&'f [u8], &'f [u8])> {
        self.iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
    }
}

/// The framing a head announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Whatever `Content-Length` the message carries is kept (a response without a body: to
    /// a HEAD, or 304).
    Keep,
    Length(u64),
    Chunked,
}

/// What a field is to the proxy, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Plain,
    HopByHop,
    Framing,
    Host,
    ForwardedFor,
    ForwardedProto,
    ForwardedHost,
    Forwarded,
    Via,
}

pub(super) fn kind(name: &[u8]) -> Kind {
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if is(b"te") => Kind::HopByHop,
        3 if is(b"via") => Kind::Via,
        4 if is(b"host") => Kind::Host,
        7 if is(b"trailer") || is(b"upgrade") => Kind::HopByHop,
        9 if is(b"forwarded") => Kind::Forwarded,
        10 if is(b"connection") || is(b"keep-alive") => Kind::HopByHop,
        14 if is(b"content-length") => Kind::Framing,
        15 if is(b"x-forwarded-for") => Kind::ForwardedFor,
        16 if is(b"x-forwarded-host") || is(b"proxy-connection") => {
            if is(b"proxy-connection") {
                Kind::HopByHop
            } else {
                Kind::ForwardedHost
            }
        }
        17 if is(b"x-forwarded-proto") => Kind::ForwardedProto,
        17 if is(b"transfer-encoding") => Kind::Framing,
        18 if is(b"proxy-authenticate") => Kind::HopByHop,
        19 if is(b"proxy-authorization") => Kind::HopByHop,
        _ => Kind::Plain,
    }
}

/// Whether a `Connection` field of `fields` names `name`.
pub(super) fn listed<'f>(fields: impl Fields<'f>, name: &[u8]) -> bool {
    fields.pairs().any(|(n, v)| {
        n.eq_ignore_ascii_case(b"connection")
            && v.split(|b| *b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(name))
    })
}

/// One field line, `name: value`.
pub(super) fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Field lines written in order, those kept as they came copied from the buffer they were
/// read into: a line of it that reads exactly as [`line`] would write it (`name: value` and
/// CRLF) is not written again piece by piece, and such lines next to each other in the buffer
/// go out in one copy (an upstream's response head is mostly one or two runs). The bytes
/// written are the same either way.
pub(super) struct Lines<'b> {
    buf: &'b [u8],
    /// The lines of `buf` kept and not written yet.
    run: std::ops::Range<usize>,
}

impl<'b> Lines<'b> {
    pub(super) fn new(buf: &'b [u8]) -> Self {
        Self { buf, run: 0..0 }
    }

    /// Writes `name: value` after the lines before it; `name` and `value` may be slices of
    /// the buffer or not.
    pub(super) fn keep(&mut self, out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
        match self.as_read(name, value) {
            Some(r) if !self.run.is_empty() && r.start == self.run.end => self.run.end = r.end,
            Some(r) => {
                self.flush(out);
                self.run = r;
            }
            None => {
                self.flush(out);
                line(out, name, value);
            }
        }
    }

    /// Writes the lines held back; call it before writing anything else after them.
    pub(super) fn flush(&mut self, out: &mut Vec<u8>) {
        if !self.run.is_empty() {
            out.extend_from_slice(self.buf.get(self.run.clone()).unwrap_or_default());
            self.run = 0..0;
        }
    }

    /// Where the buffer holds `name: value` and CRLF, `name` and `value` being slices of it.
    fn as_read(&self, name: &[u8], value: &[u8]) -> Option<std::ops::Range<usize>> {
        if self.buf.is_empty() {
            return None;
        }
        let base = self.buf.as_ptr() as usize;
        let at = (name.as_ptr() as usize).checked_sub(base)?;
        let v = at + name.len() + 2;
        let end = v + value.len() + 2;
        let text = self.buf.get(at..end)?;
        let read_so = value.as_ptr() as usize == base + v
            && text.get(name.len()..name.len() + 2) == Some(b": ")
            && text.ends_with(b"\r\n");
        read_so.then_some(at..end)
    }
}

/// Every value of the fields of `kind`, joined as a list, then `last`, as one field line.
fn joined<'f>(out: &mut Vec<u8>, name: &[u8], fields: impl Fields<'f>, k: Kind, last: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    joined_values(out, fields, k, last);
    out.extend_from_slice(b"\r\n");
}

/// Every value of the fields of `kind`, joined as a list, then `last`.
pub(super) fn joined_values<'f>(out: &mut Vec<u8>, fields: impl Fields<'f>, k: Kind, last: &[u8]) {
    for (_, v) in fields.pairs().filter(|(n, _)| kind(n) == k) {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(last);
}

fn framing(out: &mut Vec<u8>, f: Framing) {
    match f {
        Framing::Keep => {}
        Framing::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
}

/// The request head for the upstream (origin form, HTTP/1.1), as `forward_request` makes it
/// on the general path: the request line, then [`request_fields`].
#[allow(clippy::too_many_arguments)]
pub fn request_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    method: &[u8],
    target: Span,
    fields: &[Field],
    conn_names: bool,
    up: &Upstream<'_>,
    body: Framing,
) {
    request_line(out, method, target.in_buf(buf));
    request_fields(out, Spans(buf, fields), conn_names, false, up, body);
}

/// `METHOD target HTTP/1.1`.
pub fn request_line(out: &mut Vec<u8>, method: &[u8], target: &[u8]) {
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// A request's fields for the upstream and the blank line after them: hop-by-hop fields (and
/// those `Connection` lists, when `conn_names`) dropped, the forwarding fields and `Via` set,
/// `Host` chosen, the framing ours. `join_cookies`: the `cookie` fields are sent as one,
/// joined with `; ` (an HTTP/2 request's, RFC 9113 §8.2.3).
pub fn request_fields<'f>(
    out: &mut Vec<u8>,
    fields: impl Fields<'f>,
    conn_names: bool,
    join_cookies: bool,
    up: &Upstream<'_>,
    body: Framing,
) {
    let trusted = up.conn.trusted;
    let (mut xff, mut xfp, mut xfh, mut via, mut cookies) = (false, false, false, false, false);
    let mut lines = Lines::new(fields.source());
    for (name, value) in fields.pairs() {
        let keep = match kind(name) {
            Kind::Plain if join_cookies && name.eq_ignore_ascii_case(b"cookie") => {
                cookies = true;
                false
            }
            Kind::Plain => !conn_names || !listed(fields, name),
            Kind::HopByHop | Kind::Framing | Kind::Host => false,
            Kind::ForwardedFor => {
                xff = true;
                false
            }
            Kind::Via => {
                via = true;
                false
            }
            Kind::ForwardedProto => {
                xfp |= trusted;
                trusted
            }
            Kind::ForwardedHost => {
                xfh |= trusted;
                trusted
            }
            Kind::Forwarded => trusted,
        };
        if keep {
            lines.keep(out, name, value);
        }
    }
    lines.flush(out);
    if cookies {
        out.extend_from_slice(b"cookie: ");
        let mut all = fields
            .pairs()
            .filter(|(n, _)| n.eq_ignore_ascii_case(b"cookie"));
        if let Some((_, first)) = all.next() {
            out.extend_from_slice(first);
        }
        for (_, v) in all {
            out.extend_from_slice(b"; ");
            out.extend_from_slice(v);
        }
        out.extend_from_slice(b"\r\n");
    }
    let ip = up.conn.client_ip.as_bytes();
    if xff && trusted {
        joined(out, b"x-forwarded-for", fields, Kind::ForwardedFor, ip);
    } else {
        line(out, b"x-forwarded-for", ip);
    }
    if !xfp {
        line(out, b"x-forwarded-proto", up.conn.proto.as_bytes());
    }
    if let (false, Some(h)) = (xfh, up.host) {
        line(out, b"x-forwarded-host", h);
    }
    if via {
        joined(out, b"via", fields, Kind::Via, up.via);
    } else {
        line(out, b"via", up.via);
    }
    match up.host {
        Some(h) if up.preserve_host => line(out, b"host", h),
        _ => line(out, b"host", up.endpoint_host),
    }
    framing(out, body);
    out.extend_from_slice(b"\r\n");
}

/// The response head for the client, as `forward_response` makes it on the general path.
#[allow(clippy::too_many_arguments)]
pub fn response_head(
    out: &mut Vec<u8>,
    buf: &[u8],
    status: u16,
    reason: Span,
    fields: &[Field],
    conn_names: bool,
    body: Framing,
    close: bool,
) {
    status_line(out, status, reason.in_buf(buf));
    let mut via = false;
    let mut lines = Lines::new(buf);
    for f in fields {
        let name = f.name.in_buf(buf);
        let keep = match kind(name) {
            Kind::HopByHop => false,
            Kind::Framing => body == Framing::Keep && name.len() == 14,
            Kind::Via => {
                via = true;
                false
            }
            _ => !conn_names || !listed(Spans(buf, fields), name),
        };
        if keep {
            lines.keep(out, name, f.value.in_buf(buf));
        }
    }
    lines.flush(out);
    if via {
        joined(out, b"via", Spans(buf, fields), Kind::Via, b"1.1 warmgate");
    } else {
        out.extend_from_slice(b"via: 1.1 warmgate\r\n");
    }
    framing(out, body);
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn status_line(out: &mut Vec<u8>, status: u16, reason: &[u8]) {
    // The usual lines, whole (their reason is the canonical one, or none was given).
    let whole: &[u8] = match (status, reason) {
        (200, b"OK" | b"") => b"HTTP/1.1 200 OK\r\n",
        (204, b"No Content" | b"") => b"HTTP/1.1 204 No Content\r\n",
        (304, b"Not Modified" | b"") => b"HTTP/1.1 304 Not Modified\r\n",
        (404, b"Not Found" | b"") => b"HTTP/1.1 404 Not Found\r\n",
        (429, b"") => b"HTTP/1.1 429 Too Many Requests\r\n",
        (503, b"") => b"HTTP/1.1 503 Service Unavailable\r\n",
        _ => b"",
    };
    if !whole.is_empty() {
        out.extend_from_slice(whole);
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    let canonical = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason());
    match (reason.is_empty(), canonical) {
        (true, Some(r)) => out.extend_from_slice(r.as_bytes()),
        _ => out.extend_from_slice(reason),
    }
    out.extend_from_slice(b"\r\n");
}

/// A response of our own (an error, a reject): its fields, `Date`, its length, and
/// `Connection: close` when the connection ends after it. `head`: the request was HEAD (no
/// body bytes follow the head).
pub fn local(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    body: &[u8],
    (close, head): (bool, bool),
    now: (crate::clock::Clock, u64),
) {
    status_line(out, parts.status.as_u16(), b"");
    let mut closing = close;
    for (name, value) in &parts.headers {
        if name == http::header::CONNECTION {
            closing = true;
            continue;
        }
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    date(out, now);
    framing(out, Framing::Length(body.len() as u64));
    if closing {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head {
        out.extend_from_slice(body);
    }
}

/// What a reject's answer says besides its body.
pub struct Reject<'a> {
    pub status: u16,
    pub retry_after_s: u32,
    /// The limit, for the `RateLimit` fields (`reject.ratelimit_headers`).
    pub ratelimit: Option<u32>,
    /// The return ticket, and its cookie.
    pub ticket: Option<(&'a str, Option<&'a str>)>,
    /// The body before the `Retry-After` figure (`{..."retry_after_s":`).
    pub body_prefix: &'a [u8],
    /// Now, on the shared clock (read already): the `Date` line is written again only when
    /// its second has passed.
    pub now: (crate::clock::Clock, u64),
}

/// A reject written as `respond::reject` makes it, without building a response first.
pub fn reject(out: &mut Vec<u8>, r: &Reject<'_>, close: bool, head: bool) {
    // The usual statuses' lines up to the `Retry-After` figure, whole.
    macro_rules! fields {
        () => {
            "content-type: application/json\r\ncache-control: no-store\r\nretry-after: "
        };
    }
    let start: &str = match r.status {
        503 => concat!("HTTP/1.1 503 Service Unavailable\r\n", fields!()),
        429 => concat!("HTTP/1.1 429 Too Many Requests\r\n", fields!()),
        status => {
            status_line(out, status, b"");
            fields!()
        }
    };
    out.extend_from_slice(start.as_bytes());
    let mut digits = itoa::Buffer::new();
    let secs = digits.format(r.retry_after_s).as_bytes();
    out.extend_from_slice(secs);
    out.extend_from_slice(b"\r\n");
    if let Some(limit) = r.ratelimit {
        out.extend_from_slice(b"ratelimit-policy: \"warmup\";q=");
        out.extend_from_slice(itoa::Buffer::new().format(limit).as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(b"ratelimit: \"warmup\";r=0;t=");
        out.extend_from_slice(secs);
        out.extend_from_slice(b"\r\n");
    }
    if let Some((text, cookie)) = r.ticket {
        if let Some(c) = cookie {
            line(out, b"set-cookie", c.as_bytes());
        }
        line(out, crate::ticket::HEADER.as_bytes(), text.as_bytes());
    }
    date(out, r.now);
    let len = r.body_prefix.len() + secs.len() + 2;
    framing(out, Framing::Length(len as u64));
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head {
        out.extend_from_slice(r.body_prefix);
        out.extend_from_slice(secs);
        out.extend_from_slice(b"}\n");
    }
}

/// `date: <now>\r\n`, with now read already on a monotonic millisecond clock: the wall clock
/// is read only when the line's second has passed (per thread, and per clock: tests run
/// several proxies in one process).
fn date(out: &mut Vec<u8>, (clock, now_ms): (crate::clock::Clock, u64)) {
    thread_local! {
        /// The clock, until when on it the line holds, and the line.
        static LINE: RefCell<Option<(crate::clock::Clock, u64, Vec<u8>)>> = const { RefCell::new(None) };
    }
    LINE.with(|c| {
        let mut c = c.borrow_mut();
        match &*c {
            Some((on, until, line)) if *on == clock && now_ms < *until => {
                out.extend_from_slice(line);
            }
            _ => {
                let wall = std::time::SystemTime::now();
                let into_second = wall
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::from(d.subsec_millis()));
                let line = format!("date: {}\r\n", httpdate::fmt_http_date(wall));
                out.extend_from_slice(line.as_bytes());
                *c = Some((clock, now_ms + (1000 - into_second), line.into_bytes()));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::h1::head;
    use http::HeaderValue;

    fn conn(trusted: bool) -> ConnHeaders {
        ConnHeaders {
            client_ip: HeaderValue::from_static("10.1.2.3"),
            proto: HeaderValue::from_static("http"),
            trusted,
        }
    }

    fn forwarded(text: &[u8], trusted: bool, preserve_host: bool) -> String {
        let mut fields = Vec::new();
        let h = head::parse(text, 100, &mut fields).unwrap().unwrap();
        let c = conn(trusted);
        let up = Upstream {
            conn: &c,
            host: h.host.map(|s| s.in_buf(text)),
            preserve_host,
            endpoint_host: b"10.0.0.9:8080",
            via: b"1.1 warmgate",
        };
        let mut out = Vec::new();
        let framing = match h.framing {
            head::Framing::None => Framing::Keep,
            head::Framing::Length(n) => Framing::Length(n),
            head::Framing::Chunked => Framing::Chunked,
        };
        request_head(
            &mut out,
            text,
            h.method.as_str().as_bytes(),
            h.target,
            &fields,
            h.conn_names,
            &up,
            framing,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_request_goes_up_with_hygiene_and_forwarding_fields() {
        let text = b"POST /x?y HTTP/1.1\r\nHost: app.example\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\nProxy-Authorization: x\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-For: 2.2.2.2\r\nX-Forwarded-Proto: https\r\nForwarded: for=x\r\nVia: 1.0 a\r\nContent-Length: 3\r\nX-Keep: yes\r\n\r\n";
        let got = forwarded(text, true, false);
        assert_eq!(
            got,
            "POST /x?y HTTP/1.1\r\nX-Forwarded-Proto: https\r\nForwarded: for=x\r\nX-Keep: yes\r\nx-forwarded-for: 1.1.1.1, 2.2.2.2, 10.1.2.3\r\nx-forwarded-host: app.example\r\nvia: 1.0 a, 1.1 warmgate\r\nhost: 10.0.0.9:8080\r\ncontent-length: 3\r\n\r\n"
        );
        let got = forwarded(text, false, true);
        assert_eq!(
            got,
            "POST /x?y HTTP/1.1\r\nX-Keep: yes\r\nx-forwarded-for: 10.1.2.3\r\nx-forwarded-proto: http\r\nx-forwarded-host: app.example\r\nvia: 1.0 a, 1.1 warmgate\r\nhost: app.example\r\ncontent-length: 3\r\n\r\n"
        );
        let got = forwarded(
            b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
            true,
        );
        assert!(
            got.ends_with("host: a\r\ntransfer-encoding: chunked\r\n\r\n"),
            "{got}"
        );
    }

    /// Lines copied from the buffer read the same as lines written piece by piece, whatever
    /// the spacing, the line ends and the order of the fields kept.
    #[test]
    fn lines_copied_as_they_came_read_as_lines_written() {
        let text = b"HTTP/1.1 200 OK\r\nA: 1\r\nB: two\r\nC:3\r\nD:  4  \r\nE: 5\nF: \r\nG: 7\r\nH: 8\r\n\r\n";
        let mut fields = Vec::new();
        crate::h1::response::parse(text, &mut fields, false)
            .unwrap()
            .unwrap();
        let pairs: Vec<(&[u8], &[u8])> = Spans(text, &fields).pairs().collect();
        assert_eq!(pairs.len(), 8);
        let other: &[(&[u8], &[u8])] = &[(b"x-other", b"not from the buffer")];
        // Every subset of the fields (in order), with a line from elsewhere in the middle.
        for mask in 0u32..(1 << pairs.len()) {
            let kept: Vec<_> = pairs
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, p)| *p)
                .collect();
            let (head, tail) = kept.split_at(kept.len() / 2);
            let all: Vec<_> = head.iter().chain(other).chain(tail).copied().collect();
            let (mut copied, mut written) = (Vec::new(), Vec::new());
            let mut lines = Lines::new(text);
            for (n, v) in &all {
                lines.keep(&mut copied, n, v);
                line(&mut written, n, v);
            }
            lines.flush(&mut copied);
            assert_eq!(
                String::from_utf8_lossy(&copied),
                String::from_utf8_lossy(&written),
                "mask {mask:#b}"
            );
        }
        // Without a buffer (a header map's fields) every line is written.
        let mut out = Vec::new();
        let mut lines = Lines::new(&[]);
        lines.keep(&mut out, b"a", b"1");
        lines.flush(&mut out);
        assert_eq!(out, b"a: 1\r\n");
    }

    #[test]
    fn a_response_goes_down_with_its_framing_ours() {
        let text = b"HTTP/1.1 200 Fine\r\nConnection: X-Internal\r\nX-Internal: 1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\nServer: up\r\n\r\n";
        let mut fields = Vec::new();
        let r = crate::h1::response::parse(text, &mut fields, false)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        response_head(
            &mut out,
            text,
            r.status,
            r.reason,
            &fields,
            r.conn_names,
            Framing::Chunked,
            true,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 Fine\r\nServer: up\r\nvia: 1.1 warmgate\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let text = b"HTTP/1.1 304 \r\nContent-Length: 10\r\n\r\n";
        let r = crate::h1::response::parse(text, &mut fields, false)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        response_head(
            &mut out,
            text,
            r.status,
            r.reason,
            &fields,
            false,
            Framing::Keep,
            false,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\nvia: 1.1 warmgate\r\n\r\n"
        );
    }

    #[test]
    fn a_local_answer_has_a_date_and_its_length() {
        let r = crate::proxy::respond::error(crate::proxy::respond::ProxyError::NoEndpoint);
        let (parts, _) = r.into_parts();
        let mut out = Vec::new();
        local(
            &mut out,
            &parts,
            b"{}",
            (false, false),
            (crate::clock::Clock::new(), 0),
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{text}");
        assert!(
            text.contains("\r\ndate: ") && text.contains("content-length: 2\r\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\r\n\r\n{}") && !text.contains("connection"),
            "{text}"
        );
    }
}
