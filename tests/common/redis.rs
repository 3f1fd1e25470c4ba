//! A `redis-server` of the test's own on a loopback port (no persistence), killed by PID
//! when dropped.

use std::process::{Command, Stdio};

use super::process::{wait_for_port, Reaped};

/// Where the server binary is (the package's path first).
pub fn binary() -> Option<&'static str> {
    ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// Starts a server on `port`, waiting until it accepts connections.
pub fn start(port: u16) -> Reaped {
    let bin = binary().expect("redis-server is not installed (apt-get install redis-server)");
    let child = Command::new(bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server starts");
    let r = Reaped(child);
    wait_for_port(port, "redis-server");
    r
}
