//! `warmgate ctl` against a running warmgate with two clusters: the ramp's curve, stages and
//! signal targets edited live per cluster, validated as the file is, errors naming the field.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const TOKEN: &str = "ops:0123456789abcdef0123";

/// Runs `warmgate ctl ARGS` against `p`; (exit code, stdout, stderr).
async fn ctl(p: &Proxy, args: &[&str]) -> (i32, String, String) {
    let admin = p.admin.to_string();
    let secret = TOKEN.split_once(':').unwrap().1.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_warmgate"))
            .args(["ctl", "--admin", &admin, "--token", &secret])
            .args(&args)
            .env_remove("WARMGATE_CLUSTER")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

fn cluster<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_edits_one_clusters_ramp_and_names_the_field_it_refuses() {
    let up = ok_upstream(Duration::ZERO).await;
    let text = format!(
        r#"listen = "127.0.0.1:0"
[admin]
listen = "127.0.0.1:0"
token_file = "tokens"
[[cluster]]
name = "auth"
endpoints = ["{a}"]
[[cluster]]
name = "feed"
endpoints = ["{a}"]
[[feature]]
name = "login"
priority = "critical"
cluster = "auth"
[[feature]]
name = "feed"
priority = "normal"
cluster = "feed"
"#,
        a = up.addr
    );
    let (p, _dir) = proxy_from_file(&text, &[("tokens", TOKEN)]).await;

    let (code, out, err) = ctl(&p, &["--cluster", "feed", "stages", "low=0.9"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = ctl(
        &p,
        &[
            "--cluster",
            "auth",
            "curve",
            "points",
            "0:0.1",
            "0.5:0.3",
            "1:1",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = ctl(
        &p,
        &[
            "--cluster",
            "feed",
            "signals",
            "--latency-p99",
            "300ms:900ms",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let st = p.status().await;
    let (auth, feed) = (cluster(&st, "auth"), cluster(&st, "feed"));
    assert_eq!(feed["stages"]["low"]["stage"], 0.9);
    assert_eq!(
        feed["stages"]["normal"]["stage"], auth["stages"]["normal"]["stage"],
        "the others kept theirs"
    );
    assert_ne!(
        auth["stages"]["low"]["stage"], 0.9,
        "auth's stages untouched"
    );
    assert_eq!(auth["controller"]["curve"], "points");
    assert_eq!(feed["controller"]["curve"], "linear");
    assert_eq!(auth["controller"]["curve_points"][10][1], 0.3);
    assert_eq!(feed["overrides"]["latency_p99_ms"]["warn"], 300.0);
    assert!(auth["overrides"]["latency_p99_ms"].is_null());

    // Refused, with the field named and exit code 1; nothing changed.
    let (code, _, err) = ctl(
        &p,
        &[
            "--cluster",
            "feed",
            "signals",
            "--latency-p99",
            "900ms:300ms",
        ],
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("latency_p99.warn"), "{err}");
    let (code, _, err) = ctl(&p, &["curve", "points", "0:0.1", "half:0.5"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("points[1]"), "{err}");
    let (code, _, err) = ctl(&p, &["curve", "points", "0.5:0.1", "0.2:0.5"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("points"), "{err}");
    let (code, _, err) = ctl(&p, &["stages", "urgent=0.1"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("stages.urgent"), "{err}");
    let (code, _, err) = ctl(&p, &["--cluster", "nope", "engage"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no cluster \"nope\" (clusters: auth, feed)"),
        "{err}"
    );
    let (code, _, err) = ctl(&p, &["--cluster", "nope", "status"]).await;
    assert_eq!(code, 1, "{err}");

    // The status table names every cluster; --cluster shows one.
    let (code, out, _) = ctl(&p, &["status"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("cluster    auth") && out.contains("cluster    feed"),
        "{out}"
    );
    let (code, out, _) = ctl(&p, &["--cluster", "feed", "status"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("feature    feed") && !out.contains("feature    login"),
        "{out}"
    );
    assert_eq!(
        cluster(&p.status().await, "feed")["stages"]["low"]["stage"],
        0.9
    );
    p.stop().await;
}
