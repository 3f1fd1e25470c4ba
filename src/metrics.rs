//! Pre-registered Prometheus metrics. Label children are resolved once (per feature at load),
//! never formatted per request.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::admission::{CtlState, Priority, RejectReason};

/// What happened to a request, the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Admitted,
    /// A closed stage or a feature switched off.
    Shed,
    /// The wait line was full, or the wait ran out.
    RejectedQueue,
    RejectedRate,
    UpstreamError,
    /// Shadow mode: would have waited or been rejected, was admitted.
    ShadowReject,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Admitted,
        Outcome::Shed,
        Outcome::RejectedQueue,
        Outcome::RejectedRate,
        Outcome::UpstreamError,
        Outcome::ShadowReject,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Admitted => "admitted",
            Outcome::Shed => "shed",
            Outcome::RejectedQueue => "rejected_queue",
            Outcome::RejectedRate => "rejected_rate",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ShadowReject => "shadow_reject",
        }
    }

    /// The outcome of a reject.
    pub fn of(reason: RejectReason) -> Outcome {
        match reason {
            RejectReason::Stage | RejectReason::FeatureOff => Outcome::Shed,
            RejectReason::QueueFull | RejectReason::QueueTimeout => Outcome::RejectedQueue,
            RejectReason::Rate | RejectReason::ClientLimit | RejectReason::ClientRate => {
                Outcome::RejectedRate
            }
        }
    }
}

/// Counters of one feature, one per outcome.
#[derive(Clone, Debug)]
pub struct FeatureCounters([IntCounter; 6]);

impl FeatureCounters {
    /// Counts one request with this outcome.
    pub fn inc(&self, o: Outcome) {
        self.0[o as usize].inc();
    }

    /// Current count for an outcome.
    pub fn get(&self, o: Outcome) -> u64 {
        self.0[o as usize].get()
    }
}

/// All metrics of the process. Per-cluster series carry a `cluster` label; their children are
/// resolved once per cluster ([`Metrics::cluster`]).
pub struct Metrics {
    pub registry: Registry,
    requests: IntCounterVec,
    pub attempts_first: IntCounter,
    pub attempts_retry: IntCounter,
    /// Return tickets: `issued`, then what presented ones were ([`crate::ticket::Verdict`]).
    pub tickets_issued: IntCounter,
    pub tickets_seen: [IntCounter; 5],
    /// With `[fleet]`: 1 while the store answers.
    pub fleet_store_up: IntGauge,
    /// Open client connections.
    pub connections: IntGauge,
    /// Times the listener stopped accepting because `server.max_connections` were open.
    pub connections_capped: IntCounter,
    /// Idle HTTP/1 connections parked (holding no session buffers).
    pub connections_parked: IntGauge,
    /// Open WebSocket tunnels (they hold no admission slot).
    pub tunnels: IntGauge,
    /// Share of requests that are retries, over the last tick.
    pub retry_share: Gauge,
    /// Responses whose admission slot was freed because the client stopped reading.
    pub stalled_released: IntCounter,
    families: ClusterFamilies,
}

/// The per-cluster metric families.
struct ClusterFamilies {
    upstream_latency: HistogramVec,
    queue_wait: HistogramVec,
    queue_timeouts: IntCounterVec,
    queue_len: IntGaugeVec,
    held: IntGaugeVec,
    endpoints_ejected: IntGaugeVec,
    engaged: IntGaugeVec,
    stage_eta: GaugeVec,
    inflation: GaugeVec,
    limit: IntGaugeVec,
    inflight: IntGaugeVec,
    progress: GaugeVec,
    hit_ratio: GaugeVec,
    p99: GaugeVec,
    lowest_admitted_priority: IntGaugeVec,
    state: IntGaugeVec,
    fleet_limit: IntGaugeVec,
    fleet_share: IntGaugeVec,
}

/// One cluster's series, resolved once when the cluster is first configured.
#[derive(Clone)]
pub struct ClusterMetrics {
    pub upstream_latency: Histogram,
    /// Time spent in the wait line, by priority (index = `Priority::index`).
    pub queue_wait: [Histogram; 4],
    /// Waits that ran out without a slot, by priority.
    pub queue_timeouts: [IntCounter; 4],
    /// Requests in line, by priority (set on the tick).
    pub queue_len: [IntGauge; 4],
    /// Early returners held before their reject.
    pub held: IntGauge,
    /// With `[fleet]`: the fleet's limit and this instance's share of it.
    pub fleet_limit: IntGauge,
    pub fleet_share: IntGauge,
    /// Endpoints ejected by passive health right now.
    pub endpoints_ejected: IntGauge,
    pub engaged: IntGauge,
    /// Expected seconds until each priority's stage opens (0 when open), by priority.
    pub stage_eta: [Gauge; 4],
    pub inflation: Gauge,
    pub limit: IntGauge,
    pub inflight: IntGauge,
    pub progress: Gauge,
    pub hit_ratio: Gauge,
    pub p99: Gauge,
    pub lowest_admitted_priority: IntGauge,
    state: [IntGauge; CtlState::ALL.len()],
}

impl ClusterMetrics {
    /// Marks the controller's state.
    pub fn set_state(&self, s: CtlState) {
        for (st, g) in CtlState::ALL.iter().zip(&self.state) {
            g.set(i64::from(*st == s));
        }
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    // Registration fails only on a duplicate name, which the fixed set below cannot have.
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> prometheus::Result<Self> {
        let r = Registry::new();
        let buckets = vec![
            0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let attempts = reg(
            &r,
            IntCounterVec::new(
                Opts::new("warmgate_attempts_total", "Requests by attempt kind"),
                &["attempt"],
            )?,
        );
        let c = &["cluster"];
        let cp = &["cluster", "priority"];
        let gauge = |name: &str, help: &str| -> prometheus::Result<GaugeVec> {
            Ok(reg(&r, GaugeVec::new(Opts::new(name, help), c)?))
        };
        let int_gauge = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            Ok(reg(&r, IntGaugeVec::new(Opts::new(name, help), c)?))
        };
        let families = ClusterFamilies {
            upstream_latency: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "warmgate_upstream_latency_seconds",
                        "Upstream response-header latency",
                    )
                    .buckets(buckets.clone()),
                    c,
                )?,
            ),
            queue_wait: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "warmgate_queue_wait_seconds",
                        "Time requests waited in line, admitted or not",
                    )
                    .buckets(buckets),
                    cp,
                )?,
            ),
            queue_timeouts: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "warmgate_queue_timeouts_total",
                        "Waits that reached the priority's longest wait without a slot",
                    ),
                    cp,
                )?,
            ),
            queue_len: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("warmgate_queue_length", "Requests waiting in line"),
                    cp,
                )?,
            ),
            fleet_limit: int_gauge(
                "warmgate_fleet_limit",
                "With [fleet]: the fleet's limit on requests in flight to the cluster (0: steering alone)",
            )?,
            fleet_share: int_gauge(
                "warmgate_fleet_share",
                "With [fleet]: this instance's share of the fleet's limit (0: steering alone)",
            )?,
            held: int_gauge(
                "warmgate_held_early_returners",
                "Clients that came back before their Retry-After, held before the answer",
            )?,
            endpoints_ejected: int_gauge(
                "warmgate_endpoints_ejected",
                "Upstream endpoints ejected by passive health right now (set on the tick)",
            )?,
            engaged: int_gauge(
                "warmgate_ramp_engaged",
                "1 while the warm-up ramp is engaged",
            )?,
            stage_eta: reg(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "warmgate_stage_eta_seconds",
                        "Expected seconds until the priority is admitted by the engaged ramp (0: admitted)",
                    ),
                    cp,
                )?,
            ),
            inflation: gauge(
                "warmgate_latency_inflation_ratio",
                "Upstream latency over its no-load latency for the same mix, last tick",
            )?,
            limit: int_gauge("warmgate_admission_limit", "Max requests in flight now")?,
            inflight: int_gauge("warmgate_inflight", "Admitted requests in flight")?,
            progress: gauge("warmgate_ramp_progress_ratio", "Ramp progress, 0 to 1")?,
            hit_ratio: gauge(
                "warmgate_cache_hit_ratio",
                "Upstream cache hit ratio over the window (NaN: unknown)",
            )?,
            p99: gauge(
                "warmgate_upstream_p99_seconds",
                "Upstream p99 latency over the window",
            )?,
            lowest_admitted_priority: int_gauge(
                "warmgate_stage",
                "Lowest priority admitted: 3 critical, 2 high, 1 normal, 0 low, -1 none",
            )?,
            state: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "warmgate_controller_state",
                        "1 for the controller's current state",
                    ),
                    &["cluster", "state"],
                )?,
            ),
        };
        let tickets = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "warmgate_tickets_total",
                    "Return tickets issued, and presented ones by what they were",
                ),
                &["result"],
            )?,
        );
        Ok(Self {
            fleet_store_up: reg(
                &r,
                IntGauge::new(
                    "warmgate_fleet_store_up",
                    "1 while the fleet store answered the last sync, 0 when it did not; -1 without [fleet]",
                )?,
            ),
            tickets_issued: tickets.with_label_values(&["issued"]),
            tickets_seen: crate::ticket::Verdict::LABELS.map(|l| tickets.with_label_values(&[l])),
            requests: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "warmgate_requests_total",
                        "Requests by cluster, feature, priority and outcome",
                    ),
                    &["cluster", "feature", "priority", "outcome"],
                )?,
            ),
            attempts_first: attempts.with_label_values(&["first"]),
            attempts_retry: attempts.with_label_values(&["retry"]),
            connections: reg(
                &r,
                IntGauge::new("warmgate_client_connections", "Open client connections")?,
            ),
            connections_parked: reg(
                &r,
                IntGauge::new(
                    "warmgate_client_connections_parked",
                    "Idle HTTP/1 client connections parked without session buffers",
                )?,
            ),
            connections_capped: reg(
                &r,
                IntCounter::new(
                    "warmgate_connection_cap_reached_total",
                    "Times the listener paused accepting because server.max_connections were open",
                )?,
            ),
            tunnels: reg(
                &r,
                IntGauge::new(
                    "warmgate_websocket_tunnels",
                    "Open WebSocket tunnels (upgraded connections; they hold no admission slot)",
                )?,
            ),
            retry_share: reg(
                &r,
                Gauge::new(
                    "warmgate_retry_share_ratio",
                    "Share of requests that are retries, over the last tick",
                )?,
            ),
            stalled_released: reg(
                &r,
                IntCounter::new(
                    "warmgate_stalled_responses_released_total",
                    "Responses whose admission slot was freed because the client stopped reading for server.stall_release (the body kept streaming)",
                )?,
            ),
            families,
            registry: r,
        })
    }

    /// Resolves the series of one cluster (when it is first configured, never per request).
    /// Every state is exported from the start (a dashboard's query has data at once).
    pub fn cluster(&self, name: &str) -> ClusterMetrics {
        let f = &self.families;
        let per_p =
            |v: &IntGaugeVec| Priority::ALL.map(|p| v.with_label_values(&[name, p.as_str()]));
        let m = ClusterMetrics {
            upstream_latency: f.upstream_latency.with_label_values(&[name]),
            queue_wait: Priority::ALL.map(|p| f.queue_wait.with_label_values(&[name, p.as_str()])),
            queue_timeouts: Priority::ALL
                .map(|p| f.queue_timeouts.with_label_values(&[name, p.as_str()])),
            queue_len: per_p(&f.queue_len),
            held: f.held.with_label_values(&[name]),
            fleet_limit: f.fleet_limit.with_label_values(&[name]),
            fleet_share: f.fleet_share.with_label_values(&[name]),
            endpoints_ejected: f.endpoints_ejected.with_label_values(&[name]),
            engaged: f.engaged.with_label_values(&[name]),
            stage_eta: Priority::ALL.map(|p| f.stage_eta.with_label_values(&[name, p.as_str()])),
            inflation: f.inflation.with_label_values(&[name]),
            limit: f.limit.with_label_values(&[name]),
            inflight: f.inflight.with_label_values(&[name]),
            progress: f.progress.with_label_values(&[name]),
            hit_ratio: f.hit_ratio.with_label_values(&[name]),
            p99: f.p99.with_label_values(&[name]),
            lowest_admitted_priority: f.lowest_admitted_priority.with_label_values(&[name]),
            state: CtlState::ALL.map(|s| f.state.with_label_values(&[name, s.as_str()])),
        };
        m.set_state(CtlState::default());
        m
    }

    /// Removes a cluster's series (it left the config on a reload).
    pub fn forget_cluster(&self, name: &str) {
        let f = &self.families;
        let _ = f.upstream_latency.remove_label_values(&[name]);
        for g in [
            &f.held,
            &f.fleet_limit,
            &f.fleet_share,
            &f.endpoints_ejected,
            &f.engaged,
            &f.limit,
            &f.inflight,
            &f.lowest_admitted_priority,
        ] {
            let _ = g.remove_label_values(&[name]);
        }
        for g in [&f.inflation, &f.progress, &f.hit_ratio, &f.p99] {
            let _ = g.remove_label_values(&[name]);
        }
        for p in Priority::ALL {
            let l = [name, p.as_str()];
            let _ = f.queue_wait.remove_label_values(&l);
            let _ = f.queue_timeouts.remove_label_values(&l);
            let _ = f.queue_len.remove_label_values(&l);
            let _ = f.stage_eta.remove_label_values(&l);
        }
        for s in CtlState::ALL {
            let _ = f.state.remove_label_values(&[name, s.as_str()]);
        }
    }

    /// Resolves the counters of one feature of `cluster` (at load, never per request).
    pub fn feature(&self, cluster: &str, name: &str, p: Priority) -> FeatureCounters {
        FeatureCounters(Outcome::ALL.map(|o| {
            self.requests
                .with_label_values(&[cluster, name, p.as_str(), o.as_str()])
        }))
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
