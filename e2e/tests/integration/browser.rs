//! A headless Chromium for tests, driven through a chromedriver this process starts on a free
//! loopback port (fantoccini speaks WebDriver to it over plain http on loopback; nothing
//! leaves the machine). Debian's `/usr/bin/chromium` and `/usr/bin/chromedriver`; CI installs
//! them (`.ci/run`) and sets `IBKR_E2E_REQUIRE_BROWSER=1`, elsewhere a missing driver skips.

use fantoccini::{Client, ClientBuilder};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const DRIVER_START_LIMIT: Duration = Duration::from_secs(30);

/// A browser session and the chromedriver behind it; dropping it kills the driver's whole
/// process group (the browser included) if the test did not close it.
pub struct Browser {
    pub client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// `None` (with the reason printed) when no chromedriver is installed and the run does
    /// not require one.
    pub async fn start() -> Option<Browser> {
        if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
            let reason = format!("{CHROMEDRIVER} or {CHROMIUM} is not installed");
            assert!(
                std::env::var_os("IBKR_E2E_REQUIRE_BROWSER").is_none(),
                "IBKR_E2E_REQUIRE_BROWSER is set but {reason} (apt-get install chromium chromium-driver)"
            );
            eprintln!("skipping the browser test: {reason}");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut driver = tokio::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        // The driver says when it listens: wait for that line instead of polling its port.
        let stdout = driver.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        tokio::time::timeout(DRIVER_START_LIMIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("started successfully") {
                    return;
                }
            }
            panic!("chromedriver exited before it listened");
        })
        .await
        .expect("chromedriver started in time");
        // Keep reading so the driver never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-default-apps",
                    "--window-size=1280,1200",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a browser session");
        Some(Browser {
            client,
            driver,
            _profile: profile,
        })
    }

    /// Ends the session (the browser exits); dropping `self` then stops the driver.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            // The driver leads its own process group; the browsers it started are in it.
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}
