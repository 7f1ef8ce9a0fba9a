//! The error catalog: one enum of stable SCREAMING_SNAKE codes shared by both halves.
//!
//! A code never changes meaning once published. Messages say what happened in words a person
//! understands and never echo secrets or act as an oracle (a bad token is "invalid", not
//! "signature valid but expired for issuer X").

use protocol::envelope::ErrorBody;

macro_rules! error_catalog {
    ($( $variant:ident => ($code:literal, $retryable:literal, $message:literal, $action:literal), )*) => {
        /// Every refusal and failure the product can report.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $variant, )*
        }

        impl ErrorCode {
            /// All codes, in catalog order.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            /// The stable SCREAMING_SNAKE code.
            pub const fn code(self) -> &'static str {
                match self { $( ErrorCode::$variant => $code, )* }
            }

            /// Whether the same call can succeed later without anybody changing anything.
            pub const fn retryable(self) -> bool {
                match self { $( ErrorCode::$variant => $retryable, )* }
            }

            /// What happened, for a person.
            pub const fn message(self) -> &'static str {
                match self { $( ErrorCode::$variant => $message, )* }
            }

            /// What the user should do about it.
            pub const fn user_action(self) -> &'static str {
                match self { $( ErrorCode::$variant => $action, )* }
            }
        }
    };
}

error_catalog! {
    // Configuration (process refuses to start).
    ConfigInvalid => ("CONFIG_INVALID", false,
        "The configuration is missing a required value or has a bad one.",
        "Fix the named key in the configuration file and start again."),
    CliArgumentInvalid => ("CLI_ARGUMENT_INVALID", false,
        "A command-line flag is missing or has a bad value.",
        "Fix the flag named in the message (`--help` lists them) and run the command again."),
    SetupIncomplete => ("SETUP_INCOMPLETE", false,
        "Something this laptop needs before agents can trade through it is missing or broken.",
        "Fix the failed checks that `ibkr-agent sidecar doctor` lists, first one first, and run it again."),
    ConfigSidecarForbidden => ("CONFIG_SIDECAR_FORBIDDEN", false,
        "Relaying to a sidecar is not allowed by this configuration.",
        "Set both sidecar.enabled and safety.sidecar_enabled to true, and enable remote MCP OAuth (remote_mcp.enabled and safety.remote_mcp_enabled) with a valid issuer."),

    GatewayKeyChanged => ("GATEWAY_KEY_CHANGED", false,
        "The gateway's static key is missing or differs from the one its active pairings were made with, so every paired laptop would be refused.",
        "Restore gateway.key from a backup of the state directory. To replace the key on purpose, run `ibkr-gateway key rotate --config <file> --confirm`: it revokes every pairing, and each laptop then pairs again."),

    // The HTTP edge, before authentication.
    RequestOriginRefused => ("REQUEST_ORIGIN_REFUSED", false,
        "This gateway does not serve requests addressed to this Host or sent from this browser Origin.",
        "Use the gateway's public URL. An operator can allow a proxy's Host in remote_mcp.allowed_hosts and a browser client's origin in remote_mcp.allowed_origins."),
    GatewayConnectionLimit => ("GATEWAY_CONNECTION_LIMIT", true,
        "The gateway is at its connection limit and cannot take this connection now.",
        "Wait for the time given in Retry-After and try again. If it persists, tell the gateway operator: they can raise remote_mcp.max_connections (remote_mcp.max_relay_connections for sidecars) or look for a flood in ibkr_gateway_connections_rejected_total."),
    PeerConnectionLimit => ("PEER_CONNECTION_LIMIT", true,
        "Your network address already holds as many connections to the gateway (or, through its proxy, requests in progress) as one address may.",
        "Close connections you do not use, reuse one keep-alive connection, and try again after Retry-After. If many clients share this address (an office NAT), ask the gateway operator to raise remote_mcp.max_connections_per_peer."),

    // Gate 1: remote MCP OAuth.
    AuthRequired => ("AUTH_REQUIRED", false,
        "This endpoint needs an OAuth bearer token.",
        "Sign in through your MCP client so it sends an Authorization: Bearer token."),
    AuthInvalidToken => ("AUTH_INVALID_TOKEN", false,
        "The access token was not accepted.",
        "Get a new access token from the authorization server and retry."),
    AuthInsufficientScope => ("AUTH_INSUFFICIENT_SCOPE", false,
        "The access token does not grant the scope this tool needs.",
        "Ask the authorization server for a token with the scope named in the error."),
    McpSessionLimit => ("MCP_SESSION_LIMIT", true,
        "This user already holds as many MCP sessions on the gateway as it allows.",
        "Close MCP sessions you no longer use (a client closes its session when it disconnects), or wait: a session idle for a few minutes is closed, and Retry-After says when the next one frees up. The operator can raise remote_mcp.max_sessions_per_user."),
    AuthRateLimited => ("AUTH_RATE_LIMITED", true,
        "Too many requests.",
        "Wait for the time given in Retry-After and try again."),

    // Gate 2: pairing.
    SidecarPairingRequired => ("SIDECAR_PAIRING_REQUIRED", false,
        "No active pairing exists between this gateway and a sidecar for your account (none was made, or it was revoked or has expired).",
        "Ask the gateway operator for a pairing code and run `ibkr-agent sidecar pair` on your laptop."),
    PairingCodeInvalid => ("PAIRING_CODE_INVALID", false,
        "The pairing code was not accepted.",
        "Check the code and try again, or ask the operator for a new one."),
    PairingCodeExpired => ("PAIRING_CODE_EXPIRED", false,
        "The pairing code has expired.",
        "Ask the gateway operator for a new pairing code."),
    PairingCodeUsed => ("PAIRING_CODE_USED", false,
        "The pairing code has already been used.",
        "Pairing codes work once. Ask the gateway operator for a new one."),
    SidecarIdConflict => ("SIDECAR_ID_CONFLICT", false,
        "Another active pairing already holds this sidecar id.",
        "Pair with a different --sidecar-id, or ask the gateway operator to revoke the old pairing first (ibkr-gateway pairing revoke)."),
    PairingKeyAlreadyPaired => ("PAIRING_KEY_ALREADY_PAIRED", false,
        "This sidecar key is already in an active pairing on this gateway; a paired key is never moved.",
        "Keep using the existing pairing, or ask the gateway operator to revoke it (ibkr-gateway pairing revoke) and pair again."),
    PairingKeyProofFailed => ("PAIRING_KEY_PROOF_FAILED", false,
        "The sidecar did not prove that it holds the secret of the key it tried to register.",
        "Pair from the laptop whose identity you are registering (ibkr-agent sidecar pair); a key cannot be paired by anyone else."),
    PairingAttemptsExceeded => ("PAIRING_ATTEMPTS_EXCEEDED", false,
        "Too many attempts were made with this pairing code; it is now disabled.",
        "Ask the gateway operator for a new pairing code."),

    // Gate 3: session binding.
    SidecarSessionInvalid => ("SIDECAR_SESSION_INVALID", false,
        "The relay session is not bound to the sidecar paired for this account and gateway instance.",
        "Restart `ibkr-agent sidecar run` on the paired laptop; if it persists, pair again."),
    SidecarGatewayMismatch => ("SIDECAR_GATEWAY_MISMATCH", false,
        "The gateway named another user or pairing than the one this sidecar was paired for, so the sidecar will not serve it.",
        "Check the gateway with the operator (ibkr-gateway pairing list); if the pairing was replaced, pair this laptop again."),
    HandshakeReplayed => ("HANDSHAKE_REPLAYED", false,
        "A relay handshake was refused because it repeats or predates an earlier one from the same sidecar.",
        "If this is your sidecar, check the laptop's clock and restart `ibkr-agent sidecar run`."),
    HandshakeFailed => ("HANDSHAKE_FAILED", true,
        "The encrypted relay handshake failed.",
        "Check that the sidecar is paired with this gateway; restart `ibkr-agent sidecar run`, or pair again."),
    TradingPaused => ("TRADING_PAUSED", false,
        "The owner of the laptop paused trading: no new order is sent until they resume it. Cancels and the reconcile still work.",
        "Ask the laptop's owner; they resume with `ibkr-agent sidecar resume`. Do not retry until then."),
    SidecarUpgradeRequired => ("SIDECAR_UPGRADE_REQUIRED", false,
        "The sidecar speaks an older relay protocol than the gateway it is paired with, which was upgraded.",
        "Upgrade ibkr-agent on the laptop to the gateway's release and restart `ibkr-agent sidecar run`; the pairing carries over, nothing needs pairing again."),
    GatewayKeyMismatch => ("GATEWAY_KEY_MISMATCH", false,
        "The gateway could not read this sidecar's handshake: the sidecar is pinned to a different gateway key than the one the gateway at this URL now holds.",
        "If the gateway operator announced a key rotation, pair this laptop again (`ibkr-agent sidecar pair`) and check that the new fingerprint matches the one they announced. If not, do not pair: the URL may lead to another gateway; ask the operator. `ibkr-agent sidecar doctor` shows the pinned fingerprint."),
    GatewayKeyRotated => ("GATEWAY_KEY_ROTATED", false,
        "The gateway's operator replaced its key, which ended the pairing with your laptop.",
        "On the laptop, pair again with a new code from the operator (`ibkr-agent sidecar pair`) and check that the gateway fingerprint it shows matches the one the operator announced."),
    SidecarUnavailable => ("SIDECAR_UNAVAILABLE", true,
        "Your laptop's sidecar is not connected to the gateway.",
        "Start `ibkr-agent sidecar run` on the paired laptop and make sure it is online."),

    // Gate 4: heartbeat and session expiry.
    SidecarHeartbeatStale => ("SIDECAR_HEARTBEAT_STALE", true,
        "The sidecar stopped answering heartbeats.",
        "Check that the laptop is awake and online; the sidecar reconnects by itself."),
    SidecarSessionExpired => ("SIDECAR_SESSION_EXPIRED", true,
        "The relay session has expired.",
        "Wait a moment: the sidecar reconnects and opens a new session by itself."),

    // Gate 5: broker session (manual local action).
    BrokerSessionRequired => ("BROKER_SESSION_REQUIRED", true,
        "The IBKR Client Portal Gateway on the laptop needs a login before this call can run.",
        "On the laptop running the sidecar, open https://localhost:5000 in a browser and log in (with 2FA). Nothing logs in for you."),
    BrokerUnreachable => ("BROKER_UNREACHABLE", true,
        "The sidecar cannot reach the IBKR Client Portal Gateway on the laptop.",
        "Start the Client Portal Gateway on the laptop (bin/run.sh root/conf.yaml) and check sidecar.local_client_portal_base_url."),
    BrokerError => ("BROKER_ERROR", true,
        "The IBKR Client Portal Gateway answered with an error.",
        "Try again shortly; if it persists, restart the Client Portal Gateway and log in again."),
    BrokerRateLimited => ("BROKER_RATE_LIMITED", true,
        "IBKR answered 'too many requests' (429), so the sidecar holds every request to the Client Portal Gateway back until IBKR's penalty period ends (up to 15 minutes). Nothing was sent.",
        "Wait a quarter of an hour and try again; if it happens again, check that no other program on the laptop is calling the Client Portal Gateway in a loop."),

    // Relay request checks.
    ToolUnknown => ("TOOL_UNKNOWN", false,
        "No tool with this name exists.",
        "Call tools/list to see the tools your token allows."),
    ScopeNotGrantedLocally => ("SCOPE_NOT_GRANTED_LOCALLY", false,
        "The sidecar's local pairing record does not grant the scope this tool needs.",
        "On the laptop, grant it to this pairing: `ibkr-agent sidecar pairing grant --scope <the scope named in the message>`; a running sidecar applies it at its next call."),
    ArgumentsInvalid => ("ARGUMENTS_INVALID", false,
        "The tool arguments do not match the tool's input schema.",
        "Fix the arguments: unknown fields are refused and required fields must be present."),
    SensitiveMaterialRefused => ("SENSITIVE_MATERIAL_REFUSED", false,
        "The request carries something that must never leave its owner: a cookie, an authorization header, a token, a credential, a secret or a local file path.",
        "Remove it from the tool arguments; the sidecar holds its own session and never needs them."),
    PayloadHashMismatch => ("PAYLOAD_HASH_MISMATCH", false,
        "The forwarded request's payload does not match its hash.",
        "This indicates a fault or tampering between the gateway and the sidecar; report it to the operator."),
    RequestTimeout => ("REQUEST_TIMEOUT", true,
        "The sidecar did not answer before the deadline.",
        "Try again; for order tools check ibkr_trade_history first so you do not repeat an order."),
    ClusterUnavailable => ("CLUSTER_UNAVAILABLE", true,
        "The gateway replica that took this call cannot reach the replica your laptop is connected to.",
        "Try again in a moment; if it persists, the gateway operator should check the cluster's NATS service."),
    SharedStoreUnavailable => ("SHARED_STORE_UNAVAILABLE", true,
        "The gateway's shared database did not answer, so this could not be done on every replica.",
        "Try again in a moment; if it persists, the gateway operator should check the cluster's PostgreSQL service."),
    RelayOverloaded => ("RELAY_OVERLOADED", true,
        "Too many calls are in flight to this sidecar.",
        "Wait a moment and try again."),
    AuditUnavailable => ("AUDIT_UNAVAILABLE", true,
        "The gateway could not write its audit record of this order call, so the call was refused and nothing was sent to the laptop.",
        "Try again shortly. If it persists, the gateway operator should check the audit trail and its store (ibkr-gateway audit verify)."),
    RelayProtocolError => ("RELAY_PROTOCOL_ERROR", true,
        "The encrypted relay channel failed and was closed.",
        "Try again; the sidecar reconnects by itself."),
    ResponseTooLarge => ("RESPONSE_TOO_LARGE", false,
        "The answer is larger than the relay allows.",
        "Ask for less data (fewer symbols, a shorter period)."),
    Cancelled => ("CANCELLED", false,
        "The call was cancelled by the client.",
        "Nothing to do."),
    InternalError => ("INTERNAL_ERROR", true,
        "An unexpected internal error occurred.",
        "Try again; if it persists, report it to the operator with the request id."),

    // Market data and symbols.
    SymbolNotFound => ("SYMBOL_NOT_FOUND", false,
        "No contract was found for this symbol.",
        "Check the ticker symbol (US listings only), or search with ibkr_contracts_search."),
    SymbolForeignOnly => ("SYMBOL_FOREIGN_ONLY", false,
        "This symbol only has non-US listings, which this product does not trade.",
        "Use the US ticker of the company, if it has one."),
    MarketDataUnavailable => ("MARKET_DATA_UNAVAILABLE", true,
        "The broker returned no price for this symbol yet.",
        "Try again in a few seconds; market data may still be warming up or the symbol may be halted."),
    MarketCalendarUnknown => ("MARKET_CALENDAR_UNKNOWN", false,
        "The market calendar shipped with this sidecar does not cover this date.",
        "Update ibkr-agent to a version whose NYSE calendar covers the current year."),

    // Order guards (sidecar, every order, fail closed).
    OrderLiveTradingRefused => ("ORDER_LIVE_TRADING_REFUSED", false,
        "This is a live (real-money) account and live trading is not allowed.",
        "Live trading needs trading.allow_live: true in the sidecar config and the ibkr:orders:live scope granted twice: in the agent's OAuth token and to the pairing on the laptop. Otherwise use the paper account."),
    OrderAccountUnverified => ("ORDER_ACCOUNT_UNVERIFIED", false,
        "The sidecar could not verify which account CPGW is serving or whether it is paper or live.",
        "Check ibkr_session_status; make sure CPGW is logged in and the expected account is selected."),
    OrderAccountNotPinned => ("ORDER_ACCOUNT_NOT_PINNED", false,
        "The account CPGW has selected is not one the sidecar may trade (trading.account_ids; a live account must always be named there). Nothing was sent.",
        "Select the intended account in the Client Portal Gateway, or add the account id to trading.account_ids in the sidecar config on the laptop."),
    OrderValueCapExceeded => ("ORDER_VALUE_CAP_EXCEEDED", false,
        "The order's value is above the per-order buy cap.",
        "Buy a smaller amount, or raise trading.max_order_value in the sidecar config on the laptop."),
    OrderDailyCapExceeded => ("ORDER_DAILY_CAP_EXCEEDED", false,
        "The order would take today's buys above the daily cap.",
        "Wait until tomorrow, or raise trading.max_daily_value in the sidecar config on the laptop."),
    OrderDuplicate => ("ORDER_DUPLICATE", false,
        "An identical order was sent moments ago.",
        "Check ibkr_trade_history and ibkr_orders_list before sending it again; use an idempotency_key so a retry can never place a second order."),
    OrderUnresolvedPending => ("ORDER_UNRESOLVED_PENDING", false,
        "An earlier order on this instrument and side has an unknown outcome (it may have been placed), so no other order on it is sent until that is settled.",
        "Run ibkr_reconcile_pending; if the broker cannot prove what happened, the laptop owner settles it with `ibkr-agent sidecar orders settle`."),
    OrderExceedsSellable => ("ORDER_EXCEEDS_SELLABLE", false,
        "The order would sell (or cover) more than is free: part of the position is already committed to working orders, orders whose outcome is unknown, or a fill the broker's positions may not show yet.",
        "Cancel the working orders named in the message first (ibkr_order_cancel), wait for a recent fill to show in ibkr_positions_list, or trade a smaller quantity."),
    OrderBracketLevelsInvalid => ("ORDER_BRACKET_LEVELS_INVALID", false,
        "The bracket's levels are inconsistent: the take-profit must be above the entry and the market, and the stop-loss below the entry and the market, or an exit would fill at once.",
        "Fix the level named in the message."),
    IdempotencyKeyReused => ("IDEMPOTENCY_KEY_REUSED", false,
        "This idempotency_key was already used for a different order (other tool or arguments); nothing was sent.",
        "Use a new idempotency_key for a new order; reuse a key only to retry exactly the same call."),
    OrderOutsideTradingHours => ("ORDER_OUTSIDE_TRADING_HOURS", false,
        "The market is outside regular trading hours (NYSE calendar, holidays and half days included).",
        "Wait for the next regular session (see ibkr_market_status). The message says whether a sidecar setting could allow this kind of order outside regular hours; a buy or an order that adds to a position never can."),
    OrderSymbolNotAllowed => ("ORDER_SYMBOL_NOT_ALLOWED", false,
        "This symbol is not allowed by the sidecar's symbol allow or deny list.",
        "Trade another symbol, or change trading.symbol_allowlist / symbol_denylist on the laptop."),
    OrderNakedShortRefused => ("ORDER_NAKED_SHORT_REFUSED", false,
        "The sell is larger than the position held, which would open a short position.",
        "Sell at most the quantity held (ibkr_positions_list), or use ibkr_close_position."),
    OrderStopWrongSide => ("ORDER_STOP_WRONG_SIDE", false,
        "The stop price is on the wrong side of the market and would trigger at once.",
        "For a sell stop, put the stop below the current price; for a buy stop, above it."),
    OrderInvalid => ("ORDER_INVALID", false,
        "The order is not valid as given.",
        "Fix the order: the message says which field."),
    OrderWarningDeclined => ("ORDER_WARNING_DECLINED", false,
        "The broker asked to confirm a warning that is not on the sidecar's allow-list for this kind of order, so the order was declined and nothing was placed.",
        "Read the warning in the message; if it is acceptable, add its message id to trading.allowed_warning_ids on the laptop (a price-deviation warning, o163, is only accepted for value-capped buys)."),
    OrderConfirmationRoundsExceeded => ("ORDER_CONFIRMATION_ROUNDS_EXCEEDED", false,
        "The broker kept asking for confirmations beyond the sidecar's limit of rounds, so the order was declined and nothing was placed.",
        "Check the order in the Client Portal Gateway; simplify it (for example quantity instead of cash_amount) and try again."),
    OrderRejected => ("ORDER_REJECTED", false,
        "The broker rejected the order; nothing was placed.",
        "Read the broker's reason in the message and adjust the order."),
    OrderApprovalDenied => ("ORDER_APPROVAL_DENIED", false,
        "The owner of the laptop denied this order; nothing was sent to the broker.",
        "Do not send the same order again: ask the laptop's owner what they would accept, and change the order."),
    OrderApprovalExpired => ("ORDER_APPROVAL_EXPIRED", false,
        "Nobody approved this order on the laptop before its approval request expired; nothing was sent to the broker.",
        "Ask the laptop's owner to watch for it (console or `ibkr-agent sidecar approvals list`), then place the order again with a new idempotency_key; a price or quantity may need updating first."),
    ApprovalNotPending => ("APPROVAL_NOT_PENDING", false,
        "No order with this id is waiting for approval: it was never asked for, was already approved or denied, or expired.",
        "Run `ibkr-agent sidecar approvals list` (or open the console) and use an id listed there; an approval is used once."),
    ApprovalMismatch => ("APPROVAL_MISMATCH", false,
        "The order waiting under this id is not the one the approval was given for.",
        "List the pending approvals again and check the order before approving it."),
    ApprovalNeedsDaemon => ("APPROVAL_NEEDS_DAEMON", true,
        "An approved order is sent by the running sidecar, and none is running.",
        "Start `ibkr-agent sidecar run` (or the service), then approve again before the request expires; denying works without it."),
    AgentNotApproved => ("AGENT_NOT_APPROVED", false,
        "This agent's connection was never approved on the laptop this call reached (or its approval was lost).",
        "Connect the agent again: its MCP client signs in, and the laptop's owner approves it with the code the authorization page shows."),
    AgentRevoked => ("AGENT_REVOKED", false,
        "The laptop's owner revoked this agent's connection.",
        "Ask the laptop's owner; connecting again needs a new approval on the laptop."),
    AgentRequestNotFound => ("AGENT_REQUEST_NOT_FOUND", false,
        "No open agent request has this confirmation code (it may have expired, been decided, or be mistyped).",
        "Check the code on the authorization page; if the page says the request expired, start the connection again from the agent."),
    AgentNotFound => ("AGENT_NOT_FOUND", false,
        "No agent connection has this id on this laptop.",
        "Run `ibkr-agent sidecar agents list` and use an id it shows."),
    OrderOutcomeUnknown => ("ORDER_OUTCOME_UNKNOWN", false,
        "The order was sent but its outcome is unknown (timeout or broker error after sending). It may have been placed.",
        "Do not resend blindly: run ibkr_reconcile_pending or check ibkr_orders_list, or retry with the same idempotency_key."),
    PositionNotFound => ("POSITION_NOT_FOUND", false,
        "There is no open position in this symbol.",
        "Check ibkr_positions_list; positions can lag a fill by tens of seconds."),
    OrderNotFound => ("ORDER_NOT_FOUND", false,
        "No order with this id was found.",
        "Check the order id with ibkr_orders_list or ibkr_trade_history."),
    JournalError => ("JOURNAL_ERROR", false,
        "The trade journal could not be read or written, so this call was refused and nothing was sent.",
        "Check free space and permissions in the sidecar state directory, then run `ibkr-agent journal verify`."),
    JournalBehindGateway => ("JOURNAL_BEHIND_GATEWAY", false,
        "The trade journal on the laptop lacks an entry the gateway has on record (it was cut back or replaced by an older copy), so order tools are refused: caps, duplicate checks and pending orders would be judged on an incomplete history. Read tools keep working.",
        "Put the newest copy of journal.jsonl, journal.head and journal.key back into the sidecar state directory and restart `ibkr-agent sidecar run`, then run `ibkr-agent journal verify`. If the entries are lost for good, check ibkr_orders_list and ibkr_executions_list for what was placed, then pair the laptop again."),

    // Local primitives.
    IdentityMissing => ("IDENTITY_MISSING", false,
        "This laptop has no sidecar identity yet.",
        "Run `ibkr-agent sidecar identity create --display-name <name>`."),
    IdentityExists => ("IDENTITY_EXISTS", false,
        "A sidecar identity already exists in this state directory.",
        "Keep using it, or choose another state directory with --state-dir."),
    StateStoreError => ("STATE_STORE_ERROR", false,
        "The local state store could not be read or written.",
        "Check permissions and free space in the state directory."),

    // The laptop owner's console (`ibkr-agent sidecar console`, docs/console.md).
    ConsoleListenNotLoopback => ("CONSOLE_LISTEN_NOT_LOOPBACK", false,
        "The console may only listen on a loopback address of this laptop (127.0.0.1 or ::1); anything else would show the trading controls to the network.",
        "Set console.listen to a loopback address such as 127.0.0.1:0 (any free port), or console.enabled: false."),
    ConsoleNotRunning => ("CONSOLE_NOT_RUNNING", false,
        "No running sidecar daemon serves a console for this state directory.",
        "Start the daemon (`ibkr-agent sidecar run`, or `ibkr-agent sidecar service install`) with console.enabled: true, then run `ibkr-agent sidecar console` again."),
    ConsoleSessionRequired => ("CONSOLE_SESSION_REQUIRED", false,
        "This console page needs the session that opening the console creates; this browser has none (or the daemon restarted since).",
        "Run `ibkr-agent sidecar console` on the laptop: it opens the console with a fresh login link."),
    ConsoleLoginRefused => ("CONSOLE_LOGIN_REFUSED", false,
        "The console login link is not valid for the running daemon (it is wrong, or from an earlier start).",
        "Run `ibkr-agent sidecar console` on the laptop for the current link."),
    ConsoleHostRefused => ("CONSOLE_HOST_REFUSED", false,
        "The console answers only requests addressed to its own loopback address and port; this request named another host (as a DNS rebinding attack would).",
        "Open the console with `ibkr-agent sidecar console`, which uses http://127.0.0.1:<port>/."),
    ConsoleOriginRefused => ("CONSOLE_ORIGIN_REFUSED", false,
        "The request came from another web page than the console itself (or did not say where it came from), so the console refused it.",
        "Use the console's own buttons; another page or site cannot act on the console."),
    ConsoleCsrfInvalid => ("CONSOLE_CSRF_INVALID", false,
        "The form did not carry this session's console token, so the console refused it (forms from other pages, or from before a daemon restart, carry none).",
        "Reload the console page and use its buttons again."),

    // Running the sidecar as a per-user service (`ibkr-agent sidecar service`).
    ServiceUnsupported => ("SERVICE_UNSUPPORTED", false,
        "Installing the sidecar as a service is supported on Linux (a systemd user unit) and macOS (a launchd agent) only.",
        "Start `ibkr-agent sidecar run` yourself, for example from your desktop session's autostart."),
    ServiceFileForeign => ("SERVICE_FILE_FOREIGN", false,
        "A service file of that name exists but was not written by `ibkr-agent sidecar service install`, so it was left as it is.",
        "Look at the file (`ibkr-agent sidecar service status` names it); move it away yourself, or pass --force to replace or remove it."),
    ServiceManagerFailed => ("SERVICE_MANAGER_FAILED", false,
        "A service manager command (systemctl or launchctl) failed or could not be run.",
        "Run the command named in the message by hand to see why, then run the same `ibkr-agent sidecar service` command again."),
    ServiceFileError => ("SERVICE_FILE_ERROR", false,
        "The service file or its log directory could not be read, written or removed.",
        "Check permissions and free space in the directory named in the message."),
}

impl ErrorCode {
    /// Looks a code up by its string form.
    pub fn from_code(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .iter()
            .copied()
            .find(|candidate| candidate.code() == code)
    }

    /// The wire form, with an optional detail appended to the catalog message. The detail must
    /// not contain secrets: callers pass key names, tool names and the like, never values.
    pub fn body(self, detail: Option<&str>) -> ErrorBody {
        let message = match detail {
            Some(detail) if !detail.is_empty() => format!("{} {}", self.message(), detail),
            _ => self.message().to_string(),
        };
        ErrorBody {
            code: self.code().to_string(),
            message,
            retryable: self.retryable(),
            user_action: self.user_action().to_string(),
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_screaming_snake_and_documented() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let text = code.code();
            assert!(seen.insert(text), "duplicate {text}");
            assert!(
                text.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
                "{text} is not SCREAMING_SNAKE"
            );
            assert!(!code.message().is_empty() && !code.user_action().is_empty());
            assert_eq!(ErrorCode::from_code(text), Some(*code));
        }
    }
}

/// Renders the catalog as the Markdown table in `docs/errors.md`.
pub fn render_markdown() -> String {
    let mut out = String::from(
        "# Error codes\n\n\
         Every refusal and failure carries one of these stable codes, a message for a person, whether\n\
         retrying the same call can help, and what the user should do. Codes never change meaning.\n\
         This file is generated from `shared-safety/src/errors.rs`; a test fails when they disagree\n\
         (regenerate with `UPDATE_DOCS=1 cargo test -p shared-safety`).\n\n\
         | code | retryable | message | what to do |\n|---|---|---|---|\n",
    );
    for code in ErrorCode::ALL {
        out.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            code.code(),
            if code.retryable() { "yes" } else { "no" },
            code.message().replace('|', "\\|"),
            code.user_action().replace('|', "\\|"),
        ));
    }
    out
}

#[cfg(test)]
mod docs_tests {
    #[test]
    fn docs_errors_md_matches_the_catalog() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/errors.md");
        let rendered = super::render_markdown();
        if std::env::var_os("UPDATE_DOCS").is_some() {
            std::fs::write(path, &rendered).unwrap();
        }
        let on_disk = std::fs::read_to_string(path).unwrap_or_default();
        assert_eq!(
            on_disk, rendered,
            "docs/errors.md is out of date: run UPDATE_DOCS=1 cargo test -p shared-safety"
        );
    }
}
