//! The listener half of the settings: the registry and admin addresses, client limits, and
//! which TLS, client-authentication and admin-token files the listeners use.

use super::file::ConfigFile;
use super::file::{
    CLIENT_HEADER_TIMEOUT, CLIENT_IDLE_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT,
};
use super::named_files::ClientAuthFiles;
use super::values::{Problems, flag_over_file};
use super::{ClientLimits, DEFAULT_ADMIN_LISTEN, DEFAULT_LISTEN, Overrides};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The listener settings, with the files they name.
pub(crate) struct ListenerSettings {
    /// `None` when the address was invalid (and reported).
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) admin_listen: Option<SocketAddr>,
    pub(crate) client_limits: ClientLimits,
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    pub(crate) client_auth: Option<ClientAuthFiles>,
    pub(crate) admin_token_file: Option<PathBuf>,
}

pub(crate) fn parse(
    file: &ConfigFile,
    overrides: &Overrides,
    problems: &mut Problems,
) -> ListenerSettings {
    let (listen_key, listen_value) = flag_over_file(
        ("--listen", overrides.listen.as_ref()),
        ("listen", file.listen.as_ref()),
    );
    let listen_value = listen_value.map_or(DEFAULT_LISTEN, String::as_str);
    let listen = listen_value.parse::<SocketAddr>().ok();
    if listen.is_none() {
        problems.add(
            listen_key,
            listen_value,
            "expected IP:PORT, e.g. 127.0.0.1:5000",
        );
    }

    let (admin_key, admin_value) = flag_over_file(
        ("--admin-listen", overrides.admin_listen.as_ref()),
        ("admin_listen", file.admin_listen.as_ref()),
    );
    let admin_value = admin_value.map_or(DEFAULT_ADMIN_LISTEN, String::as_str);
    let admin_listen = match admin_value {
        "off" => None,
        text => {
            let parsed = text.parse::<SocketAddr>().ok();
            if parsed.is_none() {
                problems.add(admin_key, text, "expected IP:PORT or \"off\"");
            }
            parsed
        }
    };

    ListenerSettings {
        listen,
        admin_listen,
        client_limits: client_limits(file, problems),
        tls: tls_files(file, problems),
        client_auth: client_auth_files(file, problems),
        admin_token_file: file.admin_token_file.as_ref().map(PathBuf::from),
    }
}

fn client_limits(file: &ConfigFile, problems: &mut Problems) -> ClientLimits {
    let max_connections = MAX_CONNECTIONS.parse(file.max_connections.as_ref(), problems) as usize;
    let max_connections_per_client = MAX_CONNECTIONS_PER_CLIENT
        .parse(file.max_connections_per_client.as_ref(), problems)
        as usize;
    ClientLimits {
        header_timeout: CLIENT_HEADER_TIMEOUT.parse(file.client_header_timeout.as_ref(), problems),
        idle_timeout: CLIENT_IDLE_TIMEOUT.parse(file.client_idle_timeout.as_ref(), problems),
        max_connections,
        max_connections_per_client: max_connections_per_client.min(max_connections),
    }
}

/// The certificate and key, which come as a pair.
fn tls_files(file: &ConfigFile, problems: &mut Problems) -> Option<(PathBuf, PathBuf)> {
    match (&file.tls_cert_file, &file.tls_key_file) {
        (None, None) => None,
        (Some(cert), Some(key)) => Some((PathBuf::from(cert), PathBuf::from(key))),
        (Some(cert), None) => {
            problems.add(
                "tls_key_file",
                "",
                format!("tls_cert_file = {cert:?} needs a key"),
            );
            None
        }
        (None, Some(key)) => {
            problems.add(
                "tls_cert_file",
                "",
                format!("tls_key_file = {key:?} needs a certificate"),
            );
            None
        }
    }
}

/// The client-auth files, and `client_access` with its registry names made canonical.
fn client_auth_files(file: &ConfigFile, problems: &mut Problems) -> Option<ClientAuthFiles> {
    if file.auth_tokens_file.is_none() && file.auth_users_file.is_none() {
        if file.client_access.is_some() {
            problems.add(
                "client_access",
                "",
                "needs client authentication (auth_users_file)",
            );
        }
        return None;
    }
    let mut registry_rules = Vec::new();
    for (user, registries) in file.client_access.iter().flatten() {
        let mut allowed = Vec::new();
        for registry in registries {
            let canonical = crate::oci::registry::canonical_registry(registry);
            if crate::oci::registry::is_registry_host(&canonical) {
                allowed.push(canonical);
            } else {
                problems.add(
                    &format!("client_access.{user}"),
                    registry,
                    "expected a registry host[:port] such as ghcr.io",
                );
            }
        }
        registry_rules.push((user.clone(), allowed));
    }
    Some(ClientAuthFiles {
        tokens_file: file.auth_tokens_file.as_ref().map(PathBuf::from),
        users_file: file.auth_users_file.as_ref().map(PathBuf::from),
        registry_rules,
    })
}
