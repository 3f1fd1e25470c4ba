//! The running state: one immutable snapshot (config, compiled routes, clusters, each
//! cluster's last controller decision) behind `ArcSwap`, plus the long-lived state that
//! survives reloads (per cluster, by name).

pub mod access;
pub mod background;
pub mod cluster;
pub mod feature;
pub mod history;
pub mod reload;
pub mod tickets;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::admission::classify::Classifier;
use crate::admission::FeatureState;
use crate::clock::Clock;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::ticket::ClientHasher;
pub use cluster::{Cluster, ClusterState, ClusterView, Control, Overrides};
pub use feature::{FeatureRt, FeatureSwitch, RejectBodies};

/// Everything derived from one config, built at load or reload.
pub struct Compiled {
    pub config: Config,
    pub classifier: Classifier,
    pub features: Vec<FeatureRt>,
    /// In the config's order; a feature names its cluster by index.
    pub clusters: Vec<Arc<Cluster>>,
    /// Signed return tickets, when `[ticket]` is configured.
    pub tickets: Option<tickets::Tickets>,
}

impl Compiled {
    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<usize> {
        self.clusters.iter().position(|c| c.config.name == name)
    }

    /// The clusters' names, for messages.
    pub fn cluster_names(&self) -> String {
        let names: Vec<&str> = self
            .clusters
            .iter()
            .map(|c| c.config.name.as_str())
            .collect();
        names.join(", ")
    }
}

/// What a request reads: one load gives a consistent view of config and decisions.
pub struct Snapshot {
    pub compiled: Arc<Compiled>,
    /// Each cluster's last decision, aligned with `compiled.clusters`.
    pub clusters: Box<[ClusterView]>,
}

/// Controller state of every cluster, and the operator's feature switches. Whoever holds this
/// lock is the only writer of [`Shared::snapshot`]: the tick and a reload both store under it,
/// so neither can put back what the other replaced.
pub struct Controls {
    /// Aligned with the snapshot's clusters.
    pub clusters: Vec<Control>,
    /// Bumped by every reload and every operator change: a write may say which version it
    /// was made against (`if_version`) and is refused if someone changed things since.
    pub version: u64,
    /// Feature name → the state an operator set (over the file's), kept across reloads.
    pub features: BTreeMap<String, FeatureState>,
    attempts_seen: (u64, u64),
    pub retry_share: f64,
    /// The second of the last history point.
    history_s: u64,
}

/// Process-wide state shared by listeners, the controller and the admin API.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub metrics: Metrics,
    pub clock: Clock,
    pub control: Mutex<Controls>,
    /// Keys the client hash when no `[ticket]` secret does; kept for the process so a
    /// reload keeps client memory.
    pub hasher: ClientHasher,
    nonce: AtomicU64,
    /// Set once shutdown has begun: not ready for new traffic.
    pub draining: std::sync::atomic::AtomicBool,
    /// The access log, when `log.access` is set (started with the process).
    pub access: Option<access::AccessLog>,
    /// The gates of clusters a reload removed, by name: one added back gets its own again
    /// (a gate lives as long as the process).
    retired: Mutex<BTreeMap<String, Retired>>,
    /// The fleet this instance steers with (`[fleet]`; set at start, a reload keeps it).
    pub fleet: Option<Arc<crate::fleet::Link>>,
    /// Wakes the controller before its tick: a probe got an answer during an outage, and the
    /// line should not wait up to a tick to learn that the backend is back.
    pub wake: tokio::sync::Notify,
}

impl Shared {
    /// Builds the state for a first config.
    pub fn new(config: Config) -> anyhow::Result<Arc<Self>> {
        let metrics = Metrics::new()?;
        let access = match &config.log.access {
            Some(target) => Some(
                access::AccessLog::start(target)
                    .map_err(|e| anyhow::anyhow!("log.access {target}: {e}"))?,
            ),
            None => None,
        };
        let clock = Clock::new();
        let fleet = config
            .fleet
            .clone()
            .map(|f| Arc::new(crate::fleet::Link::new(f, clock.now_ms())));
        let hasher = ClientHasher::random();
        let retired = Mutex::new(BTreeMap::new());
        let mut control = Controls {
            clusters: Vec::new(),
            version: 0,
            features: BTreeMap::new(),
            attempts_seen: (0, 0),
            retry_share: 0.0,
            history_s: 0,
        };
        let parts = Parts {
            metrics: &metrics,
            hasher: &hasher,
            retired: &retired,
            now_ms: clock.now_ms(),
            in_fleet: fleet.is_some(),
        };
        let snapshot = parts.compile(&mut control, None, config);
        metrics
            .fleet_store_up
            .set(if fleet.is_some() { 0 } else { -1 });
        Ok(Arc::new(Self {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            clock,
            control: Mutex::new(control),
            hasher,
            nonce: AtomicU64::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
            access,
            retired,
            fleet,
            wake: tokio::sync::Notify::new(),
        }))
    }

    /// A cheap random value for jitter and endpoint choice.
    pub fn rand(&self) -> u64 {
        crate::admission::retry::mix64(self.nonce.fetch_add(1, Ordering::Relaxed))
    }

    /// One controller tick: every cluster reads its signals and steps its controller; one
    /// new snapshot carries every cluster's decision.
    pub fn tick(&self) {
        let Ok(mut control) = self.control.lock() else {
            return;
        };
        let control = &mut *control;
        // Loaded under the lock: a reload cannot slip in between this load and the store.
        let cur = self.snapshot.load_full();
        let now = self.clock.now_ms();
        let views: Box<[ClusterView]> = cur
            .compiled
            .clusters
            .iter()
            .zip(control.clusters.iter_mut())
            .zip(cur.clusters.iter())
            .map(|((cluster, ctl), view)| {
                ctl.tick(cluster, &view.decision, now, self.fleet.as_deref())
            })
            .collect();
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
        self.metrics.retry_share.set(control.retry_share);
        if let Some(link) = &self.fleet {
            self.metrics.fleet_store_up.set(i64::from(link.store_up()));
        }
        if now / 1000 != control.history_s {
            control.history_s = now / 1000;
            let unix_ms = crate::clock::unix_ms();
            for (i, (cluster, ctl)) in cur
                .compiled
                .clusters
                .iter()
                .zip(control.clusters.iter())
                .enumerate()
            {
                if let Some(view) = views.get(i) {
                    let p = history::point(i, cluster, view, ctl, &cur.compiled.features, unix_ms);
                    cluster.state.history.push(p);
                }
            }
        }
        self.snapshot.store(Arc::new(Snapshot {
            compiled: cur.compiled.clone(),
            clusters: views,
        }));
    }

    /// Swaps in a new config. A cluster that keeps its name keeps its controller state, wait
    /// line, client memory, counters and pooled upstream connections; one that is new starts
    /// fresh; one that is gone stops being served.
    /// The listener keeps speaking what it started with: a reload that switches TLS on or off
    /// keeps the running setting (`reload::needs_restart` reports it); new certificates apply.
    pub fn reload(&self, config: Config) {
        let Ok(mut control) = self.control.lock() else {
            return;
        };
        let cur = self.snapshot.load_full();
        let parts = Parts {
            metrics: &self.metrics,
            hasher: &self.hasher,
            retired: &self.retired,
            now_ms: self.clock.now_ms(),
            in_fleet: self.fleet.is_some(),
        };
        let next = parts.compile(&mut control, Some(&cur), config);
        self.snapshot.store(Arc::new(next));
    }
}

/// A removed cluster's gate and client table.
type Retired = (
    &'static crate::admission::Gate,
    &'static crate::admission::per_client::ClientInflight,
);

/// What compiling a config needs from the process.
struct Parts<'a> {
    metrics: &'a Metrics,
    hasher: &'a ClientHasher,
    retired: &'a Mutex<BTreeMap<String, Retired>>,
    now_ms: u64,
    /// This instance steers with a fleet (`[fleet]` at start).
    in_fleet: bool,
}

impl Parts<'_> {
    /// The snapshot for `config`, carrying over what `cur` (the running one, if any) has.
    fn compile(
        &self,
        control: &mut Controls,
        cur: Option<&Snapshot>,
        mut config: Config,
    ) -> Snapshot {
        if let Some(cur) = cur {
            if config.tls.is_some() != cur.compiled.config.tls.is_some() {
                config.tls = cur.compiled.config.tls.clone();
            }
        }
        let mut old: BTreeMap<String, (Arc<Cluster>, Control, ClusterView)> = BTreeMap::new();
        if let Some(cur) = cur {
            for ((c, ctl), view) in cur
                .compiled
                .clusters
                .iter()
                .zip(control.clusters.drain(..))
                .zip(cur.clusters.iter())
            {
                old.insert(c.config.name.clone(), (Arc::clone(c), ctl, view.clone()));
            }
        }
        let mut clusters = Vec::with_capacity(config.clusters.len());
        let mut views = Vec::with_capacity(config.clusters.len());
        for cc in &config.clusters {
            let (cluster, ctl, view) = match old.remove(&cc.name) {
                Some((previous, mut ctl, view)) => {
                    ctl.reconfigure(cc.control.clone());
                    let state = Arc::clone(&previous.state);
                    (Cluster::new(cc.clone(), state, Some(&previous)), ctl, view)
                }
                None => {
                    let state = self.cluster_state(cc, config.client_table_size);
                    let cluster = Cluster::new(cc.clone(), state, None);
                    if self.in_fleet {
                        cluster.state.gate.share_told();
                    }
                    let mut ctl = Control::new(cc.control.clone());
                    let mut view = ctl.first_view(&cluster, self.now_ms);
                    if self.in_fleet {
                        // One at a time until the fleet is known: a new instance must not
                        // add its own starting limit on top of a fleet at its knee.
                        view.decision = cluster::with_share(view.decision, 1, 0);
                        let d = &view.decision;
                        cluster
                            .state
                            .gate
                            .set_limit(d.limit, d.ceiling, d.slow_start);
                    }
                    (cluster, ctl, view)
                }
            };
            clusters.push(Arc::new(cluster));
            control.clusters.push(ctl);
            views.push(view);
        }
        for (name, (gone, _, _)) in old {
            tracing::warn!(cluster = %name, "cluster removed by the reload: no longer served");
            self.metrics.forget_cluster(&name);
            if let Ok(mut r) = self.retired.lock() {
                r.insert(name, (gone.state.gate, gone.state.per_client));
            }
        }
        let features = config
            .features
            .iter()
            .map(|f| FeatureRt {
                name: f.name.clone(),
                priority: f.priority,
                configured: f.state,
                state: FeatureSwitch::new(f.state),
                counters: self.metrics.feature(
                    &config.clusters[f.cluster].name,
                    &f.name,
                    f.priority,
                ),
                cluster: f.cluster,
                key: crate::admission::gate::feature_key(&f.name),
                reject_bodies: RejectBodies::new(&f.name, f.priority),
            })
            .collect::<Vec<_>>();
        // Operator switches outlive the file until released; one for a feature the new file no
        // longer has is dropped.
        control
            .features
            .retain(|name, state| match features.iter().find(|f| &f.name == name) {
                Some(f) => {
                    f.state.set(*state);
                    true
                }
                None => {
                    tracing::warn!(feature = %name, "override dropped: the reloaded config has no such feature");
                    false
                }
            });
        let classifier = Classifier::new(
            config.routes.clone(),
            config.default_feature,
            config.client_key.clone(),
            // With tickets or a fleet, every instance (and the next process) hashes a
            // client alike: a client's memory is shared, and its ticket is its own anywhere.
            match (&config.ticket, &config.fleet) {
                (Some(t), _) => ClientHasher::keyed(&t.client_secret),
                (None, Some(f)) => {
                    ClientHasher::keyed(&format!("warmgate fleet {} {}", f.name, f.store_text))
                }
                (None, None) => *self.hasher,
            },
        );
        let tickets = config
            .ticket
            .as_ref()
            .map(|t| tickets::Tickets::new(t, config.tls.is_some()));
        control.version += 1;
        Snapshot {
            compiled: Arc::new(Compiled {
                config,
                classifier,
                features,
                clusters,
                tickets,
            }),
            clusters: views.into_boxed_slice(),
        }
    }

    /// The state of a cluster new to this config: its own again if a reload removed it
    /// earlier, else a fresh one.
    fn cluster_state(
        &self,
        c: &crate::config::ClusterConfig,
        client_slots: usize,
    ) -> Arc<ClusterState> {
        let back = self.retired.lock().ok().and_then(|mut r| r.remove(&c.name));
        Arc::new(ClusterState::new(
            &c.name,
            self.metrics.cluster(&c.name),
            back,
            client_slots,
            c.queue.max_len as usize,
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

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
