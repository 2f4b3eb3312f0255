//! The cookie-store mode over HTTP: two instances share a session with no server state.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use herd_session::{Key, SessionLayer, SigningKeys};

use common::{Browser, app, keys, serve};

fn layer(keys: SigningKeys) -> SessionLayer {
    SessionLayer::cookie_store_builder(keys)
        .secure(false)
        .build()
        .unwrap()
}

#[tokio::test]
async fn two_instances_share_a_cookie_session() {
    let a = serve(app(layer(keys()), Arc::default())).await;
    let b = serve(app(layer(keys()), Arc::default())).await;
    let browser = Browser::new();

    assert_eq!(browser.post(a, "/count").await.body, "1");
    let first = browser.cookie_value().unwrap();
    assert!(
        !first.contains("\"n\""),
        "content must be encrypted: {first}"
    );
    assert_eq!(browser.post(b, "/count").await.body, "2");
    browser.post(a, "/login/ann").await;
    assert_eq!(browser.get(b, "/whoami").await.body, "ann");

    let header = browser
        .post(b, "/count")
        .await
        .set_cookie_header("sid")
        .unwrap()
        .to_owned();
    for part in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=1800"] {
        assert!(header.contains(part), "{header} lacks {part}");
    }

    let logout = browser.post(a, "/logout").await;
    assert!(
        logout
            .set_cookie_header("sid")
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(browser.get(b, "/whoami").await.body, "anonymous");
}

#[tokio::test]
async fn forged_or_foreign_cookies_give_a_fresh_session() {
    let addr = serve(app(layer(keys()), Arc::default())).await;
    let foreign = serve(app(
        layer(SigningKeys::new(Key::from_bytes(&[9; 32]).unwrap())),
        Arc::default(),
    ))
    .await;
    let outsider = Browser::new();
    outsider.post(foreign, "/login/eve").await;
    let foreign_cookie = outsider.cookie_value().unwrap();

    for forged in [foreign_cookie, "garbage".to_owned(), "AAAA".repeat(30)] {
        let mallory = Browser::new();
        mallory.set_cookie_value(Some(forged.clone()));
        let reply = mallory.get(addr, "/whoami").await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "anonymous"),
            "{forged}"
        );
        assert_eq!(
            reply.cookie("sid").as_deref(),
            Some(""),
            "the bad cookie is cleared"
        );
    }
}

#[tokio::test]
async fn a_session_too_big_for_a_cookie_is_a_typed_error() {
    let addr = serve(app(layer(keys()), Arc::default())).await;
    let browser = Browser::new();
    let reply = browser.post(addr, "/big/a/3000").await;
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(
        reply.body.contains("over the limit of 4096"),
        "{}",
        reply.body
    );
    assert!(reply.set_cookies.is_empty());
    assert_eq!(browser.post(addr, "/big/a/1000").await.status, 200);
}
