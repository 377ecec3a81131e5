//! One function per endpoint: turns a routed, validated request into a call on the
//! pull-through flow and its answer into a response, logging one line per request.

use super::client_auth::{ClientAuth, Principal};
use super::response::{
    ResponseBody, builder, empty_body, error_response, full_body, full_body_holding, head_body,
    or_500,
};
use super::route::{self, Route};
use crate::cache::provenance::ContentKind;
use crate::error::FerryError;
use crate::oci::media_type::AcceptList;
use crate::oci::registry::canonical_registry;
use crate::oci::{ErrorCode, RepositoryName};
use crate::pull::manifest::DOCKER_CONTENT_DIGEST;
use crate::pull::{PullThrough, Source};
use http::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, ETAG, LINK, LOCATION, RANGE,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use std::sync::Arc;
use std::time::Instant;

pub(crate) async fn handle<B>(
    pull: Arc<PullThrough>,
    client_auth: Option<Arc<ClientAuth>>,
    request: Request<B>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let method = request.method().clone();
    // Logged with the query, so a line shows the registry containerd named with `?ns=`
    // (a clone shares the request's buffer; nothing is formatted unless a line is logged).
    let uri = request.uri().clone();
    let client = match &client_auth {
        None => None,
        Some(auth) => match auth.authenticate(request.headers()) {
            Some(principal) => Some(AuthenticatedClient { auth, principal }),
            None => {
                tracing::info!(%method, path = %uri, status = 401, "request refused: no valid client credentials");
                return unauthorized();
            }
        },
    };
    let (route_label, outcome) = match route::parse(uri.path()) {
        Ok(route) => (
            route.label(),
            dispatch(&pull, route, &request, client.as_ref()).await,
        ),
        Err(error) => ("invalid", Err(error)),
    };
    let head = method == Method::HEAD;
    let (response, source) = match outcome {
        Ok((response, source)) => (response, source.to_string()),
        Err(error) => {
            if matches!(
                error,
                FerryError::Upstreams(_) | FerryError::Cache(_) | FerryError::MidStream(_)
            ) {
                tracing::warn!(%method, path = %uri, error = %error, "request failed");
            }
            (error_response(&error, head), "-".to_owned())
        }
    };
    pull.metrics
        .requests
        .get_or_create(&crate::metrics::RequestLabels {
            route: route_label.to_owned(),
            method: method_label(&method).to_owned(),
            status: response.status().as_u16(),
        })
        .inc();
    tracing::info!(
        %method,
        path = %uri,
        route = route_label,
        status = response.status().as_u16(),
        source = %source,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// A request's client, when client authentication is on.
struct AuthenticatedClient<'a> {
    auth: &'a ClientAuth,
    principal: Principal,
}

/// What an endpoint needs of its request: the pull flow, the client (when authenticated),
/// the request itself, and whether it is a HEAD.
struct Call<'a, B> {
    pull: &'a Arc<PullThrough>,
    client: Option<&'a AuthenticatedClient<'a>>,
    request: &'a Request<B>,
    head: bool,
}

type Answer = Result<(Response<ResponseBody>, Source), FerryError>;

/// Refuses what a read-only cache does not serve, then hands the route to its endpoint.
async fn dispatch<B>(
    pull: &Arc<PullThrough>,
    route: Route,
    request: &Request<B>,
    client: Option<&AuthenticatedClient<'_>>,
) -> Answer {
    let method = request.method();
    let head = method == Method::HEAD;
    if route == Route::Upload || !(method == Method::GET || head) {
        return Err(FerryError::client(
            ErrorCode::Unsupported,
            format!("{method} is not supported: ferry is a read-only pull-through cache"),
        ));
    }
    let call = Call {
        pull,
        client,
        request,
        head,
    };
    match route {
        Route::Ping => Ok(ping(head)),
        Route::Manifest { name, reference } => manifest(call, name, reference).await,
        Route::Blob { name, digest } => blob(call, name, digest).await,
        Route::TagList { name } => tag_list(call, name).await,
        Route::Referrers { name, subject } => referrers(call, name, subject).await,
        Route::Upload => unreachable_upload(),
        Route::PinSet => pin_set(&call),
    }
}

/// `GET /ferry/v1/pins`: the images this ferry pins, for build hosts that follow it
/// (`pins_from`). A client limited to some registries sees only their pins. Until this ferry
/// knows its pin set, 503: an empty list would make its hosts let go of their pins.
fn pin_set<B>(call: &Call<'_, B>) -> Answer {
    let Some(images) = call.pull.cache.pinned_images() else {
        // Not the client's mistake, nor a failure: this ferry is still starting.
        let body = ErrorCode::Unavailable.body("this ferry has not read its pin set yet");
        let response = builder(StatusCode::SERVICE_UNAVAILABLE)
            .header(CONTENT_TYPE, "application/json")
            .header(http::header::RETRY_AFTER, 5)
            .header(CONTENT_LENGTH, body.len())
            .body(full_body(body));
        return Ok((or_500(response), Source::Cache));
    };
    let pins: Vec<serde_json::Value> = images
        .into_iter()
        .filter(|(registry, _)| {
            call.client
                .is_none_or(|client| client.auth.may_pull(&client.principal, registry))
        })
        .map(|(_, image)| serde_json::json!({ "image": image }))
        .collect();
    let body = serde_json::json!({ "pins": pins }).to_string();
    let response = builder(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, body.len())
        .body(if call.head {
            head_body()
        } else {
            full_body(body)
        });
    Ok((or_500(response), Source::Cache))
}

/// `GET /v2/`: the API version check.
fn ping(head: bool) -> (Response<ResponseBody>, Source) {
    let response = builder(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, 2)
        .body(if head { head_body() } else { full_body("{}") });
    (or_500(response), Source::Cache)
}

/// `GET /v2/<name>/manifests/<reference>`.
async fn manifest<B>(
    call: Call<'_, B>,
    name: RepositoryName,
    reference: crate::oci::Reference,
) -> Answer {
    let accept = AcceptList::from_headers(call.request.headers());
    let (registry, name) = origin(call.pull, call.client, name, call.request.uri().query())?;
    if let crate::oci::Reference::Digest(digest) = &reference {
        confirm_provenance(
            call.pull,
            call.client,
            &registry,
            &name,
            ContentKind::Manifest,
            digest,
        )
        .await?;
    }
    let answer = call
        .pull
        .manifest(&registry, &name, &reference, &accept)
        .await?;
    let manifest = answer.manifest;
    count_cache_use(call.pull, "manifest", &answer.source);
    if !call.head {
        served_bytes(call.pull, &answer.source).inc_by(manifest.body.len() as u64);
    }
    let response = builder(StatusCode::OK)
        .header(CONTENT_TYPE, manifest.media_type.as_str())
        .header(DOCKER_CONTENT_DIGEST, manifest.digest.to_string())
        .header(ETAG, format!("\"{}\"", manifest.digest))
        .header(CONTENT_LENGTH, manifest.body.len())
        .body(if call.head {
            head_body()
        } else {
            full_body(manifest.body)
        });
    Ok((or_500(response), answer.source))
}

/// `GET /v2/<name>/blobs/<digest>`, with `Range`; a redirect to the shared store when it is
/// configured to hand out blobs itself.
async fn blob<B>(call: Call<'_, B>, name: RepositoryName, digest: crate::oci::Digest) -> Answer {
    let range = call
        .request
        .headers()
        .get(RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(super::range::parse_range);
    let (registry, name) = origin(call.pull, call.client, name, call.request.uri().query())?;
    confirm_provenance(
        call.pull,
        call.client,
        &registry,
        &name,
        ContentKind::Blob,
        &digest,
    )
    .await?;
    if !call.head
        && let Some(location) = call.pull.blob_redirect(&digest).await
    {
        // The store holds it: the bytes go from there, not through this replica.
        let response = builder(StatusCode::TEMPORARY_REDIRECT)
            .header(LOCATION, location)
            .header(DOCKER_CONTENT_DIGEST, digest.to_string())
            .header(CONTENT_LENGTH, 0)
            .body(empty_body());
        return Ok((or_500(response), Source::SharedStore));
    }
    let answer = call
        .pull
        .blob(&registry, &name, &digest, range, call.head)
        .await?;
    let status = if answer.range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut response = builder(status)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(DOCKER_CONTENT_DIGEST, answer.digest.to_string())
        .header(ETAG, format!("\"{}\"", answer.digest))
        .header(ACCEPT_RANGES, "bytes");
    match (answer.range, answer.size) {
        (Some((first, last)), Some(size)) => {
            response = response
                .header(CONTENT_RANGE, format!("bytes {first}-{last}/{size}"))
                .header(CONTENT_LENGTH, last - first + 1);
        }
        (None, Some(size)) => response = response.header(CONTENT_LENGTH, size),
        _ => {}
    }
    count_cache_use(call.pull, "blob", &answer.source);
    let body = match answer.body {
        Some(stream) if !call.head => {
            use futures_util::TryStreamExt;
            let counter = served_bytes(call.pull, &answer.source);
            let counted = stream.inspect_ok(move |chunk| {
                counter.inc_by(chunk.len() as u64);
            });
            StreamBody::new(counted.map_ok(hyper::body::Frame::data)).boxed_unsync()
        }
        _ => head_body(),
    };
    Ok((or_500(response.body(body)), answer.source))
}

/// `GET /v2/<name>/tags/list`, paged with the upstream's `Link`.
async fn tag_list<B>(call: Call<'_, B>, name: RepositoryName) -> Answer {
    let (registry, name) = origin(call.pull, call.client, name, call.request.uri().query())?;
    let answer = call
        .pull
        .tag_list(&registry, &name, call.request.uri().query())
        .await?;
    let mut response = builder(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json")
        .header(CONTENT_LENGTH, answer.body.len());
    if let Some(next) = &answer.next_page {
        response = response.header(
            LINK,
            next_tag_page_link(call.request.uri(), &registry, next),
        );
    }
    let body = if call.head {
        head_body()
    } else {
        full_body_holding(answer.body, answer.lease)
    };
    Ok((or_500(response.body(body)), answer.source))
}

/// `GET /v2/<name>/referrers/<digest>`, with `artifactType` filtering.
async fn referrers<B>(
    call: Call<'_, B>,
    name: RepositoryName,
    subject: crate::oci::Digest,
) -> Answer {
    let filter = crate::pull::referrers::artifact_type_filter(call.request.uri().query())?;
    let (registry, name) = origin(call.pull, call.client, name, call.request.uri().query())?;
    let answer = call
        .pull
        .referrers(&registry, &name, &subject, filter)
        .await?;
    let mut response = builder(StatusCode::OK)
        .header(CONTENT_TYPE, crate::oci::media_type::OCI_INDEX)
        .header(CONTENT_LENGTH, answer.body.len());
    if answer.filtered {
        response = response.header(crate::pull::referrers::OCI_FILTERS_APPLIED, "artifactType");
    }
    let body = if call.head {
        head_body()
    } else {
        full_body_holding(answer.body, answer.lease)
    };
    Ok((or_500(response.body(body)), answer.source))
}

/// The `Link` to a tag list's next page, in ferry's namespace: the path the client asked
/// (so a `/v2/<registry>/...` prefix stays), the upstream's `n`/`last`, and `ns` when the
/// client named the registry that way. Never another host.
fn next_tag_page_link(uri: &http::Uri, registry: &str, next_query: &str) -> String {
    let used_ns = uri
        .query()
        .is_some_and(|q| q.split('&').any(|pair| pair.starts_with("ns=")));
    let ns = if used_ns {
        format!("&ns={registry}")
    } else {
        String::new()
    };
    format!("<{}?{next_query}{ns}>; rel=\"next\"", uri.path())
}

/// 401 with a Basic challenge, so clients send their configured credentials.
fn unauthorized() -> Response<ResponseBody> {
    let body = ErrorCode::Unauthorized
        .body("authentication required: this ferry only serves known clients");
    or_500(
        builder(StatusCode::UNAUTHORIZED)
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, body.len())
            .header(
                http::header::WWW_AUTHENTICATE,
                format!("Basic realm=\"{}\"", super::client_auth::REALM),
            )
            .body(full_body(body)),
    )
}

fn count_cache_use(pull: &PullThrough, kind: &str, source: &Source) {
    let labels = crate::metrics::CacheLabels {
        kind: kind.to_owned(),
    };
    if matches!(source, Source::Cache | Source::StaleCache) {
        pull.metrics.cache_hits.get_or_create(&labels).inc();
    } else {
        pull.metrics.cache_misses.get_or_create(&labels).inc();
    }
}

/// The bytes-served counter for where an answer came from.
fn served_bytes(
    pull: &PullThrough,
    source: &Source,
) -> prometheus_client::metrics::counter::Counter {
    let source = match source {
        Source::Cache | Source::StaleCache => "cache",
        Source::Upstream(_) | Source::SharedStore => "upstream",
    };
    pull.metrics
        .served_bytes
        .get_or_create(&crate::metrics::SourceLabels {
            source: source.to_owned(),
        })
        .clone()
}

/// For a client limited by `client_access`: content by digest only when one of its
/// registries served or confirms it (tags are kept per registry, so they need no check).
async fn confirm_provenance(
    pull: &PullThrough,
    client: Option<&AuthenticatedClient<'_>>,
    registry: &str,
    name: &RepositoryName,
    kind: ContentKind,
    digest: &crate::oci::Digest,
) -> Result<(), FerryError> {
    let Some(allowed) = client.and_then(|c| c.auth.allowed_registries(&c.principal)) else {
        return Ok(());
    };
    pull.confirm_provenance(registry, name, kind, digest, allowed)
        .await
}

/// Which registry a request is for, and the repository name within it: a leading
/// `<registry-host>/` path component naming a configured registry (or, when the request has
/// no `ns`, a direct registry), else containerd's `?ns=<registry>`, else the default
/// registry. Docker Hub's single-component names are `library/<name>`. Nothing is opened or
/// fetched here: access rules are checked first.
fn origin(
    pull: &PullThrough,
    client: Option<&AuthenticatedClient<'_>>,
    name: RepositoryName,
    query: Option<&str>,
) -> Result<(String, RepositoryName), FerryError> {
    let ns = query.and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == "ns")
            .map(|(_, value)| canonical_registry(value))
    });
    let prefix = name
        .as_str()
        .split_once('/')
        .map(|(first, rest)| (canonical_registry(first), rest))
        .filter(|(first, _)| {
            first.contains('.')
                && (pull.registries.is_configured(first)
                    || (ns.is_none() && pull.registries.knows(first)))
        });
    let (registry, name) = match prefix {
        Some((first, rest)) => {
            let rest = RepositoryName::parse(rest)
                .map_err(|e| FerryError::client(ErrorCode::NameInvalid, e.to_string()))?;
            (first, rest)
        }
        None => {
            let registry = ns.unwrap_or_else(|| pull.registries.default_registry().to_owned());
            (registry, name)
        }
    };
    // Resolve before any cache or upstream work, so an unknown registry is a clear 404.
    let registry = match pull.registries.resolve(&registry) {
        Some(resolved) => resolved,
        None => {
            pull.upstreams_for(&registry)?;
            registry
        }
    };
    if let Some(client) = client
        && !client.auth.may_pull(&client.principal, &registry)
    {
        return Err(FerryError::client(
            ErrorCode::Denied,
            format!("{} may not pull from registry {registry}", client.principal),
        ));
    }
    let name = if registry == crate::oci::registry::DOCKER_HUB {
        name.with_docker_hub_library_prefix()
    } else {
        name
    };
    // The distribution spec bounds the full reference name (registry host + "/" + name) at
    // 255 characters; registries answer longer ones with errors (distribution: 500) that
    // would otherwise count toward their breakers.
    let full_length = registry.len() + 1 + name.as_str().len();
    if full_length > crate::oci::name::MAX_NAME_LEN {
        return Err(FerryError::client(
            ErrorCode::NameInvalid,
            format!(
                "{registry}/{name} is {full_length} characters; the limit for registry and repository together is {}",
                crate::oci::name::MAX_NAME_LEN
            ),
        ));
    }
    Ok((registry, name))
}

/// Uploads are rejected before the match; kept as a function so the match stays exhaustive
/// without a panic path.
fn unreachable_upload() -> Result<(Response<ResponseBody>, Source), FerryError> {
    Err(FerryError::client(
        ErrorCode::Unsupported,
        "pushing is not supported",
    ))
}

/// The `method` label of `ferry_requests_total`: a client picks the method, so anything but
/// the methods ferry serves counts as `other` (the label's values stay bounded).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}
