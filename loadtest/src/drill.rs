//! `drill`: start coldsim, optionally warmgate in front of it, run the storm, sample both every
//! second, stop what was started, and write the report.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::net::TcpListener;
use warmgate::admin::schema::Status;

use crate::coldsim::{self, Sim, SimConfig};
use crate::storm::{self, StormConfig, StormReport};

/// Drill parameters.
#[derive(Args, Clone, Debug)]
pub struct DrillConfig {
    /// warmgate config to put in front of the simulator (its listen, admin and upstream
    /// addresses are replaced by loopback ports of the drill's choosing).
    #[arg(long, default_value = "config/warmgate.toml")]
    pub config: PathBuf,
    /// Send the storm straight at the simulator, without warmgate.
    #[arg(long, conflicts_with = "compare")]
    pub no_warmgate: bool,
    /// Run the same seeded storm twice, without and with warmgate, and compare.
    #[arg(long)]
    pub compare: bool,
    /// The warmgate binary (default: next to this one, then target/release/warmgate).
    #[arg(long)]
    pub warmgate_bin: Option<PathBuf>,
    /// Also run the storm behind nginx with a static rate limit of this many requests/s
    /// (`limit_req`), the usual alternative to a warm-up ramp.
    #[arg(long)]
    pub nginx_limit_rps: Option<u32>,
    /// Also run the storm behind HAProxy with a static `maxconn` of this many requests in flight
    /// to the backend (the rest wait in HAProxy's queue up to `timeout queue`, then 503). Repeat
    /// the flag to sweep several values and find the best static setting.
    #[arg(long)]
    pub haproxy_maxconn: Vec<u32>,
    /// HAProxy's `timeout queue`, ms (how long a request may wait for one of the maxconn slots).
    #[arg(long, default_value_t = 1500)]
    pub haproxy_queue_ms: u64,
    /// Kill the simulated backend this many seconds into the run (its connections and the
    /// database work in progress go with it), and start it again cold on the same port.
    #[arg(long)]
    pub backend_restart_at: Option<f64>,
    /// How long the killed backend stays down, seconds.
    #[arg(long, default_value_t = 5.0, requires = "backend_restart_at")]
    pub backend_down_s: f64,
    /// Also run N warmgate instances sharing one fleet store (a redis-server the drill starts
    /// on a loopback port) behind a round-robin TCP balancer (HAProxy `mode tcp` when
    /// installed, else the drill's own relay), each with one worker. Repeat to sweep N.
    #[arg(long)]
    pub fleet: Vec<u32>,
    /// With --fleet: also run the N instances without the store, each steering alone (what
    /// a fleet does without `[fleet]`).
    #[arg(long, requires = "fleet")]
    pub fleet_alone: bool,
    /// Two clusters on two cold backends: an auth database (knee `--db-knee`) for login and
    /// sync, and a feed database (knee `--feed-db-knee`) for feed and recommend. warmgate runs
    /// them as two `[[cluster]]`s; HAProxy as two backends routed by path, the feed one with
    /// `maxconn` scaled by the ratio of the knees. A `--backend-restart-at` restarts the auth one.
    #[arg(long, conflicts_with_all = ["fleet", "compare", "no_warmgate", "nginx_limit_rps"])]
    pub clusters: bool,
    /// With --clusters: the feed database's knee (queries at once before it slows down).
    #[arg(long, default_value_t = 32)]
    pub feed_db_knee: u64,
    /// Where to write report.html, report.json and logs.
    #[arg(long, default_value = "drill-report")]
    pub report_dir: PathBuf,
    #[command(flatten)]
    pub storm: StormConfig,
    #[command(flatten)]
    pub sim: SimConfig,
}

/// One sample of the backend and of warmgate, taken every second.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Sample {
    pub t: f64,
    pub backend_p50_ms: f64,
    pub backend_p99_ms: f64,
    pub backend_rps: f64,
    pub hit_ratio: f64,
    pub db_active: u64,
    pub progress: Option<f64>,
    pub limit: Option<u64>,
    pub inflight: Option<u64>,
    pub state: Option<String>,
    /// With --clusters: each cluster's backend and, behind warmgate, its limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<ClusterSample>,
}

/// One cluster's part of a [`Sample`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClusterSample {
    pub name: String,
    pub db_active: u64,
    pub backend_rps: f64,
    pub backend_p99_ms: f64,
    pub limit: Option<u64>,
    pub inflight: Option<u64>,
}

/// One run of the drill.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub label: String,
    pub with_warmgate: bool,
    /// The physical bound on "everyone logged in": users x login cost x query time / knee,
    /// plus the arrival spread, seconds.
    pub bound_s: f64,
    /// Queries the database runs at once before it slows down (its knee).
    pub db_knee: u64,
    pub storm: StormReport,
    pub samples: Vec<Sample>,
    /// Instances behind the balancer (`None`: one, or another proxy), and whether they
    /// shared a fleet store.
    #[serde(default)]
    pub instances: Option<u32>,
    #[serde(default)]
    pub shared_store: bool,
    /// With --clusters: each cluster's name and its database's knee, in sample order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<(String, u64)>,
}

fn warmgate_bin(cfg: &DrillConfig) -> PathBuf {
    if let Some(b) = &cfg.warmgate_bin {
        return b.clone();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("warmgate")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("target/release/warmgate"))
}

/// The user's config with the drill's addresses.
pub fn drill_config(
    path: &Path,
    listen: u16,
    admin: u16,
    upstream: &str,
) -> anyhow::Result<String> {
    with_addresses(path, listen, admin, |t| {
        let mut up = take_table(t, "upstream", path)?;
        up.insert(
            "endpoints".into(),
            toml::Value::Array(vec![toml::Value::String(upstream.into())]),
        );
        t.insert("upstream".into(), toml::Value::Table(up));
        Ok(())
    })
}

/// Reads the config at `path`, puts the drill's listen and admin addresses in, lets `edit` put
/// the upstreams in, and writes it out again.
pub fn with_addresses(
    path: &Path,
    listen: u16,
    admin: u16,
    edit: impl FnOnce(&mut toml::Table) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut t: toml::Table = text
        .parse()
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    t.insert(
        "listen".into(),
        toml::Value::String(format!("127.0.0.1:{listen}")),
    );
    edit(&mut t)?;
    let mut admin_t = take_table(&mut t, "admin", path)?;
    admin_t.insert(
        "listen".into(),
        toml::Value::String(format!("127.0.0.1:{admin}")),
    );
    t.insert("admin".into(), toml::Value::Table(admin_t));
    Ok(toml::to_string(&t)?)
}

/// Removes the table `k` from `t` (empty if absent); an error if it is not a table.
pub fn take_table(t: &mut toml::Table, k: &str, path: &Path) -> anyhow::Result<toml::Table> {
    match t.remove(k) {
        Some(toml::Value::Table(x)) => Ok(x),
        None => Ok(toml::Table::new()),
        Some(_) => anyhow::bail!("{}: {k} must be a table", path.display()),
    }
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_for_port(port: u16, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "{what} exited ({status}) before listening; see its log in the report directory"
            );
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(15),
            "{what} did not listen on {port} within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}

/// The child once it listens on `port`; stopped (and an error) if it does not.
pub async fn listening(mut c: Child, port: u16, what: &str) -> anyhow::Result<Child> {
    match wait_for_port(port, &mut c, what).await {
        Ok(()) => Ok(c),
        Err(e) => {
            stop_child(&mut c);
            Err(e)
        }
    }
}

/// Starts `warmgate run --config path`, its log to `log`.
pub fn start_warmgate(bin: &Path, path: &Path, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    Command::new(bin)
        .arg("run")
        .arg("--config")
        .arg(path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot start {}: {e} (build it: cargo build --release)",
                bin.display()
            )
        })
}

/// Stops a child we started: SIGTERM (graceful drain), then SIGKILL after 5 s.
pub fn stop_child(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

async fn get_json(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
    url: &str,
) -> Option<serde_json::Value> {
    use http_body_util::BodyExt;
    let uri: http::Uri = url.parse().ok()?;
    let resp = tokio::time::timeout(Duration::from_millis(800), client.get(uri))
        .await
        .ok()?
        .ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

/// What stands in front of the simulator in one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Front {
    Nothing,
    Warmgate,
    /// nginx with a static `limit_req` at this many requests per second (503 over it).
    NginxLimit(u32),
    /// HAProxy with a static `maxconn` to the backend (queued up to `timeout queue`, then 503).
    Haproxy(u32),
    /// N warmgate instances behind a round-robin balancer; sharing a fleet store or not.
    Fleet(u32, bool),
}

/// HAProxy with a static `maxconn` on the one backend server, queueing the rest (with
/// --clusters, two backends routed by path).
fn start_haproxy(
    cfg: &DrillConfig,
    maxconn: u32,
    port: u16,
    upstreams: &[(&str, String)],
) -> anyhow::Result<Child> {
    let dir = std::fs::canonicalize(&cfg.report_dir)?;
    let routing = if cfg.clusters {
        crate::clusters::haproxy_backends(cfg, maxconn, upstreams)
    } else {
        let upstream = upstreams.first().map_or("", |u| u.1.as_str());
        format!("  default_backend sim\n\nbackend sim\n  server s1 {upstream} maxconn {maxconn}\n")
    };
    let conf = format!(
        "global\n  maxconn 9000\n\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 60s\n  \
timeout server 60s\n  timeout queue {q}ms\n  option http-keep-alive\n\n\
frontend storm\n  bind 127.0.0.1:{port}\n{routing}",
        q = cfg.haproxy_queue_ms
    );
    let path = dir.join(format!("haproxy-{maxconn}.cfg"));
    std::fs::write(&path, conf)?;
    let bin = [
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .ok_or_else(|| anyhow::anyhow!("haproxy not found (apt-get install -y haproxy)"))?;
    let log = std::fs::File::create(dir.join(format!("haproxy-{maxconn}.log")))?;
    Ok(Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

/// nginx as a static rate limiter (one global `limit_req` zone) in front of `upstream`.
fn start_nginx(cfg: &DrillConfig, rps: u32, port: u16, upstream: &str) -> anyhow::Result<Child> {
    let dir = std::fs::canonicalize(&cfg.report_dir)?;
    let d = dir.display();
    let burst = (rps / 5).max(1);
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
events {{ worker_connections 16384; }}\n\
http {{\n access_log off;\n client_body_temp_path {d};\n proxy_temp_path {d};\n fastcgi_temp_path {d};\n uwsgi_temp_path {d};\n scgi_temp_path {d};\n\
 limit_req_zone $server_port zone=all:1m rate={rps}r/s;\n\
 upstream backend {{ server {upstream}; keepalive 256; }}\n\
 server {{\n  listen 127.0.0.1:{port};\n  limit_req zone=all burst={burst} nodelay;\n  limit_req_status 503;\n\
  location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n }}\n}}\n"
    );
    let path = dir.join("nginx-limit.conf");
    std::fs::write(&path, conf)?;
    let bin = ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow::anyhow!("--nginx-limit-rps needs nginx installed (apt-get install -y nginx)")
        })?;
    Command::new(bin)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("cannot start nginx: {e}"))
}

/// One run: simulator, maybe warmgate, storm; everything started here is stopped here.
pub async fn run_once(cfg: &DrillConfig, front: Front) -> anyhow::Result<Run> {
    let with_warmgate = matches!(front, Front::Warmgate | Front::Fleet(..));
    let label = match front {
        Front::Fleet(n, true) => format!("warmgate fleet of {n}"),
        Front::Fleet(n, false) => format!("{n} warmgate instances, each alone"),
        Front::Nothing => "without warmgate".to_string(),
        Front::Warmgate => "with warmgate".to_string(),
        Front::NginxLimit(r) => format!("nginx limit_req {r} r/s"),
        Front::Haproxy(n) if cfg.clusters => format!(
            "HAProxy maxconn {n} / {}",
            crate::clusters::feed_maxconn(cfg, n)
        ),
        Front::Haproxy(n) => format!("HAProxy maxconn {n}"),
    };
    eprintln!(
        "== drill {label}: {} users over {} s",
        cfg.storm.users, cfg.storm.duration_s
    );
    std::fs::create_dir_all(&cfg.report_dir)?;
    let restart = cfg.backend_restart_at.map(|at| {
        (
            Duration::from_secs_f64(at),
            Duration::from_secs_f64(cfg.backend_down_s),
        )
    });
    let backends = if cfg.clusters {
        let feed = SimConfig {
            db_knee: cfg.feed_db_knee,
            sim_seed: cfg.sim.sim_seed.wrapping_add(1),
            ..cfg.sim.clone()
        };
        vec![
            Backend::spawn("auth", cfg.sim.clone(), restart)?,
            Backend::spawn("feed", feed, None)?,
        ]
    } else {
        vec![Backend::spawn("default", cfg.sim.clone(), restart)?]
    };
    let result = run_with(cfg, front, &backends).await;
    for b in backends {
        b.stop();
    }
    let (storm, samples) = result?;
    let s = &cfg.sim;
    let bound_s =
        cfg.storm.users as f64 * s.login_cost * s.db_ms / 1000.0 / s.db_knee.max(1) as f64
            + cfg.storm.arrival_s;
    Ok(Run {
        label,
        with_warmgate,
        bound_s,
        db_knee: s.db_knee,
        storm,
        samples,
        instances: match front {
            Front::Fleet(n, _) => Some(n),
            _ => None,
        },
        shared_store: matches!(front, Front::Fleet(_, true)),
        clusters: if cfg.clusters {
            vec![
                ("auth".into(), s.db_knee),
                ("feed".into(), cfg.feed_db_knee),
            ]
        } else {
            Vec::new()
        },
    })
}

/// One simulated backend on its own runtime thread, as a separate data center would be: the
/// storm's thousands of client tasks must not delay its clock.
struct Backend {
    name: &'static str,
    addr: std::net::SocketAddr,
    sim: Arc<Sim>,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Backend {
    /// Starts it; with `restart` (at, down for), it is killed at `at` and comes back cold.
    fn spawn(
        name: &'static str,
        sim_cfg: SimConfig,
        restart: Option<(Duration, Duration)>,
    ) -> anyhow::Result<Backend> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let sim_addr = std_listener.local_addr()?;
        let sim = Sim::new(SimConfig {
            listen: sim_addr,
            ..sim_cfg
        });
        let (stop, mut sim_stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = {
            let sim = Arc::clone(&sim);
            std::thread::spawn(move || -> anyhow::Result<()> {
                let started = std::time::Instant::now();
                let mut listener = Some(std_listener);
                // Each life of the backend on its own runtime: dropping it kills every
                // connection and every query in progress, as a process that dies would.
                loop {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(1)
                        .enable_all()
                        .build()?;
                    let std_l = match listener.take() {
                        Some(l) => l,
                        None => {
                            let l = std::net::TcpListener::bind(sim_addr)?;
                            l.set_nonblocking(true)?;
                            l
                        }
                    };
                    let kill_at = restart
                        .map(|(at, _)| at)
                        .filter(|at| started.elapsed() < *at);
                    let stopped = rt.block_on(async {
                        let l = TcpListener::from_std(std_l)?;
                        let kill = async {
                            match kill_at {
                                Some(at) => {
                                    tokio::time::sleep(at.saturating_sub(started.elapsed())).await
                                }
                                None => std::future::pending().await,
                            }
                        };
                        tokio::select! {
                            _ = coldsim::serve(l, Arc::clone(&sim)) => Ok::<_, anyhow::Error>(true),
                            _ = &mut sim_stopped => Ok(true),
                            () = kill => Ok(false),
                        }
                    })?;
                    drop(rt);
                    if stopped {
                        return Ok(());
                    }
                    let down = restart.map_or(Duration::ZERO, |(_, d)| d);
                    eprintln!(
                        "   backend {name} killed at {:.1} s, back cold in {:.1} s",
                        started.elapsed().as_secs_f64(),
                        down.as_secs_f64()
                    );
                    std::thread::sleep(down);
                    sim.restart_cold();
                }
            })
        };
        Ok(Backend {
            name,
            addr: sim_addr,
            sim,
            stop,
            thread,
        })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// What stands in front of `backends` for one storm, started, sampled and stopped here.
async fn run_with(
    cfg: &DrillConfig,
    front: Front,
    backends: &[Backend],
) -> anyhow::Result<(StormReport, Vec<Sample>)> {
    let with_warmgate = matches!(front, Front::Warmgate | Front::Fleet(..));
    let sim_addr = backends
        .first()
        .map(|b| b.addr)
        .ok_or_else(|| anyhow::anyhow!("no backend"))?;
    let sim = Arc::clone(&backends[0].sim);
    let upstreams: Vec<(&str, String)> = backends
        .iter()
        .map(|b| (b.name, b.addr.to_string()))
        .collect();
    let mut child = None;
    let mut fleet_parts = None;
    let mut admin_url = None;
    let target = if let Front::Fleet(n, shared) = front {
        let parts =
            crate::fleet::start(cfg, &warmgate_bin(cfg), n, shared, &sim_addr.to_string()).await?;
        admin_url = Some(parts.status_url.clone());
        let t = format!("http://127.0.0.1:{}", parts.port);
        fleet_parts = Some(parts);
        t
    } else if with_warmgate {
        let (port, admin) = (free_port()?, free_port()?);
        let text = if cfg.clusters {
            crate::clusters::drill_config(&cfg.config, port, admin, &upstreams)?
        } else {
            drill_config(&cfg.config, port, admin, &sim_addr.to_string())?
        };
        let path = cfg.report_dir.join("warmgate-drill.toml");
        std::fs::write(&path, text)?;
        let c = start_warmgate(
            &warmgate_bin(cfg),
            &path,
            &cfg.report_dir.join("warmgate.log"),
        )?;
        child = Some(listening(c, port, "warmgate").await?);
        admin_url = Some(format!("http://127.0.0.1:{admin}/status"));
        format!("http://127.0.0.1:{port}")
    } else if let Front::Haproxy(n) = front {
        let port = free_port()?;
        let c = start_haproxy(cfg, n, port, &upstreams)?;
        child = Some(listening(c, port, "haproxy").await?);
        format!("http://127.0.0.1:{port}")
    } else if let Front::NginxLimit(rps) = front {
        let port = free_port()?;
        let c = start_nginx(cfg, rps, port, &sim_addr.to_string())?;
        child = Some(listening(c, port, "nginx").await?);
        format!("http://127.0.0.1:{port}")
    } else {
        format!("http://{sim_addr}")
    };

    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let sampler = {
        let (samples, sim, admin_url) = (samples.clone(), sim.clone(), admin_url.clone());
        let sims: Vec<(&'static str, Arc<Sim>)> = if cfg.clusters {
            backends
                .iter()
                .map(|b| (b.name, Arc::clone(&b.sim)))
                .collect()
        } else {
            Vec::new()
        };
        tokio::spawn(async move {
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            let start = Instant::now();
            let mut last_done = 0u64;
            let mut last_each = vec![0u64; sims.len()];
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let s = sim.stats();
                let total = requests_done(&s);
                let mut sample = Sample {
                    t: start.elapsed().as_secs_f64(),
                    backend_p50_ms: s["latency_last_1s"]["p50_ms"].as_f64().unwrap_or(0.0),
                    backend_p99_ms: s["latency_last_1s"]["p99_ms"].as_f64().unwrap_or(0.0),
                    backend_rps: (total - last_done) as f64,
                    hit_ratio: s["hit_ratio"].as_f64().unwrap_or(0.0),
                    db_active: s["db_active"].as_u64().unwrap_or(0),
                    ..Default::default()
                };
                last_done = total;
                for ((name, sim), last) in sims.iter().zip(last_each.iter_mut()) {
                    let s = sim.stats();
                    let total = requests_done(&s);
                    sample.clusters.push(ClusterSample {
                        name: (*name).to_string(),
                        db_active: s["db_active"].as_u64().unwrap_or(0),
                        backend_rps: total.saturating_sub(*last) as f64,
                        backend_p99_ms: s["latency_last_1s"]["p99_ms"].as_f64().unwrap_or(0.0),
                        ..Default::default()
                    });
                    *last = total;
                }
                if let Some(url) = &admin_url {
                    let st = get_json(&client, url)
                        .await
                        .and_then(|v| serde_json::from_value::<Status>(v).ok());
                    if let Some(st) = st {
                        for c in &mut sample.clusters {
                            if let Some(one) = st.cluster(&c.name) {
                                c.limit = Some(u64::from(one.controller.limit));
                                c.inflight = Some(u64::from(one.signals.inflight));
                            }
                        }
                        sample.progress = Some(st.controller.progress);
                        // In a fleet, the fleet's limit (the instance's is its share).
                        let fleet_limit = st
                            .clusters
                            .first()
                            .and_then(|c| c.fleet.as_ref())
                            .map(|f| u64::from(f.fleet_limit));
                        sample.limit = fleet_limit.or(Some(u64::from(st.controller.limit)));
                        sample.inflight = Some(u64::from(st.signals.inflight));
                        sample.state = Some(st.controller.state.clone());
                    }
                }
                if let Ok(mut v) = samples.lock() {
                    v.push(sample);
                }
            }
        })
    };

    let storm_cfg = StormConfig {
        target,
        out: None,
        ..cfg.storm.clone()
    };
    let result = storm::run(storm_cfg).await;
    sampler.abort();
    if let Some(mut c) = child {
        stop_child(&mut c);
    }
    if let Some(p) = fleet_parts {
        p.stop();
    }
    let storm = result?;
    let samples = samples.lock().map(|v| v.clone()).unwrap_or_default();
    Ok((storm, samples))
}

/// Requests the simulator has answered, over all its endpoints.
fn requests_done(stats: &serde_json::Value) -> u64 {
    ["login", "sync", "feed", "recommend"]
        .iter()
        .map(|k| stats["endpoints"][k]["requests"].as_u64().unwrap_or(0))
        .sum()
}

/// `warmgate-loadtest drill`.
pub async fn run(cfg: DrillConfig) -> anyhow::Result<PathBuf> {
    let mut runs = Vec::new();
    if cfg.compare || cfg.no_warmgate {
        runs.push(run_once(&cfg, Front::Nothing).await?);
    }
    if let Some(rps) = cfg.nginx_limit_rps {
        runs.push(run_once(&cfg, Front::NginxLimit(rps)).await?);
    }
    for &n in &cfg.haproxy_maxconn {
        runs.push(run_once(&cfg, Front::Haproxy(n)).await?);
    }
    if !cfg.no_warmgate {
        runs.push(run_once(&cfg, Front::Warmgate).await?);
    }
    for &n in &cfg.fleet {
        if cfg.fleet_alone {
            runs.push(run_once(&cfg, Front::Fleet(n, false)).await?);
        }
        runs.push(run_once(&cfg, Front::Fleet(n, true)).await?);
    }
    std::fs::create_dir_all(&cfg.report_dir)?;
    std::fs::write(
        cfg.report_dir.join("report.json"),
        serde_json::to_vec_pretty(&runs)?,
    )?;
    let html = crate::report::html(&runs)?;
    let path = cfg.report_dir.join("report.html");
    std::fs::write(&path, html)?;
    crate::report::write_charts(&runs, &cfg.report_dir.join("charts"))?;
    for p in crate::report::summary(&runs) {
        println!("{p}\n");
    }
    println!("{}", crate::report::table(&runs));
    Ok(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct P {
        #[command(flatten)]
        d: DrillConfig,
    }

    /// The warmgate binary built for the workspace's tests (target/<profile>/warmgate).
    fn built_warmgate() -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        let dir = exe.parent()?.parent()?;
        let bin = dir.join("warmgate");
        bin.exists().then_some(bin)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_drill_writes_json_and_html() {
        let dir = tempfile::tempdir().unwrap();
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/warmgate.toml");
        let mut args = vec![
            "drill".to_string(),
            "--config".into(),
            config.into(),
            "--report-dir".into(),
            dir.path().display().to_string(),
            "--users".into(),
            "200".into(),
            "--duration-s".into(),
            "5".into(),
            "--arrival-s".into(),
            "1".into(),
            "--quiet".into(),
        ];
        match built_warmgate() {
            Some(bin) => {
                args.push("--compare".into());
                args.push("--warmgate-bin".into());
                args.push(bin.display().to_string());
            }
            None => {
                assert!(
                    std::env::var("CI").is_err(),
                    "the warmgate binary must be built in CI"
                );
                eprintln!("warmgate binary not built: drill without it only");
                args.push("--no-warmgate".into());
            }
        }
        let cfg = P::parse_from(args).d;
        let html = run(cfg.clone()).await.unwrap();
        let page = std::fs::read_to_string(&html).unwrap();
        assert!(page.contains("<svg"), "plots drawn");
        assert!(page.contains("Users logged in"));
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap())
                .unwrap();
        let runs = json.as_array().unwrap();
        assert!(!runs.is_empty());
        for r in runs {
            assert!(r["storm"]["summary"]["requests_sent"].as_u64().unwrap() > 0);
            assert!(
                r["samples"].as_array().unwrap().len() >= 5,
                "sampled every second"
            );
            assert!(!r["storm"]["timeline"].as_array().unwrap().is_empty());
        }
        // The written summary opens the page and says what report.json says.
        let opening = page
            .split("<div class=\"summary\">")
            .nth(1)
            .and_then(|s| s.split("</div>").next())
            .expect("the page opens with a summary");
        assert!(
            page.find("<div class=\"summary\">") < page.find("<table>"),
            "the summary comes before the table"
        );
        let paragraphs: Vec<&str> = opening
            .split("<p>")
            .filter_map(|p| p.split("</p>").next())
            .filter(|p| !p.trim().is_empty())
            .collect();
        for (i, r) in runs.iter().enumerate() {
            let s = &r["storm"]["summary"];
            let want = format!(
                "{} of {} users logged in",
                s["logged_in"].as_u64().unwrap(),
                s["users"].as_u64().unwrap()
            );
            let line = paragraphs
                .iter()
                .filter(|p| p.contains(" users logged in,"))
                .nth(i)
                .unwrap_or_else(|| panic!("no summary for run {i}: {paragraphs:#?}"));
            assert!(line.contains(&want), "{line} / {want}");
            let knee = r["db_knee"].as_u64().unwrap();
            assert!(line.contains(&format!("its knee is {knee}")), "{line}");
            if let Some(amp) = s["retry_amplification"].as_f64() {
                assert!(
                    line.contains(&format!("{amp:.2} requests per success")),
                    "{line}"
                );
            }
        }
        if runs.len() == 2 {
            assert_eq!(runs[1]["with_warmgate"], true);
            assert!(
                runs[1]["samples"][3]["progress"].is_number(),
                "warmgate status polled"
            );
            assert!(page.contains("warmgate ramp progress"));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_clusters_drill_reports_each_cluster() {
        let Some(bin) = built_warmgate() else {
            assert!(
                std::env::var("CI").is_err(),
                "the warmgate binary must be built in CI"
            );
            eprintln!("warmgate binary not built: nothing to drill");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/warmgate.toml");
        let args = [
            "drill",
            "--config",
            config,
            "--report-dir",
            &dir.path().display().to_string(),
            // 40 users at knee 4: everyone can be in by about 2.2 s, so feeds
            // reach the feed cluster well inside the run even on a slow machine.
            "--users",
            "40",
            "--duration-s",
            "6",
            "--arrival-s",
            "1",
            "--quiet",
            "--clusters",
            "--db-knee",
            "4",
            "--feed-db-knee",
            "32",
            "--warmgate-bin",
            &bin.display().to_string(),
        ];
        let cfg = P::parse_from(args).d;
        let html = run(cfg).await.unwrap();
        let page = std::fs::read_to_string(&html).unwrap();
        assert!(page.contains("feed database: peak / mean busy queries at once (knee 32)"));
        assert!(page.contains("Per cluster, the auth database (knee 4)"));
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap())
                .unwrap();
        let run = &json[0];
        assert_eq!(
            run["clusters"],
            serde_json::json!([["auth", 4], ["feed", 32]])
        );
        let last = &run["samples"][3]["clusters"];
        assert_eq!(last[1]["name"], "feed");
        assert!(
            last[0]["limit"].is_u64() && last[1]["limit"].is_u64(),
            "each cluster's limit polled: {last}"
        );
        // Both backends served: logins reached auth, feeds reached feed.
        let served = |i: usize| {
            run["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["clusters"][i]["backend_rps"].as_f64().unwrap_or(0.0))
                .sum::<f64>()
        };
        assert!(
            served(0) > 0.0 && served(1) > 0.0,
            "auth {} feed {}",
            served(0),
            served(1)
        );
    }
}
