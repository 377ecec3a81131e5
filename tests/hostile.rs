//! Hostile upstreams and clients (issue 11): every body ferry reads into memory has a cap,
//! and reading stops there; slow, silent, idle and never-reading clients lose their
//! connections, and connections beyond the caps are refused.

use crate::support::get_body;
use crate::support::get_url;
use crate::support::{FakeRegistry, Fault, TestProxy, pseudo_random_bytes, put_image};
use ferry::upstream::auth::MAX_TOKEN_BODY_BYTES;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A token server that never stops sending: ferry stops reading at the cap and fails the
/// attempt, instead of buffering until the timeout (the attack grew RSS by ~80 MB every 4 s).
#[tokio::test]
async fn an_endless_token_body_is_not_read_past_the_cap() {
    let upstream = FakeRegistry::start().await;
    put_image(&[&upstream], "private/app", "v1", 40);
    upstream.require_token("tok", None);
    upstream.fault("/token", Fault::EndlessBody);
    let proxy = TestProxy::start(&[&upstream]).await;
    let response = get_url(proxy.url("/v2/private/app/manifests/v1")).await;
    assert!(response.status().is_server_error(), "{}", response.status());
    let body = response.text().await.unwrap();
    assert!(body.contains("token body longer than"), "{body}");
    // What the fake pushed is what ferry read plus socket buffers (a few MiB at most).
    let sent = upstream.endless_bytes_sent();
    assert!(
        sent < 16 * 1024 * 1024,
        "ferry read {sent} bytes of a token body capped at {MAX_TOKEN_BODY_BYTES}"
    );
}

/// Reads from a raw connection until the server closes it; the elapsed time, or `None` if it
/// is still open after `within`.
async fn closed_within(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<Duration> {
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 64 * 1024];
    let drained = tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    drained.ok().map(|()| started.elapsed())
}

fn proxy_addr(proxy: &TestProxy) -> std::net::SocketAddr {
    proxy.server.as_ref().unwrap().addr
}

/// Slowloris: a client that trickles a request's headers, or opens a connection and sends
/// nothing, loses the connection after `client_header_timeout` (before: held for ever).
#[tokio::test]
async fn slow_or_silent_clients_are_closed_after_the_header_timeout() {
    let upstream = FakeRegistry::start().await;
    let proxy = TestProxy::start_with(&[&upstream], |c| {
        c.client_limits.header_timeout = Duration::from_millis(800);
    })
    .await;
    let mut silent = TcpStream::connect(proxy_addr(&proxy)).await.unwrap();
    let mut trickle = TcpStream::connect(proxy_addr(&proxy)).await.unwrap();
    trickle
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let trickler = tokio::spawn(async move {
        // One header byte every 200 ms: never a complete request.
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if trickle.write_all(b"X").await.is_err() {
                return true;
            }
        }
        false
    });
    assert!(
        closed_within(&mut silent, Duration::from_secs(5))
            .await
            .is_some(),
        "a silent connection is still open after 5 s"
    );
    assert!(
        trickler.await.unwrap(),
        "a trickling request is still accepted after 8 s"
    );
    // A kept-alive connection between requests is closed after the same time.
    let mut kept = TcpStream::connect(proxy_addr(&proxy)).await.unwrap();
    kept.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let closed = closed_within(&mut kept, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "an idle keep-alive connection is held");
}

/// The connection cap: beyond `max_connections` (here also the per-client share, as every
/// test client is 127.0.0.1) a new connection is closed at once; a freed place is reused.
#[tokio::test]
async fn connections_beyond_the_cap_are_refused_and_places_are_freed() {
    let upstream = FakeRegistry::start().await;
    // Every held connection is serving a request (its upstream never answers), so none
    // may be shed: a fourth is refused.
    upstream.fault("/manifests/", Fault::HangBeforeHeaders);
    let proxy = TestProxy::start_with(&[&upstream], |c| {
        c.client_limits.max_connections = 3;
        c.client_limits.max_connections_per_client = 3;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(proxy_addr(&proxy)).await.unwrap();
        stream
            .write_all(b"GET /v2/org/app/manifests/v1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut refused = TcpStream::connect(proxy_addr(&proxy)).await.unwrap();
    let _ = refused
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(
        closed_within(&mut refused, Duration::from_secs(2))
            .await
            .is_some(),
        "a fourth connection was served"
    );
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let response = get_url(proxy.url("/v2/")).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
}

/// Attackers on the good clients' own address (issue 19, item 11): connections that trickle
/// a header byte at a time fill the per-client cap, and a real pull from that address still
/// gets in, because the connection that waited longest without a request is shed for it
/// (before, every new connection was refused until the header deadline freed places).
#[tokio::test]
async fn a_pull_gets_in_past_slow_connections_from_its_own_address() {
    let upstream = FakeRegistry::start().await;
    put_image(&[&upstream], "org/app", "v1", 93);
    let proxy = TestProxy::start_with(&[&upstream], |c| {
        c.client_limits.max_connections_per_client = 16;
        c.client_limits.header_timeout = Duration::from_secs(30);
    })
    .await;
    let mut slow = Vec::new();
    for _ in 0..16 {
        let mut stream = TcpStream::connect(proxy_addr(&proxy)).await.unwrap();
        stream.write_all(b"G").await.unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..4 {
        let response = get_url(proxy.url("/v2/org/app/manifests/v1")).await;
        assert_eq!(response.status(), reqwest::StatusCode::OK);
    }
    // The pulls' connections took the places of the oldest slow ones, and only theirs.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut closed = Vec::new();
    for stream in slow.iter_mut() {
        closed.push(
            closed_within(stream, Duration::from_millis(100))
                .await
                .is_some(),
        );
    }
    let shed = closed.iter().filter(|c| **c).count();
    assert!(shed >= 1, "{closed:?}");
    assert!(
        closed.iter().take(shed).all(|c| *c),
        "the oldest were shed first: {closed:?}"
    );
}

/// A client that asks for a blob and never reads the body loses its connection after
/// `client_idle_timeout`, and its place goes to the next client.
#[tokio::test]
async fn a_client_that_never_reads_is_closed_after_the_idle_timeout() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.put_blob(crate::support::pseudo_random_bytes(32 * 1024 * 1024, 41));
    let proxy = TestProxy::start_with(&[&upstream], |c| {
        c.client_limits.idle_timeout = Duration::from_millis(800);
        c.client_limits.max_connections = 1;
        c.client_limits.max_connections_per_client = 1;
    })
    .await;
    // Cache it first, so the stalled download is a plain hit.
    let warm = get_url(proxy.url(&format!("/v2/a/b/blobs/{digest}"))).await;
    assert_eq!(warm.bytes().await.unwrap().len(), 32 * 1024 * 1024);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut stalled = TcpStream::connect(proxy_addr(&proxy)).await.unwrap();
    stalled
        .write_all(format!("GET /v2/a/b/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Never read; the socket buffers fill and ferry's writes stall. Its place is taken now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = TcpStream::connect(proxy_addr(&proxy)).await.unwrap();
    assert!(
        closed_within(&mut refused, Duration::from_secs(2))
            .await
            .is_some()
    );
    // After the idle timeout the stalled connection is gone and the place is free again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let response = get_url(proxy.url("/v2/")).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    drop(stalled);
}

/// The idle timeout counts only time ferry waits on the client: a download that pauses while
/// ferry waits on its upstream keeps its connection past the idle timeout.
#[tokio::test]
async fn a_pause_on_the_upstream_side_does_not_count_as_client_idleness() {
    let upstream = FakeRegistry::start().await;
    let blob = crate::support::pseudo_random_bytes(3 * 1024 * 1024, 42);
    let digest = upstream.put_blob(blob.clone());
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    upstream.fault(
        "/blobs/",
        Fault::PauseMidBody {
            after: 2 * 1024 * 1024,
            release: release.clone(),
        },
    );
    let proxy = TestProxy::start_with(&[&upstream], |c| {
        c.client_limits.idle_timeout = Duration::from_millis(500);
        c.upstreams[0].body_idle_timeout = Duration::from_secs(10);
    })
    .await;
    let download = tokio::spawn({
        let url = proxy.url(&format!("/v2/a/b/blobs/{digest}"));
        async move { get_url(url).await.bytes().await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    release.notify_one();
    let body = download
        .await
        .unwrap()
        .expect("the download survives the pause");
    assert!(body == blob);
}

/// Sends one raw HTTP/1.1 request to `addr` and returns the status line's code.
async fn raw_status(addr: std::net::SocketAddr, request: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

/// A web page cannot drive the admin API: a cross-site POST (it carries `Origin`) and a
/// request through DNS rebinding (a Host that is the attacker's name) are refused, while
/// tools that name the server by address, localhost or a configured name get through.
#[tokio::test]
async fn the_admin_api_refuses_browsers_and_foreign_host_names() {
    let upstream = FakeRegistry::start().await;
    let proxy = TestProxy::start_with(&[&upstream], |c| {
        c.admin_hosts = vec!["ferry-admin.ops.svc".into()];
    })
    .await;
    let admin = proxy.server.as_ref().unwrap().admin_addr.unwrap();
    let name = upstream.addr.to_string();
    let drain = |host: &str, extra: &str| {
        format!(
            "POST /admin/upstreams/{name}/drain HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    let cross_site = drain(&admin.to_string(), "Origin: https://evil.example\r\n");
    assert_eq!(raw_status(admin, &cross_site).await, 403);
    assert_eq!(
        raw_status(admin, &drain("evil.example:5005", "")).await,
        403
    );
    let status = "GET /status HTTP/1.1\r\nHost: rebound.evil.example\r\nConnection: close\r\n\r\n";
    assert_eq!(raw_status(admin, status).await, 403);
    // The content types a web form can send are refused even with a good Host.
    for form in [
        "text/plain",
        "application/x-www-form-urlencoded; charset=utf-8",
        "multipart/form-data; boundary=x",
    ] {
        let request = drain(&admin.to_string(), &format!("Content-Type: {form}\r\n"));
        assert_eq!(raw_status(admin, &request).await, 403, "{form}");
    }
    assert_eq!(
        proxy.admin_status().await["upstreams"][0]["drained"],
        false,
        "nothing was drained"
    );
    for host in [
        admin.to_string(),
        format!("localhost:{}", admin.port()),
        format!("[::1]:{}", admin.port()),
        "ferry-admin.ops.svc:5005".to_owned(),
    ] {
        let status = format!("GET /status HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(raw_status(admin, &status).await, 200, "{host}");
    }
    assert_eq!(raw_status(admin, &drain(&admin.to_string(), "")).await, 200);
    assert_eq!(proxy.admin_status().await["upstreams"][0]["drained"], true);
}

/// A registry whose challenge names a token realm on another host never gets the upstream's
/// credentials sent there (with `direct_registries`, any client could pick such a registry).
#[tokio::test]
async fn credentials_are_never_sent_to_a_realm_on_another_host() {
    let registry = FakeRegistry::start().await;
    let elsewhere = FakeRegistry::start_at("127.0.0.2:0").await;
    put_image(&[&registry], "private/app", "v1", 43);
    registry.require_token("tok", Some(("ci", "s3cret")));
    registry.token_realm(&format!("{}/token", elsewhere.url()));
    let proxy = TestProxy::start_with(&[&registry], |c| {
        c.upstreams[0].credentials = Some(ferry::config::Credentials::fixed("ci", "s3cret"));
    })
    .await;
    let response = get_url(proxy.url("/v2/private/app/manifests/v1")).await;
    assert!(response.status().is_server_error());
    let body = response.text().await.unwrap();
    assert!(body.contains("credentials are not sent"), "{body}");
    assert!(
        elsewhere
            .requests()
            .iter()
            .all(|r| !r.headers.contains_key("authorization")),
        "the password went to another host"
    );
}

/// A name the upstream would reject (registry + name over the spec's 255 characters) is
/// refused by ferry with NAME_INVALID before any upstream sees it, so clients cannot open an
/// upstream's breaker with such names (distribution answers them with 500).
#[tokio::test]
async fn over_long_names_are_refused_before_reaching_an_upstream() {
    let upstream = FakeRegistry::start().await;
    let proxy = TestProxy::start(&[&upstream]).await;
    let name = format!("{}/{}", "a".repeat(120), "b".repeat(129));
    assert_eq!(
        name.len(),
        250,
        "valid on its own; too long with a registry host"
    );
    for _ in 0..10 {
        let response = get_url(proxy.url(&format!("/v2/{name}/manifests/latest"))).await;
        assert_eq!(response.status(), reqwest::StatusCode::BAD_REQUEST);
        assert!(response.text().await.unwrap().contains("NAME_INVALID"));
    }
    assert_eq!(upstream.hits("/manifests/"), 0);
    assert_eq!(
        proxy.admin_status().await["upstreams"][0]["breaker"]["state"],
        "closed"
    );
}

/// A small blob whose only upstream sends wrong bytes gets a clear 502 naming the digest
/// error, not a 200 whose body is cut at zero bytes.
#[tokio::test]
async fn a_small_wrong_blob_is_a_clear_502_before_any_header() {
    let upstream = FakeRegistry::start().await;
    let digest = upstream.put_blob(crate::support::pseudo_random_bytes(100_000, 44));
    upstream.fault("/blobs/", Fault::FlipByte { at: 10 });
    let proxy = TestProxy::start(&[&upstream]).await;
    let response = get_url(proxy.url(&format!("/v2/a/b/blobs/{digest}"))).await;
    assert_eq!(response.status(), reqwest::StatusCode::BAD_GATEWAY);
    let body = response.text().await.unwrap();
    assert!(body.contains("digest_mismatch"), "{body}");
    assert!(proxy.rehash_cache().is_empty());
}

#[tokio::test]
async fn an_announced_length_is_a_claim_not_a_reason_to_evict() {
    let upstream = FakeRegistry::start().await;
    let kept = pseudo_random_bytes(200_000, 470);
    let kept_digest = upstream.put_blob(kept.clone());
    let claimed = pseudo_random_bytes(250_000, 471);
    let claimed_digest = upstream.put_blob(claimed.clone());
    let too_big = pseudo_random_bytes(400_000, 472);
    let too_big_digest = upstream.put_blob(too_big.clone());
    let proxy = TestProxy::start_with(&[&upstream], |c| c.cache_size = Some(300_000)).await;
    let fetch = |digest: &ferry::oci::Digest| {
        let url = proxy.url(&format!("/v2/claim/test/blobs/{digest}"));
        async move { get_url(url).await.bytes().await }
    };
    assert!(fetch(&kept_digest).await.unwrap()[..] == kept[..]);
    let kept_hits = upstream.hits(&format!("/blobs/{kept_digest}"));

    // 250 kB announced, 100 bytes sent: the claim alone must not evict what is cached.
    upstream.fault(
        &format!("/blobs/{claimed_digest}"),
        Fault::Truncate { after: 100 },
    );
    let _ = fetch(&claimed_digest).await;
    assert!(fetch(&kept_digest).await.unwrap()[..] == kept[..]);
    assert_eq!(
        upstream.hits(&format!("/blobs/{kept_digest}")),
        kept_hits,
        "the cached blob was evicted for a length that never arrived"
    );

    // Larger than the whole cache: served, not cached, nothing evicted.
    assert!(fetch(&too_big_digest).await.unwrap()[..] == too_big[..]);
    assert!(fetch(&kept_digest).await.unwrap()[..] == kept[..]);
    assert_eq!(upstream.hits(&format!("/blobs/{kept_digest}")), kept_hits);
    let cached = proxy.rehash_cache();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(cached.iter().all(|(_, ok)| *ok));
}

/// A listener that counts the TCP connections made to it (and closes them).
async fn counting_listener() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    (addr, accepted)
}

/// SSRF through direct registries: a client names a registry, so it could name an
/// internal service. Loopback (a literal address, or a name that resolves there) is refused
/// before any connection is made; with `direct_registries_private_addresses` it is reached.
#[tokio::test]
async fn direct_registries_never_connect_to_internal_addresses() {
    let (internal, accepted) = counting_listener().await;
    let hub = FakeRegistry::start().await;
    let by_address = format!("127.0.0.1:{}", internal.port());
    let by_name = format!("localhost:{}", internal.port());
    let proxy = TestProxy::start_with(&[&hub], |c| {
        c.direct = Some(crate::support::direct_to(
            &[&by_address, &by_name],
            None,
            false,
        ))
    })
    .await;
    for registry in [&by_address, &by_name] {
        for path in [
            "manifests/v1",
            "blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            let response =
                get_url(proxy.url(&format!("/v2/internal/app/{path}?ns={registry}"))).await;
            assert_eq!(response.status(), 503, "{registry} {path}");
            let body = response.text().await.unwrap();
            assert!(
                body.contains("refused to connect") && body.contains("public address"),
                "{registry}: {body}"
            );
        }
    }
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "ferry connected to a loopback service a client named"
    );

    // The same registries, allowed to reach private addresses: ferry does connect.
    let permissive = TestProxy::start_with(&[&hub], |c| {
        c.direct = Some(crate::support::direct_to(&[&by_address], None, true))
    })
    .await;
    let response =
        get_url(permissive.url(&format!("/v2/internal/app/manifests/v1?ns={by_address}"))).await;
    assert!(response.status().is_server_error());
    assert!(accepted.load(std::sync::atomic::Ordering::SeqCst) > 0);
}

/// One repository the primary answers with 500 (a client's request it chokes on) must not
/// open the primary's breaker while it serves other requests: otherwise a client could
/// send every other pull to a secondary that may lack the image.
#[tokio::test]
async fn errors_for_one_repository_do_not_open_a_serving_upstreams_breaker() {
    let primary = FakeRegistry::start().await;
    let secondary = FakeRegistry::start().await;
    put_image(&[&primary], "good/app", "v1", 46);
    primary.fault("/v2/bad/", Fault::Status(500));
    let proxy = TestProxy::start(&[&primary, &secondary]).await;
    let good = get_url(proxy.url("/v2/good/app/manifests/v1")).await;
    assert_eq!(good.status(), 200);
    // Twice the breaker's threshold of requests the primary fails, in a burst.
    for i in 0..10 {
        let response = get_url(proxy.url(&format!("/v2/bad/app/manifests/t{i}"))).await;
        assert!(!response.status().is_success());
    }
    let status = proxy.admin_status().await;
    assert_eq!(
        status["upstreams"][0]["breaker"]["state"], "closed",
        "{status}"
    );
    // The primary still serves the good repository (the secondary does not have it).
    let blob = primary.put_blob(pseudo_random_bytes(5000, 47));
    let response = crate::support::get_blob(&proxy, "good/app", &blob, None).await;
    assert_eq!(response.status(), 200);
}

/// With an admin token configured, drain and undrain need it; reads stay open (probes and
/// scrapers carry no token).
#[tokio::test]
async fn an_admin_token_guards_drain_and_undrain() {
    let upstream = FakeRegistry::start().await;
    let proxy = TestProxy::start_with(&[&upstream], |c| {
        c.admin_token = Some(ferry::config::AdminToken("s3cret-admin".into()));
    })
    .await;
    let admin = proxy.server.as_ref().unwrap().admin_addr.unwrap();
    let name = upstream.addr.to_string();
    let drain = |authorization: &str| {
        format!(
            "POST /admin/upstreams/{name}/drain HTTP/1.1\r\nHost: {admin}\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    assert_eq!(raw_status(admin, &drain("")).await, 401);
    assert_eq!(
        raw_status(admin, &drain("Authorization: Bearer s3cret-admiN\r\n")).await,
        401
    );
    assert_eq!(
        raw_status(admin, &drain("Authorization: Basic czNjcmV0LWFkbWlu\r\n")).await,
        401
    );
    assert_eq!(proxy.admin_status().await["upstreams"][0]["drained"], false);
    for read in ["/status", "/metrics", "/healthz", "/admin/upstreams"] {
        let request = format!("GET {read} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
        assert_eq!(raw_status(admin, &request).await, 200, "{read}");
    }
    assert_eq!(
        raw_status(admin, &drain("Authorization: Bearer s3cret-admin\r\n")).await,
        200
    );
    assert_eq!(proxy.admin_status().await["upstreams"][0]["drained"], true);
}

/// Every direct registry a client names adds metric series; closing the least recently
/// used one (at most 64 are open) must drop its series, or /metrics grows without bound.
#[tokio::test]
async fn metrics_forget_closed_direct_registries() {
    // Ports nothing listens on: each registry fails fast with "connection refused".
    let mut registries = Vec::new();
    for _ in 0..80 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        registries.push(format!(
            "127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        ));
    }
    let patterns: Vec<&str> = registries.iter().map(String::as_str).collect();
    let hub = FakeRegistry::start().await;
    let proxy = TestProxy::start_with(&[&hub], |c| {
        c.direct = Some(crate::support::direct_to(&patterns, None, true))
    })
    .await;
    for registry in &registries {
        let response =
            get_url(proxy.url(&format!("/v2/some/app/manifests/v1?ns={registry}"))).await;
        assert!(response.status().is_server_error(), "{registry}");
    }
    let metrics = get_url(format!(
        "http://{}/metrics",
        proxy.server.as_ref().unwrap().admin_addr.unwrap()
    ))
    .await
    .text()
    .await
    .unwrap();
    let named: std::collections::BTreeSet<&str> = registries
        .iter()
        .map(String::as_str)
        .filter(|r| metrics.contains(&format!("registry=\"{r}\"")))
        .collect();
    assert_eq!(
        named.len(),
        ferry::upstream::registries::MAX_DIRECT_REGISTRIES,
        "series of closed registries stayed"
    );
    assert!(
        !named.contains(registries[0].as_str()),
        "the first one was closed"
    );
    assert!(named.contains(registries[79].as_str()));
}

/// A body of unannounced length can be larger than the whole cache: it evicts at most half
/// the cache before it is served uncached, while a small one is still cached.
#[tokio::test]
async fn a_blob_of_unannounced_length_evicts_at_most_half_the_cache() {
    let upstream = FakeRegistry::start().await;
    let older = pseudo_random_bytes(100_000, 480);
    let older_digest = upstream.put_blob(older.clone());
    let newer = pseudo_random_bytes(100_000, 481);
    let newer_digest = upstream.put_blob(newer.clone());
    let small = pseudo_random_bytes(60_000, 482);
    let small_digest = upstream.put_blob(small.clone());
    let huge = pseudo_random_bytes(900_000, 483);
    let huge_digest = upstream.put_blob(huge.clone());
    upstream.fault(&format!("/blobs/{small_digest}"), Fault::NoContentLength);
    upstream.fault(&format!("/blobs/{huge_digest}"), Fault::NoContentLength);
    let proxy = TestProxy::start_with(&[&upstream], |c| c.cache_size = Some(300_000)).await;
    let fetch = |digest: &ferry::oci::Digest| {
        let url = proxy.url(&format!("/v2/chunked/test/blobs/{digest}"));
        async move { get_body(url).await }
    };
    assert!(fetch(&older_digest).await[..] == older[..]);
    assert!(fetch(&newer_digest).await[..] == newer[..]);
    assert!(
        fetch(&huge_digest).await[..] == huge[..],
        "served whole, uncached"
    );
    let hits = upstream.hits(&format!("/blobs/{newer_digest}"));
    assert!(fetch(&newer_digest).await[..] == newer[..]);
    assert_eq!(
        upstream.hits(&format!("/blobs/{newer_digest}")),
        hits,
        "the unannounced body evicted the whole cache"
    );
    assert!(fetch(&small_digest).await[..] == small[..]);
    let cached: Vec<_> = proxy.rehash_cache();
    assert!(cached.iter().all(|(_, ok)| *ok));
    assert!(
        cached
            .iter()
            .any(|(path, _)| path.to_string_lossy().contains(small_digest.hex())),
        "a small body of unannounced length is still cached: {cached:?}"
    );
    assert!(
        !cached
            .iter()
            .any(|(path, _)| path.to_string_lossy().contains(huge_digest.hex()))
    );
}

/// Clients choose the method, so it must not choose metric series: made-up methods (and a
/// 6,000-character one) all count as `other`, beside GET and HEAD (issue 19, item 4).
#[tokio::test]
async fn made_up_methods_do_not_make_metric_series() {
    let upstream = FakeRegistry::start().await;
    let proxy = TestProxy::start(&[&upstream]).await;
    let http = crate::support::client();
    let mut methods: Vec<String> = (0..20).map(|i| format!("MADEUP{i}")).collect();
    methods.push("X".repeat(6000));
    for method in &methods {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        // Any answer (or a refused request line) will do; only the metrics matter here.
        let _ = http.request(method, proxy.url("/v2/")).send().await;
    }
    let _ = http.get(proxy.url("/v2/")).send().await;
    let admin = proxy.server.as_ref().unwrap().admin_addr.unwrap();
    let text = http
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut labels: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("ferry_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    labels.sort_unstable();
    labels.dedup();
    assert!(labels.contains(&"GET"), "{text}");
    assert!(
        labels.iter().all(|l| ["GET", "HEAD", "other"].contains(l)),
        "method labels: {labels:?}"
    );
}

/// An upstream cannot rename a digest's media type: the body's own `mediaType` decides, for
/// this request and for every later client of the digest (issue 19, item 2).
#[tokio::test]
async fn a_hostile_content_type_does_not_change_a_manifest_media_type() {
    let upstream = FakeRegistry::start().await;
    let (_, _, _) = put_image(&[&upstream], "org/app", "v1", 77);
    let body = get_body(upstream.url() + "/v2/org/app/manifests/v1").await;
    let digest = ferry::oci::Digest::sha256_of(&body);
    // The same bytes, served again under a made-up vendor type.
    upstream.put_manifest(
        "org/app",
        Some("evil"),
        "application/vnd.evil+json",
        String::from_utf8(body.to_vec()).unwrap(),
    );
    let proxy = TestProxy::start(&[&upstream]).await;
    for path in [
        "/v2/org/app/manifests/evil".to_owned(),
        format!("/v2/org/app/manifests/{digest}"),
    ] {
        let response = get_url(proxy.url(&path)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            ferry::oci::media_type::OCI_MANIFEST,
            "{path}"
        );
    }
}

/// A registry that answers every referrers request with the same large index, announced in
/// full and then sent slowly (`chunk` bytes every `delay`); `/v2/` answers 200.
async fn dripping_referrers_registry(index: bytes::Bytes, chunk: usize, delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let index = index.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&request);
                if !head.contains("/referrers/") {
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                        )
                        .await;
                    return;
                }
                let header = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    ferry::oci::media_type::OCI_INDEX,
                    index.len()
                );
                if stream.write_all(header.as_bytes()).await.is_err() {
                    return;
                }
                for part in index.chunks(chunk) {
                    tokio::time::sleep(delay).await;
                    if stream.write_all(part).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    format!("http://{addr}")
}

/// Large referrers answers share one memory budget (issue 19, item 3): beyond it a request
/// waits briefly, then gets 503, and is not held against the upstream; pulls have their own
/// half of the budget and keep working meanwhile. (Before, every request buffered its list.)
#[tokio::test]
async fn large_lists_share_a_memory_budget_and_pulls_keep_their_half() {
    let registry = FakeRegistry::start().await;
    put_image(&[&registry], "org/app", "v1", 91);
    // About 3.9 MiB of well-formed descriptors, sent over about three seconds.
    let descriptor = format!(
        r#"{{"mediaType":"{}","digest":"sha256:{}","size":1,"annotations":{{"n":"{}"}}}}"#,
        ferry::oci::media_type::OCI_MANIFEST,
        "ab".repeat(32),
        "x".repeat(3900)
    );
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{}]}}"#,
        vec![descriptor.as_str(); 1000].join(",")
    );
    let lists =
        dripping_referrers_registry(index.into(), 64 * 1024, Duration::from_millis(50)).await;
    let proxy = TestProxy::start_urls(
        &[registry.url(), format!("lists.example={lists}")],
        tempfile::tempdir().unwrap(),
        |c| c.pool.memory = ferry::upstream::MemoryBudget::new(32 * 1024 * 1024),
    )
    .await;
    let asks: Vec<_> = (0..6u8)
        .map(|n| {
            let subject = ferry::oci::Digest::sha256_of(&[n]);
            let url = proxy.url(&format!("/v2/lists.example/org/app/referrers/{subject}"));
            tokio::spawn(async move { get_url(url).await.status().as_u16() })
        })
        .collect();
    // Meanwhile pulls go on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let pull = get_url(proxy.url("/v2/org/app/manifests/v1")).await;
        assert_eq!(pull.status(), 200);
    }
    let mut statuses = Vec::new();
    for ask in asks {
        statuses.push(ask.await.unwrap());
    }
    statuses.sort_unstable();
    assert!(statuses.contains(&200), "{statuses:?}");
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| [200, 503].contains(s)),
        "{statuses:?}"
    );
    // The upstream was not blamed for ferry's budget: its breaker is closed.
    let status = proxy.admin_status().await;
    let upstreams = status["upstreams"].as_array().unwrap();
    assert_eq!(upstreams.len(), 2, "{status}");
    assert!(
        upstreams
            .iter()
            .all(|u| u["failures"] == 0 && u["breaker"]["state"] == "closed"),
        "{status}"
    );
}

/// Identical tag-list and referrers requests at once make one upstream fetch (issue 19,
/// item 3): a burst of 16 is not 16 bodies in memory (before: one fetch each).
#[tokio::test]
async fn identical_list_requests_at_once_make_one_upstream_fetch() {
    let upstream = FakeRegistry::start().await;
    let (manifest, _, _) = put_image(&[&upstream], "org/app", "v1", 92);
    upstream.put_referrer(
        "org/app",
        &manifest.to_string(),
        &ferry::oci::Digest::sha256_of(b"sig").to_string(),
        "application/vnd.example.sig",
    );
    upstream.fault(
        "/tags/list",
        Fault::DelayHeaders(Duration::from_millis(400)),
    );
    upstream.fault(
        "/referrers/",
        Fault::DelayHeaders(Duration::from_millis(400)),
    );
    let proxy = TestProxy::start(&[&upstream]).await;
    for path in [
        "/v2/org/app/tags/list".to_owned(),
        format!("/v2/org/app/referrers/{manifest}"),
    ] {
        let asks: Vec<_> = (0..16)
            .map(|_| {
                let url = proxy.url(&path);
                tokio::spawn(async move {
                    let response = get_url(url).await;
                    (response.status().as_u16(), response.text().await.unwrap())
                })
            })
            .collect();
        let mut bodies = Vec::new();
        for ask in asks {
            let (status, body) = ask.await.unwrap();
            assert_eq!(status, 200, "{path}: {body}");
            bodies.push(body);
        }
        assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{path}");
        let suffix = path.trim_start_matches("/v2/org/app");
        let fetches = upstream
            .requests()
            .iter()
            .filter(|r| r.path.ends_with(suffix))
            .count();
        assert_eq!(fetches, 1, "{path}");
    }
}

/// Bytes of the files under `dir`, recursively.
fn bytes_under(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => bytes_under(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Referrers lists and tag records on disk count toward `cache_size` and are evicted like
/// blobs (issue 19, item 3: before, 8 random subjects left 36 MB that nothing removed).
#[tokio::test]
async fn referrers_and_tag_records_count_toward_the_cache_bound() {
    const LIMIT: u64 = 1024 * 1024;
    let upstream = FakeRegistry::start().await;
    let subjects: Vec<ferry::oci::Digest> = (0..16u8)
        .map(|n| ferry::oci::Digest::sha256_of(&[n]))
        .collect();
    for subject in &subjects {
        for n in 0..600u32 {
            let referrer = ferry::oci::Digest::sha256_of(&n.to_be_bytes());
            upstream.put_referrer(
                "org/app",
                &subject.to_string(),
                &referrer.to_string(),
                "application/vnd.example.sbom",
            );
        }
    }
    let proxy = TestProxy::start_with(&[&upstream], |c| c.cache_size = Some(LIMIT)).await;
    for subject in &subjects {
        let response = get_url(proxy.url(&format!("/v2/org/app/referrers/{subject}"))).await;
        assert_eq!(response.status(), 200);
    }
    let referrers_dir = proxy.cache_dir.path().join("referrers");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while bytes_under(&referrers_dir) > LIMIT && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let kept = bytes_under(&referrers_dir);
    assert!(
        kept <= LIMIT,
        "{kept} bytes of referrers lists kept under a {LIMIT}-byte bound"
    );
    assert!(
        kept > LIMIT / 2,
        "the most recent lists stay ({kept} bytes)"
    );
    // The newest list is still served from the cache with the upstream gone.
    upstream.stop();
    let last = subjects.last().unwrap();
    let response = get_url(proxy.url(&format!("/v2/org/app/referrers/{last}"))).await;
    assert_eq!(response.status(), 200);
}

/// Identical list requests that wait on a fetch that fails get its failure, rather than each
/// trying again in turn (8 waiters behind a silent upstream used to wait 8 header timeouts).
#[tokio::test]
async fn identical_list_requests_share_a_failed_fetch() {
    let upstream = FakeRegistry::start().await;
    let (manifest, _, _) = put_image(&[&upstream], "org/app", "v1", 94);
    upstream.fault("/tags/list", Fault::HangBeforeHeaders);
    upstream.fault("/referrers/", Fault::HangBeforeHeaders);
    let proxy = TestProxy::start(&[&upstream]).await;
    for path in [
        "/v2/org/app/tags/list".to_owned(),
        format!("/v2/org/app/referrers/{manifest}"),
    ] {
        let asks: Vec<_> = (0..8)
            .map(|_| {
                let url = proxy.url(&path);
                tokio::spawn(async move { get_url(url).await.status().as_u16() })
            })
            .collect();
        for ask in asks {
            let status = ask.await.unwrap();
            assert!(status >= 500, "{path}: {status}");
        }
        let suffix = path.trim_start_matches("/v2/org/app");
        let fetches = upstream
            .requests()
            .iter()
            .filter(|r| r.path.ends_with(suffix))
            .count();
        assert_eq!(fetches, 1, "{path}: one fetch for eight waiters");
    }
}
