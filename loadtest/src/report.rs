//! The drill report: a summary table and an HTML page of SVG plots (drawn with plotters).

use plotters::prelude::*;

use crate::drill::Run;
use crate::storm::KINDS;

const COLORS: [RGBColor; 4] = [
    RGBColor(200, 30, 30),
    RGBColor(230, 140, 0),
    RGBColor(30, 110, 200),
    RGBColor(120, 120, 120),
];

/// One line of a chart.
struct Series {
    name: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

fn chart(title: &str, y_label: &str, series: &[Series], x_max: f64) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
        let y_max = series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0f64, f64::max)
            .max(1e-9)
            * 1.1;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..x_max.max(1.0), 0.0..y_max)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        c.configure_mesh()
            .x_desc("seconds")
            .y_desc(y_label)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for s in series {
            let color = s.color;
            c.draw_series(LineSeries::new(
                s.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(s.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 14, y)], color.stroke_width(2))
            });
        }
        if series.len() > 1 {
            c.configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(RGBColor(200, 200, 200))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(svg)
}

fn by_kind(run: &Run, f: impl Fn(&crate::storm::Bucket) -> f64) -> Vec<Series> {
    (0..4)
        .map(|k| Series {
            name: format!(
                "{} ({})",
                KINDS[k],
                ["critical", "high", "normal", "low"][k]
            ),
            color: COLORS[k],
            points: run
                .storm
                .timeline
                .iter()
                .map(|s| (s.t as f64, f(&s.kinds[k])))
                .collect(),
        })
        .collect()
}

fn one(name: &str, color: RGBColor, points: Vec<(f64, f64)>) -> Vec<Series> {
    vec![Series {
        name: name.into(),
        color,
        points,
    }]
}

/// The charts of one run, in display order.
fn charts(run: &Run, x_max: f64) -> anyhow::Result<Vec<String>> {
    let s = &run.samples;
    let mut out = vec![
        chart(
            "Succeeded requests/s by priority",
            "req/s",
            &by_kind(run, |b| b.ok as f64),
            x_max,
        )?,
        chart(
            "Rejected requests/s by priority",
            "req/s",
            &by_kind(run, |b| b.rejected as f64),
            x_max,
        )?,
        chart(
            "Client timeouts/s by priority",
            "timeouts/s",
            &by_kind(run, |b| b.timeouts as f64),
            x_max,
        )?,
        chart(
            "Backend latency p99 of completed requests",
            "ms",
            &one(
                "p99",
                COLORS[0],
                s.iter().map(|x| (x.t, x.backend_p99_ms)).collect(),
            ),
            x_max,
        )?,
        chart(
            "Database queries in progress",
            "queries",
            &one(
                "in progress",
                COLORS[3],
                s.iter().map(|x| (x.t, x.db_active as f64)).collect(),
            ),
            x_max,
        )?,
        chart(
            "Backend cache hit ratio",
            "ratio",
            &one(
                "hit ratio",
                COLORS[2],
                s.iter().map(|x| (x.t, x.hit_ratio)).collect(),
            ),
            x_max,
        )?,
        chart(
            "Users logged in",
            "users",
            &one(
                "logged in",
                COLORS[1],
                run.storm
                    .timeline
                    .iter()
                    .map(|x| (x.t as f64, x.logged_in as f64))
                    .collect(),
            ),
            x_max,
        )?,
    ];
    if run.with_warmgate {
        out.push(chart(
            "warmgate ramp progress",
            "progress",
            &one(
                "progress",
                COLORS[2],
                s.iter().filter_map(|x| Some((x.t, x.progress?))).collect(),
            ),
            x_max,
        )?);
        out.push(chart(
            "warmgate admission limit (in flight)",
            "requests",
            &one(
                "limit",
                COLORS[0],
                s.iter()
                    .filter_map(|x| Some((x.t, x.limit? as f64)))
                    .collect(),
            ),
            x_max,
        )?);
    }
    Ok(out)
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("never".into(), |v| format!("{v:.1} s"))
}

fn median_p99(run: &Run) -> f64 {
    let mut v: Vec<f64> = run
        .samples
        .iter()
        .map(|s| s.backend_p99_ms)
        .filter(|v| *v > 0.0)
        .collect();
    crate::rng::quantile(&mut v, 0.5)
}

/// A Markdown table comparing the runs.
pub fn table(runs: &[Run]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = vec![(
        "users logged in".into(),
        runs.iter()
            .map(|r| format!("{} / {}", r.storm.summary.logged_in, r.storm.summary.users))
            .collect(),
    )];
    for (i, pct) in ["50", "90", "99", "100"].iter().enumerate() {
        rows.push((
            format!("time to {pct} % logged in"),
            runs.iter()
                .map(|r| fmt_opt(r.storm.summary.time_to_logged_in_s[i]))
                .collect(),
        ));
    }
    rows.push((
        "time to 100 % / physical bound".into(),
        runs.iter()
            .map(|r| match r.storm.summary.time_to_logged_in_s[3] {
                Some(t) if r.bound_s > 0.0 => {
                    format!("{:.2}x ({:.1} s bound)", t / r.bound_s, r.bound_s)
                }
                _ => format!("never ({:.1} s bound)", r.bound_s),
            })
            .collect(),
    ));
    rows.push((
        "login wait p50 / p99 (first try to in)".into(),
        runs.iter()
            .map(|r| {
                let w = r.storm.summary.login_wait_s;
                format!("{} / {}", fmt_opt(w[0]), fmt_opt(w[1]))
            })
            .collect(),
    ));
    rows.push((
        "requests sent".into(),
        runs.iter()
            .map(|r| r.storm.summary.requests_sent.to_string())
            .collect(),
    ));
    rows.push((
        "retry amplification (sent / ok)".into(),
        runs.iter()
            .map(|r| {
                let a = r.storm.summary.retry_amplification;
                if a.is_finite() {
                    format!("{a:.2}")
                } else {
                    "none succeeded".into()
                }
            })
            .collect(),
    ));
    for (k, kind) in KINDS.iter().enumerate() {
        rows.push((
            format!("success ratio {kind}"),
            runs.iter()
                .map(|r| format!("{:.1} %", 100.0 * r.storm.summary.success_ratio[k]))
                .collect(),
        ));
    }
    rows.push((
        "client timeouts".into(),
        runs.iter()
            .map(|r| r.storm.summary.timeouts.to_string())
            .collect(),
    ));
    rows.push((
        "peak database queries in progress".into(),
        runs.iter()
            .map(|r| {
                r.samples
                    .iter()
                    .map(|x| x.db_active)
                    .max()
                    .unwrap_or(0)
                    .to_string()
            })
            .collect(),
    ));
    rows.push((
        "mean database queries in progress (busy seconds)".into(),
        runs.iter()
            .map(|r| {
                let busy: Vec<f64> = r
                    .samples
                    .iter()
                    .filter(|x| x.db_active > 0)
                    .map(|x| x.db_active as f64)
                    .collect();
                format!("{:.1}", busy.iter().sum::<f64>() / busy.len().max(1) as f64)
            })
            .collect(),
    ));
    rows.push((
        "seconds with backend p99 over 500 ms".into(),
        runs.iter()
            .map(|r| {
                r.samples
                    .iter()
                    .filter(|x| x.backend_p99_ms > 500.0)
                    .count()
                    .to_string()
            })
            .collect(),
    ));
    rows.push((
        "median backend p99 of completed requests".into(),
        runs.iter()
            .map(|r| format!("{:.0} ms", median_p99(r)))
            .collect(),
    ));
    let mut s = format!(
        "| | {} |\n|---|{}\n",
        runs.iter()
            .map(|r| r.label.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(runs.len())
    );
    for (name, vals) in rows {
        s.push_str(&format!("| {name} | {} |\n", vals.join(" | ")));
    }
    s
}

/// The HTML page: the table, then each chart with the runs side by side.
pub fn html(runs: &[Run]) -> anyhow::Result<String> {
    let x_max = runs
        .iter()
        .map(|r| r.storm.config.duration_s)
        .fold(1.0, f64::max);
    let per_run: Vec<Vec<String>> = runs
        .iter()
        .map(|r| charts(r, x_max))
        .collect::<anyhow::Result<_>>()?;
    let mut body = String::new();
    body.push_str("<h1>warmgate drill</h1>\n");
    let c = &runs[0].storm.config;
    body.push_str(&format!(
        "<p>{} users arriving over {} s, {:.0} % honouring Retry-After, client timeout {} ms, {} s drill, seed {}.</p>\n",
        c.users, c.arrival_s, c.polite * 100.0, c.timeout_ms, c.duration_s, c.seed
    ));
    body.push_str("<table>\n<tr><th></th>");
    for r in runs {
        body.push_str(&format!("<th>{}</th>", r.label));
    }
    body.push_str("</tr>\n");
    for line in table(runs).lines().skip(2) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        body.push_str("<tr>");
        for (i, cell) in cells.iter().enumerate() {
            body.push_str(&if i == 0 {
                format!("<th>{cell}</th>")
            } else {
                format!("<td>{cell}</td>")
            });
        }
        body.push_str("</tr>\n");
    }
    body.push_str("</table>\n<div class=\"grid\" style=\"grid-template-columns: repeat(");
    body.push_str(&format!("{}, 580px)\">\n", runs.len()));
    for r in runs {
        body.push_str(&format!("<h2>{}</h2>", r.label));
    }
    let rows = per_run.iter().map(Vec::len).max().unwrap_or(0);
    for i in 0..rows {
        for charts in &per_run {
            body.push_str(&format!(
                "<div>{}</div>\n",
                charts.get(i).map_or("", String::as_str)
            ));
        }
    }
    body.push_str("</div>\n");
    Ok(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>warmgate drill</title><style>\
body {{ font-family: sans-serif; margin: 24px; }} table {{ border-collapse: collapse; margin: 12px 0; }} \
td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }} th:first-child {{ text-align: left; }} \
.grid {{ display: grid; gap: 8px; }}</style></head><body>\n{body}</body></html>\n"
    ))
}

/// Writes every chart as its own SVG file in `dir` (for embedding elsewhere), named
/// `<without|with>-<n>.svg`.
pub fn write_charts(runs: &[Run], dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let x_max = runs
        .iter()
        .map(|r| r.storm.config.duration_s)
        .fold(1.0, f64::max);
    for r in runs {
        let prefix = if r.with_warmgate {
            "with".to_string()
        } else if r.label.starts_with("nginx") {
            "nginx".to_string()
        } else if let Some(n) = r.label.strip_prefix("HAProxy maxconn ") {
            format!("haproxy-{n}")
        } else {
            "without".to_string()
        };
        for (i, svg) in charts(r, x_max)?.iter().enumerate() {
            std::fs::write(dir.join(format!("{prefix}-{i}.svg")), svg)?;
        }
    }
    Ok(())
}
