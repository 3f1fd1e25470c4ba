//! The operator's API under `/api/v1/`: reads (status, effective config, audit log) and writes
//! (engage, pause, progress, feature switches, a fixed limit, reload), each write with a bearer
//! token, validated like the file, applied under the controller's lock, recorded in the audit
//! log, and refused with 409 when it names a version someone else has moved past.

use std::path::PathBuf;
use std::sync::Arc;

use http::StatusCode;
use serde_json::{json, Value};

use super::audit::{Audit, Caller};
use super::command::{scoped, Command, Refusal, Switch};
use crate::runtime::Shared;

/// Every route the admin listener answers: (method, path). The OpenAPI document lists exactly
/// these (a test holds them together).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/"),
    ("GET", "/dashboard/uplot.js"),
    ("GET", "/dashboard/uplot.css"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/status"),
    ("GET", "/metrics"),
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/config"),
    ("GET", "/api/v1/audit"),
    ("GET", "/api/v1/history"),
    ("GET", "/api/v1/openapi.json"),
    ("POST", "/api/v1/ramp/engage"),
    ("POST", "/api/v1/ramp/disengage"),
    ("POST", "/api/v1/ramp/pause"),
    ("POST", "/api/v1/ramp/resume"),
    ("PUT", "/api/v1/ramp/progress"),
    ("PUT", "/api/v1/features/{name}"),
    ("PUT", "/api/v1/limit"),
    ("PUT", "/api/v1/ramp/curve"),
    ("PUT", "/api/v1/ramp/stages"),
    ("PUT", "/api/v1/signals"),
    ("POST", "/api/v1/reload"),
    ("POST", "/api/v1/clusters/{cluster}/ramp/engage"),
    ("POST", "/api/v1/clusters/{cluster}/ramp/disengage"),
    ("POST", "/api/v1/clusters/{cluster}/ramp/pause"),
    ("POST", "/api/v1/clusters/{cluster}/ramp/resume"),
    ("PUT", "/api/v1/clusters/{cluster}/ramp/progress"),
    ("PUT", "/api/v1/clusters/{cluster}/limit"),
    ("PUT", "/api/v1/clusters/{cluster}/ramp/curve"),
    ("PUT", "/api/v1/clusters/{cluster}/ramp/stages"),
    ("PUT", "/api/v1/clusters/{cluster}/signals"),
];

/// The document served at `/api/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// What the admin listener needs besides the shared state.
pub struct Admin {
    pub shared: Arc<Shared>,
    /// The config file, for `POST /api/v1/reload`.
    pub config_path: Option<PathBuf>,
    /// Reads need a token too (the admin listener is not on loopback).
    pub reads_need_token: bool,
    pub audit: Audit,
}

/// An API answer: status and JSON body.
pub type Answer = (StatusCode, Value);

fn error(status: StatusCode, msg: impl Into<String>) -> Answer {
    (status, json!({ "error": msg.into() }))
}

fn field_error(field: &str, msg: impl Into<String>) -> Answer {
    (
        StatusCode::BAD_REQUEST,
        json!({ "error": msg.into(), "field": field }),
    )
}

impl Admin {
    /// The token name for a bearer secret, if it is one of ours. Compared in constant time.
    pub fn caller(&self, authorization: Option<&str>) -> Option<String> {
        let secret = authorization?.strip_prefix("Bearer ")?.trim();
        // The running config's tokens: a reload re-reads them.
        let snap = self.shared.snapshot.load();
        snap.compiled
            .config
            .admin_tokens
            .0
            .iter()
            .find(|(_, s)| constant_time_eq(s.as_bytes(), secret.as_bytes()))
            .map(|(n, _)| n.clone())
    }

    /// Handles a write; `body` is the request's JSON (empty for none).
    pub fn write(&self, caller: &Caller, method: &str, path: &str, body: &[u8]) -> Answer {
        let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice(body) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => return error(StatusCode::BAD_REQUEST, "the body must be a JSON object"),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!("the body is not JSON: {e}"),
                    )
                }
            }
        };
        self.take(caller, method, path, v, true)
    }

    /// Applies an operator write another instance of the fleet took (audited with the
    /// instance and token it came from; not published again).
    pub fn replay(&self, op: &crate::fleet::wire::Op) {
        let caller = Caller {
            token: format!("{}@{}", op.token, op.instance),
            peer: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let (status, body) = self.take(&caller, &op.method, &op.path, op.body.clone(), false);
        if !status.is_success() {
            tracing::warn!(instance = %op.instance, action = %format!("{} {}", op.method, op.path), error = %body["error"], "a fleet operator write does not apply here");
        }
    }

    fn take(
        &self,
        caller: &Caller,
        method: &str,
        path: &str,
        mut v: Value,
        publish: bool,
    ) -> Answer {
        let action = format!("{method} {path}");
        let (cluster, unscoped) = scoped(path);
        let answer = match Command::decode(method, &unscoped, &v) {
            Ok(cmd) => self.apply(&cmd, cluster, &v),
            Err(r) => refusal(r),
        };
        // Fleet state: an accepted write goes to every instance (a reload is each one's own).
        if let (Some(link), true) = (&self.shared.fleet, publish && answer.0.is_success()) {
            if unscoped != Command::Reload.path(None) {
                if let Some(o) = v.as_object_mut() {
                    o.remove("if_version");
                }
                link.publish(crate::fleet::wire::Op {
                    instance: link.config.instance.clone(),
                    token: caller.token.clone(),
                    method: method.to_string(),
                    path: path.to_string(),
                    body: v.clone(),
                });
            }
        }
        let result = if answer.0.is_success() {
            "ok".to_string()
        } else {
            format!(
                "{}: {}",
                answer.0.as_u16(),
                answer.1["error"].as_str().unwrap_or("refused")
            )
        };
        let (before, after) = (
            answer.1.get("before").cloned().unwrap_or(Value::Null),
            answer.1.get("after").cloned().unwrap_or_else(|| v.clone()),
        );
        self.audit.record(caller, &action, before, after, &result);
        answer
    }

    fn apply(&self, cmd: &Command, cluster: Option<&str>, v: &Value) -> Answer {
        if *cmd == Command::Reload {
            if let Some(refused) = self.stale(v) {
                return refused;
            }
            return self.reload();
        }
        let Ok(mut ctl) = self.shared.control.lock() else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "controller state unavailable",
            );
        };
        if let Some(want) = v.get("if_version") {
            let Some(want) = want.as_u64() else {
                return field_error(
                    "if_version",
                    "must be a whole number (the status's version)",
                );
            };
            if want != ctl.version {
                return (
                    StatusCode::CONFLICT,
                    json!({
                        "error": "changed since that version: read the status again",
                        "version": ctl.version,
                    }),
                );
            }
        }
        let snap = self.shared.snapshot.load_full();
        let ci = match cluster {
            None => 0,
            Some(name) => match snap.compiled.cluster(name) {
                Some(i) => i,
                None => {
                    return error(
                        StatusCode::NOT_FOUND,
                        format!(
                            "no cluster {name:?} (clusters: {})",
                            snap.compiled.cluster_names()
                        ),
                    )
                }
            },
        };
        let ctl = &mut *ctl;
        let (Some(view), Some(cc)) = (snap.clusters.get(ci), ctl.clusters.get_mut(ci)) else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "controller state unavailable",
            );
        };
        let (before, after) = match cmd {
            Command::Engage | Command::Disengage => {
                let engage = *cmd == Command::Engage;
                let before = json!({ "engaged": cc.controller.engaged() });
                cc.controller.set_engaged(engage);
                (before, json!({ "engaged": engage }))
            }
            Command::Pause | Command::Resume => {
                let pause = *cmd == Command::Pause;
                let before = json!({ "paused": cc.params.paused });
                cc.params.paused = pause;
                (before, json!({ "paused": pause }))
            }
            Command::Progress(p) => {
                let before = json!({ "progress": view.decision.progress });
                cc.controller.set_progress(*p);
                (before, json!({ "progress": p }))
            }
            Command::Limit(pin) => {
                let before = json!({ "limit": view.decision.limit, "fixed": cc.overrides.limit });
                cc.controller.pin_limit(*pin);
                cc.overrides.limit = *pin;
                (before, json!({ "fixed": pin }))
            }
            Command::Feature { name, state } => {
                let Some(f) = snap.compiled.features.iter().find(|f| &f.name == name) else {
                    let known: Vec<&str> = snap
                        .compiled
                        .features
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect();
                    return error(
                        StatusCode::NOT_FOUND,
                        format!("no feature {name:?} (features: {})", known.join(", ")),
                    );
                };
                let before = json!({ "state": f.state.get().as_str() });
                let new = match state {
                    Switch::Release => {
                        ctl.features.remove(name);
                        f.configured
                    }
                    Switch::Set(s) => {
                        ctl.features.insert(name.clone(), *s);
                        *s
                    }
                };
                f.state.set(new);
                (before, json!({ "state": new.as_str() }))
            }
            Command::Curve(fields) | Command::Stages(fields) | Command::Signals(fields) => {
                let table = if matches!(cmd, Command::Signals(_)) {
                    "signals"
                } else {
                    "ramp"
                };
                let parsed = match validate_fragment(table, fields) {
                    Ok(p) => p,
                    Err(a) => return a,
                };
                let (p, o) = (&mut cc.params, &mut cc.overrides);
                match cmd {
                    Command::Curve(_) => {
                        let before = json!({ "curve": p.curve.name() });
                        p.curve = parsed.curve.clone();
                        o.curve = Some(parsed.curve);
                        (before, json!({ "curve": p.curve.name() }))
                    }
                    Command::Stages(_) => {
                        let show = |s: [f64; 4]| json!({ "critical": s[3], "high": s[2], "normal": s[1], "low": s[0] });
                        let before = show(p.stages);
                        p.stages = parsed.stages;
                        o.stages = Some(parsed.stages);
                        (before, show(p.stages))
                    }
                    _ => {
                        let show =
                            |l: &crate::admission::params::Thresholds,
                             e: &crate::admission::params::Thresholds| {
                                json!({
                                    "latency_p99_ms": { "warn": l.warn, "critical": l.critical },
                                    "error_rate": { "warn": e.warn, "critical": e.critical },
                                })
                            };
                        let before = show(&p.latency_p99_ms, &p.error_rate);
                        if fields.contains_key("latency_p99") {
                            p.latency_p99_ms = parsed.latency_p99_ms;
                            o.latency_p99_ms = Some(parsed.latency_p99_ms);
                        }
                        if fields.contains_key("error_rate") {
                            p.error_rate = parsed.error_rate;
                            o.error_rate = Some(parsed.error_rate);
                        }
                        (before, show(&p.latency_p99_ms, &p.error_rate))
                    }
                }
            }
            Command::Reload => return error(StatusCode::NOT_FOUND, "no such write"),
        };
        ctl.version += 1;
        (
            StatusCode::OK,
            json!({ "ok": true, "version": ctl.version, "before": before, "after": after }),
        )
    }

    /// The 409 (or 400) for a write whose `if_version` is not the current version.
    fn stale(&self, v: &Value) -> Option<Answer> {
        let want = v.get("if_version")?;
        let Some(want) = want.as_u64() else {
            return Some(field_error(
                "if_version",
                "must be a whole number (the status's version)",
            ));
        };
        let current = self.shared.control.lock().map(|c| c.version).unwrap_or(0);
        (want != current).then(|| {
            (
                StatusCode::CONFLICT,
                json!({ "error": "changed since that version: read the status again", "version": current }),
            )
        })
    }

    fn reload(&self) -> Answer {
        let Some(path) = &self.config_path else {
            return error(
                StatusCode::CONFLICT,
                "this warmgate was started without a config file",
            );
        };
        match crate::runtime::reload::reload(&self.shared, path) {
            Ok(outcome) => {
                let version = self.shared.control.lock().map(|c| c.version).unwrap_or(0);
                (
                    StatusCode::OK,
                    json!({
                        "ok": true,
                        "version": version,
                        "changed": outcome.changed,
                        "restart_only": outcome.restart_only,
                        "after": { "changed": outcome.changed },
                    }),
                )
            }
            Err(errs) => (
                StatusCode::BAD_REQUEST,
                json!({
                    "error": "the file is invalid; the running config is kept",
                    "problems": errs,
                }),
            ),
        }
    }
}

/// Validates a write's settings exactly as the file would: the body's fields become a `[table]`
/// of a minimal config, whose errors name the field.
fn validate_fragment(
    table: &str,
    fields: &serde_json::Map<String, Value>,
) -> Result<crate::admission::ControlParams, Answer> {
    let t: toml::Value = toml::Value::try_from(fields).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("cannot use these values: {e}"),
        )
    })?;
    let mut doc = toml::Table::new();
    doc.insert(table.to_string(), t);
    let mut upstream = toml::Table::new();
    upstream.insert(
        "endpoints".into(),
        toml::Value::Array(vec![toml::Value::String("127.0.0.1:9".into())]),
    );
    doc.insert("upstream".into(), toml::Value::Table(upstream));
    let text = toml::to_string(&doc).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("cannot use these values: {e}"),
        )
    })?;
    crate::config::load_str("request", &text)
        .map(|c| c.first_cluster().control.clone())
        .map_err(|errs| match errs.first() {
            Some(e) => {
                let field = e.key.strip_prefix(&format!("{table}.")).unwrap_or(&e.key);
                field_error(field, e.message.clone())
            }
            None => error(StatusCode::BAD_REQUEST, "invalid"),
        })
}

/// A write refused before anything was applied.
fn refusal(r: Refusal) -> Answer {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    match r.field {
        Some(f) => (status, json!({ "error": r.message, "field": f })),
        None => error(status, r.message),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
