//! Strict HTTP at the edge, decided before anything else: which authority a request is for
//! (RFC 9112 §3.2: an absolute-form target wins over Host; HTTP/1.1 needs exactly one valid
//! Host), which methods warmgate answers itself, and whether it asks for a protocol upgrade.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Uri, Version};

/// Why a request is answered by warmgate instead of being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// HTTP/1.1 without a Host header (400).
    MissingHost,
    /// More than one Host header (400).
    DuplicateHost,
    /// A Host or target authority that is not `host[:port]` (400).
    BadHost,
    /// CONNECT or TRACE (405): a reverse proxy tunnels nowhere and echoes nothing.
    MethodNotAllowed,
}

impl Refusal {
    /// The message in the error body.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MissingHost => "missing Host header",
            Refusal::DuplicateHost => "more than one Host header",
            Refusal::BadHost => "invalid Host (expected host[:port])",
            Refusal::MethodNotAllowed => "method not allowed",
        }
    }
}

/// Whether `v` is a plain `host[:port]` authority: no user info, no spaces, a numeric port.
/// The host is a name of URI characters, or an IP literal in brackets (the only place
/// brackets and a zone's `%` may appear). One pass over a table, per request.
pub fn valid_authority(v: &[u8]) -> bool {
    if v.is_empty() || v.len() > 255 {
        return false;
    }
    let host_end = if v[0] == b'[' {
        let Some(close) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = &v[1..close];
        if !literal.iter().all(|&b| IN_BRACKETS[b as usize]) {
            return false;
        }
        if literal.iter().filter(|&&b| b == b':').count() > 8 {
            return false;
        }
        close + 1
    } else {
        // One pass: the name's bytes up to the port's colon.
        let mut end = v.len();
        for (i, &b) in v.iter().enumerate() {
            if b == b':' {
                end = i;
                break;
            }
            if !IN_NAME[b as usize] {
                return false;
            }
        }
        if end == 0 {
            return false;
        }
        end
    };
    match &v[host_end..] {
        [] => true,
        [b':', port @ ..] => {
            !port.is_empty() && port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

/// Bytes of a host name: RFC 3986's unreserved and sub-delims (what `http::uri::Authority`
/// accepts in a host, less the delimiters of user info, IP literals and a path).
const IN_NAME: [bool; 256] = byte_set(b"!$&'()*+,-.;=_~");
/// Bytes inside an IP literal's brackets: a name's, the colons, and `%` (a zone).
const IN_BRACKETS: [bool; 256] = byte_set(b"!$&'()*+,-.;=_~:%");

/// Letters, digits, and `extra`.
const fn byte_set(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// The authority the request is for (to classify and, with `preserve_host`, to forward as
/// Host), or why it is refused. Borrowed from the request: [`host_of`] reads it again where the
/// request is forwarded.
pub fn authority<'a>(
    method: &Method,
    version: Version,
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> Result<Option<&'a [u8]>, Refusal> {
    if method == Method::CONNECT || method == Method::TRACE {
        return Err(Refusal::MethodNotAllowed);
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::DuplicateHost);
    }
    match target_or(uri, || host) {
        Some(h) if valid_authority(h) => Ok(Some(h)),
        Some(_) => Err(Refusal::BadHost),
        None if version == Version::HTTP_11 => Err(Refusal::MissingHost),
        None => Ok(None),
    }
}

/// The authority [`authority`] found (and validated) in this request's target and fields.
pub fn host_of<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a [u8]> {
    target_or(uri, || headers.get(header::HOST))
}

/// The target's authority (absolute form in HTTP/1, `:authority` in HTTP/2), which wins over
/// any Host field, or else the Host field.
fn target_or<'a>(uri: &'a Uri, host: impl FnOnce() -> Option<&'a HeaderValue>) -> Option<&'a [u8]> {
    match uri.authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => host().map(HeaderValue::as_bytes),
    }
}

/// The client behind trusted proxies: the rightmost `X-Forwarded-For` address that is not one
/// of them (entries to its left could have been written by anyone), or the leftmost when every
/// hop is trusted. `None` when the header is missing or malformed.
pub fn forwarded_client<H: crate::fields::Fields + ?Sized>(
    headers: &H,
    trusted: &[ipnet::IpNet],
) -> Option<std::net::IpAddr> {
    let mut leftmost = None;
    let mut rightmost_untrusted = None;
    // `Some(())` stops at a malformed entry (the whole header is then ignored).
    let malformed = headers.find_map("x-forwarded-for", |v| {
        let Ok(v) = std::str::from_utf8(v) else {
            return Some(());
        };
        for entry in v.split(',') {
            let Ok(ip) = entry.trim().parse::<std::net::IpAddr>() else {
                return Some(());
            };
            let ip = ip.to_canonical();
            leftmost.get_or_insert(ip);
            if !trusted.iter().any(|n| n.contains(&ip)) {
                rightmost_untrusted = Some(ip);
            }
        }
        None
    });
    if malformed.is_some() {
        return None;
    }
    rightmost_untrusted.or(leftmost)
}

/// Whether an HTTP/1.1 request asks to switch to WebSocket (`Connection: upgrade` and
/// `Upgrade: websocket`).
pub fn wants_websocket(version: Version, headers: &HeaderMap) -> bool {
    if version != Version::HTTP_11 {
        return false;
    }
    let lists = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    lists(header::CONNECTION, "upgrade") && lists(header::UPGRADE, "websocket")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `http::uri::Authority`'s reading of a `host[:port]`, which `valid_authority` matches
    /// without building one.
    fn by_http(v: &[u8]) -> bool {
        if v.is_empty() || v.len() > 255 || v.contains(&b'@') {
            return false;
        }
        let Ok(a) = http::uri::Authority::try_from(v) else {
            return false;
        };
        let host = a.host();
        match a.as_str().strip_prefix(host).map(|r| r.strip_prefix(':')) {
            _ if host.is_empty() => false,
            Some(Some(port)) => {
                !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
            }
            Some(None) => a.as_str().len() == host.len(),
            None => false,
        }
    }

    #[test]
    fn valid_authority_agrees_with_http_except_for_brackets_inside_a_name() {
        // Every string of up to 3 bytes from an alphabet of the interesting ones, then longer
        // ones drawn at random.
        let alphabet = b"a1.-:[]%@/?# \x7f\xff!~_";
        let mut cases: Vec<Vec<u8>> = vec![Vec::new()];
        for len in 1..=3 {
            let mut next = Vec::new();
            for c in cases.iter().filter(|c| c.len() == len - 1) {
                for &b in alphabet {
                    let mut c = c.clone();
                    c.push(b);
                    next.push(c);
                }
            }
            cases.extend(next);
        }
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..200_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let c = (0..len)
                .map(|i| alphabet[((seed >> (i * 2 % 60)) as usize + i) % alphabet.len()])
                .collect();
            cases.push(c);
        }
        cases.push(b"[fe80::1%25eth0]:8080".to_vec());
        cases.push(b"[1:2:3:4:5:6:7:8:9]".to_vec());
        cases.push(vec![b'a'; 256]);
        for c in &cases {
            let (ours, theirs) = (valid_authority(c), by_http(c));
            // http accepts brackets inside a name ("a[b]"); an IP literal is the whole host.
            let inside_name = c.first() != Some(&b'[') && c.iter().any(|b| b"[]".contains(b));
            if inside_name {
                assert!(!ours, "{:?}", String::from_utf8_lossy(c));
            } else {
                assert_eq!(ours, theirs, "{:?}", String::from_utf8_lossy(c));
            }
        }
    }

    fn req(
        method: &str,
        version: Version,
        uri: &str,
        hosts: &[&str],
    ) -> Result<Option<String>, Refusal> {
        let mut h = HeaderMap::new();
        for v in hosts {
            if let Ok(v) = HeaderValue::from_str(v) {
                h.append(header::HOST, v);
            }
        }
        let m = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
        let uri: Uri = uri.parse().unwrap_or_default();
        authority(&m, version, &uri, &h).map(|o| o.map(|v| String::from_utf8_lossy(v).into_owned()))
    }

    #[test]
    fn http11_needs_exactly_one_valid_host() {
        let v = Version::HTTP_11;
        assert_eq!(
            req("GET", v, "/", &["app.example"]),
            Ok(Some("app.example".into()))
        );
        assert_eq!(
            req("GET", v, "/", &["app.example:8443"]),
            Ok(Some("app.example:8443".into()))
        );
        assert_eq!(
            req("GET", v, "/", &["[::1]:80"]),
            Ok(Some("[::1]:80".into()))
        );
        assert_eq!(req("GET", v, "/", &[]), Err(Refusal::MissingHost));
        assert_eq!(req("GET", v, "/", &["a", "b"]), Err(Refusal::DuplicateHost));
        for bad in [
            "a b",
            "user@evil",
            "",
            "a:",
            "a:b",
            "a:123456",
            "a/b",
            ":80",
        ] {
            assert_eq!(req("GET", v, "/", &[bad]), Err(Refusal::BadHost), "{bad:?}");
        }
        // HTTP/1.0 may leave Host out.
        assert_eq!(req("GET", Version::HTTP_10, "/", &[]), Ok(None));
    }

    #[test]
    fn an_absolute_target_wins_over_host() {
        let v = Version::HTTP_11;
        assert_eq!(
            req("GET", v, "http://real.example/x", &["other.example"]),
            Ok(Some("real.example".into()))
        );
        assert_eq!(
            req("GET", v, "http://real.example/x", &[]),
            Ok(Some("real.example".into()))
        );
        assert_eq!(
            req("GET", v, "http://u@real.example/x", &[]),
            Err(Refusal::BadHost)
        );
    }

    #[test]
    fn connect_and_trace_are_answered_here() {
        let v = Version::HTTP_11;
        assert_eq!(
            req("CONNECT", v, "a.example:443", &["a.example:443"]),
            Err(Refusal::MethodNotAllowed)
        );
        assert_eq!(req("TRACE", v, "/", &["a"]), Err(Refusal::MethodNotAllowed));
    }

    #[test]
    fn the_client_behind_trusted_proxies_is_the_rightmost_untrusted_hop() {
        let trusted: Vec<ipnet::IpNet> =
            vec!["10.0.0.0/8".parse().unwrap_or_else(|_| unreachable!())];
        let xff = |v: &str| {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(v) {
                h.insert("x-forwarded-for", v);
            }
            forwarded_client(&h, &trusted).map(|ip| ip.to_string())
        };
        assert_eq!(xff("203.0.113.9"), Some("203.0.113.9".into()));
        assert_eq!(
            xff("1.2.3.4, 203.0.113.9, 10.0.0.2"),
            Some("203.0.113.9".into()),
            "a spoofed left entry is ignored"
        );
        assert_eq!(xff("10.0.0.3, 10.0.0.2"), Some("10.0.0.3".into()));
        assert_eq!(xff("not an ip"), None);
        assert_eq!(xff(""), None);
    }

    #[test]
    fn recognises_a_websocket_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(wants_websocket(Version::HTTP_11, &h));
        assert!(!wants_websocket(Version::HTTP_10, &h));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!wants_websocket(Version::HTTP_11, &h));
    }
}
