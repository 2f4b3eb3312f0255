//! The session as the home of the read-your-writes token: a `TokenSlot` in every request
//! (what herd-db-router's `ReadYourWritesLayer::session` uses), tokens that only move forward,
//! and under concurrent saves the higher token survives whichever request saves last.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use herd_context::TokenSlot;
use herd_session::{MemoryStore, Session, SessionError};

use common::{Browser, Holds, scenarios, serve};

async fn advance(
    State(holds): State<Arc<Holds>>,
    session: Session,
    Path((name, lsn)): Path<(String, String)>,
) -> Result<&'static str, SessionError> {
    let (loaded, release) = holds.pair(&name).await;
    session.read_your_writes::<u64>().await?;
    loaded.notify_one();
    release.notified().await;
    session
        .advance_read_your_writes(lsn.parse::<u64>().unwrap())
        .await?;
    Ok("advanced")
}

async fn token(session: Session) -> Result<String, SessionError> {
    Ok(session
        .read_your_writes::<u64>()
        .await?
        .map_or("none".into(), |token| token.to_string()))
}

async fn start(session: Session) -> Result<&'static str, SessionError> {
    session.insert("user", "ann").await?;
    Ok("started")
}

#[tokio::test]
async fn higher_token_survives_concurrent_saves() {
    let holds = Arc::new(Holds::default());
    let router = Router::new()
        .route("/start", post(start))
        .route("/advance/{name}/{lsn}", post(advance))
        .route("/token", get(token))
        .with_state(holds.clone())
        .layer(scenarios::builder(&MemoryStore::new()).build().unwrap());
    let addr = serve(router).await;
    let browser = Browser::new();
    browser.post(addr, "/start").await;
    assert_eq!(browser.get(addr, "/token").await.body, "none");

    // The request with the higher LSN saves first; the lower one saves last and must not win.
    let high = {
        let b = browser.clone();
        tokio::spawn(async move { b.post(addr, "/advance/high/20480").await })
    };
    holds.wait_loaded("high").await;
    let low = {
        let b = browser.clone();
        tokio::spawn(async move { b.post(addr, "/advance/low/768").await })
    };
    holds.wait_loaded("low").await;
    holds.release("high").await;
    assert_eq!(high.await.unwrap().status, 200);
    holds.release("low").await;
    assert_eq!(low.await.unwrap().status, 200);

    let stored = browser.get(addr, "/token").await.body;
    assert_eq!(stored, "20480");
}

/// What a read-your-writes layer does through the request's slot: read the token, advance it.
async fn through_slot(
    Extension(slot): Extension<TokenSlot>,
    Path(token): Path<u64>,
) -> Result<String, String> {
    let before = slot.load().await.map_err(|e| e.to_string())?;
    slot.advance(token).await.map_err(|e| e.to_string())?;
    Ok(format!("{before:?}"))
}

async fn legacy(session: Session) -> Result<&'static str, SessionError> {
    // What an older version stored: PostgreSQL's LSN text.
    session
        .insert(herd_session::READ_YOUR_WRITES_FIELD, "1/0")
        .await?;
    Ok("stored")
}

#[tokio::test]
async fn every_request_carries_a_token_slot_backed_by_its_session() {
    let router = Router::new()
        .route("/slot/{token}", post(through_slot))
        .route("/legacy", post(legacy))
        .route("/token", get(token))
        .layer(scenarios::builder(&MemoryStore::new()).build().unwrap());
    let addr = serve(router).await;
    let browser = Browser::new();
    assert_eq!(browser.post(addr, "/slot/100").await.body, "None");
    assert_eq!(browser.post(addr, "/slot/50").await.body, "Some(100)");
    assert_eq!(
        browser.get(addr, "/token").await.body,
        "100",
        "a lower token does not replace a higher one"
    );
    browser.post(addr, "/legacy").await;
    assert_eq!(
        browser.get(addr, "/token").await.body,
        (1_u64 << 32).to_string(),
        "an older version's text token is read"
    );
    // Another browser has its own session, hence its own token.
    assert_eq!(Browser::new().post(addr, "/slot/7").await.body, "None");
}
