//! Session alerts: when the local CPGW session needs a person (a browser login, another session
//! competing, CPGW down), the keep-alive says so once per outage, at `warn` and, if configured,
//! through a webhook (`alerts.webhook_url`, format ntfy, Slack or Discord).
//!
//! The text names the sidecar's display name and where to log in; it never carries account
//! ids, balances, session data or anything CPGW said. One POST per alert, 5 s timeout, no retry
//! loop: a failed webhook is logged and that is all.

use crate::error::SidecarError;
use crate::net::{self, UrlKind};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use url::Url;

/// Timeout of one webhook POST.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// How the webhook body is shaped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertFormat {
    /// Plain text body (ntfy topic URL).
    #[default]
    Ntfy,
    /// `{"text": ...}` (Slack incoming webhook).
    Slack,
    /// `{"content": ...}` (Discord webhook).
    Discord,
}

/// The `alerts` section of the sidecar configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsSection {
    /// `https://...`, or `http://` to a loopback host only. None: alerts are only logged.
    #[serde(default)]
    pub webhook_url: Option<String>,
    #[serde(default)]
    pub format: AlertFormat,
}

impl AlertsSection {
    /// Fails closed on a webhook URL that is not https (or http to loopback).
    pub fn validate(&self) -> Result<(), SidecarError> {
        if let Some(url) = &self.webhook_url {
            net::checked_url(url, UrlKind::Http)
                .map_err(|why| SidecarError::config(format!("(alerts.webhook_url {why})")))?;
        }
        Ok(())
    }
}

/// Where alerts go; counts what it raised and delivered.
pub struct AlertSink {
    /// The sidecar's display name, named in the alert text.
    label: String,
    webhook: Option<(Url, AlertFormat, reqwest::Client)>,
    raised: AtomicU64,
    sent: AtomicU64,
}

impl std::fmt::Debug for AlertSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertSink")
            .field("webhook", &self.webhook.is_some())
            .field("raised", &self.raised_count())
            .field("sent", &self.sent_count())
            .finish_non_exhaustive()
    }
}

impl AlertSink {
    /// Log-only alerts.
    pub fn log_only(label: &str) -> AlertSink {
        AlertSink {
            label: label.to_string(),
            webhook: None,
            raised: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    /// Alerts per `section` (validated again here).
    pub fn new(label: &str, section: Option<&AlertsSection>) -> Result<AlertSink, SidecarError> {
        let mut sink = AlertSink::log_only(label);
        let Some(section) = section else {
            return Ok(sink);
        };
        section.validate()?;
        if let Some(text) = &section.webhook_url {
            let url = net::checked_url(text, UrlKind::Http)
                .map_err(|why| SidecarError::config(format!("(alerts.webhook_url {why})")))?;
            let mut builder = reqwest::Client::builder()
                .timeout(WEBHOOK_TIMEOUT)
                .connect_timeout(WEBHOOK_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("ibkr-agent/", env!("CARGO_PKG_VERSION")));
            if net::is_loopback_host(&url) {
                builder = builder.no_proxy();
            }
            let client = builder
                .build()
                .map_err(|_| SidecarError::internal("(cannot build the alert HTTP client)"))?;
            sink.webhook = Some((url, section.format, client));
        }
        Ok(sink)
    }

    /// The sidecar's display name used in alert texts.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Alerts raised (logged), webhook or not.
    pub fn raised_count(&self) -> u64 {
        self.raised.load(Ordering::SeqCst)
    }

    /// Webhook POSTs answered with a 2xx.
    pub fn sent_count(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Raises one alert: logs it at `warn`, then one webhook POST if configured. `text` must
    /// carry no account data (callers build it from the display name and the CPGW location).
    pub async fn raise(&self, text: &str) {
        self.raised.fetch_add(1, Ordering::SeqCst);
        tracing::warn!(alert = text, "IBKR session alert");
        let Some((url, format, client)) = &self.webhook else {
            return;
        };
        let request = match format {
            AlertFormat::Ntfy => client
                .post(url.clone())
                .header("Content-Type", "text/plain; charset=utf-8")
                .header("Title", "IBKR session")
                .body(text.to_string()),
            AlertFormat::Slack => client
                .post(url.clone())
                .json(&serde_json::json!({ "text": text })),
            AlertFormat::Discord => client
                .post(url.clone())
                .json(&serde_json::json!({ "content": text })),
        };
        let result = tokio::time::timeout(WEBHOOK_TIMEOUT, request.send()).await;
        match result {
            Ok(Ok(response)) if response.status().is_success() => {
                self.sent.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Ok(response)) => {
                tracing::warn!(
                    status = response.status().as_u16(),
                    "alert webhook refused the alert"
                );
            }
            Ok(Err(_)) | Err(_) => {
                tracing::warn!("alert webhook unreachable; the alert was only logged");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_url_policy() {
        let ok = AlertsSection {
            webhook_url: Some("https://ntfy.sh/my-topic".into()),
            format: AlertFormat::Ntfy,
        };
        assert!(ok.validate().is_ok());
        let loopback = AlertsSection {
            webhook_url: Some("http://127.0.0.1:9999/hook".into()),
            format: AlertFormat::Slack,
        };
        assert!(loopback.validate().is_ok());
        let plain = AlertsSection {
            webhook_url: Some("http://hooks.example.com/x".into()),
            format: AlertFormat::Discord,
        };
        assert!(plain.validate().is_err());
        let parsed: AlertsSection =
            serde_yaml_ng::from_str("webhook_url: https://x.example/h\nformat: slack\n").unwrap();
        assert_eq!(parsed.format, AlertFormat::Slack);
        assert!(serde_yaml_ng::from_str::<AlertsSection>("format: teams\n").is_err());
    }
}
