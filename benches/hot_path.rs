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
use warmgate::admission::limit::{KneeLimit, KneeParams, LimitAlgorithm, Outcome};
use warmgate::admission::{Ask, FeatureState, Gate, GatePolicy, Priority};
use warmgate::config::Balance;
use warmgate::proxy::headers::{forward_request, forward_response, ConnHeaders};
use warmgate::upstream::{Ejection, Endpoint, EndpointSet};

fn decision(open: [bool; 4]) -> Decision {
    Decision {
        engaged: true,
        progress: 0.5,
        state: CtlState::Advancing,
        health: Health::Healthy,
        open,
        eta_s: [30.0, 0.0, 0.0, 0.0],
        admit_rps: [25.0; 4],
        ..Decision::default()
    }
}

fn ask(priority: Priority, client: u64) -> Ask {
    Ask {
        priority,
        state: FeatureState::Auto,
        feature: priority.index() as u64,
        client,
        now_ms: 1_000,
        over_share: false,
        ticket_ms: 0,
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
        trusted: false,
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
        warmgate::ticket::ClientHasher::random(),
    );
    let h = request_headers();
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    c.bench_function("classify/feature_and_client_key", |b| {
        b.iter(|| {
            let f = cl.feature(
                &Method::GET,
                Some(b"app.example".as_slice()),
                black_box(b"/api/recommend/7".as_slice()),
                &h,
            );
            (f, cl.client_hash(&h, ip))
        })
    });
}

fn gate(c: &mut Criterion) {
    let pol = GatePolicy::default();
    let g = Gate::leak(1 << 16, 1 << 16);
    g.set_limit(1_000_000, 1_000_000, false);
    let open = decision([true; 4]);
    let mut client = 0u64;
    c.bench_function("gate/admit_release", |b| {
        b.iter(|| {
            client = client.wrapping_add(0x9E37_79B9_7F4A_7C15);
            drop(black_box(g.admit(
                &open,
                &pol,
                ask(Priority::High, client),
                || true,
            )));
        })
    });
    let shut = decision([false, false, false, true]);
    c.bench_function("gate/reject_stage", |b| {
        b.iter(|| {
            client = client.wrapping_add(0x9E37_79B9_7F4A_7C15);
            drop(black_box(g.admit(
                &shut,
                &pol,
                ask(Priority::Low, client),
                || true,
            )));
        })
    });
    // A full limit: the request joins the line and leaves it (a wait that is given up).
    let full = Gate::leak(1 << 16, 1 << 16);
    full.set_limit(1, 1, false);
    let _held = full.admit(&open, &pol, ask(Priority::Critical, 1), || true);
    c.bench_function("gate/queue_join_and_leave", |b| {
        b.iter(|| {
            client = client.wrapping_add(0x9E37_79B9_7F4A_7C15);
            drop(black_box(full.admit(
                &open,
                &pol,
                ask(Priority::High, client),
                || true,
            )));
        })
    });
    c.bench_function("gate/admit_release_contended_2_threads", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            std::thread::scope(|s| {
                let hs: Vec<_> = (0..2u64)
                    .map(|t| {
                        let (open, pol) = (open, pol);
                        s.spawn(move || {
                            let t0 = Instant::now();
                            for i in 0..iters {
                                let a = ask(Priority::High, i ^ (t << 40));
                                drop(black_box(g.admit(&open, &pol, a, || true)));
                            }
                            t0.elapsed()
                        })
                    })
                    .collect();
                for h in hs {
                    total = total.max(h.join().unwrap_or_default());
                }
            });
            total
        })
    });
}

/// One controller tick's work on the limit: twelve classes sampled, one update.
fn limit(c: &mut Criterion) {
    let mut alg = KneeLimit::new(KneeParams::default());
    let mut now = 0u64;
    c.bench_function("limit/knee_tick", |b| {
        b.iter(|| {
            now += 100;
            for class in 0..12 {
                alg.sample(class, 20.0 + class as f64, 10, 16, Outcome::Ok);
            }
            black_box(alg.update(now, true))
        })
    });
}

/// The per-request cluster path: one snapshot load, the feature's cluster and decision by index,
/// admit and release on that cluster's gate. With 1 cluster and with 8 (requests spread over
/// them), so the cost of clusters is read side by side.
fn clusters(c: &mut Criterion) {
    for n in [1usize, 8] {
        let mut text = String::new();
        for i in 0..n {
            text.push_str(&format!(
                "[[cluster]]\nname = \"c{i}\"\nendpoints = [\"127.0.0.1:{}\"]\n[cluster.limit]\nmode = \"fixed\"\nfull_capacity = 1000000\n",
                9000 + i
            ));
        }
        for i in 0..n {
            text.push_str(&format!(
                "[[feature]]\nname = \"f{i}\"\npriority = \"high\"\ncluster = \"c{i}\"\n"
            ));
        }
        let cfg = warmgate::config::load_str("bench.toml", &text).unwrap();
        let shared = warmgate::runtime::Shared::new(cfg).unwrap();
        let mut client = 0u64;
        let mut i = 0usize;
        c.bench_function(
            &format!("cluster/resolve_admit_release_{n}_clusters"),
            |b| {
                b.iter(|| {
                    client = client.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    i = (i + 1) % n;
                    let snap = shared.snapshot.load();
                    let f = &snap.compiled.features[i];
                    let (Some(cluster), Some(view)) = (
                        snap.compiled.clusters.get(f.cluster),
                        snap.clusters.get(f.cluster),
                    ) else {
                        return;
                    };
                    let a = Ask {
                        feature: f.key,
                        ..ask(f.priority, client)
                    };
                    drop(black_box(cluster.state.gate.admit(
                        &view.decision,
                        &cluster.config.gate,
                        a,
                        || true,
                    )));
                })
            },
        );
    }
}

fn tickets(c: &mut Criterion) {
    let keys = vec![
        (
            "k2".to_string(),
            "0123456789abcdef0123456789abcdef".to_string(),
        ),
        (
            "k1".to_string(),
            "fedcba9876543210fedcba9876543210".to_string(),
        ),
    ];
    let ring = warmgate::ticket::Ring::new(&keys);
    let now = warmgate::ticket::unix_ms();
    let text = ring.issue(now - 5_000, now + 600_000, 7, 42);
    c.bench_function("ticket/issue", |b| {
        b.iter(|| ring.issue(black_box(now - 5_000), now + 600_000, 7, black_box(42)))
    });
    c.bench_function("ticket/verify", |b| {
        b.iter(|| ring.verify(black_box(text.as_bytes()), now, 7, 42))
    });
    c.bench_function("ticket/issue_verify", |b| {
        b.iter(|| {
            let t = ring.issue(black_box(now - 5_000), now + 600_000, 7, black_box(42));
            ring.verify(t.as_bytes(), now, 7, 42)
        })
    });
}

criterion_group!(benches, headers, endpoints, classify, gate, clusters, limit, tickets);
criterion_main!(benches);
