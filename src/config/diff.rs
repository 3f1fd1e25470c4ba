//! What a reload changes: the old and new config compared setting by setting, over the one
//! canonical form of a config ([`settings_json`], also served by `/api/v1/config`), so a
//! setting the API shows cannot be left out of the diff. Each change names its cluster.

use serde_json::Value;

use super::{settings_json, Config};

/// One changed setting.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The cluster it belongs to (`None`: the file's own settings, features and routes).
    pub cluster: Option<String>,
    /// Its dotted key in the canonical form (`clusters.auth.limit.max`, `server.send_timeout_s`).
    pub key: String,
    pub what: What,
}

/// How a setting changed.
#[derive(Clone, Debug, PartialEq)]
pub enum What {
    /// A value changed (`null` where it was or is unset).
    Value { old: Value, new: Value },
    /// A cluster came with this reload.
    ClusterAdded,
    /// A cluster left with this reload.
    ClusterRemoved,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.what {
            What::Value { old, new } => write!(f, "{}: {old} -> {new}", self.key),
            What::ClusterAdded => write!(f, "{}: cluster added", self.key),
            What::ClusterRemoved => write!(f, "{}: cluster removed", self.key),
        }
    }
}

/// Every setting that differs between `old` and `new`, in key order.
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let (a, b) = (settings_json(old), settings_json(new));
    let mut out = Vec::new();
    walk("", &a, &b, &mut out);
    out
}

fn walk(prefix: &str, a: &Value, b: &Value, out: &mut Vec<Change>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                let (old, new) = (x.get(k), y.get(k));
                if prefix == "clusters" && old.is_none() != new.is_none() {
                    out.push(Change {
                        cluster: Some(k.clone()),
                        key,
                        what: if old.is_none() {
                            What::ClusterAdded
                        } else {
                            What::ClusterRemoved
                        },
                    });
                    continue;
                }
                walk(
                    &key,
                    old.unwrap_or(&Value::Null),
                    new.unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        _ if a != b => out.push(Change {
            cluster: prefix
                .strip_prefix("clusters.")
                .and_then(|rest| rest.split('.').next())
                .map(str::to_string),
            key: prefix.to_string(),
            what: What::Value {
                old: a.clone(),
                new: b.clone(),
            },
        }),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Config {
        crate::config::load_str("w.toml", text).unwrap_or_else(|e| panic!("{e:?}"))
    }

    const TWO: &str = "[[cluster]]\nname = \"auth\"\nendpoints = [\"127.0.0.1:1\"]\n\
        [[cluster]]\nname = \"feed\"\nendpoints = [\"127.0.0.1:2\"]\n";

    #[test]
    fn a_change_names_its_cluster_and_an_added_cluster_is_one_line() {
        let a = load(TWO);
        let b = load(&format!(
            "{TWO}[cluster.ramp.stages]\nnormal = 0.7\n[[cluster]]\nname = \"recs\"\nendpoints = [\"127.0.0.1:3\"]\n"
        ));
        let changes = diff(&a, &b);
        let lines: Vec<String> = changes.iter().map(ToString::to_string).collect();
        assert!(
            lines.contains(&"clusters.feed.ramp.stages.normal: 0.5 -> 0.7".to_string()),
            "{lines:?}"
        );
        assert!(
            lines.contains(&"clusters.recs: cluster added".to_string()),
            "{lines:?}"
        );
        let feed = changes
            .iter()
            .find(|c| c.key.starts_with("clusters.feed"))
            .map(|c| c.cluster.clone());
        assert_eq!(feed, Some(Some("feed".to_string())));
        assert!(!lines.iter().any(|l| l.starts_with("clusters.auth")));
        let back: Vec<String> = diff(&b, &a).iter().map(ToString::to_string).collect();
        assert!(back.contains(&"clusters.recs: cluster removed".to_string()));
        assert!(diff(&a, &a).is_empty());
    }
}
