//! Order tools against a small fake CPGW over loopback: guards, dry-run, warnings,
//! indeterminate outcomes, idempotency, the journal and reconciliation.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use ibkr_agent::cpgw::{AccountCache, BrokerState, ConidCache, CpgwClient, QuoteCache};
use ibkr_agent::gates::CheckedRequest;
use ibkr_agent::market_clock::MarketClock;
use ibkr_agent::tools::context::ProgressSink;
use ibkr_agent::tools::context::ToolContext;
use ibkr_agent::tools::orders;
use ibkr_agent::trading::OrdersRuntime;
use ibkr_agent::trading::journal::{JOURNAL_FILE, Journal, verify};
use protocol::envelope::{Outcome, RelayProgress, RequestId};
use serde_json::{Map, Value, json};
use shared_safety::guards::TradingPolicy;
use shared_safety::money::Decimal;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What the fake answers to `POST /orders` next.
#[derive(Clone, Debug)]
enum Place {
    /// Accept (ack with a fresh order id; the order appears in the live list).
    Ack,
    /// HTTP 503 although the order landed.
    Landed503,
    /// HTTP 503 and nothing landed.
    Lost503,
    /// Answer this status and body.
    Body(u16, String),
}

#[derive(Default)]
struct Fake {
    place_script: VecDeque<Place>,
    reply_script: VecDeque<Place>,
    /// Bodies of every `POST /orders`.
    posted: Vec<Value>,
    /// `confirmed` of every reply.
    replies: Vec<bool>,
    /// The orders awaiting a confirmation.
    awaiting: Option<Value>,
    live: Vec<Value>,
    next_id: u64,
    positions: Vec<Value>,
    status_script: VecDeque<Value>,
}

type Shared = Arc<Mutex<Fake>>;

fn land(fake: &mut Fake, body: &Value) -> Vec<Value> {
    let mut acks = Vec::new();
    for order in body["orders"].as_array().cloned().unwrap_or_default() {
        fake.next_id += 1;
        let id = (1000 + fake.next_id).to_string();
        fake.live.push(
            json!({"orderId": id, "order_ref": order["cOID"], "status": "Submitted",
                              "ticker": "AAPL"}),
        );
        acks.push(json!({"order_id": id, "order_status": "Submitted",
                         "local_order_id": order["cOID"]}));
    }
    acks
}

fn answer(fake: &mut Fake, step: Place, body: &Value) -> Response {
    match step {
        Place::Ack => Json200(Value::Array(land(fake, body))).into_response(),
        Place::Landed503 => {
            land(fake, body);
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
        Place::Lost503 => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        Place::Body(status, text) => {
            if text.contains("messageIds") {
                fake.awaiting = Some(body.clone());
            }
            (
                StatusCode::from_u16(status).unwrap(),
                [("content-type", "application/json")],
                text,
            )
                .into_response()
        }
    }
}

struct Json200(Value);
impl IntoResponse for Json200 {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

async fn place(State(fake): State<Shared>, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap();
    let mut fake = fake.lock().unwrap();
    fake.posted.push(body.clone());
    let step = fake.place_script.pop_front().unwrap_or(Place::Ack);
    answer(&mut fake, step, &body)
}

async fn reply(State(fake): State<Shared>, Path(_id): Path<String>, body: String) -> Response {
    let body: Value = serde_json::from_str(&body).unwrap();
    let mut fake = fake.lock().unwrap();
    let confirmed = body["confirmed"].as_bool().unwrap();
    fake.replies.push(confirmed);
    if !confirmed {
        fake.awaiting = None;
        return Json200(json!([{"error": "declined"}])).into_response();
    }
    let awaiting = fake.awaiting.clone().unwrap_or(Value::Null);
    let step = fake.reply_script.pop_front().unwrap_or(Place::Ack);
    answer(&mut fake, step, &awaiting)
}

fn router(fake: Shared) -> Router {
    Router::new()
        .route(
            "/v1/api/iserver/accounts",
            get(|| async {
                axum::Json(
                    json!({"accounts": ["DU123"], "selectedAccount": "DU123", "isPaper": true}),
                )
            }),
        )
        .route(
            "/v1/api/trsrv/stocks",
            get(|| async {
                axum::Json(json!({"AAPL": [{"name": "APPLE", "contracts": [
                    {"conid": 265598, "exchange": "NASDAQ", "isUS": true}]}]}))
            }),
        )
        .route(
            "/v1/api/iserver/marketdata/snapshot",
            get(|| async {
                axum::Json(json!([{"conid": 265598, "31": "10.00", "84": "9.99", "86": "10.01"}]))
            }),
        )
        .route(
            "/v1/api/portfolio/{acct}/positions/{page}",
            get(
                |State(fake): State<Shared>, Path((_acct, page)): Path<(String, u32)>| async move {
                    let fake = fake.lock().unwrap();
                    axum::Json(if page == 0 {
                        Value::Array(fake.positions.clone())
                    } else {
                        json!([])
                    })
                },
            ),
        )
        .route(
            "/v1/api/portfolio/{acct}/positions/invalidate",
            post(|| async { axum::Json(json!({})) }),
        )
        .route("/v1/api/iserver/account/{acct}/orders", post(place))
        .route("/v1/api/iserver/reply/{id}", post(reply))
        .route(
            "/v1/api/iserver/account/orders",
            get(|State(fake): State<Shared>| async move {
                let fake = fake.lock().unwrap();
                axum::Json(json!({"orders": fake.live, "snapshot": true}))
            }),
        )
        .route(
            "/v1/api/iserver/account/order/status/{id}",
            get(|State(fake): State<Shared>| async move {
                let mut fake = fake.lock().unwrap();
                let next = if fake.status_script.len() > 1 {
                    fake.status_script.pop_front()
                } else {
                    fake.status_script.front().cloned()
                };
                axum::Json(next.unwrap_or_else(|| json!({"error": "unknown"})))
            }),
        )
        .route(
            "/v1/api/iserver/account/{acct}/order/{id}",
            delete(|| async { axum::Json(json!({"msg": "Request was submitted", "order_id": 1})) }),
        )
        .with_state(fake)
}

struct Harness {
    fake: Shared,
    base: String,
    _dir: tempfile::TempDir,
    state_dir: std::path::PathBuf,
    runtime: OrdersRuntime,
    cpgw: CpgwClient,
    contracts: ConidCache,
    accounts: AccountCache,
    /// The read tools' quotes; order guards must never use them.
    quotes: QuoteCache,
    broker: watch::Sender<BrokerState>,
}

fn live_policy() -> TradingPolicy {
    TradingPolicy {
        dry_run: false,
        duplicate_window_seconds: 0,
        ..TradingPolicy::default()
    }
}

impl Harness {
    async fn new(policy: TradingPolicy) -> Harness {
        let fake: Shared = Arc::new(Mutex::new(Fake::default()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = router(fake.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let base = format!("http://{address}/v1/api");
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().to_path_buf();
        Harness::with_state(fake, base, dir, state_dir, policy)
    }

    fn with_state(
        fake: Shared,
        base: String,
        dir: tempfile::TempDir,
        state_dir: std::path::PathBuf,
        policy: TradingPolicy,
    ) -> Harness {
        let journal = Journal::open_in(&state_dir).unwrap();
        let mut runtime = OrdersRuntime::with_journal(journal, policy);
        // Tuesday 24 November 2026, 10:00 ET: regular hours on the simulated exchange clock.
        runtime.clock = MarketClock::simulated_at(time::macros::datetime!(2026-11-24 15:00 UTC));
        let cpgw = CpgwClient::new(&base).unwrap();
        let (broker, _) = watch::channel(BrokerState::Unknown);
        Harness {
            fake,
            contracts: ConidCache::new(cpgw.clone()),
            accounts: AccountCache::new(broker.subscribe()),
            quotes: QuoteCache::new(broker.subscribe(), Duration::from_secs(10)),
            cpgw,
            broker,
            base,
            _dir: dir,
            state_dir,
            runtime,
        }
    }

    /// Simulates a restart: everything in memory is dropped, the journal is reopened.
    fn restart(self, policy: TradingPolicy) -> Harness {
        let Harness {
            fake,
            base,
            _dir,
            state_dir,
            runtime,
            ..
        } = self;
        drop(runtime);
        Harness::with_state(fake, base, _dir, state_dir, policy)
    }

    async fn call_with(
        &self,
        tool: &str,
        arguments: Value,
        progress: Option<&ProgressSink>,
    ) -> Result<Value, Outcome> {
        self.call_within(tool, arguments, progress, Duration::from_secs(30))
            .await
    }

    /// A call whose relay deadline is `within` from now.
    async fn call_within(
        &self,
        tool: &str,
        arguments: Value,
        progress: Option<&ProgressSink>,
        within: Duration,
    ) -> Result<Value, Outcome> {
        let spec = protocol::catalog::find(tool).unwrap();
        shared_safety::schema::validate_arguments(spec, &arguments).unwrap();
        let arguments: Map<String, Value> = arguments.as_object().unwrap().clone();
        let request = CheckedRequest {
            tool: spec,
            arguments,
            live_scope_granted: false,
        };
        let clock = ibkr_agent::market_clock::MarketClock::system();
        let context = ToolContext {
            market_clock: &clock,
            cpgw: &self.cpgw,
            broker: &self.broker,
            sidecar_id: "sc-test",
            contracts: &self.contracts,
            accounts: &self.accounts,
            quotes: &self.quotes,
            connected_for: Duration::ZERO,
            auth: None,
            orders: Some(&self.runtime),
            live_scope_granted: false,
            trading_pause: None,
            progress,
            deadline: tokio::time::Instant::now() + within,
        };
        orders::run(&request, &context).await
    }

    async fn call(&self, tool: &str, arguments: Value) -> Result<Value, Outcome> {
        self.call_with(tool, arguments, None).await
    }

    fn posted(&self) -> usize {
        self.fake.lock().unwrap().posted.len()
    }
}

fn code(outcome: Result<Value, Outcome>) -> String {
    match outcome {
        Err(Outcome::Refused(body)) | Err(Outcome::Failed(body)) => body.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn dry_run_is_the_default_and_sends_nothing() {
    let h = Harness::new(TradingPolicy::default()).await;
    let result = h
        .call("ibkr_buy", json!({"symbol": "AAPL", "cash_amount": "5"}))
        .await
        .unwrap();
    assert_eq!(result["status"], "dry_run");
    assert_eq!(result["would_send"]["orders"][0]["cashQty"], json!(5));
    assert_eq!(result["would_send"]["orders"][0]["orderType"], "MKT");
    assert_eq!(h.posted(), 0);
    assert_eq!(h.runtime.journal.spent_on_day(today()), Decimal::ZERO);
}

fn today() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    (now.as_millis() as i64).div_euclid(86_400_000)
}

/// The order guards price an order with a quote of their own, never the read tools' kept one:
/// with AAPL kept at 1.00 (20 shares: 20 USD, under the cap), the buy is valued at CPGW's
/// ask of 10.01 and refused.
#[tokio::test]
async fn order_guards_never_price_with_a_kept_read_quote() {
    let h = Harness::new(live_policy()).await;
    let stale = ibkr_agent::cpgw::marketdata::Quote {
        conid: 265598,
        last: Some(Decimal::ONE),
        last_prefix: shared_safety::money::PricePrefix::Live,
        bid: Some(Decimal::ONE),
        ask: Some(Decimal::ONE),
    };
    h.quotes
        .quotes_with(&[265598], |_| async {
            Ok([(265598, stale.clone())].into_iter().collect())
        })
        .await
        .unwrap();
    assert_eq!(h.quotes.len(), 1);
    assert_eq!(
        code(
            h.call("ibkr_buy", json!({"symbol": "AAPL", "quantity": "20"}))
                .await
        ),
        "ORDER_VALUE_CAP_EXCEEDED"
    );
}

#[tokio::test]
async fn guard_refusals_reach_the_caller_with_their_codes() {
    let mut policy = live_policy();
    policy.symbol_denylist = vec!["MSFT".into()];
    policy.max_daily_value = Some(Decimal::from(30));
    let h = Harness::new(policy).await;
    // Value cap: 20 x ask 10.01 > 100.
    assert_eq!(
        code(
            h.call("ibkr_buy", json!({"symbol": "AAPL", "quantity": "20"}))
                .await
        ),
        "ORDER_VALUE_CAP_EXCEEDED"
    );
    // Naked short: nothing held.
    assert_eq!(
        code(
            h.call("ibkr_sell", json!({"symbol": "AAPL", "quantity": "1"}))
                .await
        ),
        "ORDER_NAKED_SHORT_REFUSED"
    );
    // Cash on a sell is not in the schema; cash + limit on a buy is invalid.
    assert_eq!(
        code(
            h.call(
                "ibkr_buy",
                json!({"symbol": "AAPL", "cash_amount": "5", "limit_price": "9"})
            )
            .await
        ),
        "ORDER_INVALID"
    );
    // Daily cap: 25 sent, then 10 more is over 30.
    h.call("ibkr_buy", json!({"symbol": "AAPL", "cash_amount": "25"}))
        .await
        .unwrap();
    assert_eq!(
        code(
            h.call("ibkr_buy", json!({"symbol": "AAPL", "cash_amount": "10"}))
                .await
        ),
        "ORDER_DAILY_CAP_EXCEEDED"
    );
    // Stop on the wrong side: a sell stop above the last price.
    h.fake.lock().unwrap().positions =
        vec![json!({"conid": 265598, "position": 3, "ticker": "AAPL"})];
    assert_eq!(
        code(
            h.call(
                "ibkr_stop_order",
                json!({"symbol": "AAPL", "side": "SELL", "quantity": "1", "stop_price": "11"})
            )
            .await
        ),
        "ORDER_STOP_WRONG_SIDE"
    );
    // Blocked attempts are journaled with their guard.
    let history = h.call("ibkr_trade_history", json!({})).await.unwrap();
    let blocked = history["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["status"] == "blocked")
        .count();
    assert_eq!(blocked, 4);
    assert_eq!(h.posted(), 1);
}

#[tokio::test]
async fn outside_hours_and_unverified_account_are_refused() {
    let mut h = Harness::new(live_policy()).await;
    // Saturday 21 November 2026 on the exchange clock: closed.
    h.runtime.clock = MarketClock::simulated_at(time::macros::datetime!(2026-11-21 15:00 UTC));
    assert_eq!(
        code(
            h.call("ibkr_buy", json!({"symbol": "AAPL", "cash_amount": "5"}))
                .await
        ),
        "ORDER_OUTSIDE_TRADING_HOURS"
    );
    assert_eq!(h.posted(), 0);
}

#[tokio::test]
async fn unknown_warning_is_declined_and_nothing_is_placed() {
    let h = Harness::new(live_policy()).await;
    h.fake.lock().unwrap().place_script.push_back(Place::Body(
        200,
        json!([{"id": "q-1", "message": ["Something unusual"], "messageIds": ["o999"]}])
            .to_string(),
    ));
    assert_eq!(
        code(
            h.call("ibkr_buy", json!({"symbol": "AAPL", "cash_amount": "5"}))
                .await
        ),
        "ORDER_WARNING_DECLINED"
    );
    let fake = h.fake.lock().unwrap();
    assert_eq!(fake.replies, vec![false]);
    assert!(fake.live.is_empty());
    drop(fake);
    // Definitely not placed: no spend, nothing pending.
    assert_eq!(h.runtime.journal.spent_on_day(today()), Decimal::ZERO);
    assert!(h.runtime.journal.pending().is_empty());
}

#[tokio::test]
async fn allowed_warnings_are_confirmed_over_several_rounds() {
    let h = Harness::new(live_policy()).await;
    {
        let mut fake = h.fake.lock().unwrap();
        fake.place_script.push_back(Place::Body(
            200,
            json!([{"id": "q-1", "message": ["price"], "messageIds": ["o163"]}]).to_string(),
        ));
        fake.reply_script.push_back(Place::Body(
            200,
            json!([{"id": "q-2", "message": ["fractional"], "messageIds": ["o10152", "o354"]}])
                .to_string(),
        ));
    }
    let result = h
        .call("ibkr_buy", json!({"symbol": "AAPL", "cash_amount": "5"}))
        .await
        .unwrap();
    assert_eq!(result["status"], "sent");
    assert_eq!(
        result["accepted_warnings"],
        json!(["o163", "o10152", "o354"])
    );
    assert_eq!(h.fake.lock().unwrap().replies, vec![true, true]);
}

#[tokio::test]
async fn a_503_then_a_retry_with_the_same_key_places_exactly_one_order() {
    let h = Harness::new(live_policy()).await;
    h.fake
        .lock()
        .unwrap()
        .place_script
        .push_back(Place::Landed503);
    let args = json!({"symbol": "AAPL", "cash_amount": "5", "idempotency_key": "k-1"});
    assert_eq!(
        code(h.call("ibkr_buy", args.clone()).await),
        "ORDER_OUTCOME_UNKNOWN"
    );
    // Indeterminate: counts toward the cap and blocks any buy of the instrument without the
    // key, whatever its size.
    assert_eq!(h.runtime.journal.spent_on_day(today()), Decimal::from(5));
    assert_eq!(
        code(
            h.call("ibkr_buy", json!({"symbol": "AAPL", "cash_amount": "6"}))
                .await
        ),
        "ORDER_UNRESOLVED_PENDING"
    );
    let retried = h.call("ibkr_buy", args.clone()).await.unwrap();
    assert_eq!(retried["status"], "sent");
    assert_eq!(retried["reconciled"], true);
    assert_eq!(h.posted(), 1);
    assert_eq!(h.fake.lock().unwrap().live.len(), 1);
    // Counted once.
    assert_eq!(h.runtime.journal.spent_on_day(today()), Decimal::from(5));
    // A third call replays too.
    let again = h.call("ibkr_buy", args).await.unwrap();
    assert_eq!(again["replayed"], true);
    assert_eq!(h.posted(), 1);
}

#[tokio::test]
async fn a_lost_503_is_never_resent_until_the_owner_settles_it() {
    let h = Harness::new(live_policy()).await;
    h.fake
        .lock()
        .unwrap()
        .place_script
        .push_back(Place::Lost503);
    let args = json!({"symbol": "AAPL", "cash_amount": "5", "idempotency_key": "k-2"});
    assert_eq!(
        code(h.call("ibkr_buy", args.clone()).await),
        "ORDER_OUTCOME_UNKNOWN"
    );
    // The broker shows nothing, which proves nothing: the retry is not sent.
    assert_eq!(
        code(h.call("ibkr_buy", args.clone()).await),
        "ORDER_OUTCOME_UNKNOWN"
    );
    assert_eq!(h.posted(), 1);
    assert_eq!(h.runtime.journal.spent_on_day(today()), Decimal::from(5));
    // The owner settles it as not placed (journaled); then the retry places it, once, under a
    // client order id of its own (the first one may be registered at IBKR for 24 hours).
    let attempt = h.runtime.journal.pending()[0].id;
    h.runtime
        .journal
        .outcome(
            attempt,
            "settled",
            json!({"placed": false, "by": "owner", "via": "test"}),
            0,
        )
        .unwrap();
    assert_eq!(h.runtime.journal.spent_on_day(today()), Decimal::ZERO);
    let retried = h.call("ibkr_buy", args.clone()).await.unwrap();
    assert_eq!(retried["status"], "sent");
    let again = h.call("ibkr_buy", args).await.unwrap();
    assert_eq!(again["replayed"], true);
    let fake = h.fake.lock().unwrap();
    assert_eq!(fake.posted.len(), 2);
    assert_ne!(
        fake.posted[0]["orders"][0]["cOID"],
        fake.posted[1]["orders"][0]["cOID"]
    );
    assert_eq!(fake.live.len(), 1);
    drop(fake);
    assert_eq!(h.runtime.journal.spent_on_day(today()), Decimal::from(5));
}

#[tokio::test]
async fn a_4xx_rejection_neither_counts_nor_blocks() {
    let h = Harness::new(live_policy()).await;
    h.fake
        .lock()
        .unwrap()
        .place_script
        .push_back(Place::Body(400, json!({"error": "bad order"}).to_string()));
    assert_eq!(
        code(
            h.call("ibkr_buy", json!({"symbol": "AAPL", "cash_amount": "5"}))
                .await
        ),
        "ORDER_REJECTED"
    );
    assert_eq!(h.runtime.journal.spent_on_day(today()), Decimal::ZERO);
    let result = h
        .call("ibkr_buy", json!({"symbol": "AAPL", "cash_amount": "5"}))
        .await
        .unwrap();
    assert_eq!(result["status"], "sent");
}

#[tokio::test]
async fn crash_between_intent_and_send_is_reconciled_and_counted_once() {
    let h = Harness::new(live_policy()).await;
    // The order lands, then the sidecar dies before journaling the outcome: simulate by
    // journaling only the intent of an order the broker has.
    let coid = shared_safety::guards::client_order_id("crash", "sc-test|DU123");
    h.fake.lock().unwrap().live.push(
        json!({"orderId": "4242", "order_ref": coid, "status": "Submitted", "ticker": "AAPL"}),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    h.runtime
        .journal
        .intent(
            json!({"tool": "ibkr_buy", "symbol": "AAPL", "side": "BUY", "notional": "7",
                   "dry_run": false, "coid": coid, "fingerprint": "fp1-crash",
                   "legs": [{"coid": coid}]}),
            now,
        )
        .unwrap();
    let h = h.restart(live_policy());
    assert!(verify(&h.state_dir.join(JOURNAL_FILE)).unwrap().ok);
    assert_eq!(h.runtime.journal.pending().len(), 1);
    assert_eq!(h.runtime.journal.spent_on_day(today()), Decimal::from(7));
    let result = h.call("ibkr_reconcile_pending", json!({})).await.unwrap();
    assert_eq!(result["reconciled"][0]["placed"], true);
    assert_eq!(result["still_pending"], 0);
    assert_eq!(h.runtime.journal.spent_on_day(today()), Decimal::from(7));
    assert!(verify(&h.state_dir.join(JOURNAL_FILE)).unwrap().ok);
}

#[tokio::test]
async fn a_reconcile_answers_within_its_deadline_with_what_it_could_prove() {
    let h = Harness::new(live_policy()).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let coid = shared_safety::guards::client_order_id("lost", "sc-test|DU123");
    h.runtime
        .journal
        .intent(
            json!({"tool": "ibkr_buy", "symbol": "AAPL", "side": "BUY", "notional": "7",
                   "dry_run": false, "coid": coid, "fingerprint": "fp1-lost",
                   "legs": [{"coid": coid}]}),
            now,
        )
        .unwrap();
    // A new client paces the order list and trades as if just read (one per 6 s): their first
    // read waits longer than this call may take.
    let within = Duration::from_secs(2);
    let answer = tokio::time::timeout(
        within + Duration::from_secs(2),
        h.call_within("ibkr_reconcile_pending", json!({}), None, within),
    )
    .await
    .expect("the reconcile answers by its deadline")
    .unwrap();
    assert_eq!(answer["reconciled"][0]["placed"], Value::Null, "{answer}");
    assert_eq!(answer["still_pending"], 1);
    assert_eq!(h.runtime.journal.pending().len(), 1, "still counted");
}

#[tokio::test]
async fn journal_verify_detects_tampering() {
    let h = Harness::new(TradingPolicy::default()).await;
    h.call("ibkr_buy", json!({"symbol": "AAPL", "cash_amount": "5"}))
        .await
        .unwrap();
    let path = h.state_dir.join(JOURNAL_FILE);
    assert!(verify(&path).unwrap().ok);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"AAPL\"", "\"MSFT\"")).unwrap();
    let report = verify(&path).unwrap();
    assert!(!report.ok);
    assert_eq!(report.broken_at_line, Some(1));
}

#[tokio::test]
async fn close_position_sells_the_exact_fractional_quantity() {
    let h = Harness::new(live_policy()).await;
    assert_eq!(
        code(
            h.call("ibkr_close_position", json!({"symbol": "AAPL"}))
                .await
        ),
        "POSITION_NOT_FOUND"
    );
    h.fake.lock().unwrap().positions =
        vec![json!({"conid": 265598, "position": "1.2345", "ticker": "AAPL"})];
    let result = h
        .call("ibkr_close_position", json!({"symbol": "AAPL"}))
        .await
        .unwrap();
    assert_eq!(result["status"], "sent");
    let fake = h.fake.lock().unwrap();
    let order = &fake.posted[0]["orders"][0];
    assert_eq!(order["side"], "SELL");
    assert_eq!(order["quantity"].to_string(), "1.2345");
    assert!(order.get("cashQty").is_none());
}

#[tokio::test]
async fn bracket_children_reference_the_parent_and_default_to_gtc() {
    let h = Harness::new(TradingPolicy::default()).await;
    let result = h
        .call(
            "ibkr_bracket_order",
            json!({"symbol": "AAPL", "quantity": "2", "entry_limit_price": "10",
                   "take_profit": "12", "stop_loss": "9"}),
        )
        .await
        .unwrap();
    let orders = result["would_send"]["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 3);
    let parent = orders[0]["cOID"].clone();
    assert_eq!(orders[1]["parentId"], parent);
    assert_eq!(orders[2]["parentId"], parent);
    assert_eq!(orders[1]["orderType"], "LMT");
    assert_eq!(orders[2]["orderType"], "STP");
    assert_eq!(orders[2]["price"], json!(9));
    assert!(orders[2].get("auxPrice").is_none());
    assert_eq!(orders[1]["tif"], "GTC");
    assert_eq!(orders[0]["tif"], "DAY");
}

#[tokio::test]
async fn wait_for_fill_sends_progress_frames() {
    let h = Harness::new(live_policy()).await;
    {
        let mut fake = h.fake.lock().unwrap();
        for (status, filled) in [("Submitted", "0"), ("Submitted", "0.5"), ("Filled", "2")] {
            fake.status_script
                .push_back(json!({"order_id": 7, "order_status": status,
                "total_size": "2", "cum_fill": filled, "average_price": "10.01"}));
        }
    }
    let seen: Arc<Mutex<Vec<RelayProgress>>> = Arc::new(Mutex::new(Vec::new()));
    let sink_seen = seen.clone();
    let sink = ProgressSink::new(
        RequestId([7; 16]),
        Arc::new(move |update| sink_seen.lock().unwrap().push(update)),
    );
    let result = h
        .call_with(
            "ibkr_wait_for_fill",
            json!({"order_id": "7", "timeout_seconds": 30}),
            Some(&sink),
        )
        .await
        .unwrap();
    assert_eq!(result["status"], "Filled");
    assert_eq!(result["filled_quantity"], "2");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[1].progress, 0.5);
    assert_eq!(seen[2].total, Some(2.0));
    assert_eq!(seen[2].message.as_deref(), Some("Filled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_parallel_buys_never_exceed_the_daily_cap_twenty_times_over() {
    for round in 0..20 {
        let h = Harness::new(TradingPolicy {
            max_daily_value: Some(Decimal::from(100)),
            ..live_policy()
        })
        .await;
        let calls = (0..50).map(|n| {
            h.call(
                "ibkr_buy",
                json!({"symbol": "AAPL", "cash_amount": format!("30.{n:02}")}),
            )
        });
        let results = futures_util::future::join_all(calls).await;
        let sent = results.iter().filter(|result| result.is_ok()).count();
        let spent: Decimal = h
            .fake
            .lock()
            .unwrap()
            .posted
            .iter()
            .filter_map(|body| body["orders"][0]["cashQty"].as_f64())
            .map(|cash| Decimal::try_from(cash).unwrap())
            .sum();
        assert!(spent <= Decimal::from(100), "round {round}: {spent}");
        assert_eq!(sent, 3, "round {round}");
        assert_eq!(h.posted(), 3, "round {round}");
        // Every refusal is the daily cap, journaled.
        for result in results.iter().filter(|r| r.is_err()) {
            assert_eq!(code(result.clone()), "ORDER_DAILY_CAP_EXCEEDED");
        }
    }
}
