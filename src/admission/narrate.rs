//! What the controller did, in words, for the log: each change once (the ramp engaged or
//! completed, a priority's stage opened or closed, backing off began or ended), with the
//! figures behind it. Pure: the tick compares its last two decisions.

use super::controller::{CtlState, Decision, SignalSnapshot};
use super::Priority;

/// How loud a line is. `Strain` lines (backing off, recovered) can alternate tick after tick
/// on a backend at its knee: the caller rate-limits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Strain,
}

/// The lines for the change from `prev` to `next`.
pub fn changes(prev: &Decision, next: &Decision, s: &SignalSnapshot) -> Vec<(Level, String)> {
    let mut out = Vec::new();
    let figures = || {
        format!(
            "limit {}, in flight {}, p99 {:.0} ms, latency {}, errors {}, hit ratio {}",
            next.limit,
            s.inflight,
            s.p99_ms,
            next.inflation
                .map_or("unknown".into(), |i| format!("{i:.2}x its no-load level")),
            s.error_rate
                .map_or("unknown".into(), |e| format!("{:.1} %", e * 100.0)),
            s.hit_ratio.map_or("unknown".into(), |h| format!("{h:.2}")),
        )
    };
    let names = |open: bool| {
        let v: Vec<&str> = Priority::ALL
            .iter()
            .rev()
            .filter(|p| next.open[p.index()] == open)
            .map(|p| p.as_str())
            .collect();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let just_engaged = next.engaged && !prev.engaged;
    if just_engaged {
        out.push((
            Level::Warn,
            format!(
                "ramp engaged at progress {:.2}: admitting {}; waiting for their stage: {} ({})",
                next.progress,
                names(true),
                names(false),
                figures()
            ),
        ));
    }
    if !next.engaged && prev.engaged {
        out.push((
            Level::Info,
            format!("ramp complete: every priority admitted ({})", figures()),
        ));
    }
    if next.engaged && !just_engaged {
        for p in Priority::ALL.iter().rev() {
            let i = p.index();
            if next.open[i] && !prev.open[i] {
                out.push((
                    Level::Info,
                    format!(
                        "stage opened: {} requests admitted at progress {:.2} ({})",
                        p.as_str(),
                        next.progress,
                        figures()
                    ),
                ));
            } else if !next.open[i] && prev.open[i] {
                out.push((
                    Level::Warn,
                    format!(
                        "stage closed: {} requests refused again at progress {:.2} ({})",
                        p.as_str(),
                        next.progress,
                        figures()
                    ),
                ));
            }
        }
    }
    let backing = |d: &Decision| d.state == CtlState::BackingOff;
    if backing(next) && !backing(prev) {
        out.push((
            Level::Strain,
            format!("backing off: the backend is straining ({})", figures()),
        ));
    }
    if !backing(next) && backing(prev) {
        out.push((
            Level::Strain,
            format!("recovered: no longer backing off ({})", figures()),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(engaged: bool, open: [bool; 4], state: CtlState) -> Decision {
        Decision {
            engaged,
            open,
            state,
            limit: 16,
            progress: 0.4,
            ..Decision::default()
        }
    }

    #[test]
    fn each_change_is_told_once() {
        let s = SignalSnapshot {
            p99_ms: 180.0,
            inflight: 12,
            error_rate: Some(0.01),
            ..SignalSnapshot::default()
        };
        let open = decision(false, [true; 4], CtlState::Open);
        let engaged = decision(true, [false, false, false, true], CtlState::Holding);
        let lines = changes(&open, &engaged, &s);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].1.starts_with("ramp engaged at progress 0.40: admitting critical; waiting for their stage: high, normal, low"),
            "{lines:?}"
        );
        assert!(lines[0].1.contains("p99 180 ms"), "{lines:?}");
        assert!(
            changes(&engaged, &engaged, &s).is_empty(),
            "no change, no line"
        );

        let high_open = decision(true, [false, false, true, true], CtlState::Advancing);
        let lines = changes(&engaged, &high_open, &s);
        assert_eq!(lines.len(), 1);
        assert!(lines[0]
            .1
            .starts_with("stage opened: high requests admitted"));

        let backing = decision(true, [false, false, true, true], CtlState::BackingOff);
        let lines = changes(&high_open, &backing, &s);
        assert_eq!(lines[0].0, Level::Strain);
        assert!(lines[0].1.starts_with("backing off"));
        let lines = changes(&backing, &high_open, &s);
        assert!(lines[0].1.starts_with("recovered"));

        let lines = changes(&high_open, &open, &s);
        assert!(lines[0].1.starts_with("ramp complete"));
    }
}
