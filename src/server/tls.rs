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

fn build(cert_file: &Path, key_file: &Path) -> Result<ServerConfig, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| format!("cannot read {}: {e}", cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| format!("{}: {e}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not form a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

impl ReloadingTls {
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<ReloadingTls, String> {
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
