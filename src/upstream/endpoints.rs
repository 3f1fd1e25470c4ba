//! The endpoint set: selection (power-of-two-choices on in-flight, or round robin) and passive
//! health (eject after N consecutive failures, retry after a cooldown). Atomics only.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use http::uri::Authority;

use crate::config::Balance;

/// One upstream address and its live counters.
#[derive(Debug)]
pub struct Endpoint {
    /// The endpoint as configured (its `Host` and, for TLS, its name).
    pub authority: Authority,
    /// The address a name resolved to, when this is one of a name's addresses.
    pub ip: Option<std::net::IpAddr>,
    /// The authority as a `Host` value, built once.
    pub host_header: http::HeaderValue,
    /// Where new connections go (`http://authority`).
    pub uri: http::Uri,
    /// Its idle keep-alive connections (HTTP/1.1 upstreams).
    pub pool: super::pool::IdlePool,
    inflight: AtomicU32,
    failures: AtomicU32,
    ejected_until_ms: AtomicU64,
    ejections: AtomicU64,
    /// The second a failure was last logged (one line a second per endpoint, not one per
    /// request, while a backend is down).
    logged_s: AtomicU64,
}

impl Endpoint {
    /// A healthy, idle endpoint.
    pub fn new(authority: Authority) -> Self {
        Self::at(authority, None)
    }

    /// A healthy, idle endpoint on `authority`, connected at `ip` when given (one of the
    /// addresses its name resolved to) and else at the authority itself.
    pub fn at(authority: Authority, ip: Option<std::net::IpAddr>) -> Self {
        let host_header = http::HeaderValue::from_str(authority.as_str())
            .unwrap_or(http::HeaderValue::from_static("localhost"));
        let target = match (ip, authority.port_u16()) {
            (Some(ip), Some(port)) => std::net::SocketAddr::new(ip, port)
                .to_string()
                .parse::<Authority>()
                .unwrap_or_else(|_| authority.clone()),
            _ => authority.clone(),
        };
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(target)
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        Self {
            host_header,
            uri,
            ip,
            pool: super::pool::IdlePool::default(),
            authority,
            inflight: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            logged_s: AtomicU64::new(u64::MAX),
        }
    }

    /// Requests in flight to this endpoint.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Whether passive health has this endpoint out at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        now_ms < self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// Whether a failure at `now_ms` is the first of its second (the one to log).
    pub fn first_failure_this_second(&self, now_ms: u64) -> bool {
        let s = now_ms / 1000;
        self.logged_s.swap(s, Ordering::Relaxed) != s
    }

    /// Times this endpoint was ejected.
    pub fn ejections(&self) -> u64 {
        self.ejections.load(Ordering::Relaxed)
    }
}

/// Passive-health settings.
#[derive(Clone, Copy, Debug)]
pub struct Ejection {
    pub after_failures: u32,
    pub cooldown_ms: u64,
}

/// An in-flight slot on an endpoint; dropping it ends the request's count.
#[derive(Debug)]
pub struct EndpointGuard {
    pub endpoint: Arc<Endpoint>,
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.endpoint.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EndpointGuard {
    /// The endpoint answered: its failure streak ends.
    pub fn success(&self) {
        if self.endpoint.failures.load(Ordering::Relaxed) != 0 {
            self.endpoint.failures.store(0, Ordering::Relaxed);
        }
    }

    /// The endpoint failed (connect error or timeout); eject it after enough in a row.
    pub fn failure(&self, ej: Ejection, now_ms: u64) {
        let n = self.endpoint.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if ej.after_failures > 0 && n >= ej.after_failures {
            self.endpoint.failures.store(0, Ordering::Relaxed);
            self.endpoint
                .ejected_until_ms
                .store(now_ms + ej.cooldown_ms, Ordering::Relaxed);
            self.endpoint.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(endpoint = %self.endpoint.authority, failures = n, cooldown_ms = ej.cooldown_ms, "endpoint ejected");
        }
    }
}

/// The endpoints of the upstream cluster.
#[derive(Debug)]
pub struct EndpointSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    pub balance: Balance,
    pub ejection: Ejection,
    next: AtomicUsize,
}

impl EndpointSet {
    /// A set over `endpoints` (reusing the given `Arc`s keeps counters across a reload).
    pub fn new(endpoints: Vec<Arc<Endpoint>>, balance: Balance, ejection: Ejection) -> Self {
        Self {
            endpoints,
            balance,
            ejection,
            next: AtomicUsize::new(0),
        }
    }

    /// Picks an endpoint for one request. Ejected endpoints are skipped while any other is
    /// healthy; if all are ejected the least recently ejected… any is better than none, so the
    /// normal choice is made among all (panic mode, as Envoy does).
    pub fn pick(&self, now_ms: u64, rand: u64) -> Option<EndpointGuard> {
        let n = self.endpoints.len();
        let healthy = |i: usize| !self.endpoints[i % n].is_ejected(now_ms);
        let choose = |i: usize| i % n;
        let idx = match (n, self.balance) {
            (0, _) => return None,
            (1, _) => 0,
            (_, Balance::RoundRobin) => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (start..start + n)
                    .find(|i| healthy(*i))
                    .map_or(choose(start), choose)
            }
            (_, Balance::LeastInflight) => {
                let a = (rand as usize) % n;
                let b = (a + 1 + ((rand >> 32) as usize) % (n - 1)) % n;
                match (healthy(a), healthy(b)) {
                    (true, true) => {
                        if self.endpoints[b].inflight() < self.endpoints[a].inflight() {
                            b
                        } else {
                            a
                        }
                    }
                    (true, false) => a,
                    (false, true) => b,
                    (false, false) => (0..n)
                        .map(|k| (a + k) % n)
                        .find(|i| healthy(*i))
                        .unwrap_or(a),
                }
            }
        };
        let endpoint = Arc::clone(&self.endpoints[idx]);
        endpoint.inflight.fetch_add(1, Ordering::Relaxed);
        Some(EndpointGuard { endpoint })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::retry::mix64;

    fn set(n: usize, balance: Balance) -> EndpointSet {
        let eps = (0..n)
            .filter_map(|i| format!("127.0.0.1:{}", 9000 + i).parse().ok())
            .map(|a| Arc::new(Endpoint::new(a)))
            .collect();
        EndpointSet::new(
            eps,
            balance,
            Ejection {
                after_failures: 3,
                cooldown_ms: 1_000,
            },
        )
    }

    #[test]
    fn a_failure_is_logged_once_a_second() {
        let e = Endpoint::new(Authority::from_static("127.0.0.1:9"));
        assert!(e.first_failure_this_second(1_000));
        assert!(!e.first_failure_this_second(1_500));
        assert!(e.first_failure_this_second(2_000));
    }

    #[test]
    fn least_inflight_prefers_the_idle_endpoint() {
        let s = set(2, Balance::LeastInflight);
        let busy: Vec<_> = (0..5)
            .filter_map(|_| {
                let g = s.pick(0, 0)?;
                (g.endpoint.authority.port_u16() == Some(9000)).then_some(g)
            })
            .collect();
        assert!(!busy.is_empty());
        for i in 0..20 {
            let g = s.pick(0, mix64(i));
            assert_eq!(g.map(|g| g.endpoint.authority.port_u16()), Some(Some(9001)));
        }
        drop(busy);
        assert_eq!(s.endpoints[0].inflight(), 0, "guards release");
    }

    #[test]
    fn round_robin_cycles() {
        let s = set(3, Balance::RoundRobin);
        let ports: Vec<_> = (0..6)
            .filter_map(|_| s.pick(0, 0)?.endpoint.authority.port_u16())
            .collect();
        assert_eq!(ports, vec![9000, 9001, 9002, 9000, 9001, 9002]);
    }

    #[test]
    fn ejects_after_consecutive_failures_and_recovers() {
        let s = set(2, Balance::RoundRobin);
        let ej = s.ejection;
        for _ in 0..3 {
            if let Some(g) = s
                .pick(0, 0)
                .filter(|g| g.endpoint.authority.port_u16() == Some(9000))
            {
                g.failure(ej, 0);
            } else if let Some(g) = s.pick(0, 0) {
                g.failure(ej, 0);
            }
        }
        assert!(s.endpoints[0].is_ejected(10) || s.endpoints[1].is_ejected(10));
        let ejected = if s.endpoints[0].is_ejected(10) {
            9000
        } else {
            9001
        };
        for _ in 0..10 {
            let port = s.pick(10, 0).and_then(|g| g.endpoint.authority.port_u16());
            assert_ne!(port, Some(ejected));
        }
        assert!(
            !s.endpoints[0].is_ejected(1_000) && !s.endpoints[1].is_ejected(1_000),
            "cooldown over"
        );
    }

    #[test]
    fn all_ejected_still_picks_one() {
        let s = set(2, Balance::LeastInflight);
        for e in &s.endpoints {
            e.ejected_until_ms.store(5_000, Ordering::Relaxed);
        }
        assert!(s.pick(0, 7).is_some());
    }
}
