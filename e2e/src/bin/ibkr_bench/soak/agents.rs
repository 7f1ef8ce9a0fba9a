//! The soak's agents: real MCP clients (rmcp, Streamable HTTP), each with its own OAuth token
//! for one user, half on the session-based 2025-11-25 revision and half on the stateless
//! 2026-07-28 one. Each calls, pauses, and calls again until the load ends, and checks every
//! answer is its own.
//!
//! - An agent of a relay-peer user calls `ibkr_order_status` (85 %) or `ibkr_wait_for_fill`
//!   (15 %) with a nonce as `order_id`; the answer must name its user, its tool and its nonce,
//!   and every progress notification it receives must carry one of its own nonces.
//! - An agent of a laptop user buys (60 %) with a fresh idempotency key and a cash amount of
//!   its own, or lists accounts (40 %): the account must be its laptop's. A buy that ends
//!   without a definite answer (cancelled by the agent, the outcome unknown, the laptop away) is
//!   sent again, same key and arguments, until it has one: the broker must still see one order.
//! - Some calls are cancelled mid-flight, by dropping them (rmcp then sends
//!   `notifications/cancelled` on 2025-11-25, or closes the request's stream on 2026-07-28):
//!   40 % of the slow calls, 2 % of the quick ones (within 5 ms), 15 % of the new buys.

use super::laptops::SYMBOL;
use super::peers::{QUICK_TOOL, SLOW_TOOL};
use super::stats::{Class, Ending, Stats};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ProgressNotificationParam, ProtocolVersion,
};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, NotificationContext, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::{Map, Value, json};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bound on one MCP client's connection (initialize or discover).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries of one buy key before the agent gives up on learning its outcome.
const MAX_ORDER_TRIES: u32 = 8;

/// Error codes after which a buy's outcome is not known yet: the agent sends it again with the
/// same key.
const RETRY_CODES: &[&str] = &[
    "ORDER_OUTCOME_UNKNOWN",
    "SIDECAR_UNAVAILABLE",
    "SIDECAR_HEARTBEAT_STALE",
    "SIDECAR_SESSION_EXPIRED",
    "RELAY_PROTOCOL_ERROR",
    "RELAY_OVERLOADED",
    "REQUEST_TIMEOUT",
    "CANCELLED",
];

/// A small deterministic generator (SplitMix64): each agent's choices follow from the seed.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (0 when `bound` is 0).
    pub(super) fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 { 0 } else { self.next() % bound }
    }

    pub(super) fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub(super) fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to.saturating_sub(from) + 1))
    }
}

/// Whose the agent is.
#[derive(Clone, Debug)]
pub(super) enum Target {
    /// A user whose sidecar is a relay peer.
    Peer,
    /// A user with a real laptop; the answer must name this paper account.
    Laptop { account: String },
}

#[derive(Clone, Debug)]
pub(super) struct Agent {
    pub id: usize,
    pub user: String,
    pub target: Target,
    pub stateless: bool,
    pub token: String,
}

/// What the agents of the laptop users sent and were told, per user.
#[derive(Default)]
pub(super) struct OrderLedger {
    users: Mutex<HashMap<String, UserOrders>>,
}

#[derive(Clone, Debug, Default)]
pub(super) struct UserOrders {
    /// Every key sent, with its cash amount.
    pub sent: HashMap<String, String>,
    /// The client order ids answered `sent` per key.
    pub placed: HashMap<String, BTreeSet<String>>,
    /// Keys sent more than once.
    pub retried: HashSet<String>,
    /// Keys whose outcome the agent never learned (out of tries or out of time).
    pub unsettled: HashSet<String>,
    /// Keys answered with a refusal (a guard, the broker), by code.
    pub refused: HashMap<String, u64>,
}

impl OrderLedger {
    fn users(&self) -> MutexGuard<'_, HashMap<String, UserOrders>> {
        self.users
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sent(&self, user: &str, key: &str, amount: &str, retry: bool) {
        let mut users = self.users();
        let orders = users.entry(user.to_string()).or_default();
        orders.sent.insert(key.to_string(), amount.to_string());
        if retry {
            orders.retried.insert(key.to_string());
        }
    }

    fn placed(&self, user: &str, key: &str, coid: &str) {
        let mut users = self.users();
        let orders = users.entry(user.to_string()).or_default();
        orders
            .placed
            .entry(key.to_string())
            .or_default()
            .insert(coid.to_string());
        orders.unsettled.remove(key);
    }

    fn refused(&self, user: &str, key: &str, code: &str) {
        let mut users = self.users();
        let orders = users.entry(user.to_string()).or_default();
        *orders.refused.entry(code.to_string()).or_default() += 1;
        orders.unsettled.remove(key);
    }

    fn unsettled(&self, user: &str, key: &str) {
        let mut users = self.users();
        users
            .entry(user.to_string())
            .or_default()
            .unsettled
            .insert(key.to_string());
    }

    pub(super) fn of(&self, user: &str) -> UserOrders {
        self.users().get(user).cloned().unwrap_or_default()
    }
}

/// The MCP client side of an agent: checks that progress notifications are its own.
#[derive(Clone)]
struct Handler {
    nonces: Arc<Mutex<HashSet<String>>>,
    stats: Arc<Stats>,
}

impl Handler {
    fn nonces(&self) -> MutexGuard<'_, HashSet<String>> {
        self.nonces
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ClientHandler for Handler {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let own = params
            .message
            .as_deref()
            .is_some_and(|nonce| self.nonces().contains(nonce));
        self.stats.progress(own);
    }
}

type Client = RunningService<RoleClient, Handler>;

/// What the agents share.
pub(super) struct Shared {
    pub mcp_url: String,
    pub load_end: Instant,
    /// Mean pause between two calls of one agent (uniform from 0 to twice this).
    pub think: Duration,
    /// No answer within this is a lost response (the gateway's request timeout and a margin).
    pub deadline: Duration,
    pub seed: u64,
    pub stats: Arc<Stats>,
    pub orders: Arc<OrderLedger>,
}

async fn connect(shared: &Shared, agent: &Agent, handler: &Handler) -> Result<Client, String> {
    let mut config = StreamableHttpClientTransportConfig::with_uri(shared.mcp_url.clone())
        .auth_header(agent.token.clone());
    let connecting = async {
        if agent.stateless {
            config.allow_stateless = true;
            handler
                .clone()
                .serve_with_lifecycle(
                    StreamableHttpClientTransport::from_config(config),
                    ClientLifecycleMode::Discover {
                        preferred_versions: vec![ProtocolVersion::V_2026_07_28],
                    },
                )
                .await
                .map_err(|error| error.to_string())
        } else {
            handler
                .clone()
                .serve(StreamableHttpClientTransport::from_config(config))
                .await
                .map_err(|error| error.to_string())
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(connected) => connected,
        Err(_) => Err("timed out connecting".into()),
    }
}

/// How a call came back, before it is checked.
enum Came {
    Result(CallToolResult),
    Failed(String),
    Cancelled,
    Lost,
}

async fn call(
    client: &Client,
    tool: &str,
    arguments: Map<String, Value>,
    cancel_after: Option<Duration>,
    deadline: Duration,
) -> Came {
    let params = CallToolRequestParams::new(tool.to_string()).with_arguments(arguments);
    let call = client.call_tool(params);
    let limit = cancel_after.unwrap_or(deadline).min(deadline);
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(result)) => Came::Result(result),
        Ok(Err(error)) => Came::Failed(error.to_string()),
        // Dropping the call cancels it (rmcp tells the gateway).
        Err(_) if cancel_after.is_some_and(|after| after < deadline) => Came::Cancelled,
        Err(_) => Came::Lost,
    }
}

/// The error code of an error result (tool errors and manual actions both carry one).
fn error_code(result: &CallToolResult) -> Option<String> {
    if result.is_error != Some(true) {
        return None;
    }
    let structured = result.structured_content.as_ref();
    let code = structured
        .and_then(|value| value["error"]["code"].as_str().or(value["code"].as_str()))
        .unwrap_or("UNKNOWN");
    Some(code.to_string())
}

/// Runs one agent until the load ends.
pub(super) async fn run(shared: Arc<Shared>, agent: Agent) {
    let handler = Handler {
        nonces: Arc::new(Mutex::new(HashSet::new())),
        stats: Arc::clone(&shared.stats),
    };
    let mut rng = Rng::new(shared.seed ^ (agent.id as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut client: Option<Client> = None;
    let mut sequence: u64 = 0;
    let mut order: Option<PendingOrder> = None;
    loop {
        let pause = Duration::from_millis(rng.below(2 * shared.think.as_millis() as u64 + 1));
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            (Instant::now() + pause).min(shared.load_end),
        ))
        .await;
        if Instant::now() >= shared.load_end {
            break;
        }
        let Some(connected) = client.as_ref() else {
            let connected = connect(&shared, &agent, &handler).await;
            shared.stats.client_connect(connected.is_ok());
            match connected {
                Ok(connected) => client = Some(connected),
                Err(error) => eprintln!("soak agent {}: connect failed: {error}", agent.id),
            }
            continue;
        };
        sequence += 1;
        let healthy = match &agent.target {
            Target::Peer => {
                peer_call(&shared, &agent, &handler, connected, &mut rng, sequence).await
            }
            Target::Laptop { account } => {
                laptop_call(
                    &shared, &agent, account, connected, &mut rng, sequence, &mut order,
                )
                .await
            }
        };
        if !healthy && let Some(broken) = client.take() {
            let _ = broken.cancel().await;
        }
    }
    if let Some(order) = order {
        shared.orders.unsettled(&agent.user, &order.key);
    }
    if let Some(client) = client {
        let _ = client.cancel().await;
    }
}

/// One call to a relay peer. Returns false when the MCP client is broken.
async fn peer_call(
    shared: &Shared,
    agent: &Agent,
    handler: &Handler,
    client: &Client,
    rng: &mut Rng,
    sequence: u64,
) -> bool {
    let nonce = format!("a{:04}n{sequence:06}", agent.id);
    handler.nonces().insert(nonce.clone());
    let slow = rng.percent(15);
    let (class, tool, arguments, cancel_after) = if slow {
        let seconds = 1 + rng.below(3);
        let cancel = rng
            .percent(40)
            .then(|| rng.millis(100, seconds * 1000 - 50));
        (
            Class::PeerSlow,
            SLOW_TOOL,
            json!({"order_id": nonce, "timeout_seconds": seconds}),
            cancel,
        )
    } else {
        let cancel = rng.percent(2).then(|| rng.millis(0, 5));
        (
            Class::PeerQuick,
            QUICK_TOOL,
            json!({"order_id": nonce}),
            cancel,
        )
    };
    let Value::Object(arguments) = arguments else {
        return true;
    };
    let start = Instant::now();
    let came = call(client, tool, arguments, cancel_after, shared.deadline).await;
    let end = Instant::now();
    let (ending, healthy) = match came {
        Came::Result(result) => (check_peer_answer(&result, agent, tool, &nonce), true),
        Came::Failed(error) => (Ending::Transport(error), false),
        Came::Cancelled => (Ending::Cancelled, true),
        Came::Lost => (Ending::Lost, true),
    };
    shared
        .stats
        .record(agent.id, &agent.user, class, start, end, ending);
    healthy
}

fn check_peer_answer(result: &CallToolResult, agent: &Agent, tool: &str, nonce: &str) -> Ending {
    if let Some(code) = error_code(result) {
        return Ending::Answered { error: Some(code) };
    }
    let Some(answer) = result
        .structured_content
        .as_ref()
        .and_then(|value| value.get("soak_peer"))
    else {
        return Ending::Misrouted(format!(
            "not a relay peer's answer: {:?}",
            result.structured_content
        ));
    };
    if answer["user_id"] != agent.user.as_str()
        || answer["order_id"] != nonce
        || answer["tool"] != tool
    {
        return Ending::Misrouted(format!(
            "asked {tool} {nonce} as {}, answered {answer}",
            agent.user
        ));
    }
    Ending::Answered { error: None }
}

/// A buy whose outcome the agent does not know yet.
struct PendingOrder {
    key: String,
    amount: String,
    tries: u32,
}

/// One call to a laptop. Returns false when the MCP client is broken.
async fn laptop_call(
    shared: &Shared,
    agent: &Agent,
    account: &str,
    client: &Client,
    rng: &mut Rng,
    sequence: u64,
    order: &mut Option<PendingOrder>,
) -> bool {
    if order.is_none() && !rng.percent(60) {
        let start = Instant::now();
        let came = call(
            client,
            "ibkr_accounts_list",
            Map::new(),
            None,
            shared.deadline,
        )
        .await;
        let end = Instant::now();
        let (ending, healthy) = match came {
            Came::Result(result) => (check_accounts_answer(&result, account), true),
            Came::Failed(error) => (Ending::Transport(error), false),
            Came::Cancelled => (Ending::Cancelled, true),
            Came::Lost => (Ending::Lost, true),
        };
        shared
            .stats
            .record(agent.id, &agent.user, Class::LaptopRead, start, end, ending);
        return healthy;
    }
    let retry = order.is_some();
    let pending = order.get_or_insert_with(|| {
        // A cash amount of this agent's own, so that two buys within the duplicate window
        // (5 s) never look identical to the guard.
        let cents = 2_000 + (agent.id as u64 * 997 + sequence * 7) % 5_000;
        PendingOrder {
            key: format!("soak-a{:04}-k{sequence:06}", agent.id),
            amount: format!("{}.{:02}", cents / 100, cents % 100),
            tries: 0,
        }
    });
    pending.tries += 1;
    let cancel_after = (!retry && rng.percent(15)).then(|| rng.millis(20, 400));
    let arguments = json!({
        "symbol": SYMBOL,
        "cash_amount": pending.amount,
        "idempotency_key": pending.key,
    });
    let Value::Object(arguments) = arguments else {
        return true;
    };
    shared
        .orders
        .sent(&agent.user, &pending.key, &pending.amount, retry);
    let start = Instant::now();
    let came = call(client, "ibkr_buy", arguments, cancel_after, shared.deadline).await;
    let end = Instant::now();
    let (ending, settled, healthy) = match came {
        Came::Result(result) => {
            let (ending, settled) = check_buy_answer(&result, shared, agent, &pending.key);
            (ending, settled, true)
        }
        Came::Failed(error) => (Ending::Transport(error), false, false),
        Came::Cancelled => (Ending::Cancelled, false, true),
        Came::Lost => (Ending::Lost, false, true),
    };
    shared.stats.record(
        agent.id,
        &agent.user,
        Class::LaptopOrder,
        start,
        end,
        ending,
    );
    if settled {
        *order = None;
    } else if pending.tries >= MAX_ORDER_TRIES {
        shared.orders.unsettled(&agent.user, &pending.key);
        *order = None;
    }
    healthy
}

fn check_accounts_answer(result: &CallToolResult, account: &str) -> Ending {
    if let Some(code) = error_code(result) {
        return Ending::Answered { error: Some(code) };
    }
    let structured = result.structured_content.as_ref();
    let selected = structured.and_then(|value| value["selected_account"].as_str());
    let order_like = structured.is_some_and(|value| value.get("client_order_id").is_some());
    if selected != Some(account) || order_like {
        return Ending::Misrouted(format!(
            "asked for the accounts of {account}, answered {structured:?}"
        ));
    }
    Ending::Answered { error: None }
}

/// Checks a buy's answer; returns how it ended and whether its outcome is now known.
fn check_buy_answer(
    result: &CallToolResult,
    shared: &Shared,
    agent: &Agent,
    key: &str,
) -> (Ending, bool) {
    if let Some(code) = error_code(result) {
        let settled = !RETRY_CODES.contains(&code.as_str());
        if settled {
            shared.orders.refused(&agent.user, key, &code);
        }
        return (Ending::Answered { error: Some(code) }, settled);
    }
    let structured = result.structured_content.as_ref();
    let coid = structured.and_then(|value| value["client_order_id"].as_str());
    let accounts_like = structured.is_some_and(|value| value.get("selected_account").is_some());
    let Some(coid) = coid.filter(|_| !accounts_like) else {
        return (
            Ending::Misrouted(format!("bought with {key}, answered {structured:?}")),
            false,
        );
    };
    let status = structured.and_then(|value| value["status"].as_str());
    if status == Some("sent") {
        shared.orders.placed(&agent.user, key, coid);
    } else {
        shared
            .orders
            .refused(&agent.user, key, status.unwrap_or("unknown status"));
    }
    (Ending::Answered { error: None }, true)
}
