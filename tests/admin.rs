//! The admin API: every route is in the OpenAPI document and the other way round, writes need a
//! token, bad values are refused naming the field, `if_version` guards against a lost update,
//! overrides survive a reload, and every write is audited.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::BodyExt;
use serde_json::{json, Value};

const TOKEN: &str = "ops:0123456789abcdef0123";
const SECRET: &str = "0123456789abcdef0123";

struct Running {
    proxy: Proxy,
    dir: tempfile::TempDir,
}

async fn start(upstream: &str) -> Running {
    start_with(upstream, "").await
}

async fn start_with(upstream: &str, extra: &str) -> Running {
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[upstream]\nendpoints = [\"{upstream}\"]\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"tokens\"\naudit_log = \"audit.log\"\n[[feature]]\nname = \"login\"\npriority = \"critical\"\n[[feature]]\nname = \"recommend\"\npriority = \"low\"\n[[route]]\nfeature = \"recommend\"\npath_prefix = \"/api/recommend\"\n{extra}"
    );
    let (proxy, dir) = proxy_from_file(&text, &[("tokens", &format!("{TOKEN}\n"))]).await;
    Running { proxy, dir }
}

async fn call(
    admin: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"))
        .header("content-type", "application/json");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let resp = h1().request(b.body(full(body)).unwrap()).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, v)
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_answers() {
    let doc: Value = serde_json::from_str(warmgate::admin::api::OPENAPI).unwrap();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .filter(|m| m.as_str() != "parameters")
                .map(|m| (m.to_uppercase(), p.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let served: BTreeSet<(String, String)> = warmgate::admin::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served);

    let up = ok_upstream(Duration::ZERO).await;
    let r = start(&up.addr.to_string()).await;
    let admin = r.proxy.admin;
    for (m, p) in &served {
        let path = p
            .replace("{name}", "recommend")
            .replace("{cluster}", "default");
        let body = match path.replace("/clusters/default", "").as_str() {
            "/api/v1/ramp/progress" => json!({ "value": 0.5 }),
            "/api/v1/limit" => json!({ "value": "auto" }),
            "/api/v1/features/recommend" => json!({ "state": "auto" }),
            "/api/v1/ramp/curve" => json!({ "curve": "exponential" }),
            "/api/v1/ramp/stages" => {
                json!({ "stages": { "critical": 0.0, "high": 0.1, "normal": 0.4, "low": 0.7 } })
            }
            "/api/v1/signals" => json!({ "latency_p99": { "warn": "300ms", "critical": "900ms" } }),
            _ => Value::Null,
        };
        let (status, v) = call(admin, m, &path, Some(SECRET), body).await;
        assert_eq!(status, 200, "{m} {path}: {v}");
    }
    let (status, _) = call(admin, "GET", "/api/v1/nope", None, Value::Null).await;
    assert_eq!(status, 404);
    let (status, _) = call(admin, "DELETE", "/api/v1/limit", Some(SECRET), Value::Null).await;
    assert_eq!(status, 405);
    r.proxy.stop().await;
}

#[tokio::test]
async fn writes_need_a_token_are_validated_guarded_by_version_audited_and_kept_across_a_reload() {
    let up = ok_upstream(Duration::ZERO).await;
    let r = start(&up.addr.to_string()).await;
    let admin = r.proxy.admin;
    // Reads on loopback need no token; writes do.
    let (status, st) = call(admin, "GET", "/api/v1/status", None, Value::Null).await;
    assert_eq!(status, 200);
    let version = st["version"].as_u64().unwrap();
    let (status, _) = call(
        admin,
        "PUT",
        "/api/v1/features/recommend",
        None,
        json!({ "state": "off" }),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = call(
        admin,
        "PUT",
        "/api/v1/features/recommend",
        Some("wrong-token-wrong-token"),
        json!({ "state": "off" }),
    )
    .await;
    assert_eq!(status, 401);
    // A bad value names the field and changes nothing.
    let (status, v) = call(
        admin,
        "PUT",
        "/api/v1/ramp/progress",
        Some(SECRET),
        json!({ "value": 1.5 }),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(v["field"], "value");
    let (status, v) = call(
        admin,
        "PUT",
        "/api/v1/features/recommend",
        Some(SECRET),
        json!({ "state": "sometimes" }),
    )
    .await;
    assert_eq!((status, v["field"].as_str()), (400, Some("state")));
    let (status, v) = call(
        admin,
        "PUT",
        "/api/v1/features/nope",
        Some(SECRET),
        json!({ "state": "off" }),
    )
    .await;
    assert_eq!(status, 404, "{v}");
    // Switch recommend off, against the version just read.
    let (status, v) = call(
        admin,
        "PUT",
        "/api/v1/features/recommend",
        Some(SECRET),
        json!({ "state": "off", "if_version": version }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["before"]["state"], "auto");
    // The same stale version again: someone changed things since.
    let (status, v) = call(
        admin,
        "POST",
        "/api/v1/ramp/engage",
        Some(SECRET),
        json!({ "if_version": version }),
    )
    .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["version"], version + 1);
    // The switch applies to traffic at once.
    let (resp, _) = get(&r.proxy.url("/api/recommend"), &[]).await;
    assert_eq!(resp.status(), 503);
    // It outlives a reload of the file, and status shows it as an override.
    let (status, v) = call(admin, "POST", "/api/v1/reload", Some(SECRET), Value::Null).await;
    assert_eq!(status, 200, "{v}");
    let (resp, _) = get(&r.proxy.url("/api/recommend"), &[]).await;
    assert_eq!(resp.status(), 503, "the override survived the reload");
    let (_, st) = call(admin, "GET", "/api/v1/status", None, Value::Null).await;
    assert_eq!(st["overrides"]["features"]["recommend"], "off");
    // Released: back to the file's state.
    let (status, _) = call(
        admin,
        "PUT",
        "/api/v1/features/recommend",
        Some(SECRET),
        json!({ "state": "release" }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        get(&r.proxy.url("/api/recommend"), &[]).await.0.status(),
        200
    );
    // A fixed limit shows in the status after the next tick, and "auto" releases it.
    let (status, _) = call(
        admin,
        "PUT",
        "/api/v1/limit",
        Some(SECRET),
        json!({ "value": 3 }),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, st) = call(admin, "GET", "/api/v1/status", None, Value::Null).await;
    assert_eq!(st["controller"]["limit"], 3);
    assert_eq!(st["overrides"]["limit"], 3);
    // Every write, refused or not, is in the audit log and its file.
    let (_, audit) = call(admin, "GET", "/api/v1/audit", None, Value::Null).await;
    let entries = audit["entries"].as_array().unwrap();
    let results: Vec<&str> = entries
        .iter()
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert!(
        results.iter().filter(|r| r.starts_with("401")).count() >= 2,
        "{results:?}"
    );
    assert!(results.iter().any(|r| r.starts_with("409")), "{results:?}");
    assert!(results.iter().any(|r| r.starts_with("400")), "{results:?}");
    let ok = entries.iter().find(|e| e["result"] == "ok").unwrap();
    assert_eq!(ok["caller"]["token"], "ops");
    let file = std::fs::read_to_string(r.dir.path().join("audit.log")).unwrap();
    assert_eq!(file.lines().count(), entries.len());
    r.proxy.stop().await;
}

#[tokio::test]
async fn curve_stages_and_signal_targets_are_validated_like_the_file_and_outlive_a_reload() {
    let up = ok_upstream(Duration::ZERO).await;
    let r = start(&up.addr.to_string()).await;
    let admin = r.proxy.admin;
    let (status, v) = call(
        admin,
        "PUT",
        "/api/v1/ramp/curve",
        Some(SECRET),
        json!({ "curve": "points", "points": [[0.0, 0.1], [0.5, 1.5]] }),
    )
    .await;
    assert_eq!(
        (status, v["field"].as_str()),
        (400, Some("points[1]")),
        "{v}"
    );
    let (status, v) = call(
        admin,
        "PUT",
        "/api/v1/signals",
        Some(SECRET),
        json!({ "latency_p99": { "warn": "2s", "critical": "1s" } }),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["field"].as_str().unwrap().starts_with("latency_p99"),
        "{v}"
    );
    let (status, v) = call(
        admin,
        "PUT",
        "/api/v1/ramp/stages",
        Some(SECRET),
        json!({ "stages": { "critical": 0.0, "high": 0.3, "normal": 0.6, "low": 0.9 } }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = call(admin, "POST", "/api/v1/reload", Some(SECRET), Value::Null).await;
    assert_eq!(status, 200);
    let (_, st) = call(admin, "GET", "/api/v1/status", None, Value::Null).await;
    assert_eq!(
        st["stages"]["low"]["stage"], 0.9,
        "kept across the reload: {st}"
    );
    assert_eq!(st["overrides"]["stages"], json!([0.9, 0.6, 0.3, 0.0]));
    r.proxy.stop().await;
}

#[tokio::test]
async fn a_reload_reads_the_tokens_again() {
    let up = ok_upstream(Duration::ZERO).await;
    let r = start(&up.addr.to_string()).await;
    let admin = r.proxy.admin;
    let rotated = "fedcba9876543210fedcba";
    std::fs::write(r.dir.path().join("tokens"), format!("ops2:{rotated}\n")).unwrap();
    let (status, v) = call(admin, "POST", "/api/v1/reload", Some(SECRET), Value::Null).await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = call(
        admin,
        "POST",
        "/api/v1/ramp/pause",
        Some(SECRET),
        Value::Null,
    )
    .await;
    assert_eq!(status, 401, "the old token is gone");
    let (status, _) = call(
        admin,
        "POST",
        "/api/v1/ramp/pause",
        Some(rotated),
        Value::Null,
    )
    .await;
    assert_eq!(status, 200);
    r.proxy.stop().await;
}

#[tokio::test]
async fn a_watched_file_is_reloaded_when_it_changes() {
    let up = ok_upstream(Duration::ZERO).await;
    let r = start_with(
        &up.addr.to_string(),
        "[reload]\nwatch = true\ndebounce = \"100ms\"\n",
    )
    .await;
    assert_eq!(
        get(&r.proxy.url("/api/recommend"), &[]).await.0.status(),
        200
    );
    let path = r.dir.path().join("w.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    // Switch recommend off in the file.
    let changed = text.replace(
        "name = \"recommend\"\npriority = \"low\"\n",
        "name = \"recommend\"\npriority = \"low\"\nstate = \"off\"\n",
    );
    assert_ne!(changed, text);
    std::fs::write(&path, changed).unwrap();
    let t = std::time::Instant::now();
    while get(&r.proxy.url("/api/recommend"), &[]).await.0.status() != 503 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.proxy.stop().await;
}

#[test]
fn an_admin_listener_off_loopback_needs_a_token() {
    let e = warmgate::config::load_str(
        "w.toml",
        "[upstream]\nendpoints = [\"127.0.0.1:9\"]\n[admin]\nlisten = \"0.0.0.0:9901\"\n",
    )
    .unwrap_err();
    assert!(e[0].to_string().contains("admin.listen: an admin listener off loopback needs admin.token_file or admin.token_env"), "{e:?}");
}

#[tokio::test]
async fn bad_input_gets_a_clear_answer() {
    let up = ok_upstream(Duration::ZERO).await;
    let r = start(&up.addr.to_string()).await;
    let admin = r.proxy.admin;
    let (status, v) = call(admin, "GET", "/api/v1/nothing", None, Value::Null).await;
    assert_eq!(status, 404);
    assert!(v["error"].as_str().unwrap().contains("openapi"), "{v}");
    let (status, v) = call(
        admin,
        "PUT",
        "/api/v1/ramp/progress",
        Some(SECRET),
        json!({ "valeu": 0.3 }),
    )
    .await;
    assert_eq!((status, v["field"].as_str()), (400, Some("valeu")), "{v}");
    let req = Request::builder()
        .method("PUT")
        .uri(format!("http://{admin}/api/v1/ramp/progress"))
        .header("authorization", format!("Bearer {SECRET}"))
        .body(full("{not json"))
        .unwrap();
    let resp = h1().request(req).await.unwrap();
    assert_eq!(resp.status(), 400);
    let big = format!("{{\"value\": 0.5, \"pad\": \"{}\"}}", "x".repeat(100_000));
    let req = Request::builder()
        .method("PUT")
        .uri(format!("http://{admin}/api/v1/ramp/progress"))
        .header("authorization", format!("Bearer {SECRET}"))
        .body(full(big))
        .unwrap();
    let resp = h1().request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    r.proxy.stop().await;
}
