//! A request head parsed with `httparse` straight from the connection's read buffer: the
//! fields stay where they are (as spans of that buffer) until they are written out to the
//! upstream. The framing is decided here, strictly (RFC 9112 §6): a request whose length two
//! parties could read differently is refused before anything of it is forwarded.

use http::Method;

use crate::fields::Fields;
use crate::proxy::edge::{valid_authority, Refusal};

/// A range of the read buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub at: u32,
    pub len: u32,
}

impl Span {
    pub(crate) fn of(buf: &[u8], part: &[u8]) -> Self {
        Self {
            at: (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize) as u32,
            len: part.len() as u32,
        }
    }

    /// The bytes of `buf` it covers (empty if it does not fit, which cannot happen for a span
    /// made from the same buffer).
    pub fn in_buf(self, buf: &[u8]) -> &[u8] {
        let (at, len) = (self.at as usize, self.len as usize);
        buf.get(at..at + len).unwrap_or_default()
    }
}

/// One header field, as spans of the buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Field {
    pub name: Span,
    pub value: Span,
}

/// How the request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// What the head says, beyond its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head, its empty line included.
    pub len: usize,
    pub method: Method,
    pub target: Span,
    pub host: Option<Span>,
    pub framing: Framing,
    /// `Connection: close`.
    pub close: bool,
    /// `Connection` lists names other than `close` and `keep-alive` (removed with it).
    pub conn_names: bool,
    /// The request needs what only the general HTTP/1 server does (HTTP/1.0, an absolute or
    /// `*` target, `Expect`, an upgrade): the connection is handed to it.
    pub general: bool,
    /// Refused at the edge (Host or method): answered here (400 or 405), and logged.
    pub refused: Option<Refusal>,
}

/// Why a head is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// More fields than `server.max_headers` (431).
    TooManyFields,
    /// Malformed (400).
    Malformed(&'static str),
}

/// The most fields parsed at once (a bigger `server.max_headers` is held to this).
pub const MAX_FIELDS: usize = 256;

/// The last Host a connection sent that was found valid: the next request's, when it is the
/// same, is not checked again (a keep-alive client sends the same Host every time).
#[derive(Debug)]
pub struct KnownHost {
    len: usize,
    bytes: [u8; 64],
}

impl Default for KnownHost {
    fn default() -> Self {
        Self {
            len: 0,
            bytes: [0; 64],
        }
    }
}

impl KnownHost {
    fn is(&self, host: &[u8]) -> bool {
        self.len > 0 && self.bytes.get(..self.len) == Some(host)
    }

    fn keep(&mut self, host: &[u8]) {
        if let Some(to) = self.bytes.get_mut(..host.len()) {
            to.copy_from_slice(host);
            self.len = host.len();
        }
    }
}

/// Parses the head at the start of `buf` into `fields` (cleared first). `Ok(None)`: not
/// complete yet.
pub fn parse(
    buf: &[u8],
    max_fields: usize,
    fields: &mut Vec<Field>,
) -> Result<Option<Head>, HeadError> {
    parse_known(buf, max_fields, fields, &mut KnownHost::default())
}

/// [`parse`], a Host the connection sent before (and found valid) not checked again.
pub fn parse_known(
    buf: &[u8],
    max_fields: usize,
    fields: &mut Vec<Field>,
    known: &mut KnownHost,
) -> Result<Option<Head>, HeadError> {
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let n = max_fields.clamp(1, MAX_FIELDS);
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut raw[..n]) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyFields),
        Err(_) => return Err(HeadError::Malformed("malformed request head")),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Malformed("malformed request line"));
    };
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let mut head = Head {
        len,
        method,
        target: Span::of(buf, target.as_bytes()),
        host: None,
        framing: Framing::None,
        close: false,
        conn_names: false,
        general: version != 1 || !target.starts_with('/'),
        refused: None,
    };
    fields.clear();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut hosts = 0;
    for h in req.headers.iter() {
        let (name, value) = (h.name.as_bytes(), h.value);
        fields.push(Field {
            name: Span::of(buf, name),
            value: Span::of(buf, value),
        });
        match name.len() {
            4 if name.eq_ignore_ascii_case(b"host") => {
                hosts += 1;
                head.host = Some(Span::of(buf, value));
            }
            6 if name.eq_ignore_ascii_case(b"expect") => head.general = true,
            7 if name.eq_ignore_ascii_case(b"upgrade") => head.general = true,
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for t in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if t.eq_ignore_ascii_case(b"close") {
                        head.close = true;
                    } else if t.eq_ignore_ascii_case(b"upgrade") {
                        head.general = true;
                    } else if !t.is_empty() && !t.eq_ignore_ascii_case(b"keep-alive") {
                        head.conn_names = true;
                    }
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let n =
                    content_length(value).ok_or(HeadError::Malformed("invalid Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(HeadError::Malformed("conflicting Content-Length"));
                }
                length = Some(n);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                // Only `chunked`, once: any other coding, or a list, is refused (a proxy and
                // its upstream could disagree on where such a body ends).
                if chunked || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(HeadError::Malformed("unsupported Transfer-Encoding"));
                }
                chunked = true;
            }
            _ => {}
        }
    }
    head.framing = match (chunked, length) {
        (true, Some(_)) => {
            return Err(HeadError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ))
        }
        (true, None) => Framing::Chunked,
        (false, Some(0) | None) => Framing::None,
        (false, Some(n)) => Framing::Length(n),
    };
    if head.method == Method::CONNECT || head.method == Method::TRACE {
        head.refused = Some(Refusal::MethodNotAllowed);
        return Ok(Some(head));
    }
    if head.general {
        // The general server decides the rest (HTTP/1.0 may leave Host out, an absolute
        // target wins over Host).
        return Ok(Some(head));
    }
    head.refused = match (hosts, head.host) {
        (0, _) | (_, None) => Some(Refusal::MissingHost),
        (1, Some(h)) if known.is(h.in_buf(buf)) => None,
        (1, Some(h)) if valid_authority(h.in_buf(buf)) => {
            known.keep(h.in_buf(buf));
            None
        }
        (1, _) => Some(Refusal::BadHost),
        _ => Some(Refusal::DuplicateHost),
    };
    Ok(Some(head))
}

/// A `Content-Length` value: digits only (no sign, no list), at most 18 of them.
pub(crate) fn content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A head's fields read through [`Fields`] (for classifying and client keys).
pub struct View<'a> {
    pub buf: &'a [u8],
    pub fields: &'a [Field],
}

impl Fields for View<'_> {
    fn first(&self, name: &str) -> Option<&[u8]> {
        self.find_map(name, Some)
    }

    fn find_map<'a, T>(
        &'a self,
        name: &str,
        mut f: impl FnMut(&'a [u8]) -> Option<T>,
    ) -> Option<T> {
        let name = name.as_bytes();
        self.fields.iter().find_map(|fl| {
            if fl.name.len as usize != name.len()
                || !fl.name.in_buf(self.buf).eq_ignore_ascii_case(name)
            {
                return None;
            }
            f(fl.value.in_buf(self.buf))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, HeadError> {
        parse(text.as_bytes(), 100, &mut Vec::new())
    }

    /// A connection's valid Host is kept; another Host is checked afresh, and a bad one is
    /// refused whatever came before it.
    #[test]
    fn a_known_host_is_kept_and_only_the_same_one_passes_unchecked() {
        let mut known = KnownHost::default();
        let mut fields = Vec::new();
        let mut refused = |text: &str, known: &mut KnownHost| {
            parse_known(text.as_bytes(), 100, &mut fields, known)
                .unwrap()
                .unwrap()
                .refused
        };
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a.example:80\r\n\r\n", &mut known),
            None
        );
        assert!(known.is(b"a.example:80"));
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a.example:80\r\n\r\n", &mut known),
            None
        );
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a.example:80x\r\n\r\n", &mut known),
            Some(Refusal::BadHost)
        );
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a.example/\r\n\r\n", &mut known),
            Some(Refusal::BadHost)
        );
        assert!(known.is(b"a.example:80"));
        let long = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", "h".repeat(100));
        assert_eq!(refused(&long, &mut known), None);
        assert!(
            known.is(b"a.example:80"),
            "a host longer than the room is not kept"
        );
    }

    #[test]
    fn a_plain_request_keeps_its_fields_in_the_buffer() {
        let text = b"GET /a?b=1 HTTP/1.1\r\nHost: x.example:8080\r\nCookie: s=1\r\nCookie: t=2\r\n\r\nNEXT";
        let mut fields = Vec::new();
        let h = parse(text, 100, &mut fields).unwrap().unwrap();
        assert_eq!(h.len, text.len() - 4);
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.target.in_buf(text), b"/a?b=1");
        assert_eq!(h.host.unwrap().in_buf(text), b"x.example:8080");
        assert_eq!(h.framing, Framing::None);
        assert!(!h.close && !h.general);
        let v = View {
            buf: text,
            fields: &fields,
        };
        assert_eq!(v.first("cookie"), Some(&b"s=1"[..]));
        assert_eq!(
            v.find_map("COOKIE", |c| (c == b"t=2").then_some(2)),
            Some(2)
        );
        assert!(v.first("x-none").is_none());
        assert_eq!(head("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
    }

    #[test]
    fn framing_is_strict() {
        let ok = |t: &str| head(t).unwrap().unwrap().framing;
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n"),
            Framing::Length(12)
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Framing::Length(5)
        );
        assert_eq!(
            ok("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Framing::Chunked
        );
        for bad in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 40\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +4\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 4\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
        ] {
            assert!(matches!(head(bad), Err(HeadError::Malformed(_))), "{bad:?}: {:?}", head(bad));
        }
    }

    #[test]
    fn hosts_and_methods_are_checked_and_the_rare_cases_go_to_the_general_server() {
        let refused = |t: &str| match head(t) {
            Ok(Some(Head {
                refused: Some(r), ..
            })) => r,
            other => panic!("{t:?}: {other:?}"),
        };
        assert_eq!(refused("GET / HTTP/1.1\r\n\r\n"), Refusal::MissingHost);
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Refusal::DuplicateHost
        );
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: user@evil\r\n\r\n"),
            Refusal::BadHost
        );
        assert_eq!(
            refused("TRACE / HTTP/1.1\r\nHost: a\r\n\r\n"),
            Refusal::MethodNotAllowed
        );
        for general in [
            "GET / HTTP/1.0\r\n\r\n",
            "GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\nHost: b\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: b\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            "GET /ws HTTP/1.1\r\nHost: b\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        ] {
            assert!(head(general).unwrap().unwrap().general, "{general:?}");
        }
        let h =
            head("GET / HTTP/1.1\r\nHost: b\r\nConnection: keep-alive, close, X-Secret\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(h.close && h.conn_names && !h.general);
    }

    #[test]
    fn too_many_fields_is_its_own_error() {
        let mut t = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
        for i in 0..10 {
            t.push_str(&format!("x-{i}: 1\r\n"));
        }
        t.push_str("\r\n");
        assert_eq!(
            parse(t.as_bytes(), 5, &mut Vec::new()),
            Err(HeadError::TooManyFields)
        );
        assert!(parse(t.as_bytes(), 11, &mut Vec::new()).unwrap().is_some());
    }
}
