//! `POST /pair/start` and `POST /pair/finish`: postcard bodies (`protocol::pairing::encode`)
//! in and out as `application/octet-stream`; errors as the JSON error object with a status
//! that tells a client whether trying again can help.

use crate::error::GatewayError;
use crate::http::limits::PeerAddr;
use crate::http::net::{ClientKey, client_ip};
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use protocol::pairing::{PairFinish, PairStart};
use shared_safety::ErrorCode;
use std::sync::Arc;

/// Largest pairing request body (real ones are a few hundred bytes).
pub const MAX_PAIRING_BODY_BYTES: usize = protocol::limits::MAX_HANDSHAKE_MESSAGE;

fn status_for(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::PairingCodeInvalid => StatusCode::UNAUTHORIZED,
        ErrorCode::PairingCodeExpired | ErrorCode::PairingCodeUsed => StatusCode::GONE,
        ErrorCode::PairingAttemptsExceeded | ErrorCode::AuthRateLimited => {
            StatusCode::TOO_MANY_REQUESTS
        }
        ErrorCode::SidecarIdConflict | ErrorCode::PairingKeyAlreadyPaired => StatusCode::CONFLICT,
        ErrorCode::PairingKeyProofFailed => StatusCode::FORBIDDEN,
        ErrorCode::StateStoreError | ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// What a rate-limited pairing client is told to wait (RFC 9110 `Retry-After`). A client past
/// its failure budget stays refused for the rest of a 15-minute window; asking again each
/// minute costs it nothing and learns when the window ends.
const PAIRING_RETRY_AFTER_SECONDS: &str = "60";

fn error_response(error: &GatewayError) -> Response {
    let mut response = (status_for(error.code), Json(error.to_json())).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if error.code == ErrorCode::AuthRateLimited {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(PAIRING_RETRY_AFTER_SECONDS),
        );
    }
    response
}

fn binary_response(body: Vec<u8>) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn malformed() -> GatewayError {
    GatewayError::with_detail(
        ErrorCode::PairingCodeInvalid,
        "The pairing message is malformed.",
    )
}

/// Who the client is for the pairing limits: its address as the trusted-proxy rules resolve
/// it, an IPv6 client grouped by /64 (as every per-client limit counts it).
fn peer_key(state: &AppState, peer: &PeerAddr, headers: &HeaderMap) -> ClientKey {
    ClientKey::of(client_ip(
        peer.0.ip(),
        headers,
        &state.resolved.trusted_proxies,
    ))
}

pub(crate) async fn pair_start(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(start) = protocol::pairing::decode::<PairStart>(&body) else {
        let error = malformed();
        return (StatusCode::BAD_REQUEST, Json(error.to_json())).into_response();
    };
    match state
        .pairing
        .start(start, peer_key(&state, &peer, &headers))
        .await
    {
        Ok(reply) => match protocol::pairing::encode(&reply) {
            Ok(bytes) => binary_response(bytes),
            Err(_) => error_response(&GatewayError::new(ErrorCode::InternalError)),
        },
        Err(error) => error_response(&error),
    }
}

pub(crate) async fn pair_finish(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(finish) = protocol::pairing::decode::<PairFinish>(&body) else {
        let error = malformed();
        return (StatusCode::BAD_REQUEST, Json(error.to_json())).into_response();
    };
    match state
        .pairing
        .finish(finish, peer_key(&state, &peer, &headers))
        .await
    {
        Ok(reply) => match protocol::pairing::encode(&reply) {
            Ok(bytes) => binary_response(bytes),
            Err(_) => error_response(&GatewayError::new(ErrorCode::InternalError)),
        },
        Err(error) => error_response(&error),
    }
}
