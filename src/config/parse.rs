//! Small value parsers shared by validation: durations, addresses, fractions.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::uri::Authority;

use super::error::{bad, KeyError};

/// Parses `250ms`, `10s`, `2m`, `1h` (a bare number is seconds).
pub fn duration(key: &str, s: &str) -> Result<Duration, KeyError> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| {
        bad(
            key,
            format!("{s:?} is not a duration (try \"250ms\", \"10s\", \"2m\")"),
        )
    })?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(bad(
                key,
                format!("unknown duration unit {other:?} in {s:?} (use ms, s, m or h)"),
            ))
        }
    };
    if !secs.is_finite() || secs > 1e9 {
        return Err(bad(key, format!("{s:?} is out of range")));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// An optional duration with a default.
pub fn duration_or(key: &str, s: &Option<String>, default: Duration) -> Result<Duration, KeyError> {
    s.as_deref().map_or(Ok(default), |s| duration(key, s))
}

/// A network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`) or a single address.
pub fn cidr(key: &str, s: &str) -> Result<ipnet::IpNet, KeyError> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| {
            bad(
                key,
                format!("{s:?} is not an address or a CIDR network (e.g. \"10.0.0.0/8\")"),
            )
        })
}

/// A socket address to listen on, `ip:port`.
pub fn listen_addr(key: &str, s: &str) -> Result<SocketAddr, KeyError> {
    s.parse()
        .map_err(|_| bad(key, format!("{s:?} is not an ip:port address to listen on")))
}

/// An upstream `host:port` (host may be a name, IPv4, or `[IPv6]`).
pub fn host_port(key: &str, s: &str) -> Result<Authority, KeyError> {
    if let Some((scheme, rest)) = s.split_once("://") {
        let rest = rest.trim_end_matches('/');
        return Err(bad(
            key,
            format!("{s:?} is not a host:port: drop the scheme: {rest:?} ({scheme} is set by upstream.protocol and upstream.tls)"),
        ));
    }
    let err = || bad(key, format!("{s:?} is not a host:port"));
    let (host, port) = s.rsplit_once(':').ok_or_else(err)?;
    let port: u16 = port.parse().map_err(|_| err())?;
    if host.is_empty() || port == 0 || s.contains(['/', '@', '?', '#', ' ']) {
        return Err(err());
    }
    s.parse::<Authority>().map_err(|_| err())
}

/// A header name.
pub fn header_name(key: &str, s: &str) -> Result<HeaderName, KeyError> {
    HeaderName::from_bytes(s.as_bytes())
        .map_err(|_| bad(key, format!("{s:?} is not a header name")))
}

/// A header value.
pub fn header_value(key: &str, s: &str) -> Result<HeaderValue, KeyError> {
    HeaderValue::from_str(s).map_err(|_| bad(key, format!("{s:?} is not a header value")))
}

/// A number in `0.0..=1.0`.
pub fn fraction(key: &str, v: f64) -> Result<f64, KeyError> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(bad(key, format!("{v} must be between 0.0 and 1.0")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(
            duration("k", "250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(duration("k", "10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(duration("k", "2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(duration("k", "3").ok(), Some(Duration::from_secs(3)));
        assert!(duration("k", "ten").is_err());
        assert!(duration("k", "5 parsecs").is_err());
    }

    #[test]
    fn host_ports() {
        assert!(host_port("k", "127.0.0.1:9000").is_ok());
        assert!(host_port("k", "backend.internal:80").is_ok());
        assert!(host_port("k", "[::1]:9000").is_ok());
        for bad_one in [
            "localhost:",
            ":80",
            "host",
            "host:0",
            "host:99999",
            "a/b:80",
        ] {
            assert!(host_port("k", bad_one).is_err(), "{bad_one}");
        }
    }
}
