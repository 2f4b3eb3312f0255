//! The HTTP response cache layer in front of a real axum server on 127.0.0.1, called over TCP.
#![cfg(feature = "tower")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use herd_cache_cluster::http::HttpCacheLayer;
use herd_cache_cluster::{Backend, Cache};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type Hits = Arc<AtomicUsize>;

async fn counted(
    State(hits): State<Hits>,
    headers: HeaderMap,
    cache_control: &'static str,
) -> impl IntoResponse {
    let n = hits.fetch_add(1, Ordering::SeqCst);
    let lang = headers
        .get(header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_owned();
    (
        [(header::CACHE_CONTROL, cache_control)],
        format!("call {n} lang {lang}"),
    )
}

async fn start() -> (SocketAddr, Hits) {
    let hits: Hits = Arc::default();
    let cache = Cache::builder(Backend::memory())
        .namespace("http")
        .build()
        .await
        .unwrap();
    let app = Router::new()
        .route("/default", get(|s, h| counted(s, h, "")))
        .route("/no-store", get(|s, h| counted(s, h, "no-store")))
        .route("/private", get(|s, h| counted(s, h, "private, max-age=60")))
        .route("/short", get(|s, h| counted(s, h, "max-age=1")))
        .route(
            "/shared",
            get(|s, h| counted(s, h, "max-age=0, s-maxage=60")),
        )
        .route("/public", get(|s, h| counted(s, h, "public, max-age=60")))
        .route(
            "/cookie",
            get(|State(hits): State<Hits>| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                ([(header::SET_COOKIE, "session=abc")], "with cookie")
            }),
        )
        .route(
            "/vary",
            get(|s: State<Hits>, h: HeaderMap| async move {
                let body = counted(s, h, "max-age=60").await.into_response();
                let mut response = body.into_response();
                response
                    .headers_mut()
                    .insert(header::VARY, "Accept-Language".parse().unwrap());
                response
            }),
        )
        .route(
            "/vary-star",
            get(|s: State<Hits>, h: HeaderMap| async move {
                let mut response = counted(s, h, "max-age=60").await.into_response();
                response
                    .headers_mut()
                    .insert(header::VARY, "*".parse().unwrap());
                response
            }),
        )
        .route(
            "/big",
            get(|State(hits): State<Hits>| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                "x".repeat(2000)
            }),
        )
        .route(
            "/huge-max-age",
            get(|s, h| counted(s, h, "max-age=18446744073709551615")),
        )
        .route(
            "/overflowing-max-age",
            get(|s, h| counted(s, h, "public, max-age=99999999999999999999999999")),
        )
        .route(
            "/host",
            get(|State(hits): State<Hits>, headers: HeaderMap| async move {
                let n = hits.fetch_add(1, Ordering::SeqCst);
                let host = headers
                    .get(header::HOST)
                    .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
                format!("call {n} host {host:?}")
            }),
        )
        .route(
            "/tenant",
            get(|State(hits): State<Hits>, headers: HeaderMap| async move {
                let n = hits.fetch_add(1, Ordering::SeqCst);
                let tenant: Vec<u8> = headers
                    .get("x-tenant")
                    .map(|h| h.as_bytes().to_vec())
                    .unwrap_or_default();
                (
                    [(header::VARY, "X-Tenant")],
                    format!("call {n} tenant {tenant:?}"),
                )
            }),
        )
        .route(
            "/missing",
            get(|State(hits): State<Hits>| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                StatusCode::NOT_FOUND
            }),
        )
        .with_state(hits.clone())
        .layer(
            HttpCacheLayer::new(cache)
                .default_ttl(Duration::from_secs(60))
                .max_entry_size(1024),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

struct Reply {
    status: StatusCode,
    x_cache: Option<String>,
    age: Option<u64>,
    body: String,
}

async fn send(
    client: &Client<HttpConnector, Empty<Bytes>>,
    method: &str,
    url: String,
    headers: &[(&str, &str)],
) -> Reply {
    let headers: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(name, value)| (*name, value.as_bytes()))
        .collect();
    send_bytes(client, method, url, &headers).await
}

/// [`send`] with header values as bytes (not necessarily UTF-8).
async fn send_bytes(
    client: &Client<HttpConnector, Empty<Bytes>>,
    method: &str,
    url: String,
    headers: &[(&str, &[u8])],
) -> Reply {
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, http::HeaderValue::from_bytes(value).unwrap());
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let x_cache = header("x-cache");
    let age = header("age").map(|a| a.parse().unwrap());
    let body = String::from_utf8(
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    Reply {
        status,
        x_cache,
        age,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caches_by_cache_control_vary_and_limits() {
    let (addr, hits) = start().await;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let url = |path: &str| format!("http://{addr}{path}");
    let calls = || hits.load(Ordering::SeqCst);

    // Default TTL: MISS, then HIT with the same body and an Age.
    let first = send(&client, "GET", url("/default"), &[]).await;
    assert_eq!(
        (first.status, first.x_cache.as_deref()),
        (StatusCode::OK, Some("MISS"))
    );
    let second = send(&client, "GET", url("/default"), &[]).await;
    assert_eq!(second.x_cache.as_deref(), Some("HIT"));
    assert_eq!(second.body, first.body);
    assert_eq!(second.age, Some(0));
    assert_eq!(calls(), 1);
    // Query strings are part of the key; HEAD has its own entry.
    assert_eq!(
        send(&client, "GET", url("/default?page=2"), &[])
            .await
            .x_cache
            .as_deref(),
        Some("MISS")
    );
    assert_eq!(
        send(&client, "HEAD", url("/default"), &[])
            .await
            .x_cache
            .as_deref(),
        Some("MISS")
    );
    assert_eq!(
        send(&client, "HEAD", url("/default"), &[])
            .await
            .x_cache
            .as_deref(),
        Some("HIT")
    );
    assert_eq!(calls(), 3);

    // Request Cache-Control: no-cache skips the lookup but stores; no-store bypasses.
    let refreshed = send(
        &client,
        "GET",
        url("/default"),
        &[("cache-control", "no-cache")],
    )
    .await;
    assert_eq!(refreshed.x_cache.as_deref(), Some("MISS"));
    assert_eq!(
        send(&client, "GET", url("/default"), &[]).await.body,
        refreshed.body
    );
    assert_eq!(
        send(
            &client,
            "GET",
            url("/default"),
            &[("cache-control", "no-store")]
        )
        .await
        .x_cache,
        None
    );
    assert_eq!(calls(), 5);

    // Never stored: no-store, private, Set-Cookie, Vary: *, non-200, too big.
    for path in [
        "/no-store",
        "/private",
        "/cookie",
        "/vary-star",
        "/missing",
        "/big",
    ] {
        let before = calls();
        let a = send(&client, "GET", url(path), &[]).await;
        let b = send(&client, "GET", url(path), &[]).await;
        assert_eq!(calls(), before + 2, "{path} was served from the cache");
        assert_eq!(
            (a.x_cache.as_deref(), b.x_cache.as_deref()),
            (Some("MISS"), Some("MISS")),
            "{path}"
        );
    }

    // s-maxage wins over max-age=0 for a shared cache.
    send(&client, "GET", url("/shared"), &[]).await;
    assert_eq!(
        send(&client, "GET", url("/shared"), &[])
            .await
            .x_cache
            .as_deref(),
        Some("HIT")
    );

    // Authorization: only public (or s-maxage) responses are stored.
    let auth = [("authorization", "Bearer t")];
    let before = calls();
    send(&client, "GET", url("/default?auth"), &auth).await;
    send(&client, "GET", url("/default?auth"), &auth).await;
    assert_eq!(calls(), before + 2);
    send(&client, "GET", url("/public"), &auth).await;
    assert_eq!(
        send(&client, "GET", url("/public"), &auth)
            .await
            .x_cache
            .as_deref(),
        Some("HIT")
    );

    // Vary: one entry per Accept-Language.
    let en = send(&client, "GET", url("/vary"), &[("accept-language", "en")]).await;
    let fr = send(&client, "GET", url("/vary"), &[("accept-language", "fr")]).await;
    assert_eq!(fr.x_cache.as_deref(), Some("MISS"));
    assert!(fr.body.ends_with("lang fr"), "{}", fr.body);
    let en_again = send(&client, "GET", url("/vary"), &[("accept-language", "en")]).await;
    assert_eq!(
        (en_again.x_cache.as_deref(), en_again.body),
        (Some("HIT"), en.body)
    );

    // max-age=1 expires.
    send(&client, "GET", url("/short"), &[]).await;
    assert_eq!(
        send(&client, "GET", url("/short"), &[])
            .await
            .x_cache
            .as_deref(),
        Some("HIT")
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        send(&client, "GET", url("/short"), &[])
            .await
            .x_cache
            .as_deref(),
        Some("MISS")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_inputs_neither_panic_nor_mix_up_pages() {
    let (addr, hits) = start().await;
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let url = |path: &str| format!("http://{addr}{path}");
    let calls = || hits.load(Ordering::SeqCst);
    let x_cache = |reply: &Reply| reply.x_cache.clone().unwrap_or_default();

    // max-age at and past u64::MAX: stored (capped at max_ttl), no overflow, no panic.
    for path in ["/huge-max-age", "/overflowing-max-age"] {
        let first = send(&client, "GET", url(path), &[]).await;
        assert_eq!(
            (first.status, x_cache(&first).as_str()),
            (StatusCode::OK, "MISS")
        );
        let second = send(&client, "GET", url(path), &[]).await;
        assert_eq!(x_cache(&second), "HIT", "{path}");
        assert_eq!(second.body, first.body);
    }

    // A request with a Cookie: a response without `public` is not stored...
    let cookie = [("cookie", "sid=alice")];
    let before = calls();
    let alice = send(&client, "GET", url("/default?session"), &cookie).await;
    send(&client, "GET", url("/default?session"), &cookie).await;
    assert_eq!(calls(), before + 2, "a page for a cookie was stored");
    assert_eq!(x_cache(&alice), "MISS");
    // ...nor served to anyone else; and an anonymous request's page is not served to a
    // request with credentials (it may be a different page for a signed-in user).
    send(&client, "GET", url("/default?anonymous"), &[]).await;
    assert_eq!(
        x_cache(&send(&client, "GET", url("/default?anonymous"), &[]).await),
        "HIT"
    );
    let before = calls();
    let signed_in = send(&client, "GET", url("/default?anonymous"), &cookie).await;
    assert_eq!(
        (x_cache(&signed_in).as_str(), calls()),
        ("MISS", before + 1)
    );
    let bearer = [("authorization", "Bearer t")];
    let with_token = send(&client, "GET", url("/default?anonymous"), &bearer).await;
    assert_eq!(
        (x_cache(&with_token).as_str(), calls()),
        ("MISS", before + 2)
    );
    // `public` responses are shared, cookie or not.
    send(&client, "GET", url("/public?c"), &cookie).await;
    assert_eq!(
        x_cache(&send(&client, "GET", url("/public?c"), &[("cookie", "sid=bob")]).await),
        "HIT"
    );

    // Host is in the key.
    let a = send(&client, "GET", url("/host"), &[("host", "a.example")]).await;
    let b = send(&client, "GET", url("/host"), &[("host", "b.example")]).await;
    assert_eq!(x_cache(&b), "MISS", "{}", b.body);
    assert!(a.body.ends_with("\"a.example\")") && b.body.ends_with("\"b.example\")"));
    let a_again = send(&client, "GET", url("/host"), &[("host", "a.example")]).await;
    assert_eq!(
        (x_cache(&a_again), a_again.body),
        ("HIT".to_owned(), a.body)
    );

    // Vary values are keyed byte for byte: two invalid UTF-8 values are two pages.
    let ff = send_bytes(&client, "GET", url("/tenant"), &[("x-tenant", b"\xff")]).await;
    let fe = send_bytes(&client, "GET", url("/tenant"), &[("x-tenant", b"\xfe")]).await;
    assert_eq!(x_cache(&fe), "MISS");
    assert!(
        ff.body.ends_with("[255]") && fe.body.ends_with("[254]"),
        "{}",
        fe.body
    );
    let ff_again = send_bytes(&client, "GET", url("/tenant"), &[("x-tenant", b"\xff")]).await;
    assert_eq!(
        (x_cache(&ff_again), ff_again.body),
        ("HIT".to_owned(), ff.body)
    );

    // A key past max_key_size (4096 by default): served, never stored.
    let long = format!("/default?q={}", "a".repeat(5000));
    let before = calls();
    for _ in 0..2 {
        let reply = send(&client, "GET", url(&long), &[]).await;
        assert_eq!(
            (reply.status, x_cache(&reply).as_str()),
            (StatusCode::OK, "MISS")
        );
    }
    assert_eq!(calls(), before + 2);
}
