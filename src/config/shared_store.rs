//! The shared store's settings (the second cache tier): the file's keys over the standard
//! `AWS_*` variables, and where its secret key is kept when it is not written in the file.

use super::Overrides;
use super::file::BLOB_REDIRECT;
use super::file::ConfigFile;
use super::named_files::SecretSource;
use super::values::{POSITIVE_DURATION, Problems};
use crate::shared::SharedStoreConfig;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) fn parse(
    file: &ConfigFile,
    overrides: &Overrides,
    request_timeout: Duration,
    problems: &mut Problems,
) -> (
    Option<SharedStoreConfig>,
    Option<(&'static str, SecretSource)>,
) {
    let Some(url) = overrides
        .shared_store
        .clone()
        .or_else(|| file.shared_store.clone())
    else {
        return (None, None);
    };
    let from_env = match SharedStoreConfig::from_env(&url, request_timeout) {
        Ok(config) => config,
        Err(reason) => {
            problems.add("shared_store", &url, reason.to_string());
            return (None, None);
        }
    };
    let endpoint = file
        .shared_store_endpoint
        .clone()
        .or(from_env.endpoint.clone());
    if let Some(endpoint) = &endpoint
        && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
    {
        problems.add(
            "shared_store_endpoint",
            endpoint,
            "expected an http:// or https:// URL",
        );
    }
    let given_secrets = [
        &file.shared_store_secret_access_key,
        &file.shared_store_secret_access_key_env,
        &file.shared_store_secret_access_key_file,
    ]
    .iter()
    .filter(|s| s.is_some())
    .count();
    if given_secrets > 1 {
        problems.add(
            "shared_store_secret_access_key",
            "<redacted>",
            "set only one of shared_store_secret_access_key, _env, _file",
        );
    }
    let secret_source = match (
        &file.shared_store_secret_access_key_env,
        &file.shared_store_secret_access_key_file,
    ) {
        (Some(variable), _) => Some((
            "shared_store_secret_access_key_env",
            SecretSource::Variable(variable.clone()),
        )),
        (None, Some(path)) => Some((
            "shared_store_secret_access_key_file",
            SecretSource::File(PathBuf::from(path)),
        )),
        (None, None) => None,
    };
    let secret_access_key = match (&file.shared_store_secret_access_key, &secret_source) {
        (Some(secret), _) => Some(secret.clone()),
        // Filled in by `app::config_files`.
        (None, Some(_)) => None,
        (None, None) => from_env.secret_access_key.clone(),
    };
    let answer_timeout = problems.duration(
        "shared_store_answer_timeout",
        file.shared_store_answer_timeout.as_ref(),
        POSITIVE_DURATION,
        from_env.answer_timeout,
    );
    let config = SharedStoreConfig {
        answer_timeout,
        endpoint,
        region: file.shared_store_region.clone().or(from_env.region.clone()),
        access_key_id: file
            .shared_store_access_key_id
            .clone()
            .or(from_env.access_key_id.clone()),
        secret_access_key,
        blob_redirect: BLOB_REDIRECT.parse(file.blob_redirect.as_ref(), problems),
        ..from_env
    };
    (Some(config), secret_source)
}
