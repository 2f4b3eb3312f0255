//! Headless Chromium over WebDriver for the browser tests: chromedriver on a free port, the
//! check that both are installed (a loud skip, or a failure with `HERD_REQUIRE_BROWSER=1`), and a
//! WebDriver session.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;

/// chromedriver on a free port, stopped (by its pid) on drop.
pub(crate) struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn start_chromedriver() -> Driver {
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
        .expect("chromedriver (Debian package chromium-driver) is needed for the browser tests");
    Driver(child, port)
}

/// Whether chromium and chromedriver are installed; without them, a loud notice naming `test`
/// (or a failure when `HERD_REQUIRE_BROWSER=1`).
pub(crate) fn browser_available(test: &str) -> bool {
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
        "\n*** SKIPPED the {test}: {missing} not installed \
         (apt-get install -y chromium chromium-driver; HERD_REQUIRE_BROWSER=1 makes this a failure) ***\n"
    );
    false
}

/// A WebDriver session with headless Chromium, with `extra_args` on its command line (e.g. a
/// window size), retried while chromedriver starts.
pub(crate) async fn connect(driver: &Driver, extra_args: &[&str]) -> Client {
    let mut args = vec![
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ];
    args.extend_from_slice(extra_args);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }),
    );
    let url = format!("http://127.0.0.1:{}", driver.1);
    for _ in 0..50 {
        if let Ok(c) = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&url)
            .await
        {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no WebDriver session with headless Chromium");
}
