//! The crate's error types. Every refusal carries a stable [`ErrorCode`]; details name keys,
//! tools or paths, never secret values.

use crate::config::ConfigError;
use protocol::envelope::ErrorBody;
use shared_safety::ErrorCode;

/// A refusal or failure while serving: a catalog code plus an optional non-secret detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {}", self.message())]
pub struct GatewayError {
    pub code: ErrorCode,
    pub detail: Option<String>,
}

impl GatewayError {
    pub fn new(code: ErrorCode) -> Self {
        GatewayError { code, detail: None }
    }

    pub fn with_detail(code: ErrorCode, detail: impl Into<String>) -> Self {
        GatewayError {
            code,
            detail: Some(detail.into()),
        }
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The catalog message with the detail appended.
    pub fn message(&self) -> String {
        self.body().message
    }

    /// The wire form shared with the sidecar and rendered to MCP clients.
    pub fn body(&self) -> ErrorBody {
        self.code.body(self.detail.as_deref())
    }

    /// `{"error":{"code","message","retryable","user_action"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        error_body_json(&self.body())
    }
}

impl From<ErrorCode> for GatewayError {
    fn from(code: ErrorCode) -> Self {
        GatewayError::new(code)
    }
}

/// The JSON shape of an error everywhere the gateway answers with one.
pub fn error_body_json(body: &ErrorBody) -> serde_json::Value {
    serde_json::json!({
        "error": {
            "code": body.code,
            "message": body.message,
            "retryable": body.retryable,
            "user_action": body.user_action,
        }
    })
}

/// Why [`crate::start`] refused to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("state store: {0}")]
    Store(String),
    #[error("gateway key: {0}")]
    Keys(String),
    /// The key is not the one the active pairings were made with.
    #[error("GATEWAY_KEY_CHANGED: {0}")]
    KeyChanged(String),
    /// NATS could not be reached at start.
    #[error("cluster: {0}")]
    Cluster(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

impl StartError {
    pub fn code(&self) -> ErrorCode {
        match self {
            StartError::Config(error) => error.code,
            StartError::Store(_) | StartError::Keys(_) => ErrorCode::StateStoreError,
            StartError::KeyChanged(_) => ErrorCode::GatewayKeyChanged,
            StartError::Cluster(_) => ErrorCode::ClusterUnavailable,
            StartError::Bind { .. } => ErrorCode::ConfigInvalid,
        }
    }

    /// The configuration key at fault, when there is one.
    pub fn key(&self) -> Option<&str> {
        match self {
            StartError::Config(error) => Some(&error.key),
            StartError::Bind { .. } => Some("listen"),
            StartError::Cluster(_) => Some("cluster.nats_url"),
            StartError::Store(_) | StartError::Keys(_) | StartError::KeyChanged(_) => {
                Some("state_dir")
            }
        }
    }

    pub fn message(&self) -> String {
        match self {
            StartError::Config(error) => error.message.clone(),
            other => other.to_string(),
        }
    }
}
