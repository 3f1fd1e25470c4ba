//! The sync loop: every `fleet.sync`, one exchange with the store, off the request path.
//! The store down or slow costs no request anything: the exchange is bounded by a timeout,
//! the tick reads whatever the last good exchange left, and the connection is remade with
//! backoff.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::link::{Link, State};
use super::share::Member;
use super::store::{self, Incoming, Outgoing};
use super::wire::{aggregate, ClusterReport, Op, Plan, Report, Told};
use crate::runtime::Shared;

/// Applies an operator write from another instance (the admin API's own path).
pub type Apply = Arc<dyn Fn(&Op) + Send + Sync>;

/// Runs until the task is dropped.
pub async fn run(shared: Arc<Shared>, link: Arc<Link>, apply: Apply) {
    let sync = link.config.sync;
    let timeout = (link.config.lease / 2).max(Duration::from_millis(50));
    let keys = store::keys(&link.config.name);
    let script = store::script();
    let mut con = None;
    let mut backoff = sync;
    // The last report sequence the leader counted, per instance.
    let mut counted: BTreeMap<String, u64> = BTreeMap::new();
    loop {
        tokio::time::sleep(sync).await;
        let Some(c) = con.as_mut() else {
            match tokio::time::timeout(timeout * 2, store::connect(&link.config.store, timeout))
                .await
            {
                Ok(Ok(c)) => {
                    con = Some(c);
                    backoff = sync;
                }
                Ok(Err(e)) => {
                    down(&link, &e.to_string());
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(_) => {
                    down(&link, "no answer to the connect");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            continue;
        };
        let (out, sent, ops, told) = {
            let Ok(mut st) = link.state.lock() else {
                return;
            };
            let told = std::mem::take(&mut st.told_out);
            let mut report = st.pending.clone();
            report.seq += 1;
            let plan = st.plan_out.take();
            let ops = std::mem::take(&mut st.ops_out);
            st.ops_sending = !ops.is_empty();
            let lines: Vec<String> = ops
                .iter()
                .filter_map(|o| serde_json::to_string(o).ok())
                .collect();
            (
                (
                    serde_json::to_string(&report).unwrap_or_default(),
                    plan.as_ref()
                        .and_then(|p| serde_json::to_string(p).ok())
                        .unwrap_or_default(),
                    plan.map_or(0, |p| p.epoch),
                    lines.join("\n"),
                    st.ops_cursor,
                    st.told_cursor,
                ),
                report,
                ops,
                told,
            )
        };
        let (report_text, plan_text, epoch, ops_text, ops_from, told_from) = out;
        let told_text = if told.is_empty() {
            String::new()
        } else {
            serde_json::to_string(&Told {
                instance: link.config.instance.clone(),
                clusters: told.clone(),
            })
            .unwrap_or_default()
        };
        let answer = tokio::time::timeout(
            timeout,
            store::exchange(
                c,
                &script,
                &keys,
                Outgoing {
                    instance: &link.config.instance,
                    lease_ms: link.lease_ms(),
                    report: report_text,
                    plan: plan_text,
                    epoch,
                    ops: ops_text,
                    ops_from,
                    told: told_text,
                    told_from,
                },
            ),
        )
        .await;
        let now = shared.clock.now_ms();
        match answer {
            Ok(Ok(inc)) => {
                let to_apply = taken(&link, &mut counted, &sent, inc, now);
                for op in &to_apply {
                    apply(op);
                }
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {timeout:?}"),
                };
                down(&link, &why);
                if let Ok(mut st) = link.state.lock() {
                    // Unsent writes go out with the next sync; what clients were told is
                    // stale by then and goes.
                    let mut ops = ops;
                    ops.append(&mut st.ops_out);
                    st.ops_out = ops;
                    st.ops_sending = false;
                }
                drop(told);
            }
        }
    }
}

/// The store did not answer: said once, until it answers again.
fn down(link: &Link, why: &str) {
    if link.store_up.swap(false, Ordering::Relaxed)
        || link.state.lock().is_ok_and(|s| s.last_error.is_none())
    {
        tracing::warn!(store = %link.config.store_text, error = %why, "fleet store unreachable: this instance keeps its lease until it runs out, then steers alone on a safe share; reconnecting");
    }
    if let Ok(mut st) = link.state.lock() {
        st.last_error = Some(why.to_string());
    }
}

/// Takes in what a sync brought back; returns the operator writes to apply here.
fn taken(
    link: &Link,
    counted: &mut BTreeMap<String, u64>,
    sent: &Report,
    inc: Incoming,
    now: u64,
) -> Vec<Op> {
    let me = &link.config.instance;
    if !link.store_up.swap(true, Ordering::Relaxed) {
        tracing::info!(store = %link.config.store_text, leader = %inc.leader, "fleet store reached: this instance steers with its fleet");
    }
    let Ok(mut st) = link.state.lock() else {
        return Vec::new();
    };
    let st = &mut *st;
    st.ops_sending = false;
    st.last_ok_ms = now;
    st.last_error = None;
    for (name, r) in &sent.clusters {
        if let Some(p) = st.pending.clusters.get_mut(name) {
            p.subtract(r);
        }
    }
    st.pending.seq = sent.seq;
    let was_leader = st.leader.is_some();
    st.leader = (inc.leader == *me).then_some(inc.epoch);
    if st.leader.is_some() != was_leader {
        tracing::info!(leader = %inc.leader, epoch = inc.epoch, "fleet leader {}", if st.leader.is_some() { "is now this instance" } else { "is another instance" });
    }
    st.leader_name = inc.leader;
    if let Ok(plan) = serde_json::from_str::<Plan>(&inc.plan) {
        st.plan = Some((plan, now));
    }
    // Operator writes: a store that restarted counts from zero again.
    let from = match st.ops_cursor {
        Some(c) if c <= inc.ops_last => c,
        _ => inc.ops_last,
    };
    let mut apply = Vec::new();
    for line in &inc.ops {
        let Some((seq, json)) = line.split_once(' ') else {
            continue;
        };
        let Ok(seq) = seq.parse::<u64>() else {
            continue;
        };
        if seq <= from {
            continue;
        }
        if let Ok(op) = serde_json::from_str::<Op>(json) {
            if op.instance != *me {
                apply.push(op);
            }
        }
    }
    st.ops_cursor = Some(inc.ops_last);
    st.ops_seq = inc.ops_last;
    let told_from = match st.told_cursor {
        Some(c) if c <= inc.told_last => c,
        _ => inc.told_last,
    };
    for line in &inc.told {
        let Some((seq, json)) = line.split_once(' ') else {
            continue;
        };
        if seq.parse::<u64>().map_or(true, |s| s <= told_from) {
            continue;
        }
        let Ok(t) = serde_json::from_str::<Told>(json) else {
            continue;
        };
        if t.instance == *me {
            continue;
        }
        for (cluster, entries) in t.clusters {
            let q = st.told_in.entry(cluster).or_default();
            let room = super::link::MAX_TOLD.saturating_sub(q.len());
            q.extend(entries.into_iter().take(room));
        }
    }
    st.told_cursor = Some(inc.told_last);
    if st.leader.is_some() {
        lead(st, counted, &inc.reports);
    }
    apply
}

/// Leader: the fleet's aggregate per cluster (each report's counters counted once) and the
/// live instances' state for the shares.
fn lead(st: &mut State, counted: &mut BTreeMap<String, u64>, reports: &[(String, String)]) {
    let mut parsed: Vec<(String, Report, bool)> = Vec::new();
    for (name, text) in reports {
        let Ok(r) = serde_json::from_str::<Report>(text) else {
            continue;
        };
        let new = counted
            .get(name)
            .is_none_or(|&s| r.seq > s || r.seq < s / 2);
        counted.insert(name.clone(), r.seq);
        parsed.push((name.clone(), r, new));
    }
    counted.retain(|k, _| parsed.iter().any(|(n, _, _)| n == k));
    let clusters: std::collections::BTreeSet<&String> = parsed
        .iter()
        .flat_map(|(_, r, _)| r.clusters.keys())
        .collect();
    let mut members = BTreeMap::new();
    let mut aggregates = BTreeMap::new();
    for cluster in clusters {
        let mut views: Vec<ClusterReport> = Vec::new();
        let mut ms = Vec::new();
        for (name, r, new) in &parsed {
            let Some(c) = r.clusters.get(cluster) else {
                continue;
            };
            let mut v = c.clone();
            if !new {
                // Seen already: its state counts, its counters do not again.
                v.subtract(c);
            }
            ms.push((
                name.clone(),
                Member {
                    inflight: c.inflight,
                    waiting: c.waiting,
                    acked: c.share,
                },
            ));
            views.push(v);
        }
        let refs: Vec<&ClusterReport> = views.iter().collect();
        let limit = st
            .plan
            .as_ref()
            .and_then(|(p, _)| p.clusters.get(cluster.as_str()))
            .map_or(0, |c| c.limit);
        aggregates.insert(cluster.clone(), aggregate(&refs, limit));
        members.insert(cluster.clone(), ms);
    }
    st.aggregates = aggregates;
    st.members = members;
}
