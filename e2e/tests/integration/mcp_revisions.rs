//! Both MCP revisions the gateway serves, through the real rmcp client: 2025-11-25 (initialize
//! and sessions) and the stateless 2026-07-28 (server/discover, no session). Each lists and
//! calls tools end to end, and a read-only token sees no order tools in either.

use e2e::system::{System, SystemOptions, tool_names};
use protocol::catalog::scopes;
use rmcp::model::{CallToolRequestParams, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::{RoleClient, ServiceExt};

const ORDER_TOOLS: &[&str] = &[
    "ibkr_buy",
    "ibkr_sell",
    "ibkr_close_position",
    "ibkr_order_cancel",
];

async fn client(system: &System, token: &str, stateless: bool) -> RunningService<RoleClient, ()> {
    let mut config =
        StreamableHttpClientTransportConfig::with_uri(system.mcp_url().unwrap()).auth_header(token);
    if stateless {
        config.allow_stateless = true;
        let transport = StreamableHttpClientTransport::from_config(config);
        ().serve_with_lifecycle(
            transport,
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .unwrap()
    } else {
        ().serve(StreamableHttpClientTransport::from_config(config))
            .await
            .unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_revisions_list_and_call_tools_and_hide_order_tools_from_read_only_tokens() {
    let system = System::start(SystemOptions::default()).await.unwrap();
    let everything: Vec<&str> = scopes::ALL
        .iter()
        .copied()
        .filter(|s| *s != scopes::ORDERS_LIVE)
        .collect();
    let full = system.token(&everything).unwrap();
    let read_only = system.token(scopes::READ_ONLY).unwrap();

    for stateless in [false, true] {
        let revision = if stateless {
            "2026-07-28"
        } else {
            "2025-11-25"
        };
        let session = client(&system, &full, stateless).await;
        let negotiated = session
            .peer_info()
            .map(|info| info.protocol_version.to_string());
        assert_eq!(negotiated.as_deref(), Some(revision), "negotiated revision");
        let names = tool_names(&session).await.unwrap();
        assert_eq!(names.len(), 25, "{revision}: {names:?}");
        let result = session
            .call_tool(CallToolRequestParams::new("ibkr_accounts_list"))
            .await
            .unwrap();
        assert_ne!(result.is_error, Some(true), "{revision}: {result:?}");
        assert_eq!(
            result.structured_content.unwrap()["selected_account"],
            "DU1234567",
            "{revision}"
        );
        let _ = session.cancel().await;

        let session = client(&system, &read_only, stateless).await;
        let names = tool_names(&session).await.unwrap();
        for order_tool in ORDER_TOOLS {
            assert!(
                !names.iter().any(|n| n == order_tool),
                "{revision}: read-only token sees {order_tool}"
            );
        }
        assert!(
            names.iter().any(|n| n == "ibkr_quote"),
            "{revision}: {names:?}"
        );
        let _ = session.cancel().await;
    }
    system.shutdown().await;
}
