//! The `warmgate` binary as a child process of a test.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_warmgate");

/// A child process killed when the test ends, even when it fails.
pub struct Reaped(pub std::process::Child);

impl std::ops::Deref for Reaped {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the binary on `config`, waiting until its port answers.
pub fn spawn(config: &str, port: u16) -> (Reaped, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let child = Reaped(child);
    wait_for_port(port, "warmgate");
    (child, dir)
}

/// Waits (up to 10 s) until something listens on loopback `port`.
pub fn wait_for_port(port: u16, what: &str) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` (`HUP`, `TERM`) to the child.
pub fn signal(child: &Reaped, signal: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args([format!("-{signal}").as_str(), &pid])
        .status()
        .unwrap()
        .success());
}

/// Sends SIGHUP to the child (a reload).
pub fn hup(child: &Reaped) {
    signal(child, "HUP");
}
