//! TLS termination: certificates and keys read from PEM files at load and reload, picked per
//! handshake by SNI (exact name, then a one-label wildcard, then the first certificate), ALPN
//! `h2` and `http/1.1` on one port, TLS 1.2 and 1.3 only, ring as the crypto provider.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::ring;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::error::{bad, KeyError};

/// One certificate chain and its key, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The listener's TLS settings: the files, and the rustls config built from them.
#[derive(Debug, Clone)]
pub struct TlsServer {
    pub files: Vec<CertFiles>,
    /// Per certificate, the DNS names it serves (from its subject alternative names).
    pub names: Vec<Vec<String>>,
    pub config: Arc<rustls::ServerConfig>,
}

/// Picks a certificate by the client's SNI name.
#[derive(Debug)]
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni else {
            return Arc::clone(&self.default);
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = self.by_name.get(&name) {
            return Arc::clone(k);
        }
        // A wildcard covers exactly one label (RFC 6125 §6.4.3).
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.by_name.get(&format!("*.{parent}")) {
                return Arc::clone(k);
            }
        }
        Arc::clone(&self.default)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

fn read_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, KeyError> {
    let shown = path.display();
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(key, format!("cannot read {shown}: {}", pem_error(&e))))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(key, format!("{shown}: {}", pem_error(&e))))?;
    if certs.is_empty() {
        return Err(bad(key, format!("{shown} holds no PEM certificate")));
    }
    Ok(certs)
}

fn read_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, KeyError> {
    let shown = path.display();
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => bad(
            key,
            format!("{shown} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"),
        ),
        e => bad(key, format!("cannot read {shown}: {}", pem_error(&e))),
    })
}

fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// Reads one `{ cert, key }` entry: the chain, its key (checked to match), and its DNS names.
fn read_entry(
    f: &CertFiles,
    i: usize,
    prefix: &str,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(Arc<CertifiedKey>, Vec<String>), KeyError> {
    let cert_key = format!("{prefix}[{i}].cert");
    let key_key = format!("{prefix}[{i}].key");
    let chain = read_certs(&cert_key, &f.cert)?;
    let key = read_key(&key_key, &f.key)?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(&key_key, format!("unusable private key: {e}")))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        bad(
            &key_key,
            format!(
                "does not belong to the certificate in {}: {e}",
                f.cert.display()
            ),
        )
    })?;
    let end = ck
        .end_entity_cert()
        .map_err(|e| bad(&cert_key, e.to_string()))?;
    let parsed = webpki::EndEntityCert::try_from(end)
        .map_err(|e| bad(&cert_key, format!("cannot parse the certificate: {e}")))?;
    let names = parsed
        .valid_dns_names()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    Ok((Arc::new(ck), names))
}

/// The resolver over loaded entries: the first certificate to name a host serves it, and the
/// first certificate is the default.
fn resolver(entries: &[(Arc<CertifiedKey>, Vec<String>)]) -> Option<SniResolver> {
    let default = Arc::clone(&entries.first()?.0);
    let mut by_name = HashMap::new();
    for (ck, names) in entries {
        for n in names {
            by_name.entry(n.clone()).or_insert_with(|| Arc::clone(ck));
        }
    }
    Some(SniResolver { by_name, default })
}

/// Reads every certificate and key and builds the listener's rustls config. `prefix` is the
/// config key of the list (`tls.certificates`), used to name the entry at fault.
pub fn load(files: &[CertFiles], prefix: &str) -> Result<TlsServer, KeyError> {
    let provider = Arc::new(ring::default_provider());
    let entries = files
        .iter()
        .enumerate()
        .map(|(i, f)| read_entry(f, i, prefix, &provider))
        .collect::<Result<Vec<_>, _>>()?;
    let Some(resolver) = resolver(&entries) else {
        return Err(bad(prefix, "needs at least one { cert, key } entry"));
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| bad(prefix, e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsServer {
        files: files.to_vec(),
        names: entries.into_iter().map(|(_, n)| n).collect(),
        config: Arc::new(config),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn write_cert(dir: &Path, stem: &str, names: &[&str]) -> CertFiles {
        let c = rcgen::generate_simple_self_signed(
            names.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
        CertFiles { cert, key }
    }

    #[test]
    fn picks_by_exact_name_then_wildcard_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_cert(dir.path(), "a", &["a.example"]);
        let b = write_cert(dir.path(), "b", &["*.b.example", "b.example"]);
        let t = load(&[a.clone(), b.clone()], "tls.certificates").unwrap();
        assert_eq!(
            t.names,
            [vec!["a.example"], vec!["*.b.example", "b.example"]]
        );
        let provider = ring::default_provider();
        let entries = [
            read_entry(&a, 0, "t", &provider).unwrap(),
            read_entry(&b, 1, "t", &provider).unwrap(),
        ];
        let r = resolver(&entries).unwrap();
        let leaf = |k: Arc<CertifiedKey>| k.cert[0].clone();
        let (ca, cb) = (
            leaf(Arc::clone(&entries[0].0)),
            leaf(Arc::clone(&entries[1].0)),
        );
        assert_eq!(leaf(r.pick(Some("a.example"))), ca);
        assert_eq!(leaf(r.pick(Some("x.b.example"))), cb);
        assert_eq!(leaf(r.pick(Some("X.B.Example"))), cb);
        // A wildcard covers one label only; unknown names get the first certificate.
        assert_eq!(leaf(r.pick(Some("y.x.b.example"))), ca);
        assert_eq!(leaf(r.pick(None)), ca);
    }

    #[test]
    fn bad_files_name_the_entry_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let a = write_cert(dir.path(), "a", &["a.example"]);
        let b = write_cert(dir.path(), "b", &["b.example"]);
        let err = |files: &[CertFiles]| load(files, "tls.certificates").unwrap_err();

        let missing = CertFiles {
            cert: dir.path().join("nope.pem"),
            key: a.key.clone(),
        };
        let e = err(&[a.clone(), missing]);
        assert_eq!(e.key, "tls.certificates[1].cert");
        assert!(e.message.contains("cannot read"), "{}", e.message);

        let swapped = CertFiles {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let e = err(&[swapped]);
        assert_eq!(e.key, "tls.certificates[0].key");
        assert!(e.message.contains("does not belong"), "{}", e.message);

        let key_as_cert = CertFiles {
            cert: a.key.clone(),
            key: a.key.clone(),
        };
        let e = err(&[key_as_cert]);
        assert!(e.message.contains("no PEM certificate"), "{}", e.message);

        let e = err(&[]);
        assert_eq!(e.key, "tls.certificates");
    }
}
