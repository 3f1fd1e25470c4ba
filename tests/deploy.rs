//! The deployment kit: the manifests parse, the sidecar's config is valid, and the Grafana
//! dashboard and the alert rules only use metrics warmgate exports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use yaml_rust2::YamlLoader;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Every `warmgate_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("warmgate_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[tokio::test]
async fn the_kit_parses_and_uses_only_exported_metrics() {
    let k8s = YamlLoader::load_from_str(&read("deploy/kubernetes/sidecar.yaml")).unwrap();
    assert_eq!(k8s.len(), 3, "ConfigMap, Secret, Deployment");
    let toml = k8s[0]["data"]["warmgate.toml"].as_str().unwrap();
    // The Secret's token, as the pod's environment would carry it (this test is alone in its
    // binary, so the variable reaches nothing else).
    std::env::set_var("WARMGATE_ADMIN_TOKEN", "a-token-of-sixteen-or-more");
    warmgate::config::load_str("sidecar.toml", toml).unwrap_or_else(|e| panic!("{e:?}"));
    let containers = k8s[2]["spec"]["template"]["spec"]["containers"]
        .as_vec()
        .unwrap();
    let wg = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("warmgate"))
        .unwrap();
    assert_eq!(
        wg["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        wg["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    let grace = k8s[2]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_i64()
        .unwrap();
    assert!(
        grace > 30 + 5,
        "the grace period covers preStop and the drain"
    );

    let alerts = YamlLoader::load_from_str(&read("deploy/prometheus/alerts.yaml")).unwrap();
    let rules = alerts[0]["groups"][0]["rules"].as_vec().unwrap();
    assert!(rules.len() >= 4);
    let grafana: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/warmgate.json")).unwrap();
    assert!(grafana["panels"].as_array().unwrap().len() >= 10);

    let unit = read("deploy/systemd/warmgate.service");
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    assert!(unit.contains("warmgate run /etc/warmgate/warmgate.toml"));

    // What warmgate exports, histograms with their series suffixes.
    let up = ok_upstream(Duration::ZERO).await;
    let p = proxy(&format!("[upstream]\nendpoints = [\"{}\"]\n", up.addr)).await;
    let _ = get(&p.url("/"), &[]).await;
    let (_, body) = get(&format!("http://{}/metrics", p.admin), &[]).await;
    let text = String::from_utf8_lossy(&body).into_owned();
    let mut exported = BTreeSet::new();
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut parts = line[7..].split_whitespace();
        let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
        exported.insert(name.to_string());
        if kind == "histogram" {
            for s in ["_bucket", "_sum", "_count"] {
                exported.insert(format!("{name}{s}"));
            }
        }
    }
    let used: BTreeSet<String> = metric_names(&read("deploy/grafana/warmgate.json"))
        .into_iter()
        .chain(metric_names(&read("deploy/prometheus/alerts.yaml")))
        .collect();
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
    assert!(used.len() >= 15, "{used:?}");
    p.stop().await;
}
