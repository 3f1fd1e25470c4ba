//! Arbitrary requests into the edge checks and the route classifier of the shipped config:
//! every request gets a feature that exists, or a refusal, and nothing panics.
#![no_main]

use std::sync::OnceLock;

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use libfuzzer_sys::fuzz_target;
use warmgate::admission::classify::Classifier;

fn classifier() -> &'static (Classifier, usize) {
    static C: OnceLock<(Classifier, usize)> = OnceLock::new();
    C.get_or_init(|| {
        let text = include_str!("../../config/warmgate.toml");
        let Ok(cfg) = warmgate::config::load_str("warmgate.toml", text) else {
            panic!("the shipped config loads");
        };
        let n = cfg.features.len();
        let c = Classifier::new(
            cfg.routes.clone(),
            cfg.default_feature,
            cfg.client_key.clone(),
            std::hash::RandomState::new(),
        );
        (c, n)
    })
}

fuzz_target!(|data: &[u8]| {
    // Fields separated by NUL: method, target, then header name/value pairs.
    let mut parts = data.split(|b| *b == 0);
    let method = Method::from_bytes(parts.next().unwrap_or_default()).unwrap_or(Method::GET);
    let Ok(uri) = Uri::try_from(parts.next().unwrap_or_default()) else {
        return;
    };
    let mut headers = HeaderMap::new();
    while let (Some(n), Some(v)) = (parts.next(), parts.next()) {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(n), HeaderValue::from_bytes(v)) {
            headers.append(n, v);
        }
    }
    let host = match warmgate::proxy::edge::authority(&method, Version::HTTP_11, &uri, &headers) {
        Ok(h) => h,
        Err(_) => return,
    };
    let (c, n) = classifier();
    let f = c.feature(
        &method,
        host.as_ref().map(|h| h.as_bytes()),
        uri.path().as_bytes(),
        &headers,
    );
    assert!(f < *n);
    let _ = c.client_hash(&headers, std::net::IpAddr::from([127, 0, 0, 1]));
    let _ = warmgate::proxy::edge::wants_websocket(Version::HTTP_11, &headers);
});
