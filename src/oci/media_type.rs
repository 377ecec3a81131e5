//! Manifest media types: merging clients' `Accept` headers (skopeo sends several lines),
//! deciding whether a cached manifest satisfies them, and reading a manifest's own type.

use http::HeaderMap;
use http::header::ACCEPT;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// What ferry asks upstreams for when a client sends no `Accept` at all.
pub const ALL_MANIFEST_TYPES: [&str; 4] = [
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
];

/// The media types a client accepts, merged from every `Accept` header line, in order,
/// without parameters or duplicates. Empty means "anything".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptList {
    types: Vec<String>,
}

impl AcceptList {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut types: Vec<String> = Vec::new();
        for value in headers.get_all(ACCEPT) {
            let Ok(value) = value.to_str() else { continue };
            for item in value.split(',') {
                let media_type = item
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                if !media_type.is_empty() && !types.contains(&media_type) {
                    types.push(media_type);
                }
            }
        }
        AcceptList { types }
    }

    pub fn from_types<S: AsRef<str>>(types: &[S]) -> Self {
        AcceptList {
            types: types.iter().map(|t| t.as_ref().to_owned()).collect(),
        }
    }

    /// Whether a manifest of `media_type` may be given to this client.
    pub fn accepts(&self, media_type: &str) -> bool {
        self.types.is_empty()
            || self
                .types
                .iter()
                .any(|t| t == "*/*" || t == "application/*" || t.eq_ignore_ascii_case(media_type))
    }

    /// The `Accept` value to send upstream: the client's own list, or every manifest
    /// type ferry understands when the client named none.
    pub fn upstream_header_value(&self) -> String {
        if self.types.is_empty() {
            ALL_MANIFEST_TYPES.join(", ")
        } else {
            self.types.join(", ")
        }
    }

    pub fn types(&self) -> &[String] {
        &self.types
    }
}

/// A manifest's media type from its own `mediaType` field, or inferred from its shape
/// (OCI allows the field to be absent).
pub fn detect_manifest_media_type(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    if let Some(media_type) = object.get("mediaType").and_then(|m| m.as_str()) {
        return Some(media_type.to_owned());
    }
    if object.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
        return Some(DOCKER_MANIFEST_V1_SIGNED.to_owned());
    }
    if object.contains_key("manifests") {
        return Some(OCI_INDEX.to_owned());
    }
    if object.contains_key("config") || object.contains_key("layers") {
        return Some(OCI_MANIFEST.to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn merges_several_accept_lines_like_skopeo() {
        let mut headers = HeaderMap::new();
        for t in [
            OCI_MANIFEST,
            DOCKER_MANIFEST_V2,
            DOCKER_MANIFEST_LIST,
            OCI_INDEX,
        ] {
            headers.append(ACCEPT, HeaderValue::from_static(t));
        }
        headers.append(
            ACCEPT,
            HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json; q=0.5, */*"),
        );
        let accept = AcceptList::from_headers(&headers);
        assert_eq!(accept.types().len(), 5);
        assert!(accept.accepts("anything/at-all"));
        assert!(accept.upstream_header_value().starts_with(OCI_MANIFEST));
    }

    #[test]
    fn narrow_accept_rejects_other_types() {
        let accept = AcceptList::from_types(&[DOCKER_MANIFEST_V2]);
        assert!(accept.accepts(DOCKER_MANIFEST_V2));
        assert!(!accept.accepts(OCI_INDEX));
        let none = AcceptList::default();
        assert!(none.accepts(OCI_INDEX));
        assert!(none.upstream_header_value().contains(DOCKER_MANIFEST_LIST));
    }

    #[test]
    fn detects_media_types() {
        assert_eq!(
            detect_manifest_media_type(br#"{"schemaVersion":2,"mediaType":"x/y"}"#).as_deref(),
            Some("x/y")
        );
        assert_eq!(
            detect_manifest_media_type(br#"{"schemaVersion":2,"manifests":[]}"#).as_deref(),
            Some(OCI_INDEX)
        );
        assert_eq!(
            detect_manifest_media_type(br#"{"schemaVersion":2,"config":{},"layers":[]}"#)
                .as_deref(),
            Some(OCI_MANIFEST)
        );
        assert_eq!(detect_manifest_media_type(b"not json"), None);
    }
}
