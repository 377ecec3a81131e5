//! Property tests on every parser that sees outside input (issue 11): request paths and
//! names, digests, `Range`, `Content-Range`, `WWW-Authenticate`, token JSON, registry names
//! and patterns, image references and config values. No input panics, and no accepted name
//! or digest maps to a path outside the cache directory.

use ferry::oci::{Digest, RepositoryName};
use ferry::pull::RangeSpec;
use ferry::server::range::parse_range;
use ferry::server::route::{self, Route};
use ferry::upstream::auth::{Challenge, parse_token_response};
use ferry::upstream::client::ContentRange;
use proptest::prelude::*;
use std::path::{Component, Path};

/// Strings built from the characters that matter to these parsers, plus any character.
fn hostile_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._/:@=,\" \\-]{0,80}",
        ".{0,80}",
        "(/v2/|\\.\\./|%2e%2e/|sha256:|bytes=|Bearer |/manifests/|/blobs/|//){0,6}[a-z0-9./:-]{0,20}",
    ]
}

fn valid_name() -> impl Strategy<Value = String> {
    proptest::collection::vec("[a-z0-9]{1,8}([._-][a-z0-9]{1,4})?", 1..4).prop_map(|c| c.join("/"))
}

fn hex64() -> impl Strategy<Value = String> {
    "[0-9a-f]{64}"
}

/// Every component of `path` is normal and the path stays under `root`.
fn stays_under(root: &Path, path: &Path) -> bool {
    path.starts_with(root)
        && path
            .strip_prefix(root)
            .map(|rest| rest.components().all(|c| matches!(c, Component::Normal(_))))
            .unwrap_or(false)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn request_paths_never_panic_and_accepted_names_keep_the_grammar(path in hostile_text()) {
        if let Ok(Route::Manifest { name, .. } | Route::Blob { name, .. } | Route::TagList { name }) =
            route::parse(&path)
        {
            let name = name.as_str();
            prop_assert!(!name.starts_with('/') && !name.ends_with('/'));
            prop_assert!(name.split('/').all(|c| !c.is_empty() && c != "." && c != ".."));
            prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b)));
        }
    }

    #[test]
    fn valid_manifest_and_blob_paths_round_trip(name in valid_name(), tag in "[A-Za-z0-9_][A-Za-z0-9._-]{0,40}", hex in hex64()) {
        let manifest = route::parse(&format!("/v2/{name}/manifests/{tag}")).unwrap();
        match manifest {
            Route::Manifest { name: parsed, reference } => {
                prop_assert_eq!(parsed.as_str(), name.as_str());
                prop_assert_eq!(reference.to_string(), tag);
            }
            other => prop_assert!(false, "{:?}", other),
        }
        let blob = route::parse(&format!("/v2/{name}/blobs/sha256:{hex}")).unwrap();
        match blob {
            Route::Blob { name: parsed, digest } => {
                prop_assert_eq!(parsed.as_str(), name.as_str());
                prop_assert_eq!(digest.to_string(), format!("sha256:{hex}"));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn repository_names_never_panic(input in hostile_text()) {
        if let Ok(name) = RepositoryName::parse(&input) {
            prop_assert_eq!(name.as_str(), input.as_str());
            prop_assert!(input.split('/').all(|c| c != ".." && c != "."));
        }
    }

    #[test]
    fn digests_parse_strictly_and_map_inside_the_cache(input in hostile_text(), hex in hex64()) {
        let root = Path::new("/var/cache/ferry");
        if let Ok(digest) = input.parse::<Digest>() {
            prop_assert_eq!(digest.to_string(), input.clone());
            let path = ferry::cache::Layout::blob_path_under(root, &digest);
            prop_assert!(stays_under(root, &path), "{}", path.display());
        }
        let valid: Digest = format!("sha256:{hex}").parse().unwrap();
        prop_assert!(stays_under(root, &ferry::cache::Layout::blob_path_under(root, &valid)));
        let upper = format!("sha256:{}", hex.to_uppercase()).parse::<Digest>();
        prop_assert!(upper.is_err() || hex.bytes().all(|b| b.is_ascii_digit()));
        let short = format!("sha256:{}", &hex[1..]).parse::<Digest>();
        prop_assert!(short.is_err());
    }

    #[test]
    fn tag_records_map_inside_the_cache(registry in hostile_text(), repository in hostile_text(), tag in hostile_text()) {
        let root = Path::new("/var/cache/ferry/tags");
        let store = ferry::cache::TagStore::new(root.to_path_buf());
        let path = store.path_of(&ferry::cache::TagKey { registry, repository, tag });
        prop_assert!(stays_under(root, &path), "{}", path.display());
    }

    #[test]
    fn ranges_never_panic_and_resolve_inside_the_blob(header in hostile_text(), size in 0u64..u64::MAX) {
        if let Some(spec) = parse_range(&header)
            && let Some((first, last)) = spec.resolve(size)
        {
            prop_assert!(first <= last && last < size);
        }
    }

    #[test]
    fn generated_ranges_parse_as_written(start in 0u64..1 << 40, len in 0u64..1 << 40, size in 1u64..1 << 41) {
        let end = start + len;
        let spec = parse_range(&format!("bytes={start}-{end}")).unwrap();
        prop_assert_eq!(spec, RangeSpec::From { start, end: Some(end) });
        match spec.resolve(size) {
            Some((first, last)) => {
                prop_assert_eq!(first, start);
                prop_assert_eq!(last, end.min(size - 1));
            }
            None => prop_assert!(start >= size),
        }
        let backwards = parse_range(&format!("bytes={end}-{start}"));
        prop_assert!(backwards.is_none() || len == 0);
    }

    #[test]
    fn content_ranges_are_strict(header in hostile_text(), offset in 0u64..1000, total in proptest::option::of(0u64..1000)) {
        if let Some(range) = ContentRange::parse(&header) {
            prop_assert!(range.first <= range.last);
            prop_assert!(range.complete_length.is_none_or(|n| range.last < n));
            // Never panics, whatever it is asked.
            let _ = range.answers_resume_from(offset, total);
        }
    }

    #[test]
    fn a_resume_is_accepted_only_for_the_exact_span(offset in 1u64..1 << 40, rest in 1u64..1 << 40, other in 0u64..1 << 40) {
        let total = offset + rest;
        let exact = format!("bytes {offset}-{}/{total}", total - 1);
        prop_assert!(ContentRange::parse(&exact).unwrap().answers_resume_from(offset, Some(total)));
        prop_assert!(ContentRange::parse(&exact).unwrap().answers_resume_from(offset, None));
        if other != offset {
            let shifted = format!("bytes {other}-{}/{total}", total - 1);
            prop_assert!(!ContentRange::parse(&shifted).is_some_and(|r| r.answers_resume_from(offset, Some(total))));
        }
        if other != total {
            let wrong_total = format!("bytes {offset}-{}/{}", total - 1, other.max(total));
            prop_assert!(!ContentRange::parse(&wrong_total).is_some_and(|r| r.answers_resume_from(offset, Some(total))) || other.max(total) == total);
        }
    }

    #[test]
    fn challenges_never_panic_and_round_trip(header in hostile_text(), realm in "https://[a-z]{1,10}\\.example/[a-z]{0,8}", service in "[a-z.]{1,20}") {
        let _ = Challenge::parse(&header);
        let written = format!("Bearer realm=\"{realm}\",service=\"{service}\",scope=\"repository:a/b:pull\"");
        match Challenge::parse(&written) {
            Some(Challenge::Bearer { params }) => {
                prop_assert_eq!(params.get("realm"), Some(&realm));
                prop_assert_eq!(params.get("service"), Some(&service));
                prop_assert_eq!(params.get("scope").map(String::as_str), Some("repository:a/b:pull"));
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn token_bodies_never_panic_and_tokens_are_header_safe(body in proptest::collection::vec(any::<u8>(), 0..200), text in hostile_text(), token in "[A-Za-z0-9._~+/=-]{1,100}", expires in proptest::option::of(0u64..100_000)) {
        for input in [body.as_slice(), text.as_bytes()] {
            if let Ok((token, _)) = parse_token_response(input) {
                let header = http::HeaderValue::from_str(&format!("Bearer {token}"));
                prop_assert!(header.is_ok());
            }
        }
        let json = serde_json::json!({"token": token, "expires_in": expires}).to_string();
        prop_assert_eq!(parse_token_response(json.as_bytes()).ok(), Some((token.clone(), expires)));
        let oauth = serde_json::json!({"access_token": token}).to_string();
        prop_assert_eq!(parse_token_response(oauth.as_bytes()).ok(), Some((token, None)));
        let bad = serde_json::json!({"token": "a\nb"}).to_string();
        prop_assert!(parse_token_response(bad.as_bytes()).is_err());
    }

    #[test]
    fn registry_names_patterns_and_image_refs_never_panic(input in hostile_text()) {
        let _ = ferry::upstream::registries::is_registry_host(&input);
        let _ = ferry::upstream::canonical_registry(&input);
        if let Ok(pattern) = ferry::upstream::RegistryPattern::parse(&input) {
            let _ = pattern.matches(&input);
        }
        let _ = ferry::maintenance::ImageRef::parse(&input, "docker.io");
        let _ = ferry::config::parse_size(&input);
    }

    #[test]
    fn config_values_are_problems_never_panics(values in proptest::collection::vec(hostile_text(), 12)) {
        let file = ferry::config::file::ConfigFile {
            listen: Some(values[0].clone()),
            cache_size: Some(values[1].clone()),
            tag_ttl: Some(values[2].clone()),
            registry: Some(values[3].clone()),
            admin_listen: Some(values[4].clone()),
            hedge_delay: Some(values[5].clone()),
            breaker_cooldown: Some(values[6].clone()),
            health_probe_interval: Some(values[7].clone()),
            direct_registries: Some(vec![values[8].clone()]),
            shared_store: Some(values[9].clone()),
            upstreams: vec![ferry::config::file::UpstreamFile {
                url: Some(values[10].clone()),
                header_timeout: Some(values[11].clone()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let _ = ferry::config::Config::parse(&file, &ferry::config::Overrides::default());
    }

    #[test]
    fn sizes_parse_as_written(n in 0u64..1 << 20) {
        prop_assert_eq!(ferry::config::parse_size(&format!("{n}MiB")), Ok(n << 20));
        prop_assert_eq!(ferry::config::parse_size(&n.to_string()), Ok(n));
    }
}
