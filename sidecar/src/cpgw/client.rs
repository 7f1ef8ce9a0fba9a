//! HTTP client for the local Client Portal Gateway.
//!
//! - CPGW serves a self-signed certificate on localhost. Certificate checks are switched off
//!   only when the base URL's host is loopback (the traffic never leaves the machine); any
//!   other host gets normal verification.
//! - No cookie store: CPGW sets a session cookie on every answer, and the sidecar neither
//!   needs nor keeps it (CPGW authenticates local callers by the browser login it holds), so
//!   it can never be forwarded.
//! - Every request has a 10 s timeout and a bounded body; CPGW bodies and error texts are
//!   never copied into errors.

use super::types::{
    AccountsReply, AuthStatus, HistoryReply, PositionRow, SnapshotRow, StocksReply, SummaryReply,
    TickleReply,
};
use crate::error::SidecarError;
use crate::net::{self, UrlKind};
use serde::de::DeserializeOwned;
use shared_safety::ErrorCode;
use std::time::Duration;
use url::Url;

/// Per-request timeout towards CPGW.
pub const CPGW_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest CPGW answer read (portfolio pages and history are far smaller).
pub(super) const MAX_CPGW_BODY: usize = 4 * 1024 * 1024;

/// Why a CPGW call failed. Carries no CPGW text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CpgwError {
    #[error("the Client Portal Gateway is not reachable")]
    Unreachable,
    #[error("the Client Portal Gateway did not answer in time")]
    Timeout,
    /// HTTP 401: no authenticated session (only a browser login on the laptop helps).
    #[error("the Client Portal Gateway has no authenticated session")]
    NotAuthenticated,
    #[error("the Client Portal Gateway answered HTTP {0}")]
    Http(u16),
    #[error("the Client Portal Gateway's answer could not be read")]
    Malformed,
}

impl CpgwError {
    /// The catalog code a tool reports for this failure.
    pub fn error_code(self) -> ErrorCode {
        match self {
            CpgwError::Unreachable | CpgwError::Timeout => ErrorCode::BrokerUnreachable,
            CpgwError::NotAuthenticated => ErrorCode::BrokerSessionRequired,
            CpgwError::Http(_) | CpgwError::Malformed => ErrorCode::BrokerError,
        }
    }
}

#[derive(Clone, Debug)]
pub struct CpgwClient {
    pub(super) http: reqwest::Client,
    base: Url,
}

impl CpgwClient {
    /// Builds a client for `base_url` (e.g. `https://localhost:5000/v1/api`).
    pub fn new(base_url: &str) -> Result<Self, SidecarError> {
        let base = net::checked_url(base_url, UrlKind::Http).map_err(|why| {
            SidecarError::config(format!("(sidecar.local_client_portal_base_url {why})"))
        })?;
        let loopback = net::is_loopback_host(&base);
        let mut builder = reqwest::Client::builder()
            .timeout(CPGW_TIMEOUT)
            .connect_timeout(CPGW_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            // CPGW refuses requests without a User-Agent.
            .user_agent(concat!("ibkr-agent/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(4);
        if loopback {
            // Self-signed certificate on the laptop itself; never accepted for another host.
            builder = builder.tls_danger_accept_invalid_certs(true).no_proxy();
        }
        let http = builder
            .build()
            .map_err(|_| SidecarError::internal("(cannot build the CPGW HTTP client)"))?;
        Ok(CpgwClient { http, base })
    }

    /// `scheme://host:port` of CPGW: where the person logs in.
    pub fn portal_location(&self) -> String {
        net::origin_text(&self.base)
    }

    pub(super) fn url(&self, path: &str) -> String {
        net::join(&self.base, path)
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, CpgwError> {
        let is_post = method == reqwest::Method::POST;
        let mut request = self.http.request(method, self.url(path));
        request = match body {
            Some(json) => request.json(&json),
            // An explicit empty body gives `Content-Length: 0`, which CPGW wants on POSTs.
            None if is_post => request.body(Vec::new()),
            None => request,
        };
        let work = async {
            let mut response = request.send().await.map_err(classify)?;
            let status = response.status();
            if status == reqwest::StatusCode::UNAUTHORIZED {
                return Err(CpgwError::NotAuthenticated);
            }
            if !status.is_success() {
                return Err(CpgwError::Http(status.as_u16()));
            }
            let mut bytes = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(classify)? {
                if bytes.len() + chunk.len() > MAX_CPGW_BODY {
                    return Err(CpgwError::Malformed);
                }
                bytes.extend_from_slice(&chunk);
            }
            serde_json::from_slice(&bytes).map_err(|_| CpgwError::Malformed)
        };
        // reqwest's own timeout covers the request; this one also bounds the body loop.
        tokio::time::timeout(CPGW_TIMEOUT + Duration::from_secs(1), work)
            .await
            .unwrap_or(Err(CpgwError::Timeout))
    }

    /// `POST /iserver/auth/status`.
    pub async fn auth_status(&self) -> Result<AuthStatus, CpgwError> {
        self.call(reqwest::Method::POST, "/iserver/auth/status", None)
            .await
    }

    /// `POST /tickle`: keeps the session from lapsing when idle.
    pub async fn tickle(&self) -> Result<TickleReply, CpgwError> {
        self.call(reqwest::Method::POST, "/tickle", None).await
    }

    /// `POST /iserver/auth/ssodh/init {"publish":true,"compete":true}`: reopens the brokerage
    /// session of an already logged-in CPGW. It needs no credentials and cannot log anyone in.
    pub async fn ssodh_init(&self) -> Result<AuthStatus, CpgwError> {
        self.call(
            reqwest::Method::POST,
            "/iserver/auth/ssodh/init",
            Some(serde_json::json!({"publish": true, "compete": true})),
        )
        .await
    }

    /// `GET /iserver/accounts`.
    pub async fn accounts(&self) -> Result<AccountsReply, CpgwError> {
        self.call(reqwest::Method::GET, "/iserver/accounts", None)
            .await
    }

    /// `GET /trsrv/stocks?symbols=..`.
    pub async fn stocks(&self, symbols: &[&str]) -> Result<StocksReply, CpgwError> {
        let list = encode(&symbols.join(","));
        self.call(
            reqwest::Method::GET,
            &format!("/trsrv/stocks?symbols={list}"),
            None,
        )
        .await
    }

    /// `GET /iserver/marketdata/snapshot?conids=..&fields=31,84,86` (one call, no warm-up
    /// retry; see [`super::marketdata::snapshot`]).
    pub async fn snapshot(&self, conids: &[i64]) -> Result<Vec<SnapshotRow>, CpgwError> {
        let list: Vec<String> = conids.iter().map(i64::to_string).collect();
        self.call(
            reqwest::Method::GET,
            &format!(
                "/iserver/marketdata/snapshot?conids={}&fields=31,84,86",
                list.join(",")
            ),
            None,
        )
        .await
    }

    /// `GET /iserver/marketdata/history?conid=..&period=..&bar=..`.
    pub async fn history(
        &self,
        conid: i64,
        period: &str,
        bar: &str,
    ) -> Result<HistoryReply, CpgwError> {
        self.call(
            reqwest::Method::GET,
            &format!(
                "/iserver/marketdata/history?conid={conid}&period={}&bar={}",
                encode(period),
                encode(bar)
            ),
            None,
        )
        .await
    }

    /// `GET /portfolio/{acct}/summary`.
    pub async fn portfolio_summary(&self, account: &str) -> Result<SummaryReply, CpgwError> {
        let account = path_segment(account)?;
        self.call(
            reqwest::Method::GET,
            &format!("/portfolio/{account}/summary"),
            None,
        )
        .await
    }

    /// `GET /portfolio/{acct}/positions/{page}` (one page; `[]` ends the list).
    pub async fn positions_page(
        &self,
        account: &str,
        page: u32,
    ) -> Result<Vec<PositionRow>, CpgwError> {
        let account = path_segment(account)?;
        self.call(
            reqwest::Method::GET,
            &format!("/portfolio/{account}/positions/{page}"),
            None,
        )
        .await
    }

    /// `POST /portfolio/{acct}/positions/invalidate`: asks CPGW to refresh its position cache.
    pub async fn invalidate_positions(&self, account: &str) -> Result<(), CpgwError> {
        let account = path_segment(account)?;
        let _: serde::de::IgnoredAny = self
            .call(
                reqwest::Method::POST,
                &format!("/portfolio/{account}/positions/invalidate"),
                None,
            )
            .await?;
        Ok(())
    }
}

/// Query-string encoding of one value.
fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// An account id as a path segment: IBKR ids are ASCII letters and digits; anything else is
/// refused rather than escaped.
pub(super) fn path_segment(account: &str) -> Result<&str, CpgwError> {
    if !account.is_empty()
        && account.len() <= 32
        && account.bytes().all(|byte| byte.is_ascii_alphanumeric())
    {
        Ok(account)
    } else {
        Err(CpgwError::Malformed)
    }
}

fn classify(error: reqwest::Error) -> CpgwError {
    if error.is_timeout() {
        CpgwError::Timeout
    } else if error.is_connect() {
        CpgwError::Unreachable
    } else if error.is_decode() || error.is_body() {
        CpgwError::Malformed
    } else {
        CpgwError::Unreachable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_is_the_origin_and_bad_urls_are_config_errors() {
        let client = CpgwClient::new("https://localhost:5000/v1/api").unwrap();
        assert_eq!(client.portal_location(), "https://localhost:5000");
        assert_eq!(
            CpgwClient::new("http://cpgw.example.com/v1/api")
                .unwrap_err()
                .code(),
            ErrorCode::ConfigInvalid
        );
    }

    #[test]
    fn errors_map_to_catalog_codes() {
        assert_eq!(
            CpgwError::Unreachable.error_code(),
            ErrorCode::BrokerUnreachable
        );
        assert_eq!(
            CpgwError::Timeout.error_code(),
            ErrorCode::BrokerUnreachable
        );
        assert_eq!(
            CpgwError::NotAuthenticated.error_code(),
            ErrorCode::BrokerSessionRequired
        );
        assert_eq!(CpgwError::Http(500).error_code(), ErrorCode::BrokerError);
    }
}
