//! Classification: request → feature (first matching route wins) and the client key. Routes are
//! compiled once at load; nothing here allocates per request.

use std::hash::BuildHasher;

use crate::ticket::ClientHasher;
use std::net::IpAddr;

use crate::fields::Fields;
use http::header::{HeaderName, HeaderValue, COOKIE};
#[cfg(test)]
use http::HeaderMap;
use http::Method;
use regex::bytes::Regex;

/// One compiled `[[route]]`: every present matcher must match.
#[derive(Debug, Clone)]
pub struct Route {
    /// Lower-case host without port.
    pub host: Option<String>,
    pub method: Option<Method>,
    pub path_prefix: Option<String>,
    pub path_regex: Option<Regex>,
    pub header: Option<HeaderName>,
    pub header_value: Option<HeaderValue>,
    /// Index into the feature list.
    pub feature: usize,
}

/// Where the client key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientKey {
    /// A request header, e.g. `X-User`; falls back to the address when absent.
    Header(HeaderName),
    /// A cookie; falls back to the address when absent.
    Cookie(String),
    /// The client's IP address.
    Address,
}

/// The compiled route table.
#[derive(Debug)]
pub struct Classifier {
    pub routes: Vec<Route>,
    pub default_feature: usize,
    pub client_key: ClientKey,
    hasher: ClientHasher,
}

impl Route {
    fn matches<H: Fields + ?Sized>(
        &self,
        method: &Method,
        host: Option<&[u8]>,
        path: &[u8],
        headers: &H,
    ) -> bool {
        if let Some(m) = &self.method {
            if m != method {
                return false;
            }
        }
        if let Some(h) = &self.host {
            let Some(got) = host else { return false };
            let got = strip_port(got);
            if !got.eq_ignore_ascii_case(h.as_bytes()) {
                return false;
            }
        }
        if let Some(p) = &self.path_prefix {
            if !path.starts_with(p.as_bytes()) {
                return false;
            }
        }
        if let Some(r) = &self.path_regex {
            if !r.is_match(path) {
                return false;
            }
        }
        if let Some(name) = &self.header {
            match (headers.first(name.as_str()), &self.header_value) {
                (None, _) => return false,
                (Some(v), Some(want)) if v != want.as_bytes() => return false,
                _ => {}
            }
        }
        true
    }
}

fn strip_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return host
            .iter()
            .position(|b| *b == b']')
            .map_or(host, |end| &host[..=end]);
    }
    host.iter()
        .rposition(|b| *b == b':')
        .map_or(host, |colon| &host[..colon])
}

impl Classifier {
    /// A classifier over compiled routes; `hasher` keys the client hash (keep it across
    /// reloads, or client memory is lost).
    pub fn new(
        routes: Vec<Route>,
        default_feature: usize,
        client_key: ClientKey,
        hasher: ClientHasher,
    ) -> Self {
        Self {
            routes,
            default_feature,
            client_key,
            hasher,
        }
    }

    /// Index of the feature this request belongs to.
    pub fn feature<H: Fields + ?Sized>(
        &self,
        method: &Method,
        host: Option<&[u8]>,
        path: &[u8],
        headers: &H,
    ) -> usize {
        self.routes
            .iter()
            .find(|r| r.matches(method, host, path, headers))
            .map_or(self.default_feature, |r| r.feature)
    }

    /// A keyed hash of the client key (header, cookie, or the address as fallback).
    pub fn client_hash<H: Fields + ?Sized>(&self, headers: &H, peer: IpAddr) -> u64 {
        self.client_hash_kept(headers, peer, None)
    }

    /// [`Classifier::client_hash`], the address's hash kept in `kept` for a connection's
    /// next requests (its address is the same for all of them).
    pub fn client_hash_kept<H: Fields + ?Sized>(
        &self,
        headers: &H,
        peer: IpAddr,
        kept: Option<&mut PeerHash>,
    ) -> u64 {
        let key = match &self.client_key {
            ClientKey::Header(name) => headers.first(name.as_str()),
            ClientKey::Cookie(name) => cookie(headers, name),
            ClientKey::Address => None,
        };
        match (key, kept) {
            (Some(k), _) if !k.is_empty() => self.hasher.hash_one(k),
            (_, Some(kept)) => match kept.0 {
                // A reload may have changed the hasher's keys.
                Some((hasher, ip, hash)) if hasher == self.hasher && ip == peer => hash,
                _ => {
                    let hash = self.hasher.hash_one(peer);
                    kept.0 = Some((self.hasher, peer, hash));
                    hash
                }
            },
            (_, None) => self.hasher.hash_one(peer),
        }
    }
}

/// A connection's address hash, kept from one request to the next.
#[derive(Debug, Default, Clone, Copy)]
pub struct PeerHash(Option<(ClientHasher, IpAddr, u64)>);

impl PeerHash {
    /// Whether it holds a hash (a request keyed by its address made one).
    pub fn is_known(&self) -> bool {
        self.0.is_some()
    }
}

fn cookie<'h, H: Fields + ?Sized>(headers: &'h H, name: &str) -> Option<&'h [u8]> {
    headers.find_map(COOKIE.as_str(), |v| {
        v.split(|b| *b == b';').find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn route(feature: usize) -> Route {
        Route {
            host: None,
            method: None,
            path_prefix: None,
            path_regex: None,
            header: None,
            header_value: None,
            feature,
        }
    }

    fn classifier(key: ClientKey) -> Classifier {
        let login = Route {
            method: Some(Method::POST),
            path_prefix: Some("/api/login".into()),
            ..route(0)
        };
        let admin = Route {
            host: Some("admin.example".into()),
            ..route(1)
        };
        let beta = Route {
            path_regex: Regex::new(r"^/api/feed/\d+$").ok(),
            header: Some(HeaderName::from_static("x-beta")),
            header_value: Some(HeaderValue::from_static("1")),
            ..route(2)
        };
        Classifier::new(vec![login, admin, beta], 3, key, ClientHasher::random())
    }

    #[test]
    fn first_match_wins_and_default_catches_the_rest() {
        let c = classifier(ClientKey::Address);
        let none = HeaderMap::new();
        assert_eq!(c.feature(&Method::POST, None, b"/api/login", &none), 0);
        assert_eq!(
            c.feature(&Method::GET, None, b"/api/login", &none),
            3,
            "method must match"
        );
        assert_eq!(
            c.feature(
                &Method::GET,
                Some(b"ADMIN.example:8080".as_slice()),
                b"/x",
                &none
            ),
            1
        );
        let mut beta = HeaderMap::new();
        beta.insert("x-beta", HeaderValue::from_static("1"));
        assert_eq!(c.feature(&Method::GET, None, b"/api/feed/12", &beta), 2);
        assert_eq!(c.feature(&Method::GET, None, b"/api/feed/x", &beta), 3);
        beta.insert("x-beta", HeaderValue::from_static("0"));
        assert_eq!(
            c.feature(&Method::GET, None, b"/api/feed/12", &beta),
            3,
            "value must match"
        );
    }

    #[test]
    fn client_key_from_header_cookie_or_address() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let c = classifier(ClientKey::Header(HeaderName::from_static("x-user")));
        let mut a = HeaderMap::new();
        a.insert("x-user", HeaderValue::from_static("alice"));
        let mut b = HeaderMap::new();
        b.insert("x-user", HeaderValue::from_static("bob"));
        assert_ne!(c.client_hash(&a, ip), c.client_hash(&b, ip));
        assert_eq!(
            c.client_hash(&a, ip),
            c.client_hash(&a, IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_eq!(c.client_hash(&HeaderMap::new(), ip), c.hasher.hash_one(ip));

        let c = classifier(ClientKey::Cookie("sid".into()));
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("theme=dark; sid=abc ; x=1"),
        );
        assert_eq!(c.client_hash(&h, ip), c.hasher.hash_one(b"abc".as_slice()));
    }
}
