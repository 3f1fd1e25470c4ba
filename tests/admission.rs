//! Admission v2 end to end on loopback: invisible in front of a healthy backend, a bounded
//! priority line when the limit is full (and no residue when clients go away), an engaged ramp
//! that sheds by stage with a Retry-After, early returners held rather than answered at once,
//! and a limit that finds a backend's knee.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
name = "sync"
priority = "high"
[[feature]]
name = "feed"
priority = "normal"
[[feature]]
name = "recommend"
priority = "low"
[[route]]
feature = "login"
path_prefix = "/api/login"
[[route]]
feature = "sync"
path_prefix = "/api/sync"
[[route]]
feature = "feed"
path_prefix = "/api/feed"
[[route]]
feature = "recommend"
path_prefix = "/api/recommend"
"#;

const PATHS: [&str; 4] = ["/api/login", "/api/sync", "/api/feed", "/api/recommend"];

fn config(upstream: &str, extra: &str) -> String {
    format!("[upstream]\nendpoints = [\"{upstream}\"]\n{extra}\n{FEATURES}")
}

/// The shipped config, pointed at `upstream` (listen and admin replaced by the harness).
fn shipped(upstream: &str) -> String {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/warmgate.toml"))
            .unwrap();
    let mut t: toml::Table = text.parse().unwrap();
    t.remove("listen");
    t.remove("admin");
    let up = t
        .get_mut("upstream")
        .and_then(|u| u.as_table_mut())
        .unwrap();
    up.insert(
        "endpoints".into(),
        toml::Value::Array(vec![toml::Value::String(upstream.into())]),
    );
    toml::to_string(&t).unwrap()
}

async fn metrics(p: &Proxy) -> String {
    String::from_utf8_lossy(&get(&format!("http://{}/metrics", p.admin), &[]).await.1).to_string()
}

fn retry_after(resp: &Response<()>) -> u64 {
    resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// 1000 requests, all four priorities, 32 at a time: every one answered by the upstream.
async fn thousand_ok(p: &Proxy) {
    let ok = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|w| {
            let (base, ok) = (p.url(""), ok.clone());
            tokio::spawn(async move {
                let client = h1();
                for n in (w..1000).step_by(32) {
                    let path = PATHS[(n % 4) as usize];
                    let method = if path == "/api/login" { "POST" } else { "GET" };
                    let user = format!("warm{n}");
                    let (resp, body) = send(
                        &client,
                        method,
                        &format!("{base}{path}"),
                        &[("x-user", &user)],
                        full(""),
                    )
                    .await;
                    assert_eq!(
                        resp.status(),
                        200,
                        "{path}: {}",
                        String::from_utf8_lossy(&body)
                    );
                    assert_eq!(&body[..], b"ok", "the upstream's answer");
                    ok.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(ok.load(Ordering::SeqCst), 1000);
}

#[tokio::test]
async fn a_fresh_warmgate_in_front_of_a_warm_backend_admits_everything_from_the_first_request() {
    let up = ok_upstream(Duration::from_millis(2)).await;
    // The minimal config: listen and one endpoint.
    let p = proxy(&format!("[upstream]\nendpoints = [\"{}\"]\n", up.addr)).await;
    thousand_ok(&p).await;
    p.stop().await;
    // The shipped config, with its features, stages and hit-ratio gate.
    let p = proxy(&shipped(&up.addr.to_string())).await;
    thousand_ok(&p).await;
    let m = metrics(&p).await;
    let shed: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("warmgate_requests_total") && l.contains("outcome=\"shed\""))
        .collect();
    assert!(!shed.is_empty(), "{m}");
    assert!(
        shed.iter().all(|l| l.ends_with("} 0")),
        "nothing shed: {shed:?}"
    );
    assert!(
        m.contains("warmgate_ramp_engaged{cluster=\"default\"} 0"),
        "{m}"
    );
    p.stop().await;
    assert_eq!(up.hits(), 2000);
}

#[tokio::test]
async fn an_engaged_ramp_sheds_by_stage_with_a_spread_retry_after() {
    let up = ok_upstream(Duration::ZERO).await;
    let extra =
        "[ramp]\nengage = \"on_start\"\nduration = \"10m\"\n[retry]\nmax_retry_after = \"15m\"";
    let p = proxy(&config(&up.addr.to_string(), extra)).await;
    let (resp, _) = send(
        &h1(),
        "POST",
        &p.url("/api/login"),
        &[("x-user", "a")],
        full(""),
    )
    .await;
    assert_eq!(resp.status(), 200, "critical admitted at progress 0");
    let mut afters = Vec::new();
    for i in 0..50 {
        let user = format!("u{i}");
        let (resp, body) = get(&p.url("/api/recommend/x"), &[("x-user", &user)]).await;
        assert_eq!(resp.status(), 503);
        let ra = retry_after(&resp);
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["reason"], "warming_up");
        assert_eq!(json["feature"], "recommend");
        assert_eq!(json["priority"], "low");
        assert_eq!(json["retry_after_s"], ra);
        afters.push(ra);
    }
    assert_eq!(up.hits(), 1, "only the admitted login reached the upstream");
    // Low opens at 80 % of a 10-minute ramp: 480 s away, spread over half of that again.
    let (min, max) = (afters.iter().min().unwrap(), afters.iter().max().unwrap());
    assert!(*min >= 480 && *max <= 720, "{min}..{max}");
    assert!(max - min >= 60, "jitter spreads the returns: {afters:?}");
    let st = p.status().await;
    assert_eq!(st["controller"]["engaged"], true);
    assert_eq!(st["stages"]["critical"]["admitted"], true);
    assert_eq!(st["stages"]["high"]["admitted"], false);
    p.stop().await;
}

#[tokio::test]
async fn no_traffic_no_progress() {
    let up = ok_upstream(Duration::ZERO).await;
    let extra = "[ramp]\nengage = \"on_start\"\nduration = \"1s\"\ntick = \"20ms\"";
    let p = proxy(&config(&up.addr.to_string(), extra)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let st = p.status().await;
    assert_eq!(st["controller"]["progress"], 0.0, "{st}");
    assert_eq!(st["controller"]["engaged"], true);
    assert_eq!(st["stages"]["low"]["admitted"], false);
    p.stop().await;
}

#[tokio::test]
async fn a_freed_slot_goes_to_the_highest_priority_and_a_wait_that_runs_out_gets_retry_after() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let up = ordered_upstream(Duration::from_millis(300), log.clone()).await;
    let extra = "[limit]\nmode = \"fixed\"\nfull_capacity = 1\n[queue]\nmax_wait = { critical = \"3s\", high = \"3s\", normal = \"3s\", low = \"3s\" }";
    let p = proxy(&config(&up.addr.to_string(), extra)).await;
    let spawn = |base: String, path: &'static str, user: &'static str, method: &'static str| {
        let url = format!("{base}{path}");
        tokio::spawn(async move {
            send(&h1(), method, &url, &[("x-user", user)], full(""))
                .await
                .0
                .status()
        })
    };
    let first = spawn(p.url(""), "/api/feed", "holder", "GET");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let low = spawn(p.url(""), "/api/recommend", "low", "GET");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let normal = spawn(p.url(""), "/api/feed", "normal", "GET");
    tokio::time::sleep(Duration::from_millis(30)).await;
    let crit = spawn(p.url(""), "/api/login", "crit", "POST");
    for t in [first, low, normal, crit] {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        *log.lock().unwrap(),
        ["holder", "crit", "normal", "low"],
        "priority first, whatever the arrival order"
    );
    p.stop().await;

    // A short longest wait: the queued request is refused with a Retry-After.
    let extra =
        "[limit]\nmode = \"fixed\"\nfull_capacity = 1\n[queue]\nmax_wait = { low = \"100ms\" }";
    let p = proxy(&config(&up.addr.to_string(), extra)).await;
    let holder = spawn(p.url(""), "/api/feed", "holder", "GET");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t = Instant::now();
    let (resp, body) = get(&p.url("/api/recommend"), &[("x-user", "late")]).await;
    assert_eq!(resp.status(), 503);
    assert!(t.elapsed() >= Duration::from_millis(100), "it waited first");
    assert!(String::from_utf8_lossy(&body).contains("queue_timeout"));
    assert!(retry_after(&resp) >= 1);
    assert_eq!(holder.await.unwrap(), 200);
    let m = metrics(&p).await;
    assert!(
        m.contains("warmgate_queue_timeouts_total{cluster=\"default\",priority=\"low\"} 1"),
        "{m}"
    );
    p.stop().await;
}

#[tokio::test]
async fn clients_that_go_away_while_queued_leave_no_residue() {
    let up = ok_upstream(Duration::from_millis(600)).await;
    let extra = "[ramp]\ntick = \"20ms\"\n[limit]\nmode = \"fixed\"\nfull_capacity = 1\n[queue]\nmax_wait = { critical = \"5s\", high = \"5s\", normal = \"5s\", low = \"5s\" }";
    let p = proxy(&config(&up.addr.to_string(), extra)).await;
    let holder = {
        let url = p.url("/api/feed");
        tokio::spawn(async move { get(&url, &[("x-user", "holder")]).await.0.status() })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    // An HTTP/1.1 client that gives up (its connection closes) and an HTTP/2 stream that is
    // reset (the client drops the request: RST_STREAM), both while queued.
    let h1c = h1();
    let h2c = h2();
    let url = p.url("/api/sync");
    let gone_h1 = tokio::time::timeout(
        Duration::from_millis(150),
        send(&h1c, "GET", &url, &[("x-user", "gone1")], full("")),
    );
    let gone_h2 = tokio::time::timeout(
        Duration::from_millis(150),
        send(&h2c, "GET", &url, &[("x-user", "gone2")], full("")),
    );
    let (a, b) = tokio::join!(gone_h1, gone_h2);
    assert!(a.is_err() && b.is_err(), "both were still waiting");
    drop(h1c);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let st = p.status().await;
    assert_eq!(st["signals"]["queued"], 0, "{st}");
    let m = metrics(&p).await;
    for prio in ["critical", "high", "normal", "low"] {
        assert!(
            m.contains(&format!(
                "warmgate_queue_length{{cluster=\"default\",priority=\"{prio}\"}} 0"
            )),
            "{m}"
        );
    }
    assert_eq!(holder.await.unwrap(), 200);
    // The slot is free again: nothing leaked, nothing was given to a client that left.
    let (resp, _) = get(&p.url("/api/sync"), &[("x-user", "next")]).await;
    assert_eq!(resp.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(p.status().await["signals"]["inflight"], 0);
    assert_eq!(
        up.hits(),
        2,
        "the requests that left never reached the upstream"
    );
    p.stop().await;
}

#[tokio::test]
async fn an_early_returner_is_held_not_answered_at_once_and_never_gets_429() {
    let up = ok_upstream(Duration::ZERO).await;
    let extra = "[ramp]\nengage = \"on_start\"\nduration = \"10m\"\n[queue]\nmax_wait = { low = \"400ms\" }\n[retry]\nratelimit_headers = true";
    let p = proxy(&config(&up.addr.to_string(), extra)).await;
    let t = Instant::now();
    let (first, _) = get(&p.url("/api/recommend"), &[("x-user", "blind")]).await;
    assert_eq!(first.status(), 503);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "a first reject is not held"
    );
    assert!(first.headers()["ratelimit-policy"]
        .to_str()
        .unwrap()
        .starts_with("\"warmup\";q="));
    let ra = retry_after(&first);
    assert_eq!(
        first.headers()["ratelimit"].to_str().unwrap(),
        format!("\"warmup\";r=0;t={ra}")
    );
    let t = Instant::now();
    let (again, body) = get(&p.url("/api/recommend"), &[("x-user", "blind")]).await;
    assert_eq!(again.status(), 503, "early is not abuse: no 429");
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "held for the low priority's longest wait: {:?}",
        t.elapsed()
    );
    assert!(String::from_utf8_lossy(&body).contains("warming_up"));
    // Early-return memory is per feature: the same user's login is not held.
    let t = Instant::now();
    let (login, _) = send(
        &h1(),
        "POST",
        &p.url("/api/login"),
        &[("x-user", "blind")],
        full(""),
    )
    .await;
    assert_eq!(login.status(), 200);
    assert!(t.elapsed() < Duration::from_millis(300));
    let m = metrics(&p).await;
    assert!(
        m.contains("warmgate_attempts_total{attempt=\"retry\"} 1"),
        "{m}"
    );
    p.stop().await;
}

#[tokio::test]
async fn shadow_mode_admits_but_records_the_decision() {
    let up = ok_upstream(Duration::ZERO).await;
    let p = proxy(&format!(
        "mode = \"shadow\"\n{}",
        config(
            &up.addr.to_string(),
            "[ramp]\nengage = \"on_start\"\nduration = \"10m\""
        )
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
async fn the_limit_finds_a_backends_knee_and_holds_it() {
    let up = knee_upstream(4, Duration::from_millis(20)).await;
    let extra = "[limit]\ninitial = 2\n[queue]\nmax_wait = { critical = \"5s\" }";
    let p = proxy(&config(&up.addr.to_string(), extra)).await;
    let stop = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..24)
        .map(|i| {
            let (url, stop) = (p.url("/api/login"), stop.clone());
            tokio::spawn(async move {
                let client = h1();
                while stop.load(Ordering::SeqCst) == 0 {
                    let user = format!("k{i}");
                    let _ = send(&client, "POST", &url, &[("x-user", &user)], full("")).await;
                }
            })
        })
        .collect();
    // Sample the limit over seconds 2..4 of the load.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut limits = Vec::new();
    for _ in 0..20 {
        limits.push(p.status().await["controller"]["limit"].as_u64().unwrap());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(1, Ordering::SeqCst);
    for c in clients {
        let _ = c.await;
    }
    let mean = limits.iter().sum::<u64>() as f64 / limits.len() as f64;
    // 24 clients press on a knee of 4: the limit stays near 4, not near the demand.
    assert!((3.0..=8.0).contains(&mean), "mean limit {mean}: {limits:?}");
    p.stop().await;
}

#[tokio::test]
async fn metrics_and_status_describe_the_controller() {
    let up = ok_upstream(Duration::ZERO).await;
    let p = proxy(&config(&up.addr.to_string(), "[ramp]\ntick = \"50ms\"")).await;
    send(
        &h1(),
        "POST",
        &p.url("/api/login"),
        &[("x-user", "m")],
        full(""),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    let m = metrics(&p).await;
    for name in [
        "warmgate_requests_total{cluster=\"default\",feature=\"login\",outcome=\"admitted\",priority=\"critical\"} 1",
        "warmgate_admission_limit",
        "warmgate_inflight",
        "warmgate_ramp_progress_ratio",
        "warmgate_ramp_engaged{cluster=\"default\"} 0",
        "warmgate_stage{cluster=\"default\"} 0",
        "warmgate_upstream_latency_seconds_bucket",
        "warmgate_cache_hit_ratio{cluster=\"default\"} 1",
        "warmgate_controller_state{cluster=\"default\",state=\"open\"} 1",
        "warmgate_queue_length{cluster=\"default\",priority=\"critical\"} 0",
        "warmgate_queue_wait_seconds_bucket{cluster=\"default\",priority=\"low\"",
        "warmgate_latency_inflation_ratio",
        "warmgate_stage_eta_seconds{cluster=\"default\",priority=\"low\"} 0",
        "warmgate_retry_share_ratio",
    ] {
        assert!(m.contains(name), "{name} missing:\n{m}");
    }
    let st = p.status().await;
    assert_eq!(st["controller"]["engaged"], false);
    assert_eq!(st["controller"]["engage"], "auto");
    assert_eq!(st["stages"]["low"]["admitted"], true);
    assert_eq!(st["controller"]["limit_mode"], "adaptive");
    assert_eq!(st["signals"]["hit_ratio"], 1.0);
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
    send(
        &h1(),
        "POST",
        &p.url("/api/login"),
        &[("x-user", "s")],
        full(""),
    )
    .await;
    let t = Instant::now();
    loop {
        let st = p.status().await;
        if st["signals"]["hit_ratio"] == 0.8 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "not scraped: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_frees_its_slot_after_the_send_timeout() {
    use tokio::io::AsyncWriteExt;
    let big = bytes::Bytes::from(vec![b'x'; 32 << 20]);
    let up = upstream(Arc::new(move |_req| {
        let big = big.clone();
        Box::pin(async move { Response::new(full(big)) })
    }))
    .await;
    let extra = "[server]\nsend_timeout = \"1s\"\n[limit]\nmode = \"fixed\"\nfull_capacity = 1\n[queue]\nmax_wait = { normal = \"10s\" }";
    let p = proxy(&config(&up.addr.to_string(), extra)).await;
    // Asks for 32 MiB and never reads a byte of it: its slot is pinned until the send times out.
    let mut stalled = tokio::net::TcpStream::connect(p.addr).await.unwrap();
    stalled
        .write_all(b"GET /api/feed HTTP/1.1\r\nhost: x\r\nx-user: slow\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(p.status().await["signals"]["inflight"], 1);
    let t = Instant::now();
    let (resp, body) = get(&p.url("/api/feed"), &[("x-user", "next")]).await;
    assert_eq!(
        resp.status(),
        200,
        "{}",
        String::from_utf8_lossy(&body[..body.len().min(200)])
    );
    assert!(
        t.elapsed() >= Duration::from_millis(500) && t.elapsed() < Duration::from_secs(5),
        "waited for the stalled client's send timeout: {:?}",
        t.elapsed()
    );
    drop(stalled);
    p.stop().await;
}

#[tokio::test]
async fn a_client_sending_a_broken_body_is_not_an_upstream_error() {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that reads the whole request body before answering.
    let up = upstream(Arc::new(|req| {
        Box::pin(async move {
            let _ = req.into_body().collect().await;
            Response::builder()
                .header("x-cache", "HIT")
                .body(full("ok"))
                .unwrap()
        })
    }))
    .await;
    let p = proxy(&config(&up.addr.to_string(), "[ramp]\ntick = \"20ms\"")).await;
    // One good request first: the window then holds a backend sample, so the checks below read
    // a controller that ran (an idle one would pass them too).
    let (resp, _) = send(
        &h1(),
        "POST",
        &p.url("/api/feed"),
        &[("x-user", "first")],
        full("fine"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    for i in 0..20 {
        let mut s = tokio::net::TcpStream::connect(p.addr).await.unwrap();
        let head = format!(
            "POST /api/feed HTTP/1.1\r\nhost: x\r\nx-user: bad{i}\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 400"),
            "a client fault is a 400 (or a closed connection): {text}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = metrics(&p).await;
    let upstream_errors: f64 = m
        .lines()
        .find(|l| {
            l.starts_with(
                "warmgate_requests_total{cluster=\"default\",feature=\"feed\",outcome=\"upstream_error\",priority=\"normal\"}",
            )
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("every outcome of a feature is exported from the start");
    assert_eq!(upstream_errors, 0.0, "{m}");
    let st = p.status().await;
    assert_eq!(st["signals"]["samples"], 1, "only the good request: {st}");
    assert_eq!(st["signals"]["error_rate"], 0.0, "{st}");
    // The limit was not cut for what the clients did.
    assert!(
        st["controller"]["limit_algorithm"].as_u64().unwrap() >= 8,
        "{st}"
    );
    // A good request still goes through.
    let (resp, _) = send(
        &h1(),
        "POST",
        &p.url("/api/feed"),
        &[("x-user", "good")],
        full("fine"),
    )
    .await;
    assert_eq!(resp.status(), 200);
    p.stop().await;
}
