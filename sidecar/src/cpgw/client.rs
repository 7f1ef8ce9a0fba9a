//! HTTP client for the local Client Portal Gateway.
//!
//! - CPGW serves a self-signed certificate on localhost. Certificate checks are switched off
//!   only when the base URL's host is loopback (the traffic never leaves the machine); any
//!   other host gets normal verification.
//! - No cookie store: CPGW sets a session cookie on every answer, and the sidecar neither
//!   needs nor keeps it (CPGW authenticates local callers by the browser login it holds), so
//!   it can never be forwarded.
//! - Every request has a timeout (`sidecar.client_portal_timeout_seconds`, 10 s by default)
//!   and a bounded body; CPGW bodies and error texts are
//!   never copied into errors.
//! - Every request waits for its turn in the [`Pacer`] (IBKR's pacing limits, with margins),
//!   and a 429 stops all requests for the penalty period instead of being retried.
//! - A brokerage session must be *primed*: IBKR's `/iserver` endpoints answer 500 "Please query
//!   /accounts first" until `GET /iserver/accounts` ran in the session, and `/portfolio/{acct}`
//!   endpoints until `GET /portfolio/accounts` did. The client primes before the first such
//!   request, again after a lost session, and once more (then retries once) when CPGW says so:
//!   that answer means the request was not processed.

use super::pacer::{Endpoint, Lane, Paced, Pacer};
use super::types::{
    AccountsReply, AuthStatus, HistoryReply, PositionRow, SnapshotRow, StocksReply, SummaryReply,
    TickleReply,
};
use crate::error::SidecarError;
use crate::net::{self, UrlKind};
use serde::de::DeserializeOwned;
use shared_safety::ErrorCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use url::Url;

/// Default per-request timeout towards CPGW (`sidecar.client_portal_timeout_seconds`).
pub const CPGW_TIMEOUT: Duration =
    Duration::from_secs(crate::config::DEFAULT_CLIENT_PORTAL_TIMEOUT_SECONDS);
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
    /// CPGW answered 429 recently: requests are held back until IBKR's penalty period ends.
    #[error("the Client Portal Gateway is pacing this laptop's requests")]
    RateLimited,
}

impl CpgwError {
    /// The catalog code a tool reports for this failure.
    pub fn error_code(self) -> ErrorCode {
        match self {
            CpgwError::Unreachable | CpgwError::Timeout => ErrorCode::BrokerUnreachable,
            CpgwError::NotAuthenticated => ErrorCode::BrokerSessionRequired,
            CpgwError::Http(_) | CpgwError::Malformed => ErrorCode::BrokerError,
            CpgwError::RateLimited => ErrorCode::BrokerRateLimited,
        }
    }
}

#[derive(Clone, Debug)]
pub struct CpgwClient {
    pub(super) http: reqwest::Client,
    base: Url,
    /// Shared by every clone: one laptop, one budget.
    pacer: Arc<Pacer>,
    priming: Arc<Priming>,
    orders_cache: Arc<super::orders::OrdersListCache>,
    /// The last accounts answer and when it arrived, for callers that overlap.
    last_accounts: Arc<tokio::sync::Mutex<Option<(tokio::time::Instant, AccountsReply)>>>,
    /// The lane this handle's reads (account, quote, positions, lists) wait in:
    /// [`Lane::Read`], or [`Lane::Trading`] on the handle an order decision uses
    /// ([`CpgwClient::for_orders`]).
    read_lane: Lane,
    /// How long one request may take, connecting included.
    timeout: Duration,
}

/// Whether the current brokerage session was primed for each family of endpoints.
#[derive(Debug, Default)]
struct Priming {
    iserver: FamilyPriming,
    portfolio: FamilyPriming,
}

/// One family's priming. The accounts query that primes it is paced at one per 6 s, so it is
/// sent by one request at a time ([`FamilyPriming::turn`]) and never again by those that waited
/// for it: concurrent requests that each primed queued their queries 6 s apart (in the trading
/// lane, as priming is), and an exit behind them waited half a minute.
#[derive(Debug, Default)]
struct FamilyPriming {
    primed: AtomicBool,
    /// Raised each time a priming query was answered.
    epoch: AtomicU64,
    turn: tokio::sync::Mutex<()>,
}

impl FamilyPriming {
    fn mark_primed(&self) {
        self.primed.store(true, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }
}

/// Which accounts query a path needs first, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    Iserver,
    Portfolio,
}

impl Family {
    /// The accounts query that primes this family's endpoints.
    fn priming_path(self) -> &'static str {
        match self {
            Family::Iserver => "/iserver/accounts",
            Family::Portfolio => "/portfolio/accounts",
        }
    }
}

fn family_of(path: &str) -> Option<Family> {
    let bare = path.split('?').next().unwrap_or(path);
    if bare.starts_with("/iserver/")
        && !matches!(
            bare,
            "/iserver/accounts" | "/iserver/auth/status" | "/iserver/auth/ssodh/init"
        )
    {
        Some(Family::Iserver)
    } else if bare.starts_with("/portfolio/") && bare != "/portfolio/accounts" {
        Some(Family::Portfolio)
    } else {
        None
    }
}

/// What one exchange with CPGW gave, before any interpretation.
#[derive(Debug)]
pub(super) struct RawAnswer {
    pub status: reqwest::StatusCode,
    pub body: Vec<u8>,
    /// The body was longer than [`MAX_CPGW_BODY`] (or cut off after a 4xx) and is incomplete.
    pub truncated: bool,
}

/// Why no answer came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum RawFailure {
    /// No connection was made: certainly not received.
    Connect,
    /// No answer in time, after connecting: it may have been received.
    Timeout,
    /// The connection broke, or the body was cut off: it may have been received.
    Lost,
    /// Held back by the pacer (a recent 429), or refused now with a 429: not received.
    RateLimited,
}

/// CPGW's way of saying the session was not primed (and the request not processed).
fn needs_priming(answer: &RawAnswer) -> bool {
    answer.status == reqwest::StatusCode::INTERNAL_SERVER_ERROR
        && String::from_utf8_lossy(&answer.body).contains("query /accounts first")
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

impl CpgwClient {
    /// Builds a client for `base_url` (e.g. `https://localhost:5000/v1/api`) with the default
    /// request timeout ([`CPGW_TIMEOUT`]).
    pub fn new(base_url: &str) -> Result<Self, SidecarError> {
        Self::with_timeout(base_url, CPGW_TIMEOUT)
    }

    /// Builds a client whose every request (connecting included) may take `timeout`.
    pub fn with_timeout(base_url: &str, timeout: Duration) -> Result<Self, SidecarError> {
        let base = net::checked_url(base_url, UrlKind::Http).map_err(|why| {
            SidecarError::config(format!("(sidecar.local_client_portal_base_url {why})"))
        })?;
        let loopback = net::is_loopback_host(&base);
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
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
        Ok(CpgwClient {
            http,
            base,
            pacer: Arc::new(Pacer::new()),
            priming: Arc::new(Priming::default()),
            orders_cache: Arc::default(),
            last_accounts: Arc::default(),
            read_lane: Lane::Read,
            timeout,
        })
    }

    /// How long one request may take, connecting included.
    pub fn request_timeout(&self) -> Duration {
        self.timeout
    }

    /// A client for a command that may run while the daemon does: a small request budget and
    /// none of the per-endpoint paced endpoints (see [`Pacer::beside_daemon`]). It does not
    /// prime the portfolio endpoints (that query is paced per endpoint); the daemon does.
    pub fn beside_daemon(base_url: &str) -> Result<Self, SidecarError> {
        Ok(CpgwClient {
            pacer: Arc::new(Pacer::beside_daemon()),
            ..CpgwClient::new(base_url)?
        })
    }

    /// Whether this client may send `family`'s priming query itself.
    fn can_prime(&self, family: Family) -> bool {
        !self.pacer.reserves_slow_endpoints()
            || Endpoint::of_path(family.priming_path()) == Endpoint::Other
    }

    /// The same client (same pacer, caches and session), whose reads wait in the trading lane:
    /// the facts an order is decided on (its account, quote, fresh position and the working
    /// orders it must not double) are part of placing it, and a burst of agent reads must not
    /// hold an exit back past its deadline.
    pub fn for_orders(&self) -> CpgwClient {
        CpgwClient {
            read_lane: Lane::Trading,
            ..self.clone()
        }
    }

    /// The lane this handle's reads wait in.
    pub fn read_lane(&self) -> Lane {
        self.read_lane
    }

    /// The pacer every request of this client (and its clones) waits in.
    pub fn pacer(&self) -> &Pacer {
        &self.pacer
    }

    pub(super) fn orders_cache(&self) -> &super::orders::OrdersListCache {
        &self.orders_cache
    }

    /// Primes the session's `/portfolio/{acct}` endpoints (`GET /portfolio/accounts`) if it was
    /// not yet.
    pub async fn prime_portfolio(&self) -> Result<(), CpgwError> {
        self.prime(Family::Portfolio, None)
            .await
            .map_err(|failure| match failure {
                RawFailure::Connect | RawFailure::Lost => CpgwError::Unreachable,
                RawFailure::Timeout => CpgwError::Timeout,
                RawFailure::RateLimited => CpgwError::RateLimited,
            })
    }

    /// Forgets that the session was primed (it was lost or replaced).
    pub fn session_changed(&self) {
        self.priming.iserver.primed.store(false, Ordering::Relaxed);
        self.priming
            .portfolio
            .primed
            .store(false, Ordering::Relaxed);
    }

    /// One paced exchange, no priming. A 429 starts the backoff and is reported as
    /// [`RawFailure::RateLimited`].
    async fn send_once(
        &self,
        method: &reqwest::Method,
        path: &str,
        body: Option<&(String, &'static str)>,
        lane: Lane,
        timeout: Duration,
    ) -> Result<RawAnswer, RawFailure> {
        let endpoint = Endpoint::of_path(path);
        let sent_at = self
            .pacer
            .acquire_slot(endpoint, lane)
            .await
            // `Reserved` cannot come from this client's own paths (priming checks first); held
            // back like a 429 all the same, as the failure that sends nothing.
            .map_err(|_: Paced| RawFailure::RateLimited)?;
        let mut request = self
            .http
            .request(method.clone(), self.url(path))
            .timeout(timeout);
        request = match body {
            Some((text, content_type)) => request
                .header(reqwest::header::CONTENT_TYPE, *content_type)
                .body(text.clone()),
            // An explicit empty body gives `Content-Length: 0`, which CPGW wants on POSTs.
            None if *method != reqwest::Method::GET => request.body(Vec::new()),
            None => request,
        };
        let work = async {
            let mut response = request.send().await.map_err(|error| {
                if error.is_connect() {
                    RawFailure::Connect
                } else if error.is_timeout() {
                    RawFailure::Timeout
                } else {
                    RawFailure::Lost
                }
            })?;
            let status = response.status();
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                self.pacer.rate_limited(retry_after(response.headers()));
                return Err(RawFailure::RateLimited);
            }
            let mut bytes = Vec::new();
            let mut truncated = false;
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        if bytes.len() + chunk.len() > MAX_CPGW_BODY {
                            truncated = true;
                            break;
                        }
                        bytes.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(_) if status.is_client_error() => {
                        truncated = true;
                        break;
                    }
                    Err(error) if error.is_timeout() => return Err(RawFailure::Timeout),
                    Err(_) => return Err(RawFailure::Lost),
                }
            }
            Ok(RawAnswer {
                status,
                body: bytes,
                truncated,
            })
        };
        // reqwest's timeout covers the request; this one also bounds the body loop.
        let result = tokio::time::timeout(timeout + Duration::from_secs(1), work)
            .await
            .unwrap_or(Err(RawFailure::Timeout));
        // CPGW may have got the request at any moment until now.
        self.pacer
            .finished(endpoint, sent_at, tokio::time::Instant::now());
        result
    }

    fn family_priming(&self, family: Family) -> &FamilyPriming {
        match family {
            Family::Iserver => &self.priming.iserver,
            Family::Portfolio => &self.priming.portfolio,
        }
    }

    /// Primes `family` if this session was not primed for it yet. With `stale`, the epoch a
    /// request was sent at that CPGW answered "not primed": primes again unless someone
    /// primed since. One request primes at a time; the others wait for it and do not repeat it.
    async fn prime(&self, family: Family, stale: Option<u64>) -> Result<(), RawFailure> {
        let priming = self.family_priming(family);
        let path = family.priming_path();
        if !self.can_prime(family) {
            return Ok(());
        }
        let done = |priming: &FamilyPriming| {
            priming.primed.load(Ordering::Relaxed)
                && stale.is_none_or(|seen| priming.epoch.load(Ordering::Relaxed) != seen)
        };
        if done(priming) {
            return Ok(());
        }
        let _turn = priming.turn.lock().await;
        if done(priming) {
            return Ok(());
        }
        let answer = self
            .send_once(
                &reqwest::Method::GET,
                path,
                None,
                Lane::Trading,
                self.timeout,
            )
            .await?;
        // Any answer counts as tried for this session: a failing priming query is not repeated
        // before every request (it is paced at one per 6 s); CPGW's own "query /accounts
        // first" answer brings it back.
        if !answer.status.is_success() {
            tracing::debug!(
                status = answer.status.as_u16(),
                "the accounts query that primes a session failed"
            );
        }
        priming.mark_primed();
        Ok(())
    }

    /// One exchange with pacing and priming: primes the session first when the path needs
    /// it, and when CPGW says it was not primed (the request was not processed), primes and
    /// sends once more.
    pub(super) async fn exchange(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(String, &'static str)>,
        lane: Lane,
        timeout: Duration,
    ) -> Result<RawAnswer, RawFailure> {
        let family = family_of(path);
        if let Some(family) = family {
            self.prime(family, None).await?;
        }
        let epoch = family.map(|family| self.family_priming(family).epoch.load(Ordering::Relaxed));
        let answer = self
            .send_once(&method, path, body.as_ref(), lane, timeout)
            .await?;
        if answer.status == reqwest::StatusCode::UNAUTHORIZED {
            self.session_changed();
        }
        match family {
            Some(family) if needs_priming(&answer) && self.can_prime(family) => {
                tracing::info!("the brokerage session was not primed; querying accounts first");
                self.prime(family, epoch).await?;
                self.send_once(&method, path, body.as_ref(), lane, timeout)
                    .await
            }
            _ => Ok(answer),
        }
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
        let body = body.map(|json| (json.to_string(), "application/json"));
        let answer = self
            .exchange(method, path, body, self.read_lane, self.timeout)
            .await
            .map_err(|failure| match failure {
                RawFailure::Connect | RawFailure::Lost => CpgwError::Unreachable,
                RawFailure::Timeout => CpgwError::Timeout,
                RawFailure::RateLimited => CpgwError::RateLimited,
            })?;
        if answer.status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(CpgwError::NotAuthenticated);
        }
        if !answer.status.is_success() {
            return Err(CpgwError::Http(answer.status.as_u16()));
        }
        if answer.truncated {
            return Err(CpgwError::Malformed);
        }
        serde_json::from_slice(&answer.body).map_err(|_| CpgwError::Malformed)
    }

    /// `POST /iserver/auth/status`. A session that is not authenticated will need priming
    /// again once it is.
    pub async fn auth_status(&self) -> Result<AuthStatus, CpgwError> {
        let status: AuthStatus = self
            .call(reqwest::Method::POST, "/iserver/auth/status", None)
            .await?;
        if !status.authenticated {
            self.session_changed();
        }
        Ok(status)
    }

    /// `POST /tickle`: keeps the session from lapsing when idle.
    pub async fn tickle(&self) -> Result<TickleReply, CpgwError> {
        self.call(reqwest::Method::POST, "/tickle", None).await
    }

    /// `POST /iserver/auth/ssodh/init {"publish":true,"compete":true}`: reopens the brokerage
    /// session of an already logged-in CPGW. It needs no credentials and cannot log anyone in.
    pub async fn ssodh_init(&self) -> Result<AuthStatus, CpgwError> {
        // A new brokerage session needs priming again.
        self.session_changed();
        self.call(
            reqwest::Method::POST,
            "/iserver/auth/ssodh/init",
            Some(serde_json::json!({"publish": true, "compete": true})),
        )
        .await
    }

    /// `GET /iserver/accounts` (this also primes the session's `/iserver` endpoints). Calls
    /// made at the same time share one request, and every caller gets an answer received
    /// after it called: never an older one (an order must see the account as it is now).
    pub async fn accounts(&self) -> Result<AccountsReply, CpgwError> {
        let called_at = tokio::time::Instant::now();
        let mut last = self.last_accounts.lock().await;
        if let Some((received_at, reply)) = last.as_ref()
            && *received_at >= called_at
        {
            return Ok(reply.clone());
        }
        let reply: AccountsReply = self
            .call(reqwest::Method::GET, "/iserver/accounts", None)
            .await?;
        self.priming.iserver.mark_primed();
        *last = Some((tokio::time::Instant::now(), reply.clone()));
        Ok(reply)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_order_handle_reads_in_the_trading_lane_and_shares_the_budget() {
        let client = CpgwClient::new("https://localhost:5000/v1/api").unwrap();
        let orders = client.for_orders();
        assert_eq!(client.read_lane(), Lane::Read);
        assert_eq!(orders.read_lane(), Lane::Trading);
        // One laptop, one budget: the order handle must not get a pacer of its own.
        assert!(Arc::ptr_eq(&client.pacer, &orders.pacer));
        assert!(Arc::ptr_eq(&client.orders_cache, &orders.orders_cache));
    }

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
