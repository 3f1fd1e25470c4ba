//! The access log (off by default): one JSON line per request, written by its own thread so
//! the data path only formats a line and hands it over (and drops it if the writer is behind,
//! counting the loss). A client that goes away before its answer is logged with status 499.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

/// Where lines go.
#[derive(Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<String>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    /// Starts the writer for `target` (`stderr` or a file path, appended to).
    pub fn start(target: &str) -> std::io::Result<Self> {
        let mut out: Box<dyn Write + Send> = if target == "stderr" {
            Box::new(std::io::stderr())
        } else {
            Box::new(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)?,
            ))
        };
        let (tx, mut rx) = mpsc::channel::<String>(8192);
        // Its own thread: a file write that blocks (a slow disk, a full pipe on stderr) must
        // not hold a worker thread of the proxy.
        std::thread::Builder::new()
            .name("warmgate-access-log".into())
            .spawn(move || {
                while let Some(line) = rx.blocking_recv() {
                    let _ = out.write_all(line.as_bytes());
                    // Write what is queued, then flush once.
                    while let Ok(more) = rx.try_recv() {
                        let _ = out.write_all(more.as_bytes());
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    fn send(&self, line: String) {
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines lost because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// What the handler learns about a request, for its log line.
#[derive(Debug, Default)]
pub struct Note {
    /// Whether a line will be written (the handler skips the bookkeeping otherwise).
    pub on: bool,
    pub feature: Option<String>,
    pub priority: Option<&'static str>,
    pub client: u64,
    pub outcome: &'static str,
    pub queue_wait: Option<Duration>,
    pub upstream: Option<Duration>,
}

/// One request being logged; logged as 499 if dropped before [`Pending::finish`].
pub struct Pending {
    log: AccessLog,
    start: Instant,
    method: String,
    path: String,
    peer: std::net::IpAddr,
    pub note: Note,
    done: bool,
}

impl Pending {
    pub fn new(log: AccessLog, method: &str, path: &str, peer: std::net::IpAddr) -> Self {
        Self {
            log,
            start: Instant::now(),
            method: method.to_string(),
            path: path.to_string(),
            peer,
            note: Note::default(),
            done: false,
        }
    }

    fn emit(&self, status: u16) {
        let ms = |d: Option<Duration>| {
            d.map_or(serde_json::Value::Null, |d| {
                (d.as_secs_f64() * 1000.0).into()
            })
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let line = serde_json::json!({
            "time_unix_ms": now.as_millis() as u64,
            "peer": self.peer.to_string(),
            "client": format!("{:016x}", self.note.client),
            "method": self.method,
            "path": self.path,
            "feature": self.note.feature,
            "priority": self.note.priority,
            "outcome": if status == 499 { "client_closed" } else if self.note.outcome.is_empty() { "answered" } else { self.note.outcome },
            "status": status,
            "queue_wait_ms": ms(self.note.queue_wait),
            "upstream_ms": ms(self.note.upstream),
            "total_ms": ms(Some(self.start.elapsed())),
        });
        self.log.send(format!("{line}\n"));
    }

    /// Logs the answer's status.
    pub fn finish(mut self, status: u16) {
        self.emit(status);
        self.done = true;
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            self.emit(499);
        }
    }
}
