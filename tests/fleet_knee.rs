//! A fleet finds one knee: alone in its test binary, as the limits it measures are
//! latency-driven and tests running beside it on the same cores would move them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::fleet::*;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_find_one_knee_and_share_it_and_a_fourth_joins_within_it() {
    let port = free_port();
    let _redis = redis::start(port);
    let backend = knee_backend(8, Duration::from_millis(100)).await;
    let (a, _da) = instance(&backend.up, port, "a").await;
    let (b, _db) = instance(&backend.up, port, "b").await;
    let (c, _dc) = instance(&backend.up, port, "c").await;
    let stop = Arc::new(AtomicU64::new(0));
    let mut clients = load(&a, 16, &stop);
    clients.extend(load(&b, 16, &stop));
    clients.extend(load(&c, 16, &stop));
    tokio::time::sleep(Duration::from_secs(4)).await;
    backend.peak.store(0, Ordering::SeqCst);
    let mut samples = Vec::new();
    for _ in 0..20 {
        if let Some(v) = fleet_view(&[&a, &b, &c]).await {
            samples.push(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak3 = backend.peak.load(Ordering::SeqCst);
    // A fourth instance joins under load.
    let (d, _dd) = instance(&backend.up, port, "d").await;
    clients.extend(load(&d, 16, &stop));
    backend.peak.store(0, Ordering::SeqCst);
    let mut joined = Vec::new();
    for _ in 0..20 {
        if let Some(v) = fleet_view(&[&a, &b, &c, &d]).await {
            joined.push(v);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peak4 = backend.peak.load(Ordering::SeqCst);
    let d_share = side(&d.status().await)["share"].as_u64();
    stop.store(1, Ordering::SeqCst);
    let (mut ok, mut other) = (0, 0);
    for c in clients {
        let (o, x) = c.await.unwrap();
        ok += o;
        other += x;
    }
    eprintln!("fleet limit, sum of shares (3): {samples:?}\n(4): {joined:?}\nbackend peak in flight+queued: {peak3} (3), {peak4} (4 joining); ok {ok} other {other}; d's share {d_share:?}");
    assert!(
        samples.len() >= 10 && joined.len() >= 10,
        "a leader answers"
    );
    for &(limit, sum) in samples.iter().chain(&joined) {
        assert!(
            sum <= limit,
            "the shares add up to no more than the fleet limit: {limit} < {sum}"
        );
    }
    let mean = samples.iter().map(|s| s.0 as f64).sum::<f64>() / samples.len() as f64;
    let max = samples.iter().map(|s| s.0).max().unwrap();
    eprintln!("fleet limit mean {mean:.1}, max {max}");
    // One knee for the fleet (alone on this machine the mean reads 8.9-10.6 for a knee of 8:
    // the limit's 20 % latency tolerance lets it sit a little above, as one instance does),
    // not three instances' limits on top of each other (24 and more).
    assert!((6.0..=11.0).contains(&mean), "fleet limit: {samples:?}");
    assert!(max <= 16, "fleet limit: {samples:?}");
    assert!(
        peak3 <= 16,
        "the backend holds {peak3} at once: not held to one knee"
    );
    assert!(
        peak4 <= 16,
        "the joining instance pushes the backend to {peak4}"
    );
    assert!(
        d_share.is_some_and(|s| s >= 1),
        "the newcomer has a share: {d_share:?}"
    );
    assert!(ok > 500);
    for p in [a, b, c, d] {
        p.stop().await;
    }
}
