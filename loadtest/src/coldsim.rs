//! `coldsim`: a standby data center right after cutover. An empty cache in front of a database
//! with a concurrency knee: past the knee every query slows everyone (processor sharing with
//! contention), so overload lowers goodput. Work is not cancelled when a client gives up.

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::rng::{quantile, Rng, Zipf};

/// Simulator parameters (all flags, with the defaults documented by `--help`).
#[derive(Args, Clone, Debug)]
pub struct SimConfig {
    /// Address to listen on (loopback).
    #[arg(long = "sim-listen", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Database queries that run at full speed at once (the knee).
    #[arg(long, default_value_t = 16)]
    pub db_knee: u64,
    /// Database service time of one query with no contention, ms.
    #[arg(long, default_value_t = 40.0)]
    pub db_ms: f64,
    /// Extra slowdown per query beyond the knee (0.1: each extra query slows all by 10 %).
    #[arg(long, default_value_t = 0.15)]
    pub contention: f64,
    /// A login miss costs this many queries (session, profile, ...).
    #[arg(long, default_value_t = 3.0)]
    pub login_cost: f64,
    /// Cache-hit service time, ms.
    #[arg(long, default_value_t = 1.0)]
    pub hit_ms: f64,
    /// Cache capacity in entries (FIFO eviction).
    #[arg(long, default_value_t = 200_000)]
    pub cache_entries: usize,
    /// Distinct feed items (Zipf-distributed popularity).
    #[arg(long, default_value_t = 5_000)]
    pub feed_items: usize,
    /// Zipf exponent of feed popularity.
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// Share of recommendations that can hit the cache at all.
    #[arg(long, default_value_t = 0.2)]
    pub recommend_cacheable: f64,
    /// Seed for everything random in the simulator.
    #[arg(long, default_value_t = 42)]
    pub sim_seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct P {
            #[command(flatten)]
            c: SimConfig,
        }
        P::parse_from(["coldsim"]).c
    }
}

const ENDPOINTS: [&str; 4] = ["login", "sync", "feed", "recommend"];

#[derive(Default)]
struct Counts {
    requests: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

/// Shared simulator state.
pub struct Sim {
    cfg: SimConfig,
    cache: Mutex<(HashSet<String>, VecDeque<String>)>,
    db_active: AtomicU64,
    db_done: AtomicU64,
    counts: [Counts; 4],
    latencies: Mutex<VecDeque<(Instant, f64)>>,
    rng: Mutex<Rng>,
    zipf: Zipf,
    started: Instant,
}

impl Sim {
    /// A cold simulator.
    pub fn new(cfg: SimConfig) -> Arc<Self> {
        Arc::new(Sim {
            zipf: Zipf::new(cfg.feed_items, cfg.zipf),
            rng: Mutex::new(Rng::new(cfg.sim_seed)),
            cfg,
            cache: Mutex::new((HashSet::new(), VecDeque::new())),
            db_active: AtomicU64::new(0),
            db_done: AtomicU64::new(0),
            counts: Default::default(),
            latencies: Mutex::new(VecDeque::new()),
            started: Instant::now(),
        })
    }

    /// The backend starts again after it died: an empty cache and no database work in progress.
    pub fn restart_cold(&self) {
        if let Ok(mut c) = self.cache.lock() {
            c.0.clear();
            c.1.clear();
        }
        self.db_active.store(0, Ordering::SeqCst);
    }

    fn cached(&self, key: &str) -> bool {
        self.cache
            .lock()
            .map(|c| c.0.contains(key))
            .unwrap_or(false)
    }

    fn insert(&self, key: String) {
        if let Ok(mut c) = self.cache.lock() {
            if c.0.insert(key.clone()) {
                c.1.push_back(key);
                while c.1.len() > self.cfg.cache_entries {
                    if let Some(old) = c.1.pop_front() {
                        c.0.remove(&old);
                    }
                }
            }
        }
    }

    /// Runs `cost` queries' worth of database work, slowed by contention. Detached from the
    /// caller: a client that gives up does not cancel it.
    async fn query(self: &Arc<Self>, cost: f64, key: String) {
        let sim = Arc::clone(self);
        let work = tokio::spawn(async move {
            sim.db_active.fetch_add(1, Ordering::SeqCst);
            let mut left_ms = cost * sim.cfg.db_ms;
            let step = Duration::from_millis(5);
            while left_ms > 0.0 {
                tokio::time::sleep(step).await;
                let active = sim.db_active.load(Ordering::SeqCst) as f64;
                let over = (active - sim.cfg.db_knee as f64).max(0.0);
                left_ms -= 5.0 / (1.0 + sim.cfg.contention * over);
            }
            sim.db_active.fetch_sub(1, Ordering::SeqCst);
            sim.db_done.fetch_add(1, Ordering::SeqCst);
            sim.insert(key);
        });
        let _ = work.await;
    }

    async fn serve(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let start = Instant::now();
        let user = req
            .headers()
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("anonymous")
            .to_string();
        let (idx, key, cost) = match (req.method(), req.uri().path()) {
            (&Method::GET, "/__stats") => return self.stats_response(),
            (&Method::POST, p) if p.starts_with("/api/login") => {
                (0, format!("login:{user}"), self.cfg.login_cost)
            }
            (_, p) if p.starts_with("/api/sync") => (1, format!("sync:{user}"), 1.0),
            (_, p) if p.starts_with("/api/feed") => {
                let item = self
                    .rng
                    .lock()
                    .map(|mut r| self.zipf.sample(&mut r))
                    .unwrap_or(0);
                (2, format!("feed:{item}"), 1.0)
            }
            (_, p) if p.starts_with("/api/recommend") => {
                let (cacheable, n) = self
                    .rng
                    .lock()
                    .map(|mut r| (r.unit() < self.cfg.recommend_cacheable, r.below(1 << 40)))
                    .unwrap_or((false, 0));
                let key = if cacheable {
                    format!("rec:{user}")
                } else {
                    format!("rec:{user}:{n}")
                };
                (3, key, 1.0)
            }
            _ => {
                let mut r = Response::new(Full::new(Bytes::from_static(b"not found\n")));
                *r.status_mut() = StatusCode::NOT_FOUND;
                return r;
            }
        };
        let c = &self.counts[idx];
        c.requests.fetch_add(1, Ordering::Relaxed);
        let hit = self.cached(&key);
        if hit {
            c.hits.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs_f64(self.cfg.hit_ms / 1000.0)).await;
        } else {
            c.misses.fetch_add(1, Ordering::Relaxed);
            self.query(cost, key).await;
        }
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        if let Ok(mut l) = self.latencies.lock() {
            l.push_back((Instant::now(), ms));
            while l
                .front()
                .is_some_and(|(t, _)| t.elapsed() > Duration::from_secs(2))
            {
                l.pop_front();
            }
        }
        let mut r = Response::new(Full::new(Bytes::from(format!(
            "{{\"endpoint\":\"{}\"}}\n",
            ENDPOINTS[idx]
        ))));
        r.headers_mut().insert(
            "x-cache",
            http::HeaderValue::from_static(if hit { "HIT" } else { "MISS" }),
        );
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        r
    }

    /// The `/__stats` document.
    pub fn stats(&self) -> serde_json::Value {
        let mut last: Vec<f64> = self
            .latencies
            .lock()
            .map(|l| {
                l.iter()
                    .filter(|(t, _)| t.elapsed() <= Duration::from_secs(1))
                    .map(|(_, ms)| *ms)
                    .collect()
            })
            .unwrap_or_default();
        let (mut hits, mut misses) = (0, 0);
        let endpoints: serde_json::Map<String, serde_json::Value> = ENDPOINTS
            .iter()
            .zip(&self.counts)
            .map(|(name, c)| {
                let (h, m) = (
                    c.hits.load(Ordering::Relaxed),
                    c.misses.load(Ordering::Relaxed),
                );
                hits += h;
                misses += m;
                (
                    name.to_string(),
                    json!({"requests": c.requests.load(Ordering::Relaxed), "hits": h, "misses": m}),
                )
            })
            .collect();
        json!({
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "endpoints": endpoints,
            "hits": hits,
            "misses": misses,
            "hit_ratio": if hits + misses > 0 { hits as f64 / (hits + misses) as f64 } else { 0.0 },
            "db_active": self.db_active.load(Ordering::SeqCst),
            "db_knee": self.cfg.db_knee,
            "db_queries_done": self.db_done.load(Ordering::SeqCst),
            "cache_entries": self.cache.lock().map(|c| c.1.len()).unwrap_or(0),
            "latency_last_1s": {
                "count": last.len(),
                "p50_ms": quantile(&mut last, 0.5),
                "p99_ms": quantile(&mut last, 0.99),
            },
        })
    }

    fn stats_response(&self) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(Bytes::from(self.stats().to_string())));
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        r
    }
}

/// Serves the simulator on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, sim: Arc<Sim>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors and the like: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let sim = Arc::clone(&sim);
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let sim = Arc::clone(&sim);
                async move { Ok::<_, Infallible>(sim.serve(req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// `warmgate-loadtest coldsim`: serve until Ctrl-C.
pub async fn run(cfg: SimConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg.listen.ip().is_loopback(),
        "coldsim listens on loopback only, not {}",
        cfg.listen
    );
    let listener = TcpListener::bind(cfg.listen).await?;
    eprintln!(
        "coldsim on http://{} (knee {} queries, {} ms each); stats at /__stats",
        listener.local_addr()?,
        cfg.db_knee,
        cfg.db_ms
    );
    let sim = Sim::new(cfg);
    tokio::select! {
        _ = serve(listener, sim) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    async fn start(cfg: SimConfig) -> (SocketAddr, Arc<Sim>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sim = Sim::new(SimConfig {
            listen: addr,
            ..cfg
        });
        tokio::spawn(serve(listener, sim.clone()));
        (addr, sim)
    }

    async fn call(addr: SocketAddr, method: &str, path: &str, user: &str) -> (Duration, String) {
        use http_body_util::BodyExt;
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build_http::<Full<Bytes>>();
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .header("x-user", user)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let t = Instant::now();
        let resp = client.request(req).await.unwrap();
        let cache = resp
            .headers()
            .get("x-cache")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let _ = resp.into_body().collect().await;
        (t.elapsed(), cache)
    }

    #[tokio::test]
    async fn cache_warms_with_repeated_keys_and_stats_count_it() {
        let (addr, sim) = start(SimConfig {
            db_ms: 20.0,
            ..Default::default()
        })
        .await;
        let (miss_t, first) = call(addr, "POST", "/api/login", "alice").await;
        let (hit_t, second) = call(addr, "POST", "/api/login", "alice").await;
        assert_eq!((first.as_str(), second.as_str()), ("MISS", "HIT"));
        assert!(
            hit_t < miss_t / 4,
            "a hit is cheap: {hit_t:?} vs {miss_t:?}"
        );
        for u in ["a", "b", "c"] {
            call(addr, "GET", "/api/sync", u).await;
            call(addr, "GET", "/api/sync", u).await;
        }
        let s = sim.stats();
        assert_eq!(s["endpoints"]["login"]["requests"], 2);
        assert_eq!(s["endpoints"]["sync"]["hits"], 3);
        assert_eq!(s["endpoints"]["sync"]["misses"], 3);
        assert_eq!(s["hit_ratio"], 0.5);
        assert_eq!(s["db_queries_done"], 4);
    }

    #[tokio::test]
    async fn latency_grows_past_the_knee() {
        let cfg = SimConfig {
            db_ms: 30.0,
            db_knee: 4,
            contention: 0.5,
            ..Default::default()
        };
        let (addr, _) = start(cfg).await;
        let batch = |n: usize, tag: &'static str| async move {
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    tokio::spawn(async move {
                        call(addr, "GET", "/api/sync", &format!("{tag}{i}")).await.0
                    })
                })
                .collect();
            let mut worst = Duration::ZERO;
            for t in tasks {
                worst = worst.max(t.await.unwrap());
            }
            worst
        };
        let at_knee = batch(4, "k").await;
        let past = batch(16, "p").await;
        // 16 concurrent misses: 12 over the knee, each slowing all by 50 % → several times slower.
        assert!(
            past > at_knee * 3,
            "{at_knee:?} at the knee, {past:?} past it"
        );
    }
}
