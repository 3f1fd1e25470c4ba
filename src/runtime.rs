//! The running state: one immutable snapshot (config, compiled routes, endpoints, the last
//! controller decision) behind `ArcSwap`, plus the long-lived counters that survive reloads.

use std::hash::RandomState;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::admission::classify::Classifier;
use crate::admission::limit::CLASSES;
use crate::admission::narrate::Level;
use crate::admission::{
    ControlParams, Controller, Decision, FeatureState, Gate, Priority, RejectReason, SignalSnapshot,
};
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::{FeatureCounters, Metrics};
use crate::signals::{Completions, Window};
use crate::upstream::{build_client, Ejection, Endpoint, EndpointSet, UpstreamClient};
use arc_swap::ArcSwap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// One feature, compiled for the hot path.
#[derive(Debug)]
pub struct FeatureRt {
    pub name: String,
    pub priority: Priority,
    /// The state the config gives it.
    pub configured: FeatureState,
    /// The state in force: the configured one, or an operator's override (one atomic load
    /// per request; an override is a store, not a rebuild).
    pub state: FeatureSwitch,
    pub counters: FeatureCounters,
    /// The start of its reject bodies, per reason (only the `Retry-After` figure varies).
    pub reject_bodies: RejectBodies,
}

/// The reject bodies of one feature, per reason, up to the `Retry-After` figure.
#[derive(Debug)]
pub struct RejectBodies([bytes::Bytes; RejectReason::ALL.len()]);

impl RejectBodies {
    fn new(name: &str, priority: Priority) -> Self {
        Self(RejectReason::ALL.map(|r| {
            bytes::Bytes::from(format!(
                "{{\"reason\":\"{}\",\"feature\":\"{name}\",\"priority\":\"{}\",\"retry_after_s\":",
                r.as_str(),
                priority.as_str()
            ))
        }))
    }

    /// The body for `reason` with `retry_after_s`: one allocation, no formatting.
    pub fn body(&self, reason: RejectReason, retry_after_s: u32) -> Vec<u8> {
        let head = &self.0[reason.index()];
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(retry_after_s).as_bytes();
        let mut b = Vec::with_capacity(head.len() + digits.len() + 2);
        b.extend_from_slice(head);
        b.extend_from_slice(digits);
        b.extend_from_slice(b"}\n");
        b
    }
}

/// A feature state that an operator can switch live.
#[derive(Debug)]
pub struct FeatureSwitch(std::sync::atomic::AtomicU8);

impl FeatureSwitch {
    pub fn new(s: FeatureState) -> Self {
        Self(std::sync::atomic::AtomicU8::new(Self::code(s)))
    }

    fn code(s: FeatureState) -> u8 {
        match s {
            FeatureState::Auto => 0,
            FeatureState::On => 1,
            FeatureState::Off => 2,
        }
    }

    pub fn get(&self) -> FeatureState {
        match self.0.load(Ordering::Relaxed) {
            1 => FeatureState::On,
            2 => FeatureState::Off,
            _ => FeatureState::Auto,
        }
    }

    pub fn set(&self, s: FeatureState) {
        self.0.store(Self::code(s), Ordering::Relaxed);
    }
}

/// What operators changed live, kept across reloads of the file until released.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Feature name → the state an operator set (over the file's).
    pub features: std::collections::BTreeMap<String, FeatureState>,
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

/// Everything derived from one config, built at load or reload.
pub struct Compiled {
    pub config: Config,
    pub classifier: Classifier,
    pub features: Vec<FeatureRt>,
    pub endpoints: EndpointSet,
    pub client: UpstreamClient,
}

/// What a request reads: one load gives a consistent view of config and decision.
pub struct Snapshot {
    pub compiled: Arc<Compiled>,
    pub decision: Decision,
    pub rate: Option<Arc<DefaultDirectRateLimiter>>,
    /// Per class, the latency under which a completion counts as fast for slow start
    /// (0: no baseline learned yet, so the data path does not grow the limit).
    pub fast_us: [u64; CLASSES],
}

/// Controller state and its parameters: touched on the tick and by operators, never per request.
/// Whoever holds this lock is the only writer of [`Shared::snapshot`]: the tick and a reload
/// both store under it, so neither can put back what the other replaced.
pub struct Control {
    pub params: ControlParams,
    pub controller: Controller,
    pub last_signals: SignalSnapshot,
    rate_rps: Option<u32>,
    rate: Option<Arc<DefaultDirectRateLimiter>>,
    attempts_seen: (u64, u64),
    pub retry_share: f64,
    /// No backing-off / recovered log line before this time (ms).
    strain_quiet_until_ms: u64,
    /// Bumped by every reload and every operator change: a write may say which version it
    /// was made against (`if_version`) and is refused if someone changed things since.
    pub version: u64,
    /// Operator changes in force.
    pub overrides: Overrides,
}

/// Process-wide state shared by listeners, the controller and the admin API.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub gate: &'static Gate,
    /// What each client key holds (in flight and in line), for `gate.per_client_share`.
    pub per_client: &'static crate::admission::per_client::ClientInflight,
    pub window: Window,
    /// Completions by class since the last tick (the limit's input).
    pub completions: Completions,
    /// The hit ratio read from a backend stats endpoint, if configured.
    pub scraped: crate::signals::scrape::Scraped,
    pub metrics: Metrics,
    pub clock: Clock,
    pub control: Mutex<Control>,
    /// Keys the client hash; kept for the process so a reload keeps client memory.
    pub hasher: RandomState,
    nonce: AtomicU64,
    /// Set once shutdown has begun: not ready for new traffic.
    pub draining: std::sync::atomic::AtomicBool,
    /// The access log, when `log.access` is set (started with the process).
    pub access: Option<crate::proxy::access::AccessLog>,
}

impl Compiled {
    /// Compiles a validated config; endpoints already known keep their counters, and the
    /// upstream client (with its pooled keep-alive connections) is kept while the upstream
    /// settings it was built from are unchanged.
    pub fn new(
        config: Config,
        metrics: &Metrics,
        previous: Option<&Compiled>,
        hasher: &RandomState,
    ) -> Self {
        let features = config
            .features
            .iter()
            .map(|f| FeatureRt {
                name: f.name.clone(),
                priority: f.priority,
                configured: f.state,
                state: FeatureSwitch::new(f.state),
                counters: metrics.feature(&f.name, f.priority),
                reject_bodies: RejectBodies::new(&f.name, f.priority),
            })
            .collect();
        let endpoints = config
            .upstream
            .endpoints
            .iter()
            .map(|a| {
                previous
                    .and_then(|p| {
                        p.endpoints
                            .endpoints
                            .iter()
                            .find(|e| e.authority == *a)
                            .cloned()
                    })
                    .unwrap_or_else(|| Arc::new(Endpoint::new(a.clone())))
            })
            .collect();
        let ejection = Ejection {
            after_failures: config.upstream.eject_after_failures,
            cooldown_ms: config.upstream.eject_cooldown.as_millis() as u64,
        };
        let endpoints = EndpointSet::new(endpoints, config.upstream.balance, ejection);
        let client = match previous {
            Some(p) if same_client(&p.config.upstream, &config.upstream) => p.client.clone(),
            _ => {
                // Connections made under other settings (TLS, timeouts) are not reused.
                for e in &endpoints.endpoints {
                    e.pool.clear();
                }
                build_client(&config.upstream)
            }
        };
        let classifier = Classifier::new(
            config.routes.clone(),
            config.default_feature,
            config.client_key.clone(),
            hasher.clone(),
        );
        Self {
            config,
            classifier,
            features,
            endpoints,
            client,
        }
    }
}

/// Whether two upstream configs build the same client (pool settings, protocol, timeouts).
fn same_client(a: &crate::config::UpstreamConfig, b: &crate::config::UpstreamConfig) -> bool {
    a.h2c == b.h2c
        && a.connect_timeout == b.connect_timeout
        && a.pool_idle_timeout == b.pool_idle_timeout
        && a.pool_max_idle_per_endpoint == b.pool_max_idle_per_endpoint
        && a.connect_rate == b.connect_rate
        && a.tls.is_none()
        && b.tls.is_none()
}

impl Shared {
    /// Builds the state for a first config.
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let metrics = Metrics::new()?;
        let access = match &config.log.access {
            Some(target) => Some(
                crate::proxy::access::AccessLog::start(target)
                    .map_err(|e| anyhow::anyhow!("log.access {target}: {e}"))?,
            ),
            None => None,
        };
        let gate = Gate::leak(config.client_table_size, config.queue.max_len as usize);
        let params = config.control.clone();
        let controller = Controller::new(&params);
        let clock = Clock::new();
        let hasher = RandomState::new();
        let compiled = Arc::new(Compiled::new(config, &metrics, None, &hasher));
        let mut control = Control {
            params,
            controller,
            last_signals: SignalSnapshot::default(),
            rate_rps: None,
            rate: None,
            attempts_seen: (0, 0),
            retry_share: 0.0,
            strain_quiet_until_ms: 0,
            version: 1,
            overrides: Overrides::default(),
        };
        let window = Window::new();
        window.rotate(clock.now_ms());
        let decision =
            control
                .controller
                .tick(clock.now_ms(), &control.params, &SignalSnapshot::default());
        gate.set_limit(decision.limit, decision.ceiling, decision.slow_start);
        let rate = control.rate_for(decision.rps);
        Ok(Arc::new(Self {
            snapshot: ArcSwap::from_pointee(Snapshot {
                compiled,
                decision,
                rate,
                fast_us: [0; CLASSES],
            }),
            gate,
            per_client: Box::leak(Box::new(crate::admission::per_client::ClientInflight::new(
                4096,
            ))),
            window,
            completions: Completions::default(),
            scraped: Default::default(),
            metrics,
            clock,
            control: Mutex::new(control),
            hasher,
            nonce: AtomicU64::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
            access,
        }))
    }

    /// A cheap random value for jitter and endpoint choice.
    pub fn rand(&self) -> u64 {
        crate::admission::retry::mix64(self.nonce.fetch_add(1, Ordering::Relaxed))
    }

    /// One controller tick: read signals, step the controller, publish a new snapshot.
    pub fn tick(&self) {
        let Ok(mut control) = self.control.lock() else {
            return;
        };
        let control = &mut *control;
        // Loaded under the lock: a reload cannot slip in between this load and the store.
        let cur = self.snapshot.load_full();
        let now = self.clock.now_ms();
        let window_s = cur.compiled.config.signals.window.as_secs().max(1);
        let idle_ms = crate::upstream::pool::millis(cur.compiled.config.upstream.pool_idle_timeout);
        for e in &cur.compiled.endpoints.endpoints {
            e.pool.sweep(now, idle_ms);
        }
        self.window.rotate(now);
        let mut signals = self.window.snapshot(now, window_s);
        let (class_n, class_us, dropped) = self.completions.take();
        signals.class_n = class_n;
        signals.class_us = class_us;
        signals.dropped = dropped;
        signals.gate = self.gate.take_tick_counters();
        signals.inflight = self.gate.inflight();
        if signals.hit_ratio.is_none() {
            // No cache header seen through us: fall back on the backend's own figure, if fresh.
            if let Some(scrape) = &cur.compiled.config.signals.scrape {
                let max_age = 3 * scrape.interval.as_millis() as u64 + 1000;
                signals.hit_ratio = self.scraped.fresh(now, max_age);
            }
        }
        let decision = control.controller.tick(now, &control.params, &signals);
        for (level, line) in crate::admission::narrate::changes(&cur.decision, &decision, &signals)
        {
            match level {
                Level::Info => tracing::info!("{line}"),
                Level::Warn => tracing::warn!("{line}"),
                // At most one strain line per 10 s: a backend at its knee can flip every tick.
                Level::Strain if now >= control.strain_quiet_until_ms => {
                    control.strain_quiet_until_ms = now + 10_000;
                    tracing::warn!("{line}");
                }
                Level::Strain => {}
            }
        }
        self.gate
            .set_limit(decision.limit, decision.ceiling, decision.slow_start);
        control.last_signals = signals;
        let rate = control.rate_for(decision.rps);
        let (first, retry) = (
            self.metrics.attempts_first.get(),
            self.metrics.attempts_retry.get(),
        );
        let (df, dr) = (
            first - control.attempts_seen.0,
            retry - control.attempts_seen.1,
        );
        control.attempts_seen = (first, retry);
        if df + dr > 0 {
            control.retry_share = dr as f64 / (df + dr) as f64;
        }
        self.publish_metrics(&decision, &signals, control.retry_share);
        let ejected = cur
            .compiled
            .endpoints
            .endpoints
            .iter()
            .filter(|e| e.is_ejected(now))
            .count();
        self.metrics.endpoints_ejected.set(ejected as i64);
        let fast_us = control.controller.fast_us(&control.params);
        self.snapshot.store(Arc::new(Snapshot {
            compiled: cur.compiled.clone(),
            decision,
            rate,
            fast_us,
        }));
    }

    /// Swaps in a new config; controller state, counters, client memory and pooled upstream
    /// connections carry over.
    /// The listener keeps speaking what it started with: a reload that switches TLS on or off
    /// keeps the running setting (`app::needs_restart` reports it); new certificates apply.
    pub fn reload(&self, mut config: Config) {
        let Ok(mut control) = self.control.lock() else {
            return;
        };
        let cur = self.snapshot.load_full();
        if config.tls.is_some() != cur.compiled.config.tls.is_some() {
            config.tls = cur.compiled.config.tls.clone();
        }
        let compiled = Arc::new(Compiled::new(
            config,
            &self.metrics,
            Some(&cur.compiled),
            &self.hasher,
        ));
        let paused = control.params.paused;
        control.params = compiled.config.control.clone();
        control.params.paused = paused;
        let overrides = control.overrides.clone();
        overrides.apply(&mut control.params);
        // Operator overrides outlive the file until released; one for a feature the new
        // file no longer has is dropped.
        control.overrides.features.retain(|name, state| {
            match compiled.features.iter().find(|f| &f.name == name) {
                Some(f) => {
                    f.state.set(*state);
                    true
                }
                None => {
                    tracing::warn!(feature = %name, "override dropped: the reloaded config has no such feature");
                    false
                }
            }
        });
        control.version += 1;
        self.gate
            .set_max_len(compiled.config.queue.max_len as usize);
        self.snapshot.store(Arc::new(Snapshot {
            compiled,
            decision: cur.decision,
            rate: cur.rate.clone(),
            fast_us: cur.fast_us,
        }));
    }

    fn publish_metrics(&self, d: &Decision, s: &SignalSnapshot, retry_share: f64) {
        let m = &self.metrics;
        m.limit.set(i64::from(d.limit));
        m.inflight.set(i64::from(s.inflight));
        m.progress.set(d.progress);
        m.engaged.set(i64::from(d.engaged));
        m.inflation.set(d.inflation.unwrap_or(f64::NAN));
        m.hit_ratio.set(s.hit_ratio.unwrap_or(f64::NAN));
        m.p99.set(s.p99_ms / 1000.0);
        m.retry_share.set(retry_share);
        m.held.set(i64::from(self.gate.held()));
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
    }
}

impl Control {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_reject_body_is_the_json_of_its_reason_feature_priority_and_retry() {
        let bodies = RejectBodies::new("search-v2", Priority::Low);
        for (i, r) in RejectReason::ALL.into_iter().enumerate() {
            assert_eq!(r.index(), i);
            for retry in [0, 7, 4_000_000_000] {
                let b = bodies.body(r, retry);
                assert!(b.ends_with(b"}\n"));
                let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
                assert_eq!(v["reason"], r.as_str());
                assert_eq!(v["feature"], "search-v2");
                assert_eq!(v["priority"], "low");
                assert_eq!(v["retry_after_s"], retry);
                assert_eq!(v.as_object().unwrap().len(), 4);
            }
        }
    }

    fn config(workers: &str) -> Config {
        let text =
            format!("[upstream]\nendpoints = [\"127.0.0.1:9\"]\n[server]\nworkers = {workers}\n");
        crate::config::load_str("t.toml", &text).unwrap()
    }

    /// The tick and a reload both replace the snapshot; neither may put back what the other
    /// replaced (the tick used to load the snapshot before taking the lock and store its old
    /// config back over a reload that ran in between).
    #[test]
    fn a_tick_never_undoes_a_reload() {
        let shared = Shared::new(config("1")).unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ticker = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    shared.tick();
                }
            })
        };
        for i in 0..200 {
            let workers = (i % 7 + 1).to_string();
            shared.reload(config(&workers));
            std::thread::yield_now();
            let seen = shared.snapshot.load().compiled.config.server.workers;
            assert_eq!(seen, Some(i % 7 + 1), "reload {i} was undone");
        }
        stop.store(true, Ordering::Relaxed);
        ticker.join().unwrap();
    }

    #[test]
    fn a_reload_keeps_the_client_hash_and_the_upstream_client() {
        let shared = Shared::new(config("1")).unwrap();
        let headers = http::HeaderMap::new();
        let ip = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
        let before = shared
            .snapshot
            .load()
            .compiled
            .classifier
            .client_hash(&headers, ip);
        shared.reload(config("2"));
        let after = shared
            .snapshot
            .load()
            .compiled
            .classifier
            .client_hash(&headers, ip);
        assert_eq!(before, after, "client memory is keyed by the same hash");
    }
}
