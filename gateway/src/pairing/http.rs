//! `POST /pair/start` and `POST /pair/finish`: postcard bodies (`protocol::pairing::encode`)
//! in and out as `application/octet-stream`; errors as the JSON error object with a status
//! that tells a client whether trying again can help.

use crate::error::GatewayError;
use crate::state::AppState;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
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
        ErrorCode::SidecarIdConflict => StatusCode::CONFLICT,
        ErrorCode::StateStoreError | ErrorCode::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

fn error_response(error: &GatewayError) -> Response {
    let mut response = (status_for(error.code), Json(error.to_json())).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
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

pub(crate) async fn pair_start(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let Ok(start) = protocol::pairing::decode::<PairStart>(&body) else {
        let error = malformed();
        return (StatusCode::BAD_REQUEST, Json(error.to_json())).into_response();
    };
    match state.pairing.start(start).await {
        Ok(reply) => match protocol::pairing::encode(&reply) {
            Ok(bytes) => binary_response(bytes),
            Err(_) => error_response(&GatewayError::new(ErrorCode::InternalError)),
        },
        Err(error) => error_response(&error),
    }
}

pub(crate) async fn pair_finish(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let Ok(finish) = protocol::pairing::decode::<PairFinish>(&body) else {
        let error = malformed();
        return (StatusCode::BAD_REQUEST, Json(error.to_json())).into_response();
    };
    match state.pairing.finish(finish).await {
        Ok(reply) => match protocol::pairing::encode(&reply) {
            Ok(bytes) => binary_response(bytes),
            Err(_) => error_response(&GatewayError::new(ErrorCode::InternalError)),
        },
        Err(error) => error_response(&error),
    }
}
