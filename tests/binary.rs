//! The `warmgate` binary: `check-config` exit codes and messages, SIGTERM drain, and a real
//! nginx upstream serving static files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

use common::process::*;

fn check(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_the_default() {
    let out = Command::new(BIN)
        .args([
            "check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/warmgate.toml"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("feature          login"));
}

#[test]
fn check_config_names_the_key_and_line() {
    let cases = [
        ("[upstream]\nendpoints = [\"127.0.0.1:9000\"]\nretry = 1\n", "w.toml:3: upstream: unknown key `retry`"),
        ("[upstream]\nendpoints = [\n  \"127.0.0.1:9000\",\n  \"localhost:\",\n]\n", "w.toml:4: upstream.endpoints[1]: \"localhost:\" is not a host:port"),
        ("listen = \"nowhere\"\n", "w.toml:1: listen: \"nowhere\" is not an ip:port"),
        ("\n[upstream]\nendpoints = []\n", "w.toml:3: upstream.endpoints: is empty"),
        ("[signals]\nerror_rate = { warn = 0.5, critical = 0.1 }\n", "w.toml:2: signals.error_rate.warn: warn (0.5) must be below critical (0.1)"),
        ("[[feature]]\nname = \"a\"\npriority = \"urgent\"\n", "w.toml:3: feature[0].priority: \"urgent\" is not a priority"),
        ("[[feature]]\nname = \"a\"\npriority = \"low\"\n[[feature]]\nname = \"a\"\npriority = \"low\"\n", "w.toml:5: feature[1].name: duplicate feature \"a\""),
        ("[[feature]]\nname = \"a\"\npriority = \"low\"\n[[route]]\nfeature = \"a\"\npath_regex = \"(\"\n", "w.toml:6: route[0].path_regex: invalid regex"),
        ("listen = [\n", "w.toml:2"),
        ("[signals.scrape]\nurl = \"ftp://x/\"\njson_pointer = \"/a\"\n", "w.toml:2: signals.scrape.url: \"ftp://x/\" is not an http://host:port/path URL"),
        ("[signals.scrape]\nurl = \"http://127.0.0.1:9/s\"\n", "w.toml:1: signals.scrape: set exactly one of json_pointer or prometheus_metric"),
    ];
    for (text, want) in cases {
        let (code, err) = check(text);
        assert_eq!(code, 2, "{text}");
        assert!(err.contains(want), "want {want:?} in {err:?}");
    }
    let (code, err) = check("");
    assert_eq!(code, 2, "an empty file is refused");
    assert!(err.contains("upstream.endpoints: is required"), "{err}");
    let (code, err) = check("[upstream]\nendpoints = [\"127.0.0.1:9000\"]\n");
    assert_eq!((code, err.as_str()), (0, ""));
}

#[test]
fn run_with_a_bad_config_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    std::fs::write(&path, "mode = \"chaos\"\n").unwrap();
    let out = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("mode: \"chaos\" is not a mode"));
}

fn open(port: u16, upstream: &str) -> String {
    format!(
        "listen = \"127.0.0.1:{port}\"\n[upstream]\nendpoints = [\"{upstream}\"]\n[limit]\nmode = \"fixed\"\nfull_capacity = 100\n[ramp]\nstages = {{ critical = 0.0, high = 0.0, normal = 0.0, low = 0.0 }}\n"
    )
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    let up = ok_upstream(Duration::from_millis(800)).await;
    let port = free_port();
    let (mut child, _dir) = spawn(&open(port, &up.addr.to_string()), port);
    let url = format!("http://127.0.0.1:{port}/slow");
    let req = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal(&child, "TERM");
    let (resp, body) = req.await.unwrap();
    assert_eq!(resp.status(), 200, "the in-flight request completed");
    assert_eq!(body, "ok");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
}

/// nginx serving static files behind warmgate. CI installs nginx; without it the test is
/// reported as ignored, with the reason (the build script looks for nginx).
#[tokio::test]
#[cfg_attr(
    not(nginx_available),
    ignore = "nginx is not installed (apt-get install -y nginx-light); CI installs it"
)]
async fn real_nginx_upstream_serves_static_files() {
    let nginx = which("nginx").expect("nginx is installed (the build script found it)");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    let big: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    std::fs::write(root.join("index.html"), "<h1>nginx behind warmgate</h1>\n").unwrap();
    let nport = free_port();
    let conf = dir.path().join("nginx.conf");
    let d = dir.path().display();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{ worker_connections 256; }}\nhttp {{\n access_log off;\n client_body_temp_path {d}/tmp;\n proxy_temp_path {d}/tmp;\n fastcgi_temp_path {d}/tmp;\n uwsgi_temp_path {d}/tmp;\n scgi_temp_path {d}/tmp;\n server {{ listen 127.0.0.1:{nport}; root {}; }}\n}}\n",
            root.display()
        ),
    )
    .unwrap();
    let ng = Reaped(
        Command::new(nginx)
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(nport, "nginx");
    let port = free_port();
    let (wg, _d) = spawn(&open(port, &format!("127.0.0.1:{nport}")), port);
    let (resp, body) = get(&format!("http://127.0.0.1:{port}/index.html"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(body, "<h1>nginx behind warmgate</h1>\n");
    assert!(resp.headers()["server"]
        .to_str()
        .unwrap()
        .starts_with("nginx"));
    let (resp, body) = get(&format!("http://127.0.0.1:{port}/big.bin"), &[]).await;
    assert_eq!(resp.status(), 200);
    assert!(body == big, "4 MiB file intact");
    let (resp, _) = get(&format!("http://127.0.0.1:{port}/missing"), &[]).await;
    assert_eq!(resp.status(), 404, "upstream status passed through");
    drop((wg, ng));
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    for dir in [
        "/usr/sbin",
        "/usr/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
        "/sbin",
    ] {
        let p = std::path::Path::new(dir).join(name);
        if p.exists() {
            return Ok(p);
        }
    }
    Err(())
}

#[tokio::test]
async fn sighup_reloads_and_a_bad_file_keeps_the_running_config() {
    let up = ok_upstream(Duration::ZERO).await;
    let port = free_port();
    let base = open(port, &up.addr.to_string());
    let (mut child, dir) = spawn(&base, port);
    let path = dir.path().join("w.toml");
    let url = format!("http://127.0.0.1:{port}/x");
    assert_eq!(get(&url, &[]).await.0.status(), 200);
    // Switch the default feature off: after the reload, requests are shed.
    std::fs::write(
        &path,
        format!(
            "{base}\n[[feature]]\nname = \"default\"\npriority = \"normal\"\nstate = \"off\"\n"
        ),
    )
    .unwrap();
    hup(&child);
    let t = Instant::now();
    while get(&url, &[]).await.0.status() != 503 {
        assert!(t.elapsed() < Duration::from_secs(5), "reload not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // An invalid file is refused; the last good config keeps serving.
    std::fs::write(&path, "listen = \"nowhere\"\n").unwrap();
    hup(&child);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(child.try_wait().unwrap().is_none(), "still running");
    let hits = up.hits();
    let (resp, body) = get(&url, &[]).await;
    assert!(
        resp.status() == 503 || resp.status() == 429,
        "still shedding: {}",
        resp.status()
    );
    assert!(String::from_utf8_lossy(&body).contains("\"feature\":\"default\""));
    assert_eq!(up.hits(), hits, "the reloaded config still applies");
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn a_reload_keeps_client_memory_controller_state_and_upstream_connections() {
    let up = ok_upstream(Duration::ZERO).await;
    let (port, admin) = (free_port(), free_port());
    let base = format!(
        "listen = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
[upstream]\nendpoints = [\"{}\"]\n[ramp]\nengage = \"on_start\"\nduration = \"10m\"\n\
[queue]\nmax_wait = {{ low = \"500ms\" }}\n[client_key]\nheader = \"x-user\"\n\
[[feature]]\nname = \"default\"\npriority = \"critical\"\n\
[[feature]]\nname = \"recommend\"\npriority = \"low\"\n[[route]]\nfeature = \"recommend\"\npath_prefix = \"/rec\"\n",
        up.addr
    );
    let (child, dir) = spawn(&base, port);
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let client = h1();
    let five_ok = || async {
        for _ in 0..5 {
            let (resp, _) = send(&client, "GET", &url("/x"), &[], full("")).await;
            assert_eq!(resp.status(), 200);
        }
    };
    // Keep-alive connections to the upstream, and a client told to come back later.
    five_ok().await;
    let conns = up.conns.load(std::sync::atomic::Ordering::SeqCst);
    let (first, _) = get(&url("/rec"), &[("x-user", "early")]).await;
    assert_eq!(first.status(), 503);
    let status = |admin: u16| async move {
        let (_, b) = get(&format!("http://127.0.0.1:{admin}/status"), &[]).await;
        serde_json::from_slice::<serde_json::Value>(&b).unwrap()
    };
    let before = status(admin).await;

    // The same file again (a touched config), then SIGHUP.
    std::fs::write(dir.path().join("w.toml"), format!("{base}\n# touched\n")).unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The early returner is still known: held for the low priority's wait before its answer.
    let t = Instant::now();
    let (again, _) = get(&url("/rec"), &[("x-user", "early")]).await;
    assert_eq!(again.status(), 503);
    assert!(
        t.elapsed() >= Duration::from_millis(500),
        "client memory survived the reload: {:?}",
        t.elapsed()
    );
    // The controller was not reset: still engaged, the same limit.
    let after = status(admin).await;
    assert_eq!(after["controller"]["engaged"], true);
    assert_eq!(after["controller"]["limit"], before["controller"]["limit"]);
    // The pooled upstream connections were kept: no new connection for these requests.
    five_ok().await;
    assert_eq!(
        up.conns.load(std::sync::atomic::Ordering::SeqCst),
        conns,
        "no new upstream connection after the reload"
    );
    drop(child);
}

/// Every default in README's "Running at the edge" tables is the code's: setting a key to the
/// documented default changes nothing in the effective settings.
#[test]
fn the_edge_defaults_in_the_readme_are_the_codes() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("## Running at the edge")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap();
    let base = "[upstream]\nendpoints = [\"127.0.0.1:9000\"]\n";
    let summary = |text: &str| {
        warmgate::config::summary(
            &warmgate::config::load_str("w.toml", text).unwrap_or_else(|e| panic!("{text}: {e:?}")),
        )
    };
    let plain = summary(base);
    let mut checked = 0;
    for line in section.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') || !cells[2].starts_with('`') {
            continue;
        }
        let key = cells[1].trim_matches('`');
        let value = cells[2].trim_matches('`');
        let (table, name) = key.split_once('.').unwrap();
        let value = if value.parse::<f64>().is_ok() {
            value.to_string()
        } else {
            format!("\"{value}\"")
        };
        let text = if table == "upstream" {
            format!("[upstream]\nendpoints = [\"127.0.0.1:9000\"]\n{name} = {value}\n")
        } else {
            format!("{base}[{table}]\n{name} = {value}\n")
        };
        assert_eq!(
            summary(&text),
            plain,
            "README says {key} defaults to {value}"
        );
        checked += 1;
    }
    assert!(checked >= 14, "only {checked} defaults found");
}

#[test]
fn check_config_takes_the_path_either_way_prints_json_and_a_closed_pipe_is_quiet() {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/config/warmgate.toml");
    for args in [
        vec!["check-config", cfg],
        vec!["check-config", "--config", cfg],
    ] {
        let out = Command::new(BIN).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("config ok"));
    }
    let out = Command::new(BIN)
        .args(["check-config", "--json", cfg])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["upstream"]["endpoints"][0], "127.0.0.1:9000");
    assert_eq!(v["server"]["keepalive_timeout_s"], 75.0);
    assert_eq!(v["features"][0]["name"], "login");
    // A reader that has gone away (`| head -1` after its line): a quiet exit, not a panic.
    for _ in 0..5 {
        let mut child = Command::new(BIN)
            .args(["check-config", cfg])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert!(
            out.stderr.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // No default file here: the error says where it looked.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("relative to the working directory"), "{err}");
}

#[tokio::test]
async fn run_takes_the_path_positionally_and_logs_plain_text_in_words() {
    let up = ok_upstream(Duration::ZERO).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    std::fs::write(&path, open(port, &up.addr.to_string())).unwrap();
    let mut child = Reaped(
        Command::new(BIN)
            .arg("run")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port, "warmgate");
    assert_eq!(
        get(&format!("http://127.0.0.1:{port}/"), &[])
            .await
            .0
            .status(),
        200
    );
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(
        !log.contains('\u{1b}'),
        "no colour codes in a log that is not a terminal: {log}"
    );
    assert!(
        log.contains(&format!(
            "warmgate serving HTTP/1.1 and HTTP/2 (prior knowledge) on 127.0.0.1:{port}"
        )),
        "{log}"
    );
    assert!(
        log.contains("admission: enforce mode; a fixed limit of 100 in flight"),
        "{log}"
    );
}

/// warmgate itself restarted under traffic: SIGTERM lets every request it accepted finish,
/// and the next process on the same port admits from its first request in front of a warm
/// backend (no ramp: nothing says the backend is cold).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmgate_restarted_under_traffic_answers_what_it_took_and_the_next_admits_at_once() {
    let up = ok_upstream(Duration::from_millis(300)).await;
    let port = free_port();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\n[upstream]\nendpoints = [\"{}\"]\n[client_key]\nheader = \"x-user\"\n[gate]\nper_client_share = 1.0\n",
        up.addr
    );
    let burst = |n: usize, tag: &'static str| {
        (0..n)
            .map(|i| {
                let url = format!("http://127.0.0.1:{port}/x");
                tokio::spawn(async move {
                    let user = format!("{tag}{i}");
                    // A connection of its own: a request it sends was accepted.
                    let client = h1();
                    send(&client, "GET", &url, &[("x-user", &user)], full(""))
                        .await
                        .0
                        .status()
                })
            })
            .collect::<Vec<_>>()
    };
    let (mut first, _dir) = spawn(&config, port);
    // Warm: a first round through the new process.
    for s in burst(8, "w") {
        assert_eq!(s.await.unwrap(), 200);
    }
    // 32 in flight (300 ms each) when SIGTERM arrives: every one is answered.
    let inflight = burst(32, "a");
    tokio::time::sleep(Duration::from_millis(100)).await;
    signal(&first, "TERM");
    for s in inflight {
        assert_eq!(
            s.await.unwrap(),
            200,
            "a request taken before SIGTERM is answered"
        );
    }
    let t = Instant::now();
    while first.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(10), "did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The next process: its first 32 requests all admitted, none refused or queued out.
    let (_second, _dir2) = spawn(&config, port);
    for s in burst(32, "b") {
        assert_eq!(s.await.unwrap(), 200, "admitted from the first request");
    }
}
