//! Market data, portfolio and keep-alive against a small fake CPGW on a real loopback socket.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use ibkr_agent::alerts::{AlertFormat, AlertSink, AlertsSection};
use ibkr_agent::cpgw::keepalive::{OutageTracker, SessionMonitor, keepalive_round};
use ibkr_agent::cpgw::marketdata::snapshot;
use ibkr_agent::cpgw::portfolio::{MAX_POSITION_PAGES, positions, total_unrealized_pnl};
use ibkr_agent::cpgw::{BrokerState, ConidCache, CpgwClient, CpgwError};
use protocol::envelope::Outcome;
use serde_json::{Value, json};
use shared_safety::money::PricePrefix;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Default)]
struct Sim {
    counts: HashMap<&'static str, u32>,
    /// Conids already asked for once (the warm-up quirk).
    warm: HashSet<String>,
    /// Position pages (index = page); beyond the list: `[]`, unless `endless`.
    pages: Vec<Value>,
    endless: bool,
    authenticated: bool,
    connected: bool,
    competing: bool,
    /// What ssodh/init does: true -> authenticates, false -> HTTP 500.
    ssodh_works: bool,
    /// `/tickle` never answers (a stalled CPGW).
    tickle_hangs: bool,
}

type Shared = Arc<Mutex<Sim>>;

fn bump(shared: &Shared, key: &'static str) {
    *shared.lock().unwrap().counts.entry(key).or_default() += 1;
}

fn count(shared: &Shared, key: &'static str) -> u32 {
    shared.lock().unwrap().counts.get(key).copied().unwrap_or(0)
}

async fn stocks(
    State(shared): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    bump(&shared, "stocks");
    let mut out = serde_json::Map::new();
    for symbol in q
        .get("symbols")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
    {
        let listings = match symbol {
            "AAPL" => json!([{"name": "APPLE INC", "contracts": [
                {"conid": 38708077, "exchange": "MEXI", "isUS": false},
                {"conid": 265598, "exchange": "NASDAQ", "isUS": true}]}]),
            "HALT" => json!([{"contracts": [{"conid": 42, "exchange": "NYSE", "isUS": true}]}]),
            "OLD" => json!([{"contracts": [{"conid": 43, "exchange": "NYSE", "isUS": true}]}]),
            "BMW" => json!([{"contracts": [{"conid": 14171, "exchange": "IBIS", "isUS": false}]}]),
            _ => continue,
        };
        out.insert(symbol.to_string(), listings);
    }
    Json(Value::Object(out)).into_response()
}

use axum::Json;

async fn snapshot_route(
    State(shared): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    bump(&shared, "snapshot");
    assert_eq!(q.get("fields").map(String::as_str), Some("31,84,86"));
    let mut sim = shared.lock().unwrap();
    let rows: Vec<Value> = q
        .get("conids")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .map(|conid| {
            if sim.warm.insert(conid.to_string()) {
                return json!({"conid": conid.parse::<i64>().unwrap(), "_updated": 1});
            }
            match conid {
                "42" => json!({"conid": 42, "31": "H10.50"}),
                "43" => json!({"conid": 43, "31": "C99.10", "84": "99.00", "86": "99.20"}),
                _ => json!({"conid": conid.parse::<i64>().unwrap(), "31": "189.25", "84": "189.2", "86": "189.30"}),
            }
        })
        .collect();
    Json(Value::Array(rows)).into_response()
}

async fn positions_page(
    State(shared): State<Shared>,
    Path((_acct, page)): Path<(String, usize)>,
) -> Response {
    bump(&shared, "positions");
    let sim = shared.lock().unwrap();
    if sim.endless {
        return Json(json!([{"conid": 1, "position": 1}])).into_response();
    }
    Json(sim.pages.get(page).cloned().unwrap_or(json!([]))).into_response()
}

async fn invalidate(State(shared): State<Shared>) -> Response {
    bump(&shared, "invalidate");
    Json(json!({"message": "success"})).into_response()
}

async fn auth_status(State(shared): State<Shared>) -> Response {
    bump(&shared, "auth_status");
    let sim = shared.lock().unwrap();
    if !sim.connected && !sim.authenticated {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    Json(
        json!({"authenticated": sim.authenticated, "connected": sim.connected,
                "competing": sim.competing, "serverInfo": {"serverName": "x"}}),
    )
    .into_response()
}

async fn tickle(State(shared): State<Shared>) -> Response {
    bump(&shared, "tickle");
    if shared.lock().unwrap().tickle_hangs {
        std::future::pending::<()>().await;
    }
    Json(json!({"session": "secret-session"})).into_response()
}

async fn ssodh(State(shared): State<Shared>) -> Response {
    bump(&shared, "ssodh");
    let mut sim = shared.lock().unwrap();
    if sim.ssodh_works {
        sim.authenticated = true;
        Json(json!({"authenticated": true, "connected": true, "competing": false})).into_response()
    } else {
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

async fn start(sim: Sim) -> (CpgwClient, Shared) {
    let shared: Shared = Arc::new(Mutex::new(sim));
    let app = Router::new()
        .route("/v1/api/trsrv/stocks", get(stocks))
        .route("/v1/api/iserver/marketdata/snapshot", get(snapshot_route))
        .route(
            "/v1/api/portfolio/{acct}/positions/{page}",
            get(positions_page),
        )
        .route(
            "/v1/api/portfolio/{acct}/positions/invalidate",
            post(invalidate),
        )
        .route("/v1/api/iserver/auth/status", post(auth_status))
        .route("/v1/api/tickle", post(tickle))
        .route("/v1/api/iserver/auth/ssodh/init", post(ssodh))
        .with_state(shared.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = CpgwClient::new(&format!("http://{addr}/v1/api")).unwrap();
    (client, shared)
}

fn code_of(outcome: Outcome) -> String {
    match outcome {
        Outcome::Failed(body) | Outcome::Refused(body) => body.code,
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn conid_resolution_prefers_us_refuses_foreign_and_caches() {
    let (client, shared) = start(Sim::default()).await;
    let cache = ConidCache::new(client);
    let aapl = cache.resolve_symbol("aapl").await.unwrap();
    assert_eq!((aapl.conid, aapl.symbol.as_str()), (265598, "AAPL"));
    assert_eq!(aapl.currency.as_deref(), Some("USD"));
    assert_eq!(count(&shared, "stocks"), 1);
    // Cache hit: no second /trsrv call.
    assert_eq!(cache.resolve_symbol("AAPL").await.unwrap().conid, 265598);
    assert_eq!(count(&shared, "stocks"), 1);
    assert_eq!(
        code_of(cache.resolve_symbol("BMW").await.unwrap_err()),
        "SYMBOL_FOREIGN_ONLY"
    );
    assert_eq!(
        code_of(cache.resolve_symbol("ZZZZ").await.unwrap_err()),
        "SYMBOL_NOT_FOUND"
    );
    // Search lists every listing, US first.
    let all = cache.search("AAPL").await.unwrap();
    assert_eq!(all.len(), 2);
    assert!(all[0].is_us && !all[1].is_us);
    // Several symbols: the cached one costs nothing, the rest one call.
    let before = count(&shared, "stocks");
    let many = cache
        .resolve_symbols(&["AAPL".into(), "HALT".into(), "OLD".into()])
        .await
        .unwrap();
    assert_eq!(
        many.iter().map(|c| c.conid).collect::<Vec<_>>(),
        [265598, 42, 43]
    );
    assert_eq!(count(&shared, "stocks"), before + 1);
}

#[tokio::test]
async fn snapshot_retries_the_warm_up_and_reads_prefixes() {
    let (client, shared) = start(Sim::default()).await;
    let quotes = snapshot(&client, &[265598, 42, 43], Duration::from_millis(1))
        .await
        .unwrap();
    // First call is the warm-up (no prices), the retry has them.
    assert_eq!(count(&shared, "snapshot"), 2);
    let aapl = &quotes[&265598];
    assert_eq!(aapl.last.unwrap().to_string(), "189.25");
    assert_eq!(aapl.bid.unwrap().to_string(), "189.2");
    assert_eq!(aapl.last_prefix, PricePrefix::Live);
    assert_eq!(quotes[&42].last_prefix, PricePrefix::Halted);
    assert!(quotes[&42].bid.is_none());
    assert_eq!(quotes[&43].last_prefix, PricePrefix::PreviousClose);
    assert_eq!(quotes[&43].last.unwrap().to_string(), "99.1");
    // Warm now: one call.
    snapshot(&client, &[265598], Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(count(&shared, "snapshot"), 3);
}

#[tokio::test]
async fn positions_page_until_empty_and_keep_fractions_exact() {
    let sim = Sim {
        pages: vec![
            json!([{"conid": 265598, "ticker": "AAPL", "position": 0.1234, "avgCost": 180.5,
                    "mktPrice": 190.25, "mktValue": 23.47685, "unrealizedPnl": 1.20315, "currency": "USD"}]),
            json!([{"conid": 42, "contractDesc": "HALT", "position": "3", "unrealizedPnl": -0.2,
                    "currency": "USD"},
                   {"conid": 7, "position": 0}]),
        ],
        ..Sim::default()
    };
    let (client, shared) = start(sim).await;
    let list = positions(&client, "DU1234567", true).await.unwrap();
    assert_eq!(count(&shared, "positions"), 3);
    assert_eq!(count(&shared, "invalidate"), 1);
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].quantity.to_string(), "0.1234");
    assert_eq!(list[0].symbol.as_deref(), Some("AAPL"));
    assert_eq!(list[1].symbol.as_deref(), Some("HALT"));
    assert_eq!(total_unrealized_pnl(&list).to_string(), "1.00315");
    // A refused account id never reaches CPGW.
    assert_eq!(
        positions(&client, "../x", false).await.unwrap_err(),
        CpgwError::Malformed
    );
}

#[tokio::test]
async fn endless_positions_stop_at_the_page_cap() {
    let (client, shared) = start(Sim {
        endless: true,
        ..Sim::default()
    })
    .await;
    assert_eq!(
        positions(&client, "DU1", false).await.unwrap_err(),
        CpgwError::Malformed
    );
    assert_eq!(count(&shared, "positions"), MAX_POSITION_PAGES);
}

#[tokio::test]
async fn keepalive_reopens_a_connected_session_once_per_round() {
    let (client, shared) = start(Sim {
        connected: true,
        ssodh_works: false,
        ..Sim::default()
    })
    .await;
    let monitor = SessionMonitor::new();
    assert_eq!(
        keepalive_round(&client, &monitor).await,
        BrokerState::LoginRequired
    );
    assert_eq!(count(&shared, "ssodh"), 1);
    assert_eq!(count(&shared, "tickle"), 1);
    // The 500 is retried the next round, once.
    shared.lock().unwrap().ssodh_works = true;
    assert_eq!(keepalive_round(&client, &monitor).await, BrokerState::Ready);
    assert_eq!(count(&shared, "ssodh"), 2);
    assert!(
        monitor
            .fresh(Duration::from_secs(60))
            .unwrap()
            .authenticated
    );
    // Ready: no more ssodh.
    assert_eq!(keepalive_round(&client, &monitor).await, BrokerState::Ready);
    assert_eq!(count(&shared, "ssodh"), 2);
}

/// A tickle CPGW did not answer may still be queued there; the next round must not tickle
/// again before CPGW answered something, or a resuming CPGW would send IBKR two tickles within
/// its one-per-second limit (429, then 15 minutes of refusals).
#[tokio::test]
async fn no_tickle_after_a_round_cpgw_did_not_answer() {
    let (client, shared) = start(Sim {
        connected: true,
        authenticated: true,
        tickle_hangs: true,
        ..Sim::default()
    })
    .await;
    let client = CpgwClient::with_timeout(
        &format!("{}/v1/api", client.portal_location()),
        Duration::from_secs(1),
    )
    .unwrap();
    let monitor = SessionMonitor::new();
    assert_eq!(keepalive_round(&client, &monitor).await, BrokerState::Ready);
    assert_eq!(count(&shared, "tickle"), 1);
    assert!(monitor.last_round_unanswered());
    // The tickle timed out: this round only asks auth/status, which CPGW answers.
    shared.lock().unwrap().tickle_hangs = false;
    assert_eq!(keepalive_round(&client, &monitor).await, BrokerState::Ready);
    assert_eq!(count(&shared, "tickle"), 1);
    assert!(!monitor.last_round_unanswered());
    // CPGW answered: tickles resume.
    assert_eq!(keepalive_round(&client, &monitor).await, BrokerState::Ready);
    assert_eq!(count(&shared, "tickle"), 2);
}

#[tokio::test]
async fn competing_session_is_reported_without_a_fight() {
    let (client, shared) = start(Sim {
        connected: true,
        authenticated: true,
        competing: true,
        ..Sim::default()
    })
    .await;
    let monitor = SessionMonitor::new();
    assert_eq!(
        keepalive_round(&client, &monitor).await,
        BrokerState::Competing
    );
    assert_eq!(count(&shared, "ssodh"), 0);
}

/// A webhook receiver: counts POSTs and keeps their bodies.
async fn webhook() -> (String, Arc<Mutex<Vec<String>>>) {
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State(bodies): State<Arc<Mutex<Vec<String>>>>, body: String| async move {
                    bodies.lock().unwrap().push(body);
                    StatusCode::OK
                },
            ),
        )
        .with_state(bodies.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hook"), bodies)
}

#[tokio::test]
async fn one_alert_per_outage() {
    let (url, bodies) = webhook().await;
    let sink = AlertSink::new(
        "my-laptop",
        Some(&AlertsSection {
            webhook_url: Some(url),
            format: AlertFormat::Slack,
        }),
    )
    .unwrap();
    let (client, shared) = start(Sim::default()).await; // logged out: 401
    let monitor = SessionMonitor::new();
    let location = client.portal_location();
    let mut outage = OutageTracker::default();
    for _ in 0..3 {
        let state = keepalive_round(&client, &monitor).await;
        assert_eq!(state, BrokerState::LoginRequired);
        outage.observe(state, &sink, &location).await;
    }
    assert_eq!(sink.sent_count(), 1);
    assert_eq!(bodies.lock().unwrap().len(), 1);
    let body: Value = serde_json::from_str(&bodies.lock().unwrap()[0]).unwrap();
    let text = body["text"].as_str().unwrap();
    assert!(
        text.contains("my-laptop") && text.contains(&location),
        "{text}"
    );
    assert!(!text.contains("DU") && !text.contains("secret-session"));
    // Recovery, then a new outage: a second alert.
    {
        let mut sim = shared.lock().unwrap();
        sim.connected = true;
        sim.authenticated = true;
    }
    let state = keepalive_round(&client, &monitor).await;
    assert_eq!(state, BrokerState::Ready);
    outage.observe(state, &sink, &location).await;
    assert!(!outage.in_outage());
    {
        let mut sim = shared.lock().unwrap();
        sim.connected = false;
        sim.authenticated = false;
    }
    let state = keepalive_round(&client, &monitor).await;
    outage.observe(state, &sink, &location).await;
    outage.observe(state, &sink, &location).await;
    assert_eq!(sink.sent_count(), 2);
    assert_eq!(sink.raised_count(), 2);
    assert_eq!(bodies.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_dead_webhook_is_logged_not_retried() {
    // A port nothing listens on.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let sink = AlertSink::new(
        "my-laptop",
        Some(&AlertsSection {
            webhook_url: Some(format!("http://{addr}/hook")),
            format: AlertFormat::Ntfy,
        }),
    )
    .unwrap();
    sink.raise("test").await;
    assert_eq!((sink.raised_count(), sink.sent_count()), (1, 0));
}
