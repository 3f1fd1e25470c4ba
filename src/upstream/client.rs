//! The upstream client. HTTP/1.1 requests go through the per-endpoint [`IdlePool`] on
//! `hyper::client::conn`; h2c upstreams use hyper-util's pooled client (one multiplexed
//! connection per endpoint). Both open at most `upstream.connect_rate` new connections a second.

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::connector::Paced;
use crate::config::UpstreamConfig;

/// hyper-util's pooled client (h2c upstreams).
pub type LegacyClient = Client<Paced, super::request_body::ClientBody>;

/// What forwards requests: the connector for the HTTP/1.1 pools and, for h2c, the legacy client.
#[derive(Clone)]
pub struct UpstreamClient {
    pub connector: Paced,
    pub h2c: Option<LegacyClient>,
}

/// Builds the client: connect timeout, TCP_NODELAY, idle pool limits, h1 or h2c.
pub fn build(cfg: &UpstreamConfig) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cfg.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    let connector = Paced::new(connector, cfg.connect_rate, cfg.tls.clone());
    let h2c = cfg.h2c.then(|| {
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_endpoint)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .set_host(false)
            .http2_only(true);
        b.build(connector.clone())
    });
    UpstreamClient { connector, h2c }
}
