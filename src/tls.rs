//! TLS material from PEM files, with rustls: the listener's certificate chain and private key (`[server] tls_cert`,
//! `tls_key`) read into a `CertifiedKey` whose key is checked against its certificate, the slot the listener reads
//! it from for each handshake (swapped by a reload, so new connections get the new certificate and open ones keep
//! theirs), the listener's rustls configuration (HTTP/1.1 by ALPN), and the extra CA certificates a registry's or
//! mirror's HTTPS is verified with (`[registry] ca_certs`, each checked as a trust anchor). It reads files and
//! knows nothing of the configuration's layout, HTTP routes or registries.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The crypto provider (aws-lc-rs, the one reqwest already links), named explicitly: rustls cannot pick a process
/// default when more than one provider is compiled in.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Why a certificate and key pair was refused, by the file at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("{0}")]
    Cert(String),
    #[error("{0}")]
    Key(String),
}

/// Reads a PEM certificate chain (end-entity first) and its PEM private key (PKCS#8, PKCS#1 or SEC1), and checks
/// that the key is the certificate's.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, IdentityError> {
    let cert_pem = read(cert).map_err(IdentityError::Cert)?;
    let key_pem = read(key).map_err(IdentityError::Key)?;
    identity_from_pem(&cert_pem, &key_pem, cert, key)
}

fn identity_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, IdentityError> {
    let chain = certificates(cert_pem)
        .map_err(|e| IdentityError::Cert(format!("{}: {e}", cert.display())))?;
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
        IdentityError::Key(format!(
            "{}: no PEM private key (PKCS#8, RSA or EC) in it: {e}",
            key.display()
        ))
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| IdentityError::Key(format!("{}: {e}", key.display())))?;
    let certified = CertifiedKey::new(chain, signing);
    // A certificate the parser cannot read is the certificate's fault; a key of another pair is the key's.
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(Arc::new(certified))
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(IdentityError::Key(format!(
                "{}: this private key does not belong to the certificate in {}",
                key.display(),
                cert.display()
            )))
        }
        Err(e) => Err(IdentityError::Cert(format!(
            "{}: not a valid certificate: {e}",
            cert.display()
        ))),
    }
}

/// Reads a PEM file of CA certificates (one or more) and returns them DER-encoded, each checked as a trust anchor.
pub fn load_roots(path: &Path) -> Result<Vec<Vec<u8>>, String> {
    let pem = read(path)?;
    let certs = certificates(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut store = rustls::RootCertStore::empty();
    for (i, c) in certs.iter().enumerate() {
        store.add(c.clone()).map_err(|e| {
            format!(
                "{}: certificate {} is not a usable CA certificate: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Every `CERTIFICATE` section of a PEM text; none, or a malformed one, is an error.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (\"-----BEGIN CERTIFICATE-----\") in it".into());
    }
    Ok(certs)
}

/// The certificate the listener presents, read at each handshake; [`CertSlot::set`] swaps it.
#[derive(Debug)]
pub struct CertSlot(arc_swap::ArcSwap<CertifiedKey>);

impl CertSlot {
    pub fn new(key: Arc<CertifiedKey>) -> CertSlot {
        CertSlot(arc_swap::ArcSwap::new(key))
    }

    pub fn set(&self, key: Arc<CertifiedKey>) {
        self.0.store(key);
    }

    pub fn get(&self) -> Arc<CertifiedKey> {
        self.0.load_full()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get())
    }
}

/// The listener's TLS: rustls's safe defaults (TLS 1.2 and 1.3), no client certificates, ALPN `http/1.1` (the
/// only protocol served), the certificate from `slot`.
pub fn acceptor(slot: Arc<CertSlot>) -> Result<tokio_rustls::TlsAcceptor, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(slot);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // A self-signed EC certificate for "localhost" and its key, and an unrelated key (made with openssl for these
    // tests; never used outside them).
    const CERT: &str = include_str!("../tests/fixtures/tls/test-cert.pem");
    const KEY: &str = include_str!("../tests/fixtures/tls/test-key.pem");
    const OTHER_KEY: &str = include_str!("../tests/fixtures/tls/test-other-key.pem");

    fn pair(cert: &str, key: &str) -> Result<Arc<CertifiedKey>, IdentityError> {
        identity_from_pem(
            cert.as_bytes(),
            key.as_bytes(),
            Path::new("c.pem"),
            Path::new("k.pem"),
        )
    }

    #[test]
    fn a_matching_pair_loads_and_a_foreign_key_is_the_keys_fault() {
        let key = pair(CERT, KEY).expect("the pair matches");
        assert_eq!(key.cert.len(), 1);
        let e = pair(CERT, OTHER_KEY).unwrap_err();
        assert!(
            matches!(&e, IdentityError::Key(m) if m.contains("does not belong to the certificate in c.pem")),
            "{e:?}"
        );
    }

    #[test]
    fn files_without_their_pem_sections_are_refused_by_file() {
        assert!(
            matches!(pair(KEY, KEY), Err(IdentityError::Cert(m)) if m.contains("c.pem: no PEM certificate"))
        );
        assert!(
            matches!(pair(CERT, CERT), Err(IdentityError::Key(m)) if m.contains("k.pem: no PEM private key"))
        );
        let broken = CERT.replace("MII", "M!I");
        assert!(matches!(pair(&broken, KEY), Err(IdentityError::Cert(_))));
    }

    #[test]
    fn ca_files_give_every_certificate_and_refuse_what_is_not_one() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, format!("{CERT}\n{CERT}")).unwrap();
        assert_eq!(load_roots(&bundle).unwrap().len(), 2);
        let key_only = dir.path().join("key.pem");
        std::fs::write(&key_only, KEY).unwrap();
        let e = load_roots(&key_only).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let e = load_roots(&dir.path().join("missing.pem")).unwrap_err();
        assert!(e.starts_with("cannot read "), "{e}");
    }

    #[test]
    fn the_slot_serves_what_was_set_last() {
        let first = pair(CERT, KEY).unwrap();
        let slot = CertSlot::new(first.clone());
        assert!(Arc::ptr_eq(&slot.get(), &first));
        let second = pair(CERT, KEY).unwrap();
        slot.set(second.clone());
        assert!(Arc::ptr_eq(&slot.get(), &second));
        assert!(acceptor(Arc::new(slot)).is_ok());
    }
}
