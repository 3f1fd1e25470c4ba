//! A reload, the one path for SIGHUP, the file watch and the admin API: read and validate the
//! file, diff it against the running config, swap it in, and say what changed. An invalid file
//! changes nothing.

use super::Shared;
use crate::config::Config;

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
