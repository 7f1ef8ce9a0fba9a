//! The HTTP edge of `/mcp`, outside the bearer middleware:
//!
//! - [`host_and_origin`]: DNS-rebinding protection. The `Host` must be one of
//!   `remote_mcp.allowed_hosts` (default: `public_base_url`'s host) and a present `Origin` one
//!   of `remote_mcp.allowed_origins` (plus `public_base_url`'s own origin); otherwise 403
//!   `REQUEST_ORIGIN_REFUSED`, before authentication. rmcp checks the same lists again behind the middleware.
//! - [`private_no_store`]: every `/mcp` response (tool lists filtered per token, tool
//!   results, and the refusals too) is `Cache-Control: no-store, private` with
//!   `Vary: Authorization`, so no shared cache ever serves one token's answer to another.
//! - [`deadline`]: a bound on every request, headers and streamed body together: a `POST`
//!   gets `sidecar.request_timeout_seconds` plus [`POST_GRACE`], a `GET` event stream
//!   [`STREAM_LIFETIME`]. A response not started in time is answered 504
//!   `REQUEST_TIMEOUT`; a stream past its deadline is ended (the client reconnects).

use crate::error::GatewayError;
use crate::state::AppState;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use shared_safety::ErrorCode;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// Added to the relay timeout for a `POST /mcp`: authentication, the body, the SSE framing.
pub const POST_GRACE: Duration = Duration::from_secs(15);
/// Longest life of a `GET /mcp` event stream (2025-11-25 sessions); clients reconnect.
pub const STREAM_LIFETIME: Duration = Duration::from_secs(600);

/// 403 with the `REQUEST_ORIGIN_REFUSED` JSON body. The detail says which header, never its
/// value (the client knows what it sent; the log has the rest).
fn forbidden(which: &'static str) -> Response {
    let error = GatewayError::with_detail(ErrorCode::RequestOriginRefused, which);
    let mut response = (StatusCode::FORBIDDEN, axum::Json(error.to_json())).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub(crate) async fn host_and_origin(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let resolved = &state.resolved;
    if !crate::http::net::host_allowed(request.uri(), request.headers(), &resolved.allowed_hosts) {
        tracing::info!("request refused: Host not in remote_mcp.allowed_hosts");
        return forbidden("(the Host header is not allowed)");
    }
    if !crate::http::net::origin_allowed(request.headers(), &resolved.allowed_origins) {
        tracing::info!("request refused: Origin not in remote_mcp.allowed_origins");
        return forbidden("(the Origin header is not allowed)");
    }
    next.run(request).await
}

pub(crate) async fn private_no_store(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, private"),
    );
    headers.append(header::VARY, HeaderValue::from_static("Authorization"));
    response
}

/// A body that ends (cleanly) at a fixed instant.
struct DeadlineBody {
    inner: Body,
    sleep: Pin<Box<Sleep>>,
    expired: bool,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if self.expired {
            return Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.expired = true;
            tracing::debug!("an /mcp response reached its deadline and was ended");
            return Poll::Ready(None);
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

pub(crate) async fn deadline(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let limit = if request.method() == Method::GET {
        STREAM_LIFETIME
    } else {
        state.relay.request_timeout() + POST_GRACE
    };
    let until = Instant::now() + limit;
    let response = match tokio::time::timeout_at(until, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::info!("an /mcp request did not produce a response in time");
            let error = GatewayError::new(ErrorCode::RequestTimeout);
            return (StatusCode::GATEWAY_TIMEOUT, axum::Json(error.to_json())).into_response();
        }
    };
    let (parts, body) = response.into_parts();
    let body = DeadlineBody {
        inner: body,
        sleep: Box::pin(tokio::time::sleep_until(until)),
        expired: false,
    };
    Response::from_parts(parts, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util_free::collect;

    /// Collects a body without pulling in http-body-util.
    mod http_body_util_free {
        use super::*;

        pub async fn collect(mut body: Body) -> Vec<u8> {
            let mut out = Vec::new();
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                if let Ok(data) = frame.unwrap().into_data() {
                    out.extend_from_slice(&data);
                }
            }
            out
        }
    }

    use http_body::Body as _;

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_at_its_deadline() {
        let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        });
        let body = DeadlineBody {
            inner: Body::from_stream(stream),
            sleep: Box::pin(tokio::time::sleep(Duration::from_secs(5))),
            expired: false,
        };
        sender.send(Ok(Bytes::from_static(b"event"))).await.unwrap();
        // The sender stays open: without the deadline this would never end.
        let collected = collect(Body::new(body)).await;
        assert_eq!(collected, b"event");
        drop(sender);
    }
}
