//! Access follows provenance: with `client_access` rules, a client limited to some
//! registries gets a digest only when one of them served or confirmed it. Fills and fetches
//! record their registry; anything else is confirmed with a HEAD under the requested name.

use super::{PullThrough, Source};
use crate::cache::provenance::ContentKind;
use crate::error::FerryError;
use crate::oci::{Digest, ErrorCode, RepositoryName};
use crate::shared::StoreRead;
use crate::upstream::Route;
use http::header::ACCEPT;
use http::{HeaderMap, HeaderValue, Method};

impl PullThrough {
    /// Lets a request for `digest` under `registry`/`name` through when one of `allowed`
    /// vouched for it (this cache's record, then the shared store's), else when `registry`
    /// confirms it now. A digest the registry does not have is unknown to this client, as
    /// if nothing were cached.
    pub(crate) async fn confirm_provenance(
        &self,
        registry: &str,
        name: &RepositoryName,
        kind: ContentKind,
        digest: &Digest,
        allowed: &[String],
    ) -> Result<(), FerryError> {
        if self.cache.vouched_by_any(kind, digest, allowed).await {
            return Ok(());
        }
        if let Some(shared) = &self.shared {
            let marker = shared.provenance_path(kind, digest, registry);
            if let StoreRead::Found(()) = shared.exists(&marker).await {
                self.note_provenance(kind, digest, registry, false).await;
                return Ok(());
            }
        }
        let unknown = || {
            let (code, what) = match kind {
                ContentKind::Blob => (ErrorCode::BlobUnknown, "blob"),
                ContentKind::Manifest => (ErrorCode::ManifestUnknown, "manifest"),
            };
            FerryError::client(
                code,
                format!("{what} {digest} is not known to registry {registry} under {name}"),
            )
        };
        if self.settings.offline {
            return Err(unknown());
        }
        let suffix = match kind {
            ContentKind::Blob => format!("blobs/{digest}"),
            ContentKind::Manifest => format!("manifests/{digest}"),
        };
        let mut headers = HeaderMap::new();
        if kind == ContentKind::Manifest {
            let all = crate::oci::media_type::AcceptList::from_types::<&str>(&[]);
            if let Ok(value) = HeaderValue::from_str(&all.upstream_header_value()) {
                headers.insert(ACCEPT, value);
            }
        }
        let confirmed = self
            .upstreams_for(registry)?
            .first_success(Route::Digest(digest), |client| {
                let suffix = suffix.clone();
                let headers = headers.clone();
                async move {
                    client
                        .send(Method::HEAD, name, &suffix, None, headers)
                        .await?;
                    Ok(())
                }
            })
            .await;
        match confirmed {
            Ok(()) => {
                self.metrics.provenance_confirmations.inc();
                self.note_provenance(kind, digest, registry, true).await;
                Ok(())
            }
            Err(exhausted) if exhausted.all_not_found() => {
                self.metrics.provenance_refusals.inc();
                Err(unknown())
            }
            Err(exhausted) => Err(FerryError::Upstreams(exhausted)),
        }
    }

    /// Records that `registry` served `digest` (from an upstream, not the shared store),
    /// when access rules make provenance matter.
    pub(crate) async fn served_by(
        &self,
        kind: ContentKind,
        digest: &Digest,
        registry: &str,
        source: &Source,
    ) {
        if !self.settings.track_provenance {
            return;
        }
        if matches!(source, Source::SharedStore) {
            return;
        }
        self.note_provenance(kind, digest, registry, true).await;
    }

    async fn note_provenance(
        &self,
        kind: ContentKind,
        digest: &Digest,
        registry: &str,
        share: bool,
    ) {
        match self.cache.record_provenance(kind, digest, registry).await {
            Ok(true) if share => {
                if let Some(shared) = &self.shared {
                    shared.upload_small_later(
                        shared.provenance_path(kind, digest, registry),
                        bytes::Bytes::new(),
                        None,
                    );
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(%digest, %registry, error = %e, "cache failure: could not record which registry served a digest; it will be confirmed again");
            }
        }
    }
}
