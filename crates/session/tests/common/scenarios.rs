//! Behaviour every store must give, run against each real store by the test binaries.

use std::sync::Arc;
use std::time::Duration;

use herd_session::{
    ConflictRule, Key, SessionId, SessionLayer, SessionLayerBuilder, SessionStore, SigningKeys,
    TtlExtension,
};

use super::{Browser, Holds, app, keys, serve};

/// Test layers run over plain HTTP on 127.0.0.1, so the cookie cannot be Secure there.
pub fn builder<S: SessionStore + Clone>(store: &S) -> SessionLayerBuilder {
    SessionLayer::builder(store.clone(), keys()).secure(false)
}

/// The store key of the session a cookie value names.
pub fn store_key_of(cookie_value: &str) -> herd_session::StoreKey {
    let id_text = cookie_value.split('.').next().unwrap();
    SessionId::parse(id_text).unwrap().store_key()
}

/// Two app instances on one store: log in on A, B sees the session; `cycle_id` changes the
/// cookie and the old id no longer works; log-out on B ends it everywhere.
pub async fn two_instances_share_sessions<S: SessionStore + Clone>(store: S) {
    let holds = Arc::new(Holds::default());
    let a = serve(app(builder(&store).build().unwrap(), holds.clone())).await;
    let b = serve(app(builder(&store).build().unwrap(), holds)).await;
    let browser = Browser::new();

    assert_eq!(browser.post(a, "/count").await.body, "1");
    let anonymous_cookie = browser.cookie_value().expect("first write sets the cookie");
    assert_eq!(
        browser.get(b, "/peek").await.body,
        "1",
        "B must see A's session"
    );
    assert_eq!(browser.post(b, "/count").await.body, "2");

    let login = browser.post(a, "/login/ann").await;
    assert_eq!(login.status, 200);
    let logged_in_cookie = browser.cookie_value().unwrap();
    assert_ne!(
        logged_in_cookie, anonymous_cookie,
        "cycle_id must issue a new id"
    );
    assert_eq!(browser.get(b, "/whoami").await.body, "ann");
    assert_eq!(
        browser.get(b, "/peek").await.body,
        "2",
        "data moves with the new id"
    );

    // Someone holding the pre-login id (fixation) gets nothing.
    let attacker = Browser::new();
    attacker.set_cookie_value(Some(anonymous_cookie.clone()));
    assert_eq!(attacker.get(a, "/whoami").await.body, "anonymous");
    assert_eq!(attacker.get(b, "/peek").await.body, "none");
    assert!(
        store
            .load(&store_key_of(&anonymous_cookie))
            .await
            .unwrap()
            .is_none()
    );

    let logout = browser.post(b, "/logout").await;
    assert_eq!(logout.status, 200);
    let removal = logout
        .set_cookie_header("sid")
        .expect("logout clears the cookie");
    assert!(
        removal.starts_with("sid=;") && removal.contains("Max-Age=0"),
        "{removal}"
    );
    assert_eq!(browser.cookie_value(), None);

    // Replaying the logged-in cookie after log-out gets nothing either.
    let replay = Browser::new();
    replay.set_cookie_value(Some(logged_in_cookie.clone()));
    assert_eq!(replay.get(a, "/whoami").await.body, "anonymous");
    assert!(
        store
            .load(&store_key_of(&logged_in_cookie))
            .await
            .unwrap()
            .is_none()
    );
}

/// A request that loaded the session before log-out and saves after it must not bring the
/// session back.
pub async fn logout_race_keeps_session_gone<S: SessionStore + Clone>(store: S) {
    let holds = Arc::new(Holds::default());
    let a = serve(app(builder(&store).build().unwrap(), holds.clone())).await;
    let b = serve(app(builder(&store).build().unwrap(), holds.clone())).await;
    let browser = Browser::new();
    browser.post(a, "/login/bob").await;
    let cookie = browser.cookie_value().unwrap();

    let slow = {
        let browser = browser.clone();
        tokio::spawn(async move { browser.post(a, "/hold/race/late/1").await })
    };
    holds.wait_loaded("race").await;
    assert_eq!(browser.post(b, "/logout").await.status, 200);
    holds.release("race").await;
    let slow_reply = slow.await.unwrap();
    assert_eq!(slow_reply.status, 200);
    assert_eq!(
        slow_reply.cookie("sid"),
        None,
        "the late save must not set a cookie for the ended session"
    );

    assert!(
        store.load(&store_key_of(&cookie)).await.unwrap().is_none(),
        "session came back"
    );
    let replay = Browser::new();
    replay.set_cookie_value(Some(cookie));
    assert_eq!(replay.get(b, "/whoami").await.body, "anonymous");
    assert_eq!(replay.get(a, "/get/late").await.body, "none");
}

/// 50 concurrent requests, split over two instances, each set a different field: all land.
pub async fn concurrent_requests_merge_fields<S: SessionStore + Clone>(store: S) {
    let holds = Arc::new(Holds::default());
    let a = serve(app(builder(&store).build().unwrap(), holds.clone())).await;
    let b = serve(app(builder(&store).build().unwrap(), holds)).await;
    let browser = Browser::new();
    browser.post(a, "/count").await;
    let cookie = browser.cookie_value().unwrap();

    let requests: Vec<_> = (0..50)
        .map(|i| {
            let browser = browser.clone();
            let addr = if i % 2 == 0 { a } else { b };
            tokio::spawn(async move { browser.post(addr, &format!("/set/f{i:02}")).await })
        })
        .collect();
    for request in requests {
        let reply = request.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(
        browser.cookie_value().unwrap(),
        cookie,
        "the id must not change"
    );
    let fields = browser.get(b, "/fields").await.body;
    let mut expected: Vec<String> = (0..50).map(|i| format!("f{i:02}")).collect();
    expected.push("n".into());
    expected.sort();
    assert_eq!(fields, expected.join(","));
    let stored = store.load(&store_key_of(&cookie)).await.unwrap().unwrap();
    assert_eq!(stored.record.len(), 51);
    assert!(stored.version >= 51, "every save must bump the version");
}

/// Two requests change the same field: the configured rule decides who wins.
pub async fn same_field_conflict_follows_rule<S: SessionStore + Clone>(
    store: S,
    rule: ConflictRule,
) {
    let expected = match rule {
        ConflictRule::LastWriteWins => "\"from-second\"",
        ConflictRule::FirstWriteWins => "\"from-first\"",
    };
    same_field_conflict_settled_as(store, |b| b.conflict_rule(rule), expected).await;
}

/// Two requests change field `x` (the first to save writes `"from-first"`, the second
/// `"from-second"`) on a layer set up by `configure`: the stored value is `expected`.
pub async fn same_field_conflict_settled_as<S: SessionStore + Clone>(
    store: S,
    configure: impl FnOnce(SessionLayerBuilder) -> SessionLayerBuilder,
    expected: &str,
) {
    let holds = Arc::new(Holds::default());
    let addr = serve(app(
        configure(builder(&store)).build().unwrap(),
        holds.clone(),
    ))
    .await;
    let browser = Browser::new();
    browser.post(addr, "/count").await;

    let first = {
        let browser = browser.clone();
        tokio::spawn(async move { browser.post(addr, "/hold/first/x/from-first").await })
    };
    holds.wait_loaded("first").await;
    let second = {
        let browser = browser.clone();
        tokio::spawn(async move { browser.post(addr, "/hold/second/x/from-second").await })
    };
    holds.wait_loaded("second").await;
    // Both loaded the same version; the first saves, then the second meets the conflict.
    holds.release("first").await;
    assert_eq!(first.await.unwrap().status, 200);
    holds.release("second").await;
    assert_eq!(second.await.unwrap().status, 200);

    let winner = browser.get(addr, "/get/x").await.body;
    assert_eq!(winner, expected);
}

/// Forged or malformed cookies give a fresh session (200), never an error page, and the fresh
/// session gets a new id rather than the forged one.
pub async fn forged_cookie_gives_new_session<S: SessionStore + Clone>(store: S) {
    let addr = serve(app(builder(&store).build().unwrap(), Arc::default())).await;
    let browser = Browser::new();
    browser.post(addr, "/login/eve").await;
    let genuine = browser.cookie_value().unwrap();
    let (id, mac) = genuine.split_once('.').unwrap();

    let flipped_mac = format!(
        "{id}.{}{}",
        if mac.starts_with('A') { 'B' } else { 'A' },
        &mac[1..]
    );
    // A correctly formed cookie signed with another key (another deployment's).
    let other_keys = SigningKeys::new(Key::from_bytes(&[7; 32]).unwrap());
    let other = serve(app(
        SessionLayer::builder(store.clone(), other_keys)
            .secure(false)
            .build()
            .unwrap(),
        Arc::default(),
    ))
    .await;
    let outsider = Browser::new();
    outsider.post(other, "/login/eve").await;
    let other_signed = outsider.cookie_value().unwrap();

    for forged in [
        flipped_mac,
        other_signed,
        id.to_owned(),
        "garbage".to_owned(),
        format!("{id}.{id}"),
        String::new(),
    ] {
        let mallory = Browser::new();
        mallory.set_cookie_value(Some(forged.clone()));
        let reply = mallory.get(addr, "/whoami").await;
        assert_eq!(reply.status, 200, "forged cookie {forged:?}");
        assert_eq!(reply.body, "anonymous", "forged cookie {forged:?}");
        if !forged.is_empty() {
            assert_eq!(
                reply.cookie("sid").as_deref(),
                Some(""),
                "forged cookie is cleared"
            );
        }
        mallory.set_cookie_value(Some(forged.clone()));
        assert_eq!(mallory.post(addr, "/count").await.body, "1");
        let fresh = mallory.cookie_value().unwrap();
        assert_ne!(
            fresh.split('.').next(),
            forged.split('.').next(),
            "forged id adopted"
        );
    }
    assert_eq!(
        browser.get(addr, "/whoami").await.body,
        "eve",
        "genuine cookie still works"
    );
}

/// Idle expiry with a rolling touch (at most once per half idle timeout), rolling writes
/// (the expiry and the cookie move at most once per half idle timeout too), idle expiry
/// without it, and the absolute timeout ending an active session.
pub async fn idle_expiry_rolling_touch_and_absolute_timeout<S: SessionStore + Clone>(store: S) {
    let idle = Duration::from_secs(3);
    let rolling = builder(&store)
        .idle_timeout(idle)
        .ttl_extension(TtlExtension::OnEveryRequest)
        .build()
        .unwrap();
    let on_change = builder(&store)
        .idle_timeout(idle)
        .ttl_extension(TtlExtension::OnStateChanges)
        .build()
        .unwrap();
    // Every write extends the expiry here (and sends the cookie), so the cap shows at once.
    let absolute = builder(&store)
        .idle_timeout(Duration::from_secs(2))
        .absolute_timeout(Some(Duration::from_secs(3)))
        .ttl_extension(TtlExtension::OnStateChanges)
        .build()
        .unwrap();
    let rolling = serve(app(rolling, Arc::default())).await;
    let on_change = serve(app(on_change, Arc::default())).await;
    let absolute = serve(app(absolute, Arc::default())).await;

    let idle_timeouts = async {
        let (r, c, w) = (Browser::new(), Browser::new(), Browser::new());
        let created = r.post(rolling, "/count").await;
        assert!(
            created
                .set_cookie_header("sid")
                .unwrap()
                .contains("Max-Age=3")
        );
        c.post(on_change, "/count").await;
        let changed = c.post(on_change, "/count").await;
        assert!(
            changed
                .set_cookie_header("sid")
                .expect("on state changes every write extends the expiry")
                .contains("Max-Age=3")
        );
        w.post(rolling, "/count").await;
        let early_write = w.post(rolling, "/count").await;
        assert_eq!(early_write.body, "2");
        assert!(
            early_write.set_cookie_header("sid").is_none(),
            "a write within half the idle timeout keeps the expiry and the cookie"
        );

        tokio::time::sleep(Duration::from_millis(2000)).await; // t = 2.0
        let touched = r.get(rolling, "/peek").await;
        assert_eq!(touched.body, "1");
        let header = touched
            .set_cookie_header("sid")
            .expect("past half the idle timeout: touch");
        assert!(
            header.contains("Max-Age=3") || header.contains("Max-Age=2"),
            "{header}"
        );
        let again = r.get(rolling, "/peek").await;
        assert!(
            again.set_cookie_header("sid").is_none(),
            "touched twice within half a TTL"
        );
        let late_write = w.post(rolling, "/count").await;
        assert_eq!(late_write.body, "3");
        let header = late_write
            .set_cookie_header("sid")
            .expect("past half the idle timeout a write extends the expiry");
        assert!(
            header.contains("Max-Age=3") || header.contains("Max-Age=2"),
            "{header}"
        );
        let read_only = c.get(on_change, "/peek").await;
        assert_eq!(read_only.body, "2");
        assert!(
            read_only.set_cookie_header("sid").is_none(),
            "reads must not extend it"
        );

        tokio::time::sleep(Duration::from_millis(1600)).await; // t = 3.6
        assert_eq!(
            r.get(rolling, "/peek").await.body,
            "1",
            "the touch kept it alive"
        );
        assert_eq!(
            w.get(rolling, "/peek").await.body,
            "3",
            "the late write kept it alive"
        );
        assert_eq!(
            c.get(on_change, "/peek").await.body,
            "none",
            "idle timeout passed"
        );

        tokio::time::sleep(Duration::from_millis(3300)).await; // idle for 3.3 s
        assert_eq!(
            r.get(rolling, "/peek").await.body,
            "none",
            "idle timeout passed"
        );
    };

    // Idle 2 s, absolute 3 s: writes at 0, 1 and 2 s would keep it alive until 4 s on the
    // idle timeout alone; the absolute timeout caps the last expiry (and Max-Age) at 3 s.
    let absolute_timeout = async {
        let x = Browser::new();
        x.post(absolute, "/count").await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(x.post(absolute, "/count").await.body, "2");
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let capped = x.post(absolute, "/count").await;
        assert_eq!(capped.body, "3");
        let header = capped.set_cookie_header("sid").unwrap();
        assert!(header.contains("Max-Age=1"), "{header}");
        tokio::time::sleep(Duration::from_millis(1300)).await; // t = 3.3
        assert_eq!(
            x.get(absolute, "/peek").await.body,
            "none",
            "absolute timeout passed"
        );
    };
    tokio::join!(idle_timeouts, absolute_timeout);
}

/// Set-Cookie attributes as a browser receives them.
pub async fn cookie_attributes_on_real_responses<S: SessionStore + Clone>(store: S) {
    let plain = serve(app(builder(&store).build().unwrap(), Arc::default())).await;
    let custom = SessionLayer::builder(store.clone(), keys())
        .cookie_name("app_session")
        .domain("localhost")
        .idle_timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let custom = serve(app(custom, Arc::default())).await;

    let reply = Browser::new().post(plain, "/count").await;
    let header = reply.set_cookie_header("sid").unwrap();
    for part in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=1800"] {
        assert!(header.contains(part), "{header} lacks {part}");
    }
    assert!(
        !header.contains("Secure") && !header.contains("Domain"),
        "{header}"
    );
    let value = reply.cookie("sid").unwrap();
    let (id, mac) = value.split_once('.').unwrap();
    assert_eq!(
        (id.len(), mac.len()),
        (43, 43),
        "256-bit id and HMAC-SHA256 tag"
    );

    let reply = Browser::named("app_session").post(custom, "/count").await;
    let header = reply.set_cookie_header("app_session").unwrap();
    for part in [
        "HttpOnly",
        "Secure",
        "SameSite=Lax",
        "Path=/",
        "Domain=localhost",
        "Max-Age=600",
    ] {
        assert!(header.contains(part), "{header} lacks {part}");
    }

    // Requests that do not write send no cookie at all.
    let anonymous = Browser::new().get(plain, "/whoami").await;
    assert!(
        anonymous.set_cookies.is_empty(),
        "{:?}",
        anonymous.set_cookies
    );
}

/// Data over the size limit is a typed error (500 with a body saying so), and nothing is
/// stored.
pub async fn oversized_data_is_rejected<S: SessionStore + Clone>(store: S) {
    let layer = builder(&store).max_size(1024).build().unwrap();
    let addr = serve(app(layer, Arc::default())).await;
    let browser = Browser::new();
    let reply = browser.post(addr, "/big/a/2000").await;
    assert_eq!(reply.status, 500);
    assert!(
        reply.body.contains("over the limit of 1024"),
        "{}",
        reply.body
    );
    assert!(reply.set_cookies.is_empty());

    // Each value fits, the sum does not: caught when the layer saves.
    assert_eq!(browser.post(addr, "/big/a/600").await.status, 200);
    let reply = browser.post(addr, "/big/b/600").await;
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(
        reply.body.contains("1206 bytes, over the limit of 1024"),
        "{}",
        reply.body
    );
    assert_eq!(
        browser.get(addr, "/get/b").await.body,
        "none",
        "nothing saved"
    );
    assert_eq!(browser.get(addr, "/get/a").await.body.len(), 602);
}
