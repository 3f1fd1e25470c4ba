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
    let scraper = tokio::spawn(crate::signals::scrape::run(Arc::clone(&shared)));
    let resolving = tokio::spawn(crate::upstream::dns::run(Arc::clone(&shared), resolver));
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

/// What a reload changed.
#[derive(Debug, Default)]
pub struct Reloaded {
    /// Effective settings that changed, as `key: old -> new`.
    pub changed: Vec<String>,
    /// Changed keys that take effect only on a restart (their running values are kept).
    pub restart_only: Vec<String>,
}

/// Re-reads `path` and swaps it in (the one path for SIGHUP and the admin API): validate, diff
/// against the running config, log the diff, swap. An invalid file changes nothing.
pub fn reload(shared: &Shared, path: &std::path::Path) -> Result<Reloaded, Vec<String>> {
    let cfg = crate::config::load_file(path)
        .map_err(|errs| errs.iter().map(ToString::to_string).collect::<Vec<_>>())?;
    let running = &shared.snapshot.load().compiled.config;
    let restart_only = needs_restart(running, &cfg);
    let changes = crate::config::diff::diff(running, &cfg);
    for w in &cfg.warnings {
        tracing::warn!(path = %path.display(), "config: {w}");
    }
    shared.reload(cfg);
    for k in &restart_only {
        tracing::warn!(path = %path.display(), "{k}: changed in the file, takes effect on restart; the running value is kept");
    }
    for c in &changes {
        match &c.cluster {
            Some(cluster) => tracing::info!(path = %path.display(), %cluster, "reload: {c}"),
            None => tracing::info!(path = %path.display(), "reload: {c}"),
        }
    }
    let clusters: std::collections::BTreeSet<&str> = changes
        .iter()
        .filter_map(|c| c.cluster.as_deref())
        .collect();
    tracing::info!(
        path = %path.display(),
        changes = changes.len(),
        clusters = %clusters.into_iter().collect::<Vec<_>>().join(","),
        "config reloaded"
    );
    let changed = changes.iter().map(ToString::to_string).collect();
    Ok(Reloaded {
        changed,
        restart_only,
    })
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
        if let Err(errs) = reload(&shared, &path) {
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
            if let Err(errs) = reload(&shared, &path) {
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

/// Keys whose change a reload cannot apply (the listeners and the runtime are built at start),
/// each with its running and its new value.
pub fn needs_restart(running: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if running.listen != new.listen {
        out.push(format!("listen ({} -> {})", running.listen, new.listen));
    }
    if running.admin_listen != new.admin_listen {
        let show = |a: Option<std::net::SocketAddr>| a.map_or("off".to_string(), |a| a.to_string());
        out.push(format!(
            "admin.listen ({} -> {})",
            show(running.admin_listen),
            show(new.admin_listen)
        ));
    }
    if running.tls.is_some() != new.tls.is_some() {
        let show = |on: bool| if on { "on" } else { "off" };
        out.push(format!(
            "tls ({} -> {}; certificates reload, switching TLS on or off does not)",
            show(running.tls.is_some()),
            show(new.tls.is_some())
        ));
    }
    let fleet = |c: &Config| {
        c.fleet.as_ref().map(|f| {
            format!(
                "{} {} {} {:?} {:?}",
                f.store_text, f.name, f.instance, f.sync, f.lease
            )
        })
    };
    if fleet(running) != fleet(new) {
        out.push("fleet (the store, name, instance, sync and lease are read at start)".into());
    }
    if running.server.workers != new.server.workers {
        let show = |w: Option<usize>| w.map_or("one per CPU".to_string(), |w| w.to_string());
        out.push(format!(
            "server.workers ({} -> {})",
            show(running.server.workers),
            show(new.server.workers)
        ));
    }
    if running.server.max_connections != new.server.max_connections {
        out.push(format!(
            "server.max_connections ({} -> {})",
            running.server.max_connections, new.server.max_connections
        ));
    }
    if running.reload_watch.is_some() != new.reload_watch.is_some() {
        let show = |w: Option<std::time::Duration>| if w.is_some() { "on" } else { "off" };
        out.push(format!(
            "reload.watch ({} -> {})",
            show(running.reload_watch),
            show(new.reload_watch)
        ));
    }
    if running.log.access != new.log.access {
        let show = |a: &Option<String>| a.clone().unwrap_or_else(|| "off".into());
        out.push(format!(
            "log.access ({} -> {})",
            show(&running.log.access),
            show(&new.log.access)
        ));
    }
    if running.client_table_size != new.client_table_size {
        out.push(format!(
            "retry.client_table_size ({} -> {})",
            running.client_table_size, new.client_table_size
        ));
    }
    out
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_reload_names_what_needs_a_restart() {
        let load = |t: &str| {
            crate::config::load_str(
                "w.toml",
                &format!("{t}\n[upstream]\nendpoints = [\"127.0.0.1:9\"]\n"),
            )
            .unwrap()
        };
        let a = load("listen = \"127.0.0.1:8080\"\n");
        let b = load("listen = \"127.0.0.1:8081\"\n[server]\nworkers = 2");
        let kept = needs_restart(&a, &b);
        assert_eq!(
            kept,
            [
                "listen (127.0.0.1:8080 -> 127.0.0.1:8081)",
                "server.workers (one per CPU -> 2)"
            ]
        );
        assert!(needs_restart(&a, &load("listen = \"127.0.0.1:8080\"\n")).is_empty());
    }
}
