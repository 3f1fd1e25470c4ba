//! Return tickets on the request path: read the one a request presents, stamp one on a reject.

use http::header::{HeaderName, HeaderValue, SET_COOKIE};
use http::HeaderMap;

use crate::clock::Clock;
use crate::config::TicketConfig;
use crate::metrics::Metrics;
use crate::ticket::{self, Ring, Verdict};

static HEADER: HeaderName = HeaderName::from_static(ticket::HEADER);

/// The key ring and how tickets travel, compiled at load (a reload rotates the keys).
#[derive(Debug)]
pub struct Tickets {
    ring: Ring,
    ttl_ms: u64,
    cookie: Option<String>,
    /// `; Secure` on the cookie when the listener speaks TLS.
    secure: bool,
}

impl Tickets {
    pub fn new(cfg: &TicketConfig, secure: bool) -> Self {
        Self {
            ring: Ring::new(&cfg.keys),
            ttl_ms: cfg.ttl.as_millis() as u64,
            cookie: cfg.cookie.clone(),
            secure,
        }
    }

    /// The first arrival (on the process clock) that a ticket presented with the request
    /// vouches for, or 0 for none. A ticket that is not valid for this client and feature is
    /// counted and otherwise ignored: the request is a new arrival.
    pub fn recall<H: crate::fields::Fields + ?Sized>(
        &self,
        headers: &H,
        feature: u64,
        client: u64,
        now_ms: u64,
        metrics: &Metrics,
    ) -> u64 {
        let Some(text) = ticket::presented(headers, self.cookie.as_deref()) else {
            return 0;
        };
        let unix = ticket::unix_ms();
        let verdict = self.ring.verify(text, unix, feature, client);
        if let Some(c) = metrics.tickets_seen.get(verdict.index()) {
            c.inc();
        }
        match verdict {
            Verdict::Valid(first) => Clock::ago(now_ms, unix.saturating_sub(first)),
            _ => 0,
        }
    }

    /// Adds a ticket for `client` on `feature`, first arrived at `first_ms` (process clock),
    /// to a reject's headers.
    pub fn stamp(
        &self,
        h: &mut HeaderMap,
        at: (u64, u64),
        feature: u64,
        client: u64,
        metrics: &Metrics,
    ) {
        let (text, cookie) = self.issue(at, feature, client, metrics);
        let Ok(v) = HeaderValue::from_str(&text) else {
            return;
        };
        if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
            h.append(SET_COOKIE, c);
        }
        h.insert(&HEADER, v);
    }

    /// A ticket for `client` on `feature`, first arrived at `first_ms` (process clock): the
    /// header's value, and the `Set-Cookie` value when cookies are on.
    pub fn issue(
        &self,
        (first_ms, now_ms): (u64, u64),
        feature: u64,
        client: u64,
        metrics: &Metrics,
    ) -> (String, Option<String>) {
        let unix = ticket::unix_ms();
        let first = unix.saturating_sub(now_ms.saturating_sub(first_ms));
        let text = self.ring.issue(first, unix + self.ttl_ms, feature, client);
        let cookie = self.cookie.as_ref().map(|name| {
            format!(
                "{name}={text}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax{}",
                self.ttl_ms / 1000,
                if self.secure { "; Secure" } else { "" }
            )
        });
        metrics.tickets_issued.inc();
        (text, cookie)
    }
}
