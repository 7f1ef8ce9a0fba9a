//! `GET /relay`: the websocket sidecars dial.
//!
//! The buffers are set explicitly and small: an idle relay connection must cost kilobytes,
//! not tungstenite's 128 KiB default read buffer. Messages and frames are capped at
//! [`MAX_WIRE_MESSAGE`], the largest record the protocol can produce.

use crate::error::GatewayError;
use crate::relay::connection;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use protocol::limits::MAX_WIRE_MESSAGE;
use shared_safety::ErrorCode;
use std::sync::Arc;

/// Websocket settings of the relay endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayWebsocketLimits {
    pub read_buffer_size: usize,
    pub write_buffer_size: usize,
    pub max_write_buffer_size: usize,
    pub max_message_size: usize,
    pub max_frame_size: usize,
}

pub fn relay_websocket_limits() -> RelayWebsocketLimits {
    RelayWebsocketLimits {
        read_buffer_size: 4096,
        write_buffer_size: 4096,
        // Room for one full record beyond the buffer, plus slack for the framing: writes
        // that cannot drain past this fail instead of growing memory without bound.
        max_write_buffer_size: 2 * MAX_WIRE_MESSAGE,
        max_message_size: MAX_WIRE_MESSAGE,
        max_frame_size: MAX_WIRE_MESSAGE,
    }
}

pub(crate) async fn relay_upgrade(
    State(state): State<Arc<AppState>>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let relay = Arc::clone(&state.relay);
    if !relay.settings.enabled || relay.shutdown.is_cancelled() {
        let error = GatewayError::new(ErrorCode::SidecarUnavailable);
        return (StatusCode::SERVICE_UNAVAILABLE, Json(error.to_json())).into_response();
    }
    let limits = relay_websocket_limits();
    upgrade
        .read_buffer_size(limits.read_buffer_size)
        .write_buffer_size(limits.write_buffer_size)
        .max_write_buffer_size(limits.max_write_buffer_size)
        .max_message_size(limits.max_message_size)
        .max_frame_size(limits.max_frame_size)
        .on_failed_upgrade(|error| tracing::debug!(%error, "relay websocket upgrade failed"))
        .on_upgrade(move |socket| {
            let tasks = relay.tasks.clone();
            tasks.track_future(connection::run(relay, socket))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_small_and_bounded_by_the_protocol() {
        let limits = relay_websocket_limits();
        assert_eq!(limits.read_buffer_size, 4096);
        assert_eq!(limits.write_buffer_size, 4096);
        assert_eq!(limits.max_write_buffer_size, 2 * MAX_WIRE_MESSAGE);
        assert_eq!(limits.max_message_size, MAX_WIRE_MESSAGE);
        assert_eq!(limits.max_frame_size, MAX_WIRE_MESSAGE);
        assert!(limits.max_write_buffer_size > limits.write_buffer_size + limits.max_message_size);
    }
}
