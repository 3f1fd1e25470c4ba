//! `drill --fleet N`: N warmgate instances (one worker each) behind a round-robin TCP
//! balancer, sharing a fleet store (a redis-server started here on a loopback port) or each
//! steering alone. Everything started here is stopped by [`Parts::stop`].

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::drill::{drill_config, free_port, listening, start_warmgate, stop_child, DrillConfig};

/// What a fleet run started.
pub struct Parts {
    /// Where the storm connects (the balancer).
    pub port: u16,
    /// The first instance's status.
    pub status_url: String,
    children: Vec<Child>,
    relay: Option<tokio::task::JoinHandle<()>>,
}

impl Parts {
    pub fn stop(mut self) {
        if let Some(r) = self.relay.take() {
            r.abort();
        }
        // Instances and balancer first, the store last.
        for c in self.children.iter_mut().rev() {
            stop_child(c);
        }
    }
}

fn find(names: &[&str]) -> Option<PathBuf> {
    names.iter().map(PathBuf::from).find(|p| p.exists())
}

/// Starts the store (when `shared`), `n` instances and the balancer; on an error, stops
/// whatever it had started.
pub async fn start(
    cfg: &DrillConfig,
    bin: &Path,
    n: u32,
    shared: bool,
    upstream: &str,
) -> anyhow::Result<Parts> {
    let mut parts = Parts {
        port: 0,
        status_url: String::new(),
        children: Vec::new(),
        relay: None,
    };
    match start_into(&mut parts, cfg, bin, n, shared, upstream).await {
        Ok(()) => Ok(parts),
        Err(e) => {
            parts.stop();
            Err(e)
        }
    }
}

async fn start_into(
    parts: &mut Parts,
    cfg: &DrillConfig,
    bin: &Path,
    n: u32,
    shared: bool,
    upstream: &str,
) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(&cfg.report_dir)?;
    let mut store = None;
    if shared {
        let redis =
            find(&["/usr/bin/redis-server", "/usr/local/bin/redis-server"]).ok_or_else(|| {
                anyhow::anyhow!("--fleet needs redis-server (apt-get install -y redis-server)")
            })?;
        let port = free_port()?;
        let c = Command::new(redis)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        parts
            .children
            .push(listening(c, port, "redis-server").await?);
        store = Some(format!("redis://127.0.0.1:{port}/0"));
    }
    let mut backends = Vec::new();
    for i in 0..n {
        let (port, admin) = (free_port()?, free_port()?);
        let text = drill_config(&cfg.config, port, admin, upstream)?;
        let mut t: toml::Table = text.parse()?;
        let mut server = match t.remove("server") {
            Some(toml::Value::Table(s)) => s,
            _ => toml::Table::new(),
        };
        server.insert("workers".into(), toml::Value::Integer(1));
        t.insert("server".into(), toml::Value::Table(server));
        if let Some(store) = &store {
            let mut f = toml::Table::new();
            f.insert("store".into(), toml::Value::String(store.clone()));
            f.insert("name".into(), toml::Value::String("drill".into()));
            f.insert("instance".into(), toml::Value::String(format!("i{i}")));
            t.insert("fleet".into(), toml::Value::Table(f));
        }
        let path = dir.join(format!("warmgate-fleet-{i}.toml"));
        std::fs::write(&path, toml::to_string(&t)?)?;
        let c = start_warmgate(bin, &path, &dir.join(format!("warmgate-fleet-{i}.log")))?;
        parts.children.push(listening(c, port, "warmgate").await?);
        if i == 0 {
            parts.status_url = format!("http://127.0.0.1:{admin}/status");
        }
        backends.push(port);
    }
    let port = free_port()?;
    match find(&[
        "/usr/sbin/haproxy",
        "/usr/bin/haproxy",
        "/usr/local/sbin/haproxy",
    ]) {
        Some(haproxy) => {
            let servers: String = backends
                .iter()
                .enumerate()
                .map(|(i, p)| format!("  server w{i} 127.0.0.1:{p}\n"))
                .collect();
            let conf = format!(
                "global\n  maxconn 9000\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n\n\
frontend storm\n  bind 127.0.0.1:{port}\n  default_backend fleet\n\n\
backend fleet\n  balance roundrobin\n{servers}"
            );
            let path = dir.join("haproxy-fleet.cfg");
            std::fs::write(&path, conf)?;
            let log = std::fs::File::create(dir.join("haproxy-fleet.log"))?;
            let c = Command::new(haproxy)
                .arg("-db")
                .arg("-f")
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()?;
            parts.children.push(listening(c, port, "haproxy").await?);
        }
        None => {
            let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            parts.relay = Some(tokio::spawn(relay(l, backends)));
        }
    }
    parts.port = port;
    Ok(())
}

/// A round-robin TCP relay: each connection goes to the next instance.
async fn relay(l: tokio::net::TcpListener, backends: Vec<u16>) {
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((mut inbound, _)) = l.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            continue;
        };
        let i = next.fetch_add(1, Ordering::Relaxed) % backends.len().max(1);
        let Some(&port) = backends.get(i) else {
            continue;
        };
        tokio::spawn(async move {
            if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                let _ = inbound.set_nodelay(true);
                let _ = out.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
            }
        });
    }
}
