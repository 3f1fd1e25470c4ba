//! Header hygiene (RFC 9110 §7.6.1): hop-by-hop headers are dropped in both directions;
//! `X-Forwarded-*` and `Via` are set on the way up.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Removes hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names a message has, noting which hop-by-hop names are there:
    // only those are removed (a removal hashes and probes, present or not).
    let mut present = 0u16;
    for k in headers.keys() {
        let name = k.as_str();
        // Most names are ruled out by their length alone.
        if name.len() >= 32 || HOP_BY_HOP_LENGTHS & (1 << name.len()) == 0 {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
            present |= 1 << i;
        }
    }
    if present == 0 {
        return;
    }
    // Most `Connection` values are a bare `keep-alive` or `close`: nothing more to remove, and
    // no need to copy the values out of the map to remove what they name.
    if present & 1 != 0
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(names_other_headers)
    {
        // Rarely more than one Connection line; four covers real clients without allocating.
        let mut listed: [Option<HeaderValue>; 4] = Default::default();
        for (slot, v) in listed.iter_mut().zip(headers.get_all(header::CONNECTION)) {
            *slot = Some(v.clone());
        }
        let extra: Vec<HeaderValue> = headers
            .get_all(header::CONNECTION)
            .iter()
            .skip(4)
            .cloned()
            .collect();
        for v in listed.iter().flatten().chain(extra.iter()) {
            if let Ok(s) = v.to_str() {
                for token in s.split(',').map(str::trim).filter(|t| names_a_header(t)) {
                    headers.remove(token);
                }
            }
        }
    }
    for (i, h) in HOP_BY_HOP_NAMES.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(h);
        }
    }
}

/// Whether a `Connection` value lists a header to remove with it.
pub(crate) fn names_other_headers(v: &HeaderValue) -> bool {
    v.to_str()
        .is_ok_and(|s| s.split(',').map(str::trim).any(names_a_header))
}

/// A `Connection` token that names a header: `keep-alive` is on the list below anyway, and
/// `close` names none.
fn names_a_header(token: &str) -> bool {
    !token.is_empty()
        && !token.eq_ignore_ascii_case("keep-alive")
        && !token.eq_ignore_ascii_case("close")
}

/// Every hop-by-hop name, `Connection` first.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
    "keep-alive",
    "proxy-connection",
];

/// The same, parsed once (a removal by text would parse the name each time).
static HOP_BY_HOP_NAMES: [HeaderName; 9] = [
    HeaderName::from_static(HOP_BY_HOP[0]),
    HeaderName::from_static(HOP_BY_HOP[1]),
    HeaderName::from_static(HOP_BY_HOP[2]),
    HeaderName::from_static(HOP_BY_HOP[3]),
    HeaderName::from_static(HOP_BY_HOP[4]),
    HeaderName::from_static(HOP_BY_HOP[5]),
    HeaderName::from_static(HOP_BY_HOP[6]),
    HeaderName::from_static(HOP_BY_HOP[7]),
    HeaderName::from_static(HOP_BY_HOP[8]),
];

/// The lengths of the hop-by-hop names, as bits.
const HOP_BY_HOP_LENGTHS: u32 = {
    let mut bits = 0;
    let mut i = 0;
    while i < HOP_BY_HOP.len() {
        bits |= 1 << HOP_BY_HOP[i].len();
        i += 1;
    }
    bits
};

/// Per-connection values computed once at accept.
#[derive(Debug, Clone)]
pub struct ConnHeaders {
    /// The client's IP, ready to append to `X-Forwarded-For`.
    pub client_ip: HeaderValue,
    /// `http` or `https`.
    pub proto: HeaderValue,
    /// The peer is a configured trusted proxy (`server.trusted_proxies`): its `X-Forwarded-*`
    /// headers are kept and extended; anyone else's are replaced.
    pub trusted: bool,
}

static VIA_H1: HeaderValue = HeaderValue::from_static("1.1 warmgate");
static VIA_H2: HeaderValue = HeaderValue::from_static("2 warmgate");

/// The `Via` entry for a message of this version.
pub fn via(version: http::Version) -> &'static HeaderValue {
    if version == http::Version::HTTP_2 {
        &VIA_H2
    } else {
        &VIA_H1
    }
}

/// Appends `value` to a comma-separated list header (or sets it).
fn append_list(headers: &mut HeaderMap, name: &HeaderName, value: &HeaderValue) {
    match headers.get(name) {
        None => {
            headers.insert(name.clone(), value.clone());
        }
        Some(old) => {
            let mut joined = Vec::with_capacity(old.len() + 2 + value.len());
            joined.extend_from_slice(old.as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(value.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                headers.insert(name.clone(), v);
            }
        }
    }
}

/// Prepares request headers for the upstream: hygiene, forwarding headers, `Via`.
/// `host` is the client's Host (or h2 `:authority`), kept as Host when `preserve_host`.
pub fn forward_request(
    headers: &mut HeaderMap,
    conn: &ConnHeaders,
    version: http::Version,
    host: Option<HeaderValue>,
    preserve_host: bool,
    upstream_authority: &HeaderValue,
) {
    strip_hop_by_hop(headers);
    headers.reserve(4);
    if conn.trusted {
        // A proxy we trust: extend its chain, keep what it says the client asked for.
        append_list(headers, &X_FORWARDED_FOR, &conn.client_ip);
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO.clone(), conn.proto.clone());
        }
        if let Some(h) = &host {
            if !headers.contains_key(&X_FORWARDED_HOST) {
                headers.insert(X_FORWARDED_HOST.clone(), h.clone());
            }
        }
    } else {
        // Anyone else could say anything: what we saw replaces what they claim.
        headers.insert(X_FORWARDED_FOR.clone(), conn.client_ip.clone());
        headers.insert(X_FORWARDED_PROTO.clone(), conn.proto.clone());
        match &host {
            Some(h) => headers.insert(X_FORWARDED_HOST.clone(), h.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
        headers.remove(&FORWARDED);
    }
    append_list(headers, &header::VIA, via(version));
    match host {
        Some(h) if preserve_host => headers.insert(header::HOST, h),
        _ => headers.insert(header::HOST, upstream_authority.clone()),
    };
}

/// Prepares response headers for the client.
pub fn forward_response(headers: &mut HeaderMap, version: http::Version) {
    strip_hop_by_hop(headers);
    append_list(headers, &header::VIA, via(version));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> ConnHeaders {
        ConnHeaders {
            client_ip: HeaderValue::from_static("10.1.2.3"),
            proto: HeaderValue::from_static("http"),
            trusted: true,
        }
    }

    #[test]
    fn strips_hop_by_hop_and_what_connection_lists() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        h.insert("proxy-authorization", HeaderValue::from_static("x"));
        h.insert("proxy-authenticate", HeaderValue::from_static("Basic"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert("trailer", HeaderValue::from_static("expires"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h.get("x-keep").map(|v| v.as_bytes()), Some(&b"yes"[..]));

        // A header named on a later Connection line, after a bare `keep-alive`, goes too.
        let mut h = HeaderMap::new();
        h.append("connection", HeaderValue::from_static("Keep-Alive"));
        h.append("connection", HeaderValue::from_static(" , x-late"));
        h.insert("x-late", HeaderValue::from_static("1"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-keep"]);

        // Only `close`: nothing else removed.
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close"));
        h.insert("x-keep", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-keep"]);
    }

    #[test]
    fn sets_forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        h.insert("via", HeaderValue::from_static("1.1 edge"));
        let up = HeaderValue::from_static("127.0.0.1:9000");
        forward_request(
            &mut h,
            &conn(),
            http::Version::HTTP_11,
            Some(HeaderValue::from_static("app.example")),
            true,
            &up,
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert_eq!(h["via"], "1.1 edge, 1.1 warmgate");
        assert_eq!(h["host"], "app.example");
        let mut h = HeaderMap::new();
        forward_request(&mut h, &conn(), http::Version::HTTP_2, None, true, &up);
        assert_eq!(h["host"], "127.0.0.1:9000");
        assert_eq!(h["via"], "2 warmgate");
    }

    #[test]
    fn an_untrusted_peer_cannot_claim_forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        h.insert(
            "x-forwarded-host",
            HeaderValue::from_static("admin.internal"),
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("forwarded", HeaderValue::from_static("for=192.0.2.1"));
        let untrusted = ConnHeaders {
            trusted: false,
            ..conn()
        };
        let up = HeaderValue::from_static("127.0.0.1:9000");
        let host = Some(HeaderValue::from_static("app.example"));
        forward_request(&mut h, &untrusted, http::Version::HTTP_11, host, true, &up);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-host"], "app.example");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(h.get("forwarded").is_none());
    }
}
