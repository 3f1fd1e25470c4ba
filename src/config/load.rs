//! Reading a config file: TOML syntax, then serde's typed model, then validation; each error
//! is placed on a line of the file.

use std::path::Path;

use super::error::{ConfigError, KeyError};
use super::file::FileConfig;
use super::locate::Locator;
use super::validate::validate;
use super::Config;

/// Loads and validates the file at `path`.
pub fn load_file(path: &Path) -> Result<Config, Vec<ConfigError>> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: name.clone(),
            line: None,
            key: String::new(),
            message: format!("cannot read: {e}"),
        }]
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    load_str_in(&name, &text, base)
}

/// Loads and validates config text; `name` is used in error messages, and relative paths in
/// it are taken from the working directory.
pub fn load_str(name: &str, text: &str) -> Result<Config, Vec<ConfigError>> {
    load_str_in(name, text, Path::new(""))
}

/// Loads and validates config text whose relative paths are taken from `base`.
pub fn load_str_in(name: &str, text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
    let locator = Locator::new(text);
    let file: FileConfig = toml::from_str(text).map_err(|e| {
        let offset = e.span().map(|s| s.start);
        let mut key = offset.and_then(|o| locator.key_at(o)).unwrap_or_default();
        let raw = e.message().trim();
        let message = explain(raw, &key);
        // serde names an unknown key in the message; do not repeat its parent as the key.
        if raw.starts_with("unknown field") {
            key = key
                .rsplit_once('.')
                .map(|(parent, _)| parent.to_string())
                .unwrap_or_default();
        }
        vec![ConfigError {
            file: name.to_string(),
            line: offset.map(|o| locator.line_of_offset(o)),
            key,
            message,
        }]
    })?;
    validate(file, base).map_err(|errs| {
        let mut out: Vec<ConfigError> = Vec::new();
        for KeyError { key, message } in errs {
            let e = match locator.line_of_key(&key) {
                Some(line) => ConfigError {
                    file: name.to_string(),
                    line: Some(line),
                    key,
                    message,
                },
                // A cluster inherits the top-level table's value: name it where it is written.
                None => match inherited(&key).and_then(|k| Some((k, locator.line_of_key(k)?))) {
                    Some((top, line)) => ConfigError {
                        file: name.to_string(),
                        line: Some(line),
                        key: top.to_string(),
                        message: format!(
                            "{message} (in {}, which inherits {top})",
                            &key[..key.len() - top.len() - 1]
                        ),
                    },
                    None => ConfigError {
                        file: name.to_string(),
                        line: None,
                        key,
                        message,
                    },
                },
            };
            // Several clusters inheriting one bad value report it once.
            if !out
                .iter()
                .any(|o| o.key == e.key && o.line == e.line && same_problem(&o.message, &e.message))
            {
                out.push(e);
            }
        }
        out
    })
}

/// Two messages about one value, but for the cluster that inherits it.
fn same_problem(a: &str, b: &str) -> bool {
    let base = |m: &str| m.split(" (in cluster[").next().unwrap_or(m).to_string();
    base(a) == base(b)
}

/// The top-level key a cluster's key inherits from: `cluster[2].limit.min` → `limit.min`.
fn inherited(key: &str) -> Option<&str> {
    let rest = key.strip_prefix("cluster[")?;
    let (_, k) = rest.split_once("].")?;
    ["signals.", "ramp.", "limit.", "queue."]
        .iter()
        .any(|t| k.starts_with(t))
        .then_some(k)
}

/// Makes serde's messages say what to do: the closest valid key for an unknown one, and the
/// expected form of a value of the wrong type.
fn explain(message: &str, key: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let Some((unknown, tail)) = rest.split_once('`') else {
            return message.to_string();
        };
        let valid: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        let closest = valid
            .iter()
            .map(|v| {
                // A key with a prefix or suffix added (`listen_port`) is close too.
                let affix = unknown.starts_with(v) || unknown.ends_with(v);
                (
                    if affix {
                        1
                    } else {
                        strsim::damerau_levenshtein(unknown, v)
                    },
                    *v,
                )
            })
            .filter(|(d, v)| *d <= 2.max(v.len() / 4))
            .min();
        return match closest {
            Some((_, v)) => format!("unknown key `{unknown}`: did you mean `{v}`?"),
            None if valid.is_empty() => format!("unknown key `{unknown}`"),
            None => format!("unknown key `{unknown}` (valid here: {})", valid.join(", ")),
        };
    }
    let last = key.rsplit('.').next().unwrap_or(key);
    let duration_key = [
        "timeout", "interval", "window", "grace", "duration", "tick", "cooldown", "idle", "wait",
    ]
    .iter()
    .any(|w| last.contains(w));
    if message.starts_with("invalid type") && message.ends_with("expected a string") && duration_key
    {
        return format!("{message}: a duration is a string such as \"60s\", \"250ms\" or \"2m\"");
    }
    message.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first_error(text: &str) -> String {
        match load_str("w.toml", text) {
            Ok(_) => "ok".into(),
            Err(errs) => errs.first().map(ToString::to_string).unwrap_or_default(),
        }
    }

    #[test]
    fn errors_say_what_to_write_instead() {
        let e =
            first_error("[upstream]\nendpoints = [\"127.0.0.1:9000\"]\nconect_timeout = \"2s\"\n");
        assert_eq!(
            e,
            "w.toml:3: upstream: unknown key `conect_timeout`: did you mean `connect_timeout`?"
        );
        let e = first_error("[upstream]\nendpoints = [\"127.0.0.1:9000\"]\nzzz = 1\n");
        assert!(
            e.contains("unknown key `zzz` (valid here: endpoints, balance"),
            "{e}"
        );
        let e = first_error("[upstream]\nendpoints = [\"127.0.0.1:9000\"]\nconnect_timeout = 60\n");
        assert!(e.contains("a duration is a string such as \"60s\""), "{e}");
        let e = first_error("[upstream]\nendpoints = [\"http://127.0.0.1:9000\"]\n");
        assert!(e.contains("drop the scheme: \"127.0.0.1:9000\""), "{e}");
        let e = first_error(
            "[upstream]\nendpoints = [\"127.0.0.1:9000\"]\n[log]\nlevel = \"verbose\"\n",
        );
        assert!(
            e.contains(
                "log.level: \"verbose\" is not a level (off, error, warn, info, debug, trace"
            ),
            "{e}"
        );
        assert_eq!(
            first_error("[upstream]\nendpoints = [\"127.0.0.1:9000\"]\n[log]\nlevel = \"warmgate=debug,hyper=warn\"\n"),
            "ok"
        );
    }

    #[test]
    fn zero_timeouts_and_stream_limits_are_refused_with_key_and_line() {
        let text = "[upstream]\nendpoints = [\"127.0.0.1:9000\"]\nconnect_timeout = \"0s\"\n\n[server]\nh2_max_concurrent_streams = 0\nsend_timeout = \"0ms\"\n\n[signals.scrape]\nurl = \"http://127.0.0.1:9000/s\"\ninterval = \"0s\"\njson_pointer = \"/x\"\n";
        let errs: Vec<String> = match load_str("w.toml", text) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        };
        for want in [
            "w.toml:3: upstream.connect_timeout: must be above 0s",
            "w.toml:6: server.h2_max_concurrent_streams: must be at least 1",
            "w.toml:7: server.send_timeout: must be above 0s",
            "w.toml:11: signals.scrape.interval: must be above 0s",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "{want} not in {errs:#?}"
            );
        }
    }

    #[test]
    fn the_removed_v1_keys_are_named() {
        let text =
            "[upstream]\nendpoints = [\"127.0.0.1:9000\"]\n[ramp]\nheadroom = { low = 0.5 }\n";
        let err = first_error(text);
        assert!(
            err.starts_with("w.toml:4: ramp: unknown key `headroom`"),
            "{err}"
        );
    }

    #[test]
    fn names_file_line_and_key() {
        let text = "listen = \"127.0.0.1:8080\"\n\n[upstream]\nendpoints = [\n  \"127.0.0.1:9000\",\n  \"localhost:\",\n]\n";
        assert_eq!(
            first_error(text),
            "w.toml:6: upstream.endpoints[1]: \"localhost:\" is not a host:port"
        );
    }

    #[test]
    fn unknown_keys_are_named_with_their_table() {
        let e = first_error("[upstream]\nendpoints = [\"a:1\"]\nretries = 3\n");
        assert!(
            e.starts_with("w.toml:3: upstream: unknown key `retries`"),
            "{e}"
        );
        let e = first_error("listen = \"127.0.0.1:1\"\nlisten_port = 3\n");
        assert!(
            e.starts_with("w.toml:2: unknown key `listen_port`: did you mean `listen`?"),
            "{e}"
        );
    }

    #[test]
    fn type_errors_name_the_key() {
        let e = first_error("[ramp]\nduration = 30\n");
        assert!(
            e.starts_with("w.toml:2: ramp.duration: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn empty_endpoints_and_bad_thresholds() {
        let e = first_error("[upstream]\nendpoints = []\n");
        assert_eq!(
            e,
            "w.toml:2: upstream.endpoints: is empty: list at least one host:port"
        );
        let e = first_error(
            "[upstream]\nendpoints = [\"a:1\"]\n[signals.latency_p99]\nwarn = \"2s\"\ncritical = \"1s\"\n",
        );
        assert!(
            e.starts_with("w.toml:4: signals.latency_p99.warn: warn (2000) must be below critical"),
            "{e}"
        );
    }

    #[test]
    fn features_and_routes_are_checked() {
        let text = "[[feature]]\nname = \"login\"\npriority = \"critical\"\n\n[[feature]]\nname = \"login\"\npriority = \"urgent\"\n\n[[route]]\nfeature = \"nope\"\n\n[[route]]\nfeature = \"login\"\npath_regex = \"([\"\n";
        let errs: Vec<String> = match load_str("w.toml", text) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        };
        assert!(
            errs.iter()
                .any(|e| e.starts_with("w.toml:6: feature[1].name: duplicate feature")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e
                    .starts_with("w.toml:7: feature[1].priority: \"urgent\" is not a priority")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("w.toml:10: route[0].feature:")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("w.toml:14: route[1].path_regex: invalid regex")),
            "{errs:?}"
        );
    }

    #[test]
    fn an_empty_file_is_refused_for_want_of_an_upstream() {
        let e = first_error("");
        assert!(e.contains("upstream.endpoints: is required"), "{e}");
    }

    #[test]
    fn defaults_are_valid() {
        let c = load_str("w.toml", "[upstream]\nendpoints = [\"127.0.0.1:9000\"]\n")
            .map_err(|e| format!("{e:?}"));
        let c = c.as_ref().map(|c| (c.listen.to_string(), c.features.len()));
        assert_eq!(c, Ok(("127.0.0.1:8080".to_string(), 1)));
    }
}
