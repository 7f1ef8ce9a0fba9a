//! Flow control between the gateway and the sidecar: the sidecar announces at the handshake
//! how many calls it runs at once, and the gateway sends it no more than that, queueing the
//! rest within their deadline instead of forwarding calls the sidecar would refuse.

use e2e::system::{System, SystemOptions};
use futures_util::future::join_all;
use protocol::catalog::scopes;
use rmcp::model::CallToolRequestParams;
use serde_json::json;

/// Twelve quotes at once against a sidecar that runs two, with quote reuse off: the sidecar's
/// CPGW pacer makes each pair wait its turn (reads may use 4 requests a second), so the calls
/// overlap on the laptop for seconds. Without flow control the sidecar refused every call beyond its two with
/// `RELAY_OVERLOADED`; now all twelve wait at the gateway and succeed, and the simulator saw no
/// burst past IBKR's pacing (checked at shutdown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_beyond_the_sidecars_concurrency_wait_at_the_gateway_and_all_succeed() {
    let system = System::start(SystemOptions {
        sidecar_max_concurrent_requests: Some(2),
        quote_max_age_ms: Some(0),
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let token = system.token(&[scopes::MARKETDATA_READ]).unwrap();
    let client = system.mcp_client(&token).await.unwrap();
    let calls = (0..12).map(|_| {
        let arguments = json!({"symbol": "AAPL"});
        let serde_json::Value::Object(arguments) = arguments else {
            unreachable!()
        };
        client.call_tool(CallToolRequestParams::new("ibkr_quote").with_arguments(arguments))
    });
    let results = join_all(calls).await;
    for result in results {
        let result = result.unwrap();
        assert_ne!(
            result.is_error,
            Some(true),
            "a call was refused: {:?}",
            result.structured_content
        );
    }
    let _ = client.cancel().await;
    system.shutdown().await;
}

/// Sixty-four MCP sessions of one user call at once, four times each, with the relay's default
/// settings on both halves (the sidecar runs 32 calls at once and says so; the gateway queues
/// the rest): no call is refused. Before flow control the sidecar ran 8 and refused the rest
/// with `RELAY_OVERLOADED` after a full round trip. Only the gateway's per-host connection cap
/// is raised: every session here dials from 127.0.0.1, as 64 agents on 64 hosts would not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_sessions_at_once_with_the_default_relay_settings_are_never_refused() {
    let system = System::start(SystemOptions {
        max_connections_per_peer: Some(1024),
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let token = system.token(&[scopes::MARKETDATA_READ]).unwrap();
    let mut clients = Vec::new();
    for _ in 0..64 {
        clients.push(system.mcp_client(&token).await.unwrap());
    }
    let calls = clients.iter().map(|client| async move {
        let mut refusals = Vec::new();
        for _ in 0..4 {
            let result = client
                .call_tool(CallToolRequestParams::new("ibkr_market_status"))
                .await
                .unwrap();
            if result.is_error == Some(true) {
                refusals.push(result.structured_content);
            }
        }
        refusals
    });
    let refusals: Vec<_> = join_all(calls).await.into_iter().flatten().collect();
    assert!(refusals.is_empty(), "refused: {refusals:?}");
    for client in clients {
        let _ = client.cancel().await;
    }
    system.shutdown().await;
}
