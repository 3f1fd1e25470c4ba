//! `warmgate ctl`: the admin API from a terminal or a runbook; `--cluster NAME` steers one
//! cluster (the ramp, limit and signal writes, and the status). Exit codes scripts can trust:
//! 0 done, 1 refused (a bad value, a missing feature), 3 the admin API is unreachable, 4 no
//! or a wrong token, 5 someone changed things first (`--if-version` was stale).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value};

use crate::admin::command::{Command, Switch};
use crate::admin::schema::{Overrides, Stages, Status};

/// Exit code: the admin API refused the request (4xx, except 401 and 409).
pub const REFUSED: u8 = 1;
/// Exit code: the admin API could not be reached.
pub const UNREACHABLE: u8 = 3;
/// Exit code: no token, or not one the admin API knows.
pub const UNAUTHORISED: u8 = 4;
/// Exit code: the version given with `--if-version` is stale.
pub const CONFLICT: u8 = 5;

/// One `ctl` action.
#[derive(Debug, Clone)]
pub enum Action {
    Status {
        json: bool,
    },
    Engage,
    Disengage,
    Pause,
    Resume,
    Progress(f64),
    Feature {
        name: String,
        state: String,
    },
    Limit(String),
    Reload,
    Audit {
        json: bool,
    },
    Watch,
    /// The ramp's curve: `linear`, `exponential`, or `points` with `progress:fraction` pairs.
    Curve {
        name: String,
        points: Vec<String>,
    },
    /// Stage thresholds as `priority=progress`; the priorities not named keep theirs.
    Stages(Vec<String>),
    /// Signal targets as `warn:critical` (latency durations such as `300ms`, error ratios).
    Signals {
        latency_p99: Option<String>,
        error_rate: Option<String>,
    },
}

/// Where the admin API is and who is asking.
#[derive(Debug, Clone)]
pub struct Target {
    pub admin: String,
    pub token: Option<String>,
    pub if_version: Option<u64>,
    /// The cluster a ramp, limit or signal write steers (`None`: the first cluster).
    pub cluster: Option<String>,
}

fn refused(message: String) -> Failure {
    Failure {
        code: REFUSED,
        message,
    }
}

/// `a:b` as two parts, or a message naming `field`.
fn pair<'a>(field: &str, v: &'a str) -> Result<(&'a str, &'a str), Failure> {
    v.split_once(':')
        .filter(|(a, b)| !a.is_empty() && !b.is_empty())
        .ok_or_else(|| {
            refused(format!(
                "{field}: {v:?} is not warn:critical (e.g. 300ms:900ms)"
            ))
        })
}

/// The curve write's body.
fn curve_body(name: &str, points: &[String]) -> Result<Map<String, Value>, Failure> {
    match name {
        "linear" | "exponential" if points.is_empty() => Ok(object(json!({ "curve": name }))),
        "linear" | "exponential" => Err(refused(format!(
            "points: only a curve of points takes them, not {name}"
        ))),
        "points" => {
            let mut out = Vec::new();
            for (i, p) in points.iter().enumerate() {
                let parsed = p
                    .split_once(':')
                    .and_then(|(x, y)| Some((x.parse::<f64>().ok()?, y.parse::<f64>().ok()?)));
                let Some((x, y)) = parsed else {
                    return Err(refused(format!(
                        "points[{i}]: {p:?} is not progress:fraction (e.g. 0.5:0.3)"
                    )));
                };
                out.push(json!([x, y]));
            }
            if out.is_empty() {
                return Err(refused(
                    "points: a curve of points needs progress:fraction pairs, e.g. 0:0.1 0.5:0.3 1:1"
                        .into(),
                ));
            }
            Ok(object(json!({ "curve": "points", "points": out })))
        }
        other => Err(refused(format!(
            "curve: {other:?} is not a curve (linear, exponential or points)"
        ))),
    }
}

/// The stages write's body: `current` (from the status) with `edits` over it.
fn stages_body(current: &Stages, edits: &[String]) -> Result<Map<String, Value>, Failure> {
    const PRIORITIES: [&str; 4] = ["critical", "high", "normal", "low"];
    let mut stages = serde_json::Map::new();
    for p in PRIORITIES {
        if let Some(v) = current.get(p) {
            stages.insert(p.into(), json!(v.stage));
        }
    }
    if edits.is_empty() {
        return Err(refused(
            "stages: name at least one, e.g. low=0.8 normal=0.5".into(),
        ));
    }
    for e in edits {
        let Some((p, v)) = e.split_once('=') else {
            return Err(refused(format!("stages: {e:?} is not priority=progress")));
        };
        if !PRIORITIES.contains(&p) {
            return Err(refused(format!(
                "stages.{p}: not a priority (critical, high, normal or low)"
            )));
        }
        let Ok(v) = v.parse::<f64>() else {
            return Err(refused(format!("stages.{p}: {v:?} is not a number")));
        };
        stages.insert(p.into(), json!(v));
    }
    Ok(object(json!({ "stages": stages })))
}

/// The signals write's body.
fn signals_body(
    latency_p99: Option<&str>,
    error_rate: Option<&str>,
) -> Result<Map<String, Value>, Failure> {
    let mut body = serde_json::Map::new();
    if let Some(l) = latency_p99 {
        let (w, c) = pair("latency_p99", l)?;
        body.insert("latency_p99".into(), json!({ "warn": w, "critical": c }));
    }
    if let Some(e) = error_rate {
        let (w, c) = pair("error_rate", e)?;
        let num = |x: &str| {
            x.parse::<f64>()
                .map_err(|_| refused(format!("error_rate: {x:?} is not a ratio")))
        };
        body.insert(
            "error_rate".into(),
            json!({ "warn": num(w)?, "critical": num(c)? }),
        );
    }
    if body.is_empty() {
        return Err(refused(
            "signals: give --latency-p99 warn:critical and/or --error-rate warn:critical".into(),
        ));
    }
    Ok(body)
}

/// The fields of a JSON object (anything else has none).
fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A failed call, with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

/// Sends an operator command to the cluster `t` names.
async fn send(t: &Target, cmd: Command) -> Result<Value, Failure> {
    let method = if cmd.method() == "POST" {
        Method::POST
    } else {
        Method::PUT
    };
    call(t, method, &cmd.path(t.cluster.as_deref()), Some(cmd.body())).await
}

async fn call(
    t: &Target,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut body = body.unwrap_or_else(|| json!({}));
    if let (Some(v), Some(obj)) = (t.if_version, body.as_object_mut()) {
        obj.insert("if_version".into(), json!(v));
    }
    let base = if t.admin.contains("://") {
        t.admin.clone()
    } else {
        format!("http://{}", t.admin)
    };
    let mut req = Request::builder()
        .method(method.clone())
        .uri(format!("{}{path}", base.trim_end_matches('/')))
        .header("content-type", "application/json");
    if let Some(tok) = &t.token {
        req = req.header("authorization", format!("Bearer {tok}"));
    }
    let payload = if method == Method::GET {
        Bytes::new()
    } else {
        Bytes::from(body.to_string())
    };
    let req = req.body(Full::new(payload)).map_err(|e| Failure {
        code: REFUSED,
        message: format!("bad admin address {:?}: {e}", t.admin),
    })?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| Failure {
            code: UNREACHABLE,
            message: format!("the admin API at {} did not answer within 10 s", t.admin),
        })?
        .map_err(|e| Failure {
            code: UNREACHABLE,
            message: format!(
                "cannot reach the admin API at {} ({e}); is warmgate running, and is [admin] listen set? (--admin or WARMGATE_ADMIN)",
                t.admin
            ),
        })?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let v: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    if status.is_success() {
        return Ok(v);
    }
    let why = v["error"]
        .as_str()
        .map_or_else(|| v.to_string(), str::to_string);
    let field = v["field"]
        .as_str()
        .map(|f| format!(" ({f})"))
        .unwrap_or_default();
    Err(match status.as_u16() {
        401 => Failure {
            code: UNAUTHORISED,
            message: format!(
                "not authorised: {why}; give the token with --token or WARMGATE_TOKEN"
            ),
        },
        409 => Failure {
            code: CONFLICT,
            message: format!("{why} (current version {})", v["version"]),
        },
        s => Failure {
            code: REFUSED,
            message: format!("refused ({s}): {why}{field}"),
        },
    })
}

/// The status as a person reads it.
pub fn status_table(st: &Status) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let c = &st.controller;
    let _ = writeln!(
        s,
        "state      {} ({}), ramp {}{}, progress {:.2}",
        c.state,
        c.health,
        if c.engaged { "engaged" } else { "not engaged" },
        if c.paused { ", paused" } else { "" },
        c.progress
    );
    let _ = writeln!(
        s,
        "limit      {} in flight (algorithm {}, {}), in flight now {}, queued {}",
        c.limit, c.limit_algorithm, c.limit_mode, st.signals.inflight, st.signals.queued
    );
    let sig = &st.signals;
    let _ = writeln!(
        s,
        "signals    p50 {:.1} ms, p99 {:.1} ms, errors {}, hit ratio {}",
        sig.p50_ms,
        sig.p99_ms,
        sig.error_rate
            .map_or("-".into(), |e| format!("{:.1} %", e * 100.0)),
        sig.hit_ratio.map_or("-".into(), |h| format!("{h:.2}")),
    );
    for p in ["critical", "high", "normal", "low"] {
        if let Some(v) = st.stages.get(p) {
            let _ = writeln!(
                s,
                "stage      {:<9} {:<9} waiting {:<5} eta {:.0} s",
                p,
                if v.admitted { "admitted" } else { "closed" },
                v.waiting,
                v.eta_s
            );
        }
    }
    for f in &st.features {
        let overridden = st
            .overrides
            .features
            .as_ref()
            .is_some_and(|o| o.contains_key(&f.name));
        let _ = writeln!(
            s,
            "feature    {:<12} {:<8} {:<4}{}",
            f.name,
            f.priority,
            f.state,
            if overridden {
                "  (operator override)"
            } else {
                ""
            }
        );
    }
    if let Some(l) = st.overrides.limit {
        let _ = writeln!(
            s,
            "override   limit fixed at {l} (release: warmgate ctl limit auto)"
        );
    }
    if st.clusters.len() > 1 {
        for c in &st.clusters {
            let ctl = &c.controller;
            let _ = writeln!(
                s,
                "cluster    {:<12} {:<12} limit {:<5} in flight {:<5} queued {:<5} {}",
                c.name,
                ctl.state,
                ctl.limit,
                c.signals.inflight,
                c.signals.queued,
                if ctl.engaged {
                    format!("ramp at {:.2}", ctl.progress)
                } else {
                    "ramp not engaged".to_string()
                }
            );
        }
        let _ = writeln!(
            s,
            "           (the lines above the clusters are the first cluster's; --cluster NAME for another)"
        );
    }
    if let Some(f) = &st.fleet {
        let side = st.clusters.first().and_then(|c| c.fleet.clone());
        let side = side.unwrap_or_default();
        let _ = writeln!(
            s,
            "fleet      {} on {} ({}), leader {}, this instance {} ({}), share {} of {}",
            f.name,
            f.store,
            if f.store_up { "up" } else { "DOWN" },
            if f.leader.is_empty() {
                "none"
            } else {
                &f.leader
            },
            f.instance,
            if side.role.is_empty() {
                "joining"
            } else {
                &side.role
            },
            side.share.map_or("-".into(), |n| n.to_string()),
            side.fleet_limit,
        );
    }
    let _ = writeln!(s, "version    {}", st.version);
    s
}

/// The status document, or with `--cluster` that cluster's part of it: its state at the top
/// level, the features sent to it, and itself alone under `clusters`.
async fn status_of(t: &Target) -> Result<Status, Failure> {
    let v = call(t, Method::GET, "/api/v1/status", None).await?;
    let st: Status = serde_json::from_value(v).map_err(|e| {
        refused(format!(
            "the status from {} is not one this ctl reads: {e}",
            t.admin
        ))
    })?;
    let Some(name) = &t.cluster else {
        return Ok(st);
    };
    let Some(one) = st.cluster(name).cloned() else {
        let names: Vec<&str> = st.clusters.iter().map(|c| c.name.as_str()).collect();
        return Err(refused(format!(
            "no cluster {name:?} (clusters: {})",
            names.join(", ")
        )));
    };
    Ok(Status {
        controller: one.controller.clone(),
        stages: one.stages.clone(),
        signals: one.signals.clone(),
        overrides: Overrides {
            features: st.overrides.features.clone(),
            note: st.overrides.note.clone(),
            ..one.overrides.clone()
        },
        endpoints: one.endpoints.clone(),
        dns: one.dns.clone(),
        features: st
            .features
            .iter()
            .filter(|f| f.cluster.as_deref() == Some(name.as_str()))
            .cloned()
            .collect(),
        clusters: vec![one],
        ..st
    })
}

/// Runs one action, printing what it did; the exit code on failure.
pub async fn run(t: &Target, action: Action) -> Result<(), Failure> {
    let write = |v: &Value| {
        let version = v["version"].as_u64().unwrap_or(0);
        match (&v["before"], &v["after"]) {
            (Value::Null, _) => println!("done (version {version})"),
            (b, a) => println!("done: {b} -> {a} (version {version})"),
        }
    };
    match action {
        Action::Status { json } => {
            let st = status_of(t).await?;
            if json {
                println!("{}", serde_json::to_string(&st).unwrap_or_default());
            } else {
                print!("{}", status_table(&st));
            }
        }
        Action::Engage => write(&send(t, Command::Engage).await?),
        Action::Disengage => write(&send(t, Command::Disengage).await?),
        Action::Pause => write(&send(t, Command::Pause).await?),
        Action::Resume => write(&send(t, Command::Resume).await?),
        Action::Progress(p) => write(&send(t, Command::Progress(p)).await?),
        Action::Curve { name, points } => {
            write(&send(t, Command::Curve(curve_body(&name, &points)?)).await?);
        }
        Action::Stages(edits) => {
            let st = status_of(t).await?;
            let body = stages_body(&st.stages, &edits)?;
            write(&send(t, Command::Stages(body)).await?);
        }
        Action::Signals {
            latency_p99,
            error_rate,
        } => {
            let body = signals_body(latency_p99.as_deref(), error_rate.as_deref())?;
            write(&send(t, Command::Signals(body)).await?);
        }
        Action::Feature { name, state } => {
            let Some(state) = Switch::parse(&state) else {
                return Err(refused(format!(
                    "state: {state:?} is not a state (on, off, auto, or release for the file's)"
                )));
            };
            write(&send(t, Command::Feature { name, state }).await?);
        }
        Action::Limit(v) => {
            let pin = if v == "auto" {
                None
            } else {
                match v.parse::<u32>() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        return Err(refused(format!(
                            "{v:?} is not a number of requests or \"auto\""
                        )))
                    }
                }
            };
            write(&send(t, Command::Limit(pin)).await?);
        }
        Action::Reload => {
            let v = send(t, Command::Reload).await?;
            let changed = v["changed"].as_array().cloned().unwrap_or_default();
            if changed.is_empty() {
                println!("reloaded: nothing changed");
            }
            for c in changed {
                println!("changed: {}", c.as_str().unwrap_or("?"));
            }
            for r in v["restart_only"].as_array().into_iter().flatten() {
                println!("needs a restart: {}", r.as_str().unwrap_or("?"));
            }
        }
        Action::Audit { json } => {
            let v = call(t, Method::GET, "/api/v1/audit", None).await?;
            for e in v["entries"].as_array().into_iter().flatten() {
                if json {
                    println!("{e}");
                } else {
                    println!(
                        "{}  {:<10} {:<40} {}",
                        e["time_unix_ms"],
                        e["caller"]["token"].as_str().unwrap_or("?"),
                        e["action"].as_str().unwrap_or("?"),
                        e["result"].as_str().unwrap_or("?")
                    );
                }
            }
        }
        Action::Watch => {
            let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
            loop {
                let st = status_of(t).await?;
                if tty {
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", status_table(&st));
                if !tty {
                    println!();
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_status_table_names_the_fleet_and_this_instances_share() {
        let st: Status = serde_json::from_value(json!({
            "version": 3,
            "clusters": [{"name": "default", "fleet": {"role": "follower", "share": 3, "fleet_limit": 8}}],
            "fleet": {"name": "edge", "store": "redis://127.0.0.1:6379/0", "store_up": true,
                      "leader": "b", "instance": "a"},
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        let t = status_table(&st);
        assert!(
            t.contains("fleet      edge on redis://127.0.0.1:6379/0 (up), leader b, this instance a (follower), share 3 of 8"),
            "{t}"
        );
        assert!(t.contains("version    3"), "{t}");
        assert!(!status_table(&Status::default()).contains("fleet"));
    }
}
