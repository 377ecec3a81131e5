//! The typed, capped shapes of the lists ferry reads from upstreams: a tag list (checked
//! without keeping its tags) and a referrers index (descriptors kept, their open-ended parts
//! as raw JSON text). No `serde_json::Value` tree: memory follows the bytes, not the nesting.

use serde::de::{Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;

/// Most tags a tag list may hold (Docker Hub's largest repositories hold tens of thousands).
pub(crate) const MAX_TAGS: usize = 200_000;
/// Most descriptors a referrers list may hold, over all its pages.
pub(crate) const MAX_REFERRERS: usize = 10_000;

/// Counts a sequence's items without keeping them, failing past `max`.
struct CountingVisitor {
    max: usize,
}

impl<'de> Visitor<'de> for CountingVisitor {
    type Value = usize;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "a list of at most {} strings", self.max)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<usize, A::Error> {
        let mut count = 0;
        while seq.next_element::<StrOnly>()?.is_some() {
            count += 1;
            if count > self.max {
                return Err(serde::de::Error::custom(format!(
                    "more than {} entries",
                    self.max
                )));
            }
        }
        Ok(count)
    }

    fn visit_unit<E>(self) -> Result<usize, E> {
        Ok(0)
    }
}

/// A JSON string, checked and dropped.
struct StrOnly;

impl<'de> Deserialize<'de> for StrOnly {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl Visitor<'_> for StrVisitor {
            type Value = StrOnly;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E>(self, _: &str) -> Result<StrOnly, E> {
                Ok(StrOnly)
            }
        }
        deserializer.deserialize_str(StrVisitor)
    }
}

fn count_tags<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    deserializer.deserialize_any(CountingVisitor { max: MAX_TAGS })
}

#[derive(Deserialize)]
struct TagListShape {
    #[serde(rename = "name")]
    _name: IgnoredAny,
    #[serde(rename = "tags", default, deserialize_with = "count_tags")]
    _tags: usize,
}

/// Checks that `body` is a tag list (`{"name": ..., "tags": [strings] | null}`) of at most
/// [`MAX_TAGS`] tags, holding none of them in memory.
pub(crate) fn check_tag_list(body: &[u8]) -> Result<(), ListingError> {
    serde_json::from_slice::<TagListShape>(body)
        .map(drop)
        .map_err(|cause| ListingError::NotATagList(Arc::new(cause)))
}

/// A list body an upstream sent that is not the list it should be.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ListingError {
    #[error("not a tag list of at most {MAX_TAGS} tags ({0})")]
    NotATagList(#[source] Arc<serde_json::Error>),
    #[error("not an image index ({0})")]
    NotAnIndex(#[source] Arc<serde_json::Error>),
}

/// One descriptor of a referrers index. The spec's fields with structure ferry does not
/// read (annotations, platform, urls, data) are kept as their raw JSON text.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ReferrerDescriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Box<RawValue>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<RawValue>>,
}

/// One page of a referrers answer: an image index's `manifests`.
#[derive(Deserialize)]
pub(crate) struct ReferrersPage {
    #[serde(deserialize_with = "capped_descriptors")]
    pub manifests: Vec<ReferrerDescriptor>,
}

/// At most [`MAX_REFERRERS`] descriptors, refused as soon as one more arrives.
fn capped_descriptors<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<ReferrerDescriptor>, D::Error> {
    struct Capped;
    impl<'de> Visitor<'de> for Capped {
        type Value = Vec<ReferrerDescriptor>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "a list of at most {MAX_REFERRERS} descriptors")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut descriptors = Vec::new();
            while let Some(descriptor) = seq.next_element()? {
                if descriptors.len() == MAX_REFERRERS {
                    return Err(serde::de::Error::custom(format!(
                        "more than {MAX_REFERRERS} descriptors"
                    )));
                }
                descriptors.push(descriptor);
            }
            Ok(descriptors)
        }
    }
    deserializer.deserialize_seq(Capped)
}

impl ReferrersPage {
    /// Reads a page; its descriptors must be well formed.
    pub(crate) fn read(body: &[u8]) -> Result<ReferrersPage, ListingError> {
        serde_json::from_slice(body).map_err(|cause| ListingError::NotAnIndex(Arc::new(cause)))
    }
}

/// The index ferry serves for a merged (or filtered) referrers list.
#[derive(Serialize)]
pub(crate) struct ReferrersIndex<'a> {
    #[serde(rename = "schemaVersion")]
    pub(crate) schema_version: u32,
    #[serde(rename = "mediaType")]
    pub media_type: &'a str,
    pub manifests: &'a [ReferrerDescriptor],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_lists_are_checked_and_capped() {
        assert!(check_tag_list(br#"{"name":"a/b","tags":["v1","v2"]}"#).is_ok());
        assert!(check_tag_list(br#"{"name":"a/b","tags":null}"#).is_ok());
        assert!(check_tag_list(br#"{"name":"a/b"}"#).is_ok());
        assert!(check_tag_list(br#"{"name":"a/b","tags":[1]}"#).is_err());
        assert!(check_tag_list(br#"{"tags":[]}"#).is_err());
        assert!(check_tag_list(b"[]").is_err());
        let many = format!(
            r#"{{"name":"a","tags":[{}]}}"#,
            vec!["\"t\""; MAX_TAGS + 1].join(",")
        );
        assert!(check_tag_list(many.as_bytes()).is_err());
    }

    #[test]
    fn referrer_descriptors_keep_their_raw_parts() {
        let page = ReferrersPage::read(
            br#"{"schemaVersion":2,"manifests":[{"mediaType":"m","digest":"sha256:aa","size":3,
            "artifactType":"a/b","annotations":{"k":"v"},"unknown":[1,2]}]}"#,
        )
        .unwrap();
        let index = ReferrersIndex {
            schema_version: 2,
            media_type: "i",
            manifests: &page.manifests,
        };
        let text = serde_json::to_string(&index).unwrap();
        assert_eq!(
            text,
            r#"{"schemaVersion":2,"mediaType":"i","manifests":[{"mediaType":"m","digest":"sha256:aa","size":3,"artifactType":"a/b","annotations":{"k":"v"}}]}"#
        );
        assert!(ReferrersPage::read(br#"{"manifests":[{"digest":"x"}]}"#).is_err());
        assert!(ReferrersPage::read(br#"{"manifests":{}}"#).is_err());
        let one = r#"{"mediaType":"m","digest":"d","size":1}"#;
        let many = format!(
            r#"{{"manifests":[{}]}}"#,
            vec![one; MAX_REFERRERS + 1].join(",")
        );
        assert!(ReferrersPage::read(many.as_bytes()).is_err());
        let most = format!(
            r#"{{"manifests":[{}]}}"#,
            vec![one; MAX_REFERRERS].join(",")
        );
        assert_eq!(
            ReferrersPage::read(most.as_bytes())
                .unwrap()
                .manifests
                .len(),
            MAX_REFERRERS
        );
    }
}
