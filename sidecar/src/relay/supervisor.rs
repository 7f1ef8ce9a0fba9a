//! The reconnect loop: pick the pairing, dial, handshake, drive, and come back with backoff.
//!
//! - Transient failures back off with full jitter; a session that stayed healthy for at least
//!   one heartbeat interval resets the backoff.
//! - `GoAway` waits the gateway's delay (plus a little jitter).
//! - A refusal that only a person can fix (no pairing, session not bound to this sidecar, the
//!   gateway proving another instance) keeps retrying at the maximum delay, logged as an error
//!   with what to do, so re-pairing or a gateway fix is picked up without a restart.
//! - Every wait is interrupted by shutdown.

use super::backoff::{Backoff, delay_with_spread};
use super::connection::{self, ConnectionEnd, Established};
use super::dial::{self, DialError};
use super::handshake::{self, HandshakeFailure};
use crate::clock::{now_unix_millis, now_unix_seconds};
use crate::context::{DaemonContext, SIDECAR_VERSION};
use crate::session::Binding;
use crate::trading::anchor::AnchorChange;
use protocol::PROTOCOL_VERSION;
use protocol::envelope::JournalRef;
use protocol::handshake::ClientHello;
use protocol::identity::PublicKey;
use rand_core::{OsRng, RngCore};
use shared_safety::ErrorCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What one connection attempt came to.
#[derive(Debug)]
enum Attempt {
    Shutdown,
    /// A session ran; `healthy` if it lasted at least one heartbeat interval.
    Ended {
        end: ConnectionEnd,
        healthy: bool,
    },
    /// Needs a person: retry slowly.
    NeedsAttention {
        code: ErrorCode,
        message: String,
    },
    /// Transient: retry with backoff.
    Failed(String),
}

/// Runs until `shutdown`.
pub(crate) async fn run(context: Arc<DaemonContext>, shutdown: CancellationToken) {
    let mut backoff = Backoff::new(
        context.config.reconnect_initial_delay(),
        context.config.reconnect_max_delay(),
    );
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let attempt = connect_once(&context, &shutdown).await;
        record_outcome(&context, &attempt);
        let delay = match attempt {
            Attempt::Shutdown => return,
            Attempt::Ended { end, healthy } => {
                if healthy {
                    backoff.reset();
                }
                match end {
                    ConnectionEnd::Shutdown => return,
                    ConnectionEnd::GoAway { retry_after } => {
                        backoff.reset();
                        delay_with_spread(retry_after, OsRng.next_u64())
                    }
                    ConnectionEnd::PairingGone => {
                        tracing::error!(
                            code = ErrorCode::SidecarPairingRequired.code(),
                            "the pairing this session used is no longer active; {}",
                            ErrorCode::SidecarPairingRequired.user_action()
                        );
                        backoff.max()
                    }
                    ConnectionEnd::Woke => {
                        backoff.reset();
                        Duration::ZERO
                    }
                    ConnectionEnd::Closed { reason } => {
                        tracing::info!(%reason, "relay connection ended; reconnecting");
                        backoff.next_delay(&mut OsRng)
                    }
                }
            }
            Attempt::NeedsAttention { code, message } => {
                tracing::error!(code = code.code(), "{message}");
                backoff.max()
            }
            Attempt::Failed(reason) => {
                let delay = backoff.next_delay(&mut OsRng);
                tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, "relay connection attempt failed");
                delay
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn connect_once(context: &Arc<DaemonContext>, shutdown: &CancellationToken) -> Attempt {
    let sidecar_id = context.identity.sidecar_id.clone();
    // Re-read each time: a new pairing (or a revocation) applies on the next attempt.
    let pairing = match context
        .store
        .dialable_pairing(&sidecar_id, now_unix_seconds())
    {
        Ok(Some(pairing)) => pairing,
        Ok(None) => {
            return Attempt::needs_attention(
                ErrorCode::SidecarPairingRequired,
                format!(
                    "{}: {} {}",
                    ErrorCode::SidecarPairingRequired,
                    ErrorCode::SidecarPairingRequired.message(),
                    ErrorCode::SidecarPairingRequired.user_action()
                ),
            );
        }
        Err(error) => return Attempt::Failed(error.to_string()),
    };
    let Some(gateway_key) = pairing.gateway_public_key else {
        return Attempt::needs_attention(
            ErrorCode::SidecarPairingRequired,
            "the pairing has no pinned gateway key; pair again",
        );
    };
    // The configured URL is what is dialed (validated at startup); the pinned key protects
    // against a wrong one.
    let Some(url) = context.config.relay_url().map(str::to_string) else {
        return Attempt::needs_attention(
            ErrorCode::ConfigInvalid,
            format!(
                "{}: sidecar.remote_relay_url is not set",
                ErrorCode::ConfigInvalid
            ),
        );
    };

    let stream = tokio::select! {
        _ = shutdown.cancelled() => return Attempt::Shutdown,
        result = dial::dial(&url) => result,
    };
    let mut stream = match stream {
        Ok(stream) => stream,
        Err(DialError::Policy(why)) => {
            return Attempt::needs_attention(
                ErrorCode::ConfigInvalid,
                format!("{}: relay URL {why}", ErrorCode::ConfigInvalid),
            );
        }
        Err(error) => return Attempt::Failed(error.to_string()),
    };

    let timestamp_ms = match context
        .store
        .next_handshake_timestamp(&sidecar_id, now_unix_millis())
    {
        Ok(timestamp) => timestamp,
        Err(error) => return Attempt::Failed(error.to_string()),
    };
    let hello = ClientHello {
        protocol_version: PROTOCOL_VERSION,
        sidecar_id: sidecar_id.clone(),
        remote_instance_id: pairing.remote_instance_id.clone(),
        timestamp_ms,
        sidecar_version: SIDECAR_VERSION.to_string(),
        max_concurrent_requests: concurrency_for_handshake(
            context.config.sidecar.max_concurrent_requests,
        ),
    };
    let pinned = handshake::Pinned {
        gateway_key: &gateway_key,
        instance_id: &pairing.remote_instance_id,
        user_id: &pairing.user_id,
        pairing_id: pairing.gateway_pairing_id,
    };
    let result = tokio::select! {
        _ = shutdown.cancelled() => return Attempt::Shutdown,
        result = handshake::perform(&mut stream, &context.keypair, &hello, &pinned) => result,
    };
    let (transport, server_hello) = match result {
        Ok(done) => done,
        Err(failure) => return classify_handshake_failure(failure, &gateway_key),
    };
    if pairing.gateway_pairing_id.is_none() {
        // Made before pairing ids existed: pin the one this authenticated gateway names.
        if let Err(error) = context.store.pin_gateway_pairing_id(
            &pairing.remote_instance_id,
            &sidecar_id,
            server_hello.pairing_id,
        ) {
            return Attempt::Failed(error.to_string());
        }
    }

    check_journal_anchor(context, server_hello.journal_anchor);

    let established = Established {
        transport,
        hello: server_hello,
        binding: Binding {
            sidecar_id,
            remote_instance_id: pairing.remote_instance_id,
            gateway_public_key: gateway_key,
        },
    };
    if let Err(error) = context.store.record_relay_outcome(
        &established.binding.sidecar_id,
        now_unix_seconds(),
        true,
        None,
        "connected",
    ) {
        tracing::warn!(%error, "could not record the relay status");
    }
    let started = Instant::now();
    let end = connection::drive(context.clone(), stream, established, shutdown.clone()).await;
    let healthy = started.elapsed() >= context.config.heartbeat_interval();
    Attempt::Ended { end, healthy }
}

/// Before any call of this connection runs: does the journal still hold the entry the gateway
/// has on record? If not, the order tools refuse from now on; say so once, loudly. (Without a
/// journal the order tools refuse anyway, with `JOURNAL_ERROR`.)
/// The concurrency the handshake announces: the configured bound (validated to 1..=256, so
/// the conversion cannot fail; the fallback keeps the announcement truthful regardless).
fn concurrency_for_handshake(configured: usize) -> u16 {
    u16::try_from(configured.max(1)).unwrap_or(u16::MAX)
}

fn check_journal_anchor(context: &Arc<DaemonContext>, anchor: Option<JournalRef>) {
    let Some(orders) = context.orders.as_ref() else {
        return;
    };
    match orders.anchor.check(anchor, &orders.journal) {
        AnchorChange::NowBehind(behind) => {
            let code = ErrorCode::JournalBehindGateway;
            tracing::error!(
                code = code.code(),
                gateway_entry = behind.anchor.seq,
                journal_last_entry = behind.journal_last_seq,
                "{} {}",
                code.message(),
                code.user_action()
            );
            let text = format!(
                "IBKR agent \"{}\": the trade journal lacks entry {} that the gateway has on \
                 record (it was cut back or replaced by an older copy). Order tools are refused \
                 until it is restored; read tools keep working. Run `ibkr-agent journal verify` \
                 on the laptop.",
                context.alerts.label(),
                behind.anchor.seq
            );
            let alerts = context.alerts.clone();
            // The webhook may take seconds; the connection does not wait for it.
            tokio::spawn(async move { alerts.raise(&text).await });
        }
        AnchorChange::Cleared => {
            tracing::info!(
                "the trade journal holds the gateway's anchor again; order tools are served"
            );
        }
        AnchorChange::Unchanged => {}
    }
}

fn classify_handshake_failure(failure: HandshakeFailure, gateway_key: &PublicKey) -> Attempt {
    match failure {
        HandshakeFailure::Rejected(code) if code == ErrorCode::GatewayKeyMismatch.code() => {
            let code = ErrorCode::GatewayKeyMismatch;
            Attempt::needs_attention(
                code,
                format!(
                    "{code}: the gateway could not read the handshake sealed to the key this \
                     laptop paired with (fingerprint {}): its key was rotated or replaced, or \
                     the relay URL leads to another gateway. {} Retrying slowly.",
                    gateway_key.fingerprint(),
                    code.user_action()
                ),
            )
        }
        HandshakeFailure::Rejected(code) if code == ErrorCode::SidecarUpgradeRequired.code() => {
            let code = ErrorCode::SidecarUpgradeRequired;
            Attempt::needs_attention(
                code,
                format!(
                    "{code}: the gateway was upgraded to a newer relay protocol than this \
                     sidecar ({SIDECAR_VERSION}) speaks. {} Retrying slowly.",
                    code.user_action()
                ),
            )
        }
        HandshakeFailure::Rejected(code)
            if code == ErrorCode::SidecarPairingRequired.code()
                || code == ErrorCode::SidecarSessionInvalid.code() =>
        {
            let known = ErrorCode::from_code(&code).unwrap_or(ErrorCode::SidecarPairingRequired);
            Attempt::needs_attention(
                known,
                format!(
                    "the gateway refused this sidecar with {code}; {} Retrying slowly.",
                    known.user_action()
                ),
            )
        }
        HandshakeFailure::WrongInstance => Attempt::needs_attention(
            ErrorCode::SidecarSessionInvalid,
            format!(
                "{}: the gateway answered as a different instance than the one paired; pair again",
                ErrorCode::SidecarSessionInvalid
            ),
        ),
        HandshakeFailure::WrongUserOrPairing => Attempt::needs_attention(
            ErrorCode::SidecarGatewayMismatch,
            format!(
                "{}: {} {} Not serving it; retrying slowly.",
                ErrorCode::SidecarGatewayMismatch,
                ErrorCode::SidecarGatewayMismatch.message(),
                ErrorCode::SidecarGatewayMismatch.user_action()
            ),
        ),
        other => Attempt::Failed(other.to_string()),
    }
}

impl Attempt {
    fn needs_attention(code: ErrorCode, message: impl Into<String>) -> Self {
        Attempt::NeedsAttention {
            code,
            message: message.into(),
        }
    }
}

/// Keeps the relay loop's outcome in the state store, where `ibkr-agent sidecar status` (a
/// separate process) reads it. Connected is recorded when the session is established.
fn record_outcome(context: &DaemonContext, attempt: &Attempt) {
    let (code, detail) = match attempt {
        Attempt::Shutdown => (None, "the daemon stopped".to_string()),
        Attempt::Ended { end, .. } => (
            None,
            match end {
                ConnectionEnd::Shutdown => "the daemon stopped".to_string(),
                ConnectionEnd::GoAway { retry_after } => format!(
                    "the gateway asked to reconnect in {} s",
                    retry_after.as_secs()
                ),
                ConnectionEnd::PairingGone => "the pairing ended; pair again".to_string(),
                ConnectionEnd::Woke => "the laptop slept; reconnecting".to_string(),
                ConnectionEnd::Closed { reason } => format!("the relay session ended: {reason}"),
            },
        ),
        Attempt::NeedsAttention { code, message } => (Some(code.code()), message.clone()),
        Attempt::Failed(reason) => (None, format!("connection attempt failed: {reason}")),
    };
    if let Err(error) = context.store.record_relay_outcome(
        &context.identity.sidecar_id,
        now_unix_seconds(),
        false,
        code,
        &detail,
    ) {
        tracing::warn!(%error, "could not record the relay status");
    }
}
