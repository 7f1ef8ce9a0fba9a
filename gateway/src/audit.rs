//! The audit trail of tool calls, written as structured `tracing` events on the `audit`
//! target. The bearer token is never recorded: a call is tied to its token through an HMAC of
//! the token's `jti` under a secret from the environment, so the log links calls made with
//! the same token without letting a log reader replay or even recognise it.
//!
//! Without the secret in the environment a random per-process secret is used (logged as a
//! warning): HMACs then stay unlinkable across restarts, which is safe, just less useful.

use hmac::{Hmac, Mac};
use rand_core::{OsRng, RngCore};
use sha2::Sha256;
use std::time::Duration;
use zeroize::Zeroizing;

pub struct Audit {
    secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Audit { secret: <redacted> }")
    }
}

/// One audited tool call.
#[derive(Debug)]
pub struct CallRecord<'a> {
    pub subject: &'a str,
    pub token_id: Option<&'a str>,
    pub client_id: Option<&'a str>,
    /// The catalog tool name (`-` for an unknown tool).
    pub tool: &'a str,
    /// The scope the tool requires.
    pub scope: Option<&'a str>,
    /// The relay request id (hex), once the request was built.
    pub request_id: Option<&'a str>,
    /// The canonical payload hash of the forwarded request (hex).
    pub payload_hash: Option<&'a str>,
    pub sidecar_id: Option<&'a str>,
    /// `ok`, `manual_action_required`, or the error code.
    pub outcome: &'a str,
    pub elapsed: Duration,
}

impl Audit {
    /// Reads the secret from the environment variable named in the configuration.
    pub fn from_env(variable: &str) -> Audit {
        match std::env::var(variable) {
            Ok(value) if value.len() >= 16 => Audit {
                secret: Zeroizing::new(value.into_bytes()),
            },
            Ok(_) => {
                tracing::warn!(
                    variable,
                    "audit HMAC secret is shorter than 16 bytes; using a random per-process secret"
                );
                Audit::random()
            }
            Err(_) => {
                tracing::warn!(
                    variable,
                    "audit HMAC secret not set; using a random per-process secret"
                );
                Audit::random()
            }
        }
    }

    pub fn random() -> Audit {
        let mut secret = Zeroizing::new(vec![0u8; 32]);
        OsRng.fill_bytes(&mut secret);
        Audit { secret }
    }

    /// HMAC-SHA256 of the token id, truncated to 128 bits, hex.
    pub fn token_id(&self, jti: &str) -> Option<String> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret).ok()?;
        mac.update(b"ibkr-gateway audit jti\0");
        mac.update(jti.as_bytes());
        let digest = mac.finalize().into_bytes();
        Some(hex::encode(&digest[..16]))
    }

    pub fn record_call(&self, record: &CallRecord<'_>) {
        tracing::info!(
            target: "audit",
            subject = record.subject,
            token_id = record.token_id.unwrap_or("-"),
            client_id = record.client_id.unwrap_or("-"),
            tool = record.tool,
            scope = record.scope.unwrap_or("-"),
            request_id = record.request_id.unwrap_or("-"),
            payload_hash = record.payload_hash.unwrap_or("-"),
            sidecar_id = record.sidecar_id.unwrap_or("-"),
            outcome = record.outcome,
            latency_ms = u64::try_from(record.elapsed.as_millis()).unwrap_or(u64::MAX),
            "tool call"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_ids_are_stable_per_secret_and_hide_the_jti() {
        let audit = Audit::random();
        let first = audit.token_id("jti-123").unwrap();
        assert_eq!(first, audit.token_id("jti-123").unwrap());
        assert_ne!(first, audit.token_id("jti-124").unwrap());
        assert!(!first.contains("jti"));
        assert_ne!(first, Audit::random().token_id("jti-123").unwrap());
        assert_eq!(first.len(), 32);
    }
}
