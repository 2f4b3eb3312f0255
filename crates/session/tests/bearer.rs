//! The cookie store's sealed session as an `Authorization: Bearer` token, for API clients:
//! round trip, key rotation, tampering (the cookie store's own cases) and expiry.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::routing::{get, post};
use herd_session::{
    ConfigError, Key, MemoryStore, SESSION_TOKEN_HEADER, Session, SessionError, SessionLayer,
    SigningKeys,
};
use http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

fn key(byte: u8) -> Key {
    Key::from_bytes(&[byte; 32]).unwrap()
}

async fn login(session: Session, Path(user): Path<String>) -> Result<&'static str, SessionError> {
    session.insert("user", user).await?;
    session.use_bearer_token().await?;
    Ok("welcome")
}

async fn whoami(session: Session) -> Result<String, SessionError> {
    Ok(session
        .get::<String>("user")
        .await?
        .unwrap_or_else(|| "anonymous".into()))
}

async fn count(session: Session) -> Result<String, SessionError> {
    let n: u64 = session.get("n").await?.unwrap_or(0) + 1;
    session.insert("n", n).await?;
    Ok(n.to_string())
}

async fn logout(session: Session) -> Result<&'static str, SessionError> {
    session.destroy().await?;
    Ok("bye")
}

fn app(keys: SigningKeys, idle: Duration) -> Router {
    let layer = SessionLayer::cookie_store_builder(keys)
        .bearer_tokens(true)
        .idle_timeout(idle)
        .absolute_timeout(Some(idle.max(Duration::from_secs(60))))
        .build()
        .unwrap();
    Router::new()
        .route("/login/{user}", post(login))
        .route("/whoami", get(whoami))
        .route("/count", post(count))
        .route("/logout", post(logout))
        .layer(layer)
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    body: String,
    /// The `x-session-token` header, if any.
    token: Option<String>,
    set_cookie: Option<String>,
    cache_control: Option<String>,
}

async fn call(app: &Router, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = |name: header::HeaderName| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let token = text(header::HeaderName::from_static(SESSION_TOKEN_HEADER));
    let set_cookie = text(header::SET_COOKIE);
    let cache_control = text(header::CACHE_CONTROL);
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        body: String::from_utf8(body.to_vec()).unwrap(),
        token,
        set_cookie,
        cache_control,
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn a_token_round_trips_between_instances_and_follows_changes() {
    // Two instances with the same keys: any of them opens any token.
    let a = app(SigningKeys::new(key(1)), HOUR);
    let b = app(SigningKeys::new(key(1)), HOUR);

    let reply = call(&a, "POST", "/login/ann", &[]).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.set_cookie.is_none(), "a bearer login sets no cookie");
    assert_eq!(reply.cache_control.as_deref(), Some("no-store"));
    let token = reply.token.expect("the log-in hands out a token");
    assert!(!token.contains("ann"), "the token is sealed: {token}");

    let reply = call(&b, "GET", "/whoami", &[("authorization", &bearer(&token))]).await;
    assert_eq!(reply.body, "ann");
    assert!(reply.token.is_none(), "unchanged and not due: no new token");

    // A change comes back as a new token, which carries both fields.
    let reply = call(&b, "POST", "/count", &[("authorization", &bearer(&token))]).await;
    assert_eq!(reply.body, "1");
    let newer = reply
        .token
        .expect("a changed session comes back as a new token");
    assert!(reply.set_cookie.is_none());
    let reply = call(&a, "POST", "/count", &[("authorization", &bearer(&newer))]).await;
    assert_eq!(reply.body, "2");
    // The scheme is case-insensitive.
    let reply = call(
        &a,
        "GET",
        "/whoami",
        &[("authorization", &format!("bearer {newer}"))],
    )
    .await;
    assert_eq!(reply.body, "ann");

    // Log-out: an empty token tells the client to drop its own.
    let reply = call(&a, "POST", "/logout", &[("authorization", &bearer(&newer))]).await;
    assert_eq!(reply.token.as_deref(), Some(""));
    assert!(reply.set_cookie.is_none());

    // Cookie clients of the same layer keep using cookies.
    let reply = call(&a, "POST", "/count", &[]).await;
    assert!(reply.set_cookie.is_some() && reply.token.is_none());
}

#[tokio::test]
async fn tokens_survive_key_rotation_and_are_resealed_with_the_new_key() {
    let old = app(SigningKeys::new(key(1)), HOUR);
    let token = call(&old, "POST", "/login/ann", &[]).await.token.unwrap();

    let rotated_keys = SigningKeys::with_rotation(vec![key(2), key(1)]).unwrap();
    let rotated = app(rotated_keys, HOUR);
    let reply = call(
        &rotated,
        "GET",
        "/whoami",
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(
        reply.body, "ann",
        "a token sealed with the old key still opens"
    );

    let resealed = call(
        &rotated,
        "POST",
        "/count",
        &[("authorization", &bearer(&token))],
    )
    .await
    .token
    .unwrap();
    let new_only = app(SigningKeys::new(key(2)), HOUR);
    let reply = call(
        &new_only,
        "GET",
        "/whoami",
        &[("authorization", &bearer(&resealed))],
    )
    .await;
    assert_eq!(
        reply.body, "ann",
        "the new token is sealed with the newest key"
    );
    let reply = call(
        &new_only,
        "GET",
        "/whoami",
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(
        reply.body, "anonymous",
        "the old key is gone: its tokens no longer open"
    );
}

#[tokio::test]
async fn tampered_foreign_or_misused_tokens_are_a_fresh_session() {
    let a = app(SigningKeys::new(key(1)), HOUR);
    let token = call(&a, "POST", "/login/ann", &[]).await.token.unwrap();

    // One changed character anywhere: no session, and the client is told to drop it.
    for at in [0, token.len() / 2, token.len() - 2] {
        let mut bytes = token.clone().into_bytes();
        bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        let reply = call(
            &a,
            "GET",
            "/whoami",
            &[("authorization", &bearer(&tampered))],
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body, "anonymous", "tampered at {at}");
        assert_eq!(reply.token.as_deref(), Some(""), "tampered at {at}");
    }
    // Truncated, empty, garbage, huge: the same, never an error page.
    for junk in [&token[..token.len() / 2], "", "x", "%%%", &"A".repeat(8000)] {
        let reply = call(&a, "GET", "/whoami", &[("authorization", &bearer(junk))]).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (StatusCode::OK, "anonymous")
        );
    }
    // Sealed under other keys.
    let foreign = app(SigningKeys::new(key(9)), HOUR);
    let reply = call(
        &foreign,
        "GET",
        "/whoami",
        &[("authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(reply.body, "anonymous");
    // A token is not a cookie, and a cookie is not a token.
    let reply = call(
        &a,
        "GET",
        "/whoami",
        &[("cookie", &format!("__Host-sid={token}"))],
    )
    .await;
    assert_eq!(
        reply.body, "anonymous",
        "a bearer token was accepted as a cookie"
    );
    let cookie = call(&a, "POST", "/count", &[]).await.set_cookie.unwrap();
    let value = cookie
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();
    let reply = call(
        &a,
        "GET",
        "/whoami",
        &[("cookie", &format!("__Host-sid={value}"))],
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = call(&a, "POST", "/count", &[("authorization", &bearer(&value))]).await;
    assert_eq!(
        reply.body, "1",
        "a cookie value was accepted as a bearer token"
    );
    // Two bearer tokens: none is used (as with two session cookies).
    let request = Request::builder()
        .uri("/whoami")
        .header("authorization", bearer(&token))
        .header("authorization", bearer(&token))
        .body(Body::empty())
        .unwrap();
    let response = a.clone().oneshot(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"anonymous");
    // Another scheme is not a bearer token (and not an error).
    let reply = call(&a, "GET", "/whoami", &[("authorization", "Basic YW5uOnB3")]).await;
    assert_eq!(reply.body, "anonymous");
}

#[tokio::test]
async fn tokens_expire_with_the_idle_timeout() {
    let a = app(SigningKeys::new(key(1)), Duration::from_secs(1));
    let token = call(&a, "POST", "/login/ann", &[]).await.token.unwrap();
    let reply = call(&a, "GET", "/whoami", &[("authorization", &bearer(&token))]).await;
    assert_eq!(reply.body, "ann");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let reply = call(&a, "GET", "/whoami", &[("authorization", &bearer(&token))]).await;
    assert_eq!(reply.body, "anonymous", "an expired token still opened");
    assert_eq!(reply.token.as_deref(), Some(""));
}

#[test]
fn bearer_tokens_need_the_cookie_store() {
    let result = SessionLayer::builder(MemoryStore::new(), SigningKeys::new(key(1)))
        .bearer_tokens(true)
        .build();
    assert!(matches!(
        result,
        Err(ConfigError::InvalidConfig {
            field: "bearer_tokens",
            ..
        })
    ));
}
