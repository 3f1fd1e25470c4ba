//! Each cluster finds its own backend's knee. In a test binary of their own, and run one at a
//! time (`ONE_AT_A_TIME`): the limits they measure are latency-driven, and load running beside
//! them on the same cores would move them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::clusters::*;
use common::*;

/// Held by each test for its whole run: the test harness would otherwise run them side by side.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cluster_finds_its_own_backends_knee() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // 100 ms a request: scheduling noise on a busy machine is small beside it.
    let auth = knee_upstream(4, Duration::from_millis(100)).await;
    let feed = knee_upstream(32, Duration::from_millis(100)).await;
    let text = two(
        &auth.addr.to_string(),
        &feed.addr.to_string(),
        "",
        "[cluster.limit]\nmax = 256",
    );
    let p = proxy(&text).await;
    let stop = Arc::new(AtomicU64::new(0));
    let mut clients = load(&p, "/api/login", 16, &stop);
    clients.extend(load(&p, "/api/feed", 80, &stop));
    // Sample both limits over seconds 4..6 of the load.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut samples = Vec::new();
    for _ in 0..20 {
        samples.push(limits(&p.status().await));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(1, Ordering::SeqCst);
    let mut ok = 0;
    for c in clients {
        ok += c.await.map_or(0, |(ok, _)| ok);
    }
    eprintln!("limits (auth, feed) over seconds 4..6: {samples:?}");
    let auth_max = samples.iter().map(|s| s.0).max().unwrap();
    let feed_mean = samples.iter().map(|s| s.1 as f64).sum::<f64>() / samples.len() as f64;
    assert!(ok > 0);
    // Each near its own knee: the sharp backend is never pushed far past its 4, and the wide
    // one is not held to it. (Alone on this machine the means are auth 4.25-4.65 and feed
    // 35.6-36.4, within 25 % of 4 and 32; a busy machine's noise reads as queueing and only
    // lowers them for a while, which the bounds here allow. The feed limit swings by a third
    // around its knee as it probes, 27 to 44 within two seconds, so its mean is what is
    // bounded.)
    assert!((2..=6).contains(&auth_max), "auth: {samples:?}");
    assert!((24.0..=44.0).contains(&feed_mean), "feed: {samples:?}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_feed_cluster_leaves_logins_as_they_were() {
    let _alone = ONE_AT_A_TIME.lock().await;
    // A slow feed backend: with one limit for both, its second-long requests would hold the
    // slots logins need and drag the latency the limit steers on.
    let auth = knee_upstream(4, Duration::from_millis(100)).await;
    let feed = knee_upstream(4, Duration::from_millis(1_000)).await;
    let p = proxy(&two(&auth.addr.to_string(), &feed.addr.to_string(), "", "")).await;
    let count = |clients: Vec<tokio::task::JoinHandle<(u64, u64)>>| async move {
        let (mut ok, mut other) = (0, 0);
        for c in clients {
            let (o, x) = c.await.unwrap();
            ok += o;
            other += x;
        }
        (ok, other)
    };
    // Logins alone: 8 clients on a knee of 4 at 100 ms, after 2 s to find it.
    let warm = Arc::new(AtomicU64::new(0));
    let warming = load(&p, "/api/login", 8, &warm);
    tokio::time::sleep(Duration::from_secs(2)).await;
    warm.store(1, Ordering::SeqCst);
    count(warming).await;
    let phase = |extra: usize| {
        let p = &p;
        async move {
            let stop = Arc::new(AtomicU64::new(0));
            let logins = load(p, "/api/login", 8, &stop);
            let feeds = load(p, "/api/feed", extra, &stop);
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            let st = p.status().await;
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            stop.store(1, Ordering::SeqCst);
            let (ok, refused) = count(logins).await;
            count(feeds).await;
            (ok, refused, st)
        }
    };
    let (alone, alone_refused, _) = phase(0).await;
    // The same logins while 64 feed clients press on a feed backend that takes 4 a second.
    let (beside, beside_refused, st) = phase(64).await;
    eprintln!("logins in 3 s: alone {alone}, beside a saturated feed cluster {beside}");
    assert_eq!((alone_refused, beside_refused), (0, 0), "{st}");
    assert!(
        beside as f64 >= 0.85 * alone as f64,
        "logins alone {alone}, beside a saturated feed {beside}: {st}"
    );
    // The feed cluster was saturated meanwhile (its own line held requests), the auth one not.
    assert_eq!(st["clusters"][1]["name"], "feed");
    assert!(
        st["clusters"][1]["signals"]["queued"].as_u64().unwrap() >= 32,
        "{st}"
    );
    assert!(
        st["clusters"][0]["signals"]["queued"].as_u64().unwrap() <= 8,
        "{st}"
    );
    p.stop().await;
}
