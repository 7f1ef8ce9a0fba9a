//! Token validation and the HTTP face of the resource server, over real loopback sockets
//! with keys generated at test time.

use crate::common::*;
use base64::Engine;
use ibkr_gateway::oauth::jwks::JwksCache;
use ibkr_gateway::oauth::token::{TokenError, TokenValidator, ValidatorSettings};
use jsonwebtoken::{Algorithm, Header};
use serde_json::json;
use std::sync::Arc;

const RESOURCE: &str = "http://127.0.0.1:8080/mcp";

fn validator(issuer: &TestIssuer) -> TokenValidator {
    let jwks = Arc::new(JwksCache::new(&issuer.url(), None).unwrap());
    TokenValidator::new(
        ValidatorSettings {
            issuer: issuer.url(),
            audiences: vec![RESOURCE.into()],
            algorithms: vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
            clock_skew_seconds: 60,
            require_typ_at_jwt: true,
            allowed_scopes: protocol::catalog::scopes::ALL
                .iter()
                .map(|s| s.to_string())
                .collect(),
            agent_claim: false,
        },
        jwks,
    )
}

#[tokio::test]
async fn a_valid_token_yields_subject_and_scopes() {
    let issuer = TestIssuer::start().await;
    let validator = validator(&issuer);
    let token = issuer.token("alice", RESOURCE, &["ibkr:health:read", "openid"]);
    let validated = validator.validate(&token).await.unwrap();
    assert_eq!(validated.subject, "alice");
    assert!(validated.scopes.contains("ibkr:health:read"));
    // Scopes outside the allowed list are dropped.
    assert!(!validated.scopes.contains("openid"));
    assert_eq!(validated.client_id.as_deref(), Some("test-client"));

    // `scp` as an array works too.
    let mut claims = issuer.claims("bob", RESOURCE, &[]);
    claims.as_object_mut().unwrap().remove("scope");
    claims["scp"] = json!(["ibkr:accounts:read"]);
    let validated = validator.validate(&issuer.key.sign(&claims)).await.unwrap();
    assert!(validated.scopes.contains("ibkr:accounts:read"));
}

#[tokio::test]
async fn invalid_tokens_are_refused() {
    let issuer = TestIssuer::start().await;
    let validator = validator(&issuer);
    let now = now_secs();

    let mut expired = issuer.claims("alice", RESOURCE, &[]);
    expired["exp"] = json!(now - 3600);
    assert_eq!(
        validator.validate(&issuer.key.sign(&expired)).await,
        Err(TokenError::Expired)
    );

    let mut early = issuer.claims("alice", RESOURCE, &[]);
    early["nbf"] = json!(now + 3600);
    assert_eq!(
        validator.validate(&issuer.key.sign(&early)).await,
        Err(TokenError::NotYetValid)
    );

    let mut wrong_issuer = issuer.claims("alice", RESOURCE, &[]);
    wrong_issuer["iss"] = json!("http://127.0.0.1:1");
    assert_eq!(
        validator.validate(&issuer.key.sign(&wrong_issuer)).await,
        Err(TokenError::WrongIssuer)
    );

    let wrong_audience = issuer.claims("alice", "http://127.0.0.1:8080/other", &[]);
    assert_eq!(
        validator.validate(&issuer.key.sign(&wrong_audience)).await,
        Err(TokenError::WrongAudience)
    );

    let mut no_subject = issuer.claims("alice", RESOURCE, &[]);
    no_subject.as_object_mut().unwrap().remove("sub");
    assert_eq!(
        validator.validate(&issuer.key.sign(&no_subject)).await,
        Err(TokenError::MissingClaim)
    );

    let mut no_exp = issuer.claims("alice", RESOURCE, &[]);
    no_exp.as_object_mut().unwrap().remove("exp");
    assert!(validator.validate(&issuer.key.sign(&no_exp)).await.is_err());

    // alg none: an unsigned token.
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "at+jwt"})),
        b64(&issuer.claims("alice", RESOURCE, &[]))
    );
    assert_eq!(
        validator.validate(&unsigned).await,
        Err(TokenError::Malformed)
    );

    // HS256 with a guessed secret: the algorithm is not on the list.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("key-1".into());
    header.typ = Some("at+jwt".into());
    let hmac = jsonwebtoken::encode(
        &header,
        &issuer.claims("alice", RESOURCE, &[]),
        &jsonwebtoken::EncodingKey::from_secret(b"secret").unwrap(),
    )
    .unwrap();
    assert_eq!(
        validator.validate(&hmac).await,
        Err(TokenError::AlgorithmNotAllowed)
    );

    // Signed by another key under the published kid.
    let impostor = SigningKey::es256("key-1");
    assert_eq!(
        validator
            .validate(&impostor.sign(&issuer.claims("alice", RESOURCE, &[])))
            .await,
        Err(TokenError::BadSignature)
    );

    // A header alg that does not match the key family (EdDSA header, EC key id).
    let ed = SigningKey::ed25519("key-1");
    assert!(
        validator
            .validate(&ed.sign(&issuer.claims("alice", RESOURCE, &[])))
            .await
            .is_err()
    );

    // Another JWT of the same issuer and audience, such as an ID token (typ "JWT"), or one
    // with no typ at all, is not an access token.
    for typ in [Some("JWT"), None] {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("key-1".into());
        header.typ = typ.map(str::to_string);
        let token = issuer
            .key
            .sign_with_header(header, &issuer.claims("alice", RESOURCE, &[]));
        assert_eq!(
            validator.validate(&token).await,
            Err(TokenError::WrongType),
            "{typ:?}"
        );
    }

    // `crit` headers are not understood, so refused.
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("key-1".into());
    let token = issuer
        .key
        .sign_with_header(header, &issuer.claims("alice", RESOURCE, &[]));
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    parts[0] = b64(&json!({"alg": "ES256", "kid": "key-1", "typ": "at+jwt", "crit": ["exp"]}));
    assert_eq!(
        validator.validate(&parts.join(".")).await,
        Err(TokenError::Malformed)
    );
    assert_eq!(
        validator.validate("not-a-jwt").await,
        Err(TokenError::Malformed)
    );
}

#[tokio::test]
async fn unknown_kid_triggers_one_refresh_and_rotation_is_picked_up() {
    let issuer = TestIssuer::start().await;
    let validator = validator(&issuer);
    let token = issuer.token("alice", RESOURCE, &[]);
    validator.validate(&token).await.unwrap();
    let after_first = issuer.jwks_fetches();
    assert_eq!(after_first, 1);

    // Rotate: a new key under a new kid.
    let rotated = SigningKey::ed25519("key-2");
    issuer.publish(vec![issuer.key.jwk.clone(), rotated.jwk.clone()]);
    let validated = validator
        .validate(&rotated.sign(&issuer.claims("carol", RESOURCE, &[])))
        .await
        .unwrap();
    assert_eq!(validated.subject, "carol");
    assert_eq!(issuer.jwks_fetches(), after_first + 1);

    // Random kids draw down the small refresh bucket (3 back to back, the rotation took
    // one), then cause no further fetches.
    for n in 0..5 {
        let stranger = SigningKey::es256(&format!("random-{n}"));
        assert_eq!(
            validator
                .validate(&stranger.sign(&issuer.claims("eve", RESOURCE, &[])))
                .await,
            Err(TokenError::NoMatchingKey)
        );
    }
    assert_eq!(
        issuer.jwks_fetches(),
        after_first + u64::from(ibkr_gateway::oauth::jwks::KID_MISS_BURST)
    );
}

#[tokio::test]
async fn protected_resource_metadata_and_challenges() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let client = http();
    let metadata_url = format!(
        "{}/.well-known/oauth-protected-resource/mcp",
        handle.base_url()
    );

    for url in [
        metadata_url.clone(),
        format!("{}/.well-known/oauth-protected-resource", handle.base_url()),
    ] {
        let body: serde_json::Value = client.get(&url).send().await.unwrap().json().await.unwrap();
        assert_eq!(body["resource"], json!(handle.mcp_url()));
        assert_eq!(body["authorization_servers"], json!([issuer.url()]));
        assert_eq!(body["bearer_methods_supported"], json!(["header"]));
        assert!(
            body["scopes_supported"]
                .as_array()
                .unwrap()
                .contains(&json!("ibkr:orders:write"))
        );
    }

    let initialize = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}});

    // No token: 401 with the metadata pointer, the read scopes to start with, and no error
    // code.
    let response = client
        .post(handle.mcp_url())
        .header("accept", "application/json, text/event-stream")
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(
        challenge,
        format!("Bearer resource_metadata=\"{metadata_url}\", scope=\"{READ_SCOPES_CHALLENGE}\"")
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "AUTH_REQUIRED");

    // A bad token: 401 invalid_token.
    let response = client
        .post(handle.mcp_url())
        .bearer_auth("a.b.c")
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert_eq!(
        challenge,
        format!(
            "Bearer resource_metadata=\"{metadata_url}\", scope=\"{READ_SCOPES_CHALLENGE}\", error=\"invalid_token\""
        )
    );

    // A token for another audience (e.g. the issuer's other resource) is refused.
    let foreign = issuer.token("alice", "http://127.0.0.1:1/mcp", &["ibkr:health:read"]);
    let response = client
        .post(handle.mcp_url())
        .bearer_auth(&foreign)
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // A token in the query string is refused and never read, even a valid one.
    let good = issuer.token("alice", &handle.mcp_url(), &["ibkr:health:read"]);
    let response = client
        .post(format!("{}?access_token={good}", handle.mcp_url()))
        .json(&initialize)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    handle.shutdown().await;
}

#[tokio::test]
async fn tools_are_filtered_by_scope_and_missing_scope_steps_up() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;

    let token = issuer.token("alice", &handle.mcp_url(), &["ibkr:health:read"]);
    let mut client = McpClient::new(&handle.mcp_url(), &token);
    let init = client.initialize().await;
    assert!(
        init["result"]["capabilities"]["tools"].is_object(),
        "{init}"
    );
    let tools = client.request("tools/list", json!({})).await;
    assert_eq!(
        tool_names(&tools["result"]),
        ["ibkr_health", "ibkr_session_status"]
    );
    assert_eq!(
        tools["result"]["tools"][0]["annotations"]["readOnlyHint"],
        json!(true)
    );

    // A tool whose scope the token lacks: 403 insufficient_scope before rmcp sees it.
    let call = json!({"jsonrpc":"2.0","id":9,"method":"tools/call",
        "params":{"name":"ibkr_accounts_list","arguments":{}}});
    let response = client.post(&call).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let challenge = response.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"ibkr:accounts:read\""),
        "{challenge}"
    );
    assert!(challenge.contains("resource_metadata="), "{challenge}");

    // Unknown tools are a tool error, not a protocol error.
    let unknown = client
        .request(
            "tools/call",
            json!({"name": "ibkr_launch_rockets", "arguments": {}}),
        )
        .await;
    assert_eq!(unknown["result"]["isError"], json!(true));
    assert_eq!(
        unknown["result"]["structuredContent"]["error"]["code"],
        "TOOL_UNKNOWN"
    );

    // Another subject cannot ride on this session.
    let mut intruder = client.clone();
    intruder.token = issuer.token("mallory", &handle.mcp_url(), &["ibkr:health:read"]);
    let response = intruder
        .post(&json!({"jsonrpc":"2.0","id":10,"method":"tools/list","params":{}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    // Health never fails for a missing sidecar.
    let health = client
        .request(
            "tools/call",
            json!({"name": "ibkr_health", "arguments": {}}),
        )
        .await;
    let structured = &health["result"]["structuredContent"];
    assert_eq!(health["result"]["isError"], json!(false), "{health}");
    assert_eq!(structured["gateway"]["status"], "ok");
    assert_eq!(structured["gateway"]["instance_id"], "remote-1");
    assert_eq!(structured["relay"]["connected"], json!(false));
    assert_eq!(structured["relay"]["status"], "SIDECAR_PAIRING_REQUIRED");
    assert_eq!(structured["sidecar"], serde_json::Value::Null);
    assert!(structured["next_step"].as_str().unwrap().contains("pair"));

    handle.shutdown().await;
}

/// A deployment that asks new clients for less than the read scopes: the 401 names exactly
/// its baseline, a token with just that baseline sees just its tools, and each tool beyond it
/// is answered 403 asking for exactly the scope that tool needs, nothing the token holds and
/// nothing else the catalog has.
#[tokio::test]
async fn the_401_asks_for_the_configured_baseline_and_the_403_for_exactly_what_is_missing() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.challenge_scopes = Some(vec![
        "ibkr:marketdata:read".into(),
        "ibkr:health:read".into(),
    ]);
    let handle = ibkr_gateway::start(config).await.unwrap();
    let metadata = format!(
        "{}/.well-known/oauth-protected-resource/mcp",
        handle.base_url()
    );
    let baseline = "ibkr:health:read ibkr:marketdata:read";
    let client = http();
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let post = |token: Option<&str>, body: &serde_json::Value| {
        let mut request = client
            .post(handle.mcp_url())
            .header("accept", "application/json, text/event-stream")
            .json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let challenge = |response: &reqwest::Response| {
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string()
    };

    let response = post(None, &list).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        challenge(&response),
        format!("Bearer resource_metadata=\"{metadata}\", scope=\"{baseline}\"")
    );
    let response = post(Some("a.b.c"), &list).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        challenge(&response),
        format!(
            "Bearer resource_metadata=\"{metadata}\", scope=\"{baseline}\", error=\"invalid_token\""
        )
    );

    // A client that asked for the baseline and got it.
    let token = issuer.token(
        "alice",
        &handle.mcp_url(),
        &["ibkr:health:read", "ibkr:marketdata:read"],
    );
    let mut session = McpClient::new(&handle.mcp_url(), &token);
    session.initialize().await;
    let tools = session.request("tools/list", json!({})).await;
    assert_eq!(
        tool_names(&tools["result"]),
        [
            "ibkr_health",
            "ibkr_session_status",
            "ibkr_market_status",
            "ibkr_contracts_search",
            "ibkr_quote",
            "ibkr_quotes",
            "ibkr_historical_bars"
        ]
    );
    for (tool, arguments, missing) in [
        (
            "ibkr_buy",
            json!({"symbol": "AAPL", "cash_amount": "10"}),
            "ibkr:orders:write",
        ),
        (
            "ibkr_order_preview",
            json!({"symbol": "AAPL", "side": "BUY", "quantity": 1}),
            "ibkr:orders:preview",
        ),
        ("ibkr_accounts_list", json!({}), "ibkr:accounts:read"),
    ] {
        let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}});
        let response = post(Some(&token), &call).await.unwrap();
        assert_eq!(response.status(), 403, "{tool}");
        assert_eq!(
            challenge(&response),
            format!(
                "Bearer error=\"insufficient_scope\", scope=\"{missing}\", resource_metadata=\"{metadata}\""
            ),
            "{tool}"
        );
    }
    handle.shutdown().await;
}

/// Asserts the JSON body of a gate-1 refusal and returns it.
async fn refusal_body(response: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    assert_eq!(response.headers()["cache-control"], "no-store, private");
    assert_eq!(response.headers()["vary"], "Authorization");
    let body: serde_json::Value = response.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["code"], code, "{body}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(error["retryable"].is_boolean());
    assert!(error["user_action"].as_str().is_some_and(|a| !a.is_empty()));
    assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    body
}

#[tokio::test]
async fn gate_one_refusals_carry_json_bodies_without_an_oracle() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.rate_limit_per_subject_per_minute = 2;
    let handle = ibkr_gateway::start(config).await.unwrap();
    let client = http();
    let initialize = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"0"}}});
    let post = |token: Option<&str>| {
        let mut request = client
            .post(handle.mcp_url())
            .header("accept", "application/json, text/event-stream")
            .json(&initialize);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    // AUTH_REQUIRED: no token.
    let response = post(None).await.unwrap();
    assert!(response.headers().contains_key("www-authenticate"));
    let body = refusal_body(response, 401, "AUTH_REQUIRED").await;
    assert_eq!(body["error"]["retryable"], json!(false));

    // AUTH_INVALID_TOKEN: every way a token can be wrong gets the same answer, byte for byte.
    let now = now_secs();
    let mut expired = issuer.claims("alice", &handle.mcp_url(), &["ibkr:health:read"]);
    expired["exp"] = json!(now - 3600);
    expired["iat"] = json!(now - 7200);
    expired["nbf"] = json!(now - 7200);
    let mut foreign_issuer = issuer.claims("alice", &handle.mcp_url(), &["ibkr:health:read"]);
    foreign_issuer["iss"] = json!("https://evil.example");
    let stranger = SigningKey::es256("key-1");
    let bad_tokens = [
        "a.b.c".to_string(),
        issuer.key.sign(&expired),
        issuer.key.sign(&foreign_issuer),
        issuer.token("alice", "http://127.0.0.1:1/mcp", &["ibkr:health:read"]),
        stranger.sign(&issuer.claims("alice", &handle.mcp_url(), &["ibkr:health:read"])),
    ];
    let mut bodies = Vec::new();
    for token in &bad_tokens {
        let response = post(Some(token)).await.unwrap();
        let challenge = response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        let body = refusal_body(response, 401, "AUTH_INVALID_TOKEN").await;
        bodies.push((challenge, body));
    }
    assert!(
        bodies.windows(2).all(|pair| pair[0] == pair[1]),
        "refusals differ by reason: {bodies:?}"
    );

    // AUTH_INSUFFICIENT_SCOPE: a known tool outside the token's scopes.
    let token = issuer.token("bob", &handle.mcp_url(), &["ibkr:health:read"]);
    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
        "params":{"name":"ibkr_accounts_list","arguments":{}}});
    let response = client
        .post(handle.mcp_url())
        .bearer_auth(&token)
        .header("accept", "application/json, text/event-stream")
        .json(&call)
        .send()
        .await
        .unwrap();
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.contains("error=\"insufficient_scope\""));
    let body = refusal_body(response, 403, "AUTH_INSUFFICIENT_SCOPE").await;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ibkr:accounts:read")
    );

    // AUTH_RATE_LIMITED: the subject's third request in a minute (limit 2), with Retry-After.
    let token = issuer.token("carol", &handle.mcp_url(), &["ibkr:health:read"]);
    for _ in 0..2 {
        assert!(post(Some(&token)).await.unwrap().status().is_success());
    }
    let response = post(Some(&token)).await.unwrap();
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let body = refusal_body(response, 429, "AUTH_RATE_LIMITED").await;
    assert_eq!(body["error"]["retryable"], json!(true));

    handle.shutdown().await;
}

#[tokio::test]
async fn key_fetches_follow_no_redirects_and_refuse_oversized_or_plain_http_documents() {
    use axum::response::{IntoResponse, Redirect};
    use axum::routing::get;
    let issuer = TestIssuer::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let good = json!({"keys": [issuer.key.jwk.clone()]});
    let big = json!({"keys": [issuer.key.jwk.clone()], "padding": "x".repeat(100 * 1024)});
    let https_issuer = "https://issuer.example";
    let app = axum::Router::new()
        .route(
            "/jwks",
            get(move || async move { axum::Json(good).into_response() }),
        )
        .route("/redirect", get(|| async { Redirect::temporary("/jwks") }))
        .route(
            "/big",
            get(move || async move { axum::Json(big).into_response() }),
        );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let fetch = |url: String| async move {
        let cache = JwksCache::new("http://127.0.0.1:1", Some(&url)).unwrap();
        (cache.initial_fetch().await, cache.refresh_counts())
    };
    assert_eq!(fetch(format!("{base}/jwks")).await, (true, (1, 0)));
    // A redirect is not followed, even to a good document on the same host.
    assert_eq!(fetch(format!("{base}/redirect")).await, (false, (0, 1)));
    // More than 64 KiB is refused.
    assert_eq!(fetch(format!("{base}/big")).await, (false, (0, 1)));
    // Plain http only on loopback: refused before any connection is made.
    let cache = JwksCache::new(https_issuer, Some("http://keys.example/jwks")).unwrap();
    assert!(!cache.initial_fetch().await);
    assert_eq!(cache.refresh_counts(), (0, 1));
    drop(issuer);
    server.abort();
}
