//! The sidecar's error type: every failure carries a stable code from the shared catalog, so
//! the CLI, the daemon and the relay all report the same SCREAMING_SNAKE codes.

use protocol::envelope::ErrorBody;
use shared_safety::ErrorCode;
use std::fmt;

/// A refusal or failure with its catalog code and an optional detail.
///
/// The detail names keys, tools, files by role ("identity.key") and similar; it never carries a
/// secret, a pairing code, a cookie or a CPGW response body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SidecarError {
    code: ErrorCode,
    detail: Option<String>,
}

impl SidecarError {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        SidecarError {
            code,
            detail: Some(detail.into()),
        }
    }

    pub fn bare(code: ErrorCode) -> Self {
        SidecarError { code, detail: None }
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The wire/JSON form (`code`, `message`, `retryable`, `user_action`).
    pub fn body(&self) -> ErrorBody {
        self.code.body(self.detail.as_deref())
    }

    /// Process exit status for the CLI: 2 for usage/configuration errors, 3 for a refusal,
    /// 1 for anything else (I/O, network, internal).
    pub fn exit_code(&self) -> u8 {
        exit_code_for(self.code)
    }

    pub(crate) fn state(detail: impl Into<String>) -> Self {
        SidecarError::new(ErrorCode::StateStoreError, detail)
    }

    pub(crate) fn config(detail: impl Into<String>) -> Self {
        SidecarError::new(ErrorCode::ConfigInvalid, detail)
    }

    /// A command-line flag with a bad or missing value (CLI_ARGUMENT_INVALID, exit 2): the
    /// detail names the flag.
    pub(crate) fn flag(detail: impl Into<String>) -> Self {
        SidecarError::new(ErrorCode::CliArgumentInvalid, detail)
    }

    pub(crate) fn internal(detail: impl Into<String>) -> Self {
        SidecarError::new(ErrorCode::InternalError, detail)
    }
}

/// See [`SidecarError::exit_code`].
pub fn exit_code_for(code: ErrorCode) -> u8 {
    match code {
        ErrorCode::ConfigInvalid
        | ErrorCode::ConfigSidecarForbidden
        | ErrorCode::ConsoleListenNotLoopback
        | ErrorCode::CliArgumentInvalid => 2,
        ErrorCode::StateStoreError
        | ErrorCode::InternalError
        | ErrorCode::BrokerUnreachable
        | ErrorCode::BrokerError
        | ErrorCode::RequestTimeout
        | ErrorCode::SidecarUnavailable
        | ErrorCode::HandshakeFailed
        | ErrorCode::RelayProtocolError
        | ErrorCode::ServiceManagerFailed
        | ErrorCode::ServiceFileError => 1,
        _ => 3,
    }
}

impl fmt::Display for SidecarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(detail) if !detail.is_empty() => {
                write!(f, "{}: {} {}", self.code, self.code.message(), detail)
            }
            _ => write!(f, "{}: {}", self.code, self.code.message()),
        }
    }
}

impl std::error::Error for SidecarError {}

impl From<rusqlite::Error> for SidecarError {
    fn from(error: rusqlite::Error) -> Self {
        // SQLite messages name tables and constraints, never stored values.
        SidecarError::state(format!("(sqlite: {error})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_cli_contract() {
        assert_eq!(SidecarError::bare(ErrorCode::ConfigInvalid).exit_code(), 2);
        assert_eq!(SidecarError::bare(ErrorCode::IdentityExists).exit_code(), 3);
        assert_eq!(
            SidecarError::bare(ErrorCode::SidecarPairingRequired).exit_code(),
            3
        );
        assert_eq!(
            SidecarError::bare(ErrorCode::StateStoreError).exit_code(),
            1
        );
        assert_eq!(
            SidecarError::bare(ErrorCode::ServiceManagerFailed).exit_code(),
            1
        );
        assert_eq!(
            SidecarError::bare(ErrorCode::ServiceFileError).exit_code(),
            1
        );
        assert_eq!(
            SidecarError::bare(ErrorCode::ServiceFileForeign).exit_code(),
            3
        );
        assert_eq!(
            SidecarError::bare(ErrorCode::ServiceUnsupported).exit_code(),
            3
        );
    }

    #[test]
    fn body_carries_code_and_detail() {
        let body = SidecarError::new(ErrorCode::ConfigInvalid, "(key: sidecar.enabled)").body();
        assert_eq!(body.code, "CONFIG_INVALID");
        assert!(body.message.ends_with("(key: sidecar.enabled)"));
    }
}
