//! The running state: one immutable snapshot (config, compiled routes, endpoints, the last
//! controller decision) behind `ArcSwap`, plus the long-lived counters that survive reloads.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;

use crate::admission::classify::Classifier;
use crate::admission::{
    ControlParams, Controller, Decision, FeatureState, Gate, Priority, SignalSnapshot,
};
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::{FeatureCounters, Metrics};
use crate::signals::Window;
use crate::upstream::{build_client, Ejection, Endpoint, EndpointSet, UpstreamClient};

/// One feature, compiled for the hot path.
#[derive(Debug)]
pub struct FeatureRt {
    pub name: String,
    pub priority: Priority,
    pub state: FeatureState,
    pub counters: FeatureCounters,
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
}

/// Controller state and its parameters: touched on the tick and by operators, never per request.
pub struct Control {
    pub params: ControlParams,
    pub controller: Controller,
    pub last_signals: SignalSnapshot,
    rate_rps: Option<u32>,
    rate: Option<Arc<DefaultDirectRateLimiter>>,
    attempts_seen: (u64, u64),
    pub retry_share: f64,
}

/// Where critical requests over the limit wait (bounded in length and time by the handler).
#[derive(Default)]
pub struct WaitQueue {
    pub notify: Notify,
    pub queued: AtomicU32,
}

impl WaitQueue {
    /// Requests waiting now.
    pub fn waiting(&self) -> u32 {
        self.queued.load(Ordering::Acquire)
    }

    /// A slot was released: wake one waiter, if any (no lock taken when none wait).
    pub fn slot_released(&self) {
        if self.waiting() > 0 {
            self.notify.notify_one();
        }
    }
}

/// Process-wide state shared by listeners, the controller and the admin API.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub gate: &'static Gate,
    pub window: Window,
    /// The hit ratio read from a backend stats endpoint, if configured.
    pub scraped: crate::signals::scrape::Scraped,
    pub metrics: Metrics,
    pub clock: Clock,
    pub control: Mutex<Control>,
    /// Critical requests waiting briefly for a slot.
    pub queue: &'static WaitQueue,
    pub tarpit_held: AtomicU32,
    nonce: AtomicU64,
}

impl Compiled {
    /// Compiles a validated config; endpoints already known keep their counters.
    pub fn new(config: Config, metrics: &Metrics, previous: Option<&Compiled>) -> Self {
        let features = config
            .features
            .iter()
            .map(|f| FeatureRt {
                name: f.name.clone(),
                priority: f.priority,
                state: f.state,
                counters: metrics.feature(&f.name, f.priority),
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
        let client = build_client(&config.upstream);
        let classifier = Classifier::new(
            config.routes.clone(),
            config.default_feature,
            config.client_key.clone(),
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

impl Shared {
    /// Builds the state for a first config.
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let metrics = Metrics::new()?;
        let gate = Gate::leak(config.client_table_size);
        let params = config.control.clone();
        let controller = Controller::new(&params);
        let clock = Clock::new();
        let compiled = Arc::new(Compiled::new(config, &metrics, None));
        let mut control = Control {
            params,
            controller,
            last_signals: SignalSnapshot::default(),
            rate_rps: None,
            rate: None,
            attempts_seen: (0, 0),
            retry_share: 0.0,
        };
        let window = Window::new();
        window.rotate(clock.now_ms());
        let decision =
            control
                .controller
                .tick(clock.now_ms(), &control.params, &SignalSnapshot::default());
        let rate = control.rate_for(decision.rps);
        Ok(Arc::new(Self {
            snapshot: ArcSwap::from_pointee(Snapshot {
                compiled,
                decision,
                rate,
            }),
            gate,
            window,
            scraped: Default::default(),
            metrics,
            clock,
            control: Mutex::new(control),
            queue: Box::leak(Box::default()),
            tarpit_held: AtomicU32::new(0),
            nonce: AtomicU64::new(0),
        }))
    }

    /// A cheap random value for jitter and endpoint choice.
    pub fn rand(&self) -> u64 {
        crate::admission::retry::mix64(self.nonce.fetch_add(1, Ordering::Relaxed))
    }

    /// One controller tick: read signals, step the controller, publish a new snapshot.
    pub fn tick(&self) {
        let now = self.clock.now_ms();
        let cur = self.snapshot.load_full();
        let window_s = cur.compiled.config.signals.window.as_secs().max(1);
        self.window.rotate(now);
        let mut signals = self.window.snapshot(now, window_s);
        let (peak, limit_rejects) = self.gate.take_tick_counters();
        signals.inflight = self.gate.inflight();
        signals.peak_inflight = peak;
        signals.limit_rejects = limit_rejects;
        if signals.hit_ratio.is_none() {
            // No cache header seen through us: fall back on the backend's own figure, if fresh.
            if let Some(scrape) = &cur.compiled.config.signals.scrape {
                let max_age = 3 * scrape.interval.as_millis() as u64 + 1000;
                signals.hit_ratio = self.scraped.fresh(now, max_age);
            }
        }
        let Ok(mut control) = self.control.lock() else {
            return;
        };
        let control = &mut *control;
        let decision = control.controller.tick(now, &control.params, &signals);
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
        self.snapshot.store(Arc::new(Snapshot {
            compiled: cur.compiled.clone(),
            decision,
            rate,
        }));
        if self.queue.waiting() > 0 {
            // The limit may have grown: let every waiter try again.
            self.queue.notify.notify_waiters();
        }
    }

    /// Swaps in a new config; controller state, counters and client memory carry over.
    pub fn reload(&self, config: Config) {
        let cur = self.snapshot.load_full();
        let compiled = Arc::new(Compiled::new(config, &self.metrics, Some(&cur.compiled)));
        if let Ok(mut control) = self.control.lock() {
            let paused = control.params.paused;
            control.params = compiled.config.control.clone();
            control.params.paused = paused;
        }
        self.snapshot.store(Arc::new(Snapshot {
            compiled,
            decision: cur.decision,
            rate: cur.rate.clone(),
        }));
    }

    fn publish_metrics(&self, d: &Decision, s: &SignalSnapshot, retry_share: f64) {
        let m = &self.metrics;
        m.limit.set(i64::from(d.limit));
        m.inflight.set(i64::from(s.inflight));
        m.progress.set(d.progress);
        m.hit_ratio.set(s.hit_ratio.unwrap_or(f64::NAN));
        m.p99.set(s.p99_ms / 1000.0);
        m.retry_share.set(retry_share);
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
