//! The dashboard in a real browser (headless Chromium driven over WebDriver): under a little
//! traffic its numbers move, and a feature switch clicked on the page reaches warmgate and shows
//! on the page. Saves a screenshot to `target/dashboard.png`. Reported as ignored, with the
//! reason, where Chromium is not installed (CI installs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::process::{wait_for_port, Reaped};
use common::*;
use http::Request;
use http_body_util::BodyExt;
use serde_json::{json, Value};

const SECRET: &str = "dashboard-token-0123456789";

/// One WebDriver call.
async fn wd(base: &str, method: &str, path: &str, body: Value) -> Value {
    let req = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(full(if body.is_null() {
            String::new()
        } else {
            body.to_string()
        }))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), h1().request(req))
        .await
        .expect("webdriver answered")
        .unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice::<Value>(&bytes).unwrap()["value"].clone()
}

/// Runs `js` in the page (`args` as `arguments`), returning its value.
async fn exec(base: &str, session: &str, js: &str, args: Value) -> Value {
    wd(
        base,
        "POST",
        &format!("{session}/execute/sync"),
        json!({ "script": js, "args": args }),
    )
    .await
}

/// One browser at a time: each test's chromedriver takes a port picked free a moment before,
/// and two tests picking at once could get the same one (the second driver then fails to bind
/// and its test talks to, and outlives, the other's).
static BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Headless Chromium on the dashboard of the admin listener at `admin`.
struct Page {
    _driver: Reaped,
    _profile: tempfile::TempDir,
    base: String,
    session: String,
    // Fields drop in order: the driver and its port are gone before the next test takes this.
    _one: tokio::sync::MutexGuard<'static, ()>,
}

impl Page {
    async fn open(admin: std::net::SocketAddr) -> Page {
        let one = BROWSER.lock().await;
        let port = free_port();
        let _driver = Reaped(
            Command::new("/usr/bin/chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for_port(port, "chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let session = wd(
            &base,
            "POST",
            "/session",
            json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome", "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1500,1100",
                         format!("--user-data-dir={}", profile.path().display())],
            } } } }),
        )
        .await;
        let id = session["sessionId"]
            .as_str()
            .expect("a session")
            .to_string();
        let s = format!("/session/{id}");
        wd(
            &base,
            "POST",
            &format!("{s}/url"),
            json!({ "url": format!("http://{admin}/") }),
        )
        .await;
        Page {
            _driver,
            _profile: profile,
            base,
            session: s,
            _one: one,
        }
    }

    async fn close(self) {
        wd(&self.base, "DELETE", &self.session, Value::Null).await;
    }
}

#[tokio::test]
#[cfg_attr(
    not(chromium_available),
    ignore = "Chromium is not installed (apt-get install -y chromium chromium-driver); CI installs it"
)]
async fn the_dashboard_moves_and_its_feature_switch_round_trips() {
    let up = ok_upstream(Duration::from_millis(2)).await;
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nendpoints = [\"{}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"tokens\"\n[client_key]\nheader = \"x-user\"\n[[feature]]\nname = \"login\"\npriority = \"critical\"\n[[feature]]\nname = \"recommend\"\npriority = \"low\"\n[[route]]\nfeature = \"recommend\"\npath_prefix = \"/api/recommend\"\n[[route]]\nfeature = \"login\"\npath_prefix = \"/api/login\"\n",
        up.addr
    );
    let tokens = format!("ops:{SECRET}\n");
    let (p, _dir) = proxy_from_file(&text, &[("tokens", &tokens)]).await;
    let admin = p.admin;

    // A little traffic, all along.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, base) = (Arc::clone(&stop), p.url(""));
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let path = if n.is_multiple_of(2) {
                    "/api/login"
                } else {
                    "/api/recommend"
                };
                let _ = get(&format!("{base}{path}"), &[("x-user", &format!("u{n}"))]).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let page = Page::open(admin).await;
    let (base, s) = (page.base.clone(), page.session.clone());
    // The numbers move: samples accumulate and admissions are counted per second.
    let samples = || exec(&base, &s, "return t.length", json!([]));
    tokio::time::sleep(Duration::from_secs(4)).await;
    let first = samples().await.as_u64().unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = samples().await.as_u64().unwrap_or(0);
    assert!(first >= 2 && later > first, "samples {first} then {later}");
    let admitted = exec(
        &base,
        &s,
        "return (series['admitted:critical'] || []).some(v => v > 0)",
        json!([]),
    )
    .await;
    assert_eq!(admitted, json!(true), "admissions per second drawn");

    // A feature switched off on the page reaches warmgate and comes back on the page.
    exec(
        &base,
        &s,
        "document.getElementById('token').value = arguments[0]; document.querySelector('tr[data-feature=\"recommend\"] button[data-state=\"off\"]').click(); return true",
        json!([SECRET]),
    )
    .await;
    let t = Instant::now();
    loop {
        let (_, body) = get(&format!("http://{admin}/api/v1/status"), &[]).await;
        let st: Value = serde_json::from_slice(&body).unwrap();
        if st["overrides"]["features"]["recommend"] == "off" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the switch did not reach warmgate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t = Instant::now();
    loop {
        let shown = exec(
            &base,
            &s,
            "return document.querySelector('tr[data-feature=\"recommend\"] .state').textContent",
            json!([]),
        )
        .await;
        if shown == json!("off (override)") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the page shows {shown}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (resp, _) = get(&p.url("/api/recommend"), &[("x-user", "z")]).await;
    assert_eq!(resp.status(), 503, "recommend is off for real");

    // Opened again, the page starts with the history warmgate kept, not empty charts.
    let (_, body) = get(&format!("http://{admin}/api/v1/history"), &[]).await;
    let kept = serde_json::from_slice::<Value>(&body).unwrap()["points"]
        .as_array()
        .unwrap()
        .len();
    assert!(kept >= 8, "{kept} points kept");
    wd(
        &base,
        "POST",
        &format!("{s}/url"),
        json!({ "url": format!("http://{admin}/") }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let drawn = samples().await.as_u64().unwrap_or(0);
    assert!(
        drawn as usize >= kept - 1,
        "{drawn} samples drawn of {kept} kept"
    );
    let png = wd(&base, "GET", &format!("{s}/screenshot"), Value::Null).await;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(png.as_str().unwrap())
        .unwrap();
    assert!(bytes.starts_with(b"\x89PNG"));
    std::fs::write(
        concat!(env!("CARGO_TARGET_TMPDIR"), "/dashboard.png"),
        &bytes,
    )
    .unwrap();
    page.close().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = load.await;
    p.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(chromium_available),
    ignore = "Chromium is not installed (apt-get install -y chromium chromium-driver); CI installs it"
)]
async fn the_dashboard_shows_every_cluster_and_steers_the_one_picked() {
    let up = ok_upstream(Duration::from_millis(2)).await;
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"tokens\"\n[[cluster]]\nname = \"auth\"\nendpoints = [\"{a}\"]\n[[cluster]]\nname = \"feed\"\nendpoints = [\"{a}\"]\n[[feature]]\nname = \"login\"\npriority = \"critical\"\ncluster = \"auth\"\n[[feature]]\nname = \"feed\"\npriority = \"normal\"\ncluster = \"feed\"\n",
        a = up.addr
    );
    let tokens = format!("ops:{SECRET}\n");
    let (p, _dir) = proxy_from_file(&text, &[("tokens", &tokens)]).await;
    let admin = p.admin;
    let page = Page::open(admin).await;
    let (base, s) = (page.base.clone(), page.session.clone());
    // The data-center overview lists both clusters.
    let t = Instant::now();
    loop {
        let rows = exec(&base, &s, "return Array.from(document.querySelectorAll('#overview tr[data-cluster]')).map(r => r.dataset.cluster)", json!([])).await;
        if rows == json!(["auth", "feed"]) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "overview rows {rows}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Pick feed, engage its ramp from the page: feed is engaged, auth is not.
    exec(
        &base,
        &s,
        "document.getElementById('token').value = arguments[0]; const sel = document.getElementById('cluster'); sel.value = 'feed'; sel.dispatchEvent(new Event('change')); document.querySelector('button[data-post=\"/api/v1/ramp/engage\"]').click(); return true",
        json!([SECRET]),
    )
    .await;
    let t = Instant::now();
    loop {
        let st = p.status().await;
        let engaged = |i: usize| st["clusters"][i]["controller"]["engaged"].clone();
        if engaged(1) == json!(true) {
            assert_eq!(engaged(0), json!(false), "auth untouched");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "feed not engaged: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The page now shows feed's state and only feed's features.
    let t = Instant::now();
    loop {
        let shown = exec(&base, &s, "return [document.getElementById('state').textContent, Array.from(document.querySelectorAll('#features tr[data-feature]')).map(r => r.dataset.feature)]", json!([])).await;
        if shown[0].as_str().is_some_and(|x| x.contains("engaged")) && shown[1] == json!(["feed"]) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the page shows {shown}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    page.close().await;
    p.stop().await;
}

#[tokio::test]
#[cfg_attr(
    not(chromium_available),
    ignore = "Chromium is not installed (apt-get install -y chromium chromium-driver); CI installs it"
)]
async fn the_dashboard_shows_the_fleet_and_every_instances_share() {
    let port = free_port();
    let _redis = common::redis::start(port);
    let up = ok_upstream(Duration::from_millis(2)).await;
    let tokens = format!("ops:{SECRET}\n");
    let mut ps = Vec::new();
    let mut dirs = Vec::new();
    for name in ["edge-a", "edge-b"] {
        let text = format!(
            "listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"tokens\"\n[upstream]\nendpoints = [\"{}\"]\n[ramp]\ntick = \"50ms\"\n[fleet]\nstore = \"redis://127.0.0.1:{port}/0\"\ninstance = \"{name}\"\n",
            up.addr
        );
        let (p, d) = proxy_from_file(&text, &[("tokens", &tokens)]).await;
        ps.push(p);
        dirs.push(d);
    }
    let page = Page::open(ps[0].admin).await;
    let (base, s) = (page.base.clone(), page.session.clone());
    let t = Instant::now();
    loop {
        let shown = exec(&base, &s, "return [document.getElementById('fleet-card').hidden, document.getElementById('fleet-line').textContent, Array.from(document.querySelectorAll('#fleet tr')).slice(1).map(r => r.cells[0].textContent)]", json!([])).await;
        let line = shown[1].as_str().unwrap_or("");
        if shown[0] == json!(false)
            && line.contains("instance edge-a")
            && line.contains(" up")
            && shown[2] == json!(["edge-a (this one)", "edge-b"])
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "the page shows {shown}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    page.close().await;
    for p in ps {
        p.stop().await;
    }
}

/// Polls the page until `js` returns what `done` accepts.
async fn until(base: &str, s: &str, js: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let v = exec(base, s, js, json!([])).await;
        if done(&v) {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(6),
            "{what}: the page shows {v}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[tokio::test]
#[cfg_attr(
    not(chromium_available),
    ignore = "Chromium is not installed (apt-get install -y chromium chromium-driver); CI installs it"
)]
async fn the_dashboard_draws_the_ramp_curve_and_applies_an_edit_only_when_asked() {
    let up = ok_upstream(Duration::from_millis(2)).await;
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nendpoints = [\"{}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"tokens\"\n[ramp]\nengage = \"on_start\"\ncurve = \"linear\"\nstart_fraction = 0.2\n",
        up.addr
    );
    let tokens = format!("ops:{SECRET}\n");
    let (p, _dir) = proxy_from_file(&text, &[("tokens", &tokens)]).await;
    let page = Page::open(p.admin).await;
    let (base, s) = (page.base.clone(), page.session.clone());

    // The curve in force, where the ramp is, and where each of the four stages opens.
    let drawn = until(&base, &s,
        "const o = document.getElementById('curve-old'); return o ? [o.getAttribute('points').split(' ').length, document.querySelectorAll('#curve .curve-stage').length, !!document.getElementById('curve-now'), !!document.getElementById('curve-new'), document.getElementById('curve-kind').value] : null",
        "the curve drawn", |v| !v.is_null()).await;
    assert_eq!(drawn, json!([41, 4, true, false, "linear"]));
    // Linear from the start fraction: the first point sits at 0.2 of the full limit, the last
    // at the full limit (the page's y axis runs from 168 at 0 to 8 at full).
    let ends = exec(&base, &s, "const p = document.getElementById('curve-old').getAttribute('points').split(' '); return [p[0].split(',')[1], p[40].split(',')[1]]", json!([])).await;
    assert_eq!(ends, json!(["136.0", "8.0"]));
    let old = exec(
        &base,
        &s,
        "return document.getElementById('curve-old').getAttribute('points')",
        json!([]),
    )
    .await;

    // An edit is drawn beside the curve in force and changes nothing in warmgate.
    exec(&base, &s,
        "document.getElementById('token').value = arguments[0]; const k = document.getElementById('curve-kind'); k.value = 'points'; k.dispatchEvent(new Event('change')); const i = document.getElementById('curve-points'); i.value = '0:0.1 0.5:0.2 1:1'; i.dispatchEvent(new Event('input')); return true",
        json!([SECRET])).await;
    let preview = until(&base, &s,
        "const n = document.getElementById('curve-new'); return n ? [n.getAttribute('points'), document.getElementById('curve-old').getAttribute('points')] : null",
        "the edit drawn", |v| !v.is_null()).await;
    assert_ne!(
        preview[0], preview[1],
        "the edit is drawn apart from the curve in force"
    );
    assert_eq!(
        preview[1], old,
        "the curve in force is still drawn as it was"
    );
    // Through at least one refresh, the edit stays an edit.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(
        p.status().await["controller"]["curve"],
        "linear",
        "nothing applied yet"
    );
    let still = exec(&base, &s, "return [document.getElementById('curve-kind').value, document.getElementById('curve-points').value, !!document.getElementById('curve-new')]", json!([])).await;
    assert_eq!(
        still,
        json!(["points", "0:0.1 0.5:0.2 1:1", true]),
        "a refresh keeps the edit"
    );

    // Applied: warmgate runs the new curve, and the page draws it as the one in force.
    exec(
        &base,
        &s,
        "document.getElementById('curve-apply').click(); return true",
        json!([]),
    )
    .await;
    let t = Instant::now();
    loop {
        let st = p.status().await;
        if st["controller"]["curve"] == "points" {
            assert_eq!(
                st["controller"]["points"],
                json!([[0.0, 0.1], [0.5, 0.2], [1.0, 1.0]])
            );
            assert_eq!(st["controller"]["curve_points"][10], json!([0.5, 0.2]));
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the curve was not applied: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let preview_points = preview[0].clone();
    until(&base, &s,
        "const o = document.getElementById('curve-old'); return [o.getAttribute('points'), !!document.getElementById('curve-new')]",
        "the applied curve drawn as the one in force",
        |v| v[0] == preview_points && v[1] == json!(false)).await;
    let (_, body) = get(
        &format!("http://{}/api/v1/audit", p.admin),
        &[("authorization", &format!("Bearer {SECRET}"))],
    )
    .await;
    assert!(
        String::from_utf8_lossy(&body).contains("ramp/curve"),
        "the write is audited"
    );

    // A curve warmgate would refuse in the file is refused here, naming the field, and the
    // curve in force stays.
    exec(&base, &s,
        "const i = document.getElementById('curve-points'); i.value = '0:0.5 0.6:0.2 0.3:1'; i.dispatchEvent(new Event('input')); document.getElementById('curve-apply').click(); return true",
        json!([])).await;
    let msg = until(
        &base,
        &s,
        "return document.getElementById('curve-msg').textContent",
        "the refusal shown",
        |v| v.as_str().is_some_and(|m| m.starts_with("400")),
    )
    .await;
    assert!(msg.as_str().unwrap_or("").contains("points"), "{msg}");
    assert_eq!(
        p.status().await["controller"]["points"][1],
        json!([0.5, 0.2])
    );
    // And a typo is caught on the page before anything is sent.
    exec(&base, &s,
        "const i = document.getElementById('curve-points'); i.value = '0:0.1 half:1'; i.dispatchEvent(new Event('input')); return true",
        json!([])).await;
    let typo = until(
        &base,
        &s,
        "return document.getElementById('curve-msg').textContent",
        "the typo shown",
        |v| v.as_str().is_some_and(|m| m.contains("half")),
    )
    .await;
    assert!(
        typo.as_str().unwrap_or("").contains("progress:fraction"),
        "{typo}"
    );
    page.close().await;
    p.stop().await;
}
