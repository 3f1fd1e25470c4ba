//! Features (each with its priority and cluster) and the routes that map requests to them.

use std::collections::HashSet;

use http::Method;
use regex::bytes::Regex;

use super::Errors;
use crate::admission::classify::Route;
use crate::admission::{FeatureState, Priority};
use crate::config::error::bad;
use crate::config::file::FileConfig;
use crate::config::parse::{header_name, header_value};
use crate::config::FeatureConfig;

/// The `[[feature]]`s, each sent to its cluster (by index into `clusters`), and the default
/// feature's index.
pub(super) fn features(
    e: &mut Errors,
    f: &FileConfig,
    clusters: &[String],
) -> (Vec<FeatureConfig>, usize) {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, ft) in f.feature.iter().enumerate() {
        let key = format!("feature[{i}]");
        if ft.name.is_empty()
            || !ft
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            e.push(
                format!("{key}.name"),
                format!(
                    "{:?} must be non-empty letters, digits, '_' or '-'",
                    ft.name
                ),
            );
        }
        if !seen.insert(ft.name.clone()) {
            e.push(
                format!("{key}.name"),
                format!("duplicate feature {:?}", ft.name),
            );
        }
        let priority = Priority::parse(&ft.priority).unwrap_or_else(|| {
            e.push(
                format!("{key}.priority"),
                format!(
                    "{:?} is not a priority (critical, high, normal or low)",
                    ft.priority
                ),
            );
            Priority::Normal
        });
        let state =
            FeatureState::parse(ft.state.as_deref().unwrap_or("auto")).unwrap_or_else(|| {
                e.push(
                    format!("{key}.state"),
                    format!("{:?} is not a feature state (auto, on or off)", ft.state),
                );
                FeatureState::Auto
            });
        let cluster = match &ft.cluster {
            None => 0,
            Some(name) => clusters.iter().position(|c| c == name).unwrap_or_else(|| {
                e.push(
                    format!("{key}.cluster"),
                    format!(
                        "{name:?} is not a [[cluster]] (clusters: {})",
                        clusters.join(", ")
                    ),
                );
                0
            }),
        };
        out.push(FeatureConfig {
            name: ft.name.clone(),
            priority,
            state,
            cluster,
        });
    }
    let default_name = f
        .default_feature
        .clone()
        .unwrap_or_else(|| "default".into());
    let default = match out.iter().position(|x| x.name == default_name) {
        Some(i) => i,
        None if f.default_feature.is_some() => {
            e.push(
                "default_feature",
                format!("{default_name:?} is not a [[feature]]"),
            );
            0
        }
        None => {
            out.push(FeatureConfig {
                name: default_name,
                priority: Priority::Normal,
                state: FeatureState::Auto,
                cluster: 0,
            });
            out.len() - 1
        }
    };
    (out, default)
}

/// The `[[route]]`s, each naming its feature by index.
pub(super) fn routes(e: &mut Errors, f: &FileConfig, features: &[FeatureConfig]) -> Vec<Route> {
    let mut out = Vec::new();
    for (i, r) in f.route.iter().enumerate() {
        let key = format!("route[{i}]");
        let Some(feature) = features.iter().position(|x| x.name == r.feature) else {
            e.push(
                format!("{key}.feature"),
                format!("{:?} is not a [[feature]]", r.feature),
            );
            continue;
        };
        let method = r.method.as_deref().and_then(|m| {
            e.take(
                Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    bad(
                        format!("{key}.method"),
                        format!("{m:?} is not an HTTP method"),
                    )
                }),
            )
        });
        let path_regex = r.path_regex.as_deref().and_then(|re| {
            e.take(Regex::new(re).map_err(|err| {
                bad(
                    format!("{key}.path_regex"),
                    format!(
                        "invalid regex: {}",
                        err.to_string().lines().last().unwrap_or("")
                    ),
                )
            }))
        });
        if let Some(p) = &r.path_prefix {
            if !p.starts_with('/') {
                e.push(
                    format!("{key}.path_prefix"),
                    format!("{p:?} must start with '/'"),
                );
            }
        }
        let header = r
            .header
            .as_deref()
            .and_then(|h| e.take(header_name(&format!("{key}.header"), h)));
        let header_value = r
            .header_value
            .as_deref()
            .and_then(|v| e.take(header_value(&format!("{key}.header_value"), v)));
        if header_value.is_some() && r.header.is_none() {
            e.push(format!("{key}.header_value"), "needs header = \"name\"");
        }
        out.push(Route {
            host: r.host.as_ref().map(|h| h.to_ascii_lowercase()),
            method,
            path_prefix: r.path_prefix.clone(),
            path_regex,
            header,
            header_value,
            feature,
        });
    }
    out
}
