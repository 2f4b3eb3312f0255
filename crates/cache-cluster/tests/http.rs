//! The HTTP response cache layer in front of a real axum server on 127.0.0.1, called over TCP.
#![cfg(feature = "http")]
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
                .max_body_size(1024),
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
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
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
