//! Exercises the simulator over real HTTPS on loopback, with a client that
//! trusts exactly the simulator's certificate, and a manual clock the tests
//! move themselves (no sleeps).

use std::str::FromStr;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::{CpgwSimulator, DEFAULT_START, SimClock, SimConfig, SimScenario};

mod clock;
mod market;
mod orders;
mod orders_list;
mod pacing;
mod portfolio;
mod questions;
mod rules;
mod session;

type TestResult = Result<(), Box<dyn std::error::Error>>;
type Answer = Result<(StatusCode, Value), Box<dyn std::error::Error>>;

const ACCT: &str = "DU1234567";
const AAPL: i64 = 265_598;

fn pinned_client(certificate_der: &[u8]) -> Result<Client, reqwest::Error> {
    Client::builder()
        .tls_certs_only([reqwest::Certificate::from_der(certificate_der)?])
        .no_proxy()
        .tcp_nodelay(true)
        .build()
}

fn d(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

/// A simulator on a manual clock at [`DEFAULT_START`] (Tuesday 10:00 New
/// York) and a client pinned to its certificate. `start` has already made the
/// two accounts calls a session needs first (`GET /iserver/accounts`,
/// `GET /portfolio/accounts`), as a client would.
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

    /// `config` with its clock replaced by a manual one; primed.
    async fn start_with(config: SimConfig) -> Result<Harness, Box<dyn std::error::Error>> {
        let h = Harness::start_unprimed(config).await?;
        h.prime().await?;
        Ok(h)
    }

    /// The accounts calls a brokerage session needs first.
    async fn prime(&self) -> TestResult {
        for path in ["/iserver/accounts", "/portfolio/accounts"] {
            assert_eq!(self.get(path).await?.0, StatusCode::OK, "{path}");
        }
        Ok(())
    }

    /// A new brokerage session, primed again.
    async fn new_session(&self) -> TestResult {
        self.sim.restart_brokerage_session();
        self.prime().await
    }

    /// Like `start_with`, without the accounts calls.
    async fn start_unprimed(config: SimConfig) -> Result<Harness, Box<dyn std::error::Error>> {
        let sim = CpgwSimulator::start(SimConfig {
            clock: SimClock::manual(DEFAULT_START),
            ..config
        })
        .await?;
        let client = pinned_client(&sim.certificate_der())?;
        // Exact quotes for AAPL: last 189.25, bid 189.24, ask 189.26.
        assert!(sim.set_price("AAPL", d("189.25"), d("189.24"), d("189.26")));
        Ok(Harness { sim, client })
    }

    fn advance_secs(&self, seconds: u64) {
        self.sim.advance(Duration::from_secs(seconds));
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
            format!("/iserver/account/{ACCT}/orders"),
            json!({ "orders": orders }),
        )
        .await
    }

    async fn whatif(&self, order: Value) -> Answer {
        self.post(
            format!("/iserver/account/{ACCT}/orders/whatif"),
            json!({ "orders": [order] }),
        )
        .await
    }

    async fn reply(&self, question: &Value, confirmed: bool) -> Answer {
        let id = question[0]["id"].as_str().ok_or("reply id")?.to_owned();
        self.post(
            format!("/iserver/reply/{id}"),
            json!({ "confirmed": confirmed }),
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
            .get(format!("/iserver/account/order/status/{order_id}"))
            .await?;
        assert_eq!(code, StatusCode::OK, "{body}");
        Ok(body)
    }
}

fn id_of(ack: &Value) -> String {
    ack["order_id"].as_str().unwrap_or_default().to_owned()
}

/// The message ids of a question answer.
fn asked(question: &Value) -> Value {
    question[0]["messageIds"].clone()
}

fn mkt(side: &str, quantity: &str, c_oid: &str) -> Value {
    json!({"conid": AAPL, "orderType": "MKT", "side": side, "tif": "DAY",
           "quantity": Decimal::from_str(quantity).unwrap_or_default(), "cOID": c_oid})
}

fn lmt(side: &str, quantity: i64, price: &str, c_oid: &str) -> Value {
    json!({"conid": AAPL, "orderType": "LMT", "side": side, "tif": "GTC",
           "quantity": quantity, "price": price, "cOID": c_oid})
}
