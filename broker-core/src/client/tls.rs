//! TLS for `wss://` and `https://` brokers: rustls with the ring provider.
//!
//! Trusted roots are the operating system's store, Mozilla's bundled roots (so a machine with
//! an empty store still works), and the PEM certificates of `CLAUDEMESH_CA_FILE` when it is set
//! (a private CA, or a self-signed broker). Certificates are always verified; there is no switch
//! to turn that off.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use rustls::{ClientConfig, RootCertStore};

/// Names a PEM file of extra certificates to trust.
pub const CA_FILE_ENV: &str = "CLAUDEMESH_CA_FILE";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{CA_FILE_ENV}={path}: {message}")]
    CaFile { path: String, message: String },
    #[error("TLS set-up failed: {0}")]
    Setup(String),
}

/// The client configuration every TLS connection to a broker uses, built once per process.
pub fn client_config() -> Result<Arc<ClientConfig>, TlsError> {
    static BUILT: Mutex<Option<Arc<ClientConfig>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(config) = built.as_ref() {
        return Ok(config.clone());
    }
    let extra = std::env::var_os(CA_FILE_ENV).filter(|path| !path.is_empty());
    let config = Arc::new(build(extra.as_deref().map(Path::new))?);
    *built = Some(config.clone());
    Ok(config)
}

fn build(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    // Unreadable entries of the OS store are skipped: the bundled roots still stand.
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let ca_error = |message: String| TlsError::CaFile { path: path.display().to_string(), message };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| ca_error(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ca_error(e.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in the file".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| ca_error(e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("missing.pem");
        let error = build(Some(&missing)).expect_err("missing file");
        assert!(error.to_string().contains("missing.pem"), "{error}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let error = build(Some(&empty)).expect_err("no certificate");
        assert!(error.to_string().contains("no PEM certificate"), "{error}");

        assert!(build(None).is_ok(), "the bundled roots alone make a configuration");
    }
}
