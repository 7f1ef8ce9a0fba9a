//! Session endpoints: auth status, tickle, ssodh/init, accounts, cookies,
//! TLS. Pacing is off here; tests/pacing.rs covers it.

use std::time::Duration;

use reqwest::{Client, StatusCode, header};
use serde_json::{Value, json};

use super::{Harness, TestResult, pinned_client};
use crate::cpgw_sim::{
    AuthState, CpgwSimulator, DEFAULT_START, IsPaperShape, LoggedRequest, SimAccount, SimClock,
    SimConfig, SimScenario,
};

async fn start(
    auth_state: AuthState,
) -> Result<(CpgwSimulator, Client), Box<dyn std::error::Error>> {
    let sim = CpgwSimulator::start(SimConfig {
        auth_state,
        scenario: SimScenario {
            pacing: false,
            ..SimScenario::default()
        },
        clock: SimClock::manual(DEFAULT_START),
        ..SimConfig::default()
    })
    .await?;
    let client = pinned_client(&sim.certificate_der())?;
    Ok((sim, client))
}

async fn post_json(client: &Client, url: String) -> Result<(StatusCode, String), reqwest::Error> {
    let response = client.post(url).send().await?;
    let status = response.status();
    Ok((status, response.text().await?))
}

async fn get_json(
    client: &Client,
    url: String,
) -> Result<(StatusCode, Value), Box<dyn std::error::Error>> {
    let response = client.get(url).send().await?;
    let status = response.status();
    Ok((status, response.json().await?))
}

async fn auth_status(
    sim: &CpgwSimulator,
    client: &Client,
) -> Result<Value, Box<dyn std::error::Error>> {
    let (status, body) =
        post_json(client, format!("{}/iserver/auth/status", sim.base_url())).await?;
    assert_eq!(status, StatusCode::OK);
    Ok(serde_json::from_str(&body)?)
}

#[tokio::test]
async fn logged_in_session_answers_like_cpgw() -> TestResult {
    let (sim, client) = start(AuthState::LoggedIn).await?;
    assert!(sim.base_url().starts_with("https://127.0.0.1:"));
    assert!(sim.base_url().ends_with("/v1/api"));

    let status = auth_status(&sim, &client).await?;
    assert_eq!(
        status,
        json!({
            "authenticated": true,
            "connected": true,
            "competing": false,
            "serverInfo": {"serverName": "JifN19053", "serverVersion": "Build 10.25.0p, Dec 5, 2023"},
            "MAC": "98:F2:B3:23:BF:A0",
            "fail": "",
        })
    );
    let (get_status, get_body) =
        get_json(&client, format!("{}/iserver/auth/status", sim.base_url())).await?;
    assert_eq!(get_status, StatusCode::OK);
    assert_eq!(get_body, status);

    let (code, body) = post_json(&client, format!("{}/tickle", sim.base_url())).await?;
    assert_eq!(code, StatusCode::OK);
    let tickle: Value = serde_json::from_str(&body)?;
    let session = tickle["session"].as_str().ok_or("session missing")?;
    assert!(session.len() == 32 && session.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(tickle["iserver"]["authStatus"]["authenticated"], true);
    assert_eq!(tickle["iserver"]["authStatus"]["connected"], true);
    assert_eq!(tickle["hmds"]["error"], "no bridge");
    assert_eq!(tickle["collission"], false);

    let (code, accounts) =
        get_json(&client, format!("{}/iserver/accounts", sim.base_url())).await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(accounts["accounts"], json!(["DU1234567"]));
    assert_eq!(accounts["selectedAccount"], "DU1234567");
    assert_eq!(accounts["isPaper"], true);
    assert_eq!(
        accounts["acctProps"]["DU1234567"],
        json!({"supportsCashQty": true, "supportsFractions": true})
    );
    assert_eq!(accounts["sessionId"], sim.session_id().as_str());
    assert!(accounts["serverInfo"].is_object());

    let counts = sim.counts();
    assert_eq!(
        (counts.auth_status, counts.tickles, counts.accounts),
        (2, 1, 1)
    );
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn every_answer_sets_the_session_cookie() -> TestResult {
    let (sim, client) = start(AuthState::LoggedOut).await?;
    let urls = [
        format!("{}/iserver/auth/status", sim.base_url()),
        format!("{}/tickle", sim.base_url()),
        format!("{}/no/such/endpoint", sim.base_url()),
    ];
    for url in urls {
        let response = client.post(url).send().await?;
        let cookie = response
            .headers()
            .get(header::SET_COOKIE)
            .ok_or("Set-Cookie missing")?
            .to_str()?
            .to_owned();
        assert!(cookie.starts_with(&format!("x-sess-uuid={};", sim.session_cookie_value())));
        assert!(cookie.contains("Secure") && cookie.contains("HttpOnly"));
    }
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn states_switch_at_run_time() -> TestResult {
    let (sim, client) = start(AuthState::LoggedIn).await?;

    sim.set_auth_state(AuthState::ConnectedOnly);
    assert_eq!(sim.auth_state(), AuthState::ConnectedOnly);
    let status = auth_status(&sim, &client).await?;
    assert_eq!(
        (&status["authenticated"], &status["connected"]),
        (&json!(false), &json!(true))
    );
    let (code, body) = post_json(&client, format!("{}/tickle", sim.base_url())).await?;
    assert_eq!(code, StatusCode::OK);
    let tickle: Value = serde_json::from_str(&body)?;
    assert_eq!(tickle["iserver"]["authStatus"]["authenticated"], false);
    assert_eq!(tickle["iserver"]["authStatus"]["connected"], true);
    let (code, accounts) =
        get_json(&client, format!("{}/iserver/accounts", sim.base_url())).await?;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert_eq!(accounts, json!({"error": "not authenticated"}));

    sim.set_auth_state(AuthState::LoggedOut);
    let status = auth_status(&sim, &client).await?;
    assert_eq!(
        (&status["authenticated"], &status["connected"]),
        (&json!(false), &json!(false))
    );
    let (code, body) = post_json(&client, format!("{}/tickle", sim.base_url())).await?;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    assert!(body.is_empty());
    let (code, _) = get_json(&client, format!("{}/iserver/accounts", sim.base_url())).await?;
    assert_eq!(code, StatusCode::UNAUTHORIZED);

    sim.set_auth_state(AuthState::LoggedIn);
    let (code, _) = get_json(&client, format!("{}/iserver/accounts", sim.base_url())).await?;
    assert_eq!(code, StatusCode::OK);
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn ssodh_init_reopens_a_connected_session_and_can_fail() -> TestResult {
    let (sim, client) = start(AuthState::ConnectedOnly).await?;
    let url = format!("{}/iserver/auth/ssodh/init", sim.base_url());
    let init = || {
        client
            .post(url.clone())
            .json(&json!({"publish": true, "compete": true}))
            .send()
    };

    sim.set_ssodh_init_fails(true);
    let response = init().await?;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        response.json::<Value>().await?,
        json!({"error": "no bridge"})
    );
    assert_eq!(sim.auth_state(), AuthState::ConnectedOnly);

    sim.set_ssodh_init_fails(false);
    let response = init().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await?,
        json!({"authenticated": true, "connected": true, "competing": false})
    );
    assert_eq!(sim.auth_state(), AuthState::LoggedIn);
    let status = auth_status(&sim, &client).await?;
    assert_eq!(status["authenticated"], true);
    assert_eq!(sim.counts().ssodh_inits, 2);

    let logged = sim.request_log();
    assert_eq!(logged[0].path, "/v1/api/iserver/auth/ssodh/init");
    let body: Value = serde_json::from_str(logged[0].body.as_deref().ok_or("body not logged")?)?;
    assert_eq!(body, json!({"publish": true, "compete": true}));
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn ssodh_init_cannot_log_a_user_in() -> TestResult {
    let (sim, client) = start(AuthState::LoggedOut).await?;
    let response = client
        .post(format!("{}/iserver/auth/ssodh/init", sim.base_url()))
        .json(&json!({"publish": true, "compete": true}))
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(sim.auth_state(), AuthState::LoggedOut);
    // No automatable login exists, under any of the usual names.
    for path in [
        "/login",
        "/iserver/auth/login",
        "/sso/Login",
        "/iserver/reauthenticate",
    ] {
        let response = client
            .post(format!("{}{path}", sim.base_url()))
            .send()
            .await?;
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(sim.auth_state(), AuthState::LoggedOut);
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn accounts_render_every_is_paper_shape() -> TestResult {
    let (sim, client) = start(AuthState::LoggedIn).await?;
    let url = format!("{}/iserver/accounts", sim.base_url());
    let cases = [
        (IsPaperShape::Bool(false), Some(json!(false))),
        (IsPaperShape::Str("true".to_owned()), Some(json!("true"))),
        (IsPaperShape::Missing, None),
    ];
    for (shape, expected) in cases {
        sim.set_account(SimAccount {
            account_id: "U7654321".to_owned(),
            is_paper: shape,
            supports_cash_qty: false,
            supports_fractions: true,
        });
        let (code, accounts) = get_json(&client, url.clone()).await?;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(accounts.get("isPaper").cloned(), expected);
        assert_eq!(accounts["selectedAccount"], "U7654321");
        assert_eq!(accounts["aliases"], json!({"U7654321": "U7654321"}));
        assert_eq!(
            accounts["acctProps"]["U7654321"],
            json!({"supportsCashQty": false, "supportsFractions": true})
        );
    }
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn unknown_paths_are_json_404s_and_everything_is_logged_in_order() -> TestResult {
    let (sim, client) = start(AuthState::LoggedIn).await?;
    let (code, body) = get_json(
        &client,
        format!("{}/trsrv/nothing?symbols=AAPL", sim.base_url()),
    )
    .await?;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "Not Found");
    let (code, _) = get_json(&client, format!("https://{}/elsewhere", sim.local_addr())).await?;
    assert_eq!(code, StatusCode::NOT_FOUND);
    post_json(&client, format!("{}/tickle", sim.base_url())).await?;

    let expected = vec![
        LoggedRequest {
            method: "GET".to_owned(),
            path: "/v1/api/trsrv/nothing".to_owned(),
            query: Some("symbols=AAPL".to_owned()),
            body: None,
        },
        LoggedRequest {
            method: "GET".to_owned(),
            path: "/elsewhere".to_owned(),
            query: None,
            body: None,
        },
        LoggedRequest {
            method: "POST".to_owned(),
            path: "/v1/api/tickle".to_owned(),
            query: None,
            body: None,
        },
    ];
    assert_eq!(sim.request_log(), expected);
    sim.clear_request_log();
    assert!(sim.request_log().is_empty());
    sim.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn certificate_is_self_signed_for_localhost_and_pinnable() -> TestResult {
    let (sim, client) = start(AuthState::LoggedIn).await?;
    let (other, _) = start(AuthState::LoggedIn).await?;
    assert_ne!(sim.certificate_der(), other.certificate_der());

    // The certificate names localhost as well as 127.0.0.1.
    let by_name = Client::builder()
        .tls_certs_only([reqwest::Certificate::from_der(&sim.certificate_der())?])
        .no_proxy()
        .resolve("localhost", sim.local_addr())
        .build()?;
    let url = format!(
        "https://localhost:{}/v1/api/iserver/auth/status",
        sim.local_addr().port()
    );
    assert_eq!(by_name.post(url).send().await?.status(), StatusCode::OK);

    // A client pinned to another certificate must refuse this server.
    let wrong_pin = pinned_client(&other.certificate_der())?;
    let refused = wrong_pin
        .post(format!("{}/iserver/auth/status", sim.base_url()))
        .send()
        .await;
    assert!(refused.is_err());
    // Only the request made by name reached the handlers.
    assert_eq!(sim.request_log().len(), 1);

    assert_eq!(auth_status(&sim, &client).await?["authenticated"], true);
    sim.shutdown().await;
    other.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_promptly() -> TestResult {
    let (sim, client) = start(AuthState::LoggedIn).await?;
    let url = format!("{}/iserver/auth/status", sim.base_url());
    // Leaves a pooled, idle keep-alive connection behind.
    assert_eq!(
        client.post(url.clone()).send().await?.status(),
        StatusCode::OK
    );
    // Well below the drain timeout: idle connections must not be waited out.
    tokio::time::timeout(Duration::from_secs(3), sim.shutdown()).await?;
    assert!(client.post(url).send().await.is_err());
    Ok(())
}

// ------------------------------------------------------------------ trading

/// Another session holding the brokerage session: IBKR Web API
/// documentation, "Trading Sessions": "A single username can only have one
/// brokerage session active at a time across all IB platforms".
#[tokio::test]
async fn competing_session_blocks_trading_until_taken_back() -> TestResult {
    let h = Harness::start_unprimed(SimConfig {
        scenario: SimScenario {
            competing: true,
            ..SimScenario::ideal()
        },
        ..SimConfig::default()
    })
    .await?;
    let (_, status) = h.post("/iserver/auth/status", json!({})).await?;
    assert_eq!(
        (
            &status["authenticated"],
            &status["connected"],
            &status["competing"]
        ),
        (&json!(false), &json!(true), &json!(true))
    );
    let (code, _) = h.get("/iserver/accounts").await?;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (code, _) = h.get("/trsrv/stocks?symbols=AAPL").await?;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    let (_, tickle) = h.post("/tickle", json!({})).await?;
    assert_eq!(tickle["iserver"]["authStatus"]["competing"], true);

    let init = "/iserver/auth/ssodh/init";
    let (code, kept) = h
        .post(init, json!({"publish": true, "compete": false}))
        .await?;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(kept["competing"], true);
    let (_, taken) = h
        .post(init, json!({"publish": true, "compete": true}))
        .await?;
    assert_eq!(taken["authenticated"], true);
    let (_, status) = h.post("/iserver/auth/status", json!({})).await?;
    assert_eq!(
        (&status["authenticated"], &status["competing"]),
        (&json!(true), &json!(false))
    );
    let (code, _) = h.get("/iserver/accounts").await?;
    assert_eq!(code, StatusCode::OK);
    Ok(())
}

/// Client projects report `500 {"error":"Please query /accounts first"}`
/// until `GET /iserver/accounts` (for `/iserver/...`) or `GET
/// /portfolio/accounts` (for `/portfolio/{acct}/...`) ran in the session,
/// and again after the daily reset.
#[tokio::test]
async fn a_session_needs_its_accounts_calls_first() -> TestResult {
    let h = Harness::start_unprimed(SimConfig {
        scenario: SimScenario {
            pacing: false,
            ..SimScenario::default()
        },
        ..SimConfig::default()
    })
    .await?;
    let first = json!({"error": "Please query /accounts first"});
    let snapshot = "/iserver/marketdata/snapshot?conids=265598&fields=31";
    let summary = "/portfolio/DU1234567/summary";
    for path in [
        snapshot,
        "/iserver/account/orders?accountId=DU1234567",
        "/iserver/account/trades",
        summary,
        "/portfolio/DU1234567/positions/0",
    ] {
        assert_eq!(
            h.get(path).await?,
            (StatusCode::INTERNAL_SERVER_ERROR, first.clone()),
            "{path}"
        );
    }
    // Contract search needs no brokerage priming.
    assert_eq!(h.get("/trsrv/stocks?symbols=AAPL").await?.0, StatusCode::OK);
    assert_eq!(h.get("/iserver/accounts").await?.0, StatusCode::OK);
    assert_eq!(h.get(snapshot).await?.0, StatusCode::OK);
    assert_eq!(h.get(summary).await?.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(h.get("/portfolio/accounts").await?.0, StatusCode::OK);
    assert_eq!(h.get(summary).await?.0, StatusCode::OK);
    // A new brokerage session needs them again.
    h.sim.restart_brokerage_session();
    assert_eq!(h.get(snapshot).await?.1, first);
    assert_eq!(h.get(summary).await?.1, first);
    Ok(())
}
