//! The admin API, on its own listener: upstream status (`/admin/upstreams`, `/status`), the
//! last hour (`/admin/history`) and its `/dashboard`, drain and undrain, pins, `/metrics`,
//! `/healthz`, `/readyz`. Cross-site requests (an `Origin`, a Host that is no address,
//! localhost or `admin_hosts` name) and form mutations are refused; mutations may need a token.

use crate::oci::ErrorCode;
use crate::pins::{PinKeeper, PinRequestError};
use crate::pull::PullThrough;
use crate::server::response::{ResponseBody, builder, full_body, or_500};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use std::sync::Arc;

/// Who may use the admin API: the Host names it answers to besides addresses and
/// localhost, and the token its mutations (drain, undrain, pins) require, if one is set.
#[derive(Default)]
pub(crate) struct AdminAccess {
    pub(crate) hosts: Vec<String>,
    pub(crate) token: Option<String>,
}

impl std::fmt::Debug for AdminAccess {
    /// Says whether a token is set, never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAccess")
            .field("hosts", &self.hosts)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

pub(crate) async fn handle<B>(
    pull: Arc<PullThrough>,
    pins: Arc<PinKeeper>,
    access: Arc<AdminAccess>,
    request: Request<B>,
) -> Response<ResponseBody>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = request.method().clone();
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let mutating = path.starts_with("/admin/upstreams/")
        || (path == "/admin/pins" && method != Method::GET && method != Method::HEAD);
    let refusal = browser_refusal(&request, &access.hosts).map(|r| (StatusCode::FORBIDDEN, r));
    let refusal = refusal.or_else(|| {
        mutating
            .then(|| mutation_refusal(&request, access.token.as_deref()))
            .flatten()
    });
    let response = match refusal {
        Some((status, reason)) => {
            let code = if status == StatusCode::UNAUTHORIZED {
                ErrorCode::Unauthorized
            } else {
                ErrorCode::Denied
            };
            let mut response = error(status, code, &reason);
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"ferry-admin\""),
                );
            }
            response
        }
        None if path == "/admin/pins" => pin_route(&pins, request).await,
        None => route(&pull, &pins, &method, &path).await,
    };
    tracing::info!(%method, %path, status = response.status().as_u16(), "admin request");
    response
}

/// Why a request looks like it comes from a web page rather than an operator's tool, if it
/// does. Tools (curl, Prometheus, kubelet probes) send no `Origin` and name the server by
/// address; a page on another site, or one reached through DNS rebinding, cannot avoid
/// sending `Origin` on a POST, nor choose a Host other than its own name.
fn browser_refusal<B>(request: &Request<B>, allowed_hosts: &[String]) -> Option<String> {
    if request.headers().contains_key(http::header::ORIGIN) {
        return Some("the admin API refuses requests from web pages (Origin header)".into());
    }
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))?;
    let name = match host.rsplit_once(':') {
        // `[::1]:5005`, `127.0.0.1:5005`, `name:5005`; a bare `::1` has colons but no port.
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !name.ends_with(':') => {
            name
        }
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let allowed = name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(name));
    (!allowed).then(|| format!("Host {host:?} is not an address, localhost or one of admin_hosts"))
}

/// Why a drain or undrain is refused, if it is: a content type a web form can send
/// (`application/x-www-form-urlencoded`, `multipart/form-data`, `text/plain`), or a missing
/// or wrong token when one is configured.
fn mutation_refusal<B>(request: &Request<B>, token: Option<&str>) -> Option<(StatusCode, String)> {
    let content_type = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if matches!(
        content_type.as_str(),
        "application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain"
    ) {
        return Some((
            StatusCode::FORBIDDEN,
            format!("the admin API refuses {content_type} requests (a web form can send those)"),
        ));
    }
    let expected = token?;
    let given = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => None,
        Some(_) => Some((StatusCode::UNAUTHORIZED, "wrong admin token".into())),
        None => Some((
            StatusCode::UNAUTHORIZED,
            "this endpoint needs the admin token (Authorization: Bearer <token>)".into(),
        )),
    }
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Largest body `POST /admin/pins` reads.
const PIN_REQUEST_BYTES: usize = 16 * 1024;

/// `GET /admin/pins` (every pin with its state), `POST /admin/pins` with
/// `{"image": "HOST/REPO:TAG"}`, `DELETE /admin/pins?image=HOST/REPO:TAG`.
async fn pin_route<B>(pins: &PinKeeper, request: Request<B>) -> Response<ResponseBody>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match *request.method() {
        Method::GET => json(StatusCode::OK, &pins.status()),
        Method::POST => {
            use http_body_util::BodyExt;
            let limited = http_body_util::Limited::new(request.into_body(), PIN_REQUEST_BYTES);
            let body = match limited.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::Unsupported,
                        &format!(
                            "cannot read the request body (at most {PIN_REQUEST_BYTES} bytes): {e}"
                        ),
                    );
                }
            };
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct PinRequest {
                image: String,
            }
            let wanted: PinRequest = match serde_json::from_slice(&body) {
                Ok(wanted) => wanted,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::Unsupported,
                        &format!("expected {{\"image\": \"HOST/REPOSITORY:TAG\"}}: {e}"),
                    );
                }
            };
            match pins.add(&wanted.image).await {
                Ok((image, added)) => json(
                    if added {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    },
                    &serde_json::json!({"image": image, "added": added}),
                ),
                Err(e) => pin_error(&e),
            }
        }
        Method::DELETE => {
            let image = request.uri().query().and_then(|query| {
                form_urlencoded::parse(query.as_bytes())
                    .find(|(key, _)| key == "image")
                    .map(|(_, value)| value.into_owned())
            });
            let Some(image) = image else {
                return error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::Unsupported,
                    "name the pin: DELETE /admin/pins?image=HOST/REPOSITORY:TAG",
                );
            };
            match pins.remove(&image).await {
                Ok(image) => json(
                    StatusCode::OK,
                    &serde_json::json!({"image": image, "removed": true}),
                ),
                Err(e) => pin_error(&e),
            }
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Unsupported,
            "use GET, POST or DELETE",
        ),
    }
}

/// A refused or failed pin request: the client's mistakes as 4xx, the store's or the
/// cache's failures as 503 and 500.
fn pin_error(e: &PinRequestError) -> Response<ResponseBody> {
    let (status, code) = match e {
        PinRequestError::BadImage(_) => (StatusCode::BAD_REQUEST, ErrorCode::NameInvalid),
        PinRequestError::UnknownRegistry(_) | PinRequestError::NotPinned(_) => {
            (StatusCode::NOT_FOUND, ErrorCode::NameUnknown)
        }
        PinRequestError::PinnedElsewhere { .. } => (StatusCode::CONFLICT, ErrorCode::Denied),
        PinRequestError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
        PinRequestError::Cache(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unavailable),
    };
    error(status, code, &e.to_string())
}

async fn route(
    pull: &PullThrough,
    pins: &PinKeeper,
    method: &Method,
    path: &str,
) -> Response<ResponseBody> {
    match (method, path) {
        (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/metrics") => metrics(pull, pins),
        (&Method::GET, "/readyz") => {
            // Writing the probe file can block (a slow or failing disk): blocking pool.
            let tmp_dir = pull.cache.tmp_dir();
            let writable = tokio::task::spawn_blocking(move || cache_writable(&tmp_dir))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            let (ready, why) = readiness(pull, writable);
            let code = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(code, &serde_json::json!({"ready": ready, "reason": why}))
        }
        (&Method::GET, "/admin/upstreams") | (&Method::GET, "/status") => {
            json(StatusCode::OK, &status(pull))
        }
        (&Method::GET, "/admin/history") => json(StatusCode::OK, &history(pull)),
        (&Method::GET, "/dashboard") => dashboard(),
        (_, p) if p.starts_with("/admin/upstreams/") => {
            let rest = &p["/admin/upstreams/".len()..];
            let Some((name, action)) = rest.rsplit_once('/') else {
                return error(
                    StatusCode::NOT_FOUND,
                    ErrorCode::Unsupported,
                    "no such admin endpoint",
                );
            };
            let drain = match action {
                "drain" => true,
                "undrain" => false,
                _ => {
                    return error(
                        StatusCode::NOT_FOUND,
                        ErrorCode::Unsupported,
                        "no such admin endpoint",
                    );
                }
            };
            if method != Method::POST {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    ErrorCode::Unsupported,
                    "use POST",
                );
            }
            let Some(client) = pull.registries.find(name) else {
                return error(
                    StatusCode::NOT_FOUND,
                    ErrorCode::NameUnknown,
                    &format!("no upstream named {name:?}"),
                );
            };
            let changed = client.health().set_drained(drain);
            json(
                StatusCode::OK,
                &serde_json::json!({"name": name, "drained": drain, "changed": changed}),
            )
        }
        _ => error(
            StatusCode::NOT_FOUND,
            ErrorCode::Unsupported,
            "no such admin endpoint",
        ),
    }
}

/// Whether the cache's temporary directory takes a small write (blocking).
fn cache_writable(tmp_dir: &std::path::Path) -> std::io::Result<()> {
    let probe = tmp_dir.join(format!("readyz-{}", std::process::id()));
    // A full disk creates the file and then fails the write: remove it either way.
    let written = std::fs::write(&probe, b"ok");
    let _ = std::fs::remove_file(&probe);
    written
}

/// Ready when the cache directory takes writes and (unless offline) at least one upstream
/// is in rotation with its breaker not open.
pub(crate) fn readiness(pull: &PullThrough, cache_writable: std::io::Result<()>) -> (bool, String) {
    if let Err(e) = cache_writable {
        return (false, format!("cache directory not writable: {e}"));
    }
    if pull.settings.offline {
        return (true, "offline: serving the cache".into());
    }
    let down: Vec<&str> = pull
        .registries
        .configured()
        .filter(|(_, upstreams)| {
            !upstreams.clients().iter().any(|c| {
                !c.health().is_drained()
                    && c.health().breaker().state != crate::upstream::breaker::BreakerState::Open
            })
        })
        .map(|(registry, _)| registry)
        .collect();
    if down.is_empty() {
        (
            true,
            "cache writable, every registry has an upstream available".into(),
        )
    } else {
        (
            false,
            format!(
                "every upstream is drained or has its circuit breaker open for: {}",
                down.join(", ")
            ),
        )
    }
}

/// Every upstream with its registry's name, by registry, then priority.
fn every_upstream(pull: &PullThrough) -> Vec<(String, Arc<crate::upstream::UpstreamClient>)> {
    pull.registries
        .all()
        .into_iter()
        .flat_map(|(registry, upstreams)| {
            upstreams
                .clients()
                .iter()
                .map(|client| (registry.to_string(), client.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every upstream (by registry, then priority) with its health, plus cache counters.
pub(crate) fn status(pull: &PullThrough) -> serde_json::Value {
    let upstreams: Vec<serde_json::Value> = every_upstream(pull)
        .into_iter()
        .map(|(registry, client)| {
            let mut entry = client.health().status();
            entry["name"] = client.name().into();
            entry["registry"] = registry.into();
            entry["url"] = client.config().url.as_str().into();
            entry["group"] = client.config().group.as_deref().into();
            entry
        })
        .collect();
    serde_json::json!({
        "offline": pull.settings.offline,
        "default_registry": pull.registries.default_registry(),
        "registries": pull.registries.names().collect::<Vec<_>>(),
        "direct_registries": pull.registries.direct_patterns(),
        "cache": {
            "usage": pull.cache.usage(),
            "write_failures": pull.cache.write_failures(),
            "fills_in_progress": pull.cache.fills_in_progress(),
        },
        "upstreams": upstreams,
        "shared_store": pull.shared.as_ref().map(|shared| shared.status()),
        "background_tasks": {"running": pull.tasks.running(), "panics": pull.tasks.panics()},
    })
}

/// Refreshes the gauges that mirror live state, then encodes every metric.
fn metrics(pull: &PullThrough, pins: &PinKeeper) -> Response<ResponseBody> {
    let metrics = &pull.metrics;
    for (state, count) in pins.count_by_state() {
        metrics
            .pins
            .get_or_create(&crate::metrics::PinStateLabels {
                state: state.to_owned(),
            })
            .set(count);
    }
    for (registry, upstreams) in pull.registries.all() {
        for client in upstreams.clients() {
            let open =
                client.health().breaker().state != crate::upstream::breaker::BreakerState::Closed;
            let labels = crate::metrics::UpstreamLabels {
                registry: registry.to_owned(),
                upstream: client.name().to_owned(),
            };
            metrics
                .breaker_open
                .get_or_create(&labels)
                .set(i64::from(open));
            let quota = client.health().quota().snapshot();
            if let Some(remaining) = quota.remaining {
                let remaining = i64::try_from(remaining).unwrap_or(i64::MAX);
                metrics
                    .ratelimit_remaining
                    .get_or_create(&labels)
                    .set(remaining);
            }
            if let Some(limit) = quota.limit {
                let limit = i64::try_from(limit).unwrap_or(i64::MAX);
                metrics.ratelimit_limit.get_or_create(&labels).set(limit);
            }
            // Asked, not read from the snapshot: a window that passed is logged as left.
            let in_reserve = client.health().in_reserve();
            metrics
                .ratelimit_reserve
                .get_or_create(&labels)
                .set(i64::from(in_reserve));
            crate::metrics::catch_up(
                &metrics.ratelimit_reserve_entries.get_or_create(&labels),
                quota.reserve_entries,
            );
            metrics
                .upstream_suspect
                .get_or_create(&labels)
                .set(i64::from(client.health().is_suspect()));
        }
    }
    let usage = pull.cache.usage();
    metrics.cache_bytes.set(usage.committed as i64);
    metrics
        .cache_limit_bytes
        .set(usage.limit.unwrap_or(0) as i64);
    crate::metrics::catch_up(&metrics.cache_evictions, usage.evictions);
    crate::metrics::catch_up(&metrics.cache_write_failures, pull.cache.write_failures());
    crate::metrics::catch_up(&metrics.task_panics, pull.tasks.panics());
    if let Some(shared) = &pull.shared {
        shared.mirror_into(metrics);
    }
    let body = metrics.encode();
    or_500(
        builder(StatusCode::OK)
            .header(
                CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
            .header(CONTENT_LENGTH, body.len())
            .body(full_body(body)),
    )
}

fn json(status: StatusCode, value: &serde_json::Value) -> Response<ResponseBody> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    or_500(
        builder(status)
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, body.len())
            .body(full_body(body)),
    )
}

/// The last hour, with the cache's counts caught up to this instant.
fn history(pull: &PullThrough) -> serde_json::Value {
    pull.catch_up_history();
    let listed: Vec<(String, String)> = every_upstream(pull)
        .into_iter()
        .map(|(registry, client)| (registry, client.name().to_owned()))
        .collect();
    pull.metrics.history.snapshot(&listed)
}

/// The dashboard: one self-contained page (HTML, CSS, script; no external asset) drawn
/// from `/admin/history`, `/admin/upstreams` and `/admin/pins`.
const DASHBOARD_PAGE: &str = include_str!("admin/dashboard.html");

fn dashboard() -> Response<ResponseBody> {
    or_500(
        builder(StatusCode::OK)
            .header(CONTENT_TYPE, "text/html; charset=utf-8")
            .header(CONTENT_LENGTH, DASHBOARD_PAGE.len())
            .header(http::header::CACHE_CONTROL, "no-cache")
            .header(http::header::X_CONTENT_TYPE_OPTIONS, "nosniff")
            .header(http::header::X_FRAME_OPTIONS, "DENY")
            // Its own inline script and style, and requests to this listener only.
            .header(
                http::header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'",
            )
            .body(full_body(DASHBOARD_PAGE)),
    )
}

fn text(status: StatusCode, body: &'static str) -> Response<ResponseBody> {
    or_500(
        builder(status)
            .header(CONTENT_TYPE, "text/plain")
            .header(CONTENT_LENGTH, body.len())
            .body(full_body(body)),
    )
}

fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response<ResponseBody> {
    let body = code.body(message);
    or_500(
        builder(status)
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, body.len())
            .body(full_body(body)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_admin_token() {
        let access = AdminAccess {
            hosts: vec!["ferry.internal".into()],
            token: Some("s3cr3t-admin-token".into()),
        };
        let shown = format!("{access:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("ferry.internal"));
    }
}
