//! The audit log: every admin write, accepted or refused, as one JSON line (time, caller,
//! action, before, after, result). Kept in memory (the last 1000, for the API) and appended to
//! a file when `admin.audit_log` is set.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

const KEEP: usize = 1000;

/// Who asked.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name, or `anonymous` for an unauthenticated read.
    pub token: String,
    pub peer: std::net::SocketAddr,
}

/// The bounded in-memory log and its optional file.
pub struct Audit {
    entries: Mutex<VecDeque<Value>>,
    file: Option<PathBuf>,
}

impl Audit {
    pub fn new(file: Option<PathBuf>) -> Self {
        Self {
            entries: Mutex::new(VecDeque::with_capacity(64)),
            file,
        }
    }

    /// Records one write.
    pub fn record(&self, caller: &Caller, action: &str, before: Value, after: Value, result: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let entry = json!({
            "time_unix_ms": now.as_millis() as u64,
            "caller": { "token": caller.token, "peer": caller.peer.to_string() },
            "action": action,
            "before": before,
            "after": after,
            "result": result,
        });
        if let Some(path) = &self.file {
            let line = format!("{entry}\n");
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = written {
                tracing::error!(path = %path.display(), error = %e, "cannot append to the audit log");
            }
        }
        tracing::info!(action, result, token = %caller.token, peer = %caller.peer, "admin write");
        if let Ok(mut q) = self.entries.lock() {
            if q.len() == KEEP {
                q.pop_front();
            }
            q.push_back(entry);
        }
    }

    /// The last `n` entries, oldest first.
    pub fn last(&self, n: usize) -> Vec<Value> {
        self.entries
            .lock()
            .map(|q| q.iter().skip(q.len().saturating_sub(n)).cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_entries_and_appends_to_the_file() {
        let dir = std::env::temp_dir().join(format!("wg-audit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("audit.log");
        let _ = std::fs::remove_file(&path);
        let a = Audit::new(Some(path.clone()));
        let caller = Caller {
            token: "ops".into(),
            peer: std::net::SocketAddr::from(([127, 0, 0, 1], 5000)),
        };
        for i in 0..(KEEP + 5) {
            a.record(&caller, "progress", json!(i), json!(i + 1), "ok");
        }
        let last = a.last(2);
        assert_eq!(last.len(), 2);
        assert_eq!(last[1]["before"], json!(KEEP + 4));
        assert_eq!(a.last(usize::MAX).len(), KEEP);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(text.lines().count(), KEEP + 5);
        assert!(text
            .lines()
            .all(|l| serde_json::from_str::<Value>(l).is_ok()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
