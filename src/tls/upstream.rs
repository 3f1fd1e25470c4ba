//! TLS to the upstream: a client config trusting a CA bundle (PEM), the name to send as SNI and
//! check in the backend's certificate, and the connection type the pool holds (plain TCP or
//! TLS over it).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::config::error::{bad, KeyError};

/// How warmgate speaks TLS to its upstream.
#[derive(Clone)]
pub struct TlsUpstream {
    /// The CA bundle file, as configured.
    pub ca: std::path::PathBuf,
    /// Sent as SNI and checked against the backend's certificate; `None`: each endpoint's host.
    pub server_name: Option<ServerName<'static>>,
    pub connector: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for TlsUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsUpstream")
            .field("ca", &self.ca)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Reads the CA bundle and builds the client config (TLS 1.2+, ring; ALPN `h2` when the
/// upstream speaks HTTP/2, else `http/1.1`).
pub fn load(
    ca: &Path,
    server_name: Option<&str>,
    h2: bool,
    prefix: &str,
) -> Result<TlsUpstream, KeyError> {
    let ca_key = format!("{prefix}.ca");
    let mut roots = rustls::RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
        .map_err(|e| bad(&ca_key, format!("cannot read {}: {e:?}", ca.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&ca_key, format!("{}: not valid PEM ({e:?})", ca.display())))?;
    if certs.is_empty() {
        return Err(bad(
            &ca_key,
            format!("{} holds no PEM certificate", ca.display()),
        ));
    }
    for c in certs {
        roots.add(c).map_err(|e| {
            bad(
                &ca_key,
                format!("{}: unusable CA certificate: {e}", ca.display()),
            )
        })?;
    }
    let server_name = server_name
        .map(|n| {
            ServerName::try_from(n.to_string()).map_err(|_| {
                bad(
                    format!("{prefix}.server_name"),
                    format!("{n:?} is not a DNS name or IP address"),
                )
            })
        })
        .transpose()?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .map_err(|e| bad(prefix, e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![if h2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok(TlsUpstream {
        ca: ca.to_path_buf(),
        server_name,
        connector: tokio_rustls::TlsConnector::from(Arc::new(cfg)),
    })
}

/// A pooled upstream connection.
pub enum UpstreamIo {
    Plain(TokioIo<TcpStream>),
    /// Boxed: a TLS session is large, a plain connection small.
    Tls(Box<TokioIo<TlsStream<TcpStream>>>),
}

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        match self {
            UpstreamIo::Plain(s) => s.connected(),
            UpstreamIo::Tls(s) => {
                let (tcp, tls) = s.inner().get_ref();
                let c = tcp.connected();
                if tls.alpn_protocol() == Some(b"h2") {
                    c.negotiated_h2()
                } else {
                    c
                }
            }
        }
    }
}

impl Read for UpstreamIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl Write for UpstreamIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamIo::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_flush(cx),
            UpstreamIo::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamIo::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamIo::Plain(s) => s.is_write_vectored(),
            UpstreamIo::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamIo::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamIo::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }
}
