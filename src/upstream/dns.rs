//! Endpoints given by name follow DNS: every `dns_refresh` each name is resolved again and every
//! address it gives is an endpoint of its own (its own health, balance share and pool). When a
//! name moves (a GSLB cutover), new requests go to the new addresses from the next refresh; an
//! address that left is dropped from the set, and its pooled connections close with it once
//! the requests still using them are done. A failed resolution keeps the last good addresses.
//!
//! Resolution runs on its own task (`runtime::background::resolve_endpoints`), never on the
//! request path or under the controller's lock.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Authority;

use super::{Endpoint, EndpointSet};
use crate::config::ClusterConfig;

/// Resolves a host name to its addresses (the port is the endpoint's own).
pub trait Resolve: Send + Sync {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>>;
}

/// The system resolver (getaddrinfo, on tokio's blocking pool).
pub struct System;

impl Resolve for System {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, 0)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// Whether an endpoint is given by name (not an address literal).
pub fn is_name(a: &Authority) -> bool {
    a.host().trim_matches(['[', ']']).parse::<IpAddr>().is_err()
}

/// One name's last outcome, for status and for saying a change once.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolution {
    pub addresses: Vec<IpAddr>,
    /// The last failure, while the last good addresses are kept.
    pub error: Option<String>,
}

/// The endpoint set for `configured` given each name's addresses: an address literal is one
/// endpoint, a name one per address (a name not resolved yet one endpoint on the name, which
/// the connector resolves); endpoints already in `current` are reused with their counters and
/// pooled connections.
pub fn endpoints_for(
    configured: &[Authority],
    resolved: &BTreeMap<String, Resolution>,
    current: &[Arc<Endpoint>],
) -> Vec<Arc<Endpoint>> {
    let reuse = |a: &Authority, ip: Option<IpAddr>| {
        current
            .iter()
            .find(|e| e.authority == *a && e.ip == ip)
            .cloned()
            .unwrap_or_else(|| Arc::new(Endpoint::at(a.clone(), ip)))
    };
    let mut out = Vec::new();
    for a in configured {
        match resolved.get(a.host()).filter(|r| !r.addresses.is_empty()) {
            Some(r) if is_name(a) => {
                for ip in &r.addresses {
                    out.push(reuse(a, Some(*ip)));
                }
            }
            _ => out.push(reuse(a, None)),
        }
    }
    out
}

/// Resolves one cluster's names once and publishes its endpoints if they changed.
pub async fn refresh(
    cfg: &ClusterConfig,
    resolved_now: &ArcSwap<BTreeMap<String, Resolution>>,
    endpoints: &ArcSwap<EndpointSet>,
    resolver: &dyn Resolve,
) {
    let mut names: Vec<&str> = cfg
        .upstream
        .endpoints
        .iter()
        .filter(|a| is_name(a))
        .map(Authority::host)
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut resolved = resolved_now.load().as_ref().clone();
    for name in names {
        let timeout = cfg.upstream.connect_timeout.max(Duration::from_secs(1));
        let outcome = match tokio::time::timeout(timeout, resolver.resolve(name)).await {
            Ok(Ok(addrs)) if !addrs.is_empty() => Ok(addrs),
            Ok(Ok(_)) => Err("no addresses".to_string()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        };
        let before = resolved.get(name).cloned().unwrap_or_default();
        let after = match outcome {
            Ok(mut addrs) => {
                addrs.sort();
                addrs.dedup();
                if addrs != before.addresses && !before.addresses.is_empty() {
                    tracing::info!(cluster = %cfg.name, name, "now resolves to {addrs:?} (was {:?}): new requests go to the new addresses", before.addresses);
                }
                Resolution {
                    addresses: addrs,
                    error: None,
                }
            }
            Err(e) => {
                if before.error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(cluster = %cfg.name, name, error = %e, "cannot resolve; keeping the last good addresses {:?}", before.addresses);
                }
                Resolution {
                    addresses: before.addresses.clone(),
                    error: Some(e),
                }
            }
        };
        resolved.insert(name.to_string(), after);
    }
    let current = endpoints.load();
    let next = endpoints_for(&cfg.upstream.endpoints, &resolved, &current.endpoints);
    let same = next.len() == current.endpoints.len()
        && next
            .iter()
            .zip(&current.endpoints)
            .all(|(a, b)| Arc::ptr_eq(a, b));
    resolved_now.store(Arc::new(resolved));
    if !same {
        endpoints.store(Arc::new(EndpointSet::new(
            next,
            current.balance,
            current.ejection,
        )));
    }
}

/// `host:port` of an endpoint address, for messages.
pub fn show(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_name_is_one_endpoint_per_address_and_known_ones_are_reused() {
        let configured: Vec<Authority> = vec![
            "svc.internal:8080".parse().unwrap(),
            "10.0.0.9:8080".parse().unwrap(),
        ];
        let mut resolved = BTreeMap::new();
        // Not resolved yet: one endpoint on the name.
        let first = endpoints_for(&configured, &resolved, &[]);
        assert_eq!(first.len(), 2);
        assert_eq!(first[0].ip, None);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        resolved.insert(
            "svc.internal".to_string(),
            Resolution {
                addresses: vec![ip("10.0.0.1"), ip("10.0.0.2")],
                error: None,
            },
        );
        let second = endpoints_for(&configured, &resolved, &first);
        assert_eq!(second.len(), 3);
        assert_eq!(second[0].uri.to_string(), "http://10.0.0.1:8080/");
        assert_eq!(
            second[0].host_header, "svc.internal:8080",
            "Host stays the name"
        );
        assert!(Arc::ptr_eq(&second[2], &first[1]), "the literal is kept");
        // The name moves: the address that stayed is the same endpoint, the new one is new.
        resolved.insert(
            "svc.internal".to_string(),
            Resolution {
                addresses: vec![ip("10.0.0.2"), ip("10.0.0.3")],
                error: None,
            },
        );
        let third = endpoints_for(&configured, &resolved, &second);
        assert!(Arc::ptr_eq(&third[0], &second[1]));
        assert_eq!(third[1].ip, Some(ip("10.0.0.3")));
        assert!(!third.iter().any(|e| e.ip == Some(ip("10.0.0.1"))));
    }

    #[test]
    fn names_and_literals() {
        assert!(is_name(&"auth.dc2.internal:8080".parse().unwrap()));
        assert!(is_name(&"localhost:80".parse().unwrap()));
        assert!(!is_name(&"127.0.0.1:80".parse().unwrap()));
        assert!(!is_name(&"[::1]:80".parse().unwrap()));
    }
}
