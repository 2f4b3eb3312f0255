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

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{demo, unique};
use fantoccini::{ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

/// chromedriver on a free port, stopped (by its pid) on drop.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_chromedriver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian package chromium-driver) is needed for the browser test");
    Driver(child, port)
}

/// Whether chromium and chromedriver are installed; without them, a loud notice (or a failure
/// when `HERD_REQUIRE_BROWSER=1`).
fn browser_available() -> bool {
    let chromedriver = Command::new("chromedriver")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let chromium = std::path::Path::new("/usr/bin/chromium").exists();
    if chromedriver && chromium {
        return true;
    }
    let missing = match (chromium, chromedriver) {
        (false, false) => "chromium and chromedriver",
        (false, true) => "chromium",
        _ => "chromedriver",
    };
    assert!(
        std::env::var("HERD_REQUIRE_BROWSER").as_deref() != Ok("1"),
        "HERD_REQUIRE_BROWSER=1 but {missing} is not installed (apt-get install -y chromium chromium-driver)"
    );
    // Straight to the process's stderr: libtest captures `eprintln!`, and a skip that only
    // `--nocapture` shows is not loud.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n*** SKIPPED the browser test: {missing} not installed \
         (apt-get install -y chromium chromium-driver; HERD_REQUIRE_BROWSER=1 makes this a failure) ***\n"
    );
    false
}

#[tokio::test]
async fn a_browser_signs_up_logs_in_and_sees_its_notes_through_the_gateway() {
    if !browser_available() {
        return;
    }
    let d = demo().await;
    let driver = start_chromedriver();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
        }),
    );
    let url = format!("http://127.0.0.1:{}", driver.1);
    let mut browser = None;
    for _ in 0..50 {
        match ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            Ok(c) => {
                browser = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let b = browser.expect("a WebDriver session with headless Chromium");
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
