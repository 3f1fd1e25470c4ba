//! An upstream's response head, parsed with `httparse` from the upstream connection's buffer,
//! and how its body is framed (RFC 9112 §6.3). Anything malformed is the upstream's fault: a
//! 502 to the client and a failure for the endpoint.

use super::head::{Field, Span};

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No body (a HEAD request, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Until the upstream closes.
    Close,
}

/// A response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Bytes of the head.
    pub len: usize,
    pub status: u16,
    pub reason: Span,
    pub body: BodyKind,
    /// The connection can carry another request once the body has been read.
    pub reusable: bool,
    /// `Connection` lists names other than `close` and `keep-alive`.
    pub conn_names: bool,
}

/// The most fields in a response head.
pub const MAX_FIELDS: usize = 100;

/// Parses the head at the start of `buf` into `fields`. `Ok(None)`: not complete yet.
/// `head_request`: the request was HEAD (no body, whatever the fields say).
pub fn parse(
    buf: &[u8],
    fields: &mut Vec<Field>,
    head_request: bool,
) -> Result<Option<Response>, &'static str> {
    let mut raw = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let config = httparse::ParserConfig::default();
    let len = match config.parse_response_with_uninit_headers(&mut resp, buf, &mut raw) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err("too many response header fields"),
        Err(_) => return Err("malformed response head"),
    };
    let (Some(status), Some(version)) = (resp.code, resp.version) else {
        return Err("malformed status line");
    };
    let reason = Span::of(buf, resp.reason.unwrap_or_default().as_bytes());
    fields.clear();
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut coded = false;
    let mut close = version == 0;
    let mut conn_names = false;
    for h in resp.headers.iter() {
        let (name, value) = (h.name.as_bytes(), h.value);
        fields.push(Field {
            name: Span::of(buf, name),
            value: Span::of(buf, value),
        });
        match name.len() {
            10 if name.eq_ignore_ascii_case(b"connection") => {
                for t in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if t.eq_ignore_ascii_case(b"keep-alive") {
                        close &= version != 0;
                    } else if !t.is_empty() {
                        conn_names = true;
                    }
                }
            }
            14 if name.eq_ignore_ascii_case(b"content-length") => {
                let n = super::head::content_length(value)
                    .ok_or("invalid Content-Length in the response")?;
                if length.is_some_and(|l| l != n) {
                    return Err("conflicting Content-Length in the response");
                }
                length = Some(n);
            }
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => {
                if chunked || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    coded = true;
                }
                chunked = true;
            }
            _ => {}
        }
    }
    if coded {
        // Another transfer coding, or a list: not forwarded as it is.
        return Err("unsupported Transfer-Encoding in the response");
    }
    let body = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        BodyKind::None
    } else if chunked {
        // Transfer-Encoding wins over Content-Length; the connection is not trusted after.
        close |= length.is_some();
        BodyKind::Chunked
    } else if let Some(n) = length {
        BodyKind::Length(n)
    } else {
        close = true;
        BodyKind::Close
    };
    Ok(Some(Response {
        len,
        status,
        reason,
        body,
        reusable: !close,
        conn_names,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parsed(t: &str, head: bool) -> Result<Option<Response>, &'static str> {
        parse(t.as_bytes(), &mut Vec::new(), head)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let body = |t: &str, head: bool| {
            let r = parsed(t, head).unwrap().unwrap();
            (r.body, r.reusable)
        };
        assert_eq!(
            body("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false),
            (BodyKind::Length(5), true)
        );
        assert_eq!(
            body("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            (BodyKind::None, true)
        );
        assert_eq!(
            body("HTTP/1.1 204 No Content\r\n\r\n", false),
            (BodyKind::None, true)
        );
        assert_eq!(
            body(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            (BodyKind::None, true)
        );
        assert_eq!(
            body(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            (BodyKind::Chunked, true)
        );
        assert_eq!(
            body(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                false
            ),
            (BodyKind::Chunked, false)
        );
        assert_eq!(
            body("HTTP/1.1 200 OK\r\n\r\n", false),
            (BodyKind::Close, false)
        );
        assert_eq!(
            body(
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            (BodyKind::Length(1), false)
        );
        assert_eq!(
            body("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            (BodyKind::Length(1), false)
        );
        assert_eq!(
            body(
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            (BodyKind::Length(1), true)
        );
        assert_eq!(
            parsed("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n", false),
            Ok(None)
        );
    }

    #[test]
    fn a_malformed_response_is_an_error() {
        for bad in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTX/1.1 200 OK\r\n\r\n",
        ] {
            assert!(parsed(bad, false).is_err(), "{bad:?}");
        }
    }
}
