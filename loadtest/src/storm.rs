//! `storm`: many users arriving at once after a cutover. Each logs in, then syncs, reads the
//! feed and recommendations with think time, until the drill ends. Some honour `Retry-After`;
//! the rest retry blindly after a short fixed delay. Everyone retries on timeout.

use std::net::{IpAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;

use crate::rng::{quantile, Rng};

/// Storm parameters.
#[derive(Args, Clone, Debug, Serialize)]
pub struct StormConfig {
    /// Where to send the storm (loopback only): warmgate, or the backend directly.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub target: String,
    /// Users who arrive after the cutover.
    #[arg(long, default_value_t = 2000)]
    pub users: u64,
    /// Arrivals spread uniformly over this many seconds.
    #[arg(long, default_value_t = 5.0)]
    pub arrival_s: f64,
    /// Length of the drill, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub duration_s: f64,
    /// Share of clients that honour Retry-After (the rest retry blindly).
    #[arg(long, default_value_t = 0.7)]
    pub polite: f64,
    /// Delay before a blind retry, ms (the shortest, with --blind-delay-max-ms).
    #[arg(long, default_value_t = 250)]
    pub blind_delay_ms: u64,
    /// Blind retries wait uniformly between --blind-delay-ms and this, ms.
    #[arg(long)]
    pub blind_delay_max_ms: Option<u64>,
    /// Client timeout, ms (a timed-out request is retried).
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// Think time between a logged-in user's requests, ms.
    #[arg(long, default_value_t = 1000)]
    pub think_ms: u64,
    /// Stop after this many requests in all.
    #[arg(long, default_value_t = 3_000_000)]
    pub max_requests: u64,
    /// Seed for arrivals and client kinds.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Write the JSON report here.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// No live progress line.
    #[arg(long)]
    #[serde(skip)]
    pub quiet: bool,
}

/// The four request kinds, in priority order (critical first).
pub const KINDS: [&str; 4] = ["login", "sync", "feed", "recommend"];

/// One second of one kind.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Bucket {
    pub sent: u64,
    pub ok: u64,
    pub rejected: u64,
    pub timeouts: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    #[serde(skip)]
    lat: Vec<f64>,
}

/// One second of the drill.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Second {
    pub t: u64,
    pub kinds: [Bucket; 4],
    pub logged_in: u64,
}

/// What the storm measured.
#[derive(Clone, Debug, Serialize)]
pub struct StormReport {
    pub config: StormConfig,
    pub timeline: Vec<Second>,
    pub summary: Summary,
}

/// The headline numbers.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub users: u64,
    pub logged_in: u64,
    /// Seconds from the start until 50 / 90 / 99 / 100 % of users were logged in (None: never).
    pub time_to_logged_in_s: [Option<f64>; 4],
    pub requests_sent: u64,
    pub requests_ok: u64,
    /// Requests sent per request that succeeded.
    pub retry_amplification: f64,
    /// Per kind: ok / sent.
    pub success_ratio: [f64; 4],
    pub timeouts: u64,
    pub rejected: u64,
    /// Seconds from a user's first login attempt to logged in: p50, p99 (of those who got in).
    pub login_wait_s: [Option<f64>; 2],
}

enum Outcome {
    Ok,
    Rejected(Option<u64>),
    Timeout,
    Error,
}

struct Recorder {
    start: Instant,
    seconds: Mutex<Vec<Second>>,
    login_times: Mutex<Vec<f64>>,
    login_waits: Mutex<Vec<f64>>,
    sent: AtomicU64,
    stop: AtomicBool,
}

impl Recorder {
    fn record(&self, kind: usize, o: &Outcome, ms: f64) {
        let sec = self.start.elapsed().as_secs() as usize;
        if let Ok(mut s) = self.seconds.lock() {
            while s.len() <= sec {
                let t = s.len() as u64;
                s.push(Second {
                    t,
                    ..Default::default()
                });
            }
            let b = &mut s[sec].kinds[kind];
            b.sent += 1;
            match o {
                Outcome::Ok => {
                    b.ok += 1;
                    b.lat.push(ms);
                }
                Outcome::Rejected(_) => b.rejected += 1,
                Outcome::Timeout => b.timeouts += 1,
                Outcome::Error => b.errors += 1,
            }
        }
    }
}

/// Refuses any target that does not resolve to loopback only.
pub fn check_loopback(target: &str) -> anyhow::Result<Uri> {
    let uri: Uri = target
        .parse()
        .map_err(|e| anyhow::anyhow!("--target {target:?}: {e}"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "--target must be http://host:port"
    );
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("--target {target:?} has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<IpAddr> = (host, port).to_socket_addrs()?.map(|a| a.ip()).collect();
    anyhow::ensure!(
        !addrs.is_empty() && addrs.iter().all(IpAddr::is_loopback),
        "--target {target:?} is not loopback: storms are only sent to 127.0.0.1 / ::1"
    );
    Ok(uri)
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn request(
    client: &HttpClient,
    base: &Uri,
    kind: usize,
    user: &str,
    attempt: u32,
    timeout: Duration,
) -> Outcome {
    let path = match kind {
        0 => "/api/login",
        1 => "/api/sync",
        2 => "/api/feed",
        _ => "/api/recommend",
    };
    let uri = format!(
        "http://{}{}",
        base.authority().map_or("127.0.0.1", |a| a.as_str()),
        path
    );
    let mut b = Request::builder()
        .method(if kind == 0 { "POST" } else { "GET" })
        .uri(uri)
        .header("x-user", user);
    if attempt > 0 {
        b = b.header("x-retry-attempt", attempt.to_string());
    }
    let Ok(req) = b.body(Full::new(Bytes::new())) else {
        return Outcome::Error;
    };
    let fut = async {
        let resp = client.request(req).await.ok()?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let _ = resp.into_body().collect().await;
        Some((status, retry_after))
    };
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Outcome::Timeout,
        Ok(None) => Outcome::Error,
        Ok(Some((s, _))) if s.is_success() => Outcome::Ok,
        Ok(Some((s, ra)))
            if s == StatusCode::SERVICE_UNAVAILABLE || s == StatusCode::TOO_MANY_REQUESTS =>
        {
            Outcome::Rejected(ra)
        }
        Ok(Some(_)) => Outcome::Error,
    }
}

/// One user's session: retries each step until it succeeds or the drill ends.
async fn user(
    client: HttpClient,
    base: Uri,
    cfg: Arc<StormConfig>,
    rec: Arc<Recorder>,
    id: u64,
    mut rng: Rng,
) {
    let arrive = Duration::from_secs_f64(rng.unit() * cfg.arrival_s.max(0.0));
    let polite = rng.unit() < cfg.polite;
    let end = rec.start + Duration::from_secs_f64(cfg.duration_s);
    tokio::time::sleep_until((rec.start + arrive).into()).await;
    let name = format!("user-{id}");
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let (blind_lo, blind_hi) = (
        cfg.blind_delay_ms,
        cfg.blind_delay_max_ms
            .unwrap_or(cfg.blind_delay_ms)
            .max(cfg.blind_delay_ms),
    );
    let first_try = Instant::now();
    let mut step = 0usize;
    let mut logged_in = false;
    while Instant::now() < end && !rec.stop.load(Ordering::Relaxed) {
        let kind = if logged_in { 1 + step % 3 } else { 0 };
        let mut attempt = 0;
        loop {
            if rec.sent.fetch_add(1, Ordering::Relaxed) >= cfg.max_requests {
                rec.stop.store(true, Ordering::Relaxed);
                return;
            }
            let t = Instant::now();
            let o = request(&client, &base, kind, &name, attempt, timeout).await;
            rec.record(kind, &o, t.elapsed().as_secs_f64() * 1000.0);
            let wait = match o {
                Outcome::Ok => break,
                Outcome::Rejected(Some(s)) if polite => Duration::from_secs(s),
                _ => Duration::from_millis(blind_lo + rng.below(blind_hi - blind_lo + 1)),
            };
            attempt += 1;
            if Instant::now() + wait >= end {
                return;
            }
            tokio::time::sleep(wait).await;
        }
        if !logged_in {
            logged_in = true;
            if let Ok(mut l) = rec.login_times.lock() {
                l.push(rec.start.elapsed().as_secs_f64());
            }
            if let Ok(mut w) = rec.login_waits.lock() {
                w.push(first_try.elapsed().as_secs_f64());
            }
        } else {
            step += 1;
        }
        let think = Duration::from_millis(cfg.think_ms / 2 + rng.below(cfg.think_ms.max(1)));
        // A user still thinking when the storm ends has nothing more to send.
        if Instant::now() + think >= end {
            return;
        }
        tokio::time::sleep(think).await;
    }
}

/// Runs the storm and returns its report (also written to `--out` if given).
pub async fn run(cfg: StormConfig) -> anyhow::Result<StormReport> {
    let base = check_loopback(&cfg.target)?;
    let _ = rlimit::increase_nofile_limit(65_536);
    let cfg = Arc::new(cfg);
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(Duration::from_millis(cfg.timeout_ms)));
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(cfg.users as usize)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(http);
    let rec = Arc::new(Recorder {
        start: Instant::now(),
        seconds: Mutex::new(Vec::new()),
        login_times: Mutex::new(Vec::new()),
        login_waits: Mutex::new(Vec::new()),
        sent: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let mut seed = Rng::new(cfg.seed);
    let tasks: Vec<_> = (0..cfg.users)
        .map(|id| {
            tokio::spawn(user(
                client.clone(),
                base.clone(),
                cfg.clone(),
                rec.clone(),
                id,
                Rng::new(seed.next_u64()),
            ))
        })
        .collect();
    let progress = (!cfg.quiet).then(|| spawn_progress(rec.clone(), cfg.users));
    for t in tasks {
        let _ = t.await;
    }
    if let Some((bar, ticker)) = progress {
        ticker.abort();
        bar.finish_and_clear();
    }
    let report = finish(&cfg, &rec);
    if let Some(path) = &cfg.out {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(report)
}

fn spawn_progress(
    rec: Arc<Recorder>,
    users: u64,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.enable_steady_tick(Duration::from_millis(200));
    let b = bar.clone();
    let ticker = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let logged = rec.login_times.lock().map(|l| l.len()).unwrap_or(0);
            let (rps, rej, p99) = rec
                .seconds
                .lock()
                .ok()
                .and_then(|s| {
                    let last = s.iter().rev().nth(1).or(s.last())?;
                    let mut lat: Vec<f64> = last
                        .kinds
                        .iter()
                        .flat_map(|k| k.lat.iter().copied())
                        .collect();
                    let sent: u64 = last.kinds.iter().map(|k| k.sent).sum();
                    let rej: u64 = last.kinds.iter().map(|k| k.rejected).sum();
                    Some((sent, rej, quantile(&mut lat, 0.99)))
                })
                .unwrap_or_default();
            b.set_message(format!(
                "{:>5.1}s  logged in {logged}/{users}  {rps} req/s  {rej} rejects/s  p99 {p99:.0} ms",
                rec.start.elapsed().as_secs_f64()
            ));
        }
    });
    (bar, ticker)
}

fn finish(cfg: &StormConfig, rec: &Recorder) -> StormReport {
    let mut logins = rec
        .login_times
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    logins.sort_by(|a, b| a.total_cmp(b));
    let mut timeline = rec.seconds.lock().map(|s| s.clone()).unwrap_or_default();
    for s in &mut timeline {
        for b in &mut s.kinds {
            b.p50_ms = quantile(&mut b.lat, 0.5);
            b.p99_ms = quantile(&mut b.lat, 0.99);
        }
        s.logged_in = logins.partition_point(|t| *t < (s.t + 1) as f64) as u64;
    }
    let users = cfg.users.max(1);
    let time_to = |frac: f64| {
        let need = ((users as f64) * frac).ceil() as usize;
        logins
            .get(need.saturating_sub(1))
            .copied()
            .filter(|_| logins.len() >= need)
    };
    let sum = |f: &dyn Fn(&Bucket) -> u64, k: Option<usize>| -> u64 {
        timeline
            .iter()
            .flat_map(|s| s.kinds.iter().enumerate())
            .filter(|(i, _)| k.is_none_or(|k| k == *i))
            .map(|(_, b)| f(b))
            .sum()
    };
    let sent = sum(&|b| b.sent, None);
    let ok = sum(&|b| b.ok, None);
    let success_ratio = [0, 1, 2, 3].map(|k| {
        let s = sum(&|b| b.sent, Some(k));
        if s == 0 {
            0.0
        } else {
            sum(&|b| b.ok, Some(k)) as f64 / s as f64
        }
    });
    StormReport {
        config: cfg.clone(),
        summary: Summary {
            users: cfg.users,
            logged_in: logins.len() as u64,
            time_to_logged_in_s: [time_to(0.5), time_to(0.9), time_to(0.99), time_to(1.0)],
            requests_sent: sent,
            requests_ok: ok,
            retry_amplification: if ok == 0 {
                f64::INFINITY
            } else {
                sent as f64 / ok as f64
            },
            success_ratio,
            timeouts: sum(&|b| b.timeouts, None),
            rejected: sum(&|b| b.rejected, None),
            login_wait_s: {
                let mut w = rec
                    .login_waits
                    .lock()
                    .map(|l| l.clone())
                    .unwrap_or_default();
                if w.is_empty() {
                    [None, None]
                } else {
                    [Some(quantile(&mut w, 0.5)), Some(quantile(&mut w, 0.99))]
                }
            },
        },
        timeline,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use http::Response;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;

    /// A server that rejects every first login of a user with `Retry-After: 2` and records when
    /// each user's requests arrive.
    async fn rejecting_server() -> (std::net::SocketAddr, Arc<Mutex<Vec<(String, Instant)>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            let user = req
                                .headers()
                                .get("x-user")
                                .map(|v| v.to_str().unwrap().to_string())
                                .unwrap_or_default();
                            let mut seen = s.lock().unwrap();
                            let first = !seen.iter().any(|(u, _)| *u == user);
                            seen.push((user, Instant::now()));
                            let resp = if first && req.uri().path() == "/api/login" {
                                Response::builder()
                                    .status(503)
                                    .header("retry-after", "2")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap()
                            } else {
                                Response::new(Full::new(Bytes::from_static(b"ok")))
                            };
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        (addr, seen)
    }

    fn cfg(addr: std::net::SocketAddr, polite: f64) -> StormConfig {
        StormConfig {
            target: format!("http://{addr}"),
            users: 3,
            arrival_s: 0.0,
            duration_s: 3.5,
            polite,
            blind_delay_ms: 200,
            blind_delay_max_ms: None,
            timeout_ms: 1000,
            think_ms: 10_000,
            max_requests: 1000,
            seed: 1,
            out: None,
            quiet: true,
        }
    }

    fn retry_gaps(seen: &[(String, Instant)]) -> Vec<Duration> {
        let mut users: Vec<&String> = seen.iter().map(|(u, _)| u).collect();
        users.sort();
        users.dedup();
        users
            .iter()
            .filter_map(|u| {
                let times: Vec<Instant> = seen
                    .iter()
                    .filter(|(x, _)| x == *u)
                    .map(|(_, t)| *t)
                    .collect();
                Some(times.get(1)?.duration_since(times[0]))
            })
            .collect()
    }

    #[tokio::test]
    async fn polite_clients_honour_retry_after_and_blind_ones_do_not() {
        let (addr, seen) = rejecting_server().await;
        let r = run(cfg(addr, 1.0)).await.unwrap();
        assert_eq!(r.summary.logged_in, 3);
        let gaps = retry_gaps(&seen.lock().unwrap());
        assert_eq!(gaps.len(), 3);
        assert!(
            gaps.iter().all(|g| *g >= Duration::from_secs(2)),
            "polite: {gaps:?}"
        );

        let (addr, seen) = rejecting_server().await;
        let r = run(cfg(addr, 0.0)).await.unwrap();
        assert_eq!(r.summary.logged_in, 3);
        let gaps = retry_gaps(&seen.lock().unwrap());
        assert!(
            gaps.iter().all(|g| *g < Duration::from_secs(1)),
            "blind: {gaps:?}"
        );
        assert!(r.summary.retry_amplification > 1.0);
    }

    #[tokio::test]
    async fn refuses_targets_that_are_not_loopback() {
        for bad in [
            "http://192.0.2.1:80",
            "http://10.0.0.1:8080",
            "https://127.0.0.1:1",
            "not a url",
        ] {
            assert!(check_loopback(bad).is_err(), "{bad}");
        }
        assert!(check_loopback("http://127.0.0.1:8080").is_ok());
        assert!(check_loopback("http://[::1]:8080").is_ok());
        assert!(check_loopback("http://localhost:8080").is_ok());
    }

    #[tokio::test]
    async fn bounded_by_request_count_and_time() {
        let (addr, seen) = rejecting_server().await;
        let t = Instant::now();
        let r = run(StormConfig {
            max_requests: 5,
            users: 10,
            polite: 0.0,
            ..cfg(addr, 0.0)
        })
        .await
        .unwrap();
        assert!(r.summary.requests_sent <= 5, "{}", r.summary.requests_sent);
        assert!(seen.lock().unwrap().len() <= 5);
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
