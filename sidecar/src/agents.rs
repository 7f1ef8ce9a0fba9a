//! Agent connections the laptop's owner approves, lists and revokes.
//!
//! When an MCP client signs in with the gateway's built-in authorization server, the person on
//! its authorization page names their user id and the gateway sends this sidecar an
//! [`AgentApprovalRequest`]: the client's name and id, where the answer goes, the scopes asked
//! for, and the confirmation code the page shows. It is kept in `state.db` (`agents`) until the
//! owner decides or it expires.
//!
//! - **Approve by typing the page's code** (`ibkr-agent sidecar agents approve K7QM-3XW9`, or
//!   the console). The laptop never shows the code itself, so an owner cannot approve a
//!   request they did not open a page for: a phishing page's code is only on the phisher's
//!   screen. The owner may narrow the scopes; `ibkr:orders:live` is granted only if an active
//!   local pairing grants it too.
//! - **Deny** by code, likewise.
//! - **Revoke** an approved agent by id: from the next call on, this sidecar refuses every call
//!   of that agent (`AGENT_REVOKED`), and the gateway is told to refuse its tokens and end its
//!   refresh tokens; the message is sent again at every connection until the gateway
//!   acknowledges it.
//!
//! Commands and the daemon share the table: a command writes the decision, the running
//! daemon's relay connection sends what is unsent every [`SEND_INTERVAL`]. Every call of an
//! agent reads its row ([`admit`]): only an approved agent's calls run, with at most the scopes
//! the owner granted.

use crate::error::SidecarError;
use crate::state::StateStore;
use protocol::agents::{
    AgentApprovalRequest, AgentDecision, ApprovalId, CONFIRMATION_CODE_LEN, is_confirmation_code,
};
use protocol::catalog::scopes;
use protocol::frame::Frame;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use shared_safety::ErrorCode;
use std::time::Duration;

/// How often the daemon sends decisions and revocations not yet sent.
pub const SEND_INTERVAL: Duration = Duration::from_millis(200);
/// Most open requests kept: beyond it the oldest open one is dropped. Above what the
/// gateway's limits let reach one user in an approval's lifetime (30 a minute for at most 15
/// minutes), so a flood of requests cannot push out the one the owner is about to approve.
const MAX_PENDING: i64 = 512;
/// How much earlier than the gateway a request expires here.
const EXPIRY_MARGIN_MS: i64 = 1_000;
/// `last_used_at` is written at most this often per agent.
const LAST_USE_RESOLUTION_MS: i64 = 10_000;

/// Where an agent connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    /// Waiting for the owner.
    Pending,
    /// Nobody decided in time.
    Expired,
    Approved,
    Denied,
    Revoked,
}

/// One row, as the console and the CLI show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AgentRecord {
    pub id: String,
    pub client_name: String,
    /// False when the name is only the client's own claim (a dynamic registration).
    pub client_verified: bool,
    pub client_id: String,
    pub redirect_uri: String,
    pub requested_scopes: Vec<String>,
    pub granted_scopes: Vec<String>,
    pub status: AgentStatus,
    /// Milliseconds since the Unix epoch.
    pub requested_at_ms: i64,
    pub expires_at_ms: i64,
    pub decided_at_ms: Option<i64>,
    pub decided_by: Option<String>,
    pub last_used_at_ms: Option<i64>,
    /// For a revoked agent: whether the gateway confirmed it refuses the agent's tokens.
    pub revocation_confirmed: bool,
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

const COLUMNS: &str = "approval_id, client_name, client_id, redirect_uri, requested_scopes, \
     granted_scopes, status, requested_at, expires_at, decided_at, decided_by, last_used_at, \
     revoke_acked, client_verified";

fn from_row(row: &rusqlite::Row<'_>, now_ms: i64) -> rusqlite::Result<AgentRecord> {
    let stored: String = row.get(6)?;
    let expires_at_ms: i64 = row.get(8)?;
    let status = match stored.as_str() {
        "pending" if expires_at_ms <= now_ms => AgentStatus::Expired,
        "pending" => AgentStatus::Pending,
        "approved" => AgentStatus::Approved,
        "denied" => AgentStatus::Denied,
        _ => AgentStatus::Revoked,
    };
    Ok(AgentRecord {
        id: row.get(0)?,
        client_name: row.get(1)?,
        client_id: row.get(2)?,
        redirect_uri: row.get(3)?,
        requested_scopes: words(&row.get::<_, String>(4)?),
        granted_scopes: words(&row.get::<_, String>(5)?),
        status,
        requested_at_ms: row.get(7)?,
        expires_at_ms,
        decided_at_ms: row.get(9)?,
        decided_by: row.get(10)?,
        last_used_at_ms: row.get(11)?,
        revocation_confirmed: row.get::<_, i64>(12)? != 0,
        client_verified: row.get::<_, i64>(13)? != 0,
    })
}

/// Keeps a request the gateway sent (the same id twice keeps the first).
pub fn record_request(
    store: &StateStore,
    request: &AgentApprovalRequest,
    now_ms: i64,
) -> Result<(), SidecarError> {
    // Ends a little before the gateway's own deadline, so the laptop never approves a request
    // the page may already have called expired.
    let ttl = i64::try_from(request.expires_in_ms).unwrap_or(0);
    let expires_at = now_ms.saturating_add(ttl - (ttl / 2).min(EXPIRY_MARGIN_MS));
    let connection = store.lock()?;
    connection.execute(
        "INSERT OR IGNORE INTO agents (approval_id, client_id, client_name, redirect_uri, \
         requested_scopes, confirmation_code, status, requested_at, expires_at, client_verified) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', ?7, ?8, ?9)",
        params![
            request.approval_id.to_hex(),
            request.client_id,
            request.client_name,
            request.redirect_uri,
            request.scopes.join(" "),
            request.confirmation_code,
            now_ms,
            expires_at,
            request.client_verified,
        ],
    )?;
    // Bounded: a gateway cannot fill the laptop's disk with requests.
    connection.execute(
        "DELETE FROM agents WHERE status = 'pending' AND approval_id NOT IN \
         (SELECT approval_id FROM agents WHERE status = 'pending' \
          ORDER BY requested_at DESC LIMIT ?1)",
        params![MAX_PENDING],
    )?;
    Ok(())
}

/// Every agent connection, newest first. Expired requests older than a day are left out.
pub fn list(store: &StateStore, now_ms: i64) -> Result<Vec<AgentRecord>, SidecarError> {
    let connection = store.lock()?;
    let mut statement = connection.prepare(&format!(
        "SELECT {COLUMNS} FROM agents \
         WHERE NOT (status = 'pending' AND expires_at < ?1 - 86400000) \
         ORDER BY requested_at DESC"
    ))?;
    let rows = statement.query_map(params![now_ms], |row| from_row(row, now_ms))?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

/// A code as typed: upper case, the dash optional.
fn normalize_code(code: &str) -> Option<String> {
    let compact: String = code
        .trim()
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if compact.len() != CONFIRMATION_CODE_LEN - 1 || !compact.is_ascii() {
        return None;
    }
    let code = format!("{}-{}", &compact[..4], &compact[4..]);
    is_confirmation_code(&code).then_some(code)
}

fn open_request(
    connection: &rusqlite::Connection,
    code: &str,
    now_ms: i64,
) -> Result<AgentRecord, SidecarError> {
    let not_found = || SidecarError::bare(ErrorCode::AgentRequestNotFound);
    let code = normalize_code(code).ok_or_else(not_found)?;
    connection
        .query_row(
            &format!(
                "SELECT {COLUMNS} FROM agents WHERE confirmation_code = ?1 \
                 AND status = 'pending' AND expires_at > ?2"
            ),
            params![code, now_ms],
            |row| from_row(row, now_ms),
        )
        .optional()?
        .ok_or_else(not_found)
}

/// Whether an active local pairing grants `ibkr:orders:live`.
fn live_granted_locally(store: &StateStore) -> Result<bool, SidecarError> {
    let now = crate::clock::now_unix_seconds();
    Ok(store.pairings()?.iter().any(|pairing| {
        pairing.is_active(now) && pairing.local_scopes.contains(scopes::ORDERS_LIVE)
    }))
}

/// Approves the open request whose page shows `code`. `only`: the scopes to grant (each must
/// have been asked for); `None` grants what was asked. Live trading is dropped unless an
/// active local pairing grants it.
pub fn approve(
    store: &StateStore,
    code: &str,
    only: Option<&[String]>,
    by: &str,
    now_ms: i64,
) -> Result<AgentRecord, SidecarError> {
    approve_with(store, code, by, now_ms, |requested| match only {
        None => Ok(requested.to_vec()),
        Some(chosen) => {
            if let Some(extra) = chosen.iter().find(|scope| !requested.contains(scope)) {
                return Err(SidecarError::new(
                    ErrorCode::ArgumentsInvalid,
                    format!("(the agent did not ask for {extra}; grant only scopes it asked for)"),
                ));
            }
            Ok(chosen.to_vec())
        }
    })
}

/// Approves the open request whose page shows `code`, granting what it asked for among
/// `at_most` (the console's boxes the owner left ticked).
pub fn approve_at_most(
    store: &StateStore,
    code: &str,
    at_most: &[String],
    by: &str,
    now_ms: i64,
) -> Result<AgentRecord, SidecarError> {
    approve_with(store, code, by, now_ms, |requested| {
        Ok(requested
            .iter()
            .filter(|scope| at_most.contains(scope))
            .cloned()
            .collect())
    })
}

fn approve_with(
    store: &StateStore,
    code: &str,
    by: &str,
    now_ms: i64,
    pick: impl FnOnce(&[String]) -> Result<Vec<String>, SidecarError>,
) -> Result<AgentRecord, SidecarError> {
    let live_ok = live_granted_locally(store)?;
    let connection = store.lock()?;
    let request = open_request(&connection, code, now_ms)?;
    let mut granted = pick(&request.requested_scopes)?;
    if !live_ok {
        granted.retain(|scope| scope != scopes::ORDERS_LIVE);
    }
    granted.sort();
    granted.dedup();
    if granted.is_empty() {
        return Err(SidecarError::new(
            ErrorCode::ArgumentsInvalid,
            "(nothing left to grant; deny the request instead)",
        ));
    }
    decide(
        &connection,
        &request.id,
        "approved",
        &granted.join(" "),
        by,
        now_ms,
    )?;
    get_locked(&connection, &request.id, now_ms)
}

/// Denies the open request whose page shows `code`.
pub fn deny(
    store: &StateStore,
    code: &str,
    by: &str,
    now_ms: i64,
) -> Result<AgentRecord, SidecarError> {
    let connection = store.lock()?;
    let request = open_request(&connection, code, now_ms)?;
    decide(&connection, &request.id, "denied", "", by, now_ms)?;
    get_locked(&connection, &request.id, now_ms)
}

fn decide(
    connection: &rusqlite::Connection,
    id: &str,
    status: &str,
    granted: &str,
    by: &str,
    now_ms: i64,
) -> Result<(), SidecarError> {
    // Only from pending, so two owners deciding at once cannot both win.
    let changed = connection.execute(
        "UPDATE agents SET status = ?2, granted_scopes = ?3, decided_at = ?4, decided_by = ?5, \
         decision_sent = 0 WHERE approval_id = ?1 AND status = 'pending' AND expires_at > ?4",
        params![id, status, granted, now_ms, by],
    )?;
    if changed == 0 {
        return Err(SidecarError::bare(ErrorCode::AgentRequestNotFound));
    }
    Ok(())
}

fn get_locked(
    connection: &rusqlite::Connection,
    id: &str,
    now_ms: i64,
) -> Result<AgentRecord, SidecarError> {
    connection
        .query_row(
            &format!("SELECT {COLUMNS} FROM agents WHERE approval_id = ?1"),
            params![id],
            |row| from_row(row, now_ms),
        )
        .optional()?
        .ok_or_else(|| SidecarError::bare(ErrorCode::AgentNotFound))
}

/// Revokes an approved agent (by the id `agents list` shows, or a unique prefix of it).
pub fn revoke(
    store: &StateStore,
    id: &str,
    by: &str,
    now_ms: i64,
) -> Result<AgentRecord, SidecarError> {
    let id = id.trim().to_ascii_lowercase();
    if id.len() < 8 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(SidecarError::bare(ErrorCode::AgentNotFound));
    }
    let connection = store.lock()?;
    let matches: Vec<String> = connection
        .prepare(
            "SELECT approval_id FROM agents WHERE status = 'approved' AND approval_id LIKE ?1 || '%'",
        )?
        .query_map(params![id], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let [found] = matches.as_slice() else {
        return Err(SidecarError::bare(ErrorCode::AgentNotFound));
    };
    connection.execute(
        "UPDATE agents SET status = 'revoked', decided_at = ?2, decided_by = ?3, \
         revoke_acked = 0 WHERE approval_id = ?1 AND status = 'approved'",
        params![found, now_ms, by],
    )?;
    get_locked(&connection, found, now_ms)
}

/// Gate for a call of agent `id`: the scopes it may use, or why it may not run.
pub fn admit(store: &StateStore, id: &ApprovalId, now_ms: i64) -> Result<Vec<String>, ErrorCode> {
    let connection = store.lock().map_err(|_| ErrorCode::StateStoreError)?;
    let row: Option<(String, String, Option<i64>)> = connection
        .prepare_cached(
            "SELECT status, granted_scopes, last_used_at FROM agents WHERE approval_id = ?1",
        )
        .and_then(|mut statement| {
            statement
                .query_row(params![id.to_hex()], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()
        })
        .map_err(|_| ErrorCode::StateStoreError)?;
    match row {
        Some((status, granted, last_used)) if status == "approved" => {
            if last_used.is_none_or(|at| now_ms - at >= LAST_USE_RESOLUTION_MS) {
                // Best effort: a failed write only makes "last use" older.
                let _ = connection.execute(
                    "UPDATE agents SET last_used_at = ?2 WHERE approval_id = ?1",
                    params![id.to_hex(), now_ms],
                );
            }
            Ok(words(&granted))
        }
        Some((status, ..)) if status == "revoked" => Err(ErrorCode::AgentRevoked),
        _ => Err(ErrorCode::AgentNotApproved),
    }
}

/// What the gateway has not been told yet: decisions not sent, revocations not confirmed.
pub fn outgoing(store: &StateStore) -> Result<Vec<Frame>, SidecarError> {
    let connection = store.lock()?;
    let mut statement = connection.prepare_cached(
        "SELECT approval_id, status, granted_scopes FROM agents \
         WHERE (decision_sent = 0 AND status IN ('approved', 'denied')) \
            OR (status = 'revoked' AND revoke_acked = 0)",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, String>(2)?,
        ))
    })?;
    let mut frames = Vec::new();
    for row in rows {
        let (id, status, granted) = row?;
        let Some(approval_id) = ApprovalId::from_hex(&id) else {
            continue;
        };
        frames.push(match status.as_str() {
            "revoked" => Frame::AgentRevoked { approval_id },
            approved => {
                let approved = approved == "approved";
                Frame::AgentDecision(AgentDecision {
                    approval_id,
                    approved,
                    scopes: if approved {
                        protocol::agents::catalog_scopes(&words(&granted))
                    } else {
                        Vec::new()
                    },
                })
            }
        });
    }
    Ok(frames)
}

/// A decision went out on the relay.
pub fn mark_decision_sent(store: &StateStore, id: &ApprovalId) -> Result<(), SidecarError> {
    store.lock()?.execute(
        "UPDATE agents SET decision_sent = 1 WHERE approval_id = ?1",
        params![id.to_hex()],
    )?;
    Ok(())
}

/// The gateway confirmed a revocation.
pub fn mark_revocation_confirmed(store: &StateStore, id: &ApprovalId) -> Result<(), SidecarError> {
    store.lock()?.execute(
        "UPDATE agents SET revoke_acked = 1 WHERE approval_id = ?1 AND status = 'revoked'",
        params![id.to_hex()],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::agents::{catalog_scopes, confirmation_code};

    fn request(seed: u8) -> AgentApprovalRequest {
        AgentApprovalRequest {
            approval_id: ApprovalId([seed; 16]),
            client_id: "reg.abc".into(),
            client_name: "Test agent".into(),
            client_verified: false,
            redirect_uri: "http://127.0.0.1:5000/cb".into(),
            scopes: catalog_scopes(&[
                scopes::HEALTH_READ,
                scopes::ORDERS_WRITE,
                scopes::ORDERS_LIVE,
            ]),
            confirmation_code: confirmation_code([seed; 8]),
            expires_in_ms: 60_000,
        }
    }

    fn store() -> (tempfile::TempDir, StateStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn approval_needs_the_pages_code_and_never_grants_live_without_the_pairing() {
        let (_dir, store) = store();
        let asked = request(1);
        record_request(&store, &asked, 1_000).unwrap();
        assert_eq!(
            admit(&store, &asked.approval_id, 1_000),
            Err(ErrorCode::AgentNotApproved)
        );
        // Another code, or a well-formed one of no request: nothing approved.
        assert_eq!(
            approve(&store, &confirmation_code([2; 8]), None, "me", 2_000)
                .unwrap_err()
                .code(),
            ErrorCode::AgentRequestNotFound
        );
        let typed = asked.confirmation_code.to_lowercase().replace('-', "");
        let approved = approve(&store, &typed, None, "me", 2_000).unwrap();
        assert_eq!(approved.status, AgentStatus::Approved);
        assert_eq!(
            approved.granted_scopes,
            vec![
                scopes::HEALTH_READ.to_string(),
                scopes::ORDERS_WRITE.to_string()
            ]
        );
        // Used once.
        assert_eq!(
            deny(&store, &asked.confirmation_code, "me", 2_500)
                .unwrap_err()
                .code(),
            ErrorCode::AgentRequestNotFound
        );
        assert_eq!(
            admit(&store, &asked.approval_id, 3_000),
            Ok(vec![
                scopes::HEALTH_READ.to_string(),
                scopes::ORDERS_WRITE.to_string()
            ])
        );
        let frames = outgoing(&store).unwrap();
        assert!(
            matches!(&frames[..], [Frame::AgentDecision(d)] if d.approved && d.scopes.len() == 2)
        );
        mark_decision_sent(&store, &asked.approval_id).unwrap();
        assert!(outgoing(&store).unwrap().is_empty());
    }

    #[test]
    fn an_expired_request_cannot_be_approved_and_scopes_only_narrow() {
        let (_dir, store) = store();
        let asked = request(3);
        record_request(&store, &asked, 0).unwrap();
        let extra = vec![scopes::AUDIT_READ.to_string()];
        assert_eq!(
            approve(&store, &asked.confirmation_code, Some(&extra), "me", 1)
                .unwrap_err()
                .code(),
            ErrorCode::ArgumentsInvalid
        );
        assert_eq!(
            approve(&store, &asked.confirmation_code, None, "me", 60_000)
                .unwrap_err()
                .code(),
            ErrorCode::AgentRequestNotFound
        );
        assert_eq!(
            list(&store, 60_000).unwrap()[0].status,
            AgentStatus::Expired
        );
    }

    #[test]
    fn the_consoles_boxes_grant_at_most_what_was_asked() {
        let (_dir, store) = store();
        let asked = request(5);
        record_request(&store, &asked, 0).unwrap();
        let ticked = vec![
            scopes::HEALTH_READ.to_string(),
            scopes::AUDIT_READ.to_string(),
        ];
        let approved = approve_at_most(&store, &asked.confirmation_code, &ticked, "me", 1).unwrap();
        assert_eq!(
            approved.granted_scopes,
            vec![scopes::HEALTH_READ.to_string()]
        );
        let other = request(6);
        record_request(&store, &other, 0).unwrap();
        assert_eq!(
            approve_at_most(&store, &other.confirmation_code, &[], "me", 1)
                .unwrap_err()
                .code(),
            ErrorCode::ArgumentsInvalid
        );
    }

    #[test]
    fn a_revoked_agent_is_refused_and_told_until_confirmed() {
        let (_dir, store) = store();
        let asked = request(4);
        record_request(&store, &asked, 0).unwrap();
        let only = vec![scopes::HEALTH_READ.to_string()];
        approve(&store, &asked.confirmation_code, Some(&only), "me", 1).unwrap();
        mark_decision_sent(&store, &asked.approval_id).unwrap();
        assert_eq!(
            revoke(&store, "0404", "me", 2).unwrap_err().code(),
            ErrorCode::AgentNotFound
        );
        let revoked = revoke(&store, &asked.approval_id.to_hex()[..10], "me", 2).unwrap();
        assert_eq!(revoked.status, AgentStatus::Revoked);
        assert_eq!(
            admit(&store, &asked.approval_id, 3),
            Err(ErrorCode::AgentRevoked)
        );
        assert_eq!(
            outgoing(&store).unwrap(),
            vec![Frame::AgentRevoked {
                approval_id: asked.approval_id
            }]
        );
        mark_revocation_confirmed(&store, &asked.approval_id).unwrap();
        assert!(outgoing(&store).unwrap().is_empty());
        assert!(list(&store, 4).unwrap()[0].revocation_confirmed);
    }

    #[test]
    fn open_requests_are_bounded() {
        let (_dir, store) = store();
        for seed in 0..=255u8 {
            for twin in 0..3u8 {
                let mut asked = request(seed);
                asked.approval_id.0[0] = twin;
                record_request(&store, &asked, i64::from(seed)).unwrap();
            }
        }
        assert_eq!(list(&store, 0).unwrap().len(), MAX_PENDING as usize);
    }
}
