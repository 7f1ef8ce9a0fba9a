//! `ibkr-agent sidecar pair`: the one-time HTTP pairing exchange with the gateway.
//!
//! Two POSTs carry the SPAKE2 messages (`/pair/start`, `/pair/finish`) as postcard bodies. The
//! pairing code authenticates the exchange of long-term public keys; on success the gateway's
//! key is pinned in a local pairing record with read-only scopes. The code itself never leaves
//! this process in the clear (only its public id does) and is never printed or logged.

use crate::clock::now_unix_seconds;
use crate::error::SidecarError;
use crate::identity::{load_keypair, validate_sidecar_id};
use crate::net::{self, UrlKind};
use crate::state::{PairingRecord, StateStore};
use protocol::pairing::{
    self, PairFinishReply, PairStartReply, PairingCode, PairingError, SidecarInfo, SidecarPairing,
};
use rand_core::OsRng;
use serde::Deserialize;
use shared_safety::ErrorCode;
use shared_safety::scope::ScopeSet;
use std::path::Path;
use std::time::Duration;
use url::Url;

const PAIRING_HTTP_TIMEOUT: Duration = Duration::from_secs(10);
/// Error bodies are small JSON documents; anything bigger is not our gateway.
const MAX_ERROR_BODY: usize = 16 * 1024;

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorEnvelopeBody,
}

#[derive(Deserialize)]
struct ErrorEnvelopeBody {
    code: String,
}

fn map_pairing_error(error: PairingError) -> SidecarError {
    match error {
        PairingError::MalformedCode => SidecarError::new(
            ErrorCode::PairingCodeInvalid,
            "(a pairing code looks like K7QM-3XW9-PT4R)",
        ),
        // A failed confirmation means the two sides did not use the same code.
        PairingError::ConfirmationFailed => SidecarError::bare(ErrorCode::PairingCodeInvalid),
        PairingError::VersionMismatch(version) => SidecarError::internal(format!(
            "(the gateway speaks relay protocol version {version}; upgrade ibkr-agent)"
        )),
        PairingError::MalformedMessage | PairingError::BadField => {
            SidecarError::internal("(the gateway sent a malformed pairing message)")
        }
        PairingError::PossessionFailed => SidecarError::bare(ErrorCode::PairingKeyProofFailed),
    }
}

/// Reads at most `limit` bytes of a response body; more is an error, not a truncation.
async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Vec<u8>, SidecarError> {
    let mut body = Vec::new();
    loop {
        let chunk = tokio::time::timeout(PAIRING_HTTP_TIMEOUT, response.chunk())
            .await
            .map_err(|_| SidecarError::internal("(the gateway stopped answering)"))?
            .map_err(|_| SidecarError::internal("(the gateway's answer was cut off)"))?;
        let Some(chunk) = chunk else {
            return Ok(body);
        };
        if body.len() + chunk.len() > limit {
            return Err(SidecarError::internal(
                "(the gateway's answer is too large)",
            ));
        }
        body.extend_from_slice(&chunk);
    }
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<Vec<u8>, SidecarError> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .send()
        .await
        .map_err(|error| {
            let why = if error.is_timeout() {
                "timed out"
            } else if error.is_connect() {
                "connection failed"
            } else {
                "request failed"
            };
            SidecarError::internal(format!("(could not reach the gateway: {why})"))
        })?;
    let status = response.status();
    if status.is_success() {
        return read_bounded(response, protocol::limits::MAX_HANDSHAKE_MESSAGE).await;
    }
    let body = read_bounded(response, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    if let Ok(envelope) = serde_json::from_slice::<ErrorEnvelope>(&body) {
        if let Some(code) = ErrorCode::from_code(&envelope.error.code) {
            return Err(SidecarError::bare(code));
        }
        let shown: String = envelope
            .error
            .code
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        return Err(SidecarError::internal(format!(
            "(the gateway refused pairing with unknown code {shown})"
        )));
    }
    Err(SidecarError::internal(format!(
        "(the gateway answered HTTP {})",
        status.as_u16()
    )))
}

fn http_client(base: &Url) -> Result<reqwest::Client, SidecarError> {
    let mut builder = reqwest::Client::builder()
        .timeout(PAIRING_HTTP_TIMEOUT)
        .connect_timeout(PAIRING_HTTP_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .tcp_nodelay(true)
        .user_agent(concat!("ibkr-agent/", env!("CARGO_PKG_VERSION")));
    if net::is_loopback_host(base) {
        // A proxy from the environment must never see loopback traffic.
        builder = builder.no_proxy();
    }
    builder
        .build()
        .map_err(|_| SidecarError::internal("(cannot build the HTTP client)"))
}

/// Pairs this laptop's identity with the gateway at `gateway_base_url` using a one-time code,
/// and records the pairing (read-only local scopes, no expiry).
///
/// `sidecar_id`, if given, must name the identity in `state_dir`.
pub async fn pair(
    state_dir: &Path,
    gateway_base_url: &str,
    code: &str,
    sidecar_id: Option<&str>,
) -> Result<PairingRecord, SidecarError> {
    let base = net::checked_url(gateway_base_url, UrlKind::Http)
        .map_err(|why| SidecarError::flag(format!("(--gateway {why})")))?;
    let code = PairingCode::parse(code).map_err(map_pairing_error)?;
    if let Some(id) = sidecar_id {
        validate_sidecar_id(id)?;
    }
    let store = StateStore::open(state_dir)?;
    // The key's secret proves to the gateway that this laptop holds the key it registers.
    let (identity, keypair) = load_keypair(state_dir, &store)?;
    if let Some(id) = sidecar_id
        && id != identity.sidecar_id
    {
        return Err(SidecarError::new(
            ErrorCode::IdentityMissing,
            format!(
                "(this state directory's identity is {}, not {id})",
                identity.sidecar_id
            ),
        ));
    }
    let relay_url = net::relay_url_for_gateway(&base)
        .ok_or_else(|| SidecarError::flag("(--gateway must be an http or https URL)"))?;
    let client = http_client(&base)?;

    let (pending, start) = SidecarPairing::start(&code, &mut OsRng);
    drop(code);
    let body = pairing::encode(&start).map_err(map_pairing_error)?;
    let reply_bytes = post(&client, &net::join(&base, "/pair/start"), body).await?;
    let reply: PairStartReply = pairing::decode(&reply_bytes).map_err(map_pairing_error)?;

    let info = SidecarInfo {
        static_public: identity.public_key,
        sidecar_id: identity.sidecar_id.clone(),
        display_name: identity.display_name.clone(),
    };
    let (awaiting, finish) = pending
        .finish(&reply, &info, &keypair)
        .map_err(map_pairing_error)?;
    drop(keypair);
    let body = pairing::encode(&finish).map_err(map_pairing_error)?;
    let reply_bytes = post(&client, &net::join(&base, "/pair/finish"), body).await?;
    let reply: PairFinishReply = pairing::decode(&reply_bytes).map_err(map_pairing_error)?;
    let gateway = awaiting.complete(&reply).map_err(map_pairing_error)?;

    let record = PairingRecord {
        remote_instance_id: gateway.instance_id,
        sidecar_id: identity.sidecar_id,
        user_id: gateway.user_id,
        gateway_url: Some(base.as_str().trim_end_matches('/').to_string()),
        relay_url: Some(relay_url),
        gateway_public_key: Some(gateway.static_public),
        gateway_pairing_id: Some(gateway.pairing_id),
        local_scopes: ScopeSet::read_only_default(),
        created_at: now_unix_seconds(),
        expires_at: None,
        revoked_at: None,
    };
    store.upsert_pairing(&record)?;
    Ok(record)
}
