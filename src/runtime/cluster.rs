//! A cluster at run time: one backend service with its own endpoints, pool, gate, signals and
//! controller. Its long-lived part ([`ClusterState`]) is kept by name across reloads; the part
//! built from config ([`Cluster`]) is rebuilt on a reload, reusing the upstream client while
//! its settings are unchanged.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;

use arc_swap::ArcSwap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::admission::limit::CLASSES;
use crate::admission::narrate::Level;
use crate::admission::per_client::ClientInflight;
use crate::admission::{ControlParams, Controller, Decision, Gate, Priority, SignalSnapshot};
use crate::config::{ClusterConfig, UpstreamConfig};
use crate::metrics::ClusterMetrics;
use crate::signals::scrape::Scraped;
use crate::signals::{Completions, Window};
use crate::upstream::dns::{endpoints_for, Resolution};
use crate::upstream::{build_client, Ejection, EndpointSet, UpstreamClient};

/// What a cluster keeps for the life of the process: the gate (limit, wait line, client
/// memory), the signal recorders and its metric series.
pub struct ClusterState {
    pub name: String,
    /// One per cluster name for the process ([`Gate::leak`]): a permit is a plain reference.
    pub gate: &'static Gate,
    /// What each client key holds (in flight and in line), for `gate.per_client_share`.
    pub per_client: &'static ClientInflight,
    pub window: Window,
    /// Completions by class since the last tick (the limit's input).
    pub completions: Completions,
    /// The hit ratio read from a backend stats endpoint, if configured.
    pub scraped: Scraped,
    pub metrics: ClusterMetrics,
    /// The last 15 minutes, a point a second (for a dashboard opened mid-cutover).
    pub history: super::history::History,
}

impl ClusterState {
    /// The state of a cluster new to the config: `gates` are its own from before a reload
    /// removed it, if one did (fresh ones otherwise).
    pub fn new(
        name: &str,
        metrics: ClusterMetrics,
        gates: Option<(&'static Gate, &'static ClientInflight)>,
        client_slots: usize,
        max_len: usize,
    ) -> Self {
        let (gate, per_client) = gates.unwrap_or_else(|| {
            (
                Gate::leak(client_slots, max_len),
                Box::leak(Box::new(ClientInflight::new(4096))),
            )
        });
        Self {
            name: name.to_string(),
            gate,
            per_client,
            window: Window::new(),
            completions: Completions::default(),
            scraped: Scraped::default(),
            metrics,
            history: Default::default(),
        }
    }
}

/// One cluster compiled from config, for the hot path.
pub struct Cluster {
    pub config: ClusterConfig,
    pub state: Arc<ClusterState>,
    /// Swapped when a name resolves to other addresses (one load per request).
    pub endpoints: ArcSwap<EndpointSet>,
    /// Each endpoint name's last resolution.
    pub resolved: ArcSwap<BTreeMap<String, Resolution>>,
    pub client: UpstreamClient,
}

impl Cluster {
    /// Compiles a cluster; endpoints already known keep their counters and pooled connections,
    /// and the upstream client is kept while the settings it was built from are unchanged.
    pub fn new(
        config: ClusterConfig,
        state: Arc<ClusterState>,
        previous: Option<&Cluster>,
    ) -> Self {
        let up = &config.upstream;
        // A reload keeps what the names resolved to, and the endpoints (counters, pools).
        let resolved = previous.map_or_else(BTreeMap::new, |p| p.resolved.load().as_ref().clone());
        let current = previous.map_or_else(Vec::new, |p| p.endpoints.load().endpoints.clone());
        let endpoints = endpoints_for(&up.endpoints, &resolved, &current);
        let ejection = Ejection {
            after_failures: up.eject_after_failures,
            cooldown_ms: up.eject_cooldown.as_millis() as u64,
        };
        let endpoints = EndpointSet::new(endpoints, up.balance, ejection);
        let client = match previous {
            Some(p) if same_client(&p.config.upstream, up) => p.client.clone(),
            _ => {
                // Connections made under other settings (TLS, timeouts) are not reused.
                for e in &endpoints.endpoints {
                    e.pool.clear();
                }
                build_client(up)
            }
        };
        state.gate.set_max_len(config.queue.max_len as usize);
        Self {
            config,
            state,
            endpoints: ArcSwap::from_pointee(endpoints),
            resolved: ArcSwap::from_pointee(resolved),
            client,
        }
    }
}

/// Whether two upstream configs build the same client (pool settings, protocol, timeouts).
fn same_client(a: &UpstreamConfig, b: &UpstreamConfig) -> bool {
    a.h2c == b.h2c
        && a.connect_timeout == b.connect_timeout
        && a.pool_idle_timeout == b.pool_idle_timeout
        && a.pool_max_idle_per_endpoint == b.pool_max_idle_per_endpoint
        && a.connect_rate == b.connect_rate
        && a.tls.is_none()
        && b.tls.is_none()
}

/// What a request of a cluster reads from the last tick.
#[derive(Clone)]
pub struct ClusterView {
    pub decision: Decision,
    pub rate: Option<Arc<DefaultDirectRateLimiter>>,
    /// Per class, the latency under which a completion counts as fast for slow start
    /// (0: no baseline learned yet, so the data path does not grow the limit).
    pub fast_us: [u64; CLASSES],
    /// In a fleet, the fleet's limit (the decision's is this instance's share; a client's
    /// share of the backend is reckoned on the whole); 0 otherwise.
    pub fleet_limit: u32,
}

/// What operators changed live on one cluster, kept across reloads of the file until released.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// A limit an operator fixed (over the algorithm's).
    pub limit: Option<u32>,
    /// The ramp's curve, stage thresholds and signal targets, as an operator set them.
    pub curve: Option<crate::admission::curve::Curve>,
    pub stages: Option<crate::admission::priority::PerPriority<f64>>,
    pub latency_p99_ms: Option<crate::admission::params::Thresholds>,
    pub error_rate: Option<crate::admission::params::Thresholds>,
}

impl Overrides {
    /// Puts the operator's settings over `params` (after a reload reset them to the file's).
    pub fn apply(&self, params: &mut ControlParams) {
        if let Some(c) = &self.curve {
            params.curve = c.clone();
        }
        if let Some(s) = self.stages {
            params.stages = s;
        }
        if let Some(t) = self.latency_p99_ms {
            params.latency_p99_ms = t;
        }
        if let Some(t) = self.error_rate {
            params.error_rate = t;
        }
    }
}

/// One cluster's controller state and parameters: touched on the tick and by operators,
/// never per request.
pub struct Control {
    pub params: ControlParams,
    pub controller: Controller,
    pub last_signals: SignalSnapshot,
    rate_rps: Option<u32>,
    rate: Option<Arc<DefaultDirectRateLimiter>>,
    /// No backing-off / recovered log line before this time (ms).
    strain_quiet_until_ms: u64,
    /// Operator changes in force.
    pub overrides: Overrides,
    /// With `[fleet]`: how this cluster steered on its last tick.
    pub fleet: FleetSide,
}

/// A cluster's side of the fleet, kept from tick to tick.
#[derive(Debug, Clone, Default)]
pub struct FleetSide {
    /// The share of the fleet's limit applied now (`None`: steering alone).
    pub share: Option<u32>,
    /// The fleet's limit, as last known.
    pub fleet_limit: u32,
    /// This instance computed the last plan.
    pub leading: bool,
    /// Steering alone for want of a lease (said once).
    pub fallback: bool,
    /// The leader's last fleet decision (ticks with no new aggregate reuse it).
    pub last: Option<Decision>,
    /// Outages the fleet recovered from: a new one makes this instance forget its window too.
    pub recoveries: u64,
    /// The instances and their shares in the last plan made or read.
    pub shares: BTreeMap<String, u32>,
}

impl Control {
    /// A controller for a cluster configured for the first time.
    pub fn new(params: ControlParams) -> Self {
        Self {
            controller: Controller::new(&params),
            params,
            last_signals: SignalSnapshot::default(),
            rate_rps: None,
            rate: None,
            strain_quiet_until_ms: 0,
            overrides: Overrides::default(),
            fleet: FleetSide::default(),
        }
    }

    /// Takes a reloaded file's parameters, keeping pause and the operator's overrides.
    pub fn reconfigure(&mut self, mut params: ControlParams) {
        params.paused = self.params.paused;
        self.overrides.apply(&mut params);
        self.params = params;
    }

    /// The first decision, before any signal (published at start).
    pub fn first_view(&mut self, cluster: &Cluster, now_ms: u64) -> ClusterView {
        cluster.state.window.rotate(now_ms);
        let decision = self
            .controller
            .tick(now_ms, &self.params, &SignalSnapshot::default());
        let gate = cluster.state.gate;
        gate.set_limit(decision.limit, decision.ceiling, decision.slow_start);
        ClusterView {
            rate: self.rate_for(decision.rps),
            fast_us: [0; CLASSES],
            fleet_limit: 0,
            decision,
        }
    }

    /// One tick of this cluster: read its signals, step its controller (or, in a fleet, take
    /// its share of the fleet's), publish its limit.
    pub fn tick(
        &mut self,
        cluster: &Cluster,
        previous: &Decision,
        now: u64,
        fleet: Option<&crate::fleet::Link>,
    ) -> ClusterView {
        let st = &cluster.state;
        let cfg = &cluster.config;
        let window_s = cfg.signals.window.as_secs().max(1);
        let idle_ms = crate::upstream::pool::millis(cfg.upstream.pool_idle_timeout);
        for e in &cluster.endpoints.load().endpoints {
            e.pool
                .sweep(now, idle_ms, cfg.upstream.pool_max_idle_per_endpoint);
        }
        st.window.rotate(now);
        let mut signals = st.window.snapshot(now, window_s);
        let (class_n, class_us, dropped) = st.completions.take();
        signals.class_n = class_n;
        signals.class_us = class_us;
        signals.dropped = dropped;
        signals.gate = st.gate.take_tick_counters();
        signals.inflight = st.gate.inflight();
        if signals.hit_ratio.is_none() {
            // No cache header seen through us: fall back on the backend's own figure, if fresh.
            if let Some(scrape) = &cfg.signals.scrape {
                let max_age = 3 * scrape.interval.as_millis() as u64 + 1000;
                signals.hit_ratio = st.scraped.fresh(now, max_age);
            }
        }
        let decision = match fleet {
            None => self.controller.tick(now, &self.params, &signals),
            Some(link) => {
                share_told(link, st, now);
                self.fleet_step(link, &st.metrics, &st.name, &signals, now)
            }
        };
        if decision.recovered {
            // The outage's failures are no evidence about the backend now that it answers.
            st.window.forget();
            tracing::info!(cluster = %st.name, "the backend answers again after an outage: its failures are forgotten, the limit restarts in slow start, the ramp climbs back to where it was");
        }
        for (level, line) in crate::admission::narrate::changes(previous, &decision, &signals) {
            let name = &st.name;
            match level {
                Level::Info => tracing::info!(cluster = %name, "{line}"),
                Level::Warn => tracing::warn!(cluster = %name, "{line}"),
                // At most one strain line per 10 s: a backend at its knee can flip every tick.
                Level::Strain if now >= self.strain_quiet_until_ms => {
                    self.strain_quiet_until_ms = now + 10_000;
                    tracing::warn!(cluster = %name, "{line}");
                }
                Level::Strain => {}
            }
        }
        st.gate
            .set_limit(decision.limit, decision.ceiling, decision.slow_start);
        self.last_signals = signals;
        publish_metrics(cluster, &decision, &signals, now);
        ClusterView {
            rate: self.rate_for(decision.rps),
            fast_us: self.controller.fast_us(&self.params),
            fleet_limit: if self.fleet.share.is_some() {
                self.fleet.fleet_limit
            } else {
                0
            },
            decision,
        }
    }

    /// The decision of a fleet member: the leader steps the fleet's controller on the
    /// aggregate and splits the limit; a follower applies its share of the plan; without a
    /// lease, its own controller from a safe share.
    fn fleet_step(
        &mut self,
        link: &crate::fleet::Link,
        cluster_metrics: &ClusterMetrics,
        name: &str,
        signals: &SignalSnapshot,
        now: u64,
    ) -> Decision {
        use crate::fleet::share::{allocate, Member};
        use crate::fleet::wire::ClusterPlan;
        use crate::fleet::Role;
        let me = link.config.instance.as_str();
        let role = link.role(name, now);
        if !matches!(role, Role::Fallback { .. }) && self.fleet.fallback {
            self.fleet.fallback = false;
            tracing::info!(cluster = %name, "fleet lease back: this instance takes its share of the fleet's limit again");
        }
        let mut plan_out = None;
        let decision = match role {
            Role::Joining => {
                // Until the fleet is known, one request at a time: never a limit on top.
                let d = self.controller.tick(now, &self.params, signals);
                self.fleet.share = Some(1);
                with_share(d, 1, 0)
            }
            Role::Leader {
                aggregate,
                members,
                seed,
            } => {
                if let (Some(seed), false) = (&seed, self.fleet.leading) {
                    self.controller.adopt(seed.progress, seed.engaged);
                    self.controller.adopt_limit(seed.limit, &self.params);
                    self.fleet.recoveries = seed.recoveries;
                }
                self.fleet.leading = true;
                let d = match (aggregate, self.fleet.last) {
                    (Some(a), _) => self.controller.tick(now, &self.params, &a),
                    (None, Some(last)) => Decision {
                        recovered: false,
                        ..last
                    },
                    (None, None) => self.controller.tick(now, &self.params, signals),
                };
                self.fleet.last = Some(d);
                if d.recovered {
                    self.fleet.recoveries += 1;
                }
                let mut members = members;
                let mine = Member {
                    inflight: signals.inflight,
                    waiting: signals.gate.waiting,
                    acked: self.fleet.share.unwrap_or(0),
                };
                match members.iter_mut().find(|(n, _)| n == me) {
                    Some((_, m)) => *m = mine,
                    None => members.push((me.to_string(), mine)),
                }
                let ms: Vec<Member> = members.iter().map(|(_, m)| *m).collect();
                let shares = allocate(d.limit, &ms);
                let shares: BTreeMap<String, u32> =
                    members.iter().map(|(n, _)| n.clone()).zip(shares).collect();
                let share = shares.get(me).copied().unwrap_or(0);
                plan_out = Some(ClusterPlan {
                    limit: d.limit,
                    engaged: d.engaged,
                    progress: d.progress,
                    open: d.open,
                    eta_s: d.eta_s,
                    rps: d.rps,
                    recoveries: self.fleet.recoveries,
                    shares: shares.clone(),
                });
                self.fleet.shares = shares;
                self.fleet.fleet_limit = d.limit;
                self.fleet.share = Some(share);
                with_share(d, share, d.limit)
            }
            Role::Follower {
                plan,
                share,
                local_ramp,
            } => {
                self.fleet.leading = false;
                self.fleet.last = None;
                if !local_ramp {
                    self.controller.adopt(plan.progress, plan.engaged);
                }
                let mut d = self.controller.tick(now, &self.params, signals);
                if !local_ramp {
                    (d.engaged, d.progress, d.open, d.eta_s) =
                        (plan.engaged, plan.progress, plan.open, plan.eta_s);
                }
                d.rps = plan.rps;
                // The leader saw the backend come back: this window's outage goes too.
                d.recovered = plan.recoveries > self.fleet.recoveries;
                self.fleet.recoveries = plan.recoveries;
                self.fleet.shares = plan.shares.clone();
                self.fleet.fleet_limit = plan.limit;
                self.fleet.share = Some(share);
                with_share(d, share, plan.limit)
            }
            Role::Fallback { safe } => {
                if !self.fleet.fallback {
                    self.fleet.fallback = true;
                    if safe > 0 {
                        self.controller.adopt_limit(safe, &self.params);
                    }
                    tracing::warn!(cluster = %name, safe_share = safe, "no fleet lease: this instance steers alone from a safe share (the last fleet limit over the last instance count)");
                }
                self.fleet.leading = false;
                self.fleet.last = None;
                self.fleet.share = None;
                self.controller.tick(now, &self.params, signals)
            }
        };
        let applied = self.fleet.share.unwrap_or(decision.limit);
        let m = &cluster_metrics;
        match self.fleet.share {
            Some(share) => {
                m.fleet_share.set(i64::from(share));
                m.fleet_limit.set(i64::from(self.fleet.fleet_limit));
            }
            None => {
                m.fleet_share.set(0);
                m.fleet_limit.set(0);
            }
        }
        link.gathered(name, signals, applied, plan_out);
        decision
    }

    /// The rate limiter for `rps`, rebuilt only when the rate moves by more than 5 %.
    fn rate_for(&mut self, rps: Option<u32>) -> Option<Arc<DefaultDirectRateLimiter>> {
        let Some(r) = rps.and_then(NonZeroU32::new) else {
            self.rate_rps = None;
            self.rate = None;
            return None;
        };
        let changed = match self.rate_rps {
            Some(old) => (f64::from(r.get()) - f64::from(old)).abs() > 0.05 * f64::from(old),
            None => true,
        };
        if changed || self.rate.is_none() {
            let burst = NonZeroU32::new((r.get() / 10).max(1)).unwrap_or(NonZeroU32::MIN);
            self.rate = Some(Arc::new(RateLimiter::direct(
                Quota::per_second(r).allow_burst(burst),
            )));
            self.rate_rps = Some(r.get());
        }
        self.rate.clone()
    }
}

/// Sends what this cluster's gate told clients to the fleet (wall-clock times) and learns
/// what the other instances told theirs: a client that retries on another instance is known
/// there as early and keeps its first arrival.
fn share_told(link: &crate::fleet::Link, st: &ClusterState, now: u64) {
    let unix = crate::clock::unix_ms() as i128;
    let (now_i, to_unix) = (now as i128, |ms: u64| {
        (unix + ms as i128 - now as i128).max(0) as u64
    });
    let out: Vec<[u64; 3]> = st
        .gate
        .drain_told()
        .into_iter()
        .map(|(k, e)| [k, to_unix(e.until_ms), to_unix(e.first_ms)])
        .collect();
    for [k, until, first] in link.swap_told(&st.name, out) {
        let back = |u: u64| (now_i + u as i128 - unix).max(1) as u64;
        st.gate.learn(
            k,
            crate::admission::clients::ClientEntry {
                until_ms: back(until),
                first_ms: back(first),
            },
            now,
        );
    }
}

/// A fleet decision applied as this instance's share: the share is the limit (no growth on
/// the data path past it), and a request-rate cap is split in the same proportion.
pub fn with_share(mut d: Decision, share: u32, fleet_limit: u32) -> Decision {
    d.rps = d.rps.map(|r| {
        if fleet_limit == 0 {
            r
        } else {
            ((u64::from(r) * u64::from(share)).div_ceil(u64::from(fleet_limit)) as u32).max(1)
        }
    });
    // A backend found down here is probed one request at a time, whatever the share.
    d.limit = if d.outage { 1 } else { share.max(1) };
    d.ceiling = d.limit;
    d.slow_start = false;
    d
}

fn publish_metrics(cluster: &Cluster, d: &Decision, s: &SignalSnapshot, now: u64) {
    let m = &cluster.state.metrics;
    m.limit.set(i64::from(d.limit));
    m.inflight.set(i64::from(s.inflight));
    m.progress.set(d.progress);
    m.engaged.set(i64::from(d.engaged));
    m.inflation.set(d.inflation.unwrap_or(f64::NAN));
    m.hit_ratio.set(s.hit_ratio.unwrap_or(f64::NAN));
    m.p99.set(s.p99_ms / 1000.0);
    m.held.set(i64::from(cluster.state.gate.held()));
    for p in Priority::ALL {
        m.queue_len[p.index()].set(i64::from(s.gate.waiting[p.index()]));
        m.stage_eta[p.index()].set(d.eta_s[p.index()]);
    }
    let lowest = Priority::ALL
        .iter()
        .find(|p| d.open[p.index()])
        .map_or(-1, |p| *p as i64);
    m.lowest_admitted_priority.set(lowest);
    m.set_state(d.state);
    let ejected = cluster
        .endpoints
        .load()
        .endpoints
        .iter()
        .filter(|e| e.is_ejected(now))
        .count();
    m.endpoints_ejected.set(ejected as i64);
}
