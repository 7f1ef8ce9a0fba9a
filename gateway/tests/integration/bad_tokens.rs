//! The resource server's answer to every kind of bad token, table-driven, over real loopback
//! sockets with keys generated at test time (ES256, Ed25519 and a fresh 2048-bit RSA key).
//!
//! Each row sends one `tools/call` (2026-07-28, stateless) and names the expected status, the
//! exact `WWW-Authenticate` challenge and the error code. Every `invalid_token` answer is the
//! same bytes whatever was wrong (no oracle). After the table: an unknown `kid` becomes valid
//! once the issuer rotates its keys, without a restart; and `typ: at+jwt` is required by
//! default, with an opt-out for issuers that cannot set it.

use crate::common::*;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// How a row presents its token.
enum Presented {
    Nothing,
    Header(String),
    /// `Authorization` with another scheme or a broken value.
    RawAuthorization(String),
    /// `?access_token=` in the URL, no header.
    Query(String),
}

struct Row {
    name: &'static str,
    presented: Presented,
    /// The tool called (the missing-scope row calls one its token does not cover).
    tool: &'static str,
    status: u16,
    /// `None`: no challenge expected (a successful call).
    challenge: Option<String>,
    code: Option<&'static str>,
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    presented: &Presented,
    tool: &str,
) -> reqwest::Response {
    let mut params = json!({"name": tool, "arguments": {}});
    params["_meta"] = meta_2026();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params});
    let target = match presented {
        Presented::Query(token) => format!("{url}?access_token={token}"),
        _ => url.to_string(),
    };
    let mut request = client
        .post(target)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .json(&body);
    match presented {
        Presented::Header(token) => request = request.bearer_auth(token),
        Presented::RawAuthorization(value) => request = request.header("authorization", value),
        Presented::Nothing | Presented::Query(_) => {}
    }
    request.send().await.unwrap()
}

/// Checks one answer; returns (challenge, body) for the no-oracle comparison.
async fn check(row: &Row, response: reqwest::Response) -> (Option<String>, Value) {
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .map(|value| value.to_str().unwrap().to_string());
    assert_eq!(status, row.status, "{}: status", row.name);
    assert_eq!(challenge, row.challenge, "{}: challenge", row.name);
    assert_eq!(
        response.headers()["cache-control"],
        "no-store, private",
        "{}",
        row.name
    );
    let body = if status == 200 {
        let messages = read_jsonrpc_messages(response, 1).await;
        let last = messages.last().unwrap().clone();
        assert_eq!(
            last["result"]["isError"],
            json!(false),
            "{}: {last}",
            row.name
        );
        last
    } else {
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"]["code"],
            json!(row.code.unwrap()),
            "{}",
            row.name
        );
        body
    };
    (challenge, body)
}

#[tokio::test]
async fn every_bad_token_gets_its_status_and_challenge() {
    let issuer = TestIssuer::start().await;
    let rsa = SigningKey::rs256("rsa-1");
    issuer.publish(vec![issuer.key.jwk.clone(), rsa.jwk.clone()]);
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let url = handle.mcp_url();
    let base = handle.base_url();
    let metadata = format!("{base}/.well-known/oauth-protected-resource/mcp");
    let pointer =
        format!("Bearer resource_metadata=\"{metadata}\", scope=\"{READ_SCOPES_CHALLENGE}\"");
    let required = pointer.clone();
    let invalid = format!("{pointer}, error=\"invalid_token\"");
    let bad_request = format!("{pointer}, error=\"invalid_request\"");
    let scopes = ["ibkr:health:read"];
    let now = now_secs();

    let claims = || issuer.claims("alice", &url, &scopes);
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut claims = claims();
        edit(&mut claims);
        issuer.key.sign(&claims)
    };
    let unsigned = |claims: &Value| {
        format!(
            "{}.{}.",
            b64(json!({"alg": "none", "typ": "at+jwt"})
                .to_string()
                .as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    };
    let hmac_with = |secret: &[u8]| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    };
    let rsa_pem = rsa.public_pem.clone().unwrap();
    let impostor = SigningKey::es256(&issuer.key.kid);
    let rotated = SigningKey::ed25519("key-2");
    let rotated_token = rotated.sign(&claims());

    let ok = |name: &'static str, token: String| Row {
        name,
        presented: Presented::Header(token),
        tool: "ibkr_health",
        status: 200,
        challenge: None,
        code: None,
    };
    let refused = |name: &'static str, token: String| Row {
        name,
        presented: Presented::Header(token),
        tool: "ibkr_health",
        status: 401,
        challenge: Some(invalid.clone()),
        code: Some("AUTH_INVALID_TOKEN"),
    };

    let rows = vec![
        // Controls: the same request with good tokens goes through.
        ok("valid ES256", issuer.key.sign(&claims())),
        ok("valid RS256", rsa.sign(&claims())),
        ok(
            "expired 30 s ago, within the 60 s skew",
            with(&|c| c["exp"] = json!(now - 30)),
        ),
        Row {
            name: "no token",
            presented: Presented::Nothing,
            tool: "ibkr_health",
            status: 401,
            challenge: Some(required.clone()),
            code: Some("AUTH_REQUIRED"),
        },
        refused("malformed: not a JWT", "not-a-jwt".into()),
        refused("malformed: three garbage segments", "a.b.c".into()),
        refused(
            "malformed: claims are not JSON",
            format!(
                "{}.{}.{}",
                b64(br#"{"alg":"ES256","kid":"key-1"}"#),
                b64(b"not json"),
                b64(b"sig")
            ),
        ),
        Row {
            name: "malformed: another scheme",
            presented: Presented::RawAuthorization(format!("Basic {}", b64(b"alice:secret"))),
            tool: "ibkr_health",
            status: 401,
            challenge: Some(bad_request.clone()),
            code: Some("AUTH_INVALID_TOKEN"),
        },
        refused(
            "expired beyond the skew",
            with(&|c| {
                c["exp"] = json!(now - 3600);
                c["iat"] = json!(now - 7200);
                c["nbf"] = json!(now - 7200);
            }),
        ),
        refused("nbf in the future", with(&|c| c["nbf"] = json!(now + 3600))),
        refused(
            "wrong issuer",
            with(&|c| c["iss"] = json!("https://issuer.example")),
        ),
        refused(
            "issuer differs only by a trailing slash",
            with(&|c| c["iss"] = json!(format!("{}/", issuer.url()))),
        ),
        refused(
            "wrong audience: another origin",
            with(&|c| c["aud"] = json!(["https://other.example/mcp"])),
        ),
        refused(
            "wrong audience: same host, another path",
            with(&|c| c["aud"] = json!([format!("{base}/other")])),
        ),
        refused(
            "wrong audience: the origin without /mcp",
            with(&|c| c["aud"] = json!(base.clone())),
        ),
        refused(
            "wrong audience: a trailing slash",
            with(&|c| c["aud"] = json!(format!("{url}/"))),
        ),
        refused(
            "no audience",
            with(&|c| {
                c.as_object_mut().unwrap().remove("aud");
            }),
        ),
        refused(
            "bad signature: another key under the published kid",
            impostor.sign(&claims()),
        ),
        refused("bad signature: tampered claims", {
            let token = issuer.key.sign(&claims());
            let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
            let mut tampered = claims();
            tampered["sub"] = json!("mallory");
            parts[1] = b64(tampered.to_string().as_bytes());
            parts.join(".")
        }),
        refused("alg none", unsigned(&claims())),
        refused(
            "HS256 signed with the RSA public key (PEM) as the HMAC secret",
            hmac_with(rsa_pem.as_bytes()),
        ),
        refused(
            "HS256 signed with the RSA JWK as the HMAC secret",
            hmac_with(rsa.jwk.to_string().as_bytes()),
        ),
        refused("RS256 header on an EC key id (algorithm/key confusion)", {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(issuer.key.kid.clone());
            header.typ = Some("at+jwt".into());
            rsa.sign_with_header(header, &claims())
        }),
        refused("unknown kid", rotated_token.clone()),
        Row {
            name: "missing scope",
            presented: Presented::Header(issuer.key.sign(&claims())),
            tool: "ibkr_accounts_list",
            status: 403,
            challenge: Some(format!(
                "Bearer error=\"insufficient_scope\", scope=\"ibkr:accounts:read\", resource_metadata=\"{metadata}\""
            )),
            code: Some("AUTH_INSUFFICIENT_SCOPE"),
        },
        Row {
            name: "token in the query string",
            presented: Presented::Query(issuer.key.sign(&claims())),
            tool: "ibkr_health",
            status: 401,
            challenge: Some(bad_request.clone()),
            code: Some("AUTH_INVALID_TOKEN"),
        },
    ];

    let client = http();
    let mut invalid_token_answers = Vec::new();
    for row in &rows {
        let response = send(&client, &url, &row.presented, row.tool).await;
        let (challenge, body) = check(row, response).await;
        if challenge.as_deref() == Some(invalid.as_str()) {
            invalid_token_answers.push((row.name, body));
        }
    }
    assert!(invalid_token_answers.len() >= 15);
    let first = &invalid_token_answers[0].1;
    for (name, body) in &invalid_token_answers {
        assert_eq!(body, first, "{name}: the refusal differs by reason");
    }

    // The issuer rotates: the unknown kid becomes valid, without a restart.
    issuer.publish(vec![
        issuer.key.jwk.clone(),
        rsa.jwk.clone(),
        rotated.jwk.clone(),
    ]);
    let row = ok("unknown kid after rotation", rotated_token);
    let response = send(&client, &url, &row.presented, row.tool).await;
    check(&row, response).await;

    handle.shutdown().await;
}

/// A token of the test issuer for `url` whose header carries `typ` (none when `None`).
fn with_typ(issuer: &TestIssuer, url: &str, typ: Option<&str>) -> String {
    let mut header = Header::new(issuer.key.alg);
    header.kid = Some(issuer.key.kid.clone());
    header.typ = typ.map(str::to_string);
    issuer
        .key
        .sign_with_header(header, &issuer.claims("alice", url, &["ibkr:health:read"]))
}

#[tokio::test]
async fn typ_at_jwt_is_required_by_default_and_can_be_turned_off() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The default configuration: nothing about typ is set.
    let handle = start_gateway(&issuer, dir.path()).await;
    let url = handle.mcp_url();
    let invalid = format!(
        "Bearer resource_metadata=\"{}/.well-known/oauth-protected-resource/mcp\", scope=\"{READ_SCOPES_CHALLENGE}\", error=\"invalid_token\"",
        handle.base_url()
    );
    let client = http();
    for (typ, status) in [
        (Some("at+jwt"), 200),
        // RFC 7515 4.1.9: the full media type, and any case.
        (Some("application/at+jwt"), 200),
        (Some("AT+JWT"), 200),
        (Some("Application/At+Jwt"), 200),
        // What an OpenID Connect ID token (or any other JWT) of the same issuer carries.
        (Some("JWT"), 401),
        (None, 401),
        (Some("at+jwt; charset=utf-8"), 401),
        (Some("application/jwt"), 401),
        (Some("id_token+jwt"), 401),
    ] {
        let row = Row {
            name: "typ",
            presented: Presented::Header(with_typ(&issuer, &url, typ)),
            tool: "ibkr_health",
            status,
            challenge: (status == 401).then(|| invalid.clone()),
            code: (status == 401).then_some("AUTH_INVALID_TOKEN"),
        };
        let response = send(&client, &url, &row.presented, row.tool).await;
        check(&row, response).await;
    }

    // An issuer that cannot set typ: the documented opt-out accepts its tokens.
    let dir = tempfile::tempdir().unwrap();
    let mut config = dev_config(&issuer.url(), dir.path());
    config.remote_mcp.require_typ_at_jwt = false;
    let lenient = ibkr_gateway::start(config).await.unwrap();
    let url = lenient.mcp_url();
    for typ in [Some("JWT"), None, Some("at+jwt")] {
        let row = Row {
            name: "typ not required",
            presented: Presented::Header(with_typ(&issuer, &url, typ)),
            tool: "ibkr_health",
            status: 200,
            challenge: None,
            code: None,
        };
        let response = send(&client, &url, &row.presented, row.tool).await;
        check(&row, response).await;
    }

    lenient.shutdown().await;
    handle.shutdown().await;
}
