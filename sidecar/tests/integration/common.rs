//! Test doubles on real loopback sockets: a minimal relay gateway (websocket + Noise responder)
//! and a minimal plain-HTTP CPGW. Both are just enough to drive the sidecar; the full
//! simulator lives in e2e.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::{SinkExt, StreamExt};
use ibkr_agent::state::{PairingRecord, StateStore};
use protocol::PROTOCOL_VERSION;
use protocol::envelope::{RelayRequest, RelayResponse, RequestId};
use protocol::frame::Frame;
use protocol::handshake::{ClientHello, ResponderHandshake, ServerHello, user_id_hash};
use protocol::identity::StaticKeypair;
use protocol::transport::Transport;
use protocol::wire::WireMessage;
use rand_core::OsRng;
use serde_json::{Value, json};
use shared_safety::scope::ScopeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

pub const INSTANCE_ID: &str = "remote-test";
pub const USER_ID: &str = "user-test";
/// The gateway's pairing id the provisioned pairing pins.
pub const PAIRING_ID: [u8; 16] = [0x3c; 16];
/// Upper bound for any single wait in these tests (a hang fails instead of blocking CI).
pub const STEP: Duration = Duration::from_secs(10);

pub async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .expect("test step timed out")
}

// ---- fake relay gateway ---------------------------------------------------------------------

pub struct FakeGateway {
    listener: TcpListener,
    pub key: StaticKeypair,
    pub session_ttl_ms: u64,
    /// Every byte of the next session id (0x5a unless a test changes it).
    pub session_byte: std::sync::atomic::AtomicU8,
    /// The user the ServerHello names ([`USER_ID`] unless a test changes it).
    pub named_user: Mutex<String>,
    /// The journal anchor the ServerHello names (none unless a test sets one).
    pub journal_anchor: Mutex<Option<protocol::envelope::JournalRef>>,
}

pub struct GatewayConnection {
    ws: WebSocketStream<TcpStream>,
    transport: Transport,
    pub client_hello: ClientHello,
    pub sidecar_key: protocol::identity::PublicKey,
}

impl FakeGateway {
    pub async fn start() -> FakeGateway {
        FakeGateway {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            key: StaticKeypair::generate(&mut OsRng),
            session_ttl_ms: 3_600_000,
            session_byte: std::sync::atomic::AtomicU8::new(0x5a),
            named_user: Mutex::new(USER_ID.to_string()),
            journal_anchor: Mutex::new(None),
        }
    }

    pub fn relay_url(&self) -> String {
        format!("ws://{}/relay", self.listener.local_addr().unwrap())
    }

    /// Accepts one sidecar connection and completes the handshake.
    pub async fn accept(&self) -> GatewayConnection {
        let (tcp, _) = within(self.listener.accept()).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut ws = within(tokio_tungstenite::accept_async(tcp)).await.unwrap();
        let init = loop {
            match within(ws.next()).await.unwrap().unwrap() {
                Message::Binary(bytes) => break bytes,
                _ => continue,
            }
        };
        let WireMessage::HandshakeInit(message1) = WireMessage::decode(&init).unwrap() else {
            panic!("expected HandshakeInit");
        };
        let pending = ResponderHandshake::read_init(&self.key, &message1, &mut OsRng).unwrap();
        let client_hello = pending.hello.clone();
        let sidecar_key = pending.remote_static;
        let (message2, transport) = pending
            .accept(&ServerHello {
                protocol_version: PROTOCOL_VERSION,
                session_id: [self.session_byte.load(std::sync::atomic::Ordering::SeqCst); 16],
                instance_id: INSTANCE_ID.into(),
                user_id_hash: user_id_hash(&self.named_user.lock().unwrap()),
                pairing_id: PAIRING_ID,
                journal_anchor: *self.journal_anchor.lock().unwrap(),
                session_ttl_ms: self.session_ttl_ms,
                heartbeat_interval_ms: 15_000,
                heartbeat_timeout_ms: 45_000,
            })
            .unwrap();
        ws.send(Message::Binary(
            WireMessage::HandshakeResponse(message2).encode().into(),
        ))
        .await
        .unwrap();
        GatewayConnection {
            ws,
            transport,
            client_hello,
            sidecar_key,
        }
    }

    /// Accepts one connection and refuses its handshake with `code`.
    pub async fn reject(&self, code: &str) {
        let (tcp, _) = within(self.listener.accept()).await.unwrap();
        let mut ws = within(tokio_tungstenite::accept_async(tcp)).await.unwrap();
        let _ = within(ws.next()).await;
        ws.send(Message::Binary(
            WireMessage::HandshakeRejected { code: code.into() }
                .encode()
                .into(),
        ))
        .await
        .unwrap();
        let _ = ws.close(None).await;
    }
}

impl GatewayConnection {
    pub async fn send(&mut self, frame: &Frame) {
        let record = self.transport.seal(frame).unwrap();
        self.ws
            .send(Message::Binary(WireMessage::Record(record).encode().into()))
            .await
            .unwrap();
    }

    /// The next frame from the sidecar, or `None` when the websocket closed.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            match within(self.ws.next()).await {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Binary(bytes))) => {
                    let WireMessage::Record(record) = WireMessage::decode(&bytes).unwrap() else {
                        panic!("expected a record");
                    };
                    return Some(self.transport.open(&record).unwrap());
                }
                Some(Ok(Message::Close(_))) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next frame that is not heartbeat or status traffic (pings are answered).
    pub async fn recv_significant(&mut self) -> Option<Frame> {
        loop {
            match self.recv().await? {
                Frame::Ping { seq } => self.send(&Frame::Pong { seq }).await,
                Frame::Pong { .. } | Frame::SidecarStatus(_) => continue,
                other => return Some(other),
            }
        }
    }

    pub async fn send_request(
        &mut self,
        id: u8,
        tool: &str,
        scope: &str,
        arguments: Value,
    ) -> RequestId {
        let request_id = RequestId([id; 16]);
        let request =
            RelayRequest::new(request_id, tool, scope, &[scope], &arguments, 30_000, None).unwrap();
        self.send(&Frame::Request(request)).await;
        request_id
    }

    pub async fn expect_response(&mut self) -> RelayResponse {
        match self.recv_significant().await {
            Some(Frame::Response(response)) => response,
            other => panic!("expected a response, got {other:?}"),
        }
    }

    pub async fn call(
        &mut self,
        id: u8,
        tool: &str,
        scope: &str,
        arguments: Value,
    ) -> RelayResponse {
        let request_id = self.send_request(id, tool, scope, arguments).await;
        let response = self.expect_response().await;
        assert_eq!(response.request_id, request_id);
        response
    }
}

// ---- fake CPGW --------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Login {
    LoggedIn,
    ConnectedOnly,
    LoggedOut,
}

#[derive(Default)]
pub struct CpgwCounters {
    pub ssodh_inits: usize,
    pub auth_status: usize,
    pub tickles: usize,
    pub accounts: usize,
}

pub struct CpgwShared {
    pub login: Mutex<Login>,
    pub counters: Mutex<CpgwCounters>,
    /// When set, `/iserver/accounts` waits for `release` before answering.
    pub block_accounts: Mutex<bool>,
    pub release: Notify,
    /// Signalled when a blocked accounts call starts, and when its handler is dropped.
    pub entered: mpsc::UnboundedSender<&'static str>,
}

pub struct FakeCpgw {
    pub base_url: String,
    pub shared: Arc<CpgwShared>,
    pub events: mpsc::UnboundedReceiver<&'static str>,
}

struct DropSignal(mpsc::UnboundedSender<&'static str>);
impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send("dropped");
    }
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

async fn auth_status(State(shared): State<Arc<CpgwShared>>) -> Response {
    shared.counters.lock().unwrap().auth_status += 1;
    let login = *shared.login.lock().unwrap();
    let (authenticated, connected) = match login {
        Login::LoggedIn => (true, true),
        Login::ConnectedOnly => (false, true),
        Login::LoggedOut => (false, false),
    };
    json_response(
        StatusCode::OK,
        json!({"authenticated": authenticated, "connected": connected, "competing": false,
               "serverInfo": {"serverName": "x"}, "MAC": "00:11"}),
    )
}

async fn tickle(State(shared): State<Arc<CpgwShared>>) -> Response {
    shared.counters.lock().unwrap().tickles += 1;
    if *shared.login.lock().unwrap() == Login::LoggedOut {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    json_response(StatusCode::OK, json!({"session": "abcdef", "iserver": {}}))
}

async fn ssodh_init(State(shared): State<Arc<CpgwShared>>) -> Response {
    shared.counters.lock().unwrap().ssodh_inits += 1;
    let mut login = shared.login.lock().unwrap();
    if *login == Login::LoggedOut {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "not authenticated"}),
        );
    }
    *login = Login::LoggedIn;
    json_response(
        StatusCode::OK,
        json!({"authenticated": true, "connected": true, "competing": false}),
    )
}

async fn accounts(State(shared): State<Arc<CpgwShared>>) -> Response {
    shared.counters.lock().unwrap().accounts += 1;
    if *shared.login.lock().unwrap() != Login::LoggedIn {
        return json_response(
            StatusCode::UNAUTHORIZED,
            json!({"error": "not authenticated"}),
        );
    }
    let block = *shared.block_accounts.lock().unwrap();
    if block {
        let _guard = DropSignal(shared.entered.clone());
        let _ = shared.entered.send("entered");
        shared.release.notified().await;
    }
    json_response(
        StatusCode::OK,
        json!({
            "accounts": ["DU1234567"],
            "selectedAccount": "DU1234567",
            "isPaper": "true",
            "acctProps": {"DU1234567": {"supportsCashQty": true, "supportsFractions": false}},
            "sessionId": "must-not-leak",
        }),
    )
}

impl FakeCpgw {
    pub async fn start(login: Login) -> FakeCpgw {
        let (entered, events) = mpsc::unbounded_channel();
        let shared = Arc::new(CpgwShared {
            login: Mutex::new(login),
            counters: Mutex::new(CpgwCounters::default()),
            block_accounts: Mutex::new(false),
            release: Notify::new(),
            entered,
        });
        let router = Router::new()
            .route("/v1/api/iserver/auth/status", post(auth_status))
            .route("/v1/api/tickle", post(tickle))
            .route("/v1/api/iserver/auth/ssodh/init", post(ssodh_init))
            .route("/v1/api/iserver/accounts", get(accounts))
            .with_state(shared.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1/api", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FakeCpgw {
            base_url,
            shared,
            events,
        }
    }

    pub fn set_login(&self, login: Login) {
        *self.shared.login.lock().unwrap() = login;
    }
}

/// A loopback URL where nothing listens (connection refused).
pub fn dead_cpgw_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}/v1/api")
}

// ---- state ---------------------------------------------------------------------------------

/// Creates an identity and a pairing with `gateway` in `dir`; returns the sidecar id.
pub fn provision(dir: &Path, gateway: &FakeGateway, scopes: ScopeSet) -> String {
    let identity = ibkr_agent::create_identity(dir, "test laptop", None, None).unwrap();
    let store = StateStore::open(dir).unwrap();
    store
        .upsert_pairing(&PairingRecord {
            remote_instance_id: INSTANCE_ID.into(),
            sidecar_id: identity.sidecar_id.clone(),
            user_id: USER_ID.into(),
            gateway_url: None,
            relay_url: Some(gateway.relay_url()),
            gateway_public_key: Some(gateway.key.public()),
            gateway_pairing_id: Some(PAIRING_ID),
            local_scopes: scopes,
            created_at: ibkr_agent::clock::now_unix_seconds(),
            expires_at: None,
            revoked_at: None,
        })
        .unwrap();
    identity.sidecar_id
}
