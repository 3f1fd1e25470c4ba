//! `[ticket]` (signed return tickets) and `[fleet]` (instances that act as one through a store).

use std::time::Duration;

use super::super::parse::duration_or;
use super::super::{FleetConfig, TicketConfig};
use super::Errors;
use crate::config::file::{FileFleet, FileTicket};

/// Reads a secret from a file (its first line) or an environment variable.
fn secret(
    e: &mut Errors,
    base: &std::path::Path,
    (file_key, file): (&str, &Option<String>),
    (env_key, env): (&str, &Option<String>),
) -> Option<String> {
    if let Some(path) = file {
        let path = base.join(path);
        return match std::fs::read_to_string(&path) {
            Ok(s) => Some(s.lines().next().unwrap_or("").trim().to_string()),
            Err(err) => {
                e.push(file_key, format!("cannot read {}: {err}", path.display()));
                None
            }
        };
    }
    let var = env.as_ref()?;
    match std::env::var(var) {
        Ok(s) => Some(s.trim().to_string()),
        Err(_) => {
            e.push(env_key, format!("${var} is not set"));
            None
        }
    }
}

pub fn ticket(e: &mut Errors, t: &FileTicket, base: &std::path::Path) -> Option<TicketConfig> {
    let mut keys = Vec::new();
    let keys_file = t.keys_file.as_ref().map(|p| base.join(p));
    if let Some(path) = &keys_file {
        match std::fs::read_to_string(path) {
            Ok(text) => match crate::ticket::parse_keys(&text, &path.display().to_string()) {
                Ok(k) => keys.extend(k),
                Err(msg) => e.push("ticket.keys_file", msg),
            },
            Err(err) => e.push(
                "ticket.keys_file",
                format!("cannot read {}: {err}", path.display()),
            ),
        }
    }
    if let Some(var) = &t.keys_env {
        match std::env::var(var) {
            Ok(text) => match crate::ticket::parse_keys(&text, &format!("${var}")) {
                Ok(k) => keys.extend(k),
                Err(msg) => e.push("ticket.keys_env", msg),
            },
            Err(_) => e.push("ticket.keys_env", format!("${var} is not set")),
        }
    }
    if t.keys_file.is_none() && t.keys_env.is_none() {
        e.push(
            "ticket",
            "needs keys_file or keys_env (the keys that sign and verify tickets)",
        );
    }
    let ttl = e.positive("ticket.ttl", &t.ttl, Duration::from_secs(600));
    if ttl > Duration::from_secs(86_400) {
        e.push("ticket.ttl", "must be at most 24h");
    }
    let cookie = t.cookie.unwrap_or(false).then(|| {
        let name = t
            .cookie_name
            .clone()
            .unwrap_or_else(|| "warmgate_ticket".into());
        let ok = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            e.push(
                "ticket.cookie_name",
                format!("{name:?}: letters, digits, '_' and '-' only"),
            );
        }
        name
    });
    let client_secret = secret(
        e,
        base,
        ("ticket.client_secret_file", &t.client_secret_file),
        ("ticket.client_secret_env", &t.client_secret_env),
    );
    if client_secret.as_ref().is_some_and(|s| s.len() < 16) {
        e.push(
            "ticket.client_secret_file",
            "the secret is shorter than 16 characters",
        );
    }
    let client_secret =
        client_secret.or_else(|| keys.first().map(|(_, s): &(String, String)| s.clone()))?;
    if keys.is_empty() {
        return None;
    }
    Some(TicketConfig {
        keys,
        ttl,
        cookie,
        client_secret,
    })
}

pub fn fleet(
    e: &mut Errors,
    f: &FileFleet,
    base: &std::path::Path,
    tick: Duration,
) -> Option<FleetConfig> {
    let Some(store) = f.store.clone() else {
        e.push(
            "fleet.store",
            "is required (e.g. \"redis://127.0.0.1:6379/0\")",
        );
        return None;
    };
    let mut info = match redis::IntoConnectionInfo::into_connection_info(store.as_str()) {
        Ok(i) => Some(i),
        Err(err) => {
            e.push(
                "fleet.store",
                format!(
                    "{store:?} is not a Redis address (redis://host:port/db or rediss://…): {err}"
                ),
            );
            None
        }
    };
    if let Some(pw) = secret(
        e,
        base,
        ("fleet.password_file", &f.password_file),
        ("fleet.password_env", &f.password_env),
    ) {
        info = info.map(|i| {
            let r = i.redis_settings().clone().set_password(pw);
            i.set_redis_settings(r)
        });
    }
    let name = f.name.clone().unwrap_or_else(|| "warmgate".into());
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if !name_ok {
        e.push(
            "fleet.name",
            format!("{name:?}: 1 to 64 letters, digits, '.', '_' or '-'"),
        );
    }
    let instance = f.instance.clone().unwrap_or_else(default_instance);
    if instance.is_empty() || instance.len() > 128 || instance.contains(char::is_whitespace) {
        e.push("fleet.instance", "1 to 128 characters, no spaces");
    }
    let sync = e
        .take(duration_or("fleet.sync", &f.sync, tick))
        .unwrap_or(tick);
    if sync < Duration::from_millis(20) || sync > Duration::from_secs(5) {
        e.push("fleet.sync", "must be between 20ms and 5s");
    }
    let lease = e
        .take(duration_or(
            "fleet.lease",
            &f.lease,
            (sync * 10).max(Duration::from_secs(1)),
        ))
        .unwrap_or(Duration::from_secs(1));
    if lease < sync * 3 {
        e.push(
            "fleet.lease",
            format!(
                "must be at least three sync intervals ({:?}): a share must outlive a missed sync",
                sync * 3
            ),
        );
    }
    Some(FleetConfig {
        store: info?,
        store_text: redacted(&store),
        name,
        instance,
        sync,
        lease,
    })
}

/// The address for status and logs: a password written in it is not shown.
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Host name and process id: unique on a machine, readable in a list.
fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "warmgate".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::config::load::{load_str, load_str_in};

    const BASE: &str = "[upstream]\nendpoints = [\"127.0.0.1:9001\"]\n";

    fn errors(text: &str) -> Vec<String> {
        load_str("w.toml", &format!("{BASE}{text}"))
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn no_fleet_and_no_ticket_is_the_single_instance_of_before() {
        let c = load_str("w.toml", BASE).unwrap();
        assert!(c.fleet.is_none() && c.ticket.is_none());
    }

    #[test]
    fn a_fleet_takes_its_defaults_from_the_tick() {
        let c = load_str(
            "w.toml",
            &format!("{BASE}[fleet]\nstore = \"redis://127.0.0.1:6390/2\"\ninstance = \"a\"\n"),
        )
        .unwrap();
        let f = c.fleet.unwrap();
        assert_eq!(f.instance, "a");
        assert_eq!(f.name, "warmgate");
        assert_eq!(f.sync, c.tick);
        assert!(f.lease >= f.sync * 3);
        assert_eq!(f.store.redis_settings().db(), 2);
        let c = load_str(
            "w.toml",
            &format!("{BASE}[fleet]\nstore = \"redis://:hunter2secret@127.0.0.1:6390/0\"\n"),
        )
        .unwrap();
        let f = c.fleet.unwrap();
        assert_eq!(f.store_text, "redis://***@127.0.0.1:6390/0");
        assert!(!format!("{f:?}").contains("hunter2"));
        assert_eq!(f.store.redis_settings().password(), Some("hunter2secret"));
    }

    #[test]
    fn fleet_errors_name_the_key() {
        let e = errors("[fleet]\nstore = \"http://x\"\n");
        assert!(e.iter().any(|m| m.contains("fleet.store")), "{e:?}");
        let e =
            errors("[fleet]\nstore = \"redis://127.0.0.1\"\nsync = \"100ms\"\nlease = \"200ms\"\n");
        assert!(e.iter().any(|m| m.contains("fleet.lease")), "{e:?}");
        let e = errors("[fleet]\nstore = \"redis://127.0.0.1\"\nname = \"a b\"\n");
        assert!(e.iter().any(|m| m.contains("fleet.name")), "{e:?}");
        let e = errors(
            "[fleet]\nstore = \"redis://127.0.0.1\"\npassword_env = \"WARMGATE_NO_SUCH_VAR\"\n",
        );
        assert!(e.iter().any(|m| m.contains("fleet.password_env")), "{e:?}");
    }

    #[test]
    fn ticket_keys_come_from_a_file_and_errors_name_the_key() {
        let dir = std::env::temp_dir().join(format!("wg-ticket-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("keys"),
            "k2 = 0123456789abcdef0123\nk1 = fedcba9876543210fedc\n",
        )
        .unwrap();
        let c = load_str_in(
            "w.toml",
            &format!("{BASE}[ticket]\nkeys_file = \"keys\"\ncookie = true\n"),
            &dir,
        )
        .unwrap();
        let t = c.ticket.unwrap();
        assert_eq!(t.keys[0].0, "k2", "the first key signs");
        assert_eq!(t.cookie.as_deref(), Some("warmgate_ticket"));
        let e = errors("[ticket]\nttl = \"10s\"\n");
        assert!(
            e.iter().any(|m| m.contains("keys_file or keys_env")),
            "{e:?}"
        );
        let e = errors("[ticket]\nkeys_file = \"/nonexistent/keys\"\n");
        assert!(e.iter().any(|m| m.contains("ticket.keys_file")), "{e:?}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
