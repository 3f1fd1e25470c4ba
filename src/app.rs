//! Wiring: bind listeners, start the controller task and the admin API, serve until a signal.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::Config;
use crate::runtime::Shared;

/// A running proxy's bound addresses (useful to tests with ephemeral ports).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub proxy: std::net::SocketAddr,
    pub admin: Option<std::net::SocketAddr>,
}

/// Binds the listeners for `config`.
pub async fn bind(config: &Config) -> std::io::Result<(TcpListener, Option<TcpListener>)> {
    let proxy = TcpListener::bind(config.listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("listen {}: {e}", config.listen)))?;
    let admin = match config.admin_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("admin.listen {a}: {e}")))?,
        ),
        None => None,
    };
    Ok((proxy, admin))
}

/// Runs the proxy on bound listeners until `shutdown` resolves, then drains.
pub async fn run(
    config: Config,
    listeners: (TcpListener, Option<TcpListener>),
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    run_with(
        config,
        listeners,
        config_path,
        shutdown,
        Arc::new(crate::upstream::dns::System),
    )
    .await
}

/// [`run`] with the resolver endpoint names are looked up with.
pub async fn run_with(
    config: Config,
    listeners: (TcpListener, Option<TcpListener>),
    config_path: Option<PathBuf>,
    shutdown: impl Future<Output = ()>,
    resolver: Arc<dyn crate::upstream::dns::Resolve>,
) -> anyhow::Result<()> {
    let (proxy, admin) = listeners;
    let bound = Bound {
        proxy: proxy.local_addr()?,
        admin: admin.as_ref().and_then(|a| a.local_addr().ok()),
    };
    tracing::info!("{}", startup_line(&config, bound, config_path.as_deref()));
    tracing::info!("admission: {}", crate::config::plan(&config));
    for w in &config.warnings {
        tracing::warn!("config: {w}");
    }
    for c in &config.clusters {
        tokio::spawn(probe_upstream(
            c.name.clone(),
            c.upstream.endpoints.clone(),
            c.upstream.connect_timeout,
        ));
    }
    let shared = Shared::new(config)?;
    let ticker = tokio::spawn(controller_loop(Arc::clone(&shared)));
    let scraper = tokio::spawn(crate::runtime::background::scrape_hit_ratio(Arc::clone(
        &shared,
    )));
    let resolving = tokio::spawn(crate::runtime::background::resolve_endpoints(
        Arc::clone(&shared),
        resolver,
    ));
    let reads_need_token = bound.admin.is_some_and(|a| !a.ip().is_loopback());
    let api = {
        let c = &shared.snapshot.load().compiled.config;
        if admin.is_some() && reads_need_token && c.admin_tokens.0.is_empty() {
            anyhow::bail!("admin.listen is off loopback and no admin token is configured");
        }
        Arc::new(crate::admin::api::Admin {
            shared: Arc::clone(&shared),
            config_path: config_path.clone(),
            reads_need_token,
            audit: crate::admin::audit::Audit::new(c.admin_audit_log.clone()),
        })
    };
    let admin_task = admin.map(|l| tokio::spawn(crate::admin::serve(l, Arc::clone(&api))));
    // The fleet's sync: operator writes from other instances go through this one's API.
    let fleet_task = shared.fleet.clone().map(|link| {
        tracing::info!(store = %link.config.store_text, fleet = %link.config.name, instance = %link.config.instance, sync = ?link.config.sync, lease = ?link.config.lease, "fleet: steering with the instances on this store");
        let api = Arc::clone(&api);
        let apply: crate::fleet::sync::Apply = Arc::new(move |op| api.replay(op));
        tokio::spawn(crate::fleet::sync::run(Arc::clone(&shared), link, apply))
    });
    let watch = shared.snapshot.load().compiled.config.reload_watch;
    let watcher = match (&config_path, watch) {
        (Some(p), Some(debounce)) => Some(tokio::spawn(reload_on_change(
            Arc::clone(&shared),
            p.clone(),
            debounce,
        ))),
        _ => None,
    };
    let reloader = config_path.map(|p| tokio::spawn(reload_on_sighup(Arc::clone(&shared), p)));
    crate::proxy::serve(proxy, Arc::clone(&shared), shutdown).await;
    ticker.abort();
    scraper.abort();
    resolving.abort();
    if let Some(t) = admin_task {
        t.abort();
    }
    if let Some(t) = fleet_task {
        t.abort();
    }
    if let Some(t) = reloader {
        t.abort();
    }
    if let Some(t) = watcher {
        t.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// What is serving where, in words.
fn startup_line(c: &Config, bound: Bound, path: Option<&std::path::Path>) -> String {
    let listener = match &c.tls {
        Some(t) => format!(
            "TLS (HTTP/1.1 and HTTP/2 by ALPN, {} certificate{})",
            t.files.len(),
            if t.files.len() == 1 { "" } else { "s" }
        ),
        None => "HTTP/1.1 and HTTP/2 (prior knowledge)".to_string(),
    };
    let clusters: Vec<String> = c
        .clusters
        .iter()
        .map(|cc| {
            let eps: Vec<&str> = cc.upstream.endpoints.iter().map(|e| e.as_str()).collect();
            format!(
                "{}{} ({}{})",
                if c.clusters.len() > 1 {
                    format!("{}: ", cc.name)
                } else {
                    String::new()
                },
                eps.join(", "),
                if cc.upstream.h2c { "h2c" } else { "http/1.1" },
                if cc.upstream.tls.is_some() {
                    " over TLS"
                } else {
                    ""
                },
            )
        })
        .collect();
    format!(
        "warmgate serving {listener} on {}; admin {}; upstream {}; config {}",
        bound.proxy,
        bound.admin.map_or("off".to_string(), |a| format!("on {a}")),
        clusters.join("; "),
        path.map_or("built in".to_string(), |p| p.display().to_string()),
    )
}

/// One connect per endpoint at start: a warning now beats a 502 later.
async fn probe_upstream(
    cluster: String,
    endpoints: Vec<http::uri::Authority>,
    timeout: std::time::Duration,
) {
    for ep in endpoints {
        let addr = ep.as_str().to_string();
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
            Ok(Ok(_)) => tracing::debug!(%cluster, endpoint = %addr, "upstream reachable"),
            Ok(Err(e)) => tracing::warn!(
                %cluster,
                "upstream {addr} is not reachable ({e}); requests routed to it will get 502 until it is"
            ),
            Err(_) => tracing::warn!(
                %cluster,
                "upstream {addr} did not accept a connection within {timeout:?}; requests routed to it will get 502 until it does"
            ),
        }
    }
}

async fn controller_loop(shared: Arc<Shared>) {
    loop {
        let tick = shared.snapshot.load().compiled.config.tick;
        tokio::time::sleep(tick).await;
        shared.tick();
    }
}

/// What identifies a version of the file: its modification time and length.
fn stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// `reload.watch`: looks at the file every 250 ms; a change that then stays put for `debounce`
/// (an editor's several writes, a `cp` in progress) is reloaded once, like SIGHUP.
async fn reload_on_change(shared: Arc<Shared>, path: PathBuf, debounce: std::time::Duration) {
    let step = std::time::Duration::from_millis(250);
    let mut seen = stamp(&path);
    loop {
        tokio::time::sleep(step).await;
        let now = stamp(&path);
        if now == seen || now.is_none() {
            continue;
        }
        // Changed: wait until it stops changing.
        let mut last = now;
        loop {
            tokio::time::sleep(debounce).await;
            let again = stamp(&path);
            if again == last {
                break;
            }
            last = again;
        }
        seen = last;
        tracing::info!(path = %path.display(), "config file changed; reloading");
        if let Err(errs) = crate::runtime::reload::reload(&shared, &path) {
            for e in errs {
                tracing::error!("reload rejected, keeping the running config: {e}");
            }
        }
    }
}

/// SIGHUP re-reads the config file; an invalid file keeps the running config and logs why.
async fn reload_on_sighup(shared: Arc<Shared>, path: PathBuf) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            if let Err(errs) = crate::runtime::reload::reload(&shared, &path) {
                for e in errs {
                    tracing::error!("reload rejected, keeping the running config: {e}");
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (shared, path);
        std::future::pending::<()>().await;
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
