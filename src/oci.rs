//! OCI distribution vocabulary with no I/O: digests, repository names and tags,
//! manifest media types and Accept negotiation, the spec's error codes, registry names, and
//! the typed shapes of tag lists and referrers indexes.

pub(crate) mod digest;
pub(crate) mod error_code;
pub(crate) mod image_ref;
pub(crate) mod link;
pub(crate) mod listings;
pub mod media_type;
pub(crate) mod name;
pub(crate) mod registry;

pub use digest::{Digest, DigestAlgorithm, DigestVerifier};
pub(crate) use error_code::ErrorCode;
pub use image_ref::ImageRef;
pub use name::{Reference, RepositoryName, Tag};
