//! Warm-up admission end to end on loopback: rejects are cheap and never reach the upstream,
//! priorities are shed in order, the controller backs off when the upstream slows and resumes
//! when it recovers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::Response;

const FEATURES: &str = r#"
[client_key]
header = "x-user"
[[feature]]
name = "login"
priority = "critical"
[[feature]]
name = "recommend"
priority = "low"
[[route]]
feature = "login"
path_prefix = "/api/login"
[[route]]
feature = "recommend"
path_prefix = "/api/recommend"
"#;

fn config(upstream: &str, extra: &str) -> String {
    format!("[upstream]\nendpoints = [\"{upstream}\"]\n{extra}\n{FEATURES}")
}

#[tokio::test]
async fn rejects_carry_retry_after_and_never_reach_the_upstream() {
    let up = ok_upstream(Duration::ZERO).await;
    let p = proxy(&config(
        &up.addr.to_string(),
        "[ramp]\nduration = \"10m\"\n[retry]\njitter_window = \"10s\"\nmax_retry_after = \"15m\"",
    ))
    .await;
    let (resp, body) = get(&p.url("/api/login"), &[("x-user", "a")]).await;
    assert_eq!(resp.status(), 200, "critical admitted at progress 0");
    let mut afters = Vec::new();
    for i in 0..50 {
        let user = format!("u{i}");
        let (resp, body) = get(&p.url("/api/recommend/x"), &[("x-user", &user)]).await;
        assert_eq!(resp.status(), 503);
        let ra: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["reason"], "warming_up");
        assert_eq!(json["feature"], "recommend");
        assert_eq!(json["priority"], "low");
        assert_eq!(json["retry_after_s"], ra);
        afters.push(ra);
    }
    assert_eq!(up.hits(), 1, "only the admitted login reached the upstream");
    // Low opens at 80 % of a 10-minute ramp: about 480 s away, spread over the 10 s window.
    let (min, max) = (afters.iter().min().unwrap(), afters.iter().max().unwrap());
    assert!(*min >= 470 && *max <= 492, "{min}..{max}");
    assert!(max - min >= 5, "jitter spreads the returns: {afters:?}");
    drop(body);
    p.stop().await;
}

#[tokio::test]
async fn early_returners_get_429_and_a_longer_wait() {
    let up = ok_upstream(Duration::ZERO).await;
    let p = proxy(&config(&up.addr.to_string(), "[ramp]\nduration = \"10m\"\n[retry]\njitter_window = \"0s\"\nmax_retry_after = \"1h\"\nretry_header = \"x-retry-attempt\"")).await;
    let (first, _) = get(&p.url("/api/recommend"), &[("x-user", "blind")]).await;
    assert_eq!(first.status(), 503);
    let ra1: u64 = first.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (again, body) = get(&p.url("/api/recommend"), &[("x-user", "blind")]).await;
    assert_eq!(again.status(), 429);
    let ra2: u64 = again.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ra2 > ra1, "escalated: {ra1} then {ra2}");
    assert!(String::from_utf8_lossy(&body).contains("early_retry"));
    // A different user is not affected, and the blind user may still log in.
    assert_eq!(
        get(&p.url("/api/recommend"), &[("x-user", "other")])
            .await
            .0
            .status(),
        503
    );
    assert_eq!(
        get(&p.url("/api/login"), &[("x-user", "blind")])
            .await
            .0
            .status(),
        200
    );
    get(
        &p.url("/api/login"),
        &[("x-user", "marked"), ("x-retry-attempt", "2")],
    )
    .await;
    let metrics = get(&format!("http://{}/metrics", p.admin), &[]).await.1;
    let m = String::from_utf8_lossy(&metrics);
    assert!(m.contains("warmgate_requests_total{feature=\"recommend\",outcome=\"rejected_early_retry\",priority=\"low\"} 1"), "{m}");
    assert!(
        m.contains("warmgate_attempts_total{attempt=\"retry\"} 2"),
        "{m}"
    );
    p.stop().await;
}

#[tokio::test]
async fn shadow_mode_admits_but_records_the_decision() {
    let up = ok_upstream(Duration::ZERO).await;
    let p = proxy(&format!(
        "mode = \"shadow\"\n{}",
        config(&up.addr.to_string(), "[ramp]\nduration = \"10m\"")
    ))
    .await;
    for i in 0..3 {
        let (resp, _) = get(&p.url("/api/recommend"), &[("x-user", &format!("s{i}"))]).await;
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(up.hits(), 3);
    let st = p.status().await;
    let rec = st["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "recommend")
        .unwrap()
        .clone();
    assert_eq!(rec["shadow_reject"], 3, "{st}");
    assert_eq!(st["mode"], "shadow");
    p.stop().await;
}

#[tokio::test]
async fn critical_requests_wait_briefly_for_a_slot() {
    let up = ok_upstream(Duration::from_millis(150)).await;
    let extra = "[limit]\nmode = \"fixed\"\nfull_capacity = 1\n[ramp]\nstart_fraction = 1.0\n[gate]\nqueue_max_len = 4\nqueue_max_wait = \"1s\"";
    let p = proxy(&config(&up.addr.to_string(), extra)).await;
    let a = tokio::spawn({
        let url = p.url("/api/login");
        async move { get(&url, &[("x-user", "q1")]).await.0.status() }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    let b = get(&p.url("/api/login"), &[("x-user", "q2")])
        .await
        .0
        .status();
    assert_eq!(
        (a.await.unwrap(), b),
        (http::StatusCode::OK, http::StatusCode::OK),
        "the second login waited, then went in"
    );
    let m = String::from_utf8_lossy(&get(&format!("http://{}/metrics", p.admin), &[]).await.1)
        .to_string();
    assert!(m.contains("warmgate_queue_wait_seconds_count 1"), "{m}");
    p.stop().await;
}

/// A test upstream whose latency the test sets.
async fn tunable_upstream(delay_ms: Arc<AtomicU64>) -> Upstream {
    upstream(Arc::new(move |_req| {
        let d = delay_ms.load(Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(d)).await;
            Response::builder()
                .header("x-cache", "HIT")
                .body(full("ok"))
                .unwrap()
        })
    }))
    .await
}

/// Keeps `n` clients sending login requests until `stop` is set.
fn load(url: String, n: usize, stop: Arc<AtomicU64>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|i| {
            let (url, stop) = (url.clone(), stop.clone());
            tokio::spawn(async move {
                let client = h1();
                while stop.load(Ordering::SeqCst) == 0 {
                    let user = format!("load{i}");
                    let _ = send(&client, "POST", &url, &[("x-user", &user)], full("")).await;
                }
            })
        })
        .collect()
}

async fn until(
    p: &Proxy,
    what: &str,
    deadline: Duration,
    pred: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let st = p.status().await;
        if pred(&st) {
            return st;
        }
        assert!(
            t.elapsed() < deadline,
            "{what} not reached in {deadline:?}: {st}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn slow_upstream_backs_off_and_recovery_resumes_progress() {
    let delay = Arc::new(AtomicU64::new(1));
    let up = tunable_upstream(delay.clone()).await;
    let extra = r#"
[signals]
window = "1s"
latency_p99 = { warn = "60ms", critical = "120ms" }
[ramp]
tick = "50ms"
duration = "4s"
backoff_factor = 0.2
[limit]
mode = "fixed"
full_capacity = 40
"#;
    let p = proxy(&config(&up.addr.to_string(), extra)).await;
    let stop = Arc::new(AtomicU64::new(0));
    let workers = load(p.url("/api/login"), 8, stop.clone());

    let st = until(&p, "progress 0.3", Duration::from_secs(8), |s| {
        s["controller"]["progress"].as_f64().unwrap() > 0.3
    })
    .await;
    let limit_healthy = st["controller"]["limit"].as_u64().unwrap();

    delay.store(250, Ordering::SeqCst);
    let t = Instant::now();
    let st = until(&p, "backing off", Duration::from_secs(5), |s| {
        s["controller"]["state"] == "backing_off"
    })
    .await;
    let reacted = t.elapsed();
    let st2 = until(&p, "a lower limit", Duration::from_secs(5), |s| {
        s["controller"]["limit"].as_u64().unwrap() < limit_healthy
    })
    .await;
    assert!(
        reacted < Duration::from_secs(2),
        "backed off within a few ticks of the window: {reacted:?}"
    );
    let low = st2["controller"]["progress"].as_f64().unwrap();
    assert!(st["signals"]["p99_ms"].as_f64().unwrap() >= 120.0, "{st}");

    delay.store(1, Ordering::SeqCst);
    until(&p, "advancing again", Duration::from_secs(6), |s| {
        s["controller"]["state"] == "advancing"
            && s["controller"]["progress"].as_f64().unwrap() > low + 0.05
    })
    .await;
    stop.store(1, Ordering::SeqCst);
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(5), w).await;
    }
    p.stop().await;
}

#[tokio::test]
async fn metrics_and_status_describe_the_ramp() {
    let up = ok_upstream(Duration::ZERO).await;
    let p = proxy(&config(&up.addr.to_string(), "[ramp]\ntick = \"50ms\"")).await;
    get(&p.url("/api/login"), &[("x-user", "m")]).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let m = String::from_utf8_lossy(&get(&format!("http://{}/metrics", p.admin), &[]).await.1)
        .to_string();
    for name in [
        "warmgate_requests_total{feature=\"login\",outcome=\"admitted\",priority=\"critical\"} 1",
        "warmgate_admission_limit",
        "warmgate_inflight",
        "warmgate_ramp_progress_ratio",
        "warmgate_stage 3",
        "warmgate_upstream_latency_seconds_bucket",
        "warmgate_cache_hit_ratio 1",
        "warmgate_controller_state{state=\"advancing\"} 1",
        "warmgate_retry_share_ratio",
    ] {
        assert!(m.contains(name), "{name} missing:\n{m}");
    }
    let st = p.status().await;
    assert_eq!(st["stages"]["critical"]["admitted"], true);
    assert_eq!(st["stages"]["low"]["admitted"], false);
    assert_eq!(st["controller"]["limit_mode"], "adaptive");
    assert_eq!(st["signals"]["hit_ratio"], 1.0);
    p.stop().await;
}

#[tokio::test]
async fn tarpit_holds_early_returners_and_ratelimit_headers_are_sent() {
    let up = ok_upstream(Duration::ZERO).await;
    let extra = "[ramp]\nduration = \"10m\"\n[retry]\njitter_window = \"0s\"\ntarpit = \"400ms\"\ntarpit_max_held = 8\nratelimit_headers = true";
    let p = proxy(&config(&up.addr.to_string(), extra)).await;
    let t = Instant::now();
    let (first, _) = get(&p.url("/api/recommend"), &[("x-user", "h")]).await;
    assert_eq!(first.status(), 503);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "a first reject is not held"
    );
    assert!(first.headers()["ratelimit-policy"]
        .to_str()
        .unwrap()
        .starts_with("\"warmup\";q="));
    let ra = first.headers()["retry-after"].to_str().unwrap().to_string();
    assert_eq!(
        first.headers()["ratelimit"].to_str().unwrap(),
        format!("\"warmup\";r=0;t={ra}")
    );
    let t = Instant::now();
    let (again, _) = get(&p.url("/api/recommend"), &[("x-user", "h")]).await;
    assert_eq!(again.status(), 429);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "the early returner was held: {:?}",
        t.elapsed()
    );
    assert_eq!(up.hits(), 0);
    p.stop().await;
}

#[tokio::test]
async fn hit_ratio_is_scraped_when_responses_carry_no_cache_header() {
    let up = upstream(Arc::new(|req| {
        Box::pin(async move {
            let body = if req.uri().path() == "/__stats" {
                "{\"cache\":{\"hit_ratio\":0.8}}"
            } else {
                "ok"
            };
            Response::new(full(body))
        })
    }))
    .await;
    let extra = format!(
        "[ramp]\ntick = \"50ms\"\n[signals.scrape]\nurl = \"http://{}/__stats\"\ninterval = \"100ms\"\njson_pointer = \"/cache/hit_ratio\"",
        up.addr
    );
    let p = proxy(&config(&up.addr.to_string(), &extra)).await;
    get(&p.url("/api/login"), &[("x-user", "s")]).await;
    let st = until(&p, "scraped hit ratio", Duration::from_secs(5), |s| {
        s["signals"]["hit_ratio"] == 0.8
    })
    .await;
    assert_eq!(st["signals"]["hit_ratio"], 0.8);
    p.stop().await;
}
