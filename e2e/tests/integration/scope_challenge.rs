//! A client that follows the gateway's OAuth challenges the way an MCP client with
//! authorization does, over real sockets: from the 401 to the protected resource metadata, to
//! the authorization server's metadata, to a token for exactly the scopes the challenge names
//! (and so no trading), then a step-up when a tool answers 403 `insufficient_scope`.

use crate::trading_support::{ok, trading_system};
use base64::Engine;
use e2e::dev_issuer::{DEV_CLIENT_ID, DEV_CLIENT_SECRET};
use e2e::system::{System, tool_names};
use ibkr_agent::trading::policy::TradingSection;
use protocol::catalog::{self, scopes};
use rmcp::model::CallToolRequestParams;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};

/// The parameters of a `WWW-Authenticate: Bearer k="v", ...` challenge (every value quoted,
/// none holding a quote, as the gateway writes them).
fn challenge_params(response: &reqwest::Response) -> BTreeMap<String, String> {
    let header = response.headers()["www-authenticate"].to_str().unwrap();
    let mut rest = header
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a Bearer challenge: {header}"));
    let mut params = BTreeMap::new();
    while let Some((name, after)) = rest.split_once("=\"") {
        let (value, after) = after.split_once('"').unwrap();
        params.insert(
            name.trim_start_matches([',', ' ']).to_string(),
            value.to_string(),
        );
        rest = after;
    }
    params
}

fn scope_set(scope: &str) -> BTreeSet<String> {
    scope.split_whitespace().map(str::to_string).collect()
}

/// The client's side of the authorization server: its token endpoint, found from the
/// resource's metadata, and the resource tokens are asked for.
struct Client {
    http: reqwest::Client,
    token_endpoint: String,
    resource: String,
}

impl Client {
    /// Discovery as the MCP authorization spec lays it out, starting from the 401's
    /// `resource_metadata` pointer.
    async fn discover(resource_metadata: &str) -> Client {
        let http = reqwest::Client::new();
        let get = |url: String| {
            let http = http.clone();
            async move {
                http.get(url)
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            }
        };
        let metadata = get(resource_metadata.to_string()).await;
        let issuer = metadata["authorization_servers"][0].as_str().unwrap();
        let server = get(format!("{issuer}/.well-known/oauth-authorization-server")).await;
        Client {
            token_endpoint: server["token_endpoint"].as_str().unwrap().to_string(),
            resource: metadata["resource"].as_str().unwrap().to_string(),
            http,
        }
    }

    /// A token asked for `scope` (RFC 8707 `resource` bound to the gateway), with the scope
    /// the server says it granted.
    async fn token(&self, scope: &str) -> (String, String) {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", "client_credentials"),
                ("client_id", DEV_CLIENT_ID),
                ("client_secret", DEV_CLIENT_SECRET),
                ("scope", scope),
                ("resource", &self.resource),
            ])
            .finish();
        let answer: Value = self
            .http
            .post(&self.token_endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = answer["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no token: {answer}"))
            .to_string();
        // What the token itself carries, not only what the answer says.
        let payload = token.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["scope"], answer["scope"], "{claims}");
        (token, answer["scope"].as_str().unwrap().to_string())
    }
}

/// `tools/call` on `/mcp` with `token`, answered before any session exists when the scope
/// is missing.
async fn raw_call(system: &System, token: Option<&str>, tool: &str) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(system.mcp_url().unwrap())
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": {"symbol": "AAPL", "cash_amount": "10"}}}));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_following_the_challenge_gets_the_read_scopes_then_steps_up_to_trade() {
    // The laptop grants trading (dry-run, the default): only the token limits the agent.
    let system = trading_system(TradingSection::default()).await;

    // 1. No token: 401, naming the metadata and the read scopes as the baseline.
    let response = raw_call(&system, None, "ibkr_buy").await;
    assert_eq!(response.status(), 401);
    let challenge = challenge_params(&response);
    assert_eq!(challenge.get("error"), None, "{challenge:?}");
    let baseline = &challenge["scope"];
    assert_eq!(baseline, &scopes::READ_ONLY.join(" "));

    // 2. The client asks the authorization server for exactly that and gets exactly that.
    let client = Client::discover(&challenge["resource_metadata"]).await;
    assert_eq!(client.resource, system.mcp_url().unwrap());
    let (token, granted) = client.token(baseline).await;
    assert_eq!(scope_set(&granted), scope_set(baseline));

    // 3. It sees the read tools and nothing that trades, and they work.
    let mcp = system.mcp_client(&token).await.unwrap();
    let listed = tool_names(&mcp).await.unwrap();
    let readable: Vec<&str> = catalog::CATALOG
        .iter()
        .filter(|tool| scopes::READ_ONLY.contains(&tool.scope))
        .map(|tool| tool.name)
        .collect();
    assert_eq!(listed, readable);
    assert!(
        catalog::CATALOG
            .iter()
            .filter(|tool| listed.contains(&tool.name.to_string()))
            .all(|tool| !tool.changes_broker_state())
    );
    let status = mcp
        .call_tool(CallToolRequestParams::new("ibkr_session_status"))
        .await
        .unwrap();
    assert_eq!(ok(&status)["trading_mode"], "paper");
    let _ = mcp.cancel().await;

    // 4. A buy: 403 asking for the write scope alone.
    let response = raw_call(&system, Some(&token), "ibkr_buy").await;
    assert_eq!(response.status(), 403);
    let step_up = challenge_params(&response);
    assert_eq!(step_up["error"], "insufficient_scope");
    assert_eq!(step_up["scope"], scopes::ORDERS_WRITE);
    assert_eq!(
        step_up["resource_metadata"], challenge["resource_metadata"],
        "{step_up:?}"
    );
    assert!(
        system.sim.order_log().is_empty(),
        "a refused call reached the broker"
    );

    // 5. Step-up: what it holds plus what the 403 named; granted, and nothing more.
    let wanted = format!("{granted} {}", step_up["scope"]);
    let (token, granted) = client.token(&wanted).await;
    assert_eq!(scope_set(&granted), scope_set(&wanted));
    for never_asked in [scopes::ORDERS_PREVIEW, scopes::ORDERS_LIVE] {
        assert!(!scope_set(&granted).contains(never_asked), "{granted}");
    }
    let mcp = system.mcp_client(&token).await.unwrap();
    let mut buy = CallToolRequestParams::new("ibkr_buy");
    if let Value::Object(arguments) = json!({"symbol": "AAPL", "cash_amount": "10"}) {
        buy = buy.with_arguments(arguments);
    }
    let bought = mcp.call_tool(buy).await.unwrap();
    assert_eq!(ok(&bought)["status"], "dry_run");
    let _ = mcp.cancel().await;
    system.shutdown().await;
}
