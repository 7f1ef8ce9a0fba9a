//! Exercises the simulator over real HTTPS on loopback, with a client that
//! trusts exactly the simulator's certificate.

use std::time::Duration;

use reqwest::{Client, StatusCode, header};
use serde_json::{Value, json};

use super::{AuthState, CpgwSimulator, IsPaperShape, LoggedRequest, SimAccount, SimConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn pinned_client(certificate_der: &[u8]) -> Result<Client, reqwest::Error> {
    Client::builder()
        .tls_certs_only([reqwest::Certificate::from_der(certificate_der)?])
        .no_proxy()
        .tcp_nodelay(true)
        .build()
}

async fn start(
    auth_state: AuthState,
) -> Result<(CpgwSimulator, Client), Box<dyn std::error::Error>> {
    let sim = CpgwSimulator::start(SimConfig {
        auth_state,
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

mod trading {
    use std::str::FromStr;

    use reqwest::{Client, StatusCode};
    use rust_decimal::{Decimal, RoundingStrategy};
    use serde_json::{Value, json};

    use super::{TestResult, pinned_client};
    use crate::cpgw_sim::{
        AuthState, CancelAckShape, CpgwSimulator, SimConfig, SimOrderStatus, SimScenario,
    };

    const ACCT: &str = "DU1234567";
    const AAPL: i64 = 265_598;

    type Answer = Result<(StatusCode, Value), Box<dyn std::error::Error>>;

    fn d(text: &str) -> Decimal {
        Decimal::from_str(text).unwrap()
    }

    struct Harness {
        sim: CpgwSimulator,
        client: Client,
    }

    impl Harness {
        async fn start(scenario: SimScenario) -> Result<Harness, Box<dyn std::error::Error>> {
            Harness::start_with(SimConfig {
                scenario,
                ..SimConfig::default()
            })
            .await
        }

        async fn start_with(config: SimConfig) -> Result<Harness, Box<dyn std::error::Error>> {
            let sim = CpgwSimulator::start(config).await?;
            let client = pinned_client(&sim.certificate_der())?;
            // Exact quotes for AAPL: last 189.25, bid 189.24, ask 189.26.
            assert!(sim.set_price("AAPL", d("189.25"), d("189.24"), d("189.26")));
            Ok(Harness { sim, client })
        }

        fn url(&self, path: &str) -> String {
            format!("{}{path}", self.sim.base_url())
        }

        async fn answer(response: reqwest::Response) -> Answer {
            let status = response.status();
            let text = response.text().await?;
            let body = if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text)?
            };
            Ok((status, body))
        }

        async fn get(&self, path: impl AsRef<str>) -> Answer {
            Harness::answer(self.client.get(self.url(path.as_ref())).send().await?).await
        }

        async fn get_text(&self, path: &str) -> Result<String, Box<dyn std::error::Error>> {
            Ok(self.client.get(self.url(path)).send().await?.text().await?)
        }

        async fn post(&self, path: impl AsRef<str>, body: Value) -> Answer {
            let request = self.client.post(self.url(path.as_ref())).json(&body);
            Harness::answer(request.send().await?).await
        }

        async fn delete(&self, path: impl AsRef<str>) -> Answer {
            Harness::answer(self.client.delete(self.url(path.as_ref())).send().await?).await
        }

        async fn place(&self, orders: Value) -> Answer {
            self.post(
                &format!("/iserver/account/{ACCT}/orders"),
                json!({ "orders": orders }),
            )
            .await
        }

        /// Places orders that must be acknowledged; returns the acks.
        async fn place_ok(&self, orders: Value) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
            let (code, body) = self.place(orders).await?;
            assert_eq!(code, StatusCode::OK, "{body}");
            let acks = body.as_array().ok_or("ack is not an array")?.clone();
            for ack in &acks {
                assert!(ack["order_id"].is_string(), "{ack}");
            }
            Ok(acks)
        }

        async fn status(&self, order_id: &str) -> Result<Value, Box<dyn std::error::Error>> {
            let (code, body) = self
                .get(&format!("/iserver/account/order/status/{order_id}"))
                .await?;
            assert_eq!(code, StatusCode::OK, "{body}");
            Ok(body)
        }
    }

    fn id_of(ack: &Value) -> String {
        ack["order_id"].as_str().unwrap_or_default().to_owned()
    }

    fn mkt(side: &str, quantity: &str, c_oid: &str) -> Value {
        json!({"conid": AAPL, "orderType": "MKT", "side": side, "tif": "DAY",
               "quantity": Decimal::from_str(quantity).unwrap_or_default(), "cOID": c_oid})
    }

    fn lmt(side: &str, quantity: i64, price: &str, c_oid: &str) -> Value {
        json!({"conid": AAPL, "orderType": "LMT", "side": side, "tif": "GTC",
               "quantity": quantity, "price": price, "cOID": c_oid})
    }

    #[tokio::test]
    async fn contract_search_lists_listings_in_cpgw_order() -> TestResult {
        let h = Harness::start(SimScenario::ideal()).await?;
        let (code, body) = h
            .get("/trsrv/stocks?symbols=AAPL,MSFT,SPY,TSLA,SAP,SHEL,NOPE")
            .await?;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            body["AAPL"],
            json!([{"name": "APPLE INC", "chineseName": null, "assetClass": "STK",
                    "contracts": [{"conid": 265598, "exchange": "NASDAQ", "isUS": true}]}])
        );
        assert_eq!(body["MSFT"][0]["contracts"][0]["conid"], 272_093);
        assert_eq!(
            body["SPY"][0]["contracts"],
            json!([{"conid": 756733, "exchange": "ARCA", "isUS": true}])
        );
        assert_eq!(body["TSLA"][0]["contracts"][0]["conid"], 76_792_991);
        assert_eq!(
            body["SAP"][0]["contracts"],
            json!([{"conid": 14204, "exchange": "IBIS", "isUS": false}])
        );
        let shel = body["SHEL"][0]["contracts"]
            .as_array()
            .ok_or("SHEL contracts")?;
        assert_eq!(shel.len(), 2);
        assert_eq!(
            (&shel[0]["exchange"], &shel[0]["isUS"]),
            (&json!("LSE"), &json!(false))
        );
        assert_eq!(
            (&shel[1]["exchange"], &shel[1]["isUS"]),
            (&json!("NYSE"), &json!(true))
        );
        assert!(body.get("NOPE").is_none());
        let (code, _) = h.get("/trsrv/stocks").await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        Ok(())
    }

    #[tokio::test]
    async fn snapshot_warms_up_then_answers_strings_with_optional_prefix() -> TestResult {
        let h = Harness::start(SimScenario::default()).await?;
        let url = "/iserver/marketdata/snapshot?conids=265598,272093,1&fields=31,84,86";
        let (code, first) = h.get(url).await?;
        assert_eq!(code, StatusCode::OK);
        let rows = first.as_array().ok_or("rows")?;
        // The unknown conid 1 is simply left out.
        assert_eq!(rows.len(), 2);
        for row in rows {
            assert!(row["conid"].is_i64() && row["conidEx"].is_string());
            assert!(row["_updated"].is_i64());
            for field in ["31", "84", "86"] {
                assert!(row.get(field).is_none(), "warm-up row has {field}: {row}");
            }
        }
        let (_, second) = h.get(url).await?;
        assert_eq!(second[0]["conid"], AAPL);
        assert_eq!(second[0]["conidEx"], "265598");
        assert_eq!(
            (&second[0]["31"], &second[0]["84"], &second[0]["86"]),
            (&json!("189.25"), &json!("189.24"), &json!("189.26"))
        );
        assert!(second[1]["31"].is_string() && second[1]["86"].is_string());

        for prefix in ['C', 'H'] {
            h.sim.update_scenario(|s| s.price_prefix = Some(prefix));
            let (_, prefixed) = h.get(url).await?;
            assert_eq!(prefixed[0]["31"], format!("{prefix}189.25"));
            assert_eq!(prefixed[0]["84"], "189.24");
        }

        h.sim.reset_warmups();
        let (_, again) = h.get(url).await?;
        assert!(again[0].get("31").is_none());
        h.sim.update_scenario(|s| s.snapshot_warmup = false);
        h.sim.reset_warmups();
        let (_, at_once) = h
            .get("/iserver/marketdata/snapshot?conids=756733&fields=31,55")
            .await?;
        assert!(at_once[0]["31"].is_string());
        assert_eq!(at_once[0]["55"], "SPY");
        assert!(at_once[0].get("84").is_none());
        Ok(())
    }

    #[tokio::test]
    async fn prices_walk_deterministically_from_the_seed() -> TestResult {
        async fn walk(seed: u64) -> Result<Vec<Value>, Box<dyn std::error::Error>> {
            let h = Harness::start_with(SimConfig {
                seed,
                scenario: SimScenario::ideal(),
                ..SimConfig::default()
            })
            .await?;
            let mut seen = Vec::new();
            for _ in 0..20 {
                let (_, rows) = h
                    .get("/iserver/marketdata/snapshot?conids=272093,265598&fields=31,84,86")
                    .await?;
                seen.push(rows[0]["31"].clone());
                // AAPL is pinned by the harness and never moves.
                assert_eq!(rows[1]["31"], "189.25");
            }
            Ok(seen)
        }
        let a = walk(7).await?;
        assert_eq!(a, walk(7).await?);
        assert_ne!(a, walk(8).await?);
        assert!(a.windows(2).any(|pair| pair[0] != pair[1]), "{a:?}");
        Ok(())
    }

    #[tokio::test]
    async fn history_bars_are_deterministic_numbers() -> TestResult {
        let h = Harness::start(SimScenario::ideal()).await?;
        let url = "/iserver/marketdata/history?conid=265598&period=1m&bar=1d";
        let (code, body) = h.get(url).await?;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(body["symbol"], "AAPL");
        let data = body["data"].as_array().ok_or("data")?;
        assert_eq!(data.len(), 30);
        for pair in data.windows(2) {
            let step = pair[1]["t"].as_i64().ok_or("t")? - pair[0]["t"].as_i64().ok_or("t")?;
            assert_eq!(step, 86_400_000);
        }
        for bar in data {
            for key in ["o", "h", "l", "c", "v"] {
                assert!(bar[key].is_number(), "{key} in {bar}");
            }
            let (h_, l_) = (bar["h"].as_f64().ok_or("h")?, bar["l"].as_f64().ok_or("l")?);
            assert!(h_ >= bar["o"].as_f64().ok_or("o")? && l_ <= bar["c"].as_f64().ok_or("c")?);
        }
        assert_eq!(h.get(url).await?.1, body);
        let (_, hourly) = h
            .get("/iserver/marketdata/history?conid=265598&period=1w&bar=1h")
            .await?;
        assert_eq!(hourly["data"].as_array().map(Vec::len), Some(168));
        let (code, _) = h
            .get("/iserver/marketdata/history?conid=265598&period=1m&bar=fortnight")
            .await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let (code, _) = h
            .get("/iserver/marketdata/history?conid=1&period=1m&bar=1d")
            .await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        Ok(())
    }

    #[tokio::test]
    async fn trading_endpoints_need_a_usable_session() -> TestResult {
        let h = Harness::start(SimScenario::ideal()).await?;
        for state in [AuthState::ConnectedOnly, AuthState::LoggedOut] {
            h.sim.set_auth_state(state);
            for path in [
                "/trsrv/stocks?symbols=AAPL".to_owned(),
                "/iserver/marketdata/snapshot?conids=265598".to_owned(),
                format!("/portfolio/{ACCT}/summary"),
                format!("/portfolio/{ACCT}/positions/0"),
                "/iserver/account/orders".to_owned(),
                "/iserver/account/trades".to_owned(),
            ] {
                let (code, body) = h.get(&path).await?;
                assert_eq!(code, StatusCode::UNAUTHORIZED, "{path}");
                assert_eq!(body, json!({"error": "not authenticated"}));
            }
            let (code, _) = h.place(json!([mkt("BUY", "1", "x")])).await?;
            assert_eq!(code, StatusCode::UNAUTHORIZED);
        }
        assert!(h.sim.order_log().is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn summary_and_positions_page_until_empty() -> TestResult {
        let h = Harness::start(SimScenario {
            positions_page_size: 2,
            ..SimScenario::ideal()
        })
        .await?;
        h.sim
            .set_price("MSFT", d("374.50"), d("374.49"), d("374.51"));
        h.sim
            .set_price("SPY", d("475.30"), d("475.29"), d("475.31"));
        for conid in [AAPL, 272_093, 756_733] {
            h.place_ok(json!([{"conid": conid, "orderType": "MKT", "side": "BUY",
                               "tif": "DAY", "quantity": 1}]))
                .await?;
        }
        let (code, summary) = h.get(&format!("/portfolio/{ACCT}/summary")).await?;
        assert_eq!(code, StatusCode::OK);
        // 100000 - (189.26 + 374.51 + 475.31) - 3 x 1.00 commission.
        assert_eq!(summary["totalcashvalue"]["amount"], json!(98_957.92));
        for key in ["availablefunds", "netliquidation", "buyingpower"] {
            assert!(summary[key]["amount"].is_number(), "{key}");
            assert_eq!(summary[key]["currency"], "USD");
        }
        // Net liquidation marks at last: 189.25 + 374.50 + 475.30.
        assert_eq!(summary["netliquidation"]["amount"], json!(99_996.97));
        assert_eq!(summary["accountcode"]["value"], ACCT);

        let page = |n: usize| h.get(format!("/portfolio/{ACCT}/positions/{n}"));
        let (_, first) = page(0).await?;
        let (_, second) = page(1).await?;
        let (_, past) = page(2).await?;
        let (_, far) = page(50).await?;
        assert_eq!(first.as_array().map(Vec::len), Some(2));
        assert_eq!(second.as_array().map(Vec::len), Some(1));
        assert_eq!(past, json!([]));
        assert_eq!(far, json!([]));
        let aapl = first
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["conid"] == AAPL))
            .ok_or("AAPL row")?;
        assert_eq!(aapl["acctId"], ACCT);
        assert_eq!(aapl["contractDesc"], "AAPL");
        assert_eq!(aapl["position"], json!(1.0));
        assert_eq!(aapl["mktPrice"], json!(189.25));
        assert_eq!(aapl["mktValue"], json!(189.25));
        assert_eq!(aapl["avgCost"], json!(189.26));
        assert_eq!(aapl["avgPrice"], json!(189.26));
        assert_eq!(aapl["unrealizedPnl"], json!(-0.01));
        assert_eq!(aapl["currency"], "USD");
        let (code, invalidated) = h
            .post(
                &format!("/portfolio/{ACCT}/positions/invalidate"),
                json!({}),
            )
            .await?;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(invalidated["message"], "success");
        let (code, _) = h.get("/portfolio/U0000000/summary").await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        Ok(())
    }

    #[tokio::test]
    async fn fractional_quantities_round_trip_exactly_and_positions_lag() -> TestResult {
        let h = Harness::start(SimScenario {
            positions_lag_requests: 2,
            ..SimScenario::ideal()
        })
        .await?;
        let acks = h
            .place_ok(
                json!([{"conid": AAPL, "orderType": "MKT", "side": "BUY", "tif": "DAY",
                              "cashQty": 50, "cOID": "frac-1"}]),
            )
            .await?;
        assert_eq!(acks[0]["local_order_id"], "frac-1");
        assert_eq!(acks[0]["order_status"], "Filled");
        let expected = (d("50") / d("189.26")).round_dp_with_strategy(4, RoundingStrategy::ToZero);
        assert_eq!(expected, d("0.2641"));

        let log = h.sim.order_log();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].cash_qty.as_deref(), Some("50"));
        assert_eq!(log[0].quantity, None);
        assert_eq!(log[0].filled_quantity, "0.2641");
        assert_eq!(log[0].status, SimOrderStatus::Filled);
        let status = h.status(&id_of(&acks[0])).await?;
        assert_eq!(status["cum_fill"], "0.2641");
        assert_eq!(status["total_size"], "0.2641");
        assert_eq!(status["average_price"], "189.26");
        assert_eq!(status["order_status"], "Filled");

        // The truth has it at once; CPGW reports it after two more requests.
        assert_eq!(h.sim.positions()[0].quantity, expected);
        assert!(h.sim.reported_positions().is_empty());
        let positions = format!("/portfolio/{ACCT}/positions/0");
        let cash_before =
            h.get(&format!("/portfolio/{ACCT}/summary")).await?.1["totalcashvalue"]["amount"]
                .clone();
        assert_eq!(cash_before, json!(100_000.0));
        assert_eq!(h.get(&positions).await?.1, json!([]));
        assert_eq!(h.get(&positions).await?.1, json!([]));
        let text = h.get_text(&positions).await?;
        assert!(text.contains("\"position\":0.2641"), "{text}");
        // 50 / 189.26 to 4 dp, at 189.26, plus 1% of the value as commission.
        let cost = expected * d("189.26");
        let fee = (cost / d("100")).round_dp(2);
        let cash =
            h.get(&format!("/portfolio/{ACCT}/summary")).await?.1["totalcashvalue"]["amount"]
                .clone();
        assert_eq!(
            cash,
            json!(
                (d("100000") - cost - fee)
                    .round_dp(2)
                    .to_string()
                    .parse::<f64>()?
            )
        );
        assert_eq!(h.sim.cash("USD"), d("100000") - cost - fee);

        // A fractional quantity goes through to the digit.
        let acks = h.place_ok(json!([mkt("SELL", "0.1234", "frac-2")])).await?;
        assert_eq!(h.sim.order_log()[1].quantity.as_deref(), Some("0.1234"));
        assert_eq!(h.status(&id_of(&acks[0])).await?["cum_fill"], "0.1234");
        h.sim.settle_positions();
        assert_eq!(h.sim.reported_positions()[0].quantity, d("0.1407"));
        let text = h.get_text(&positions).await?;
        assert!(text.contains("\"position\":0.1407"), "{text}");
        Ok(())
    }

    #[tokio::test]
    async fn warning_rounds_need_every_confirmation() -> TestResult {
        let h = Harness::start(SimScenario {
            warning_rounds: vec!["o163".to_owned(), "o354".to_owned()],
            ..SimScenario::ideal()
        })
        .await?;
        let (code, question) = h.place(json!([mkt("BUY", "1", "warn-1")])).await?;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(question[0]["messageIds"], json!(["o163"]));
        assert_eq!(question[0]["isSuppressed"], false);
        assert!(question[0]["message"][0].is_string());
        let first = question[0]["id"].as_str().ok_or("reply id")?.to_owned();
        assert!(h.sim.order_log().is_empty());

        let (code, question) = h
            .post(
                &format!("/iserver/reply/{first}"),
                json!({"confirmed": true}),
            )
            .await?;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(question[0]["messageIds"], json!(["o354"]));
        let second = question[0]["id"].as_str().ok_or("reply id")?.to_owned();
        assert_ne!(first, second);
        assert!(h.sim.order_log().is_empty());

        let (code, ack) = h
            .post(
                &format!("/iserver/reply/{second}"),
                json!({"confirmed": true}),
            )
            .await?;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(ack[0]["local_order_id"], "warn-1");
        assert!(ack[0]["order_id"].is_string());
        assert_eq!(h.sim.order_log().len(), 1);
        // A used reply id is gone.
        let (code, _) = h
            .post(
                &format!("/iserver/reply/{first}"),
                json!({"confirmed": true}),
            )
            .await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);

        h.sim
            .update_scenario(|s| s.warning_rounds = vec!["o999".to_owned()]);
        let (_, question) = h.place(json!([mkt("BUY", "1", "warn-2")])).await?;
        assert_eq!(question[0]["messageIds"], json!(["o999"]));
        let third = question[0]["id"].as_str().ok_or("reply id")?.to_owned();
        let (code, declined) = h
            .post(
                &format!("/iserver/reply/{third}"),
                json!({"confirmed": false}),
            )
            .await?;
        assert_eq!(code, StatusCode::OK);
        assert!(declined[0]["error"].is_string());
        assert_eq!(h.sim.order_log().len(), 1);
        assert_eq!(
            h.sim.reply_log(),
            vec![
                (first.clone(), true),
                (second, true),
                (first, true),
                (third, false)
            ]
        );
        let (code, _) = h.post("/iserver/reply/whatever", json!({})).await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        Ok(())
    }

    #[tokio::test]
    async fn a_503_can_hide_a_landed_order() -> TestResult {
        let h = Harness::start(SimScenario {
            fail_with_503_after_landing: 1,
            ..SimScenario::ideal()
        })
        .await?;
        let (code, _) = h.place(json!([mkt("BUY", "2", "land-1")])).await?;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        let log = h.sim.order_log();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].c_oid.as_deref(), Some("land-1"));
        assert_eq!(log[0].status, SimOrderStatus::Filled);
        assert_eq!(h.sim.scenario().fail_with_503_after_landing, 0);
        let (_, orders) = h.get("/iserver/account/orders").await?;
        assert_eq!(orders["orders"][0]["order_ref"], "land-1");
        // Resending blindly is refused: the product has to reconcile.
        let (code, body) = h.place(json!([mkt("BUY", "2", "land-1")])).await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["error"],
            "Local order ID=land-1 is already registered."
        );
        let (code, _) = h.place(json!([mkt("BUY", "2", "land-2")])).await?;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(h.sim.order_log().len(), 2);
        Ok(())
    }

    #[tokio::test]
    async fn ibkr_validation_refuses_bad_tickets() -> TestResult {
        let h = Harness::start(SimScenario::ideal()).await?;
        let base = json!({"conid": AAPL, "side": "BUY", "tif": "DAY"});
        let with = |extra: Value| {
            let mut order = base.clone();
            if let (Some(target), Some(extra)) = (order.as_object_mut(), extra.as_object()) {
                target.extend(extra.clone());
            }
            order
        };
        let refused = [
            (
                with(json!({"orderType": "MKT", "side": "SELL", "cashQty": 50})),
                "SELL",
            ),
            (
                with(json!({"orderType": "STP", "side": "SELL", "quantity": 1,
                            "price": 180, "auxPrice": 180})),
                "auxPrice",
            ),
            (
                with(json!({"orderType": "STOP_LIMIT", "quantity": 1, "price": 200})),
                "auxPrice",
            ),
            (with(json!({"orderType": "LMT", "quantity": 1})), "price"),
            (
                with(json!({"orderType": "MKT", "quantity": 1, "cashQty": 50})),
                "together",
            ),
            (
                with(json!({"orderType": "MKT", "quantity": 0.12345})),
                "decimals",
            ),
            (with(json!({"orderType": "MKT"})), "quantity"),
            (
                with(json!({"orderType": "TRAIL", "quantity": 1})),
                "trailing",
            ),
            (
                with(json!({"orderType": "MOC", "quantity": 1})),
                "orderType",
            ),
            (
                json!({"conid": 14204, "orderType": "MKT", "side": "BUY", "tif": "DAY",
                       "quantity": 0.5}),
                "Fractional",
            ),
            (
                json!({"conid": 1, "orderType": "MKT", "side": "BUY", "tif": "DAY",
                       "quantity": 1}),
                "conid",
            ),
        ];
        for (order, needle) in refused {
            let (code, body) = h.place(json!([order.clone()])).await?;
            assert_eq!(code, StatusCode::BAD_REQUEST, "{order}");
            let error = body["error"].as_str().ok_or("error text")?;
            assert!(error.contains(needle), "{error} for {order}");
        }
        let (code, _) = h
            .post(
                &format!("/iserver/account/{ACCT}/orders/whatif"),
                json!({"orders": [with(json!({"orderType": "MKT", "side": "SELL", "cashQty": 5}))]}),
            )
            .await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let (code, _) = h
            .post(
                "/iserver/account/U0000000/orders",
                json!({"orders": [mkt("BUY", "1", "other-acct")]}),
            )
            .await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert!(h.sim.order_log().is_empty());

        // STP takes its trigger in `price`.
        let acks = h
            .place_ok(
                json!([{"conid": AAPL, "orderType": "STP", "side": "SELL", "tif": "GTC",
                              "quantity": 1, "price": 180, "cOID": "stop-1"}]),
            )
            .await?;
        assert_eq!(acks[0]["order_status"], "PreSubmitted");
        let (code, body) = h
            .place(
                json!([{"conid": AAPL, "orderType": "STP", "side": "SELL", "tif": "GTC",
                           "quantity": 1, "price": 170, "cOID": "stop-1"}]),
            )
            .await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["error"],
            "Local order ID=stop-1 is already registered."
        );
        // Duplicates inside one submission and unknown parents are refused too.
        let (code, _) = h
            .place(json!([mkt("BUY", "1", "dup"), mkt("BUY", "1", "dup")]))
            .await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let mut orphan = mkt("SELL", "1", "orphan");
        orphan["parentId"] = json!("nobody");
        let (code, _) = h.place(json!([orphan])).await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let log = h.sim.order_log();
        assert_eq!(log.len(), 1);
        assert_eq!(log[0].price.as_deref(), Some("180"));
        assert_eq!(log[0].aux_price, None);
        Ok(())
    }

    #[tokio::test]
    async fn partial_fills_advance_one_slice_per_status_poll() -> TestResult {
        let h = Harness::start(SimScenario {
            partial_fill_steps: 3,
            ..SimScenario::ideal()
        })
        .await?;
        let acks = h.place_ok(json!([mkt("BUY", "10", "part-1")])).await?;
        assert_eq!(acks[0]["order_status"], "Submitted");
        let id = id_of(&acks[0]);
        let mut progress = Vec::new();
        for _ in 0..4 {
            let status = h.status(&id).await?;
            progress.push((
                status["cum_fill"].as_str().unwrap_or_default().to_owned(),
                status["size"].as_str().unwrap_or_default().to_owned(),
                status["order_status"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
        let expected = [
            ("3", "7", "Submitted"),
            ("6", "4", "Submitted"),
            ("10", "0", "Filled"),
            ("10", "0", "Filled"),
        ];
        let progress: Vec<(&str, &str, &str)> = progress
            .iter()
            .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_str()))
            .collect();
        assert_eq!(progress, expected);
        let status = h.status(&id).await?;
        assert_eq!(status["average_price"], "189.26");
        assert_eq!(status["side"], "B");
        assert_eq!(status["order_type"], "MARKET");
        assert_eq!(status["tif"], "DAY");
        assert_eq!(status["conid"], AAPL);
        assert_eq!(
            status["order_description_with_contract"],
            "Bought 10 AAPL Market, Day"
        );

        let (code, trades) = h.get("/iserver/account/trades").await?;
        assert_eq!(code, StatusCode::OK);
        let trades = trades.as_array().ok_or("trades")?;
        assert_eq!(trades.len(), 3);
        let sizes: Vec<&Value> = trades.iter().map(|t| &t["size"]).collect();
        assert_eq!(sizes, [&json!(3.0), &json!(3.0), &json!(4.0)]);
        for trade in trades {
            assert!(trade["execution_id"].is_string());
            assert_eq!(trade["symbol"], "AAPL");
            assert_eq!(trade["side"], "B");
            assert_eq!(trade["price"], "189.26");
            assert_eq!(trade["order_ref"], "part-1");
            assert_eq!(trade["conid"], "265598");
            assert!(trade["trade_time_r"].is_i64());
        }
        let (code, body) = h.get("/iserver/account/order/status/42").await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"], "OrderID 42 doesn't exist");
        Ok(())
    }

    #[tokio::test]
    async fn cancel_answers_come_in_every_shape() -> TestResult {
        let h = Harness::start(SimScenario::ideal()).await?;
        let cancel = |id: &str| h.delete(format!("/iserver/account/{ACCT}/order/{id}"));

        let id = id_of(&h.place_ok(json!([lmt("BUY", 1, "150", "c-1")])).await?[0]);
        assert_eq!(h.status(&id).await?["order_status"], "Submitted");
        let (code, ack) = cancel(&id).await?;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            ack,
            json!({"msg": "Request was submitted", "order_id": id.parse::<u64>()?,
                   "conid": AAPL, "account": ACCT})
        );
        assert_eq!(h.status(&id).await?["order_status"], "PendingCancel");
        assert_eq!(h.status(&id).await?["order_status"], "Cancelled");

        h.sim.update_scenario(|s| {
            s.cancel_ack_shape = CancelAckShape::OrderCancelled;
            s.cancel_as_api_cancelled = true;
        });
        let id = id_of(&h.place_ok(json!([lmt("BUY", 1, "150", "c-2")])).await?[0]);
        let (code, ack) = cancel(&id).await?;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(ack, json!({"order_id": id, "msg": "Order cancelled"}));
        let (_, listed) = h
            .get("/iserver/account/orders?filters=pending_cancel")
            .await?;
        assert_eq!(listed["orders"][0]["orderId"], id.parse::<u64>()?);
        assert_eq!(h.status(&id).await?["order_status"], "ApiCancelled");

        h.sim
            .update_scenario(|s| s.cancel_ack_shape = CancelAckShape::DoesNotExist);
        let id = id_of(&h.place_ok(json!([lmt("BUY", 1, "150", "c-3")])).await?[0]);
        let (code, refused) = cancel(&id).await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(
            refused,
            json!({"error": format!("OrderID {id} doesn't exist")})
        );
        assert_eq!(h.status(&id).await?["order_status"], "Submitted");

        h.sim
            .update_scenario(|s| s.cancel_ack_shape = CancelAckShape::RequestSubmitted);
        let (code, refused) = cancel("999").await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(refused, json!({"error": "OrderID 999 doesn't exist"}));
        // Forced fill, then a cancel comes too late.
        assert!(h.sim.fill(&id));
        assert!(!h.sim.fill(&id));
        assert_eq!(h.status(&id).await?["order_status"], "Filled");
        let (code, _) = cancel(&id).await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        Ok(())
    }

    #[tokio::test]
    async fn orders_list_warms_up_then_lists_with_order_ref() -> TestResult {
        let h = Harness::start(SimScenario::default()).await?;
        h.place_ok(json!([mkt("BUY", "2", "list-1")])).await?;
        let (code, first) = h.get("/iserver/account/orders").await?;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(first, json!({"orders": [], "snapshot": false}));
        let (_, second) = h.get("/iserver/account/orders").await?;
        assert_eq!(second["snapshot"], true);
        let row = &second["orders"][0];
        assert!(row["orderId"].is_u64());
        assert_eq!(row["conid"], AAPL);
        assert_eq!(row["ticker"], "AAPL");
        assert_eq!(row["status"], "Filled");
        assert_eq!(row["side"], "BUY");
        assert_eq!(row["totalSize"], json!(2.0));
        assert_eq!(row["filledQuantity"], json!(2.0));
        assert_eq!(row["remainingQuantity"], json!(0.0));
        assert_eq!(row["avgPrice"], "189.26");
        assert_eq!(row["order_ref"], "list-1");
        assert_eq!(row["orderType"], "Market");
        assert_eq!(row["timeInForce"], "DAY");
        let (_, submitted) = h.get("/iserver/account/orders?filters=Submitted").await?;
        assert_eq!(submitted["orders"], json!([]));
        Ok(())
    }

    #[tokio::test]
    async fn competing_session_blocks_trading_until_taken_back() -> TestResult {
        let h = Harness::start(SimScenario {
            competing: true,
            ..SimScenario::ideal()
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

    #[tokio::test]
    async fn idle_session_lapses_without_tickles() -> TestResult {
        let h = Harness::start(SimScenario {
            session_idle_lapse_requests: Some(2),
            ..SimScenario::ideal()
        })
        .await?;
        assert_eq!(h.get("/iserver/accounts").await?.0, StatusCode::OK);
        assert_eq!(h.get("/iserver/accounts").await?.0, StatusCode::OK);
        // The third request without a tickle finds the session gone.
        assert_eq!(
            h.get("/iserver/accounts").await?.0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(h.sim.auth_state(), AuthState::ConnectedOnly);
        let (_, status) = h.post("/iserver/auth/status", json!({})).await?;
        assert_eq!(status["authenticated"], false);

        let (code, _) = h
            .post(
                "/iserver/auth/ssodh/init",
                json!({"publish": true, "compete": true}),
            )
            .await?;
        assert_eq!(code, StatusCode::OK);
        // Tickles keep it alive however many requests go by.
        for _ in 0..3 {
            assert_eq!(h.post("/tickle", json!({})).await?.0, StatusCode::OK);
            assert_eq!(h.get("/iserver/accounts").await?.0, StatusCode::OK);
            assert_eq!(h.get("/iserver/accounts").await?.0, StatusCode::OK);
        }
        assert_eq!(h.sim.auth_state(), AuthState::LoggedIn);

        // And a test can lapse it on purpose, to wherever the scenario says.
        h.sim.update_scenario(|s| {
            s.session_idle_lapse_requests = None;
            s.idle_lapse_state = AuthState::LoggedOut;
        });
        h.sim.lapse_session();
        assert_eq!(h.sim.auth_state(), AuthState::LoggedOut);
        assert_eq!(
            h.post("/tickle", json!({})).await?.0,
            StatusCode::UNAUTHORIZED
        );
        Ok(())
    }

    #[tokio::test]
    async fn market_hours_park_orders_and_inactive_orders_stay_dead() -> TestResult {
        let h = Harness::start(SimScenario {
            market_open: false,
            ..SimScenario::ideal()
        })
        .await?;
        let id = id_of(&h.place_ok(json!([mkt("BUY", "1", "closed-1")])).await?[0]);
        assert_eq!(h.status(&id).await?["order_status"], "PreSubmitted");
        let (_, whatif) = h
            .post(
                &format!("/iserver/account/{ACCT}/orders/whatif"),
                json!({"orders": [mkt("BUY", "1", "closed-2")]}),
            )
            .await?;
        assert!(whatif["warn"].is_string());
        h.sim.update_scenario(|s| s.market_open = true);
        assert_eq!(h.status(&id).await?["order_status"], "Filled");

        h.sim.update_scenario(|s| s.inactive_orders = true);
        let acks = h.place_ok(json!([mkt("BUY", "1", "dead-1")])).await?;
        assert_eq!(acks[0]["order_status"], "Inactive");
        let id = id_of(&acks[0]);
        let status = h.status(&id).await?;
        assert_eq!(status["order_status"], "Inactive");
        assert_eq!(status["order_ccp_status"], "Pending Submit");
        let (code, refused) = h
            .delete(&format!("/iserver/account/{ACCT}/order/{id}"))
            .await?;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        assert_eq!(refused["error"], "Order is inactive");
        assert!(h.sim.fill(&id));
        assert_eq!(h.status(&id).await?["order_status"], "Filled");
        Ok(())
    }

    #[tokio::test]
    async fn brackets_release_children_and_cancel_the_other_leg() -> TestResult {
        let h = Harness::start(SimScenario::ideal()).await?;
        let bracket = |tag: &str, entry: &str| {
            json!([
                {"conid": AAPL, "orderType": "LMT", "side": "BUY", "tif": "GTC",
                 "quantity": 10, "price": entry, "cOID": tag},
                {"conid": AAPL, "orderType": "LMT", "side": "SELL", "tif": "GTC",
                 "quantity": 10, "price": "195", "cOID": format!("{tag}-tp"), "parentId": tag},
                {"conid": AAPL, "orderType": "STP", "side": "SELL", "tif": "GTC",
                 "quantity": 10, "price": "185", "cOID": format!("{tag}-sl"), "parentId": tag},
            ])
        };
        let acks = h.place_ok(bracket("br-1", "189.30")).await?;
        let statuses: Vec<&Value> = acks.iter().map(|a| &a["order_status"]).collect();
        assert_eq!(
            statuses,
            [
                &json!("Filled"),
                &json!("Submitted"),
                &json!("PreSubmitted")
            ]
        );
        let log = h.sim.order_log();
        assert_eq!(log[1].parent_id.as_deref(), Some("br-1"));
        assert_eq!(log[2].parent_id.as_deref(), Some("br-1"));
        assert_eq!(h.sim.positions()[0].quantity, d("10"));

        h.sim
            .set_price("AAPL", d("195.10"), d("195.09"), d("195.11"));
        let tp = h.status(&id_of(&acks[1])).await?;
        assert_eq!(tp["order_status"], "Filled");
        assert_eq!(tp["average_price"], "195.09");
        assert_eq!(
            h.status(&id_of(&acks[2])).await?["order_status"],
            "Cancelled"
        );
        assert!(h.sim.positions().is_empty());

        // A parent that does not fill holds its children; cancelling it
        // takes them along.
        let acks = h.place_ok(bracket("br-2", "150")).await?;
        let statuses: Vec<&Value> = acks.iter().map(|a| &a["order_status"]).collect();
        assert_eq!(
            statuses,
            [
                &json!("Submitted"),
                &json!("PreSubmitted"),
                &json!("PreSubmitted")
            ]
        );
        let (_, listed) = h.get("/iserver/account/orders").await?;
        let child = listed["orders"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["order_ref"] == "br-2-sl"))
            .ok_or("child row")?;
        assert_eq!(child["parentId"], id_of(&acks[0]).parse::<u64>()?);
        assert_eq!(child["auxPrice"], "185.00");
        h.delete(&format!(
            "/iserver/account/{ACCT}/order/{}",
            id_of(&acks[0])
        ))
        .await?;
        for ack in &acks {
            assert_eq!(
                h.status(&id_of(ack)).await?["order_status"],
                "PendingCancel"
            );
            assert_eq!(h.status(&id_of(ack)).await?["order_status"], "Cancelled");
        }
        Ok(())
    }

    #[tokio::test]
    async fn stops_and_trailing_stops_trigger_at_the_touch() -> TestResult {
        let h = Harness::start(SimScenario::ideal()).await?;
        let trail = h
            .place_ok(
                json!([{"conid": AAPL, "orderType": "TRAIL", "side": "SELL", "tif": "GTC",
                              "quantity": 1, "trailingAmt": 1, "trailingType": "amt"}]),
            )
            .await?;
        let trail = id_of(&trail[0]);
        let stop_limit = h
            .place_ok(
                json!([{"conid": AAPL, "orderType": "STOP_LIMIT", "side": "BUY",
                              "tif": "GTC", "quantity": 1, "price": "191.50", "auxPrice": "191"}]),
            )
            .await?;
        let stop_limit = id_of(&stop_limit[0]);
        let prices = [
            ("190.00", "PreSubmitted", "PreSubmitted"),
            ("189.10", "PreSubmitted", "PreSubmitted"),
            ("188.90", "Filled", "PreSubmitted"),
            ("191.20", "Filled", "Filled"),
        ];
        for (last, trail_status, stop_limit_status) in prices {
            let last = d(last);
            let tick = d("0.01");
            assert!(h.sim.set_price("AAPL", last, last - tick, last + tick));
            assert_eq!(
                h.status(&trail).await?["order_status"],
                trail_status,
                "{last}"
            );
            assert_eq!(
                h.status(&stop_limit).await?["order_status"],
                stop_limit_status,
                "{last}"
            );
        }
        // The trail peaked at 190.00, so it sold at the bid once 189.00 broke.
        assert_eq!(h.status(&trail).await?["average_price"], "188.89");
        assert_eq!(h.status(&stop_limit).await?["average_price"], "191.21");
        Ok(())
    }

    #[tokio::test]
    async fn whatif_reports_amounts_as_strings() -> TestResult {
        let h = Harness::start(SimScenario::ideal()).await?;
        let whatif = |order: Value| {
            h.post(
                format!("/iserver/account/{ACCT}/orders/whatif"),
                json!({ "orders": [order] }),
            )
        };
        let (code, preview) = whatif(mkt("BUY", "10", "wi-1")).await?;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(
            preview["amount"],
            json!({"amount": "1,892.60 USD", "commission": "1.00 USD", "total": "1,893.60 USD"})
        );
        assert_eq!(
            preview["equity"],
            json!({"current": "100,000.00 USD", "change": "-1.00 USD", "after": "99,999.00 USD"})
        );
        assert_eq!(
            preview["initial"],
            json!({"current": "0.00 USD", "change": "946.30 USD", "after": "946.30 USD"})
        );
        assert_eq!(preview["maintenance"]["change"], "473.15 USD");
        assert_eq!(preview["warn"], Value::Null);
        assert_eq!(preview["error"], Value::Null);

        let (_, cash) = whatif(json!({"conid": AAPL, "orderType": "MKT", "side": "BUY",
                                      "tif": "DAY", "cashQty": 2}))
        .await?;
        assert_eq!(
            cash["amount"],
            json!({"amount": "2.00 USD", "commission": "0.02 USD", "total": "2.02 USD"})
        );
        let (_, too_big) = whatif(json!({"conid": 756733, "orderType": "MKT", "side": "BUY",
                                         "tif": "DAY", "quantity": 1000}))
        .await?;
        assert!(too_big["error"].is_string());
        assert!(h.sim.order_log().is_empty());
        Ok(())
    }
}
