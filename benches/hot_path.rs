//! The per-request work that is warmgate's own: header rewrite, endpoint pick, classify, and the
//! gate decision (admit + release, reject), single-threaded and contended.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, Version};
use warmgate::admission::classify::{Classifier, ClientKey, Route};
use warmgate::admission::controller::{CtlState, Decision, Health};
use warmgate::admission::{Ask, FeatureState, Gate, GatePolicy, Priority};
use warmgate::config::Balance;
use warmgate::proxy::headers::{forward_request, forward_response, ConnHeaders};
use warmgate::upstream::{Ejection, Endpoint, EndpointSet};

fn decision(open: [bool; 4], cap: u32) -> Decision {
    Decision {
        progress: 0.5,
        state: CtlState::Advancing,
        health: Health::Healthy,
        limit: cap,
        caps: [cap; 4],
        open,
        eta_s: [30.0, 0.0, 0.0, 0.0],
        rps: None,
    }
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "app.example"),
        ("user-agent", "wrk"),
        ("accept", "*/*"),
        ("connection", "keep-alive"),
        ("x-user", "user-12345"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn headers(c: &mut Criterion) {
    let conn = ConnHeaders {
        client_ip: HeaderValue::from_static("127.0.0.1"),
        proto: HeaderValue::from_static("http"),
    };
    let up = HeaderValue::from_static("127.0.0.1:9000");
    let base = request_headers();
    c.bench_function("headers/forward_request", |b| {
        b.iter_batched(
            || base.clone(),
            |mut h| {
                let host = h.get("host").cloned();
                forward_request(&mut h, &conn, Version::HTTP_11, host, true, &up);
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let mut resp = HeaderMap::new();
    resp.insert("content-type", HeaderValue::from_static("text/plain"));
    resp.insert("x-cache", HeaderValue::from_static("HIT"));
    c.bench_function("headers/forward_response", |b| {
        b.iter_batched(
            || resp.clone(),
            |mut h| {
                forward_response(&mut h, Version::HTTP_11);
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

fn endpoints(c: &mut Criterion) {
    let eps = (0..8)
        .map(|i| {
            Arc::new(Endpoint::new(
                format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
            ))
        })
        .collect();
    let set = EndpointSet::new(
        eps,
        Balance::LeastInflight,
        Ejection {
            after_failures: 5,
            cooldown_ms: 1000,
        },
    );
    let mut n = 0u64;
    c.bench_function("endpoints/pick_p2c_and_release", |b| {
        b.iter(|| {
            n += 1;
            black_box(set.pick(1, warmgate::admission::retry::mix64(n)))
        })
    });
}

fn classify(c: &mut Criterion) {
    let route = |prefix: &str, feature| Route {
        host: None,
        method: None,
        path_prefix: Some(prefix.into()),
        path_regex: None,
        header: None,
        header_value: None,
        feature,
    };
    let cl = Classifier::new(
        vec![
            route("/api/login", 0),
            route("/api/sync", 1),
            route("/api/feed", 2),
            route("/api/recommend", 3),
        ],
        4,
        ClientKey::Header(http::header::HeaderName::from_static("x-user")),
    );
    let h = request_headers();
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    c.bench_function("classify/feature_and_client_key", |b| {
        b.iter(|| {
            let f = cl.feature(
                &Method::GET,
                Some("app.example"),
                black_box("/api/recommend/7"),
                &h,
            );
            (f, cl.client_hash(&h, ip))
        })
    });
}

fn gate(c: &mut Criterion) {
    let pol = GatePolicy::default();
    let g = Gate::leak(1 << 16);
    let open = decision([true; 4], 1_000_000);
    let mut client = 0u64;
    c.bench_function("gate/admit_release", |b| {
        b.iter(|| {
            client = client.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let ask = Ask {
                priority: Priority::High,
                state: FeatureState::Auto,
                client,
                now_ms: 1_000,
            };
            drop(black_box(g.try_admit(&open, &pol, ask, || true)));
        })
    });
    let shut = decision([false, false, false, true], 1_000_000);
    c.bench_function("gate/reject_stage", |b| {
        b.iter(|| {
            client = client.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let ask = Ask {
                priority: Priority::Low,
                state: FeatureState::Auto,
                client,
                now_ms: 1_000,
            };
            black_box(g.try_admit(&shut, &pol, ask, || true).err())
        })
    });
    c.bench_function("gate/reject_early_retry", |b| {
        let ask = Ask {
            priority: Priority::Low,
            state: FeatureState::Auto,
            client: 42,
            now_ms: 1_000,
        };
        b.iter(|| black_box(g.try_admit(&shut, &pol, ask, || true).err()))
    });
    c.bench_function("gate/admit_release_contended_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            let mut total = Duration::ZERO;
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..2u64)
                    .map(|t| {
                        let (open, pol) = (open, pol);
                        s.spawn(move || {
                            let t0 = Instant::now();
                            for i in 0..iters {
                                let ask = Ask {
                                    priority: Priority::High,
                                    state: FeatureState::Auto,
                                    client: i ^ (t << 40),
                                    now_ms: 1_000,
                                };
                                drop(black_box(g.try_admit(&open, &pol, ask, || true)));
                            }
                            t0.elapsed()
                        })
                    })
                    .collect();
                for h in hs {
                    total = total.max(h.join().unwrap_or_default());
                }
            });
            let _ = start;
            total
        })
    });
}

criterion_group!(benches, headers, endpoints, classify, gate);
criterion_main!(benches);
