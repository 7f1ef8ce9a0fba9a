//! The gateway's built-in authorization server with the laptop as the authenticator, over real
//! sockets: registration, the authorization page, the approval request through the relay to
//! the paired sidecar, the owner's decision by the page's code, tokens, refresh, revocation;
//! and every way a hostile or confused client can get it wrong, refused with the error the
//! RFCs name.

use crate::trading_support::code;
use e2e::authorization::{
    Approval, Pkce, Walk, approve_as_person_and_owner, approve_on_laptop, between, query_param,
    wait_for_request,
};
use e2e::system::{System, SystemOptions};
use ibkr_agent::agents::AgentStatus;
use rmcp::model::CallToolRequestParams;
use serde_json::Value;
use std::time::{Duration, Instant};

const REDIRECT: &str = "http://127.0.0.1:47011/callback";
const LIMIT: Duration = Duration::from_secs(15);

async fn system() -> System {
    System::start(SystemOptions {
        builtin_authorization_server: true,
        ..SystemOptions::default()
    })
    .await
    .unwrap()
}

struct Grant {
    client_id: String,
    access_token: String,
    refresh_token: String,
    agent_id: String,
}

/// Register, authorize, approve on the laptop (granting `scopes`), redeem.
async fn sign_in(system: &System, scopes: Option<&[String]>) -> Grant {
    let gateway = system.gateway().unwrap();
    let walk = Walk::new(&gateway.base_url());
    let client_id = walk.register("E2E agent", REDIRECT).await.unwrap();
    let pkce = Pkce::new();
    let url = walk.authorize_url(
        &client_id,
        REDIRECT,
        &pkce,
        "xyz",
        Some("ibkr:health:read ibkr:accounts:read ibkr:orders:write ibkr:orders:live"),
    );
    let handle = walk.open_page(&url).await.unwrap();
    let shown = walk
        .name_user(&handle, &system.options.user_id)
        .await
        .unwrap();
    let request = wait_for_request(system.sidecar_state_dir(), LIMIT)
        .await
        .unwrap();
    assert_eq!(request.client_name, "E2E agent");
    assert_eq!(request.redirect_uri, REDIRECT);
    let approved_at = Instant::now();
    let approved = approve_on_laptop(system.sidecar_state_dir(), &shown, scopes).unwrap();
    assert_eq!(approved.status, AgentStatus::Approved);
    let redirect = walk.decision(&handle, LIMIT).await.unwrap();
    eprintln!(
        "approved on the laptop; the page had its answer {:?} later",
        approved_at.elapsed()
    );
    assert!(redirect.starts_with(REDIRECT), "{redirect}");
    assert_eq!(query_param(&redirect, "state").as_deref(), Some("xyz"));
    assert_eq!(
        query_param(&redirect, "iss").as_deref(),
        Some(gateway.base_url().as_str())
    );
    let code = query_param(&redirect, "code").unwrap();
    let (status, tokens) = walk
        .redeem(&client_id, REDIRECT, &code, &pkce.verifier)
        .await
        .unwrap();
    assert_eq!(status, 200, "{tokens}");
    Grant {
        client_id,
        access_token: tokens["access_token"].as_str().unwrap().to_string(),
        refresh_token: tokens["refresh_token"].as_str().unwrap().to_string(),
        agent_id: approved.id,
    }
}

/// A person and the laptop's owner approve the sign-in at `url` (granting what it asks).
async fn approved(system: &System, walk: &Walk, url: &str) -> Approval {
    approve_as_person_and_owner(
        walk,
        url,
        &system.options.user_id,
        system.sidecar_state_dir(),
        None,
        LIMIT,
    )
    .await
    .unwrap()
}

async fn health(system: &System, token: &str) -> rmcp::model::CallToolResult {
    let client = system.mcp_client(token).await.unwrap();
    let result = client
        .call_tool(CallToolRequestParams::new("ibkr_health".to_string()))
        .await
        .unwrap();
    let _ = client.cancel().await;
    result
}

/// `POST /mcp` with `token`: the HTTP status the gateway answers.
async fn mcp_status(system: &System, token: &str) -> u16 {
    reqwest::Client::new()
        .post(system.mcp_url().unwrap())
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&serde_json::json!({
            "jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                       "clientInfo": {"name": "probe", "version": "1"}}
        }))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn an_agent_signs_in_on_the_laptops_word_calls_and_refreshes_with_what_was_granted() {
    let system = system().await;
    // The owner narrows the request and live trading is dropped by itself (not granted locally).
    let granted = vec![
        "ibkr:health:read".to_string(),
        "ibkr:orders:live".to_string(),
    ];
    let grant = sign_in(&system, Some(&granted)).await;
    let record = ibkr_agent::agents::list(
        &ibkr_agent::StateStore::open(system.sidecar_state_dir()).unwrap(),
        e2e::authorization::now_ms(),
    )
    .unwrap()
    .remove(0);
    assert_eq!(record.granted_scopes, vec!["ibkr:health:read"]);

    let answer = health(&system, &grant.access_token).await;
    assert_ne!(answer.is_error, Some(true), "{answer:?}");
    // The token carries only what the owner granted: accounts were asked for, not granted.
    let client = system.mcp_client(&grant.access_token).await.unwrap();
    let accounts = client
        .call_tool(CallToolRequestParams::new("ibkr_accounts_list".to_string()))
        .await;
    let _ = client.cancel().await;
    assert!(
        accounts.is_err() || accounts.as_ref().unwrap().is_error == Some(true),
        "{accounts:?}"
    );
    let store = ibkr_agent::StateStore::open(system.sidecar_state_dir()).unwrap();
    let used = ibkr_agent::agents::list(&store, e2e::authorization::now_ms()).unwrap();
    assert!(used[0].last_used_at_ms.is_some(), "last use is recorded");

    // Refresh rotates; the old refresh token is then dead, and presenting it again ends the
    // whole family (the new one too).
    let walk = Walk::new(&system.gateway().unwrap().base_url());
    let (status, refreshed) = walk
        .refresh(&grant.client_id, &grant.refresh_token)
        .await
        .unwrap();
    assert_eq!(status, 200, "{refreshed}");
    let rotated = refreshed["refresh_token"].as_str().unwrap();
    assert_ne!(rotated, grant.refresh_token);
    let answer = health(&system, refreshed["access_token"].as_str().unwrap()).await;
    assert_ne!(answer.is_error, Some(true), "{answer:?}");
    let (status, reused) = walk
        .refresh(&grant.client_id, &grant.refresh_token)
        .await
        .unwrap();
    assert_eq!(
        (status, reused["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    let (status, after) = walk.refresh(&grant.client_id, rotated).await.unwrap();
    assert_eq!(
        (status, after["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    system.shutdown().await;
}

#[tokio::test]
async fn revoking_an_agent_on_the_laptop_stops_its_next_call_within_a_second() {
    let system = system().await;
    let grant = sign_in(&system, None).await;
    assert_ne!(
        health(&system, &grant.access_token).await.is_error,
        Some(true)
    );
    let client = system.mcp_client(&grant.access_token).await.unwrap();

    let store = ibkr_agent::StateStore::open(system.sidecar_state_dir()).unwrap();
    let revoked_at = Instant::now();
    ibkr_agent::agents::revoke(
        &store,
        &grant.agent_id,
        "e2e-owner",
        e2e::authorization::now_ms(),
    )
    .unwrap();
    // The very next call, on a session opened before the revocation, is refused: by the
    // laptop (AGENT_REVOKED), or already by the gateway (401) if the daemon told it first.
    let refused = client
        .call_tool(CallToolRequestParams::new("ibkr_accounts_list".to_string()))
        .await;
    let elapsed = revoked_at.elapsed();
    match refused {
        Ok(result) => assert_eq!(code(&result), "AGENT_REVOKED"),
        Err(_) => assert_eq!(mcp_status(&system, &grant.access_token).await, 401),
    }
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    eprintln!("revoked on the laptop; the next call was refused {elapsed:?} later");
    let _ = client.cancel().await;

    // The gateway confirms, then refuses the access token itself and ends the refresh tokens.
    let until = Instant::now() + LIMIT;
    loop {
        let record = ibkr_agent::agents::list(&store, e2e::authorization::now_ms())
            .unwrap()
            .remove(0);
        if record.revocation_confirmed {
            eprintln!(
                "the gateway confirmed the revocation {:?} after the laptop recorded it",
                revoked_at.elapsed()
            );
            break;
        }
        assert!(Instant::now() < until, "the gateway never confirmed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mcp_status(&system, &grant.access_token).await, 401);
    let walk = Walk::new(&system.gateway().unwrap().base_url());
    let (status, answer) = walk
        .refresh(&grant.client_id, &grant.refresh_token)
        .await
        .unwrap();
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    system.shutdown().await;
}

#[tokio::test]
async fn a_code_not_yet_redeemed_when_the_laptop_revokes_never_redeems() {
    let system = system().await;
    let gateway = system.gateway().unwrap();
    let walk = Walk::new(&gateway.base_url());
    let client_id = walk.register("Slow agent", REDIRECT).await.unwrap();
    let pkce = Pkce::new();
    let url = walk.authorize_url(&client_id, REDIRECT, &pkce, "r", None);
    let approval = approved(&system, &walk, &url).await;
    let auth_code = query_param(&approval.redirect, "code").unwrap();
    // The owner changes their mind before the client redeemed its code.
    let store = ibkr_agent::StateStore::open(system.sidecar_state_dir()).unwrap();
    ibkr_agent::agents::revoke(
        &store,
        &approval.record.id,
        "e2e-owner",
        e2e::authorization::now_ms(),
    )
    .unwrap();
    let until = Instant::now() + LIMIT;
    while !ibkr_agent::agents::list(&store, e2e::authorization::now_ms()).unwrap()[0]
        .revocation_confirmed
    {
        assert!(Instant::now() < until, "the gateway never confirmed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, answer) = walk
        .redeem(&client_id, REDIRECT, &auth_code, &pkce.verifier)
        .await
        .unwrap();
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    system.shutdown().await;
}

#[tokio::test]
async fn codes_verifiers_redirects_and_resources_are_checked_as_the_rfcs_say() {
    let system = system().await;
    let gateway = system.gateway().unwrap();
    let walk = Walk::new(&gateway.base_url());
    let client_id = walk.register("Careful agent", REDIRECT).await.unwrap();

    // A redirect URI the client did not register: an error page, never a redirect.
    let pkce = Pkce::new();
    let elsewhere = walk.authorize_url(&client_id, "http://evil.example/cb", &pkce, "s", None);
    let response = walk.http.get(&elsewhere).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.headers().get("location").is_none());
    // Another client's id, forged: the same.
    let forged = walk.authorize_url("reg.e30.AAAAAAAAAAAAAAAAAAAAAA", REDIRECT, &pkce, "s", None);
    assert_eq!(walk.http.get(&forged).send().await.unwrap().status(), 400);
    // Plain PKCE, another resource, another response type, unknown scopes: the page names the
    // RFC's error and links back to the client with it, never redirecting by itself (anyone
    // may register a client, so that would make the gateway an open redirector).
    let unknown_scope =
        walk.authorize_url(&client_id, REDIRECT, &pkce, "s", Some("ibkr:everything"));
    for (url, expected) in [
        (
            walk.authorize_url(&client_id, REDIRECT, &pkce, "s", None)
                .replace("code_challenge_method=S256", "code_challenge_method=plain"),
            "invalid_request",
        ),
        (
            walk.authorize_url(&client_id, REDIRECT, &pkce, "s", None)
                .replace("%2Fmcp", "%2Fother"),
            "invalid_target",
        ),
        (
            walk.authorize_url(&client_id, REDIRECT, &pkce, "s", None)
                .replace("response_type=code", "response_type=token"),
            "unsupported_response_type",
        ),
        (unknown_scope, "invalid_scope"),
    ] {
        let response = walk.http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), 400, "{expected}");
        assert!(response.headers().get("location").is_none());
        let page = response.text().await.unwrap();
        assert_eq!(between(&page, "id=\"error-code\">", "<"), Some(expected));
        let back = between(&page, "id=\"return\" href=\"", "\"")
            .unwrap()
            .replace("&amp;", "&");
        assert!(back.starts_with(REDIRECT), "{back}");
        assert_eq!(query_param(&back, "error").as_deref(), Some(expected));
    }
    // A redirect URI that only parses to a registered one (a tab in it) is not taken.
    let tabbed = walk
        .authorize_url(&client_id, REDIRECT, &pkce, "s", None)
        .replace("callback", "call%09back");
    assert_eq!(walk.http.get(&tabbed).send().await.unwrap().status(), 400);

    // One good approval, then every wrong redemption of its code.
    let url = walk.authorize_url(&client_id, REDIRECT, &pkce, "s", None);
    let handle = walk.open_page(&url).await.unwrap();
    // Another browser with the page's link (someone forwarded it, or the person who opened
    // it sends it to a victim) sees neither the code nor, later, where the answer goes.
    // The stranger has a binding cookie of their own (they opened a page themselves).
    let stranger = Walk::new(&gateway.base_url());
    stranger
        .open_page(&walk.authorize_url(&client_id, REDIRECT, &Pkce::new(), "x", None))
        .await
        .unwrap();
    assert!(stranger.cookie().is_some());
    let link = format!("{}/oauth/authorize?request={handle}", stranger.base_url);
    assert_eq!(stranger.get(&link).send().await.unwrap().status(), 403);
    let hijack = stranger
        .http
        .post(format!("{}/oauth/authorize", stranger.base_url))
        .header("cookie", stranger.cookie().unwrap())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("request={handle}&user_id=someone"))
        .send()
        .await
        .unwrap();
    assert_eq!(hijack.status(), 403);
    // Two cookies of the name (one planted) are trusted for neither.
    let planted = format!("{}; {}", walk.cookie().unwrap(), stranger.cookie().unwrap());
    let doubled = walk
        .http
        .get(&link)
        .header("cookie", planted)
        .send()
        .await
        .unwrap();
    assert_eq!(doubled.status(), 403);
    let shown = walk
        .name_user(&handle, &system.options.user_id)
        .await
        .unwrap();
    assert_eq!(stranger.get(&link).send().await.unwrap().status(), 403);
    assert_eq!(
        stranger.status(&handle, Duration::ZERO).await.unwrap()["stage"],
        "unknown"
    );
    wait_for_request(system.sidecar_state_dir(), LIMIT)
        .await
        .unwrap();
    approve_on_laptop(system.sidecar_state_dir(), &shown, None).unwrap();
    let redirect = walk.decision(&handle, LIMIT).await.unwrap();
    let auth_code = query_param(&redirect, "code").unwrap();
    let stolen = stranger.status(&handle, Duration::ZERO).await.unwrap();
    assert!(stolen.get("redirect").is_none(), "{stolen}");
    let resource = format!("{}/mcp", gateway.base_url());

    let wrong_verifier = Pkce::new().verifier;
    let (status, answer) = walk
        .redeem(&client_id, REDIRECT, &auth_code, &wrong_verifier)
        .await
        .unwrap();
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_grant"))
    );
    // Any attempt spends the code: the right verifier now fails too (reused code).
    let (status, answer) = walk
        .redeem(&client_id, REDIRECT, &auth_code, &pkce.verifier)
        .await
        .unwrap();
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // A fresh approval: redirect mismatch and another resource at the token endpoint.
    for (mismatch, expected) in [
        ("redirect", "invalid_grant"),
        ("resource", "invalid_target"),
        ("reuse", "invalid_grant"),
    ] {
        let pkce = Pkce::new();
        let url = walk.authorize_url(&client_id, REDIRECT, &pkce, "s", None);
        let approval = approved(&system, &walk, &url).await;
        let auth_code = query_param(&approval.redirect, "code").unwrap();
        let (status, answer) = match mismatch {
            "redirect" => walk
                .redeem(
                    &client_id,
                    "http://127.0.0.1:47011/other",
                    &auth_code,
                    &pkce.verifier,
                )
                .await
                .unwrap(),
            "resource" => walk
                .token(&[
                    ("grant_type", "authorization_code"),
                    ("client_id", &client_id),
                    ("redirect_uri", REDIRECT),
                    ("code", &auth_code),
                    ("code_verifier", &pkce.verifier),
                    ("resource", "https://elsewhere.example/mcp"),
                ])
                .await
                .unwrap(),
            _ => {
                // Redeemed once (tokens issued), then presented again: refused, and the
                // refresh token the first redemption got is revoked with it.
                let (status, first) = walk
                    .redeem(&client_id, REDIRECT, &auth_code, &pkce.verifier)
                    .await
                    .unwrap();
                assert_eq!(status, 200);
                let again = walk
                    .redeem(&client_id, REDIRECT, &auth_code, &pkce.verifier)
                    .await
                    .unwrap();
                // The access token the first redemption got is refused too.
                assert_eq!(
                    mcp_status(&system, first["access_token"].as_str().unwrap()).await,
                    401
                );
                let (status, answer) = walk
                    .refresh(&client_id, first["refresh_token"].as_str().unwrap())
                    .await
                    .unwrap();
                assert_eq!(
                    (status, answer["error"].as_str()),
                    (400, Some("invalid_grant"))
                );
                again
            }
        };
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some(expected)),
            "{mismatch}"
        );
    }
    assert!(resource.ends_with("/mcp"));
    system.shutdown().await;
}

#[tokio::test]
async fn denied_expired_and_unknown_users_end_in_access_denied_and_the_page_tells_nobody_apart() {
    let system = System::start(SystemOptions {
        builtin_authorization_server: true,
        approval_timeout_seconds: Some(2),
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let walk = Walk::new(&system.gateway().unwrap().base_url());
    let client_id = walk.register("Denied agent", REDIRECT).await.unwrap();

    // Denied on the laptop.
    let pkce = Pkce::new();
    let url = walk.authorize_url(&client_id, REDIRECT, &pkce, "d", None);
    let handle = walk.open_page(&url).await.unwrap();
    let shown = walk
        .name_user(&handle, &system.options.user_id)
        .await
        .unwrap();
    wait_for_request(system.sidecar_state_dir(), LIMIT)
        .await
        .unwrap();
    let store = ibkr_agent::StateStore::open(system.sidecar_state_dir()).unwrap();
    ibkr_agent::agents::deny(&store, &shown, "e2e-owner", e2e::authorization::now_ms()).unwrap();
    let redirect = walk.decision(&handle, LIMIT).await.unwrap();
    assert_eq!(
        query_param(&redirect, "error").as_deref(),
        Some("access_denied")
    );
    assert_eq!(query_param(&redirect, "state").as_deref(), Some("d"));
    assert!(query_param(&redirect, "code").is_none());

    // A user with no laptop and the real user who does not answer: the same pages, the same
    // expiry, the same access_denied.
    let mut pages = Vec::new();
    for user in ["nobody-here", system.options.user_id.as_str()] {
        let url = walk.authorize_url(&client_id, REDIRECT, &pkce, "e", None);
        let handle = walk.open_page(&url).await.unwrap();
        let shown = walk.name_user(&handle, user).await.unwrap();
        let page = walk
            .get(&format!(
                "{}/oauth/authorize?request={handle}",
                walk.base_url
            ))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        pages.push(page.replace(&handle, "H").replace(&shown, "C"));
        let started = Instant::now();
        let redirect = walk.decision(&handle, LIMIT).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            query_param(&redirect, "error").as_deref(),
            Some("access_denied")
        );
        // The laptop cannot approve it any more either.
        assert_eq!(
            ibkr_agent::agents::approve(&store, &shown, None, "late", e2e::authorization::now_ms())
                .unwrap_err()
                .code(),
            shared_safety::ErrorCode::AgentRequestNotFound
        );
    }
    let strip_nonce = |page: &str| {
        let mut text = page.to_string();
        while let Some(nonce) = between(&text, "nonce=\"", "\"").map(str::to_string) {
            text = text.replace(&format!("nonce=\"{nonce}\""), "");
        }
        text
    };
    assert_eq!(strip_nonce(&pages[0]), strip_nonce(&pages[1]));
    let _: Value = Value::Null;
    system.shutdown().await;
}

/// A loopback page standing for the client's redirect URI: answers 200 to anything.
async fn redirect_target() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buffer = [0u8; 4096];
                let _ = socket.read(&mut buffer).await;
                let _ = socket
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (format!("http://127.0.0.1:{port}/callback"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_walks_the_authorization_page_in_a_browser() {
    use fantoccini::Locator;
    let system = system().await;
    let Some(browser) = crate::browser::Browser::start().await else {
        system.shutdown().await;
        return;
    };
    let (redirect_uri, target) = redirect_target().await;
    let walk = Walk::new(&system.gateway().unwrap().base_url());
    let client_id = walk.register("Browser agent", &redirect_uri).await.unwrap();
    let pkce = Pkce::new();
    let url = walk.authorize_url(&client_id, &redirect_uri, &pkce, "b1", None);
    browser.client.goto(&url).await.unwrap();
    let name = browser
        .client
        .find(Locator::Id("client-name"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(name.starts_with("Browser agent"), "{name}");
    browser
        .client
        .find(Locator::Id("user_id"))
        .await
        .unwrap()
        .send_keys(&system.options.user_id)
        .await
        .unwrap();
    browser
        .client
        .find(Locator::Id("continue"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let shown = browser
        .client
        .wait()
        .at_most(LIMIT)
        .for_element(Locator::Id("confirmation-code"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    wait_for_request(system.sidecar_state_dir(), LIMIT)
        .await
        .unwrap();
    approve_on_laptop(system.sidecar_state_dir(), &shown, None).unwrap();
    // The page's script sees the decision and sends the browser to the client.
    let until = Instant::now() + LIMIT;
    let landed = loop {
        let current = browser.client.current_url().await.unwrap().to_string();
        if current.starts_with(&redirect_uri) {
            break current;
        }
        assert!(Instant::now() < until, "the page never left ({current})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(query_param(&landed, "state").as_deref(), Some("b1"));
    let auth_code = query_param(&landed, "code").unwrap();
    let (status, tokens) = walk
        .redeem(&client_id, &redirect_uri, &auth_code, &pkce.verifier)
        .await
        .unwrap();
    assert_eq!(status, 200, "{tokens}");
    browser.close().await;
    target.abort();
    system.shutdown().await;
}
