//! Manifest media types: merging clients' `Accept` headers (skopeo sends several lines),
//! deciding whether a cached manifest satisfies them, and reading a manifest's own type.

use http::HeaderMap;
use http::header::ACCEPT;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub(crate) const DOCKER_MANIFEST_V1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// What ferry asks upstreams for when a client sends no `Accept` at all.
pub(crate) const ALL_MANIFEST_TYPES: [&str; 4] = [
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST_V2,
];

/// The media types a client accepts, merged from every `Accept` header line, in order,
/// without parameters or duplicates. Empty means "anything".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AcceptList {
    types: Vec<String>,
}

impl AcceptList {
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
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

    pub(crate) fn from_types<S: AsRef<str>>(types: &[S]) -> Self {
        AcceptList {
            types: types.iter().map(|t| t.as_ref().to_owned()).collect(),
        }
    }

    /// Whether a manifest of `media_type` may be given to this client.
    pub(crate) fn accepts(&self, media_type: &str) -> bool {
        self.types.is_empty()
            || self
                .types
                .iter()
                .any(|t| t == "*/*" || t == "application/*" || t.eq_ignore_ascii_case(media_type))
    }

    /// The `Accept` value to send upstream: the client's own list, or every manifest
    /// type ferry understands when the client named none.
    pub(crate) fn upstream_header_value(&self) -> String {
        if self.types.is_empty() {
            ALL_MANIFEST_TYPES.join(", ")
        } else {
            self.types.join(", ")
        }
    }

    #[cfg(test)]
    fn types(&self) -> &[String] {
        &self.types
    }
}

/// Docker's unsigned schema 1 type (registries send it for schema 1 bodies without signatures).
pub(crate) const DOCKER_MANIFEST_V1: &str = "application/vnd.docker.distribution.manifest.v1+json";

/// What a manifest's JSON shows of its type, read without building a tree of the document
/// (the other fields are skipped, not kept).
#[derive(serde::Deserialize)]
struct ManifestShape {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    #[serde(rename = "schemaVersion")]
    schema_version: Option<u64>,
    manifests: Option<serde::de::IgnoredAny>,
    config: Option<serde::de::IgnoredAny>,
    layers: Option<serde::de::IgnoredAny>,
}

/// The families of manifests, each with the types that name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ManifestKind {
    Index,
    Image,
    SchemaOne,
}

impl ManifestKind {
    fn of_type(media_type: &str) -> Option<ManifestKind> {
        match media_type {
            OCI_INDEX | DOCKER_MANIFEST_LIST => Some(ManifestKind::Index),
            OCI_MANIFEST | DOCKER_MANIFEST_V2 => Some(ManifestKind::Image),
            DOCKER_MANIFEST_V1_SIGNED | DOCKER_MANIFEST_V1 => Some(ManifestKind::SchemaOne),
            _ => None,
        }
    }

    fn default_type(self) -> &'static str {
        match self {
            ManifestKind::Index => OCI_INDEX,
            ManifestKind::Image => OCI_MANIFEST,
            ManifestKind::SchemaOne => DOCKER_MANIFEST_V1_SIGNED,
        }
    }
}

impl ManifestShape {
    fn read(body: &[u8]) -> Option<ManifestShape> {
        serde_json::from_slice(body).ok()
    }

    /// The body's own `mediaType`, when it is usable as a header value.
    fn declared(&self) -> Option<&str> {
        self.media_type
            .as_deref()
            .filter(|t| is_media_type_token(t))
    }

    fn kind(&self) -> Option<ManifestKind> {
        if self.schema_version == Some(1) {
            Some(ManifestKind::SchemaOne)
        } else if self.manifests.is_some() {
            Some(ManifestKind::Index)
        } else if self.config.is_some() || self.layers.is_some() {
            Some(ManifestKind::Image)
        } else {
            None
        }
    }
}

/// `type/subtype` (with `+suffix`, `.`, `-`), short and printable: safe as a header value.
fn is_media_type_token(text: &str) -> bool {
    text.len() <= 255
        && text.split_once('/').is_some_and(|(kind, sub)| {
            !kind.is_empty()
                && !sub.is_empty()
                && text
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/+.-_".contains(&b))
        })
}

/// A manifest's media type is a property of its bytes, the same from every upstream: the
/// body's own `mediaType`; without one, what its shape shows, named as `content_type` says
/// only when that is a known manifest type of the same shape (Docker schema 2 or OCI, say).
/// Any other `Content-Type`, however official it looks, is ignored.
pub(crate) fn manifest_media_type(content_type: Option<&str>, body: &[u8]) -> String {
    let announced = content_type
        .map(|t| t.split(';').next().unwrap_or("").trim())
        .filter(|t| ManifestKind::of_type(t).is_some());
    let Some(shape) = ManifestShape::read(body) else {
        return announced.unwrap_or(OCI_MANIFEST).to_owned();
    };
    if let Some(declared) = shape.declared() {
        return declared.to_owned();
    }
    match (shape.kind(), announced) {
        (Some(kind), Some(announced)) if ManifestKind::of_type(announced) == Some(kind) => {
            announced.to_owned()
        }
        (Some(kind), _) => kind.default_type().to_owned(),
        (None, Some(announced)) => announced.to_owned(),
        (None, None) => OCI_MANIFEST.to_owned(),
    }
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
    fn the_media_type_comes_from_the_body_not_the_upstream() {
        let oci = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[]}"#;
        // A hostile Content-Type does not change what a digest is (issue 19, item 2).
        assert_eq!(
            manifest_media_type(Some("application/vnd.evil+json"), oci),
            OCI_MANIFEST
        );
        assert_eq!(
            manifest_media_type(Some(DOCKER_MANIFEST_V2), oci),
            OCI_MANIFEST
        );
        // Without mediaType: the shape, named as the upstream says when that agrees.
        let index = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            manifest_media_type(Some(DOCKER_MANIFEST_LIST), index),
            DOCKER_MANIFEST_LIST
        );
        assert_eq!(
            manifest_media_type(Some(DOCKER_MANIFEST_V2), index),
            OCI_INDEX
        );
        assert_eq!(
            manifest_media_type(Some("application/vnd.x+json"), index),
            OCI_INDEX
        );
        assert_eq!(
            manifest_media_type(Some("application/json"), index),
            OCI_INDEX
        );
        let v1 = br#"{"schemaVersion":1,"name":"a"}"#;
        assert_eq!(
            manifest_media_type(Some(DOCKER_MANIFEST_V1), v1),
            DOCKER_MANIFEST_V1
        );
        assert_eq!(manifest_media_type(None, v1), DOCKER_MANIFEST_V1_SIGNED);
        // A declared type that could not be a header value is not used.
        let bad = b"{\"mediaType\":\"a/b\\r\\nX-Evil: 1\",\"config\":{}}";
        assert_eq!(manifest_media_type(None, bad), OCI_MANIFEST);
    }
}
