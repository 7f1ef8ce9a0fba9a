//! `ibkr-agent sidecar doctor`: is this laptop ready to trade through the gateway, and if not,
//! what to do first.
//!
//! The checks run in the order a setup is built, each one naming the fix for what it finds:
//! configuration, key files, pairing, local grants and trading policy, the gateway (reachable,
//! holding the key pinned at pairing, still serving this pairing), the daemon's relay session,
//! the Client Portal Gateway and its login, the account, a balance and a quote. A check whose
//! inputs are missing is `skipped`, so the first failure is the one to fix.
//!
//! The doctor changes nothing but the laptop's handshake clock (the counter every handshake
//! draws its timestamp from) and, like every command that opens the state store, the mode of a
//! state file others could read (made 0600). In particular it never displaces a running daemon: it
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
use crate::trading::journal::{JOURNAL_FILE, verify_with_anchor};
use protocol::PROTOCOL_VERSION;
use protocol::catalog::scopes;
use protocol::envelope::JournalRef;
use protocol::handshake::ClientHello;
use protocol::identity::StaticKeypair;
use serde::Serialize;
use shared_safety::ErrorCode;
use shared_safety::calendar::MarketCalendar;
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
    /// `gateway`, `relay_session`, `journal`, `market_hours`, `client_portal`, `account`,
    /// `balance`, `quote`.
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
    /// The clock trading hours are judged by (the system clock, except in simulations).
    pub market_clock: crate::market_clock::MarketClock,
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
            let (check, anchor) = gateway(config, keypair, pairing, store).await;
            checks.push(check);
            checks.push(relay_session(config, pairing, store));
            checks.push(journal(&options.state_dir, anchor));
        }
        _ => {
            let because = "the configuration, key or pairing above is not usable";
            checks.push(Check::skipped("gateway", because));
            checks.push(Check::skipped("relay_session", because));
            checks.push(journal(&options.state_dir, None));
        }
    }
    checks.push(market_hours(&options.market_clock));

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
                     already be copied: on a shared machine, {}",
                    if name == IDENTITY_KEY_FILE {
                        "also revoke the pairing and pair again with a new identity."
                    } else {
                        "treat the journal's tamper evidence as weakened from then on."
                    }
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
/// With the check, the journal entry the gateway has on record (`Some` only when the probe
/// got that far), for [`journal`].
async fn gateway(
    config: &SidecarConfig,
    keypair: &StaticKeypair,
    pairing: &PairingRecord,
    store: &StateStore,
) -> (Check, Option<Option<JournalRef>>) {
    const NAME: &str = "gateway";
    let check = |check: Check| (check, None);
    let Some(url) = config.relay_url() else {
        return check(Check::fail(
            NAME,
            Some(ErrorCode::ConfigInvalid),
            "sidecar.remote_relay_url is not set",
            format!("Set sidecar.remote_relay_url in {CONFIG_FILE} (the pairing printed it)."),
        ));
    };
    let Some(gateway_key) = pairing.gateway_public_key else {
        return check(Check::fail(
            NAME,
            Some(ErrorCode::SidecarPairingRequired),
            "the pairing has no pinned gateway key",
            "Pair again (`ibkr-agent sidecar pair --gateway <URL> --code -`).",
        ));
    };
    let timestamp_ms = match store.next_handshake_timestamp(&pairing.sidecar_id, now_unix_millis())
    {
        Ok(timestamp) => timestamp,
        Err(error) => {
            return check(Check::store_failed(NAME, &error));
        }
    };
    let hello = ClientHello {
        protocol_version: PROTOCOL_VERSION,
        sidecar_id: pairing.sidecar_id.clone(),
        remote_instance_id: pairing.remote_instance_id.clone(),
        timestamp_ms,
        sidecar_version: crate::context::SIDECAR_VERSION.to_string(),
        // The probe sends no call.
        max_concurrent_requests: 1,
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
        result
            .map(|(_, hello)| hello.journal_anchor)
            .map_err(ProbeFailure::Handshake)
    };
    let outcome = tokio::time::timeout(GATEWAY_PROBE_TIMEOUT, probe)
        .await
        .unwrap_or(Err(ProbeFailure::Handshake(HandshakeFailure::Timeout)));
    match outcome {
        Ok(anchor) => (
            Check::ok(
                NAME,
                format!(
                    "{url} answers, proves the key pinned at pairing ({}) and serves this pairing",
                    gateway_key.fingerprint()
                ),
            ),
            Some(anchor),
        ),
        Err(failure) => (probe_failure(url, &gateway_key, pairing, failure), None),
    }
}

/// What a failed gateway probe means, and what to do.
fn probe_failure(
    url: &str,
    gateway_key: &protocol::identity::PublicKey,
    pairing: &PairingRecord,
    failure: ProbeFailure,
) -> Check {
    const NAME: &str = "gateway";
    match failure {
        ProbeFailure::Dial(dial::DialError::Policy(why)) => Check::fail(
            NAME,
            Some(ErrorCode::ConfigInvalid),
            format!("sidecar.remote_relay_url {why}"),
            format!(
                "Fix sidecar.remote_relay_url in {CONFIG_FILE} (wss://, or ws:// to this machine only)."
            ),
        ),
        ProbeFailure::Dial(error) => Check::fail(
            NAME,
            Some(ErrorCode::SidecarUnavailable),
            format!("cannot reach the gateway at {url}: {error}"),
            "Check the network and that the gateway is up (its operator can check \
             `/healthz`); check sidecar.remote_relay_url if the gateway moved.",
        ),
        // The gateway could not decrypt message 1, which was sealed to the pinned key: what
        // answers at this URL holds another key (a rotation, or another gateway). The refusal
        // is unauthenticated, so the advice is to confirm with the operator, not to re-pair
        // on its word alone.
        ProbeFailure::Handshake(HandshakeFailure::Rejected(code))
            if code == ErrorCode::GatewayKeyMismatch.code() =>
        {
            Check::fail(
                NAME,
                Some(ErrorCode::GatewayKeyMismatch),
                format!(
                    "the gateway at {url} no longer holds the key this laptop paired with                      (pinned fingerprint {}): its key was rotated or replaced, or the URL now                      leads to another gateway",
                    gateway_key.fingerprint()
                ),
                format!(
                    "Ask the gateway operator whether they rotated the key and for the new                      fingerprint. If they did: revoke the old pairing (`ibkr-agent sidecar                      pairing revoke --remote-instance-id {} --sidecar-id {}`) and pair again                      with a new code, checking that the fingerprint matches. If they did not,                      do not pair: check sidecar.remote_relay_url.",
                    pairing.remote_instance_id, pairing.sidecar_id
                ),
            )
        }
        // The gateway read message 1 only with an older version's prologue: it runs a newer
        // relay protocol than this sidecar.
        ProbeFailure::Handshake(HandshakeFailure::Rejected(code))
            if code == ErrorCode::SidecarUpgradeRequired.code() =>
        {
            Check::fail(
                NAME,
                Some(ErrorCode::SidecarUpgradeRequired),
                format!(
                    "the gateway at {url} runs a newer relay protocol than this sidecar ({})",
                    crate::context::SIDECAR_VERSION
                ),
                ErrorCode::SidecarUpgradeRequired.user_action().to_string(),
            )
        }
        // The gateway's store failed while looking this pairing up, or message 1 was
        // malformed.
        ProbeFailure::Handshake(HandshakeFailure::Rejected(code))
            if code == ErrorCode::HandshakeFailed.code() =>
        {
            Check::fail(
                NAME,
                Some(ErrorCode::HandshakeFailed),
                format!(
                    "the gateway at {url} refused the handshake (pinned key {}): it could not \
                     look this pairing up, or an older gateway could not read the handshake",
                    gateway_key.fingerprint()
                ),
                format!(
                    "Run the doctor again in a minute. If it persists, check \
                     sidecar.remote_relay_url and compare the gateway's fingerprint with the \
                     operator's; if they differ, revoke the old pairing (`ibkr-agent sidecar \
                     pairing revoke --remote-instance-id {} --sidecar-id {}`) and pair again.",
                    pairing.remote_instance_id, pairing.sidecar_id
                ),
            )
        }
        ProbeFailure::Handshake(HandshakeFailure::Rejected(code)) => {
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
        ProbeFailure::Handshake(
            failure @ (HandshakeFailure::Network(_) | HandshakeFailure::Timeout),
        ) => Check::fail(
            NAME,
            Some(ErrorCode::SidecarUnavailable),
            format!("the gateway at {url} did not complete the handshake: {failure}"),
            "Try again; if it persists, ask the gateway operator to check the gateway.",
        ),
        // Authenticated: the answer proved another key, instance, user or pairing.
        ProbeFailure::Handshake(failure) => {
            wrong_gateway(url, gateway_key, pairing, &failure.to_string())
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

/// The trade journal: intact, and holding the entry the gateway has on record (a journal put
/// back from an older copy makes every order tool refuse with JOURNAL_BEHIND_GATEWAY).
fn journal(state_dir: &Path, anchor: Option<Option<JournalRef>>) -> Check {
    const NAME: &str = "journal";
    let path = state_dir.join(JOURNAL_FILE);
    let gateway_anchor = anchor.flatten();
    match verify_with_anchor(&path, gateway_anchor.as_ref()) {
        Err(error) => Check::fail(
            NAME,
            Some(ErrorCode::JournalError),
            format!("the trade journal cannot be read: {error}"),
            "Run `ibkr-agent journal verify` and follow what it says; order tools refuse until \
             the journal can be read.",
        ),
        Ok((report, _)) if !report.ok => Check::fail(
            NAME,
            Some(ErrorCode::JournalError),
            format!(
                "the trade journal's chain is broken{}",
                report
                    .broken_at_line
                    .map(|line| format!(" at line {line}"))
                    .unwrap_or_default()
            ),
            "Run `ibkr-agent journal verify`; restore the journal from a backup of this laptop.",
        ),
        Ok((report, false)) => Check::fail(
            NAME,
            Some(ErrorCode::JournalBehindGateway),
            format!(
                "the trade journal ({} entries) lacks entry {} that the gateway has on record",
                report.entries,
                gateway_anchor.map(|anchor| anchor.seq).unwrap_or_default()
            ),
            ErrorCode::JournalBehindGateway.user_action(),
        ),
        Ok((report, _)) => Check::ok(
            NAME,
            format!(
                "{} entries, keyed chain intact{}",
                report.entries,
                match (anchor, gateway_anchor) {
                    (Some(_), Some(anchor)) =>
                        format!("; holds the gateway's entry {}", anchor.seq),
                    (Some(_), None) => "; the gateway has no entry on record yet".to_string(),
                    (None, _) => "; the gateway's record was not checked".to_string(),
                }
            ),
        ),
    }
}

/// Regular hours: entries (buys, new positions) are refused outside them, dry runs included.
fn market_hours(clock: &crate::market_clock::MarketClock) -> Check {
    const NAME: &str = "market_hours";
    match MarketCalendar::nyse_shared().status(clock.now()) {
        Err(error) => Check::fail(
            NAME,
            Some(error.code()),
            error.to_string(),
            error.code().user_action(),
        ),
        Ok(status) if status.is_open => Check::ok(
            NAME,
            format!(
                "regular hours (now {}, close {})",
                status.now_et,
                status.next_close.as_deref().unwrap_or("-")
            ),
        ),
        Ok(status) => Check::warn(
            NAME,
            format!(
                "the market is closed (now {}{}); next open {}",
                status.now_et,
                status
                    .holiday
                    .as_deref()
                    .map(|name| format!(", {name}"))
                    .unwrap_or_default(),
                status.next_open.as_deref().unwrap_or("-")
            ),
            "Buys and other entries, dry runs included, are refused until the regular session \
             opens; exits follow trading.exits_outside_regular_hours.",
        ),
    }
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
    let is_pinned = pinned
        .iter()
        .any(|id| id.trim().eq_ignore_ascii_case(&account));
    let check = if mode == TradingMode::Unknown {
        Check::fail(
            NAME,
            Some(ErrorCode::OrderAccountUnverified),
            format!("{detail}: whether it is paper or live cannot be told, so orders are refused"),
            "Check the account in the Client Portal; paper accounts start with DU.",
        )
    } else if (!pinned.is_empty() || mode == TradingMode::Live) && !is_pinned {
        Check::fail(
            NAME,
            Some(ErrorCode::OrderAccountNotPinned),
            if pinned.is_empty() {
                format!("{detail}: a live account is traded only when trading.account_ids names it")
            } else {
                format!(
                    "{detail}: not in trading.account_ids ({})",
                    pinned.join(", ")
                )
            },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpgw::types::AccountProps;

    fn accounts(account: &str, is_paper: bool) -> AccountsReply {
        AccountsReply {
            accounts: vec![account.to_string()],
            selected_account: Some(account.to_string()),
            is_paper: Some(is_paper),
            acct_props: [(account.to_string(), AccountProps::default())]
                .into_iter()
                .collect(),
        }
    }

    fn config(pins: &[&str], allow_live: bool) -> SidecarConfig {
        let mut config = SidecarConfig::default();
        config.trading.account_ids = pins.iter().map(|pin| pin.to_string()).collect();
        config.trading.allow_live = allow_live;
        config
    }

    #[test]
    fn a_live_account_must_be_pinned_even_when_no_account_is() {
        let (check, _) = account(&accounts("U7654321", false), &config(&[], true), None);
        assert_eq!(check.status, CheckStatus::Fail);
        assert_eq!(check.code, Some("ORDER_ACCOUNT_NOT_PINNED"));
        assert!(check.fix.unwrap().contains("U7654321"));
        // A paper account needs no pin.
        let (check, _) = account(&accounts("DU1234567", true), &config(&[], false), None);
        assert_eq!(check.status, CheckStatus::Ok, "{check:?}");
    }

    #[test]
    fn pins_match_as_the_guard_matches_them() {
        let (check, _) = account(
            &accounts("DU1234567", true),
            &config(&[" du1234567 "], false),
            None,
        );
        assert_eq!(check.status, CheckStatus::Ok, "{check:?}");
        let (check, _) = account(&accounts("DU1234567", true), &config(&["DU7"], false), None);
        assert_eq!(check.code, Some("ORDER_ACCOUNT_NOT_PINNED"));
    }

    #[test]
    fn market_hours_warn_when_closed_and_fail_beyond_the_calendar() {
        use crate::market_clock::MarketClock;
        let open = MarketClock::simulated_at(time::macros::datetime!(2026-11-24 15:00 UTC));
        assert_eq!(market_hours(&open).status, CheckStatus::Ok);
        let saturday = MarketClock::simulated_at(time::macros::datetime!(2026-11-28 15:00 UTC));
        let check = market_hours(&saturday);
        assert_eq!(check.status, CheckStatus::Warn, "{check:?}");
        let beyond = MarketClock::simulated_at(time::macros::datetime!(2199-06-02 15:00 UTC));
        let check = market_hours(&beyond);
        assert_eq!(check.status, CheckStatus::Fail, "{check:?}");
        assert_eq!(check.code, Some("MARKET_CALENDAR_UNKNOWN"));
    }
}
