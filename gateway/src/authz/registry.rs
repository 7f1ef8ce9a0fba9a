//! Where a client's metadata comes from: RFC 7591 dynamic registration, or a Client ID
//! Metadata Document the client id names (what the MCP 2025-11-25 authorization spec prefers).
//!
//! **Registered clients are stateless.** `/oauth/register` checks the metadata and answers a
//! client id that carries the client's name and redirect URIs, sealed with an HMAC under a
//! secret kept 0600 in the state directory (`authz_clients.key`). Nothing is stored, so a
//! flood of registrations costs no storage and a registration survives restarts; a client id
//! whose seal does not verify is `invalid_client`. The name is the client's own claim, shown
//! to the owner as such.
//!
//! **Metadata documents** are fetched under the rules of the JWKS fetch (no redirects, a
//! timeout, a size bound, `https` or loopback `http` only) and, because the URL comes from an
//! unauthenticated caller rather than the operator, one more: the host must resolve only to
//! public addresses, and the connection goes to the address that was checked (no second
//! lookup an attacker could answer differently). A gateway whose own public URL is on
//! loopback (development, the demo, tests) may fetch from loopback too. Documents are cached
//! for [`DOCUMENT_CACHE`].

use super::clients::{CheckedClient, ClientMetadata, check_metadata};
use super::errors::{OAuthError, OAuthErrorCode};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use url::Url;
use zeroize::Zeroizing;

/// The file holding the registration seal's secret.
pub const CLIENT_SECRET_FILE: &str = "authz_clients.key";
/// How long a fetched metadata document is reused.
pub const DOCUMENT_CACHE: Duration = Duration::from_secs(300);
/// Most documents cached at once.
const MAX_CACHED_DOCUMENTS: usize = 256;
/// Largest metadata document read.
const MAX_DOCUMENT_BYTES: usize = 16 * 1024;
/// Longest a document fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Prefix of the client ids this server issues.
const REGISTERED_PREFIX: &str = "reg.";
/// Longest client id accepted.
pub const MAX_CLIENT_ID_BYTES: usize = protocol::agents::MAX_CLIENT_URI;

type HmacSha256 = Hmac<Sha256>;

/// A client this server knows, however it learned of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownClient {
    pub client_id: String,
    pub client_name: String,
    pub redirect_uris: Vec<String>,
    /// True for a metadata document (its URL vouches for the name's origin), false for a
    /// registration (anyone may register any name).
    pub from_document: bool,
}

#[derive(Serialize, Deserialize)]
struct Sealed {
    n: String,
    r: Vec<String>,
}

/// Issues and reads client ids; fetches metadata documents.
pub struct ClientRegistry {
    secret: Zeroizing<[u8; 32]>,
    allow_loopback_documents: bool,
    cache: Mutex<HashMap<String, (Instant, KnownClient)>>,
    /// Document URLs that failed recently: not fetched again for [`FAILURE_CACHE`].
    failures: Mutex<HashMap<String, Instant>>,
    /// One client for every document fetch: no proxy (a proxy would resolve names itself),
    /// no redirects, and a resolver that answers only acceptable addresses, so the
    /// connection goes where the check looked.
    http: Option<reqwest::Client>,
    /// Fetches at once: a flood of new client ids cannot tie up the resolver or sockets.
    fetches: tokio::sync::Semaphore,
}

/// Longest a metadata document host's name lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// Most document fetches at once.
const MAX_CONCURRENT_FETCHES: usize = 8;
/// How long a document URL that failed is not fetched again.
const FAILURE_CACHE: Duration = Duration::from_secs(60);

/// Resolves a document host's name and answers only addresses a document may come from.
struct CheckedResolver {
    allow_loopback: bool,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_loopback = self.allow_loopback;
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found =
                tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host.as_str(), 0)))
                    .await
                    .map_err(|_| "the name lookup timed out")??;
            let addresses: Vec<SocketAddr> = found.collect();
            if !acceptable(&addresses, allow_loopback) {
                return Err("the host resolves to a private or local address".into());
            }
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Every address public, or (for a development gateway) every address loopback.
fn acceptable(addresses: &[SocketAddr], allow_loopback: bool) -> bool {
    !addresses.is_empty()
        && (addresses
            .iter()
            .all(|address| is_public_address(address.ip()))
            || (allow_loopback && addresses.iter().all(|address| address.ip().is_loopback())))
}

impl std::fmt::Debug for ClientRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRegistry").finish_non_exhaustive()
    }
}

fn invalid_client(description: impl Into<String>) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidClient, description)
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// True for an address on the public internet: the only kind a document may be fetched from.
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0)
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_address(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                || first == 0x2002
                || first == 0x0064
                || (v6.segments()[..6] == [0, 0, 0, 0, 0, 0]))
        }
    }
}

impl ClientRegistry {
    /// Loads (or creates, 0600) the seal's secret in `state_dir`.
    pub fn open(
        state_dir: &Path,
        allow_loopback_documents: bool,
    ) -> Result<ClientRegistry, super::AuthzError> {
        let path = state_dir.join(CLIENT_SECRET_FILE);
        let corrupt = || super::AuthzError::KeyCorrupt(path.display().to_string());
        let from = |bytes: &[u8]| -> Option<Zeroizing<[u8; 32]>> {
            let mut secret = Zeroizing::new([0u8; 32]);
            (bytes.len() == 32).then(|| {
                secret.copy_from_slice(bytes);
                secret
            })
        };
        if let Some(bytes) = crate::store::keys::read_private_file(&path)? {
            let secret = from(&bytes).ok_or_else(corrupt)?;
            return Ok(ClientRegistry::with_secret(
                secret,
                allow_loopback_documents,
            ));
        }
        let mut secret = Zeroizing::new([0u8; 32]);
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, secret.as_mut());
        match crate::store::keys::write_private_file_new(&path, secret.as_ref()) {
            Ok(()) => Ok(ClientRegistry::with_secret(
                secret,
                allow_loopback_documents,
            )),
            // Another process created it first: use that one.
            Err(crate::store::keys::KeyError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                let bytes = crate::store::keys::read_private_file(&path)?.ok_or_else(corrupt)?;
                let secret = from(&bytes).ok_or_else(corrupt)?;
                Ok(ClientRegistry::with_secret(
                    secret,
                    allow_loopback_documents,
                ))
            }
            Err(other) => Err(other.into()),
        }
    }

    pub fn with_secret(
        secret: Zeroizing<[u8; 32]>,
        allow_loopback_documents: bool,
    ) -> ClientRegistry {
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(FETCH_TIMEOUT)
            .dns_resolver(CheckedResolver {
                allow_loopback: allow_loopback_documents,
            })
            .build()
            .ok();
        ClientRegistry {
            secret,
            allow_loopback_documents,
            cache: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            http,
            fetches: tokio::sync::Semaphore::new(MAX_CONCURRENT_FETCHES),
        }
    }

    fn seal(&self, payload: &[u8]) -> [u8; 32] {
        // HMAC accepts keys of any length: constructing it cannot fail.
        let mut mac = match HmacSha256::new_from_slice(self.secret.as_ref()) {
            Ok(mac) => mac,
            Err(_) => return [0; 32],
        };
        mac.update(b"ibkr-gateway client id v1");
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }

    /// RFC 7591: checks `metadata` and answers the client id that carries it.
    pub fn register(&self, metadata: &ClientMetadata) -> Result<KnownClient, OAuthError> {
        if metadata.client_id.is_some() {
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidClientMetadata,
                "client_id is chosen by this server; leave it out.",
            ));
        }
        let CheckedClient {
            client_name,
            redirect_uris,
        } = check_metadata(metadata)?;
        let payload = serde_json::to_vec(&Sealed {
            n: client_name.clone(),
            r: redirect_uris.clone(),
        })
        .map_err(|_| invalid_client("The metadata cannot be encoded."))?;
        let seal = self.seal(&payload);
        let client_id = format!(
            "{REGISTERED_PREFIX}{}.{}",
            b64().encode(&payload),
            b64().encode(&seal[..16])
        );
        if client_id.len() > MAX_CLIENT_ID_BYTES {
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidClientMetadata,
                "The client's name and redirect URIs are too long together.",
            ));
        }
        Ok(KnownClient {
            client_id,
            client_name,
            redirect_uris,
            from_document: false,
        })
    }

    /// The client `client_id` names: a registration of this server, or a metadata document.
    pub async fn resolve(&self, client_id: &str) -> Result<KnownClient, OAuthError> {
        if client_id.is_empty() || client_id.len() > MAX_CLIENT_ID_BYTES {
            return Err(invalid_client("The client_id is missing or too long."));
        }
        if let Some(rest) = client_id.strip_prefix(REGISTERED_PREFIX) {
            return self.open_registered(client_id, rest);
        }
        if client_id.starts_with("https://") || client_id.starts_with("http://") {
            return self.document(client_id).await;
        }
        Err(invalid_client(
            "This client_id is unknown: register at /oauth/register or use a client metadata document URL.",
        ))
    }

    fn open_registered(&self, client_id: &str, rest: &str) -> Result<KnownClient, OAuthError> {
        let unknown = || invalid_client("This client_id was not issued by this server.");
        let (payload, tag) = rest.split_once('.').ok_or_else(unknown)?;
        let payload = b64().decode(payload).map_err(|_| unknown())?;
        let tag = b64().decode(tag).map_err(|_| unknown())?;
        let expected = self.seal(&payload);
        if tag.len() != 16 || !bool::from(tag.as_slice().ct_eq(&expected[..16])) {
            return Err(unknown());
        }
        let sealed: Sealed = serde_json::from_slice(&payload).map_err(|_| unknown())?;
        Ok(KnownClient {
            client_id: client_id.to_string(),
            client_name: sealed.n,
            redirect_uris: sealed.r,
            from_document: false,
        })
    }

    async fn document(&self, client_id: &str) -> Result<KnownClient, OAuthError> {
        if let Some(client) = self.cached(client_id) {
            return Ok(client);
        }
        if self.failed_recently(client_id) {
            return Err(invalid_client(
                "The client metadata document could not be read a moment ago; try again in a minute.",
            ));
        }
        let metadata = match self.fetch(client_id).await {
            Ok(metadata) => metadata,
            Err(error) => {
                if error.code == OAuthErrorCode::InvalidClient {
                    self.remember_failure(client_id);
                }
                return Err(error);
            }
        };
        // The document must name itself (draft-ietf-oauth-client-id-metadata-document).
        if metadata.client_id.as_deref() != Some(client_id) {
            return Err(invalid_client(
                "The client metadata document does not name its own URL as client_id.",
            ));
        }
        let checked = check_metadata(&metadata).map_err(|error| {
            invalid_client(format!(
                "The client metadata document: {}",
                error.description
            ))
        })?;
        let client = KnownClient {
            client_id: client_id.to_string(),
            client_name: checked.client_name,
            redirect_uris: checked.redirect_uris,
            from_document: true,
        };
        let mut cache = self.lock_cache();
        let now = Instant::now();
        cache.retain(|_, (at, _)| now.duration_since(*at) < DOCUMENT_CACHE);
        if cache.len() < MAX_CACHED_DOCUMENTS {
            cache.insert(client_id.to_string(), (now, client.clone()));
        }
        Ok(client)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, KnownClient)>> {
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn failed_recently(&self, client_id: &str) -> bool {
        self.lock_failures()
            .get(client_id)
            .is_some_and(|at| at.elapsed() < FAILURE_CACHE)
    }

    fn remember_failure(&self, client_id: &str) {
        let mut failures = self.lock_failures();
        failures.retain(|_, at| at.elapsed() < FAILURE_CACHE);
        if failures.len() < MAX_CACHED_DOCUMENTS * 4 {
            failures.insert(client_id.to_string(), Instant::now());
        }
    }

    fn cached(&self, client_id: &str) -> Option<KnownClient> {
        let cache = self.lock_cache();
        let (at, client) = cache.get(client_id)?;
        (at.elapsed() < DOCUMENT_CACHE).then(|| client.clone())
    }

    /// Checks a document URL's form; an address written in it must be acceptable itself
    /// (names are checked by the resolver when the connection is made).
    fn checked_url(&self, text: &str) -> Result<Url, OAuthError> {
        let refused =
            |why: &str| invalid_client(format!("The client metadata document URL {why}."));
        let url = Url::parse(text).map_err(|_| refused("is not a URL"))?;
        if url.as_str() != text {
            return Err(refused("must be written in its normalized form"));
        }
        if url.fragment().is_some() || !url.username().is_empty() || url.password().is_some() {
            return Err(refused("must have no fragment and no user information"));
        }
        if url.path() == "/" || url.path().is_empty() {
            return Err(refused("must have a path"));
        }
        let literal: Option<IpAddr> = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return Err(refused("has no host")),
        };
        let loopback_host = match (&literal, url.host_str()) {
            (Some(ip), _) => ip.is_loopback(),
            (None, Some(name)) => name.eq_ignore_ascii_case("localhost"),
            _ => false,
        };
        match url.scheme() {
            "https" => {}
            "http" if loopback_host && self.allow_loopback_documents => {}
            _ => return Err(refused("must be https")),
        }
        if let Some(ip) = literal
            && !acceptable(&[SocketAddr::new(ip, 0)], self.allow_loopback_documents)
        {
            return Err(refused("points at a private or local address"));
        }
        Ok(url)
    }

    async fn fetch(&self, client_id: &str) -> Result<ClientMetadata, OAuthError> {
        let url = self.checked_url(client_id)?;
        // Details of why a fetch failed stay in the log: the page would otherwise let anyone
        // probe hosts and ports through this gateway.
        let failed = |why: &str| {
            tracing::info!(reason = why, "a client metadata document could not be read");
            invalid_client("The client metadata document could not be read.")
        };
        let http = self.http.as_ref().ok_or_else(|| failed("no HTTP client"))?;
        // Busy: answer at once rather than queue behind slow hosts.
        let Ok(_permit) = self.fetches.try_acquire() else {
            return Err(OAuthError::new(
                OAuthErrorCode::TemporarilyUnavailable,
                "Too many client metadata documents are being fetched; try again shortly.",
            ));
        };
        let mut response = http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|error| failed(&error.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(failed("HTTP status not 2xx"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| failed(&error.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(failed("larger than 16 KiB"));
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|_| failed("not client metadata JSON"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> ClientRegistry {
        ClientRegistry::with_secret(Zeroizing::new([3; 32]), false)
    }

    fn metadata() -> ClientMetadata {
        ClientMetadata {
            redirect_uris: vec!["http://127.0.0.1:4567/callback".into()],
            client_name: Some("Test client".into()),
            ..ClientMetadata::default()
        }
    }

    #[tokio::test]
    async fn a_registration_reads_back_and_a_forged_one_does_not() {
        let registry = registry();
        let client = registry.register(&metadata()).unwrap();
        assert!(client.client_id.starts_with(REGISTERED_PREFIX));
        assert_eq!(registry.resolve(&client.client_id).await.unwrap(), client);

        // Another name under the same seal, another secret, a cut tag: all unknown.
        let (payload, tag) = client.client_id[REGISTERED_PREFIX.len()..]
            .split_once('.')
            .unwrap();
        let forged_payload = b64().encode(
            serde_json::to_vec(&Sealed {
                n: "Your bank".into(),
                r: vec!["https://evil.example/cb".into()],
            })
            .unwrap(),
        );
        for forged in [
            format!("{REGISTERED_PREFIX}{forged_payload}.{tag}"),
            format!("{REGISTERED_PREFIX}{payload}.{}", &tag[..tag.len() - 2]),
            format!("{REGISTERED_PREFIX}{payload}"),
        ] {
            let error = registry.resolve(&forged).await.unwrap_err();
            assert_eq!(error.code, OAuthErrorCode::InvalidClient, "{forged}");
        }
        let other = ClientRegistry::with_secret(Zeroizing::new([4; 32]), false);
        assert_eq!(
            other.resolve(&client.client_id).await.unwrap_err().code,
            OAuthErrorCode::InvalidClient
        );
    }

    #[tokio::test]
    async fn a_registration_is_checked_like_a_document() {
        let mut bad = metadata();
        bad.redirect_uris = vec!["http://evil.example/cb".into()];
        assert_eq!(
            registry().register(&bad).unwrap_err().code,
            OAuthErrorCode::InvalidRedirectUri
        );
        let mut chosen = metadata();
        chosen.client_id = Some("mine".into());
        assert_eq!(
            registry().register(&chosen).unwrap_err().code,
            OAuthErrorCode::InvalidClientMetadata
        );
    }

    #[tokio::test]
    async fn documents_on_private_addresses_are_refused() {
        let registry = registry();
        for url in [
            "http://127.0.0.1:9/client.json",
            "https://127.0.0.1:9/client.json",
            "https://10.0.0.1/client.json",
            "https://[::1]/client.json",
            "https://169.254.169.254/latest/meta-data",
            "https://127.0.0.1/",
            "ftp://client.example/client.json",
        ] {
            let error = registry.resolve(url).await.unwrap_err();
            assert_eq!(error.code, OAuthErrorCode::InvalidClient, "{url}");
        }
        assert_eq!(
            registry.resolve("some-name").await.unwrap_err().code,
            OAuthErrorCode::InvalidClient
        );
    }

    #[test]
    fn public_addresses_are_told_apart() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "224.0.0.1",
        ] {
            assert!(!is_public_address(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "::ffff:93.184.216.34",
        ] {
            assert!(is_public_address(public.parse().unwrap()), "{public}");
        }
    }
}
