//! What the controller tick and the fleet sync share (a mutex taken on the tick and the
//! sync only, never per request): the report being gathered, the last plan read, the
//! fleet's aggregate signals (on the leader), operator writes to send and to apply.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::admission::SignalSnapshot;
use crate::config::FleetConfig;

use super::share::Member;
use super::wire::{ClusterPlan, Op, Plan, Report};

/// The fleet as this instance last saw it.
#[derive(Debug, Default)]
pub struct State {
    /// Gathered since the last report that reached the store.
    pub pending: Report,
    /// Operator writes taken here, not yet sent.
    pub ops_out: Vec<Op>,
    /// Operator writes from other instances, not yet applied.
    pub ops_in: Vec<Op>,
    /// The last operator write applied here (its sequence in the store).
    pub ops_seq: u64,
    /// Where to read operator writes from next (`None`: not synced yet).
    pub ops_cursor: Option<u64>,
    /// Operator writes taken here are on their way to the store (the sync holds them).
    pub ops_sending: bool,
    /// What clients were told here, to send (per cluster), and what other instances told
    /// theirs, to learn; where to read the latter from next.
    pub told_out: BTreeMap<String, Vec<[u64; 3]>>,
    pub told_in: BTreeMap<String, Vec<[u64; 3]>>,
    pub told_cursor: Option<u64>,
    /// The plan the leader (this instance) makes for the next sync to write.
    pub plan_out: Option<Plan>,
    /// The last plan read, and when (process clock, ms).
    pub plan: Option<(Plan, u64)>,
    /// Whether this instance held the leader key at the last sync, and its epoch.
    pub leader: Option<u64>,
    pub leader_name: String,
    /// Leader only: each cluster's aggregate since the last tick used it.
    pub aggregates: BTreeMap<String, SignalSnapshot>,
    /// Leader only: the live instances and their state, per cluster (name order).
    pub members: BTreeMap<String, Vec<(String, Member)>>,
    /// When a sync last succeeded (process clock, ms; 0: never).
    pub last_ok_ms: u64,
    /// When this instance started syncing (process clock, ms).
    pub started_ms: u64,
    /// The store's last error, for status.
    pub last_error: Option<String>,
    /// Per cluster: the last fleet limit and instance count (for the safe share), and
    /// whether the fallback was logged.
    pub last_fleet: BTreeMap<String, (u32, usize)>,
}

/// Told entries kept per cluster between syncs at most (either way).
pub const MAX_TOLD: usize = 50_000;

/// The link between this instance and its fleet.
#[derive(Debug)]
pub struct Link {
    pub config: FleetConfig,
    pub state: Mutex<State>,
    /// Whether the store answered the last sync.
    pub store_up: AtomicBool,
}

/// What a cluster's tick does this time.
#[derive(Debug, Clone, PartialEq)]
pub enum Role {
    /// Not synced yet: one request at a time until the fleet is known (a new instance must
    /// not add its own limit on top of a fleet at its knee), for one lease.
    Joining,
    /// The leader: its controller steps on the fleet's aggregate (when a new one is in).
    Leader {
        aggregate: Option<Box<SignalSnapshot>>,
        members: Vec<(String, Member)>,
        /// Seeded from this plan when it just took over.
        seed: Option<ClusterPlan>,
    },
    /// Applies its share of the leader's plan; `local_ramp`: an operator write reached this
    /// instance that the plan does not reflect yet (its own controller's ramp stands).
    Follower {
        plan: ClusterPlan,
        share: u32,
        local_ramp: bool,
    },
    /// No valid lease: its own controller, from a safe share.
    Fallback { safe: u32 },
}

impl Link {
    pub fn new(config: FleetConfig, now_ms: u64) -> Self {
        Self {
            config,
            state: Mutex::new(State {
                started_ms: now_ms,
                ..State::default()
            }),
            store_up: AtomicBool::new(false),
        }
    }

    pub fn lease_ms(&self) -> u64 {
        self.config.lease.as_millis() as u64
    }

    /// What `cluster`'s tick does now.
    pub fn role(&self, cluster: &str, now_ms: u64) -> Role {
        let Ok(mut st) = self.state.lock() else {
            return Role::Fallback { safe: 1 };
        };
        role(
            &mut st,
            &self.config.instance,
            cluster,
            now_ms,
            self.lease_ms(),
        )
    }

    /// Adds a tick's signals to the report, and (leader) the plan for the next sync.
    pub fn gathered(
        &self,
        cluster: &str,
        s: &SignalSnapshot,
        share: u32,
        plan: Option<ClusterPlan>,
    ) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        st.pending
            .clusters
            .entry(cluster.to_string())
            .or_default()
            .add(s, share);
        if let Some(p) = plan {
            let (leader, epoch, ops_seq) = (
                self.config.instance.clone(),
                st.leader.unwrap_or(0),
                st.ops_seq,
            );
            let out = st.plan_out.get_or_insert_with(|| Plan {
                leader,
                epoch,
                ops_seq,
                clusters: BTreeMap::new(),
            });
            out.clusters.insert(cluster.to_string(), p);
        }
    }

    /// Shares what clients were told here; takes what other instances told theirs.
    pub fn swap_told(&self, cluster: &str, out: Vec<[u64; 3]>) -> Vec<[u64; 3]> {
        let Ok(mut st) = self.state.lock() else {
            return Vec::new();
        };
        if !out.is_empty() {
            let q = st.told_out.entry(cluster.to_string()).or_default();
            if q.len() < MAX_TOLD {
                q.extend(out.into_iter().take(MAX_TOLD - q.len()));
            }
        }
        st.told_in.remove(cluster).unwrap_or_default()
    }

    /// An operator write taken here, for every other instance.
    pub fn publish(&self, op: Op) {
        if let Ok(mut st) = self.state.lock() {
            if st.ops_out.len() < 1000 {
                st.ops_out.push(op);
            }
        }
    }

    pub fn store_up(&self) -> bool {
        self.store_up.load(Ordering::Relaxed)
    }
}

/// The role decision (pure over the state).
pub fn role(st: &mut State, me: &str, cluster: &str, now_ms: u64, lease_ms: u64) -> Role {
    let fresh = st.last_ok_ms > 0 && now_ms.saturating_sub(st.last_ok_ms) <= lease_ms;
    let plan = st
        .plan
        .as_ref()
        .filter(|(_, at)| now_ms.saturating_sub(*at) <= lease_ms)
        .and_then(|(p, _)| p.clusters.get(cluster).map(|c| (p, c)));
    if fresh && st.leader.is_some() {
        let members = st.members.get(cluster).cloned().unwrap_or_default();
        let seed = plan.filter(|(p, _)| p.leader != me).map(|(_, c)| c.clone());
        return Role::Leader {
            aggregate: st.aggregates.remove(cluster).map(Box::new),
            members,
            seed,
        };
    }
    if let (true, Some((p, c))) = (fresh, plan) {
        if !c.shares.is_empty() {
            st.last_fleet
                .insert(cluster.to_string(), (c.limit, c.shares.len()));
        }
        // A write taken here or applied from another instance stands here until the leader's
        // plan has it.
        let unplanned = !st.ops_out.is_empty() || st.ops_sending || st.ops_seq > p.ops_seq;
        return Role::Follower {
            share: c.shares.get(me).copied().unwrap_or(0),
            local_ramp: unplanned,
            plan: c.clone(),
        };
    }
    if st.last_ok_ms == 0 && now_ms.saturating_sub(st.started_ms) <= lease_ms {
        return Role::Joining;
    }
    let safe = match st.last_fleet.get(cluster) {
        Some(&(limit, n)) => (limit / n.max(1) as u32).max(1),
        None => 0,
    };
    Role::Fallback { safe }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(leader: &str, shares: &[(&str, u32)]) -> Plan {
        let mut clusters = BTreeMap::new();
        clusters.insert(
            "auth".to_string(),
            ClusterPlan {
                limit: shares.iter().map(|s| s.1).sum(),
                shares: shares.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                ..Default::default()
            },
        );
        Plan {
            leader: leader.into(),
            epoch: 1,
            ops_seq: 0,
            clusters,
        }
    }

    #[test]
    fn roles_follow_the_lease() {
        let mut st = State {
            started_ms: 1000,
            ..Default::default()
        };
        assert_eq!(role(&mut st, "b", "auth", 1500, 1000), Role::Joining);
        assert_eq!(
            role(&mut st, "b", "auth", 2500, 1000),
            Role::Fallback { safe: 0 }
        );
        st.last_ok_ms = 2400;
        st.plan = Some((plan("a", &[("a", 6), ("b", 2)]), 2400));
        match role(&mut st, "b", "auth", 2500, 1000) {
            Role::Follower {
                share, local_ramp, ..
            } => assert_eq!((share, local_ramp), (2, false)),
            r => panic!("{r:?}"),
        }
        // An operator write applied here that the plan has not caught up with.
        st.ops_seq = 3;
        assert!(matches!(
            role(&mut st, "b", "auth", 2500, 1000),
            Role::Follower {
                local_ramp: true,
                ..
            }
        ));
        // The lease runs out: the last fleet limit over the last instance count.
        assert_eq!(
            role(&mut st, "b", "auth", 3500, 1000),
            Role::Fallback { safe: 4 }
        );
        // Taking over as leader: seeded from the last plan.
        st.last_ok_ms = 3600;
        st.plan = Some((plan("a", &[("a", 6), ("b", 2)]), 3600));
        st.leader = Some(2);
        match role(&mut st, "b", "auth", 3700, 1000) {
            Role::Leader { seed, .. } => assert_eq!(seed.map(|s| s.limit), Some(8)),
            r => panic!("{r:?}"),
        }
    }
}
