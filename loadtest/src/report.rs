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

/// One chart before it is drawn: runs side by side share its y-scale.
struct Spec {
    title: &'static str,
    y_label: &'static str,
    series: Vec<Series>,
    /// Counts: integer tick labels.
    integer: bool,
    /// A horizontal reference line (the database's knee) and its label.
    hline: Option<(f64, String)>,
}

impl Spec {
    fn y_max(&self) -> f64 {
        let data = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0f64, f64::max);
        data.max(self.hline.as_ref().map_or(0.0, |h| h.0))
    }
}

/// Vertical markers on every time chart: when each priority first got through, and when the
/// ramp completed.
struct Marker {
    t: f64,
    color: RGBColor,
}

fn draw(spec: &Spec, x_max: f64, y_max: f64, markers: &[Marker]) -> anyhow::Result<String> {
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");
    // A flat chart still gets a readable axis: at least 1 (counts) or the data's own scale.
    let y_top = if spec.integer {
        (y_max * 1.1).max(1.0).ceil()
    } else {
        (y_max * 1.1).max(if y_max > 0.0 { y_max * 1.1 } else { 1.0 })
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, 260)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut c = ChartBuilder::on(&root)
            .caption(spec.title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(30)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..x_max.max(1.0), 0.0..y_top)
            .map_err(|e| err(&e))?;
        let integer = spec.integer;
        let y_fmt = move |v: &f64| {
            if integer || y_top >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.2}")
            }
        };
        c.configure_mesh()
            .x_desc("seconds")
            .y_desc(spec.y_label)
            .y_label_formatter(&y_fmt)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(|e| err(&e))?;
        for m in markers {
            c.draw_series(LineSeries::new(
                [(m.t, 0.0), (m.t, y_top)],
                m.color.mix(0.5).stroke_width(1),
            ))
            .map_err(|e| err(&e))?;
        }
        if let Some((y, label)) = &spec.hline {
            let grey = RGBColor(90, 90, 90);
            c.draw_series(DashedLineSeries::new(
                [(0.0, *y), (x_max.max(1.0), *y)],
                6,
                4,
                grey.stroke_width(1),
            ))
            .map_err(|e| err(&e))?;
            c.draw_series(std::iter::once(Text::new(
                label.clone(),
                (x_max.max(1.0) * 0.02, *y + y_top * 0.03),
                ("sans-serif", 12).into_font().color(&grey),
            )))
            .map_err(|e| err(&e))?;
        }
        for s in &spec.series {
            c.draw_series(LineSeries::new(
                s.points.iter().copied(),
                s.color.stroke_width(2),
            ))
            .map_err(|e| err(&e))?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

/// The legend of a chart, as HTML under it (never over the data).
fn legend(spec: &Spec, markers: bool) -> String {
    let mut out: Vec<String> = spec
        .series
        .iter()
        .filter(|s| spec.series.len() > 1 || !s.name.is_empty())
        .map(|s| {
            format!(
                "<span style=\"color:#{:02x}{:02x}{:02x}\">&#9632;</span> {}",
                s.color.0, s.color.1, s.color.2, s.name
            )
        })
        .collect();
    if markers {
        out.push("thin vertical lines: first success of each priority (its colour), ramp complete (black)".into());
    }
    out.join(" &nbsp; ")
}

/// Seconds of the run that are whole: the last, partial second reads as a collapse.
fn whole(run: &Run) -> f64 {
    run.storm.config.duration_s.floor() - 1.0
}

fn by_kind(run: &Run, f: impl Fn(&crate::storm::Bucket) -> f64) -> Vec<Series> {
    let end = whole(run);
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
                .filter(|s| s.t as f64 <= end)
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

/// The charts of one run, in display order (the order is the SVG files' numbering).
fn specs(run: &Run) -> Vec<Spec> {
    let end = whole(run);
    let s: Vec<&crate::drill::Sample> = run.samples.iter().filter(|x| x.t <= end).collect();
    let spec = |title, y_label, series, integer| Spec {
        title,
        y_label,
        series,
        integer,
        hline: None,
    };
    let mut out = vec![
        spec(
            "Succeeded requests/s by priority",
            "req/s",
            by_kind(run, |b| b.ok as f64),
            true,
        ),
        spec(
            "Rejected requests/s by priority",
            "req/s",
            by_kind(run, |b| b.rejected as f64),
            true,
        ),
        spec(
            "Client timeouts/s by priority",
            "timeouts/s",
            by_kind(run, |b| b.timeouts as f64),
            true,
        ),
        spec(
            "Backend latency p99 of completed requests",
            "ms",
            one(
                "p99",
                COLORS[0],
                s.iter().map(|x| (x.t, x.backend_p99_ms)).collect(),
            ),
            false,
        ),
        Spec {
            hline: Some((
                run.db_knee as f64,
                format!("the database's knee ({})", run.db_knee),
            )),
            ..spec(
                "Database queries in progress",
                "queries",
                one(
                    "in progress",
                    COLORS[3],
                    s.iter().map(|x| (x.t, x.db_active as f64)).collect(),
                ),
                true,
            )
        },
        spec(
            "Backend cache hit ratio",
            "ratio",
            one(
                "hit ratio",
                COLORS[2],
                s.iter().map(|x| (x.t, x.hit_ratio)).collect(),
            ),
            false,
        ),
        spec(
            "Users logged in",
            "users",
            one(
                "logged in",
                COLORS[1],
                run.storm
                    .timeline
                    .iter()
                    .filter(|x| x.t as f64 <= end)
                    .map(|x| (x.t as f64, x.logged_in as f64))
                    .collect(),
            ),
            true,
        ),
    ];
    if run.with_warmgate {
        out.push(spec(
            "warmgate ramp progress",
            "progress",
            one(
                "progress",
                COLORS[2],
                s.iter().filter_map(|x| Some((x.t, x.progress?))).collect(),
            ),
            false,
        ));
        out.push(spec(
            "warmgate admission limit (in flight)",
            "requests",
            one(
                "limit",
                COLORS[0],
                s.iter()
                    .filter_map(|x| Some((x.t, x.limit? as f64)))
                    .collect(),
            ),
            true,
        ));
    }
    out
}

/// When each priority (index = kind) first had a request succeed, seconds.
fn first_success(run: &Run) -> [Option<f64>; 4] {
    let mut out = [None; 4];
    for (k, slot) in out.iter_mut().enumerate() {
        *slot = run
            .storm
            .timeline
            .iter()
            .find(|s| s.kinds[k].ok > 0)
            .map(|s| s.t as f64);
    }
    out
}

/// When an engaged ramp reached full progress, seconds (None: it never engaged or never did).
fn ramp_complete(run: &Run) -> Option<f64> {
    let engaged = run
        .samples
        .iter()
        .position(|x| x.progress.is_some_and(|p| p < 1.0))?;
    run.samples[engaged..]
        .iter()
        .find(|x| x.progress.is_some_and(|p| p >= 1.0))
        .map(|x| x.t)
}

fn markers(run: &Run) -> Vec<Marker> {
    let mut m: Vec<Marker> = first_success(run)
        .iter()
        .enumerate()
        .filter_map(|(k, t)| {
            Some(Marker {
                t: (*t)?,
                color: COLORS[k],
            })
        })
        .collect();
    if let Some(t) = ramp_complete(run) {
        m.push(Marker { t, color: BLACK });
    }
    m
}

/// Every run's charts, drawn with one y-scale per chart across the runs.
fn draw_all(runs: &[Run], x_max: f64) -> anyhow::Result<Vec<(Vec<String>, Vec<String>)>> {
    let specs: Vec<Vec<Spec>> = runs.iter().map(specs).collect();
    let n = specs.iter().map(Vec::len).max().unwrap_or(0);
    // One scale per chart across the runs, unless their peaks differ more than tenfold (a
    // collapse next to a held knee): then each run keeps its own, and the legend says so.
    let shared: Vec<Option<f64>> = (0..n)
        .map(|i| {
            let peaks: Vec<f64> = specs
                .iter()
                .filter_map(|s| s.get(i))
                .map(Spec::y_max)
                .collect();
            let hi = peaks.iter().copied().fold(0.0, f64::max);
            let lo = peaks.iter().copied().fold(f64::INFINITY, f64::min);
            (hi <= 10.0 * lo.max(1e-9) || lo <= 0.0).then_some(hi)
        })
        .collect();
    runs.iter()
        .zip(&specs)
        .map(|(r, ss)| {
            let m = markers(r);
            let svgs = ss
                .iter()
                .enumerate()
                .map(|(i, s)| draw(s, x_max, shared[i].unwrap_or_else(|| s.y_max()), &m))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let legends = ss
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut l = legend(s, !m.is_empty());
                    if shared[i].is_none() && runs.len() > 1 {
                        l.push_str(
                            " &nbsp; <b>own y-scale</b>: the runs' peaks differ more than tenfold",
                        );
                    }
                    l
                })
                .collect();
            Ok((svgs, legends))
        })
        .collect()
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map_or("never".into(), |v| format!("{v:.1} s"))
}

/// Database queries in progress, averaged over the seconds it was busy.
fn mean_busy_db(run: &Run) -> f64 {
    let busy: Vec<f64> = run
        .samples
        .iter()
        .filter(|x| x.db_active > 0)
        .map(|x| x.db_active as f64)
        .collect();
    busy.iter().sum::<f64>() / busy.len().max(1) as f64
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
            .map(|r| format!("{:.1}", mean_busy_db(r)))
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
        "median backend p99 of completed requests (requests completed)".into(),
        runs.iter()
            .map(|r| {
                format!(
                    "{:.0} ms ({} completed)",
                    median_p99(r),
                    r.storm.summary.requests_ok
                )
            })
            .collect(),
    ));
    rows.extend(crate::clusters::rows(runs));
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

fn secs(t: f64) -> String {
    format!("{t:.0} s")
}

/// The hit ratio sampled nearest to `t`.
fn hit_ratio_at(run: &Run, t: f64) -> Option<f64> {
    run.samples
        .iter()
        .min_by(|a, b| (a.t - t).abs().total_cmp(&(b.t - t).abs()))
        .map(|x| x.hit_ratio)
}

/// The report's opening in sentences a person can paste into a post-mortem: per run who got in
/// and how fast and what the database went through, then why, then the comparison.
pub fn summary(runs: &[Run]) -> Vec<String> {
    let mut out = Vec::new();
    for r in runs {
        let s = &r.storm.summary;
        let all_in = match s.time_to_logged_in_s[3] {
            Some(t) => format!(
                "all by {} ({:.2}x the {} the database allows)",
                secs(t),
                t / r.bound_s.max(1e-9),
                secs(r.bound_s)
            ),
            None => format!(
                "not everyone got in (the database allows everyone in {})",
                secs(r.bound_s)
            ),
        };
        let waits = match s.login_wait_s {
            [Some(p50), Some(p99)] => format!(
                "; from their first attempt, half of them were in within {p50:.1} s and 99 % within {p99:.1} s"
            ),
            _ => String::new(),
        };
        let mean = mean_busy_db(r);
        let peak = r.samples.iter().map(|x| x.db_active).max().unwrap_or(0);
        let slow = r
            .samples
            .iter()
            .filter(|x| x.backend_p99_ms > 500.0)
            .count();
        let amplification = if s.retry_amplification.is_finite() {
            format!(
                "Clients sent {:.2} requests per success.",
                s.retry_amplification
            )
        } else {
            format!("No request succeeded ({} sent).", s.requests_sent)
        };
        out.push(format!(
            "{}: {} of {} users logged in, {all_in}{waits}. The {} ran {mean:.1} queries at once on average while busy (its knee is {}), {peak} at the peak, and its p99 was over 500 ms for {slow} s. {amplification}",
            capitalise(&r.label),
            s.logged_in,
            s.users,
            if r.clusters.is_empty() { "database" } else { "auth database (login and sync)" },
            r.db_knee,
        ));
        out.extend(crate::clusters::sentence(r));
        if r.with_warmgate {
            let first = first_success(r);
            let opened: Vec<String> = (1..4)
                .filter_map(|k| {
                    let t = first[k]?;
                    let hit = hit_ratio_at(r, t)
                        .map_or(String::new(), |h| format!(" (hit ratio {h:.2})"));
                    Some(format!("{} at {}{hit}", KINDS[k], secs(t)))
                })
                .collect();
            let closed: Vec<&str> = (1..4)
                .filter(|k| first[*k].is_none())
                .map(|k| KINDS[k])
                .collect();
            let mut why = format!(
                "Why: warmgate admitted logins first, at the database's knee{}",
                first[0].map_or(String::new(), |t| format!(" (the first at {})", secs(t)))
            );
            if !opened.is_empty() {
                why.push_str(&format!("; then {}", opened.join(", ")));
            }
            if !closed.is_empty() {
                why.push_str(&format!(
                    "; {} never got through in this run",
                    closed.join(", ")
                ));
            }
            match ramp_complete(r) {
                Some(t) => why.push_str(&format!("; the ramp completed at {}.", secs(t))),
                None => why.push('.'),
            }
            if !r.clusters.is_empty() {
                // Two clusters: the stages above are the auth cluster's; feed and recommend
                // have their own, and wait for each user's sync anyway.
                why = format!(
                    "Why: in the auth cluster warmgate admitted logins first, at its database's knee{}{}. Feed and recommend go to the feed cluster, with its own limit, line and ramp; their first answers came at {} and {}, once users had logged in and synced (each user's feed waits for its sync).",
                    first[0].map_or(String::new(), |t| format!(" (the first at {})", secs(t))),
                    first[1].map_or(String::new(), |t| format!(", then sync at {}", secs(t))),
                    first[2].map_or("never".to_string(), secs),
                    first[3].map_or("never".to_string(), secs),
                );
            }
            out.push(why);
        }
    }
    // A fleet against one instance: the same storm, N instances behind a balancer.
    let one = runs
        .iter()
        .find(|r| r.with_warmgate && r.instances.is_none());
    for f in runs.iter().filter(|r| r.instances.is_some()) {
        let Some(one) = one else { break };
        let (a, b) = (&f.storm.summary, &one.storm.summary);
        let fmt_t = |t: Option<f64>| t.map_or("never".to_string(), secs);
        let fmt_w = |w: Option<f64>| w.map_or("-".to_string(), |w| format!("{w:.1} s"));
        let db_max = |r: &Run| r.samples.iter().map(|s| s.db_active).max().unwrap_or(0);
        out.push(format!(
            "{}: everyone in by {} (one instance: {}), login wait p99 {} ({}), {:.2} requests per success ({:.2}), the database's queue at most {} ({}; its knee is {}).",
            capitalise(&f.label),
            fmt_t(a.time_to_logged_in_s[3]),
            fmt_t(b.time_to_logged_in_s[3]),
            fmt_w(a.login_wait_s[1]),
            fmt_w(b.login_wait_s[1]),
            a.retry_amplification,
            b.retry_amplification,
            db_max(f),
            db_max(one),
            f.db_knee
        ));
    }
    let with = runs
        .iter()
        .find(|r| r.with_warmgate && r.instances.is_none())
        .or_else(|| runs.iter().find(|r| r.with_warmgate));
    let best_other = runs.iter().filter(|r| !r.with_warmgate).min_by(|a, b| {
        // Soonest to have everyone in; among those that never did, the most users in.
        let t = |r: &Run| r.storm.summary.time_to_logged_in_s[3].unwrap_or(f64::INFINITY);
        t(a).total_cmp(&t(b))
            .then(b.storm.summary.logged_in.cmp(&a.storm.summary.logged_in))
    });
    if let (Some(w), Some(o)) = (with, best_other) {
        let tw = w.storm.summary.time_to_logged_in_s[3];
        let to = o.storm.summary.time_to_logged_in_s[3];
        out.push(match (tw, to) {
            (Some(a), Some(b)) if a < b => format!(
                "With warmgate everyone was in {} sooner than the best other run ({}).",
                secs(b - a),
                o.label
            ),
            (Some(a), Some(b)) => format!(
                "With warmgate everyone was in {} later than the best other run ({}).",
                secs(a - b),
                o.label
            ),
            (Some(_), None) => format!(
                "With warmgate everyone got in; in no other run did everyone (best: {}, {} of {}).",
                o.label, o.storm.summary.logged_in, o.storm.summary.users
            ),
            (None, _) => "Not everyone got in with warmgate in this run.".to_string(),
        });
    }
    out
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

/// The time axis every chart shares: the longest run.
fn x_max(runs: &[Run]) -> f64 {
    runs.iter()
        .map(|r| r.storm.config.duration_s)
        .fold(1.0, f64::max)
}

/// The HTML page: the table, then each chart with the runs side by side.
pub fn html(runs: &[Run]) -> anyhow::Result<String> {
    let x_max = x_max(runs);
    let per_run = draw_all(runs, x_max)?;
    let mut body = String::new();
    body.push_str("<h1>warmgate drill</h1>\n");
    body.push_str("<div class=\"summary\">\n");
    for p in summary(runs) {
        body.push_str(&format!("<p>{p}</p>\n"));
    }
    body.push_str("</div>\n");
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
    let rows = per_run.iter().map(|r| r.0.len()).max().unwrap_or(0);
    for i in 0..rows {
        for (charts, legends) in &per_run {
            body.push_str(&format!(
                "<div>{}<div class=\"legend\">{}</div></div>\n",
                charts.get(i).map_or("", String::as_str),
                legends.get(i).map_or("", String::as_str)
            ));
        }
    }
    body.push_str("</div>\n<p class=\"legend\">Charts in one row share their y-scale unless their legend says otherwise. The last, partial second of each run is left out.</p>\n");
    Ok(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>warmgate drill</title><style>\
body {{ font-family: sans-serif; margin: 24px; }} table {{ border-collapse: collapse; margin: 12px 0; }} \
td, th {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }} th:first-child {{ text-align: left; }} \
.grid {{ display: grid; gap: 8px; }} .legend {{ font-size: 12px; color: #444; margin: 0 0 8px 8px; }} \
.summary p {{ max-width: 70em; line-height: 1.4; }}</style></head><body>\n{body}</body></html>\n"
    ))
}

/// Writes every chart as its own SVG file in `dir` (for embedding elsewhere), named
/// `<without|with>-<n>.svg`.
pub fn write_charts(runs: &[Run], dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let x_max = x_max(runs);
    let drawn = draw_all(runs, x_max)?;
    for (k, r) in runs.iter().enumerate() {
        let prefix = if r.with_warmgate {
            "with".to_string()
        } else if r.label.starts_with("nginx") {
            "nginx".to_string()
        } else if let Some(n) = r.label.strip_prefix("HAProxy maxconn ") {
            // "12", or "4 / 32" with --clusters: a file name either way.
            format!("haproxy-{}", n.replace(" / ", "-"))
        } else {
            "without".to_string()
        };
        let (svgs, _) = &drawn[k];
        for (i, svg) in svgs.iter().enumerate() {
            std::fs::write(dir.join(format!("{prefix}-{i}.svg")), svg)?;
        }
    }
    Ok(())
}
