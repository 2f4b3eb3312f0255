//! The read-your-writes token field (feature `db-router`): stored as herd-db-router's `Lsn`,
//! and under concurrent saves the higher token survives whichever request saves last.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use herd_db_router::Lsn;
use herd_session::{MemoryStore, Session, SessionError};

use common::{Browser, Holds, scenarios, serve};

async fn advance(
    State(holds): State<Arc<Holds>>,
    session: Session,
    Path((name, lsn)): Path<(String, String)>,
) -> Result<&'static str, SessionError> {
    let (loaded, release) = holds.pair(&name).await;
    session.read_your_writes().await?;
    loaded.notify_one();
    release.notified().await;
    session
        .advance_read_your_writes(lsn.replace('-', "/").parse().unwrap())
        .await?;
    Ok("advanced")
}

async fn token(session: Session) -> Result<String, SessionError> {
    Ok(session
        .read_your_writes()
        .await?
        .map_or("none".into(), |lsn| lsn.to_string()))
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
        tokio::spawn(async move { b.post(addr, "/advance/high/0-5000").await })
    };
    holds.wait_loaded("high").await;
    let low = {
        let b = browser.clone();
        tokio::spawn(async move { b.post(addr, "/advance/low/0-300").await })
    };
    holds.wait_loaded("low").await;
    holds.release("high").await;
    assert_eq!(high.await.unwrap().status, 200);
    holds.release("low").await;
    assert_eq!(low.await.unwrap().status, 200);

    let stored = browser.get(addr, "/token").await.body;
    assert_eq!(stored.parse::<Lsn>().unwrap(), Lsn::new(0x5000));
}
