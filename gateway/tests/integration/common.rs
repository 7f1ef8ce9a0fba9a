//! Test fixtures: a loopback OAuth issuer with keys generated at test time, a gateway on an
//! ephemeral port, a raw MCP client over reqwest, pairing and a hand-written sidecar.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use axum::Json;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use ibkr_gateway::{GatewayConfiguration, GatewayHandle};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use protocol::PROTOCOL_VERSION;
use protocol::frame::Frame;
use protocol::handshake::{ClientHello, InitiatorHandshake, ServerHello};
use protocol::identity::StaticKeypair;
use protocol::pairing::{
    GatewayInfo, PairFinishReply, PairStartReply, PairingCode, SidecarInfo, SidecarPairing,
};
use protocol::transport::Transport;
use protocol::wire::WireMessage;
use rand_core::OsRng;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(10);

/// The `scope` of a `401` challenge with the default `remote_mcp.challenge_scopes`: the
/// catalog's read-only scopes, in catalog order.
pub const READ_SCOPES_CHALLENGE: &str = "ibkr:health:read ibkr:marketdata:read \
    ibkr:accounts:read ibkr:portfolio:read ibkr:positions:read ibkr:orders:read ibkr:audit:read";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A signing key generated for this test run.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    pub encoding: EncodingKey,
    pub jwk: Value,
    /// The public key as SPKI PEM (RSA keys only): what an attacker would try as an HMAC
    /// secret.
    pub public_pem: Option<String>,
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

impl SigningKey {
    /// A fresh 2048-bit RSA key (RS256).
    pub fn rs256(kid: &str) -> SigningKey {
        use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs8: Pkcs8V1Der = pair.as_der().unwrap();
        let encoding =
            EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8.as_ref()).as_bytes()).unwrap();
        let public = pair.public_key();
        let spki: PublicKeyX509Der = public.as_der().unwrap();
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::RS256,
            encoding,
            jwk: json!({
                "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid,
                "n": b64(public.modulus().big_endian_without_leading_zero()),
                "e": b64(public.exponent().big_endian_without_leading_zero()),
            }),
            public_pem: Some(pem("PUBLIC KEY", spki.as_ref())),
        }
    }

    pub fn es256(kid: &str) -> SigningKey {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let pkcs8 = pair.to_pkcs8v1().unwrap();
        let public = pair.public_key().as_ref().to_vec();
        assert_eq!(public.len(), 65);
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({
                "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
                "x": b64(&public[1..33]), "y": b64(&public[33..65]),
            }),
            public_pem: None,
        }
    }

    pub fn ed25519(kid: &str) -> SigningKey {
        let pair = Ed25519KeyPair::generate().unwrap();
        let pkcs8 = pair.to_pkcs8().unwrap();
        let public = pair.public_key().as_ref().to_vec();
        SigningKey {
            kid: kid.into(),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(&public)}),
            public_pem: None,
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".into());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    pub fn sign_with_header(&self, header: Header, claims: &Value) -> String {
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

struct IssuerState {
    url: String,
    jwks: RwLock<Value>,
    fetches: AtomicU64,
    /// When false, every endpoint answers 503.
    available: std::sync::atomic::AtomicBool,
}

/// A loopback authorization server: RFC 8414 metadata and a JWKS.
pub struct TestIssuer {
    state: Arc<IssuerState>,
    pub key: SigningKey,
    task: tokio::task::JoinHandle<()>,
}

impl TestIssuer {
    pub async fn start() -> TestIssuer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let key = SigningKey::es256("key-1");
        let state = Arc::new(IssuerState {
            url: url.clone(),
            jwks: RwLock::new(json!({"keys": [key.jwk.clone()]})),
            fetches: AtomicU64::new(0),
            available: std::sync::atomic::AtomicBool::new(true),
        });
        let app = axum::Router::new()
            .route(
                "/.well-known/oauth-authorization-server",
                get(|State(state): State<Arc<IssuerState>>| async move {
                    Json(json!({
                        "issuer": state.url,
                        "jwks_uri": format!("{}/jwks.json", state.url),
                        "token_endpoint": format!("{}/token", state.url),
                    }))
                }),
            )
            .route(
                "/jwks.json",
                get(|State(state): State<Arc<IssuerState>>| async move {
                    state.fetches.fetch_add(1, Ordering::SeqCst);
                    Json(state.jwks.read().unwrap().clone())
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&state),
                |State(state): State<Arc<IssuerState>>,
                 request: axum::extract::Request,
                 next: axum::middleware::Next| async move {
                    if state.available.load(Ordering::SeqCst) {
                        next.run(request).await
                    } else {
                        axum::response::IntoResponse::into_response(
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        )
                    }
                },
            ))
            .with_state(Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TestIssuer { state, key, task }
    }

    /// Makes every issuer endpoint answer 503 (or serve again).
    pub fn set_available(&self, available: bool) {
        self.state.available.store(available, Ordering::SeqCst);
    }

    pub fn url(&self) -> String {
        self.state.url.clone()
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.state.fetches.load(Ordering::SeqCst)
    }

    pub fn publish(&self, keys: Vec<Value>) {
        *self.state.jwks.write().unwrap() = json!({ "keys": keys });
    }

    /// A valid token for `subject` with `scopes`, audience `audience`.
    pub fn token(&self, subject: &str, audience: &str, scopes: &[&str]) -> String {
        self.key.sign(&self.claims(subject, audience, scopes))
    }

    pub fn claims(&self, subject: &str, audience: &str, scopes: &[&str]) -> Value {
        let now = now_secs();
        json!({
            "iss": self.url(),
            "sub": subject,
            "aud": [audience],
            "exp": now + 600,
            "iat": now,
            "nbf": now,
            "jti": format!("jti-{subject}-{now}"),
            "scope": scopes.join(" "),
            "client_id": "test-client",
        })
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub fn dev_config(issuer: &str, state_dir: &std::path::Path) -> GatewayConfiguration {
    let mut config =
        GatewayConfiguration::for_dev("127.0.0.1:0".parse().unwrap(), issuer, state_dir);
    config.instance_id = Some("remote-1".into());
    config
}

pub async fn start_gateway(issuer: &TestIssuer, state_dir: &std::path::Path) -> GatewayHandle {
    ibkr_gateway::start(dev_config(&issuer.url(), state_dir))
        .await
        .unwrap()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// A minimal MCP client over Streamable HTTP (session mode), enough to test the wire.
#[derive(Clone)]
pub struct McpClient {
    pub url: String,
    pub token: String,
    pub session: Option<String>,
    next_id: u64,
    http: reqwest::Client,
}

impl McpClient {
    pub fn new(url: &str, token: &str) -> McpClient {
        McpClient {
            url: url.into(),
            token: token.into(),
            session: None,
            next_id: 1,
            http: http(),
        }
    }

    pub fn post(&self, body: &Value) -> reqwest::RequestBuilder {
        let mut request = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .json(body);
        if let Some(session) = &self.session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25");
        }
        request
    }

    /// Sends a request and returns the JSON-RPC response message.
    pub async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        self.request_with_id(id, method, params).await
    }

    /// Sends a request with a caller-chosen id (for concurrent calls and cancellation).
    pub async fn request_with_id(&mut self, id: u64, method: &str, params: Value) -> Value {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let response = self.post(&body).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{method}: HTTP {}",
            response.status()
        );
        if let Some(session) = response.headers().get("mcp-session-id") {
            self.session = Some(session.to_str().unwrap().to_string());
        }
        read_jsonrpc_response(response, id).await
    }

    pub async fn initialize(&mut self) -> Value {
        let result = self
            .request(
                "initialize",
                json!({
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "gateway-test", "version": "0"}
                }),
            )
            .await;
        let notification = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let response = self.post(&notification).send().await.unwrap();
        assert!(response.status().is_success());
        result
    }
}

/// The tool names of a `tools/list` result, in order.
pub fn tool_names(result: &Value) -> Vec<String> {
    result["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("no tools in {result}"))
        .iter()
        .map(|tool| tool["name"].as_str().unwrap().to_string())
        .collect()
}

/// Reads an SSE (or JSON) response until the JSON-RPC message with `id` arrives.
pub async fn read_jsonrpc_response(mut response: reqwest::Response, id: u64) -> Value {
    let is_json = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response.json().await.unwrap();
    }
    let mut buffer = String::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            for line in buffer.lines() {
                if let Some(data) = line.strip_prefix("data:")
                    && let Ok(message) = serde_json::from_str::<Value>(data.trim())
                    && message.get("id") == Some(&json!(id))
                {
                    return Some(message);
                }
            }
        }
        None
    })
    .await
    .expect("timed out waiting for the JSON-RPC response");
    found.expect("stream ended without the response")
}

/// Pairs a new sidecar key through `/pair/start` and `/pair/finish`.
pub async fn pair(
    handle: &GatewayHandle,
    user_id: &str,
    sidecar_id: &str,
) -> (StaticKeypair, GatewayInfo) {
    let code = handle
        .issue_pairing_code(user_id, Duration::from_secs(60))
        .await
        .unwrap();
    let key = StaticKeypair::generate(&mut OsRng);
    let info = pair_with_code(handle, &code, &key, sidecar_id)
        .await
        .unwrap();
    (key, info)
}

/// Runs the pairing exchange; on an HTTP error returns (status, error code).
pub async fn pair_with_code(
    handle: &GatewayHandle,
    code: &str,
    key: &StaticKeypair,
    sidecar_id: &str,
) -> Result<GatewayInfo, (u16, String)> {
    pair_with_code_from(&http(), handle, code, key, sidecar_id).await
}

/// An HTTP client whose connections come from `127.0.0.<last>`: every 127/8 address reaches
/// the loopback listener, so each is a different client address to the gateway.
pub fn http_from(last: u8) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
            127, 0, 0, last,
        )))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(WAIT)
        .build()
        .unwrap()
}

/// [`pair_with_code`] through `client`.
pub async fn pair_with_code_from(
    client: &reqwest::Client,
    handle: &GatewayHandle,
    code: &str,
    key: &StaticKeypair,
    sidecar_id: &str,
) -> Result<GatewayInfo, (u16, String)> {
    let code = PairingCode::parse(code).unwrap();
    let (pairing, start) = SidecarPairing::start(&code, &mut OsRng);
    let response = client
        .post(format!("{}/pair/start", handle.base_url()))
        .header("content-type", "application/octet-stream")
        .body(protocol::pairing::encode(&start).unwrap())
        .send()
        .await
        .unwrap();
    let reply: PairStartReply = decode_or_error(response).await?;
    let (awaiting, finish) = pairing
        .finish(
            &reply,
            &SidecarInfo {
                static_public: key.public(),
                sidecar_id: sidecar_id.into(),
                display_name: "test laptop".into(),
            },
            key,
        )
        .unwrap();
    let response = client
        .post(format!("{}/pair/finish", handle.base_url()))
        .header("content-type", "application/octet-stream")
        .body(protocol::pairing::encode(&finish).unwrap())
        .send()
        .await
        .unwrap();
    let reply: PairFinishReply = decode_or_error(response).await?;
    Ok(awaiting.complete(&reply).unwrap())
}

async fn decode_or_error<T: for<'de> serde::Deserialize<'de>>(
    response: reqwest::Response,
) -> Result<T, (u16, String)> {
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap();
    if status == 200 {
        Ok(protocol::pairing::decode(&bytes).unwrap())
    } else {
        let body: Value = serde_json::from_slice(&bytes).unwrap();
        Err((status, body["error"]["code"].as_str().unwrap().to_string()))
    }
}

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub async fn connect(handle: &GatewayHandle) -> Socket {
    let (socket, _) =
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(handle.relay_url()))
            .await
            .unwrap()
            .unwrap();
    socket
}

pub async fn send_wire(socket: &mut Socket, message: &WireMessage) {
    socket
        .send(Message::binary(message.encode()))
        .await
        .unwrap();
}

/// The next relay message; `None` when the socket closed.
pub async fn recv_wire(socket: &mut Socket) -> Option<WireMessage> {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("timed out waiting for a relay message");
        match message {
            Some(Ok(Message::Binary(bytes))) => return Some(WireMessage::decode(&bytes).unwrap()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(other)) => panic!("unexpected websocket message {other:?}"),
        }
    }
}

pub fn hello(sidecar_id: &str, instance_id: &str, timestamp_ms: u64) -> ClientHello {
    ClientHello {
        protocol_version: PROTOCOL_VERSION,
        sidecar_id: sidecar_id.into(),
        remote_instance_id: instance_id.into(),
        timestamp_ms,
        sidecar_version: "test".into(),
        max_concurrent_requests: 32,
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Result of sending message 1.
pub enum Handshake {
    Accepted(Box<InitiatorHandshake>, Vec<u8>),
    Rejected(String),
    Closed,
}

pub async fn send_init(
    socket: &mut Socket,
    msg1: Vec<u8>,
    initiator: InitiatorHandshake,
) -> Handshake {
    send_wire(socket, &WireMessage::HandshakeInit(msg1)).await;
    match recv_wire(socket).await {
        Some(WireMessage::HandshakeResponse(msg2)) => {
            Handshake::Accepted(Box::new(initiator), msg2)
        }
        Some(WireMessage::HandshakeRejected { code }) => Handshake::Rejected(code),
        None => Handshake::Closed,
        Some(other) => panic!("unexpected {other:?}"),
    }
}

/// A connected, key-confirmed fake sidecar.
pub struct FakeSidecar {
    pub socket: Socket,
    pub transport: Transport,
    pub server_hello: ServerHello,
}

impl FakeSidecar {
    /// Handshakes and sends the key-confirmation record (a ping).
    pub async fn connect(
        handle: &GatewayHandle,
        key: &StaticKeypair,
        sidecar_id: &str,
    ) -> FakeSidecar {
        let mut socket = connect(handle).await;
        let (initiator, msg1) = InitiatorHandshake::start(
            key,
            &handle.public_key(),
            &hello(sidecar_id, &handle.instance_id(), unix_ms()),
            &mut OsRng,
        )
        .unwrap();
        let Handshake::Accepted(initiator, msg2) = send_init(&mut socket, msg1, initiator).await
        else {
            panic!("handshake refused");
        };
        let (mut transport, server_hello) = initiator.finish(&msg2).unwrap();
        let record = transport.seal(&Frame::Ping { seq: 0 }).unwrap();
        send_wire(&mut socket, &WireMessage::Record(record)).await;
        FakeSidecar {
            socket,
            transport,
            server_hello,
        }
    }

    pub async fn send(&mut self, frame: &Frame) {
        let record = self.transport.seal(frame).unwrap();
        send_wire(&mut self.socket, &WireMessage::Record(record)).await;
    }

    /// The next frame from the gateway; `None` when the socket closed.
    pub async fn recv(&mut self) -> Option<Frame> {
        match recv_wire(&mut self.socket).await? {
            WireMessage::Record(record) => Some(self.transport.open(&record).unwrap()),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Waits for a session event matching `predicate`.
pub async fn wait_event(
    events: &mut tokio::sync::broadcast::Receiver<ibkr_gateway::SessionEvent>,
    predicate: impl Fn(&ibkr_gateway::SessionEvent) -> bool,
) -> ibkr_gateway::SessionEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.unwrap();
            if predicate(&event) {
                return event;
            }
        }
    })
    .await
    .expect("timed out waiting for a session event")
}

/// Reads an SSE (or JSON) response until the JSON-RPC message with `id` arrives; returns
/// every message seen up to and including it (notifications first, in order).
pub async fn read_jsonrpc_messages(mut response: reqwest::Response, id: u64) -> Vec<Value> {
    let is_json = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return vec![response.json().await.unwrap()];
    }
    let mut buffer = String::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Some(chunk) = response.chunk().await.unwrap() {
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            let messages: Vec<Value> = buffer
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
                .collect();
            if messages.iter().any(|m| m.get("id") == Some(&json!(id))) {
                return Some(messages);
            }
        }
        None
    })
    .await
    .expect("timed out waiting for the JSON-RPC response");
    found.expect("stream ended without the response")
}

/// The `_meta` every 2026-07-28 request carries.
pub fn meta_2026() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "gateway-test", "version": "0"},
    })
}

/// A stateless 2026-07-28 request: per-request `_meta`, `MCP-Protocol-Version`, and the
/// `Mcp-Method` / `Mcp-Name` headers matching the body. `extra_meta` is merged into `_meta`.
pub fn stateless_request(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    id: u64,
    method: &str,
    mut params: Value,
    extra_meta: Value,
) -> reqwest::RequestBuilder {
    let mut meta = meta_2026();
    if let Value::Object(extra) = extra_meta {
        for (key, value) in extra {
            meta[key] = value;
        }
    }
    params["_meta"] = meta;
    let mut request = client
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if let Some(name) = params.get("name").and_then(Value::as_str) {
        request = request.header("mcp-name", name);
    }
    request.json(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
}

/// Runs a fake sidecar: answers pings, hands every request to `answer` (which returns the
/// frames to send back, in order), and reports every frame it sees except pings and pongs.
pub fn scripted_sidecar(
    mut sidecar: FakeSidecar,
    answer: impl Fn(&protocol::envelope::RelayRequest) -> Vec<Frame> + Send + 'static,
) -> tokio::sync::mpsc::UnboundedReceiver<Frame> {
    let (seen, seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(frame) = sidecar.recv().await {
            match frame {
                Frame::Ping { seq } => sidecar.send(&Frame::Pong { seq }).await,
                Frame::Pong { .. } => {}
                Frame::Request(request) => {
                    let replies = answer(&request);
                    let _ = seen.send(Frame::Request(request));
                    for reply in replies {
                        sidecar.send(&reply).await;
                    }
                }
                other => {
                    let _ = seen.send(other);
                }
            }
        }
    });
    seen_rx
}

/// The next frame a scripted sidecar saw.
pub async fn next_seen(seen: &mut tokio::sync::mpsc::UnboundedReceiver<Frame>) -> Frame {
    tokio::time::timeout(WAIT, seen.recv())
        .await
        .expect("timed out waiting for a frame at the sidecar")
        .expect("sidecar stopped")
}

/// A `Result` outcome answering `request` with `value`.
pub fn result_frame(request: &protocol::envelope::RelayRequest, value: Value) -> Frame {
    Frame::Response(protocol::envelope::RelayResponse {
        journal: None,
        request_id: request.request_id,
        outcome: protocol::envelope::Outcome::Result {
            json: value.to_string(),
        },
    })
}

/// Writes `config` as a YAML file the CLI accepts.
pub fn write_config(dir: &std::path::Path, config: &GatewayConfiguration) -> std::path::PathBuf {
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(config).unwrap()).unwrap();
    file
}

/// Runs the `ibkr-gateway` binary to completion with `args` (RUST_LOG removed).
pub async fn run_cli(args: Vec<std::ffi::OsString>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ibkr-gateway"))
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// Waits until the registered session count reaches `count`.
pub async fn registered_sessions(
    events: &mut tokio::sync::broadcast::Receiver<ibkr_gateway::SessionEvent>,
    count: usize,
) {
    for _ in 0..count {
        wait_event(events, |e| {
            matches!(e, ibkr_gateway::SessionEvent::Registered { .. })
        })
        .await;
    }
}

pub fn error_code(answer: &Value) -> String {
    assert_eq!(answer["result"]["isError"], json!(true), "{answer}");
    answer["result"]["structuredContent"]["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {answer}"))
        .to_string()
}

pub async fn call(client: &mut McpClient, tool: &str, arguments: Value) -> Value {
    client
        .request("tools/call", json!({"name": tool, "arguments": arguments}))
        .await
}

/// A fake sidecar that answers pings, answers requests with `{"accounts":["DU1"]}` and
/// reports every other frame it sees (requests, closes) except pongs.
pub fn answering_sidecar(sidecar: FakeSidecar) -> tokio::sync::mpsc::UnboundedReceiver<Frame> {
    scripted_sidecar(sidecar, |request| {
        vec![result_frame(request, json!({"accounts": ["DU1"]}))]
    })
}
