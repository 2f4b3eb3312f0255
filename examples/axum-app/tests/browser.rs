//! A real browser (headless Chromium, driven by chromedriver over WebDriver) signs up, adds notes,
//! logs out and in again through the gateway, and sees its notes: cookies, sessions shared by the
//! instances, read-your-writes and the page's JavaScript, all for real.
//!
//! Needs Debian's `chromium` and `chromium-driver` packages (`.ci/run` installs them). Without
//! them the test says so loudly on stderr and passes, so `cargo test --workspace` works on a
//! machine with only Rust, PostgreSQL and Redis; `HERD_REQUIRE_BROWSER=1` (set by `.ci/run`)
//! makes their absence a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::browser::{browser_available, connect, start_chromedriver};
use common::{demo, unique};
use fantoccini::Locator;

#[tokio::test]
async fn a_browser_signs_up_logs_in_and_sees_its_notes_through_the_gateway() {
    if !browser_available("browser test") {
        return;
    }
    let d = demo().await;
    let driver = start_chromedriver();
    let b = connect(&driver, &[]).await;
    let result = async {
        let gw = d.gateway.server.url();
        let user = unique("browser");
        b.goto(&format!("{gw}/")).await?;
        let wait = |sel: &'static str| {
            b.wait()
                .at_most(Duration::from_secs(30))
                .for_element(Locator::Css(sel))
        };
        wait("#signup").await?;
        b.find(Locator::Css("#username"))
            .await?
            .send_keys(&user)
            .await?;
        b.find(Locator::Css("#password"))
            .await?
            .send_keys("a long password")
            .await?;
        b.find(Locator::Css("#signup")).await?.click().await?;
        wait_text(&b, "#whoami", &user).await?;

        for note in ["first note", "second note"] {
            b.find(Locator::Css("#note-body"))
                .await?
                .send_keys(note)
                .await?;
            b.find(Locator::Css("#add-note")).await?.click().await?;
            wait_notes(&b, note).await?;
        }
        b.find(Locator::Css("#logout")).await?.click().await?;
        wait_text(&b, "#whoami", "nobody").await?;
        assert!(b.find_all(Locator::Css("li.note")).await?.is_empty());

        // Log in again (new session, maybe another instance) and see both notes.
        b.goto(&format!("{gw}/")).await?;
        wait("#login").await?;
        b.find(Locator::Css("#username"))
            .await?
            .send_keys(&user)
            .await?;
        b.find(Locator::Css("#password"))
            .await?
            .send_keys("a long password")
            .await?;
        b.find(Locator::Css("#login")).await?.click().await?;
        wait_text(&b, "#whoami", &user).await?;
        wait_notes(&b, "second note").await?;
        let notes: Vec<String> = {
            let mut out = Vec::new();
            for e in b.find_all(Locator::Css("li.note")).await? {
                out.push(e.text().await?);
            }
            out
        };
        assert_eq!(notes, ["first note", "second note"]);
        Ok::<_, fantoccini::error::CmdError>(())
    }
    .await;
    let _ = b.close().await;
    result.unwrap();
}

async fn wait_text(
    b: &fantoccini::Client,
    sel: &str,
    want: &str,
) -> Result<(), fantoccini::error::CmdError> {
    // The page re-renders while we look: an element that went stale (or is not there yet) is
    // looked up again on the next turn.
    for _ in 0..300 {
        if let Ok(e) = b.find(Locator::Css(sel)).await
            && e.text().await.is_ok_and(|t| t == want)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = b.find(Locator::Css("#status")).await?.text().await?;
    panic!("{sel} never showed {want:?} (page status: {status:?})");
}

async fn wait_notes(b: &fantoccini::Client, want: &str) -> Result<(), fantoccini::error::CmdError> {
    for _ in 0..300 {
        for e in b
            .find_all(Locator::Css("li.note"))
            .await
            .unwrap_or_default()
        {
            if e.text().await.is_ok_and(|t| t == want) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the note {want:?} never appeared");
}
