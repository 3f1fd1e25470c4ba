//! The tasks that keep each cluster's view of its backend fresh, off the request path: its
//! endpoints re-resolved from DNS, and its cache hit ratio read from a stats endpoint.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};

use super::Shared;
use crate::signals::scrape::parse;
use crate::upstream::dns::{is_name, refresh, Resolve};

/// Re-resolves every cluster's names on their refresh and swaps in the new endpoint sets.
pub async fn resolve_endpoints(shared: Arc<Shared>, resolver: Arc<dyn Resolve>) {
    // Per cluster name: when its names are next due.
    let mut due: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
    loop {
        let clusters = shared.snapshot.load().compiled.clusters.clone();
        for cluster in clusters {
            let cfg = &cluster.config;
            // TLS that checks each endpoint's own name needs that name on the connection: such
            // endpoints stay one per name, resolved by the connector on every new connection.
            let names_for_tls = cfg
                .upstream
                .tls
                .as_ref()
                .is_some_and(|t| t.server_name.is_none());
            if names_for_tls || !cfg.upstream.endpoints.iter().any(is_name) {
                continue;
            }
            let now = tokio::time::Instant::now();
            if due.get(&cfg.name).is_some_and(|at| *at > now) {
                continue;
            }
            due.insert(cfg.name.clone(), now + cfg.upstream.dns_refresh);
            refresh(
                cfg,
                &cluster.resolved,
                &cluster.endpoints,
                resolver.as_ref(),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads the configured stats endpoint every interval while one is configured (re-read from
/// the live config each round, so a reload can add, change or remove it).
pub async fn scrape_hit_ratio(shared: Arc<Shared>) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    // When each cluster's stats are next due, by cluster name.
    let mut due: std::collections::HashMap<String, tokio::time::Instant> = Default::default();
    loop {
        let clusters = shared.snapshot.load().compiled.clusters.clone();
        for cluster in clusters {
            let Some(cfg) = cluster.config.signals.scrape.clone() else {
                continue;
            };
            let now = tokio::time::Instant::now();
            if due.get(&cluster.config.name).is_some_and(|at| *at > now) {
                continue;
            }
            due.insert(cluster.config.name.clone(), now + cfg.interval);
            let fetch = async {
                let resp = client
                    .get(cfg.url.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("status {}", resp.status()));
                }
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                parse(&body, &cfg.format)
            };
            let name = &cluster.config.name;
            match tokio::time::timeout(cfg.interval.max(Duration::from_millis(100)), fetch).await {
                Ok(Ok(ratio)) => cluster.state.scraped.store(ratio, shared.clock.now_ms()),
                Ok(Err(e)) => {
                    tracing::warn!(cluster = %name, url = %cfg.url, error = %e, "hit-ratio scrape failed")
                }
                Err(_) => {
                    tracing::warn!(cluster = %name, url = %cfg.url, "hit-ratio scrape timed out")
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
