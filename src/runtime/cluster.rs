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
            decision,
        }
    }

    /// One tick of this cluster: read its signals, step its controller, publish its limit.
    pub fn tick(&mut self, cluster: &Cluster, previous: &Decision, now: u64) -> ClusterView {
        let st = &cluster.state;
        let cfg = &cluster.config;
        let window_s = cfg.signals.window.as_secs().max(1);
        let idle_ms = crate::upstream::pool::millis(cfg.upstream.pool_idle_timeout);
        for e in &cluster.endpoints.load().endpoints {
            e.pool.sweep(now, idle_ms);
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
        let decision = self.controller.tick(now, &self.params, &signals);
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
            decision,
        }
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
