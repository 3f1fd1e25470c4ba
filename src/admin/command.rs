//! Operator commands: the one schema of a write, decoded by the admin API, built and sent by
//! `warmgate ctl`, and replayed by the other instances of a fleet. A write's path names the
//! command (and, under `/api/v1/clusters/{name}/`, its cluster); its JSON body holds the
//! command's fields and, for any command, `if_version`.

use serde_json::{json, Map, Value};

use crate::admission::FeatureState;

/// What an operator asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Engage the ramp.
    Engage,
    /// Disengage the ramp: everything open, the limit alone decides.
    Disengage,
    /// Hold progress where it is.
    Pause,
    /// Let progress advance again.
    Resume,
    /// Set progress (0 to 1).
    Progress(f64),
    /// Pin the limit (`None`: release it to the controller).
    Limit(Option<u32>),
    /// Force a feature on, off or back to the ramp, or release the operator's switch.
    Feature { name: String, state: Switch },
    /// The ramp's curve (`curve`, `points`), validated as the file's `[ramp]` when applied.
    Curve(Map<String, Value>),
    /// Stage thresholds (`stages`), validated as the file's `[ramp]` when applied.
    Stages(Map<String, Value>),
    /// Signal targets (`latency_p99`, `error_rate`), validated as the file's `[signals]`.
    Signals(Map<String, Value>),
    /// Read the config file again.
    Reload,
}

/// A feature switch as an operator sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    /// Forced to this state (beats the ramp).
    Set(FeatureState),
    /// Back to the file's state.
    Release,
}

impl Switch {
    /// Parses `on`, `off`, `auto` or `release`.
    pub fn parse(s: &str) -> Option<Self> {
        if s == "release" {
            return Some(Switch::Release);
        }
        FeatureState::parse(s).map(Switch::Set)
    }

    /// The API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Switch::Set(s) => s.as_str(),
            Switch::Release => "release",
        }
    }
}

/// Why a write is refused before anything is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// 400 (a bad field) or 404 (no such write).
    pub status: u16,
    /// The field at fault, when one is.
    pub field: Option<String>,
    pub message: String,
}

impl Refusal {
    fn field(field: &str, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
}

const FEATURES: &str = "/api/v1/features/";

/// Splits a write's path into its cluster (`/api/v1/clusters/{name}/…`) and the path as the
/// default cluster has it.
pub fn scoped(path: &str) -> (Option<&str>, std::borrow::Cow<'_, str>) {
    match path
        .strip_prefix("/api/v1/clusters/")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((name, rest)) => (Some(name), format!("/api/v1/{rest}").into()),
        None => (None, path.into()),
    }
}

impl Command {
    /// Decodes a write: `path` as the default cluster has it ([`scoped`]), `body` the JSON
    /// object sent. A field the command does not take is refused, naming it: a typo must not
    /// pass as "nothing to do".
    pub fn decode(method: &str, path: &str, body: &Value) -> Result<Command, Refusal> {
        let empty = Map::new();
        let fields = body.as_object().unwrap_or(&empty);
        let takes = takes(path);
        if let Some(bad) = fields
            .keys()
            .find(|k| *k != "if_version" && !takes.contains(&k.as_str()))
        {
            return Err(Refusal::field(
                bad,
                format!(
                    "unknown field `{bad}` (this write takes {})",
                    takes
                        .iter()
                        .chain(&["if_version"])
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        Ok(match (method, path) {
            ("POST", "/api/v1/ramp/engage") => Command::Engage,
            ("POST", "/api/v1/ramp/disengage") => Command::Disengage,
            ("POST", "/api/v1/ramp/pause") => Command::Pause,
            ("POST", "/api/v1/ramp/resume") => Command::Resume,
            ("POST", "/api/v1/reload") => Command::Reload,
            ("PUT", "/api/v1/ramp/progress") => {
                let Some(p) = fields.get("value").and_then(Value::as_f64) else {
                    return Err(Refusal::field(
                        "value",
                        "a progress between 0 and 1 is required, e.g. {\"value\": 0.4}",
                    ));
                };
                if !(0.0..=1.0).contains(&p) {
                    return Err(Refusal::field(
                        "value",
                        format!("{p} is not between 0 and 1"),
                    ));
                }
                Command::Progress(p)
            }
            ("PUT", "/api/v1/limit") => Command::Limit(match fields.get("value") {
                Some(Value::String(s)) if s == "auto" => None,
                Some(n) => match n.as_u64() {
                    Some(n) if (1..=1_000_000).contains(&n) => Some(n as u32),
                    _ => return Err(Refusal::field(
                        "value",
                        "a whole number of requests in flight between 1 and 1000000, or \"auto\"",
                    )),
                },
                None => {
                    return Err(Refusal::field(
                        "value",
                        "required: a number, or \"auto\" to release",
                    ))
                }
            }),
            ("PUT", p) if p.starts_with(FEATURES) && p.len() > FEATURES.len() => {
                let Some(state) = fields.get("state").and_then(Value::as_str) else {
                    return Err(Refusal::field(
                        "state",
                        "required: \"on\", \"off\", \"auto\" or \"release\"",
                    ));
                };
                let Some(state) = Switch::parse(state) else {
                    return Err(Refusal::field(
                        "state",
                        format!(
                            "{state:?} is not a state (on, off, auto, or release for the file's)"
                        ),
                    ));
                };
                Command::Feature {
                    name: p[FEATURES.len()..].to_string(),
                    state,
                }
            }
            ("PUT", "/api/v1/ramp/curve") => Command::Curve(settings(fields)),
            ("PUT", "/api/v1/ramp/stages") => Command::Stages(settings(fields)),
            ("PUT", "/api/v1/signals") => Command::Signals(settings(fields)),
            _ => {
                return Err(Refusal {
                    status: 404,
                    field: None,
                    message: "no such write".into(),
                })
            }
        })
    }

    /// `POST` for an action, `PUT` for a value.
    pub fn method(&self) -> &'static str {
        match self {
            Command::Engage
            | Command::Disengage
            | Command::Pause
            | Command::Resume
            | Command::Reload => "POST",
            _ => "PUT",
        }
    }

    /// Its path for `cluster` (`None`: the default cluster's form). Feature switches and
    /// reloads are not a cluster's: their path is the same either way.
    pub fn path(&self, cluster: Option<&str>) -> String {
        let rest = match self {
            Command::Engage => "ramp/engage",
            Command::Disengage => "ramp/disengage",
            Command::Pause => "ramp/pause",
            Command::Resume => "ramp/resume",
            Command::Progress(_) => "ramp/progress",
            Command::Limit(_) => "limit",
            Command::Curve(_) => "ramp/curve",
            Command::Stages(_) => "ramp/stages",
            Command::Signals(_) => "signals",
            Command::Reload => return "/api/v1/reload".into(),
            Command::Feature { name, .. } => return format!("{FEATURES}{name}"),
        };
        match cluster {
            Some(c) => format!("/api/v1/clusters/{c}/{rest}"),
            None => format!("/api/v1/{rest}"),
        }
    }

    /// Its JSON body (without `if_version`).
    pub fn body(&self) -> Value {
        match self {
            Command::Progress(p) => json!({ "value": p }),
            Command::Limit(Some(n)) => json!({ "value": n }),
            Command::Limit(None) => json!({ "value": "auto" }),
            Command::Feature { state, .. } => json!({ "state": state.as_str() }),
            Command::Curve(m) | Command::Stages(m) | Command::Signals(m) => {
                Value::Object(m.clone())
            }
            _ => json!({}),
        }
    }
}

/// The fields a write's body may hold (besides `if_version`), by its path.
fn takes(path: &str) -> &'static [&'static str] {
    match path {
        "/api/v1/ramp/progress" | "/api/v1/limit" => &["value"],
        "/api/v1/ramp/curve" => &["curve", "points"],
        "/api/v1/ramp/stages" => &["stages"],
        "/api/v1/signals" => &["latency_p99", "error_rate"],
        p if p.starts_with(FEATURES) => &["state"],
        _ => &[],
    }
}

/// A settings write's fields, without the envelope's `if_version`.
fn settings(fields: &Map<String, Value>) -> Map<String, Value> {
    let mut m = fields.clone();
    m.remove("if_version");
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_decodes_from_what_it_sends() {
        let mut curve = Map::new();
        curve.insert("curve".into(), json!("points"));
        curve.insert("points".into(), json!([[0.0, 0.1], [1.0, 1.0]]));
        let all = [
            Command::Engage,
            Command::Disengage,
            Command::Pause,
            Command::Resume,
            Command::Reload,
            Command::Progress(0.4),
            Command::Limit(Some(12)),
            Command::Limit(None),
            Command::Feature {
                name: "feed".into(),
                state: Switch::Set(FeatureState::Off),
            },
            Command::Feature {
                name: "feed".into(),
                state: Switch::Release,
            },
            Command::Curve(curve),
            Command::Stages(settings(
                json!({"stages": {"low": 0.8}})
                    .as_object()
                    .unwrap_or(&Map::new()),
            )),
            Command::Signals(settings(
                json!({"latency_p99": {"warn": "300ms", "critical": "900ms"}})
                    .as_object()
                    .unwrap_or(&Map::new()),
            )),
        ];
        for c in all {
            for cluster in [None, Some("auth")] {
                let path = c.path(cluster);
                let (scope, unscoped) = scoped(&path);
                let expect_scope = match c {
                    Command::Reload | Command::Feature { .. } => None,
                    _ => cluster,
                };
                assert_eq!(scope, expect_scope, "{path}");
                assert_eq!(
                    Command::decode(c.method(), &unscoped, &c.body()),
                    Ok(c.clone()),
                    "{path}"
                );
            }
        }
    }

    #[test]
    fn a_bad_write_is_refused_naming_its_field() {
        let r = Command::decode("PUT", "/api/v1/ramp/progress", &json!({"value": 1.5}));
        assert_eq!(r.map_err(|r| r.field), Err(Some("value".into())));
        let r = Command::decode("PUT", "/api/v1/limit", &json!({"value": 0}));
        assert_eq!(r.map_err(|r| r.field), Err(Some("value".into())));
        let r = Command::decode("PUT", "/api/v1/features/feed", &json!({"state": "maybe"}));
        assert_eq!(r.map_err(|r| r.field), Err(Some("state".into())));
        let r = Command::decode("PUT", "/api/v1/ramp/curve", &json!({"curv": "linear"}));
        let Err(r) = r else {
            panic!("a typo is refused")
        };
        assert_eq!((r.status, r.field.as_deref()), (400, Some("curv")));
        assert!(
            r.message.contains("takes curve, points, if_version"),
            "{}",
            r.message
        );
        let r = Command::decode("PUT", "/api/v1/ramp/progress", &json!({"valeu": 0.3}));
        assert_eq!(
            r.map_err(|r| r.field),
            Err(Some("valeu".into())),
            "a typo before a missing value"
        );
        let r = Command::decode("POST", "/api/v1/ramp/engage", &json!({"if_version": 3}));
        assert_eq!(r, Ok(Command::Engage));
        let r = Command::decode("POST", "/api/v1/ramp/sideways", &json!({}));
        assert_eq!(r.map_err(|r| r.status), Err(404));
        let r = Command::decode("PUT", "/api/v1/features/", &json!({"state": "on"}));
        assert_eq!(r.map_err(|r| r.status), Err(404));
    }
}
