//! The pooled upstream client (hyper-util's keep-alive pool, one per process), opening at most
//! `upstream.connect_rate` new connections a second.

use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::connector::Paced;
use crate::config::UpstreamConfig;

/// The client type used to forward requests.
pub type UpstreamClient = Client<Paced, crate::proxy::request_body::ClientBody>;

/// Builds the pooled client: connect timeout, TCP_NODELAY, idle pool limits, h1 or h2c.
pub fn build(cfg: &UpstreamConfig) -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(cfg.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_max_idle_per_host(cfg.pool_max_idle_per_endpoint)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .set_host(false);
    if cfg.h2c {
        b.http2_only(true);
    }
    b.build(Paced::new(connector, cfg.connect_rate, cfg.tls.clone()))
}
