//! `ibkr-agent sidecar doctor`: is this laptop ready to trade through the gateway, and if not,
//! what to do first.
//!
//! The checks run in the order a setup is built, each one naming the fix for what it finds:
//! configuration, key files, pairing, local grants and trading policy, the gateway (reachable,
//! holding the key pinned at pairing, still serving this pairing), the daemon's relay session,
//! the Client Portal Gateway and its login, the account, a balance and a quote. A check whose
//! inputs are missing is `skipped`, so the first failure is the one to fix.
//!
//! The doctor changes nothing anywhere. In particular it never displaces a running daemon: it
//! proves the gateway's key with a relay handshake it abandons before the key confirmation,
//! and the gateway registers a session only on that confirmation. Its CPGW requests go through
//! a pacer for commands beside the daemon ([`crate::cpgw::pacer::Pacer::beside_daemon`]): a
//! small budget, and none of the endpoints IBKR paces one by one, so the two together stay
//! within IBKR's limits.
//!
//! `fail` means trading through the gateway is blocked; `warn` means it works but something
//! deserves a look. Details and fixes never carry secrets or local paths (the human output adds
//! the state directory).

use crate::clock::now_unix_millis;
use crate::clock::now_unix_seconds;
use crate::config::{CONFIG_FILE, SidecarConfig};
use crate::cpgw::marketdata::{SNAPSHOT_BACKOFF, snapshot};
use crate::cpgw::portfolio::summary;
use crate::cpgw::types::{AccountsReply, TradingMode, trading_mode};
use crate::cpgw::{BrokerState, ConidCache, CpgwClient};
use crate::error::SidecarError;
use crate::paths::IDENTITY_KEY_FILE;
use crate::relay::dial;
use crate::relay::handshake::{self, HandshakeFailure, Pinned};
use crate::state::{PairingRecord, StateStore};
use protocol::PROTOCOL_VERSION;
use protocol::catalog::scopes;
use protocol::handshake::ClientHello;
use protocol::identity::StaticKeypair;
use serde::Serialize;
use shared_safety::ErrorCode;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The symbol quoted when none is given: liquid, always listed.
pub const DEFAULT_QUOTE_SYMBOL: &str = "AAPL";
/// Key files that must be readable by their owner only.
const PRIVATE_FILES: [&str; 2] = [IDENTITY_KEY_FILE, "journal.key"];
/// Longest the gateway probe may take, dial and handshake together.
const GATEWAY_PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// What a check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Ok,
    /// Works, but deserves a look.
    Warn,
    /// Blocks trading through the gateway.
    Fail,
    /// Not run: an earlier check it depends on did not pass.
    Skipped,
}

/// One line of the checklist.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Stable name: `config`, `key_files`, `pairing`, `local_grants`, `trading_policy`,
    /// `gateway`, `relay_session`, `client_portal`, `account`, `balance`, `quote`.
    pub name: &'static str,
    pub status: CheckStatus,
    /// What was found.
    pub detail: String,
    /// What to do, when the status is not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
    /// The error code behind a failure, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
}

impl Check {
    fn ok(name: &'static str, detail: impl Into<String>) -> Check {
        Check {
            name,
            status: CheckStatus::Ok,
            detail: detail.into(),
            fix: None,
            code: None,
        }
    }

    fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check {
            name,
            status: CheckStatus::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
            code: None,
        }
    }

    fn fail(
        name: &'static str,
        code: Option<ErrorCode>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name,
            status: CheckStatus::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
            code: code.map(ErrorCode::code),
        }
    }

    /// The state store failed under this check.
    fn store_failed(name: &'static str, error: &SidecarError) -> Check {
        Check::fail(
            name,
            Some(error.code()),
            error.to_string(),
            "Check that the state directory is yours and readable (`ibkr-agent sidecar status`).",
        )
    }

    fn skipped(name: &'static str, because: &str) -> Check {
        Check {
            name,
            status: CheckStatus::Skipped,
            detail: format!("not checked: {because}"),
            fix: None,
            code: None,
        }
    }
}

/// The whole checklist, in order.
#[derive(Clone, Debug, Serialize)]
pub struct DoctorReport {
    pub checks: Vec<Check>,
    /// No check failed: an agent with the right token can trade through this laptop.
    pub ready_to_trade: bool,
}

impl DoctorReport {
    fn new(checks: Vec<Check>) -> DoctorReport {
        let ready_to_trade = checks.iter().all(|check| check.status != CheckStatus::Fail);
        DoctorReport {
            checks,
            ready_to_trade,
        }
    }

    /// The check called `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|check| check.name == name)
    }

    /// The first failed check: the one to fix first.
    pub fn first_failure(&self) -> Option<&Check> {
        self.checks
            .iter()
            .find(|check| check.status == CheckStatus::Fail)
    }
}

/// What to examine.
#[derive(Clone, Debug)]
pub struct DoctorOptions {
    pub state_dir: PathBuf,
    /// The daemon's configuration; default `<state_dir>/sidecar.yaml`.
    pub config: Option<PathBuf>,
    /// The symbol to quote.
    pub symbol: String,
}

/// Runs every check.
pub async fn run(options: &DoctorOptions) -> DoctorReport {
    let mut checks = Vec::new();

    let config =
        match SidecarConfig::load_for_state_dir(options.config.as_deref(), &options.state_dir) {
            Ok(config) => {
                checks.push(Check::ok(
                    "config",
                    "the daemon's configuration loads and is valid",
                ));
                Some(config)
            }
            Err(error) => {
                checks.push(Check::fail(
                "config",
                Some(error.code()),
                error.to_string(),
                format!(
                    "Pair this laptop (`ibkr-agent sidecar pair --gateway <URL> --code -`), which \
                     writes {CONFIG_FILE} into the state directory, or fix the key named above; \
                     see docs/configuration-sidecar.md."
                ),
            ));
                None
            }
        };

    let store = StateStore::open(&options.state_dir);
    let keypair = key_files(&options.state_dir, store.as_ref().ok(), &mut checks);
    let pairing = match &store {
        Ok(store) => pairing(store, &mut checks),
        Err(error) => {
            checks.push(Check::store_failed("pairing", error));
            None
        }
    };
    local_grants(pairing.as_ref(), config.as_ref(), &mut checks);

    match (&config, &keypair, &pairing, &store) {
        (Some(config), Some(keypair), Some(pairing), Ok(store)) => {
            checks.push(gateway(config, keypair, pairing, store).await);
            checks.push(relay_session(config, pairing, store));
        }
        _ => {
            let because = "the configuration, key or pairing above is not usable";
            checks.push(Check::skipped("gateway", because));
            checks.push(Check::skipped("relay_session", because));
        }
    }

    let Some(config) = &config else {
        for name in ["client_portal", "account", "balance", "quote"] {
            checks.push(Check::skipped(name, "the configuration is not usable"));
        }
        return DoctorReport::new(checks);
    };
    broker(config, pairing.as_ref(), &options.symbol, &mut checks).await;
    DoctorReport::new(checks)
}

/// The key files exist, are private, and the identity key loads.
fn key_files(
    state_dir: &Path,
    store: Option<&StateStore>,
    checks: &mut Vec<Check>,
) -> Option<StaticKeypair> {
    use std::os::unix::fs::PermissionsExt;
    for name in PRIVATE_FILES {
        let Ok(metadata) = std::fs::metadata(state_dir.join(name)) else {
            continue;
        };
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            checks.push(Check::fail(
                "key_files",
                Some(ErrorCode::StateStoreError),
                format!("{name} can be read by other users of this machine (mode {mode:o})"),
                format!(
                    "Run `chmod 600 {name}` in the state directory. A key others could read may \
                     already be copied: if the machine is shared, also revoke the pairing and \
                     pair again."
                ),
            ));
            return None;
        }
    }
    let Some(store) = store else {
        checks.push(Check::skipped(
            "key_files",
            "the state store cannot be opened",
        ));
        return None;
    };
    match crate::identity::load_keypair(state_dir, store) {
        Ok((identity, keypair)) => {
            checks.push(Check::ok(
                "key_files",
                format!(
                    "identity {} loads; key files are private (0600)",
                    identity.sidecar_id
                ),
            ));
            Some(keypair)
        }
        Err(error) => {
            checks.push(Check::fail(
                "key_files",
                Some(error.code()),
                error.to_string(),
                "Create this laptop's identity with `ibkr-agent sidecar identity create`, then \
                 pair (`ibkr-agent sidecar pair --gateway <URL> --code -`).",
            ));
            None
        }
    }
}

/// The pairing the daemon would dial.
fn pairing(store: &StateStore, checks: &mut Vec<Check>) -> Option<PairingRecord> {
    let identity = match store.identity() {
        Ok(Some(identity)) => identity,
        Ok(None) => {
            checks.push(Check::skipped("pairing", "there is no identity"));
            return None;
        }
        Err(error) => {
            checks.push(Check::store_failed("pairing", &error));
            return None;
        }
    };
    match store.dialable_pairing(&identity.sidecar_id, now_unix_seconds()) {
        Ok(Some(pairing)) => {
            checks.push(Check::ok(
                "pairing",
                format!(
                    "paired with gateway instance {} for user {}",
                    pairing.remote_instance_id, pairing.user_id
                ),
            ));
            Some(pairing)
        }
        Ok(None) => {
            checks.push(Check::fail(
                "pairing",
                Some(ErrorCode::SidecarPairingRequired),
                "no active pairing with a pinned gateway key",
                "Ask the gateway operator for a pairing code, then run `ibkr-agent sidecar pair \
                 --gateway <URL> --code -`.",
            ));
            None
        }
        Err(error) => {
            checks.push(Check::store_failed("pairing", &error));
            None
        }
    }
}

/// What this laptop lets agents do, and whether orders reach the broker.
fn local_grants(
    pairing: Option<&PairingRecord>,
    config: Option<&SidecarConfig>,
    checks: &mut Vec<Check>,
) {
    match pairing {
        None => checks.push(Check::skipped("local_grants", "there is no pairing")),
        Some(pairing) => {
            let granted = pairing.local_scopes.to_oauth();
            if pairing.local_scopes.contains(scopes::ORDERS_WRITE) {
                checks.push(Check::ok(
                    "local_grants",
                    format!("granted on this laptop: {granted}"),
                ));
            } else {
                checks.push(Check::fail(
                    "local_grants",
                    Some(ErrorCode::ScopeNotGrantedLocally),
                    format!("this laptop does not let agents place orders (granted: {granted})"),
                    format!(
                        "Run `ibkr-agent sidecar pairing grant --scope {}` (and `--scope {}` to \
                         allow what-if previews). Agents also need a token with the scope.",
                        scopes::ORDERS_WRITE,
                        scopes::ORDERS_PREVIEW
                    ),
                ));
            }
        }
    }
    match config {
        None => checks.push(Check::skipped(
            "trading_policy",
            "the configuration is not usable",
        )),
        Some(config) if config.trading.dry_run => checks.push(Check::warn(
            "trading_policy",
            format!(
                "orders are dry runs (trading.dry_run: true): they are checked and journaled but \
                 never sent; cap per order {}",
                config.trading.max_order_value
            ),
            format!(
                "When the dry runs look right, set `trading.dry_run: false` in {CONFIG_FILE} and \
                 restart the daemon."
            ),
        )),
        Some(config) => checks.push(Check::ok(
            "trading_policy",
            format!(
                "orders are sent (trading.dry_run: false); cap per order {}, per day {}",
                config.trading.max_order_value,
                config.trading.max_daily_value.as_deref().unwrap_or("none")
            ),
        )),
    }
}

/// Dials the configured relay URL and runs the handshake up to the gateway's proof of its key,
/// then hangs up: the gateway registers nothing, so a running daemon keeps its session.
async fn gateway(
    config: &SidecarConfig,
    keypair: &StaticKeypair,
    pairing: &PairingRecord,
    store: &StateStore,
) -> Check {
    const NAME: &str = "gateway";
    let Some(url) = config.relay_url() else {
        return Check::fail(
            NAME,
            Some(ErrorCode::ConfigInvalid),
            "sidecar.remote_relay_url is not set",
            format!("Set sidecar.remote_relay_url in {CONFIG_FILE} (the pairing printed it)."),
        );
    };
    let Some(gateway_key) = pairing.gateway_public_key else {
        return Check::fail(
            NAME,
            Some(ErrorCode::SidecarPairingRequired),
            "the pairing has no pinned gateway key",
            "Pair again (`ibkr-agent sidecar pair --gateway <URL> --code -`).",
        );
    };
    let timestamp_ms = match store.next_handshake_timestamp(&pairing.sidecar_id, now_unix_millis())
    {
        Ok(timestamp) => timestamp,
        Err(error) => {
            return Check::store_failed(NAME, &error);
        }
    };
    let hello = ClientHello {
        protocol_version: PROTOCOL_VERSION,
        sidecar_id: pairing.sidecar_id.clone(),
        remote_instance_id: pairing.remote_instance_id.clone(),
        timestamp_ms,
        sidecar_version: crate::context::SIDECAR_VERSION.to_string(),
    };
    let pinned = Pinned {
        gateway_key: &gateway_key,
        instance_id: &pairing.remote_instance_id,
        user_id: &pairing.user_id,
        pairing_id: pairing.gateway_pairing_id,
    };
    let probe = async {
        let mut stream = dial::dial(url).await.map_err(ProbeFailure::Dial)?;
        let result = handshake::perform(&mut stream, keypair, &hello, &pinned).await;
        // Hang up before the key confirmation: nothing was registered.
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.close(None)).await;
        result.map(|_| ()).map_err(ProbeFailure::Handshake)
    };
    let outcome = tokio::time::timeout(GATEWAY_PROBE_TIMEOUT, probe)
        .await
        .unwrap_or(Err(ProbeFailure::Handshake(HandshakeFailure::Timeout)));
    match outcome {
        Ok(()) => Check::ok(
            NAME,
            format!(
                "{url} answers, proves the key pinned at pairing ({}) and serves this pairing",
                gateway_key.fingerprint()
            ),
        ),
        Err(ProbeFailure::Dial(dial::DialError::Policy(why))) => Check::fail(
            NAME,
            Some(ErrorCode::ConfigInvalid),
            format!("sidecar.remote_relay_url {why}"),
            format!(
                "Fix sidecar.remote_relay_url in {CONFIG_FILE} (wss://, or ws:// to this machine only)."
            ),
        ),
        Err(ProbeFailure::Dial(error)) => Check::fail(
            NAME,
            Some(ErrorCode::SidecarUnavailable),
            format!("cannot reach the gateway at {url}: {error}"),
            "Check the network and that the gateway is up (its operator can check \
             `/healthz`); check sidecar.remote_relay_url if the gateway moved.",
        ),
        // The gateway could not read message 1, which is sealed to the pinned key: whatever
        // answers does not hold it.
        Err(ProbeFailure::Handshake(HandshakeFailure::Rejected(code)))
            if code == ErrorCode::HandshakeFailed.code() =>
        {
            wrong_gateway(
                url,
                &gateway_key,
                pairing,
                "it could not read the handshake",
            )
        }
        Err(ProbeFailure::Handshake(HandshakeFailure::Rejected(code))) => {
            let action = ErrorCode::from_code(&code)
                .map(ErrorCode::user_action)
                .unwrap_or("Ask the gateway operator.");
            Check::fail(
                NAME,
                ErrorCode::from_code(&code),
                format!("the gateway refused this sidecar: {code}"),
                action,
            )
        }
        Err(ProbeFailure::Handshake(
            failure @ (HandshakeFailure::Network(_) | HandshakeFailure::Timeout),
        )) => Check::fail(
            NAME,
            Some(ErrorCode::SidecarUnavailable),
            format!("the gateway at {url} did not complete the handshake: {failure}"),
            "Try again; if it persists, ask the gateway operator to check the gateway.",
        ),
        Err(ProbeFailure::Handshake(failure)) => {
            wrong_gateway(url, &gateway_key, pairing, &failure.to_string())
        }
    }
}

/// Whatever answers at `url` is not the gateway this laptop paired with.
fn wrong_gateway(
    url: &str,
    gateway_key: &protocol::identity::PublicKey,
    pairing: &PairingRecord,
    why: &str,
) -> Check {
    Check::fail(
        "gateway",
        Some(ErrorCode::HandshakeFailed),
        format!(
            "what answers at {url} is not the gateway this laptop paired with ({why}): it does \
             not prove the pinned key {}, instance {} and user {}",
            gateway_key.fingerprint(),
            pairing.remote_instance_id,
            pairing.user_id
        ),
        format!(
            "Do not relay through it. Check sidecar.remote_relay_url; if the gateway was \
             re-keyed or replaced, confirm its fingerprint with its operator, revoke the old \
             pairing (`ibkr-agent sidecar pairing revoke --remote-instance-id {} --sidecar-id \
             {}`) and pair again.",
            pairing.remote_instance_id, pairing.sidecar_id
        ),
    )
}

enum ProbeFailure {
    Dial(dial::DialError),
    Handshake(HandshakeFailure),
}

/// Whether a daemon holds a live relay session for this pairing (it records one per
/// connection and refreshes it at each heartbeat).
fn relay_session(config: &SidecarConfig, pairing: &PairingRecord, store: &StateStore) -> Check {
    const NAME: &str = "relay_session";
    let now = now_unix_seconds();
    let stale_after = i64::try_from(config.heartbeat_timeout().as_secs())
        .unwrap_or(i64::MAX)
        .saturating_add(1);
    let sessions =
        match store.bound_relay_sessions(&pairing.remote_instance_id, &pairing.sidecar_id) {
            Ok(sessions) => sessions,
            Err(error) => {
                return Check::store_failed(NAME, &error);
            }
        };
    let live = sessions.iter().find(|session| {
        session.is_open(now) && now.saturating_sub(session.last_heartbeat_at) <= stale_after
    });
    match live {
        Some(session) => Check::ok(
            NAME,
            format!(
                "the daemon is connected (session since {}s ago, last heartbeat {}s ago)",
                now.saturating_sub(session.created_at),
                now.saturating_sub(session.last_heartbeat_at)
            ),
        ),
        None => Check::fail(
            NAME,
            Some(ErrorCode::SidecarUnavailable),
            "no daemon is connected to the gateway: agents' calls cannot reach this laptop",
            "Start the daemon: `ibkr-agent sidecar run` in a terminal, or `ibkr-agent sidecar \
             service install` to keep it running. Its log says why it cannot connect.",
        ),
    }
}

/// CPGW, its login, the account, a balance and a quote.
async fn broker(
    config: &SidecarConfig,
    pairing: Option<&PairingRecord>,
    symbol: &str,
    checks: &mut Vec<Check>,
) {
    let client = match CpgwClient::beside_daemon(&config.sidecar.local_client_portal_base_url) {
        Ok(client) => client,
        Err(error) => {
            checks.push(Check::fail(
                "client_portal",
                Some(error.code()),
                error.to_string(),
                format!("Fix sidecar.local_client_portal_base_url in {CONFIG_FILE}."),
            ));
            for name in ["account", "balance", "quote"] {
                checks.push(Check::skipped(
                    name,
                    "the Client Portal Gateway is not usable",
                ));
            }
            return;
        }
    };
    let location = client.portal_location();
    let auth = client.auth_status().await;
    let state = BrokerState::from_auth(&auth);
    if state != BrokerState::Ready {
        let code = match state {
            BrokerState::LoginRequired => ErrorCode::BrokerSessionRequired,
            BrokerState::Unreachable => ErrorCode::BrokerUnreachable,
            BrokerState::RateLimited => ErrorCode::BrokerRateLimited,
            _ => ErrorCode::BrokerError,
        };
        checks.push(Check::fail(
            "client_portal",
            Some(code),
            format!(
                "the Client Portal Gateway at {location} is {}",
                state.as_str()
            ),
            state.next_step(&location).unwrap_or_default(),
        ));
        for name in ["account", "balance", "quote"] {
            checks.push(Check::skipped(
                name,
                "the Client Portal Gateway is not ready",
            ));
        }
        return;
    }
    checks.push(Check::ok(
        "client_portal",
        format!("{location} answers with an authenticated brokerage session"),
    ));

    let account = match client.accounts().await {
        Ok(reply) => {
            let (check, account) = account(&reply, config, pairing);
            checks.push(check);
            account
        }
        Err(error) => {
            checks.push(Check::fail(
                "account",
                Some(error.error_code()),
                format!("the accounts query failed: {error}"),
                "Check the Client Portal Gateway in the browser; log out and in again if it \
                 shows no account.",
            ));
            None
        }
    };

    match &account {
        None => checks.push(Check::skipped("balance", "no usable account")),
        Some(account) => checks.push(match summary(&client, account).await {
            Ok(summary) => match summary.available_funds.amount {
                Some(funds) => Check::ok(
                    "balance",
                    format!(
                        "available funds {} {}",
                        shared_safety::money::to_decimal_string(funds),
                        summary.currency().unwrap_or("")
                    ),
                ),
                None => Check::warn(
                    "balance",
                    "the account summary names no available funds",
                    "Check the account in the Client Portal; buys by cash amount need funds.",
                ),
            },
            Err(error) => Check::warn(
                "balance",
                format!("the account summary failed: {error}"),
                "CPGW opens its portfolio endpoints only after the accounts query the daemon \
                 sends at its first portfolio read (this check leaves that paced query to the \
                 daemon): ask the agent for ibkr_account_summary once, or wait a minute after \
                 the login, then run the doctor again. If it persists, check the account in \
                 the Client Portal.",
            ),
        }),
    }

    let contracts = ConidCache::new(client.clone());
    checks.push(match contracts.resolve_symbol(symbol).await {
        Err(_) => Check::warn(
            "quote",
            format!("{symbol} could not be looked up"),
            "Check the symbol, and the Client Portal's contract search in the browser.",
        ),
        Ok(contract) => match snapshot(&client, &[contract.conid], SNAPSHOT_BACKOFF).await {
            Ok(quotes) => match quotes.get(&contract.conid) {
                Some(quote) if quote.has_price() => Check::ok(
                    "quote",
                    format!(
                        "{} last {} bid {} ask {}",
                        contract.symbol,
                        price(quote.last),
                        price(quote.bid),
                        price(quote.ask)
                    ),
                ),
                _ => Check::warn(
                    "quote",
                    format!("{} has no price yet", contract.symbol),
                    "Orders by quantity need a quote: check the account's market data \
                     subscriptions in the Client Portal (Settings, Market Data Subscriptions).",
                ),
            },
            Err(error) => Check::warn(
                "quote",
                format!("the quote for {} failed: {error}", contract.symbol),
                "Check the account's market data subscriptions in the Client Portal.",
            ),
        },
    });
}

fn price(value: Option<shared_safety::money::Decimal>) -> String {
    value.map_or_else(|| "-".into(), shared_safety::money::to_decimal_string)
}

/// The selected account against the trading policy and the local grants.
fn account(
    reply: &AccountsReply,
    config: &SidecarConfig,
    pairing: Option<&PairingRecord>,
) -> (Check, Option<String>) {
    const NAME: &str = "account";
    let Some(account) = reply.active_account().map(str::to_string) else {
        return (
            Check::fail(
                NAME,
                Some(ErrorCode::OrderAccountUnverified),
                format!(
                    "the brokerage session names no selected account ({} listed)",
                    reply.accounts.len()
                ),
                "Select an account in the Client Portal (or log out and in again).",
            ),
            None,
        );
    };
    let mode = trading_mode(reply.is_paper, &account);
    let props = reply.acct_props.get(&account).copied().unwrap_or_default();
    let support = |flag: Option<bool>| match flag {
        Some(true) => "yes",
        Some(false) => "no",
        None => "not stated",
    };
    let detail = format!(
        "{account} ({}); orders by cash amount: {}; fractional shares: {}",
        mode.as_str(),
        support(props.supports_cash_qty),
        support(props.supports_fractions)
    );
    let pinned = &config.trading.account_ids;
    let check = if mode == TradingMode::Unknown {
        Check::fail(
            NAME,
            Some(ErrorCode::OrderAccountUnverified),
            format!("{detail}: whether it is paper or live cannot be told, so orders are refused"),
            "Check the account in the Client Portal; paper accounts start with DU.",
        )
    } else if !pinned.is_empty() && !pinned.iter().any(|id| id == &account) {
        Check::fail(
            NAME,
            Some(ErrorCode::OrderAccountNotPinned),
            format!(
                "{detail}: not in trading.account_ids ({})",
                pinned.join(", ")
            ),
            format!(
                "Select a pinned account in the Client Portal, or add {account} to \
                 trading.account_ids in {CONFIG_FILE} and restart the daemon."
            ),
        )
    } else if mode == TradingMode::Live && !config.trading.allow_live {
        Check::fail(
            NAME,
            Some(ErrorCode::OrderLiveTradingRefused),
            format!("{detail}: a live account, and trading.allow_live is false"),
            format!(
                "To trade real money: set trading.allow_live: true in {CONFIG_FILE}, run \
                 `ibkr-agent sidecar pairing grant --scope {} --confirm-live`, and restart the \
                 daemon. Otherwise log in to the paper account.",
                scopes::ORDERS_LIVE
            ),
        )
    } else if mode == TradingMode::Live
        && !pairing.is_some_and(|pairing| pairing.local_scopes.contains(scopes::ORDERS_LIVE))
    {
        Check::fail(
            NAME,
            Some(ErrorCode::ScopeNotGrantedLocally),
            format!("{detail}: a live account, and this laptop does not grant live orders"),
            format!(
                "Run `ibkr-agent sidecar pairing grant --scope {} --confirm-live` (real money), or \
                 log in to the paper account.",
                scopes::ORDERS_LIVE
            ),
        )
    } else if props.supports_cash_qty == Some(false) {
        Check::warn(
            NAME,
            detail,
            "Buys by cash amount will be refused by the broker for this account; buy by quantity.",
        )
    } else {
        Check::ok(NAME, detail)
    };
    (check, Some(account))
}

/// Renders the report for people; `state_dir` is named once (paths never go in JSON).
pub fn render(report: &DoctorReport, state_dir: &Path) -> String {
    let mut out = format!(
        "ibkr-agent doctor (state directory {})\n",
        state_dir.display()
    );
    for check in &report.checks {
        let mark = match check.status {
            CheckStatus::Ok => "ok  ",
            CheckStatus::Warn => "WARN",
            CheckStatus::Fail => "FAIL",
            CheckStatus::Skipped => "skip",
        };
        out.push_str(&format!("[{mark}] {:<15} {}\n", check.name, check.detail));
        if let Some(fix) = &check.fix {
            out.push_str(&format!("       fix: {fix}\n"));
        }
    }
    match report.first_failure() {
        None => out.push_str("Ready: agents with the right token can trade through this laptop.\n"),
        Some(first) => out.push_str(&format!(
            "Not ready to trade. Fix `{}` first, then run the doctor again.\n",
            first.name
        )),
    }
    out
}

/// The CLI's result: the report, and the error when trading is blocked.
pub fn outcome(report: &DoctorReport) -> Result<(), SidecarError> {
    match report.first_failure() {
        None => Ok(()),
        Some(first) => Err(SidecarError::new(
            ErrorCode::SetupIncomplete,
            format!("(first failed check: {})", first.name),
        )),
    }
}
