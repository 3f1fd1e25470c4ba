//! A cluster's admission tables: `[signals]`, `[ramp]`, `[limit]` and `[queue]` (a cluster's
//! own tables laid over the file's top-level ones before they get here).

use std::time::Duration;

use http::header::{HeaderName, HeaderValue};

use super::Errors;
use crate::admission::curve::Curve;
use crate::admission::limit::KneeParams;
use crate::admission::params::{Engage, HitGate, LimitMode, Thresholds};
use crate::admission::{ControlParams, GatePolicy, Priority};
use crate::config::error::bad;
use crate::config::file::{
    FileDurationMap, FileLimit, FilePriorityMap, FileQueue, FileRamp, FileSignals, FileThresholds,
};
use crate::config::parse::{duration, duration_or, fraction, header_name, header_value};
use crate::config::{QueueConfig, ScrapeConfig, ScrapeFormat, SignalsConfig};

/// The tables one cluster's admission is read from.
pub(super) struct Sections<'a> {
    pub signals: &'a FileSignals,
    pub ramp: &'a FileRamp,
    pub limit: &'a FileLimit,
    pub queue: &'a FileQueue,
}

/// One cluster's admission settings.
pub(super) struct Admission {
    pub signals: SignalsConfig,
    pub control: ControlParams,
    pub queue: QueueConfig,
    pub max_wait_ms: [u64; 4],
}

/// Validates one cluster's admission tables.
pub(super) fn admission(e: &mut Errors, f: Sections<'_>) -> Admission {
    let d = ControlParams::default();
    let sig = f.signals;
    let header = |e: &mut Errors, key: &str, v: &str| e.take(header_name(key, v));
    let values =
        |e: &mut Errors, key: &str, vs: &Option<Vec<String>>, default: &str| -> Vec<HeaderValue> {
            let list = vs.clone().unwrap_or_else(|| vec![default.to_string()]);
            list.iter()
                .enumerate()
                .filter_map(|(i, v)| e.take(header_value(&format!("{key}[{i}]"), v)))
                .collect()
        };
    let window = e
        .take(duration_or(
            "signals.window",
            &sig.window,
            Duration::from_secs(5),
        ))
        .unwrap_or_default();
    if window < Duration::from_secs(1) || window > Duration::from_secs(15) {
        e.push("signals.window", "must be between 1s and 15s");
    }
    let scrape = sig.scrape.as_ref().and_then(|sc| {
        let url = e.take(
            sc.url
                .parse::<http::Uri>()
                .ok()
                .filter(|u| u.scheme_str() == Some("http") && u.authority().is_some())
                .ok_or_else(|| {
                    bad(
                        "signals.scrape.url",
                        format!("{:?} is not an http://host:port/path URL", sc.url),
                    )
                }),
        )?;
        let interval = e.positive(
            "signals.scrape.interval",
            &sc.interval,
            Duration::from_secs(1),
        );
        let format = match (&sc.json_pointer, &sc.prometheus_metric) {
            (Some(p), None) if p.starts_with('/') => ScrapeFormat::JsonPointer(p.clone()),
            (Some(p), None) => {
                e.push(
                    "signals.scrape.json_pointer",
                    format!("{p:?} must start with '/' (e.g. \"/hit_ratio\")"),
                );
                return None;
            }
            (None, Some(m)) => ScrapeFormat::Prometheus(m.clone()),
            _ => {
                e.push(
                    "signals.scrape",
                    "set exactly one of json_pointer or prometheus_metric",
                );
                return None;
            }
        };
        Some(ScrapeConfig {
            url,
            interval,
            format,
        })
    });
    let signals = SignalsConfig {
        window,
        scrape,
        cache_header: header(
            e,
            "signals.cache_header",
            sig.cache_header.as_deref().unwrap_or("x-cache"),
        )
        .unwrap_or(HeaderName::from_static("x-cache")),
        hit_values: values(e, "signals.cache_hit_values", &sig.cache_hit_values, "HIT"),
        miss_values: values(
            e,
            "signals.cache_miss_values",
            &sig.cache_miss_values,
            "MISS",
        ),
    };
    let unknown_hit_ratio_allows = match sig.unknown_hit_ratio.as_deref().unwrap_or("allow") {
        "allow" => true,
        "block" => false,
        other => {
            e.push(
                "signals.unknown_hit_ratio",
                format!("{other:?} must be allow or block"),
            );
            true
        }
    };
    let latency = sig.latency_p99.as_ref().and_then(|t| {
        let w = e.take(duration("signals.latency_p99.warn", &t.warn))?;
        let c = e.take(duration("signals.latency_p99.critical", &t.critical))?;
        Some(Thresholds {
            warn: w.as_secs_f64() * 1000.0,
            critical: c.as_secs_f64() * 1000.0,
        })
    });
    let latency_p99_ms = ordered(e, "signals.latency_p99", latency).unwrap_or(d.latency_p99_ms);
    let error_rate = sig
        .error_rate
        .as_ref()
        .map(|t: &FileThresholds<f64>| Thresholds {
            warn: t.warn,
            critical: t.critical,
        });
    if let Some(t) = error_rate {
        e.take(fraction("signals.error_rate.warn", t.warn));
        e.take(fraction("signals.error_rate.critical", t.critical));
    }
    let error_rate = ordered(e, "signals.error_rate", error_rate).unwrap_or(d.error_rate);

    let r = f.ramp;
    let ramp_duration_s = e
        .take(duration_or(
            "ramp.duration",
            &r.duration,
            Duration::from_secs_f64(d.ramp_duration_s),
        ))
        .map_or(d.ramp_duration_s, |x| x.as_secs_f64());
    let start_fraction = r.start_fraction.map_or(d.start_fraction, |v| {
        e.take(fraction("ramp.start_fraction", v)).unwrap_or(v)
    });
    if start_fraction <= 0.0 {
        e.push("ramp.start_fraction", "must be above 0.0");
    }
    let curve = curve(e, r.curve.as_deref(), &r.points);
    let backoff_factor = r.backoff_factor.unwrap_or(d.backoff_factor);
    if !(backoff_factor > 0.0 && backoff_factor <= 1.0) {
        e.push(
            "ramp.backoff_factor",
            format!("{backoff_factor} must be in (0.0, 1.0]"),
        );
    }
    let progress_floor = r.progress_floor.map_or(0.0, |v| {
        e.take(fraction("ramp.progress_floor", v)).unwrap_or(0.0)
    });
    let stages = per_priority(e, "ramp.stages", &r.stages, d.stages);
    for w in Priority::ALL.windows(2) {
        if stages[w[0].index()] < stages[w[1].index()] {
            e.push(
                format!("ramp.stages.{}", w[0]),
                format!(
                    "{} is admitted before {} (stage {} < {})",
                    w[0],
                    w[1],
                    stages[w[0].index()],
                    stages[w[1].index()]
                ),
            );
        }
    }
    let engage = match r.engage.as_deref().unwrap_or("auto") {
        "auto" => Engage::Auto,
        "on_start" => Engage::OnStart,
        "manual" => Engage::Manual,
        other => {
            e.push(
                "ramp.engage",
                format!("{other:?} is not an engage mode (auto, on_start or manual)"),
            );
            Engage::Auto
        }
    };
    let auto_engage_after_s = e
        .positive(
            "ramp.auto_engage_after",
            &r.auto_engage_after,
            Duration::from_secs_f64(d.auto_engage_after_s),
        )
        .as_secs_f64();
    let auto_engage_hit_ratio = r
        .auto_engage_hit_ratio
        .map_or(d.auto_engage_hit_ratio, |v| {
            e.take(fraction("ramp.auto_engage_hit_ratio", v))
                .unwrap_or(v)
        });
    let hit_gates = r
        .hit_ratio_gate
        .iter()
        .enumerate()
        .map(|(i, g)| {
            e.take(fraction(
                &format!("ramp.hit_ratio_gate[{i}].progress"),
                g.progress,
            ));
            e.take(fraction(
                &format!("ramp.hit_ratio_gate[{i}].min_hit_ratio"),
                g.min_hit_ratio,
            ));
            HitGate {
                progress: g.progress,
                min_hit_ratio: g.min_hit_ratio,
            }
        })
        .collect();

    let limit = limit_mode(e, f.limit);
    let min_samples = sig.min_samples.unwrap_or(d.min_samples);
    if min_samples == 0 {
        e.push("signals.min_samples", "must be at least 1");
    }
    let control = ControlParams {
        engage,
        auto_engage_after_s,
        auto_engage_hit_ratio,
        min_samples,
        ramp_duration_s,
        start_fraction,
        curve,
        backoff_factor,
        progress_floor,
        stages,
        hit_gates,
        unknown_hit_ratio_allows,
        latency_p99_ms,
        error_rate,
        limit,
        max_rps: f.limit.max_rps,
        paused: false,
    };
    if f.limit.max_rps == Some(0) {
        e.push(
            "limit.max_rps",
            "must be above 0 (leave it out for no rate limit)",
        );
    }
    let queue = QueueConfig {
        max_len: f.queue.max_len.unwrap_or(8192),
        max_held: f.queue.max_held.unwrap_or(4096),
    };
    if queue.max_len == 0 {
        e.push(
            "queue.max_len",
            "must be at least 1 (set queue.max_wait to \"0s\" to reject at once instead)",
        );
    }
    let max_wait_ms = max_waits(e, &f.queue.max_wait);
    Admission {
        signals,
        control,
        queue,
        max_wait_ms,
    }
}

fn ordered(e: &mut Errors, key: &str, t: Option<Thresholds>) -> Option<Thresholds> {
    let t = t?;
    if t.warn >= t.critical {
        e.push(
            format!("{key}.warn"),
            format!("warn ({}) must be below critical ({})", t.warn, t.critical),
        );
    }
    Some(t)
}

fn curve(e: &mut Errors, name: Option<&str>, points: &Option<Vec<[f64; 2]>>) -> Curve {
    match (
        name.unwrap_or(if points.is_some() { "points" } else { "linear" }),
        points,
    ) {
        ("linear", None) => Curve::Linear,
        ("exponential", None) => Curve::Exponential,
        ("points", Some(ps)) => {
            let pts: Vec<(f64, f64)> = ps.iter().map(|[x, y]| (*x, *y)).collect();
            for (i, (x, y)) in pts.iter().enumerate() {
                if !(0.0..=1.0).contains(x) || !(0.0..=1.0).contains(y) {
                    e.push(
                        format!("ramp.points[{i}]"),
                        "progress and fraction must be between 0.0 and 1.0",
                    );
                }
            }
            if pts.windows(2).any(|w| w[1].0 <= w[0].0) || pts.is_empty() {
                e.push(
                    "ramp.points",
                    "must be non-empty and sorted by strictly increasing progress",
                );
            }
            Curve::Points(pts)
        }
        ("points", None) => {
            e.push(
                "ramp.curve",
                "curve = \"points\" needs ramp.points = [[progress, fraction], ...]",
            );
            Curve::Linear
        }
        (c @ ("linear" | "exponential"), Some(_)) => {
            e.push(
                "ramp.points",
                format!("points are only used with curve = \"points\", not {c:?}"),
            );
            Curve::Linear
        }
        (other, _) => {
            e.push(
                "ramp.curve",
                format!("{other:?} is not a curve (linear, exponential or points)"),
            );
            Curve::Linear
        }
    }
}

fn per_priority(
    e: &mut Errors,
    key: &str,
    m: &Option<FilePriorityMap>,
    default: [f64; 4],
) -> [f64; 4] {
    let mut out = default;
    if let Some(m) = m {
        for (p, v) in [
            (Priority::Critical, m.critical),
            (Priority::High, m.high),
            (Priority::Normal, m.normal),
            (Priority::Low, m.low),
        ] {
            if let Some(v) = v {
                out[p.index()] = e.take(fraction(&format!("{key}.{p}"), v)).unwrap_or(v);
            }
        }
    }
    out
}

fn max_waits(e: &mut Errors, m: &Option<FileDurationMap>) -> [u64; 4] {
    let mut out = GatePolicy::default().max_wait_ms;
    if let Some(m) = m {
        for (p, v) in [
            (Priority::Critical, &m.critical),
            (Priority::High, &m.high),
            (Priority::Normal, &m.normal),
            (Priority::Low, &m.low),
        ] {
            if v.is_some() {
                let key = format!("queue.max_wait.{p}");
                if let Some(d) = e.take(duration_or(&key, v, Duration::ZERO)) {
                    if d > Duration::from_secs(300) {
                        e.push(
                            key,
                            "must be at most 300s (keep it below clients' timeouts)",
                        );
                    }
                    out[p.index()] = d.as_millis() as u64;
                }
            }
        }
    }
    out
}

fn limit_mode(e: &mut Errors, l: &FileLimit) -> LimitMode {
    match l.mode.as_deref().unwrap_or("adaptive") {
        "fixed" => match l.full_capacity {
            Some(c) if c > 0 => LimitMode::Fixed { full_capacity: c },
            _ => {
                e.push(
                    "limit.full_capacity",
                    "mode = \"fixed\" needs full_capacity above 0",
                );
                LimitMode::Fixed { full_capacity: 1 }
            }
        },
        "adaptive" => {
            let dk = KneeParams::default();
            let (min, max) = (l.min.unwrap_or(dk.min), l.max.unwrap_or(dk.max));
            let initial = l.initial.unwrap_or(dk.initial.clamp(min, max.max(min)));
            if min == 0 || min > max {
                e.push(
                    "limit.min",
                    format!("min ({min}) must be at least 1 and at most max ({max})"),
                );
            } else if !(min..=max).contains(&initial) {
                e.push(
                    "limit.initial",
                    format!("{initial} must be between min ({min}) and max ({max})"),
                );
            }
            if l.full_capacity.is_some() {
                e.push(
                    "limit.full_capacity",
                    "is only used with mode = \"fixed\"; adaptive uses initial, min, max",
                );
            }
            let tolerance = l.tolerance.unwrap_or(dk.tolerance);
            if !(0.01..=2.0).contains(&tolerance) {
                e.push(
                    "limit.tolerance",
                    format!("{tolerance} must be between 0.01 and 2.0"),
                );
            }
            let idle_restart_ms = e
                .positive(
                    "limit.idle_restart",
                    &l.idle_restart,
                    Duration::from_millis(dk.idle_restart_ms),
                )
                .as_millis() as u64;
            let latency_floor_ms = e
                .take(duration_or(
                    "limit.latency_floor",
                    &l.latency_floor,
                    Duration::from_secs_f64(dk.latency_floor_ms / 1000.0),
                ))
                .map_or(dk.latency_floor_ms, |d| d.as_secs_f64() * 1000.0);
            LimitMode::Adaptive(KneeParams {
                initial,
                min,
                max,
                tolerance,
                idle_restart_ms,
                latency_floor_ms,
                ..dk
            })
        }
        other => {
            e.push(
                "limit.mode",
                format!("{other:?} is not a limit mode (adaptive or fixed)"),
            );
            LimitMode::Fixed { full_capacity: 1 }
        }
    }
}
