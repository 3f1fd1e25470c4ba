//! The upstream connector: hyper-util's TCP connector behind a cap on new connections per
//! second. Without it, clients that open and reset requests faster than connections complete
//! make the pool open a connection for each (the connect goes on after its request is gone);
//! with it, a request waits for a connection slot, and meanwhile takes any pooled connection
//! that frees up first.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::num::NonZeroU32;

use crate::tls::{TlsUpstream, UpstreamIo};

/// The TCP connector with a connection-rate cap, and TLS over it when configured.
#[derive(Clone)]
pub struct Paced {
    inner: HttpConnector,
    pace: Arc<DefaultDirectRateLimiter>,
    tls: Option<TlsUpstream>,
}

impl Paced {
    /// `per_second` new connections a second, in bursts of as many.
    pub fn new(inner: HttpConnector, per_second: NonZeroU32, tls: Option<TlsUpstream>) -> Self {
        Self {
            inner,
            pace: Arc::new(RateLimiter::direct(Quota::per_second(per_second))),
            tls,
        }
    }
}

impl Paced {
    /// Waits for a turn under the connection-rate cap (the HTTP/1.1 path of our own connects
    /// by itself, under the same cap).
    pub async fn turn(&self) {
        while let Err(not_yet) = self.pace.check() {
            let wait = not_yet.wait_time_from(DefaultClock::default().now());
            tokio::time::sleep(wait).await;
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<UpstreamIo, BoxError>> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Paced {
    type Response = UpstreamIo;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Connecting {
        let mut inner = self.inner.clone();
        let pace = Arc::clone(&self.pace);
        let tls = self.tls.clone();
        Box::pin(async move {
            while let Err(not_yet) = pace.check() {
                let wait = not_yet.wait_time_from(DefaultClock::default().now());
                tokio::time::sleep(wait).await;
            }
            let host = dst
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_string();
            let tcp = inner.call(dst).await?;
            let Some(tls) = tls else {
                return Ok(UpstreamIo::Plain(tcp));
            };
            let name = match &tls.server_name {
                Some(n) => n.clone(),
                None => ServerName::try_from(host)?,
            };
            let stream = tls.connector.connect(name, tcp.into_inner()).await?;
            Ok(UpstreamIo::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}
