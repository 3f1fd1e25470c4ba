//! Signed return tickets on loopback: a client refused by one instance keeps its place in
//! line on another (started after the ticket was issued, as after a restart); a forged ticket
//! or another client's is ignored and counted, never an error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use http::Response;

const KEYS: &str = "k2 0123456789abcdef0123456789abcdef\nk1 fedcba9876543210fedcba9876543210\n";

fn config(upstream: &str, max_wait: &str) -> String {
    format!(
        "listen = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [upstream]\nendpoints = [\"{upstream}\"]\n\
         [limit]\nmode = \"fixed\"\nfull_capacity = 1\n\
         [queue]\nmax_wait = {{ normal = \"{max_wait}\" }}\n\
         [ticket]\nkeys_file = \"keys\"\ncookie = true\nttl = \"5m\"\n\
         [client_key]\nheader = \"x-user\"\n\
         [[feature]]\nname = \"feed\"\npriority = \"normal\"\n"
    )
}

fn spawn_get(
    url: String,
    headers: Vec<(&'static str, String)>,
) -> tokio::task::JoinHandle<Response<()>> {
    tokio::spawn(async move {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        get(&url, &h).await.0
    })
}

async fn metrics(p: &Proxy) -> String {
    String::from_utf8_lossy(&get(&format!("http://{}/metrics", p.admin), &[]).await.1).to_string()
}

#[tokio::test]
async fn a_ticket_from_one_instance_gives_its_holder_its_place_on_another() {
    let log_a = Arc::new(Mutex::new(Vec::new()));
    let log_b = Arc::new(Mutex::new(Vec::new()));
    let up_a = ordered_upstream(Duration::from_millis(400), log_a.clone()).await;
    let up_b = ordered_upstream(Duration::from_millis(400), log_b.clone()).await;

    // Instance A, full and with no line: alice is refused with a ticket.
    let (a, _dir_a) =
        proxy_from_file(&config(&up_a.addr.to_string(), "0s"), &[("keys", KEYS)]).await;
    let holder = spawn_get(a.url("/"), vec![("x-user", "a-holder".into())]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (resp, _) = get(&a.url("/"), &[("x-user", "alice")]).await;
    assert_eq!(resp.status(), 503);
    let ticket = resp.headers()["warmgate-ticket"]
        .to_str()
        .unwrap()
        .to_string();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with(&format!("warmgate_ticket={ticket};")),
        "{cookie}"
    );
    assert!(
        cookie.contains("Max-Age=300") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    assert_eq!(holder.await.unwrap().status(), 200);
    assert!(metrics(&a)
        .await
        .contains("warmgate_tickets_total{result=\"issued\"} 1"));
    // Alice's first arrival is now some way in the past.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Instance B starts after the ticket was issued (as a restarted one would) with a line.
    let (b, _dir_b) =
        proxy_from_file(&config(&up_b.addr.to_string(), "5s"), &[("keys", KEYS)]).await;
    let holder = spawn_get(b.url("/"), vec![("x-user", "b-holder".into())]);
    tokio::time::sleep(Duration::from_millis(60)).await;
    let bob = spawn_get(b.url("/"), vec![("x-user", "bob".into())]);
    tokio::time::sleep(Duration::from_millis(60)).await;
    // Carol shows alice's ticket: not hers, so she is a new arrival.
    let carol = spawn_get(
        b.url("/"),
        vec![
            ("x-user", "carol".into()),
            ("warmgate-ticket", ticket.clone()),
        ],
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    // Dave shows a forged one.
    let mut forged = ticket.clone().into_bytes();
    let at = forged.len() / 2;
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    let dave = spawn_get(
        b.url("/"),
        vec![
            ("x-user", "dave".into()),
            ("warmgate-ticket", String::from_utf8(forged).unwrap()),
        ],
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    // Alice comes last, with her ticket as the cookie.
    let alice = spawn_get(
        b.url("/"),
        vec![
            ("x-user", "alice".into()),
            ("cookie", format!("theme=dark; warmgate_ticket={ticket}")),
        ],
    );
    for t in [holder, bob, carol, dave, alice] {
        assert_eq!(
            t.await.unwrap().status(),
            200,
            "a ticket never makes an error"
        );
    }
    assert_eq!(
        *log_b.lock().unwrap(),
        ["b-holder", "alice", "bob", "carol", "dave"],
        "alice is served by her first arrival on A; the others by theirs on B"
    );
    let m = metrics(&b).await;
    for line in [
        "warmgate_tickets_total{result=\"valid\"} 1",
        "warmgate_tickets_total{result=\"mismatch\"} 1",
        "warmgate_tickets_total{result=\"invalid\"} 1",
    ] {
        assert!(m.contains(line), "{line} in\n{m}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn without_a_ticket_section_no_ticket_is_issued_or_read() {
    let up = ordered_upstream(Duration::from_millis(300), Arc::new(Mutex::new(Vec::new()))).await;
    let text = config(&up.addr.to_string(), "0s").replace(
        "[ticket]\nkeys_file = \"keys\"\ncookie = true\nttl = \"5m\"\n",
        "",
    );
    let (p, _dir) = proxy_from_file(&text, &[]).await;
    let holder = spawn_get(p.url("/"), vec![("x-user", "h".into())]);
    tokio::time::sleep(Duration::from_millis(80)).await;
    let (resp, _) = get(
        &p.url("/"),
        &[("x-user", "x"), ("warmgate-ticket", "garbage")],
    )
    .await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("warmgate-ticket").is_none());
    assert!(resp.headers().get("set-cookie").is_none());
    assert_eq!(holder.await.unwrap().status(), 200);
    p.stop().await;
}

#[tokio::test]
async fn a_503_for_a_backend_found_down_carries_a_ticket_too() {
    // A port nothing listens on: the connection is refused.
    let dead = free_port();
    let text = config(&format!("127.0.0.1:{dead}"), "0s")
        .replace("full_capacity = 1", "full_capacity = 8");
    let (p, _dir) = proxy_from_file(&text, &[("keys", KEYS)]).await;
    let (resp, body) = get(&p.url("/"), &[("x-user", "erin")]).await;
    assert_eq!(resp.status(), 503, "{}", String::from_utf8_lossy(&body));
    assert!(resp.headers().contains_key("warmgate-ticket"));
    assert!(resp.headers().contains_key("retry-after"));
    p.stop().await;
}
