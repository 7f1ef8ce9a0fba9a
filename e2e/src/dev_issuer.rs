//! A tiny OAuth 2.1 authorization server for tests and the demo: plain HTTP
//! on loopback, signing keys generated at start (never written anywhere),
//! RFC 8414 metadata, a JWKS endpoint, a `client_credentials` token endpoint
//! with RFC 8707 resource indicators, and direct minting of edge-case tokens
//! (expired, not yet valid, wrong issuer, unknown `kid`, ...).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::ListenerExt,
};
use base64::Engine;
use jsonwebtoken::{
    Algorithm, EncodingKey, Header,
    jwk::{Jwk, JwkSet, PublicKeyUse},
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// The only client the token endpoint knows.
pub const DEV_CLIENT_ID: &str = "dev-client";
/// Its secret. A development value by design: this issuer must never guard
/// anything real.
pub const DEV_CLIENT_SECRET: &str = "dev-secret";
/// Subject of tokens from `/token` when the request names none.
pub const DEFAULT_SUBJECT: &str = "dev-user";
/// Lifetime of tokens issued by `/token`.
pub const TOKEN_ENDPOINT_LIFETIME_SECONDS: i64 = 3600;

/// Every scope of the product's tool catalog.
pub const SUPPORTED_SCOPES: &[&str] = &[
    "ibkr:health:read",
    "ibkr:marketdata:read",
    "ibkr:accounts:read",
    "ibkr:portfolio:read",
    "ibkr:positions:read",
    "ibkr:orders:read",
    "ibkr:orders:preview",
    "ibkr:orders:write",
    "ibkr:orders:live",
    "ibkr:audit:read",
];

/// Scopes `/token` grants when the request asks for none: read-only ones,
/// so that a careless demo never gets to place orders.
pub const DEFAULT_SCOPES: &[&str] = &[
    "ibkr:health:read",
    "ibkr:marketdata:read",
    "ibkr:accounts:read",
    "ibkr:portfolio:read",
    "ibkr:positions:read",
    "ibkr:orders:read",
    "ibkr:audit:read",
];

/// JWS algorithm of a minted token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256, RSA-2048 key.
    Rs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
}

/// Everything that goes into a minted token. Fields beyond subject, audience
/// and scopes exist to produce the invalid tokens validation tests need.
#[derive(Clone, Debug)]
pub struct TokenRequest {
    /// `sub`.
    pub subject: String,
    /// `aud`, always serialized as an array.
    pub audience: Vec<String>,
    /// Joined with spaces into the `scope` claim.
    pub scopes: Vec<String>,
    /// Which of the issuer's two keys signs.
    pub algorithm: SigningAlgorithm,
    /// `exp - iat`; negative yields an already expired token.
    pub lifetime_seconds: i64,
    /// `nbf - iat`; positive yields a token not valid yet.
    pub not_before_offset_seconds: i64,
    /// Replaces `iss` (the issuer URL by default).
    pub issuer_override: Option<String>,
    /// Replaces the header `kid`; the token is still signed with the real key.
    pub kid_override: Option<String>,
    /// Header `typ`; `at+jwt` (RFC 9068) when `None`.
    pub typ: Option<String>,
    /// `jti`; random when `None`.
    pub jti: Option<String>,
}

impl TokenRequest {
    /// An RS256 token valid for 300 s from now.
    pub fn new(subject: &str, audience: &str, scopes: &[&str]) -> Self {
        TokenRequest {
            subject: subject.to_owned(),
            audience: vec![audience.to_owned()],
            scopes: scopes.iter().map(|scope| (*scope).to_owned()).collect(),
            algorithm: SigningAlgorithm::Rs256,
            lifetime_seconds: 300,
            not_before_offset_seconds: 0,
            issuer_override: None,
            kid_override: None,
            typ: None,
            jti: None,
        }
    }
}

/// Why minting or key generation failed.
#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    /// A signing key could not be generated or loaded.
    #[error("signing key generation failed: {0}")]
    KeyGeneration(String),
    /// jsonwebtoken refused to sign.
    #[error("token signing failed: {0}")]
    Signing(#[from] jsonwebtoken::errors::Error),
    /// The system clock is before 1970 or beyond `i64` seconds.
    #[error("system clock unusable for token timestamps")]
    Clock,
    /// The system random number generator failed.
    #[error("system random number generator failed")]
    Random,
}

/// A running issuer. Dropping it stops the server without waiting; call
/// [`DevIssuer::shutdown`] to stop gracefully.
pub struct DevIssuer {
    inner: Arc<Inner>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl DevIssuer {
    /// Generates fresh RS256 and ES256 keys, binds `listen` and starts
    /// serving. Returns once the listener is bound.
    pub async fn start(listen: SocketAddr) -> std::io::Result<DevIssuer> {
        let keys = KeySet::generate().map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(listen).await?;
        let local_addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            issuer_url: format!("http://{local_addr}"),
            keys: RwLock::new(Arc::new(keys)),
            jwks_fetches: AtomicU64::new(0),
            default_audience: RwLock::new(None),
        });
        let app = router(Arc::clone(&inner));
        let shutdown = CancellationToken::new();
        // Nagle plus delayed ACK would add ~40 ms to every JWKS fetch.
        let listener = listener.tap_io(|tcp| {
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "set_nodelay failed");
            }
        });
        let server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                .into_future(),
        );
        Ok(DevIssuer {
            inner,
            shutdown,
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:PORT`; exactly the `iss` of minted tokens.
    pub fn issuer_url(&self) -> String {
        self.inner.issuer_url.clone()
    }

    /// `issuer_url() + "/jwks.json"`.
    pub fn jwks_url(&self) -> String {
        format!("{}/jwks.json", self.inner.issuer_url)
    }

    /// `issuer_url() + "/token"`.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.inner.issuer_url)
    }

    /// Audience for `/token` requests that carry no `resource` parameter.
    /// Without one such requests are refused with `invalid_target`.
    pub fn set_default_audience(&self, audience: Option<String>) {
        *self
            .inner
            .default_audience
            .write()
            .unwrap_or_else(PoisonError::into_inner) = audience;
    }

    /// Signs a token as described by `request` with the current keys.
    pub fn mint(&self, request: &TokenRequest) -> Result<String, DevIssuerError> {
        self.inner.mint(request)
    }

    /// Replaces both signing keys with new ones under new `kid`s; the JWKS
    /// then lists only the new keys. Key generation failing is not a
    /// condition tests can recover from, so this logs and keeps the old
    /// keys; use [`DevIssuer::try_rotate_keys`] to observe the error.
    pub fn rotate_keys(&self) {
        if let Err(error) = self.try_rotate_keys() {
            tracing::error!(%error, "dev issuer key rotation failed; old keys kept");
        }
    }

    /// [`DevIssuer::rotate_keys`], reporting failure.
    pub fn try_rotate_keys(&self) -> Result<(), DevIssuerError> {
        let keys = KeySet::generate()?;
        *self
            .inner
            .keys
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(keys);
        Ok(())
    }

    /// The `kid`s currently published, RSA first.
    pub fn current_kids(&self) -> Vec<String> {
        let keys = self.inner.current_keys();
        vec![keys.rsa.kid.clone(), keys.ec.kid.clone()]
    }

    /// How many times `/jwks.json` has been served.
    pub fn jwks_fetch_count(&self) -> u64 {
        self.inner.jwks_fetches.load(Ordering::Relaxed)
    }

    /// Stops accepting and lets in-flight requests finish.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "dev issuer server failed"),
                Err(error) => tracing::warn!(%error, "dev issuer task ended abnormally"),
            }
        }
    }
}

impl Drop for DevIssuer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct Inner {
    issuer_url: String,
    /// Swapped whole on rotation so a mint never pairs one key's `kid` with
    /// another key's signature.
    keys: RwLock<Arc<KeySet>>,
    jwks_fetches: AtomicU64,
    default_audience: RwLock<Option<String>>,
}

impl Inner {
    fn current_keys(&self) -> Arc<KeySet> {
        // Writers only swap the Arc, so a poisoned lock still holds a
        // complete key set.
        Arc::clone(&self.keys.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn mint(&self, request: &TokenRequest) -> Result<String, DevIssuerError> {
        let keys = self.current_keys();
        let key = match request.algorithm {
            SigningAlgorithm::Rs256 => &keys.rsa,
            SigningAlgorithm::Es256 => &keys.ec,
        };
        let now = unix_now()?;
        let mut header = Header::new(key.algorithm);
        header.kid = Some(
            request
                .kid_override
                .clone()
                .unwrap_or_else(|| key.kid.clone()),
        );
        header.typ = Some(request.typ.clone().unwrap_or_else(|| "at+jwt".to_owned()));
        let jti = match &request.jti {
            Some(jti) => jti.clone(),
            None => random_hex(16)?,
        };
        let claims = Claims {
            iss: request
                .issuer_override
                .as_deref()
                .unwrap_or(&self.issuer_url),
            sub: &request.subject,
            aud: &request.audience,
            exp: now
                .checked_add(request.lifetime_seconds)
                .ok_or(DevIssuerError::Clock)?,
            iat: now,
            nbf: now
                .checked_add(request.not_before_offset_seconds)
                .ok_or(DevIssuerError::Clock)?,
            jti: &jti,
            scope: request.scopes.join(" "),
            client_id: DEV_CLIENT_ID,
        };
        Ok(jsonwebtoken::encode(&header, &claims, &key.encoding_key)?)
    }

    fn metadata(&self) -> Value {
        json!({
            "issuer": self.issuer_url,
            "jwks_uri": format!("{}/jwks.json", self.issuer_url),
            "token_endpoint": format!("{}/token", self.issuer_url),
            "grant_types_supported": ["client_credentials"],
            "response_types_supported": [],
            "scopes_supported": SUPPORTED_SCOPES,
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        })
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a [String],
    exp: i64,
    iat: i64,
    nbf: i64,
    jti: &'a str,
    scope: String,
    client_id: &'a str,
}

struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    encoding_key: EncodingKey,
    jwk: Jwk,
}

struct KeySet {
    rsa: SigningKey,
    ec: SigningKey,
}

impl KeySet {
    fn generate() -> Result<KeySet, DevIssuerError> {
        Ok(KeySet {
            rsa: SigningKey::generate(SigningAlgorithm::Rs256)?,
            ec: SigningKey::generate(SigningAlgorithm::Es256)?,
        })
    }

    fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: vec![self.rsa.jwk.clone(), self.ec.jwk.clone()],
        }
    }
}

impl SigningKey {
    /// rcgen generates the key (aws-lc-rs underneath) and hands it over as
    /// PKCS#8 PEM, which jsonwebtoken unwraps for both key types; its own
    /// JWK helper then derives the public parameters, so no DER is parsed here.
    fn generate(algorithm: SigningAlgorithm) -> Result<SigningKey, DevIssuerError> {
        let key_error =
            |error: &dyn std::fmt::Display| DevIssuerError::KeyGeneration(error.to_string());
        let (rcgen_algorithm, jwt_algorithm, kid_prefix) = match algorithm {
            SigningAlgorithm::Rs256 => (&rcgen::PKCS_RSA_SHA256, Algorithm::RS256, "rsa"),
            SigningAlgorithm::Es256 => (&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256, "ec"),
        };
        let key_pair = rcgen::KeyPair::generate_for(rcgen_algorithm).map_err(|e| key_error(&e))?;
        let pem = key_pair.serialize_pem();
        let encoding_key = match algorithm {
            SigningAlgorithm::Rs256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
            SigningAlgorithm::Es256 => EncodingKey::from_ec_pem(pem.as_bytes()),
        }
        .map_err(|e| key_error(&e))?;
        let kid = format!("{kid_prefix}-{}", random_hex(8)?);
        let mut jwk =
            Jwk::from_encoding_key(&encoding_key, jwt_algorithm).map_err(|e| key_error(&e))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(SigningKey {
            kid,
            algorithm: jwt_algorithm,
            encoding_key,
            jwk,
        })
    }
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/.well-known/openid-configuration", get(metadata))
        .route("/jwks.json", get(jwks))
        .route("/token", post(token))
        .fallback(|| async { oauth_error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(inner)
}

async fn metadata(State(inner): State<Arc<Inner>>) -> Json<Value> {
    Json(inner.metadata())
}

async fn jwks(State(inner): State<Arc<Inner>>) -> Json<JwkSet> {
    inner.jwks_fetches.fetch_add(1, Ordering::Relaxed);
    Json(inner.current_keys().jwks())
}

/// `client_credentials` only. Parsed by hand rather than with `Form` because
/// RFC 8707 allows `resource` to repeat and RFC 6749 forbids every other
/// parameter from repeating.
async fn token(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    match token_inner(&inner, &headers, &body) {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn token_inner(inner: &Inner, headers: &HeaderMap, body: &[u8]) -> Result<Response, TokenError> {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    let mut resources = Vec::new();
    for (name, value) in url::form_urlencoded::parse(body) {
        if name == "resource" {
            resources.push(value.into_owned());
        } else if params
            .insert(name.clone().into_owned(), value.into_owned())
            .is_some()
        {
            return Err(TokenError::invalid_request(&format!(
                "parameter {name} repeated"
            )));
        }
    }

    authenticate_client(headers, &params)?;

    match params.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(_) => {
            return Err(TokenError::new(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials is supported",
            ));
        }
        None => return Err(TokenError::invalid_request("grant_type missing")),
    }

    let scopes: Vec<String> = match params.get("scope") {
        Some(scope) => scope.split_whitespace().map(str::to_owned).collect(),
        None => DEFAULT_SCOPES
            .iter()
            .map(|scope| (*scope).to_owned())
            .collect(),
    };
    if let Some(unknown) = scopes
        .iter()
        .find(|scope| !SUPPORTED_SCOPES.contains(&scope.as_str()))
    {
        return Err(TokenError::new(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            &format!("unknown scope {unknown}"),
        ));
    }

    for resource in &resources {
        // RFC 8707 2: an absolute URI without a fragment.
        let valid = url::Url::parse(resource).is_ok_and(|url| url.fragment().is_none());
        if !valid {
            return Err(TokenError::invalid_target(
                "resource must be an absolute URI without fragment",
            ));
        }
    }
    if resources.is_empty() {
        let default = inner
            .default_audience
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match default {
            Some(audience) => resources.push(audience),
            None => return Err(TokenError::invalid_target("resource parameter required")),
        }
    }

    let request = TokenRequest {
        subject: params
            .get("subject")
            .cloned()
            .unwrap_or_else(|| DEFAULT_SUBJECT.to_owned()),
        audience: resources,
        scopes,
        algorithm: SigningAlgorithm::Rs256,
        lifetime_seconds: TOKEN_ENDPOINT_LIFETIME_SECONDS,
        not_before_offset_seconds: 0,
        issuer_override: None,
        kid_override: None,
        typ: None,
        jti: None,
    };
    let access_token = inner.mint(&request).map_err(|error| {
        tracing::error!(%error, "dev issuer could not mint a token");
        TokenError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "minting failed",
        )
    })?;
    let mut response = Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": TOKEN_ENDPOINT_LIFETIME_SECONDS,
        "scope": request.scopes.join(" "),
    }))
    .into_response();
    no_store(&mut response);
    Ok(response)
}

/// Accepts `client_secret_basic` or `client_secret_post`, not both at once
/// (RFC 6749 2.3). Basic credentials are compared without form-decoding,
/// which is exact for the fixed dev client whose id and secret need none.
fn authenticate_client(
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
) -> Result<(), TokenError> {
    let basic = match headers.get(header::AUTHORIZATION) {
        Some(value) => Some(parse_basic(value).ok_or_else(TokenError::invalid_client)?),
        None => None,
    };
    let posted = params.get("client_secret").map(|secret| {
        (
            params.get("client_id").cloned().unwrap_or_default(),
            secret.clone(),
        )
    });
    let (client_id, client_secret) = match (basic, posted) {
        (Some(_), Some(_)) => {
            return Err(TokenError::invalid_request(
                "more than one client authentication method",
            ));
        }
        (Some(credentials), None) | (None, Some(credentials)) => credentials,
        (None, None) => return Err(TokenError::invalid_client()),
    };
    if let Some(posted_id) = params.get("client_id")
        && *posted_id != client_id
    {
        return Err(TokenError::invalid_client());
    }
    let id_ok = client_id == DEV_CLIENT_ID;
    let secret_ok = aws_lc_rs::constant_time::verify_slices_are_equal(
        client_secret.as_bytes(),
        DEV_CLIENT_SECRET.as_bytes(),
    )
    .is_ok();
    if id_ok && secret_ok {
        Ok(())
    } else {
        Err(TokenError::invalid_client())
    }
}

fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let encoded = value.to_str().ok()?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// An RFC 6749 5.2 error answer.
struct TokenError {
    status: StatusCode,
    code: &'static str,
    description: String,
}

impl TokenError {
    fn new(status: StatusCode, code: &'static str, description: &str) -> Self {
        TokenError {
            status,
            code,
            description: description.to_owned(),
        }
    }

    fn invalid_request(description: &str) -> Self {
        TokenError::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn invalid_target(description: &str) -> Self {
        TokenError::new(StatusCode::BAD_REQUEST, "invalid_target", description)
    }

    fn invalid_client() -> Self {
        TokenError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        )
    }
}

impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        let unauthorized = self.status == StatusCode::UNAUTHORIZED;
        let mut response = oauth_error(self.status, self.code, &self.description);
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"dev-issuer\""),
            );
        }
        no_store(&mut response);
        response
    }
}

fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

fn no_store(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
        .headers_mut()
        .insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

fn unix_now() -> Result<i64, DevIssuerError> {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| DevIssuerError::Clock)?;
    i64::try_from(elapsed.as_secs()).map_err(|_| DevIssuerError::Clock)
}

fn random_hex(bytes: usize) -> Result<String, DevIssuerError> {
    let mut buffer = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buffer).map_err(|_| DevIssuerError::Random)?;
    Ok(buffer.iter().map(|byte| format!("{byte:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header, errors::ErrorKind};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    const AUDIENCE: &str = "http://127.0.0.1:8080/mcp";

    /// Form fields, Basic credentials, expected status and `error` code.
    type TokenCase<'a> = (
        &'a [(&'a str, &'a str)],
        Option<(&'a str, &'a str)>,
        StatusCode,
        &'a str,
    );

    async fn start() -> Result<DevIssuer, std::io::Error> {
        DevIssuer::start(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    fn client() -> Result<reqwest::Client, reqwest::Error> {
        reqwest::Client::builder()
            .no_proxy()
            .tcp_nodelay(true)
            .build()
    }

    async fn fetch_jwks(issuer: &DevIssuer) -> Result<JwkSet, reqwest::Error> {
        client()?
            .get(issuer.jwks_url())
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }

    /// Verifies like a resource server would: key chosen by `kid` from the
    /// JWKS fetched over HTTP, algorithm fixed by the caller, never by the token.
    async fn verify(
        issuer: &DevIssuer,
        token: &str,
        algorithm: Algorithm,
    ) -> Result<Value, Box<dyn std::error::Error>> {
        let jwks = fetch_jwks(issuer).await?;
        let kid = decode_header(token)?.kid.ok_or("kid missing")?;
        let jwk = jwks.find(&kid).ok_or("kid not in JWKS")?;
        let mut validation = Validation::new(algorithm);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[issuer.issuer_url()]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        Ok(decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &validation)?.claims)
    }

    async fn post_token(
        issuer: &DevIssuer,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Result<(StatusCode, Value), Box<dyn std::error::Error>> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut request = client()?
            .post(issuer.token_url())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(body);
        if let Some((id, secret)) = basic {
            request = request.basic_auth(id, Some(secret));
        }
        let response = request.send().await?;
        let status = response.status();
        assert_eq!(
            response
                .headers()
                .get(header::CACHE_CONTROL)
                .map(HeaderValue::as_bytes),
            Some(&b"no-store"[..])
        );
        Ok((status, response.json().await?))
    }

    #[tokio::test]
    async fn minted_rs256_and_es256_tokens_verify_against_the_served_jwks() -> TestResult {
        let issuer = start().await?;
        for (algorithm, jwt_algorithm) in [
            (SigningAlgorithm::Rs256, Algorithm::RS256),
            (SigningAlgorithm::Es256, Algorithm::ES256),
        ] {
            let mut request =
                TokenRequest::new("alice", AUDIENCE, &["ibkr:health:read", "ibkr:quote"]);
            request.algorithm = algorithm;
            let token = issuer.mint(&request)?;
            let header = decode_header(&token)?;
            assert_eq!(header.alg, jwt_algorithm);
            assert_eq!(header.typ.as_deref(), Some("at+jwt"));

            let claims = verify(&issuer, &token, jwt_algorithm).await?;
            assert_eq!(claims["iss"], issuer.issuer_url().as_str());
            assert_eq!(claims["sub"], "alice");
            assert_eq!(claims["aud"], json!([AUDIENCE]));
            assert_eq!(claims["scope"], "ibkr:health:read ibkr:quote");
            assert_eq!(claims["client_id"], "dev-client");
            assert_eq!(claims["nbf"], claims["iat"]);
            let lifetime =
                claims["exp"].as_i64().ok_or("exp")? - claims["iat"].as_i64().ok_or("iat")?;
            assert_eq!(lifetime, 300);
            assert_eq!(claims["jti"].as_str().ok_or("jti")?.len(), 32);

            // The other algorithm's verifier must refuse it.
            let other = match jwt_algorithm {
                Algorithm::RS256 => Algorithm::ES256,
                _ => Algorithm::RS256,
            };
            assert!(verify(&issuer, &token, other).await.is_err());
        }
        assert!(issuer.issuer_url().starts_with("http://127.0.0.1:"));
        assert_eq!(issuer.jwks_fetch_count(), 4);
        issuer.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn jwks_lists_public_keys_only() -> TestResult {
        let issuer = start().await?;
        let raw: Value = client()?
            .get(issuer.jwks_url())
            .send()
            .await?
            .json()
            .await?;
        let keys = raw["keys"].as_array().ok_or("keys")?;
        assert_eq!(keys.len(), 2);
        let rsa = &keys[0];
        assert_eq!(
            (&rsa["kty"], &rsa["alg"], &rsa["use"]),
            (&json!("RSA"), &json!("RS256"), &json!("sig"))
        );
        assert_eq!(rsa["e"], "AQAB");
        // 2048-bit modulus, base64url without padding.
        assert_eq!(rsa["n"].as_str().ok_or("n")?.len(), 342);
        let ec = &keys[1];
        assert_eq!(
            (&ec["kty"], &ec["alg"], &ec["crv"]),
            (&json!("EC"), &json!("ES256"), &json!("P-256"))
        );
        assert_eq!(ec["x"].as_str().ok_or("x")?.len(), 43);
        for key in keys {
            assert!(key.get("d").is_none() && key.get("p").is_none());
        }
        assert_eq!(
            vec![
                rsa["kid"].as_str().ok_or("kid")?,
                ec["kid"].as_str().ok_or("kid")?
            ],
            issuer.current_kids()
        );
        issuer.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn rotation_replaces_keys_and_kids() -> TestResult {
        let issuer = start().await?;
        let old_token =
            issuer.mint(&TokenRequest::new("alice", AUDIENCE, &["ibkr:health:read"]))?;
        let old_kids = issuer.current_kids();
        verify(&issuer, &old_token, Algorithm::RS256).await?;

        issuer.rotate_keys();
        let new_kids = issuer.current_kids();
        assert!(new_kids.iter().all(|kid| !old_kids.contains(kid)));
        let jwks = fetch_jwks(&issuer).await?;
        let served: Vec<_> = jwks
            .keys
            .iter()
            .filter_map(|jwk| jwk.common.key_id.clone())
            .collect();
        assert_eq!(served, new_kids);
        assert!(verify(&issuer, &old_token, Algorithm::RS256).await.is_err());

        let new_token =
            issuer.mint(&TokenRequest::new("alice", AUDIENCE, &["ibkr:health:read"]))?;
        verify(&issuer, &new_token, Algorithm::RS256).await?;
        assert_eq!(issuer.jwks_fetch_count(), 4);
        issuer.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn edge_case_tokens_fail_validation_for_the_right_reason() -> TestResult {
        let issuer = start().await?;
        let base = TokenRequest::new("alice", AUDIENCE, &["ibkr:health:read"]);

        let expired = TokenRequest {
            lifetime_seconds: -60,
            ..base.clone()
        };
        let error = verify(&issuer, &issuer.mint(&expired)?, Algorithm::RS256)
            .await
            .err()
            .ok_or("accepted")?;
        assert!(matches!(
            error
                .downcast_ref::<jsonwebtoken::errors::Error>()
                .map(|e| e.kind()),
            Some(ErrorKind::ExpiredSignature)
        ));

        let future = TokenRequest {
            not_before_offset_seconds: 600,
            ..base.clone()
        };
        let error = verify(&issuer, &issuer.mint(&future)?, Algorithm::RS256)
            .await
            .err()
            .ok_or("accepted")?;
        assert!(matches!(
            error
                .downcast_ref::<jsonwebtoken::errors::Error>()
                .map(|e| e.kind()),
            Some(ErrorKind::ImmatureSignature)
        ));

        let foreign = TokenRequest {
            issuer_override: Some("https://evil.example".to_owned()),
            ..base.clone()
        };
        let error = verify(&issuer, &issuer.mint(&foreign)?, Algorithm::RS256)
            .await
            .err()
            .ok_or("accepted")?;
        assert!(matches!(
            error
                .downcast_ref::<jsonwebtoken::errors::Error>()
                .map(|e| e.kind()),
            Some(ErrorKind::InvalidIssuer)
        ));

        let unknown_kid = TokenRequest {
            kid_override: Some("nope".to_owned()),
            ..base.clone()
        };
        let error = verify(&issuer, &issuer.mint(&unknown_kid)?, Algorithm::RS256)
            .await
            .err()
            .ok_or("accepted")?;
        assert_eq!(error.to_string(), "kid not in JWKS");

        let custom = TokenRequest {
            typ: Some("JWT".to_owned()),
            jti: Some("fixed".to_owned()),
            ..base
        };
        let token = issuer.mint(&custom)?;
        assert_eq!(decode_header(&token)?.typ.as_deref(), Some("JWT"));
        assert_eq!(
            verify(&issuer, &token, Algorithm::RS256).await?["jti"],
            "fixed"
        );
        issuer.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn metadata_describes_the_issuer() -> TestResult {
        let issuer = start().await?;
        for path in [
            "/.well-known/oauth-authorization-server",
            "/.well-known/openid-configuration",
        ] {
            let metadata: Value = client()?
                .get(format!("{}{path}", issuer.issuer_url()))
                .send()
                .await?
                .json()
                .await?;
            assert_eq!(metadata["issuer"], issuer.issuer_url().as_str());
            assert_eq!(metadata["jwks_uri"], issuer.jwks_url().as_str());
            assert_eq!(metadata["token_endpoint"], issuer.token_url().as_str());
            assert_eq!(
                metadata["grant_types_supported"],
                json!(["client_credentials"])
            );
            assert_eq!(
                metadata["token_endpoint_auth_methods_supported"],
                json!(["client_secret_post", "client_secret_basic"])
            );
            assert!(
                metadata["scopes_supported"]
                    .as_array()
                    .ok_or("scopes")?
                    .contains(&json!("ibkr:orders:write"))
            );
        }
        issuer.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn token_endpoint_issues_client_credentials_tokens() -> TestResult {
        let issuer = start().await?;
        let (status, body) = post_token(
            &issuer,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", DEV_CLIENT_ID),
                ("client_secret", DEV_CLIENT_SECRET),
                ("scope", "ibkr:health:read ibkr:orders:write"),
                ("resource", AUDIENCE),
            ],
            None,
        )
        .await?;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], TOKEN_ENDPOINT_LIFETIME_SECONDS);
        assert_eq!(body["scope"], "ibkr:health:read ibkr:orders:write");
        let token = body["access_token"].as_str().ok_or("access_token")?;
        let claims = verify(&issuer, token, Algorithm::RS256).await?;
        assert_eq!(claims["sub"], DEFAULT_SUBJECT);
        assert_eq!(claims["aud"], json!([AUDIENCE]));
        assert_eq!(claims["scope"], "ibkr:health:read ibkr:orders:write");

        // client_secret_basic, an explicit subject and default scopes.
        let (status, body) = post_token(
            &issuer,
            &[
                ("grant_type", "client_credentials"),
                ("resource", AUDIENCE),
                ("subject", "bob"),
            ],
            Some((DEV_CLIENT_ID, DEV_CLIENT_SECRET)),
        )
        .await?;
        assert_eq!(status, StatusCode::OK);
        let claims = verify(
            &issuer,
            body["access_token"].as_str().ok_or("access_token")?,
            Algorithm::RS256,
        )
        .await?;
        assert_eq!(claims["sub"], "bob");
        assert_eq!(claims["scope"], DEFAULT_SCOPES.join(" "));

        // Without `resource` the default audience applies, once set.
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", DEV_CLIENT_ID),
            ("client_secret", DEV_CLIENT_SECRET),
        ];
        let (status, body) = post_token(&issuer, &form, None).await?;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_target"))
        );
        issuer.set_default_audience(Some(AUDIENCE.to_owned()));
        let (status, body) = post_token(&issuer, &form, None).await?;
        assert_eq!(status, StatusCode::OK);
        verify(
            &issuer,
            body["access_token"].as_str().ok_or("access_token")?,
            Algorithm::RS256,
        )
        .await?;
        issuer.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn token_endpoint_refuses_bad_requests() -> TestResult {
        let issuer = start().await?;
        let cases: [TokenCase<'_>; 7] = [
            (
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", DEV_CLIENT_ID),
                    ("client_secret", "wrong"),
                    ("resource", AUDIENCE),
                ],
                None,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
            ),
            (
                &[("grant_type", "client_credentials"), ("resource", AUDIENCE)],
                Some((DEV_CLIENT_ID, "wrong")),
                StatusCode::UNAUTHORIZED,
                "invalid_client",
            ),
            (
                &[("grant_type", "client_credentials"), ("resource", AUDIENCE)],
                None,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
            ),
            (
                &[
                    ("grant_type", "password"),
                    ("client_id", DEV_CLIENT_ID),
                    ("client_secret", DEV_CLIENT_SECRET),
                    ("resource", AUDIENCE),
                ],
                None,
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
            ),
            (
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", DEV_CLIENT_ID),
                    ("client_secret", DEV_CLIENT_SECRET),
                    ("scope", "ibkr:everything"),
                    ("resource", AUDIENCE),
                ],
                None,
                StatusCode::BAD_REQUEST,
                "invalid_scope",
            ),
            (
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", DEV_CLIENT_ID),
                    ("client_secret", DEV_CLIENT_SECRET),
                    ("resource", "not a uri"),
                ],
                None,
                StatusCode::BAD_REQUEST,
                "invalid_target",
            ),
            (
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", DEV_CLIENT_ID),
                    ("client_secret", DEV_CLIENT_SECRET),
                    ("scope", "a"),
                    ("scope", "b"),
                    ("resource", AUDIENCE),
                ],
                None,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
        ];
        for (form, basic, expected_status, expected_error) in cases {
            let (status, body) = post_token(&issuer, form, basic).await?;
            assert_eq!(
                (status, body["error"].as_str()),
                (expected_status, Some(expected_error)),
                "{form:?}"
            );
            assert!(body.get("access_token").is_none());
        }
        issuer.shutdown().await;
        Ok(())
    }
}
