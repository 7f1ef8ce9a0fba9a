//! The JWKS cache: the authorization server's public signing keys.
//!
//! - Fetched at start; a failure there is logged, not fatal (calls fail with
//!   `AUTH_INVALID_TOKEN` until keys arrive).
//! - Refreshed when older than [`JWKS_TTL`] and when a token names an unknown `kid` (key
//!   rotation), with at most one fetch in flight. Unknown-`kid` refreshes draw from a small
//!   bucket ([`KID_MISS_BURST`] at once, refilled one per [`REFRESH_COOLDOWN`]), so a rotation
//!   is picked up at once, a client retrying a brand-new key a moment later still gets a
//!   fetch, and a flood of tokens with random `kid`s cannot turn the gateway into a traffic
//!   amplifier against the issuer (at most 3 + 6 per minute). A failed refresh is retried at
//!   most once per [`REFRESH_COOLDOWN`].
//! - A failed refresh keeps the last good keys.
//! - HTTP: no redirects, a 5 s timeout, a 64 KiB body cap; https only except on loopback.
//!
//! Symmetric (`oct`) keys and keys marked for encryption are dropped at load time: a JWKS is
//! public, so an HMAC key in it would let anybody mint tokens.

use crate::config::is_loopback_host;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use url::Url;

/// Keys are re-fetched when older than this.
pub const JWKS_TTL: Duration = Duration::from_secs(300);
/// Refill interval of the unknown-`kid` refresh bucket, and the least time between retries of
/// a failed refresh.
pub const REFRESH_COOLDOWN: Duration = Duration::from_secs(10);
/// Unknown-`kid` refreshes allowed back to back.
pub const KID_MISS_BURST: u32 = 3;
/// Timeout of one metadata or JWKS request.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest metadata or JWKS document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// One usable verification key.
#[derive(Clone)]
pub struct VerificationKey {
    pub kid: Option<String>,
    /// The `alg` the JWK pins, if any.
    pub alg: Option<Algorithm>,
    pub family: AlgorithmFamily,
    /// For EC keys: the curve, so an ES256 token is never checked against a P-384 key.
    pub curve: Option<EllipticCurve>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerificationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerificationKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

impl VerificationKey {
    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        if alg.family() != self.family {
            return false;
        }
        if let Some(pinned) = self.alg
            && pinned != alg
        {
            return false;
        }
        match (alg, &self.curve) {
            (Algorithm::ES256, Some(curve)) => *curve == EllipticCurve::P256,
            (Algorithm::ES384, Some(curve)) => *curve == EllipticCurve::P384,
            (Algorithm::ES256 | Algorithm::ES384, None) => false,
            _ => true,
        }
    }

    fn from_jwk(jwk: &Jwk) -> Option<VerificationKey> {
        match &jwk.common.public_key_use {
            None | Some(PublicKeyUse::Signature) => {}
            Some(_) => return None,
        }
        let alg = match jwk.common.key_algorithm {
            Some(key_algorithm) => Some(Algorithm::try_from(key_algorithm).ok()?),
            None => None,
        };
        let (family, curve) = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
            AlgorithmParameters::EllipticCurve(params) => {
                (AlgorithmFamily::Ec, Some(params.curve.clone()))
            }
            AlgorithmParameters::OctetKeyPair(params) => {
                if params.curve != EllipticCurve::Ed25519 {
                    return None;
                }
                (AlgorithmFamily::Ed, None)
            }
            // Never trust symmetric keys from a public document.
            AlgorithmParameters::OctetKey(_) | AlgorithmParameters::Other(_) => return None,
            #[allow(unreachable_patterns)]
            _ => return None,
        };
        if let Some(alg) = alg
            && alg.family() != family
        {
            return None;
        }
        let key = DecodingKey::from_jwk(jwk).ok()?;
        Some(VerificationKey {
            kid: jwk.common.key_id.clone(),
            alg,
            family,
            curve,
            key,
        })
    }
}

/// Parses a JWKS document key by key, skipping keys this gateway cannot or must not use
/// (one exotic key must not make the whole set unusable).
pub fn parse_jwks(document: &serde_json::Value) -> Result<Vec<VerificationKey>, FetchError> {
    let keys = document
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or(FetchError::Malformed("JWKS has no keys array"))?;
    Ok(keys
        .iter()
        .filter_map(|value| serde_json::from_value::<Jwk>(value.clone()).ok())
        .filter_map(|jwk| VerificationKey::from_jwk(&jwk))
        .collect())
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Http(String),
    #[error("unexpected HTTP status {0}")]
    Status(u16),
    #[error("document larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge,
    #[error("malformed document: {0}")]
    Malformed(&'static str),
    #[error("refusing URL {0}: https is required except on loopback")]
    InsecureUrl(String),
    #[error("no metadata document named this issuer and a jwks_uri")]
    DiscoveryFailed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refresh {
    Initial,
    Stale,
    KidMiss,
}

/// Where the keys come from.
#[derive(Clone, Debug)]
enum Source {
    Fixed(String),
    Discover {
        issuer: String,
    },
    /// This process's own authorization server: its JWKS document, read in process.
    Local(LocalKeys),
}

/// A JWKS document this process publishes.
#[derive(Clone)]
struct LocalKeys(Arc<dyn Fn() -> serde_json::Value + Send + Sync>);

impl std::fmt::Debug for LocalKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalKeys")
    }
}

struct CacheState {
    keys: Arc<Vec<VerificationKey>>,
    fetched_at: Option<Instant>,
    last_attempt: Option<Instant>,
    /// Unknown-kid refreshes available (refilled one per cooldown up to the burst).
    kid_miss_tokens: u32,
    kid_miss_refilled: Instant,
    /// Bumped on every successful fetch, so waiters on the fetch lock can tell that someone
    /// else already refreshed.
    generation: u64,
    /// The discovered JWKS URL, once known.
    discovered_url: Option<String>,
}

pub struct JwksCache {
    http: reqwest::Client,
    source: Source,
    state: Mutex<CacheState>,
    fetch_lock: tokio::sync::Mutex<()>,
    refresh_success: AtomicU64,
    refresh_failure: AtomicU64,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

fn check_fetch_url(text: &str) -> Result<Url, FetchError> {
    let url = Url::parse(text).map_err(|_| FetchError::InsecureUrl(text.to_string()))?;
    if url.scheme() == "https" || (url.scheme() == "http" && is_loopback_host(&url)) {
        Ok(url)
    } else {
        Err(FetchError::InsecureUrl(text.to_string()))
    }
}

/// Candidate metadata URLs for an issuer: RFC 8414 (well-known inserted before the path)
/// first, then OpenID Connect discovery (appended).
pub fn metadata_urls(issuer: &str) -> Vec<String> {
    let mut urls = Vec::new();
    if let Ok(url) = Url::parse(issuer) {
        let path = url.path().trim_end_matches('/').to_string();
        let mut origin = url.clone();
        origin.set_path("");
        origin.set_query(None);
        let origin = origin.as_str().trim_end_matches('/').to_string();
        urls.push(format!(
            "{origin}/.well-known/oauth-authorization-server{path}"
        ));
        urls.push(format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ));
    }
    urls
}

impl JwksCache {
    /// `jwks_url` wins; otherwise the URL is discovered from the issuer's metadata.
    pub fn new(issuer: &str, jwks_url: Option<&str>) -> Result<JwksCache, FetchError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let source = match jwks_url {
            Some(url) => Source::Fixed(url.to_string()),
            None => Source::Discover {
                issuer: issuer.to_string(),
            },
        };
        Ok(JwksCache::with_source(http, source))
    }

    /// Keys from this process's own authorization server: `document` gives its JWKS, which
    /// goes through the same parser and cache as a fetched one.
    pub fn local(document: impl Fn() -> serde_json::Value + Send + Sync + 'static) -> JwksCache {
        JwksCache::with_source(
            reqwest::Client::new(),
            Source::Local(LocalKeys(Arc::new(document))),
        )
    }

    fn with_source(http: reqwest::Client, source: Source) -> JwksCache {
        JwksCache {
            http,
            source,
            state: Mutex::new(CacheState {
                keys: Arc::new(Vec::new()),
                fetched_at: None,
                last_attempt: None,
                kid_miss_tokens: KID_MISS_BURST,
                kid_miss_refilled: Instant::now(),
                generation: 0,
                discovered_url: None,
            }),
            fetch_lock: tokio::sync::Mutex::new(()),
            refresh_success: AtomicU64::new(0),
            refresh_failure: AtomicU64::new(0),
        }
    }

    /// Whether keys were ever loaded (for `/readyz`).
    pub fn loaded_once(&self) -> bool {
        self.with_state(|state| state.generation > 0)
    }

    /// Successful and failed fetches so far (for `/metrics`).
    pub fn refresh_counts(&self) -> (u64, u64) {
        (
            self.refresh_success.load(Ordering::Relaxed),
            self.refresh_failure.load(Ordering::Relaxed),
        )
    }

    fn with_state<T>(&self, f: impl FnOnce(&mut CacheState) -> T) -> T {
        // A poisoned lock only means another thread panicked mid-update of plain data; the
        // data is still a consistent snapshot, so keep serving it.
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// The current keys, refreshing first if they are missing or older than the TTL.
    pub async fn keys(&self) -> Arc<Vec<VerificationKey>> {
        let now = Instant::now();
        let stale = self.with_state(|state| match state.fetched_at {
            None => true,
            Some(at) => now.duration_since(at) >= JWKS_TTL,
        });
        if stale {
            self.refresh(Refresh::Stale).await;
        }
        self.with_state(|state| Arc::clone(&state.keys))
    }

    /// A token named a `kid` we do not have: refresh (subject to the cooldown). Returns the
    /// keys afterwards.
    pub async fn refresh_for_unknown_kid(&self) -> Arc<Vec<VerificationKey>> {
        self.refresh(Refresh::KidMiss).await;
        self.with_state(|state| Arc::clone(&state.keys))
    }

    /// Fetches now, ignoring the cooldown (used once at start). Returns whether keys were
    /// loaded.
    pub async fn initial_fetch(&self) -> bool {
        self.refresh(Refresh::Initial).await
    }

    /// Single-flight refresh. Returns whether this call loaded new keys.
    async fn refresh(&self, kind: Refresh) -> bool {
        let seen_generation = self.with_state(|state| state.generation);
        let _guard = self.fetch_lock.lock().await;
        let now = Instant::now();
        let within = |last: Option<Instant>| {
            last.is_some_and(|last| now.duration_since(last) < REFRESH_COOLDOWN)
        };
        let skip = self.with_state(|state| {
            if state.generation != seen_generation {
                return true;
            }
            let cooling = match kind {
                Refresh::Initial => false,
                // Stale or missing keys: do not hammer an issuer that is down.
                Refresh::Stale => within(state.last_attempt),
                // Unknown kid: a rotation must be picked up at once, but random kids must
                // not cause more than the bucket allows.
                Refresh::KidMiss => {
                    let refills = now.duration_since(state.kid_miss_refilled).as_secs()
                        / REFRESH_COOLDOWN.as_secs().max(1);
                    if refills > 0 {
                        let refills = u32::try_from(refills).unwrap_or(u32::MAX);
                        state.kid_miss_tokens = state
                            .kid_miss_tokens
                            .saturating_add(refills)
                            .min(KID_MISS_BURST);
                        state.kid_miss_refilled = now;
                    }
                    if state.kid_miss_tokens == 0 {
                        true
                    } else {
                        state.kid_miss_tokens -= 1;
                        false
                    }
                }
            };
            if cooling {
                return true;
            }
            state.last_attempt = Some(now);
            false
        });
        if skip {
            return false;
        }
        match self.fetch().await {
            Ok(keys) => {
                let count = keys.len();
                self.with_state(|state| {
                    state.keys = Arc::new(keys);
                    state.fetched_at = Some(Instant::now());
                    state.generation += 1;
                });
                self.refresh_success.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    keys = count,
                    "loaded the authorization server's signing keys"
                );
                true
            }
            Err(error) => {
                self.refresh_failure.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "could not refresh the authorization server's signing keys; keeping the last good ones");
                false
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<VerificationKey>, FetchError> {
        let url = match &self.source {
            Source::Local(LocalKeys(document)) => return parse_jwks(&document()),
            Source::Fixed(url) => url.clone(),
            Source::Discover { issuer } => {
                match self.with_state(|state| state.discovered_url.clone()) {
                    Some(url) => url,
                    None => {
                        let url = self.discover(issuer).await?;
                        self.with_state(|state| state.discovered_url = Some(url.clone()));
                        url
                    }
                }
            }
        };
        let document = self.get_json(&url).await?;
        parse_jwks(&document)
    }

    async fn discover(&self, issuer: &str) -> Result<String, FetchError> {
        for url in metadata_urls(issuer) {
            match self.get_json(&url).await {
                Ok(metadata) => {
                    // RFC 8414 section 3.3: the document must name exactly this issuer.
                    let named = metadata.get("issuer").and_then(serde_json::Value::as_str);
                    let jwks = metadata.get("jwks_uri").and_then(serde_json::Value::as_str);
                    if let (Some(named), Some(jwks)) = (named, jwks)
                        && named == issuer
                    {
                        let jwks_url = check_fetch_url(jwks)?;
                        // Plain http is for loopback development issuers only: an https
                        // issuer cannot point the gateway at an http key set.
                        if issuer.starts_with("https://") && jwks_url.scheme() != "https" {
                            return Err(FetchError::InsecureUrl(jwks.to_string()));
                        }
                        return Ok(jwks.to_string());
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, %url, "issuer metadata not available here");
                }
            }
        }
        Err(FetchError::DiscoveryFailed)
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, FetchError> {
        let url = check_fetch_url(url)?;
        let mut response = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| FetchError::Http(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|length| length > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| FetchError::Http(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|_| FetchError::Malformed("not JSON"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_urls_follow_rfc8414_then_oidc() {
        assert_eq!(
            metadata_urls("https://issuer.example"),
            vec![
                "https://issuer.example/.well-known/oauth-authorization-server",
                "https://issuer.example/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            metadata_urls("https://issuer.example/tenant/1"),
            vec![
                "https://issuer.example/.well-known/oauth-authorization-server/tenant/1",
                "https://issuer.example/tenant/1/.well-known/openid-configuration"
            ]
        );
    }

    #[test]
    fn symmetric_and_encryption_keys_are_dropped() {
        let document = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "enc", "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "sig"},
            {"kty": "weird"}
        ]});
        let keys = parse_jwks(&document).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("sig"));
        assert!(keys[0].accepts(Algorithm::EdDSA));
        assert!(!keys[0].accepts(Algorithm::RS256));
        assert!(!keys[0].accepts(Algorithm::HS256));
    }

    #[test]
    fn insecure_urls_are_refused() {
        assert!(check_fetch_url("http://issuer.example/jwks").is_err());
        assert!(check_fetch_url("http://127.0.0.1:9/jwks").is_ok());
        assert!(check_fetch_url("https://issuer.example/jwks").is_ok());
    }
}
