//! The laptop owner's console (`ibkr-agent sidecar console`), end to end on a whole system:
//! a real headless browser opens it with the CLI's login link, reads the relay and Client
//! Portal state, watches calls arrive live, pauses trading with the switch (an agent's order
//! is then refused with TRADING_PAUSED) and resumes; plain HTTP requests check every refusal
//! (no session, foreign Host, foreign Origin, missing or wrong CSRF token); the page makes no
//! request off loopback and carries no secret; the owner approves one waiting order (it then
//! reaches the simulator, once) and denies another (the agent is refused) in the browser.

use crate::browser::Browser;
use crate::trading_support::{
    buy_goes_out, buy_refused_as_paused, call, code, ibkr_agent as ibkr_agent_cli, live_trading,
    ok, trading_system,
};
use e2e::cpgw_sim::AuthState;
use e2e::system::System;
use fantoccini::Locator;
use ibkr_agent::console::file::{self, ConsoleInfo};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

/// Longest wait for something the page should show (the live stream ticks every 5 s at most).
const PAGE_WAIT: Duration = Duration::from_secs(20);

fn console_info(system: &System) -> ConsoleInfo {
    file::read(system.sidecar_state_dir()).expect("the daemon published its console")
}

fn secret_of(info: &ConsoleInfo) -> String {
    info.login_url.split("secret=").nth(1).unwrap().to_string()
}

/// `ibkr-agent sidecar console ARGS...` against the system's sidecar, as the owner runs it.
async fn console_cli(system: &System, args: &[&str]) -> ExitCode {
    let mut argv = vec!["sidecar", "console"];
    argv.extend_from_slice(args);
    ibkr_agent_cli(system.sidecar_state_dir(), &argv).await
}

/// Waits until the element `id` shows `text`.
async fn wait_text(browser: &Browser, id: &str, text: &str) {
    let xpath = format!("//*[@id='{id}' and normalize-space(.)='{text}']");
    if let Err(error) = browser
        .client
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::XPath(&xpath))
        .await
    {
        let now = match browser.client.find(Locator::Id(id)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => "(absent)".into(),
        };
        let title = browser.client.title().await.unwrap_or_default();
        panic!("#{id} never showed {text:?} (shows {now:?}, page {title:?}): {error}");
    }
}

/// Runs `act` on the element `id`, finding it again when the live refresh replaced it between
/// the find and the act (the page swaps its fragment whenever the daemon's state changes).
async fn on_element<F, Fut>(browser: &Browser, id: &str, act: F)
where
    F: Fn(fantoccini::elements::Element) -> Fut,
    Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
{
    let deadline = tokio::time::Instant::now() + PAGE_WAIT;
    loop {
        let error = match browser.client.find(Locator::Id(id)).await {
            Ok(element) => match act(element).await {
                Ok(()) => return,
                Err(error) => error,
            },
            Err(error) => error,
        };
        let replaced = error.is_stale_element_reference() || error.is_no_such_element();
        if !replaced || tokio::time::Instant::now() >= deadline {
            panic!("#{id}: {error}");
        }
    }
}

async fn click(browser: &Browser, id: &str) {
    on_element(browser, id, |element| async move {
        element.click().await.map(|_| ())
    })
    .await;
}

/// The text of the element `id`, read in one step in the page (no element handle to go stale).
async fn text_of(browser: &Browser, id: &str) -> String {
    let value = browser
        .client
        .execute(
            "const e = document.getElementById(arguments[0]); return e ? e.innerText : null;",
            vec![json!(id)],
        )
        .await
        .unwrap();
    value
        .as_str()
        .unwrap_or_else(|| panic!("#{id} is absent"))
        .to_string()
}

async fn wait_for(browser: &Browser, xpath: &str) -> fantoccini::elements::Element {
    browser
        .client
        .wait()
        .at_most(PAGE_WAIT)
        .for_element(Locator::XPath(xpath))
        .await
        .unwrap_or_else(|error| panic!("{xpath} never appeared: {error}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_reads_the_system_and_pauses_trading_from_the_console_in_a_browser() {
    let system = trading_system(live_trading()).await;
    let Some(browser) = Browser::start().await else {
        system.shutdown().await;
        return;
    };
    let info = console_info(&system);
    let base = info.url.trim_end_matches('/').to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    // The CLI's link logs in and lands on a URL without the secret (the browser gets the
    // forwarding page, as `sidecar console` gives it, not the secret link).
    open_console(&system, &browser).await;

    // The relay and the Client Portal as the page shows them.
    wait_text(&browser, "relay-state", "connected").await;
    wait_text(&browser, "broker-state", "logged in").await;
    assert_eq!(
        text_of(&browser, "relay-url").await,
        system.gateway().unwrap().relay_url()
    );
    assert_eq!(
        text_of(&browser, "gateway-fingerprint").await,
        system.gateway().unwrap().public_key().fingerprint()
    );
    wait_text(&browser, "account-mode", "paper").await;
    wait_text(&browser, "dry-run", "off: orders are sent").await;
    assert!(
        text_of(&browser, "pairings")
            .await
            .contains("ibkr:orders:write")
    );
    wait_for(&browser, "//*[@id='no-approvals']").await;

    // A call the agent makes shows up without a reload (the event stream).
    ok(&call(&system, "ibkr_quote", json!({"symbol": "AAPL"})).await);
    wait_for(
        &browser,
        "//table[@id='calls']//td[@class='tool' and text()='ibkr_quote']",
    )
    .await;

    // The Client Portal logs out: the page says a manual login is needed, with the link.
    system.sim.set_auth_state(AuthState::LoggedOut);
    wait_for(&browser, "//*[@id='login-banner']//a[@id='login-link']").await;
    let href = browser
        .client
        .execute(
            "return document.getElementById('login-link').getAttribute('href');",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        href.as_str(),
        Some(format!("{}/", system.sim.base_url().trim_end_matches("/v1/api")).as_str())
            .map(|with_slash| with_slash.trim_end_matches('/'))
    );
    system.sim.set_auth_state(AuthState::LoggedIn);
    wait_text(&browser, "broker-state", "logged in").await;

    // Pause with the switch: the very next order is refused and never reaches the broker.
    let orders_before = system.sim.order_log().len();
    on_element(&browser, "pause-reason", |element| async move {
        element.send_keys("lunch").await
    })
    .await;
    click(&browser, "pause-button").await;
    wait_text(&browser, "trading-state", "paused").await;
    wait_for(&browser, "//*[@id='pause-banner']//q[text()='lunch']").await;
    buy_refused_as_paused(&system, "lunch").await;
    assert_eq!(system.sim.order_log().len(), orders_before);
    wait_for(&browser, "//table[@id='calls']//td[text()='ibkr_buy']/following-sibling::td[contains(., 'TRADING_PAUSED')]").await;

    // Resume: orders go again, and the attempt shows in the journal's list.
    click(&browser, "resume-button").await;
    wait_text(&browser, "trading-state", "active").await;
    buy_goes_out(&system, orders_before).await;
    wait_for(
        &browser,
        "//table[@id='orders']//td[normalize-space(.)='AAPL']",
    )
    .await;
    ok(&call(&system, "ibkr_positions_list", json!({})).await);
    wait_for(
        &browser,
        "//table[@id='calls']//td[text()='ibkr_positions_list']",
    )
    .await;

    // Every request the page made stayed on the console's own loopback address.
    let urls = browser
        .client
        .execute(
            "return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name));",
            vec![],
        )
        .await
        .unwrap();
    let urls: Vec<String> = serde_json::from_value(urls).unwrap();
    assert!(
        urls.len() >= 4,
        "page, stylesheet, script, fragments: {urls:?}"
    );
    for url in &urls {
        assert!(
            url.starts_with(&format!("{base}/")),
            "{url} left the console's loopback address"
        );
    }
    // The event stream never completes, so it has no timing entry; the fragments it triggered
    // do.
    assert!(
        urls.iter().any(|url| url.ends_with("/fragment")),
        "{urls:?}"
    );

    // No secret in the page: not the console's, not the session cookie, not the sidecar's key,
    // not the Client Portal's session.
    let source = browser.client.source().await.unwrap();
    let session = browser
        .client
        .get_named_cookie(ibkr_agent::console::security::SESSION_COOKIE)
        .await
        .unwrap();
    assert_eq!(session.http_only(), Some(true));
    let key = std::fs::read(system.sidecar_state_dir().join("identity.key")).unwrap();
    for (what, secret) in [
        ("console secret", secret_of(&info)),
        ("session cookie", session.value().to_string()),
        (
            "identity key",
            key.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        ),
        ("CPGW cookie", system.sim.session_cookie_value()),
        ("CPGW session id", system.sim.session_id()),
    ] {
        assert!(secret.len() >= 16, "{what} is too short to search for");
        assert!(!source.contains(&secret), "the page shows the {what}");
    }

    browser.close().await;

    // A graceful stop takes the console and its file away; the CLI then says so.
    let mut system = system;
    system.take_sidecar().unwrap().stop().await;
    assert!(!system.sidecar_state_dir().join(file::CONSOLE_FILE).exists());
    assert!(!system.sidecar_state_dir().join(file::OPENER_FILE).exists());
    assert_eq!(
        console_cli(&system, &["--no-open"]).await,
        ExitCode::from(3),
        "CONSOLE_NOT_RUNNING"
    );
    system.shutdown().await;
}

/// Logs the browser in as `sidecar console` does (the forwarding page) and waits for the page.
async fn open_console(system: &System, browser: &Browser) {
    let info = console_info(system);
    assert_eq!(
        console_cli(system, &["--no-open", "--json"]).await,
        ExitCode::SUCCESS
    );
    let opener = file::opener_path(system.sidecar_state_dir());
    browser
        .client
        .goto(&format!("file://{}", opener.display()))
        .await
        .unwrap();
    browser
        .client
        .wait()
        .at_most(PAGE_WAIT)
        .for_url(&url::Url::parse(&info.url).unwrap())
        .await
        .unwrap();
    wait_text(browser, "relay-state", "connected").await;
}

/// An agent's limit buy of one AAPL share at `price`, placed in the background (it waits for
/// the owner's approval).
fn limit_buy_in_background(
    system: &std::sync::Arc<System>,
    price: &str,
    key: &str,
) -> tokio::task::JoinHandle<rmcp::model::CallToolResult> {
    let system = system.clone();
    let order = json!({"symbol": "AAPL", "quantity": "1", "limit_price": price,
                       "idempotency_key": key});
    tokio::spawn(async move { call(&system, "ibkr_buy", order).await })
}

/// The attempt id of the first order the page shows as waiting for approval.
async fn waiting_attempt(browser: &Browser) -> String {
    wait_for(
        browser,
        "//*[@id='approvals']//button[starts-with(@id, 'approve-')]",
    )
    .await;
    let id = browser
        .client
        .execute(
            "return document.querySelector(\"#approvals button[id^='approve-']\").id;",
            vec![],
        )
        .await
        .unwrap();
    id.as_str()
        .unwrap()
        .trim_start_matches("approve-")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_approves_one_order_and_denies_another_in_the_browser() {
    use ibkr_agent::trading::approval::ApprovalSection;
    let system = std::sync::Arc::new(
        trading_system(ibkr_agent::trading::policy::TradingSection {
            max_order_value: "1000".into(),
            approval: ApprovalSection {
                above_value: Some("100".into()),
                ..ApprovalSection::default()
            },
            ..live_trading()
        })
        .await,
    );
    let Some(browser) = Browser::start().await else {
        std::sync::Arc::into_inner(system).unwrap().shutdown().await;
        return;
    };
    open_console(&system, &browser).await;
    wait_for(&browser, "//*[@id='no-approvals']").await;
    let orders_before = system.sim.order_log().len();

    // The agent's order waits; the page shows it without a reload, with what it is and why.
    let agent = limit_buy_in_background(&system, "201", "console-1");
    let attempt = waiting_attempt(&browser).await;
    let card = text_of(&browser, &format!("approval-{attempt}")).await;
    for expected in [
        "AAPL",
        "BUY 1 LMT limit 201 DAY",
        "$201",
        "above 100",
        "paper",
    ] {
        assert!(card.contains(expected), "{expected:?} not in {card:?}");
    }
    assert_eq!(system.sim.order_log().len(), orders_before);
    if std::env::var_os("UPDATE_DOCS").is_some() {
        let png = browser.client.screenshot().await.unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/console.png");
        std::fs::write(path, png).unwrap();
    }

    // Approve: the order reaches the simulator, once, and the agent's call says sent.
    click(&browser, &format!("approve-{attempt}")).await;
    let sent = ok(&agent.await.unwrap());
    assert_eq!(sent["status"], "sent", "{sent}");
    assert_eq!(system.sim.order_log().len(), orders_before + 1);
    wait_for(&browser, "//*[@id='no-approvals']").await;

    // Deny another with a note: the agent is refused with it, and nothing is sent.
    let agent = limit_buy_in_background(&system, "202", "console-2");
    let attempt = waiting_attempt(&browser).await;
    on_element(
        &browser,
        &format!("deny-note-{attempt}"),
        |element| async move { element.send_keys("not today").await },
    )
    .await;
    click(&browser, &format!("deny-{attempt}")).await;
    let refused = agent.await.unwrap();
    assert_eq!(code(&refused), "ORDER_APPROVAL_DENIED");
    let message = refused.structured_content.as_ref().unwrap()["error"]["message"].clone();
    assert!(
        message.as_str().unwrap().contains("not today")
            && message.as_str().unwrap().contains("console"),
        "{message}"
    );
    wait_for(&browser, "//*[@id='no-approvals']").await;
    assert_eq!(system.sim.order_log().len(), orders_before + 1);
    browser.close().await;
    std::sync::Arc::into_inner(system).unwrap().shutdown().await;
}

/// A client that never follows redirects and keeps no cookies: every header is the test's.
fn raw_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .unwrap()
}

fn error_code(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-error-code")
        .map(|value| value.to_str().unwrap().to_string())
        .unwrap_or_default()
}

const FORM: &str = "application/x-www-form-urlencoded";

fn form_body(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

fn cookie_header(cookie: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        reqwest::header::COOKIE,
        HeaderValue::from_str(cookie).unwrap(),
    );
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_refuses_requests_that_do_not_come_from_its_owners_page() {
    let system = trading_system(live_trading()).await;
    let info = console_info(&system);
    let base = info.url.trim_end_matches('/').to_string();
    let origin = base.clone();
    let http = raw_client();
    let store = ibkr_agent::StateStore::open(system.sidecar_state_dir()).unwrap();

    // No session: refused, with a page that says what to do.
    let response = http.get(&info.url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_code(&response), "CONSOLE_SESSION_REQUIRED");
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("ibkr-agent sidecar console")
    );
    let wrong = http
        .get(format!("{base}/login?secret={}", "0".repeat(64)))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(&wrong), "CONSOLE_LOGIN_REFUSED");
    assert!(wrong.headers().get(reqwest::header::SET_COOKIE).is_none());

    // The login link: a session cookie, then away from the secret's URL.
    let login = http.get(&info.login_url).send().await.unwrap();
    assert_eq!(login.status(), StatusCode::SEE_OTHER);
    assert_eq!(login.headers()[reqwest::header::LOCATION], "/");
    let set_cookie = login.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    // Arriving from another site (the CLI's forwarding page): a cookie and a page that moves
    // on to `/` by itself, as a redirect chain from another site would carry no Strict cookie.
    let from_elsewhere = http
        .get(&info.login_url)
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(from_elsewhere.status(), StatusCode::OK);
    assert!(
        from_elsewhere
            .headers()
            .contains_key(reqwest::header::SET_COOKIE)
    );
    let onward = from_elsewhere.text().await.unwrap();
    assert!(
        onward.contains(r#"http-equiv="refresh" content="0;url=/""#),
        "{onward}"
    );
    assert!(!onward.contains(&secret_of(&info)));

    let page = http
        .get(&info.url)
        .headers(cookie_header(&cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let headers = page.headers().clone();
    assert_eq!(
        headers["content-security-policy"],
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "same-origin");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(
        headers
            .keys()
            .all(|name| !name.as_str().starts_with("access-control-")),
        "no CORS header at all: {headers:?}"
    );
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("<script>") && !html.contains(" style="),
        "no inline script or style"
    );
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_string();
    assert_eq!(csrf.len(), 64);

    // A rebound DNS name, a foreign page, another site's navigation: refused even with the
    // session cookie.
    let mut foreign_host = cookie_header(&cookie);
    let port = base.rsplit(':').next().unwrap();
    foreign_host.insert(
        reqwest::header::HOST,
        HeaderValue::from_str(&format!("attacker.example:{port}")).unwrap(),
    );
    let response = http
        .get(&info.url)
        .headers(foreign_host)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_code(&response), "CONSOLE_HOST_REFUSED");
    for (name, value) in [
        ("origin", "http://attacker.example"),
        ("origin", "http://127.0.0.1:1"),
        ("origin", "null"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        let mut headers = cookie_header(&cookie);
        headers.insert(name, HeaderValue::from_static(value));
        let response = http
            .get(format!("{base}/fragment"))
            .headers(headers)
            .send()
            .await
            .unwrap();
        assert_eq!(
            error_code(&response),
            "CONSOLE_ORIGIN_REFUSED",
            "{name}: {value}"
        );
    }

    // Pausing needs everything at once: session, own Origin and the session's CSRF token.
    let pause = |cookie: Option<&str>, origin: Option<&str>, form: Vec<(&str, &str)>| {
        let mut request = http
            .post(format!("{base}/pause"))
            .header(reqwest::header::CONTENT_TYPE, FORM)
            .body(form_body(&form));
        if let Some(cookie) = cookie {
            request = request.header(reqwest::header::COOKIE, cookie);
        }
        if let Some(origin) = origin {
            request = request.header(reqwest::header::ORIGIN, origin);
        }
        request.send()
    };
    let secret = secret_of(&info);
    let refusals = [
        (
            None,
            Some(origin.as_str()),
            vec![("csrf", csrf.as_str())],
            "CONSOLE_SESSION_REQUIRED",
        ),
        (
            Some(cookie.as_str()),
            None,
            vec![("csrf", csrf.as_str())],
            "CONSOLE_ORIGIN_REFUSED",
        ),
        (
            Some(cookie.as_str()),
            Some("http://attacker.example"),
            vec![("csrf", csrf.as_str())],
            "CONSOLE_ORIGIN_REFUSED",
        ),
        (
            Some(cookie.as_str()),
            Some(origin.as_str()),
            vec![("reason", "x")],
            "CONSOLE_CSRF_INVALID",
        ),
        (
            Some(cookie.as_str()),
            Some(origin.as_str()),
            vec![("csrf", "0")],
            "CONSOLE_CSRF_INVALID",
        ),
        (
            Some(cookie.as_str()),
            Some(origin.as_str()),
            vec![("csrf", secret.as_str())],
            "CONSOLE_CSRF_INVALID",
        ),
    ];
    for (cookie, origin, form, expected) in refusals {
        let response = pause(cookie, origin, form).await.unwrap();
        assert_eq!(error_code(&response), expected);
        assert!(
            store.trading_pause().unwrap().is_none(),
            "{expected}: not paused"
        );
    }

    let response = pause(
        Some(&cookie),
        Some(&origin),
        vec![("csrf", csrf.as_str()), ("reason", "checking the console")],
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        store.trading_pause().unwrap().unwrap().reason,
        "checking the console"
    );
    buy_refused_as_paused(&system, "checking the console").await;

    let resume = http
        .post(format!("{base}/resume"))
        .header(reqwest::header::COOKIE, &cookie)
        .header(reqwest::header::ORIGIN, &origin)
        .header(reqwest::header::CONTENT_TYPE, FORM)
        .body(form_body(&[("csrf", csrf.as_str())]))
        .send()
        .await
        .unwrap();
    assert_eq!(resume.status(), StatusCode::SEE_OTHER);
    assert!(store.trading_pause().unwrap().is_none());
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_console_page_does_not_keep_a_killed_daemon_alive() {
    let mut system = trading_system(live_trading()).await;
    let info = console_info(&system);
    let http = raw_client();
    let login = http.get(&info.login_url).send().await.unwrap();
    let set_cookie = login.headers()[reqwest::header::SET_COOKIE]
        .to_str()
        .unwrap();
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    // A page's live stream, held open as a browser tab would.
    let mut events = http
        .get(format!("{}events", info.url))
        .headers(cookie_header(&cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    assert!(events.chunk().await.unwrap().is_some(), "the first event");

    // Killed, the daemon must let go of everything (the trade journal's lock included), or the
    // next daemon's order tools would refuse.
    system.take_sidecar().unwrap().kill().await;
    system.start_sidecar().await.unwrap();
    let orders_before = system.sim.order_log().len();
    buy_goes_out(&system, orders_before).await;
    drop(events);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_approves_an_agent_by_its_code_and_revokes_it_in_the_console() {
    use e2e::authorization::{Pkce, Walk, query_param, wait_for_request};
    let system = System::start(e2e::system::SystemOptions {
        builtin_authorization_server: true,
        ..e2e::system::SystemOptions::default()
    })
    .await
    .unwrap();
    let Some(browser) = Browser::start().await else {
        system.shutdown().await;
        return;
    };
    open_console(&system, &browser).await;

    const REDIRECT: &str = "http://127.0.0.1:47012/callback";
    let walk = Walk::new(&system.gateway().unwrap().base_url());
    let client_id = walk.register("Console agent", REDIRECT).await.unwrap();
    let pkce = Pkce::new();
    let url = walk.authorize_url(&client_id, REDIRECT, &pkce, "c1", None);
    let handle = walk.open_page(&url).await.unwrap();
    let shown = walk
        .name_user(&handle, &system.options.user_id)
        .await
        .unwrap();
    wait_for_request(system.sidecar_state_dir(), PAGE_WAIT)
        .await
        .unwrap();
    wait_for(&browser, "//*[@id='agents-banner']").await;
    // The console lists the request but never its code: the owner types the page's.
    let source = browser.client.source().await.unwrap();
    assert!(source.contains("Console agent"));
    assert!(
        !source.contains(&shown),
        "the console shows the confirmation code"
    );
    on_element(&browser, "agent-code", |element| {
        let code = shown.clone();
        async move { element.send_keys(&code).await }
    })
    .await;
    // The owner grants less than asked: market data stays off.
    click(&browser, "grant-ibkr:marketdata:read").await;
    click(&browser, "agent-approve").await;
    let redirect = walk.decision(&handle, PAGE_WAIT).await.unwrap();
    let auth_code = query_param(&redirect, "code").expect("approved");
    let (status, tokens) = walk
        .redeem(&client_id, REDIRECT, &auth_code, &pkce.verifier)
        .await
        .unwrap();
    assert_eq!(status, 200, "{tokens}");
    let token = tokens["access_token"].as_str().unwrap().to_string();
    let agent = ibkr_agent::agents::list(
        &ibkr_agent::StateStore::open(system.sidecar_state_dir()).unwrap(),
        e2e::authorization::now_ms(),
    )
    .unwrap()
    .remove(0);
    let prefix = agent.id[..12].to_string();
    assert!(
        agent
            .granted_scopes
            .iter()
            .any(|s| s == "ibkr:accounts:read")
    );
    assert!(
        !agent
            .granted_scopes
            .iter()
            .any(|s| s == "ibkr:marketdata:read"),
        "{agent:?}"
    );

    // The agent's calls work, then stop once the owner presses Revoke: refused on the laptop
    // (AGENT_REVOKED), or already at the gateway (401) once the daemon has told it.
    let call_accounts = |token: String| {
        let system = &system;
        async move {
            let client = system.mcp_client(&token).await?;
            let result = client
                .call_tool(rmcp::model::CallToolRequestParams::new(
                    "ibkr_accounts_list".to_string(),
                ))
                .await;
            let _ = client.cancel().await;
            result.map_err(|error| e2e::system::SystemError::Mcp(error.to_string()))
        }
    };
    ok(&call_accounts(token.clone()).await.unwrap());
    wait_for(&browser, &format!("//*[@id='revoke-{prefix}']")).await;
    click(&browser, &format!("revoke-{prefix}")).await;
    wait_for(&browser, "//*[@id='no-agents']").await;
    match call_accounts(token.clone()).await {
        Ok(result) => assert_eq!(code(&result), "AGENT_REVOKED"),
        // Refused before the call: the gateway answers the token 401 now.
        Err(_) => {
            let status = reqwest::Client::new()
                .post(system.mcp_url().unwrap())
                .bearer_auth(&token)
                .header("accept", "application/json, text/event-stream")
                .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                    "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                               "clientInfo": {"name": "probe", "version": "1"}}}))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
    }
    browser.close().await;
    system.shutdown().await;
}
