//! TLS for the registry listener with rustls: certificate and key from PEM files, HTTP/2 or
//! HTTP/1.1 by ALPN, and reloading without a restart when the files change (checked every
//! few seconds) or on SIGHUP. A reload that fails keeps the previous certificate.

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;
use tokio_rustls::TlsAcceptor;

pub struct ReloadingTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
    loaded_mtimes: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Why the listener's certificate and key could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{}: {cause}", .path.display())]
    Pem {
        path: std::path::PathBuf,
        #[source]
        cause: Arc<rustls_pki_types::pem::Error>,
    },
    #[error("{}: no certificate found", .0.display())]
    NoCertificate(std::path::PathBuf),
    /// rustls refused the pair (or its protocol versions).
    #[error("certificate and key do not form a usable pair: {0}")]
    Unusable(#[source] Arc<rustls::Error>),
}

fn build(cert_file: &Path, key_file: &Path) -> Result<ServerConfig, TlsError> {
    let pem = |path: &Path| {
        let path = path.to_path_buf();
        move |e| TlsError::Pem {
            path,
            cause: Arc::new(e),
        }
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(pem(cert_file))?
        .collect::<Result<_, _>>()
        .map_err(pem(cert_file))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(cert_file.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(pem(key_file))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let unusable = |e| TlsError::Unusable(Arc::new(e));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(unusable)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(unusable)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl ReloadingTls {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<ReloadingTls, TlsError> {
        let config = build(cert_file, key_file)?;
        Ok(ReloadingTls {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            current: RwLock::new(Arc::new(config)),
            loaded_mtimes: Mutex::new((mtime(cert_file), mtime(key_file))),
        })
    }

    /// An acceptor with the current certificate (new connections pick up reloads).
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        TlsAcceptor::from(config)
    }

    /// Reloads the files now. Returns whether the new certificate is in use.
    pub fn reload(&self) -> bool {
        let mtimes = (mtime(&self.cert_file), mtime(&self.key_file));
        match build(&self.cert_file, &self.key_file) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
                *self.loaded_mtimes.lock().unwrap_or_else(|p| p.into_inner()) = mtimes;
                tracing::info!(cert = %self.cert_file.display(), "TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; keeping the previous certificate");
                false
            }
        }
    }

    /// Reloads if either file's modification time changed since the last load.
    pub(crate) fn reload_if_changed(&self) {
        let now = (mtime(&self.cert_file), mtime(&self.key_file));
        let changed = *self.loaded_mtimes.lock().unwrap_or_else(|p| p.into_inner()) != now;
        if changed {
            self.reload();
        }
    }
}
