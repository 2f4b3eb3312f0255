//! The layer over the in-process `MemoryStore`: every shared scenario, plus what only needs
//! one process (laziness, key rotation).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use herd_session::{
    ConflictRule, Keep, Key, MemoryStore, SaveOutcome, SessionLayer, SessionRecord, SessionStore,
    SigningKeys, StoreError, StoreKey, Stored,
};

use common::scenarios;
use common::{Browser, app, keys, serve};

#[tokio::test]
async fn two_instances_share_sessions() {
    scenarios::two_instances_share_sessions(MemoryStore::new()).await;
}

#[tokio::test]
async fn logout_race_keeps_session_gone() {
    scenarios::logout_race_keeps_session_gone(MemoryStore::new()).await;
}

#[tokio::test]
async fn concurrent_requests_merge_fields() {
    scenarios::concurrent_requests_merge_fields(MemoryStore::new()).await;
}

#[tokio::test]
async fn same_field_conflict_last_write_wins() {
    scenarios::same_field_conflict_follows_rule(MemoryStore::new(), ConflictRule::LastWriteWins)
        .await;
}

#[tokio::test]
async fn same_field_conflict_first_write_wins() {
    scenarios::same_field_conflict_follows_rule(MemoryStore::new(), ConflictRule::FirstWriteWins)
        .await;
}

/// A field's merge rule wins over the layer's conflict rule, which still decides where the
/// field's rule has no opinion.
#[tokio::test]
async fn a_field_merge_rule_overrides_the_conflict_rule() {
    let store = MemoryStore::new();
    let first = "\"from-first\"";
    scenarios::same_field_conflict_settled_as(
        store.clone(),
        |b| {
            b.conflict_rule(ConflictRule::LastWriteWins)
                .merge_rule("x", ConflictRule::FirstWriteWins)
        },
        first,
    )
    .await;
    // A closure sees both JSON texts: here it keeps whichever sorts first.
    let smaller = |ours: Option<&str>, stored: Option<&str>| {
        Some(if ours? <= stored? {
            Keep::Ours
        } else {
            Keep::Stored
        })
    };
    scenarios::same_field_conflict_settled_as(store.clone(), |b| b.merge_rule("x", smaller), first)
        .await;
    // No opinion: the conflict rule decides.
    scenarios::same_field_conflict_settled_as(
        store,
        |b| b.merge_rule("x", |_: Option<&str>, _: Option<&str>| None),
        "\"from-second\"",
    )
    .await;
}

#[tokio::test]
async fn forged_cookie_gives_new_session() {
    scenarios::forged_cookie_gives_new_session(MemoryStore::new()).await;
}

#[tokio::test]
async fn idle_expiry_rolling_touch_and_absolute_timeout() {
    scenarios::idle_expiry_rolling_touch_and_absolute_timeout(MemoryStore::new()).await;
}

#[tokio::test]
async fn cookie_attributes_on_real_responses() {
    scenarios::cookie_attributes_on_real_responses(MemoryStore::new()).await;
}

#[tokio::test]
async fn oversized_data_is_rejected() {
    scenarios::oversized_data_is_rejected(MemoryStore::new()).await;
}

/// A real `MemoryStore` that counts the calls reaching it.
#[derive(Debug, Clone, Default)]
struct CountingStore {
    inner: MemoryStore,
    loads: Arc<AtomicUsize>,
    writes: Arc<AtomicUsize>,
}

#[async_trait]
impl SessionStore for CountingStore {
    fn name(&self) -> &'static str {
        "counting-memory"
    }

    async fn create(
        &self,
        key: &StoreKey,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.create(key, record, ttl).await
    }

    async fn load(&self, key: &StoreKey) -> Result<Option<Stored>, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.inner.load(key).await
    }

    async fn save(
        &self,
        key: &StoreKey,
        version: u64,
        record: Arc<SessionRecord>,
        ttl: Duration,
    ) -> Result<SaveOutcome, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.save(key, version, record, ttl).await
    }

    async fn delete(&self, key: &StoreKey) -> Result<(), StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.delete(key).await
    }

    async fn touch(&self, key: &StoreKey, ttl: Duration) -> Result<bool, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.touch(key, ttl).await
    }
}

/// The store is read only when a handler touches the session, written only on change, and
/// anonymous sessions without data are never stored.
#[tokio::test]
async fn store_is_used_lazily() {
    let store = CountingStore::default();
    let addr = serve(app(
        scenarios::builder(&store).build().unwrap(),
        Arc::default(),
    ))
    .await;
    let counts = || {
        (
            store.loads.load(Ordering::SeqCst),
            store.writes.load(Ordering::SeqCst),
        )
    };

    let anonymous = Browser::new();
    assert_eq!(anonymous.get(addr, "/whoami").await.body, "anonymous");
    assert_eq!(
        counts(),
        (0, 0),
        "no cookie: nothing to load, nothing to store"
    );

    let browser = Browser::new();
    browser.post(addr, "/count").await;
    assert_eq!(counts(), (0, 1), "first write creates");
    assert_eq!(browser.get(addr, "/untouched").await.status, 200);
    assert_eq!(
        counts(),
        (0, 1),
        "a handler that ignores the session costs nothing"
    );
    assert_eq!(browser.get(addr, "/peek").await.body, "1");
    assert_eq!(counts(), (1, 1), "a read loads once and writes nothing");
    browser.post(addr, "/count").await;
    assert_eq!(counts(), (2, 2), "a change loads and saves once");
    assert_eq!(store.inner.len(), 1);
}

/// A cookie signed with a retired key still works after rotation and is re-signed with the
/// newest key; once the old key is dropped the old cookie no longer works.
#[tokio::test]
async fn signing_key_rotation() {
    let store = MemoryStore::new();
    let old = Key::from_bytes(&[1; 32]).unwrap();
    let new = Key::from_bytes(&[2; 32]).unwrap();
    let layer = |keys| {
        SessionLayer::builder(store.clone(), keys)
            .secure(false)
            .build()
            .unwrap()
    };
    let before = serve(app(layer(SigningKeys::new(old.clone())), Arc::default())).await;
    let rotated = serve(app(
        layer(SigningKeys::with_rotation(vec![new.clone(), old]).unwrap()),
        Arc::default(),
    ))
    .await;
    let after = serve(app(layer(SigningKeys::new(new)), Arc::default())).await;

    let browser = Browser::new();
    browser.post(before, "/login/kim").await;
    let old_cookie = browser.cookie_value().unwrap();
    let reply = browser.get(rotated, "/whoami").await;
    assert_eq!(reply.body, "kim");
    let resigned = reply.cookie("sid").expect("re-signed with the newest key");
    assert_ne!(resigned, old_cookie);
    assert_eq!(
        resigned.split('.').next(),
        old_cookie.split('.').next(),
        "same id"
    );
    assert_eq!(browser.get(after, "/whoami").await.body, "kim");

    let stale = Browser::new();
    stale.set_cookie_value(Some(old_cookie));
    assert_eq!(stale.get(after, "/whoami").await.body, "anonymous");
    let _ = keys();
}

/// Without axum: a plain tower `service_fn` (hyper-style) finds the session in the request's
/// extensions, and the layer works with any body type that can carry its error text.
#[tokio::test]
async fn plain_tower_service_gets_the_session_as_an_extension() {
    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full};
    use tower::{Layer as _, ServiceExt as _};

    let layer = scenarios::builder(&MemoryStore::new()).build().unwrap();
    let service = layer.layer(tower::service_fn(
        |request: http::Request<Full<Bytes>>| async move {
            let session = request
                .extensions()
                .get::<herd_session::Session>()
                .cloned()
                .expect("the layer adds the session");
            let n: u64 = session.get("n").await.unwrap().unwrap_or(0) + 1;
            session.insert("n", n).await.unwrap();
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                n.to_string(),
            ))))
        },
    ));

    let first = service
        .clone()
        .oneshot(http::Request::new(Full::default()))
        .await
        .unwrap();
    let cookie = first.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let second = service
        .oneshot(
            http::Request::builder()
                .header("cookie", cookie)
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = second.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"2");
}
