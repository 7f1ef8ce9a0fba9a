//! The approval desk: authorization requests waiting for the laptop's owner.
//!
//! 1. `GET /oauth/authorize`, once the client and its redirect URI check out, opens a request
//!    here ([`ApprovalDesk::open`]) and the page asks who the user is.
//! 2. Naming a user ([`ApprovalDesk::ask`]) draws a confirmation code, shows it on the page and
//!    sends an [`AgentApprovalRequest`] to that user's live sidecars. The page looks the same
//!    whether or not the user exists or is connected: an unknown user's request simply expires.
//! 3. The owner's [`AgentDecision`] comes back through the relay ([`ApprovalDesk::run`]). Only a
//!    sidecar of the user the request was sent to can decide it, once, before it expires. An
//!    approval issues a single-use authorization code for the scopes the owner granted (never
//!    more than were asked for); the page then sends the browser to the client's redirect URI
//!    with it (or with `access_denied`).
//!
//! Revoking an agent on the laptop ends its refresh tokens in the store and refuses its access
//! tokens here at once ([`ApprovalDesk::is_revoked`]); the sidecar refuses its calls too.

use super::codes::{CodeBook, CodeGrant};
use super::errors::{OAuthError, OAuthErrorCode};
use super::pkce::CodeChallenge;
use super::registry::KnownClient;
use crate::clock::unix_ms;
use crate::http::rate_limit::RateLimiter;
use crate::relay::{AgentEvent, Relay};
use crate::store::Store;
use protocol::agents::{
    AgentApprovalRequest, AgentDecision, ApprovalId, catalog_scopes, confirmation_code,
};
use protocol::frame::Frame;
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use shared_safety::scope::ScopeSet;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use url::Url;

/// How long a page may sit before a user is named.
pub const OPEN_PAGE_TTL: Duration = Duration::from_secs(2 * 60);
/// How long a finished request's page still answers (with its redirect).
pub const PAGE_TTL: Duration = Duration::from_secs(10 * 60);
/// How long the owner has to decide once asked, by default (`remote_mcp.approval_timeout_seconds`).
pub const APPROVAL_TTL: Duration = Duration::from_secs(5 * 60);
/// Most requests open (not yet finished) at once, everybody's together.
pub const MAX_OPEN_REQUESTS: usize = 1_024;
/// Most finished requests kept for their pages (the oldest go first).
const MAX_FINISHED: usize = 4_096;
/// Approval requests one user id may be sent per minute from all addresses together (a
/// person connects a few agents a day; this bounds how often a laptop shows a request).
pub const ASKS_PER_USER_PER_MINUTE: u32 = 30;
/// Approval requests one client address may send one user id per minute: a stranger
/// spending their share does not spend the user's own.
pub const ASKS_PER_USER_AND_PEER_PER_MINUTE: u32 = 5;
/// Authorization pages one client may open per minute.
pub const OPENS_PER_CLIENT_PER_MINUTE: u32 = 20;
/// Authorization pages one client address may open per minute (registration is free, so the
/// per-client bound alone would not hold back one address).
pub const OPENS_PER_PEER_PER_MINUTE: u32 = 10;
/// How long a revoked agent's access tokens stay refused here: past it they have expired.
const REVOKED_MEMORY: Duration = Duration::from_secs(15 * 60);
/// Most revocations remembered at once (the laptop refuses revoked agents' calls itself too).
const MAX_REVOKED: usize = 100_000;

/// A checked authorization request, as `GET /oauth/authorize` accepted it.
#[derive(Clone, Debug)]
pub struct AuthorizeRequest {
    pub client: KnownClient,
    pub redirect_uri: String,
    /// The request named `redirect_uri` (else it is the client's only registered one).
    pub redirect_uri_named: bool,
    pub state: Option<String>,
    pub challenge: CodeChallenge,
    pub resource: String,
    pub scopes: ScopeSet,
}

/// Where a request stands, as the page shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for the person to name the user.
    Opened,
    /// Sent to the user's laptop; `code` is what the page shows.
    Asked { code: String },
    /// Decided or expired: the browser goes to `redirect`.
    Finished { outcome: Outcome, redirect: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Approved,
    Denied,
    Expired,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Approved => "approved",
            Outcome::Denied => "denied",
            Outcome::Expired => "expired",
        }
    }
}

/// What the page renders.
#[derive(Clone, Debug)]
pub struct View {
    /// SHA-256 of the browser cookie the page was opened with: only that browser may name the
    /// user, see the code and be sent the answer.
    pub browser: [u8; 32],
    pub client_name: String,
    pub client_id: String,
    pub from_document: bool,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    pub stage: Stage,
}

struct Pending {
    request: AuthorizeRequest,
    browser: [u8; 32],
    user: Option<String>,
    stage: Stage,
    expires: Instant,
    changed: watch::Sender<()>,
}

/// Why naming a user did not send anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskError {
    /// No such request (never opened, or long gone).
    Unknown,
    /// This request was already sent (or finished): a page names one user, once.
    AlreadyAsked,
    /// Too many requests for this user id just now (said for every user id alike).
    TooMany { retry_after: Duration },
    /// The user id is empty, too long or has control characters.
    BadUser,
    /// The request cannot be shown on a laptop (a field the protocol bounds is too long or
    /// not printable).
    Unsendable,
}

pub struct ApprovalDesk {
    pending: Mutex<HashMap<ApprovalId, Pending>>,
    /// Agents revoked by their owner's laptop, with the user whose laptop said so: only that
    /// user's tokens of the agent are refused, so another user's sidecar naming someone
    /// else's approval changes nothing.
    revoked: Mutex<HashMap<(ApprovalId, String), Instant>>,
    relay: Arc<Relay>,
    codes: Arc<CodeBook>,
    store: Store,
    issuer: String,
    per_user: RateLimiter,
    per_user_and_peer: RateLimiter,
    per_client: RateLimiter,
    per_peer: RateLimiter,
    approval_ttl: Duration,
}

impl std::fmt::Debug for ApprovalDesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApprovalDesk").finish_non_exhaustive()
    }
}

fn with_query(base: &str, pairs: &[(&str, &str)]) -> String {
    match Url::parse(base) {
        Ok(mut url) => {
            {
                let mut query = url.query_pairs_mut();
                for (key, value) in pairs {
                    query.append_pair(key, value);
                }
            }
            url.to_string()
        }
        // Redirect URIs were parsed when the client was checked; keep the text if not.
        Err(_) => base.to_string(),
    }
}

impl ApprovalDesk {
    pub fn new(
        relay: Arc<Relay>,
        codes: Arc<CodeBook>,
        store: Store,
        issuer: String,
        approval_ttl: Duration,
    ) -> Self {
        ApprovalDesk {
            pending: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashMap::new()),
            relay,
            codes,
            store,
            issuer,
            per_user: RateLimiter::new(ASKS_PER_USER_PER_MINUTE),
            per_user_and_peer: RateLimiter::new(ASKS_PER_USER_AND_PEER_PER_MINUTE),
            per_client: RateLimiter::new(OPENS_PER_CLIENT_PER_MINUTE),
            per_peer: RateLimiter::new(OPENS_PER_PEER_PER_MINUTE),
            approval_ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ApprovalId, Pending>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_revoked(&self) -> MutexGuard<'_, HashMap<(ApprovalId, String), Instant>> {
        self.revoked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The redirect for an error (RFC 6749 section 4.1.2.1, with RFC 9207's `iss`).
    pub fn error_redirect(
        &self,
        redirect_uri: &str,
        state: Option<&str>,
        error: &OAuthError,
    ) -> String {
        let mut pairs = vec![
            ("error", error.code.as_str()),
            ("error_description", error.description.as_str()),
        ];
        if let Some(state) = state {
            pairs.push(("state", state));
        }
        pairs.push(("iss", self.issuer.as_str()));
        with_query(redirect_uri, &pairs)
    }

    /// Opens a request for `request`; the id is the page's handle on it.
    /// `browser`: SHA-256 of the page's browser cookie; `peer`: the client address's
    /// rate-limit key.
    pub fn open(
        &self,
        request: AuthorizeRequest,
        browser: [u8; 32],
        peer: &str,
    ) -> Result<ApprovalId, OAuthError> {
        // Keyed by a digest: client ids are up to 2 KiB each.
        let client_key = hex::encode(&Sha256::digest(request.client.client_id.as_bytes())[..16]);
        if self.per_peer.check(peer).is_err() || self.per_client.check(&client_key).is_err() {
            return Err(OAuthError::new(
                OAuthErrorCode::TemporarilyUnavailable,
                "Too many authorization pages were opened in the last minute; try again shortly.",
            ));
        }
        let now = Instant::now();
        let mut pending = self.lock();
        self.expire_locked(&mut pending, now);
        let unfinished = pending
            .values()
            .filter(|entry| !matches!(entry.stage, Stage::Finished { .. }))
            .count();
        if unfinished >= MAX_OPEN_REQUESTS {
            return Err(OAuthError::new(
                OAuthErrorCode::TemporarilyUnavailable,
                "Too many authorizations are in progress; try again in a few minutes.",
            ));
        }
        let mut bytes = [0u8; 16];
        OsRng.fill_bytes(&mut bytes);
        let id = ApprovalId(bytes);
        let (changed, _) = watch::channel(());
        pending.insert(
            id,
            Pending {
                request,
                browser,
                user: None,
                stage: Stage::Opened,
                expires: now + OPEN_PAGE_TTL,
                changed,
            },
        );
        Ok(id)
    }

    /// Marks every request past its time as expired (its page then redirects with
    /// `access_denied`), and forgets finished ones past their time.
    fn expire_locked(&self, pending: &mut HashMap<ApprovalId, Pending>, now: Instant) {
        // A page nobody named a user on is simply gone (nothing waits for its answer);
        // finished ones go when their time is up.
        pending.retain(|_, entry| match entry.stage {
            Stage::Finished { .. } | Stage::Opened => entry.expires > now,
            Stage::Asked { .. } => true,
        });
        let finished = pending
            .values()
            .filter(|entry| matches!(entry.stage, Stage::Finished { .. }))
            .count();
        if finished > MAX_FINISHED {
            let mut ends: Vec<Instant> = pending
                .values()
                .filter(|entry| matches!(entry.stage, Stage::Finished { .. }))
                .map(|entry| entry.expires)
                .collect();
            ends.sort();
            let cut = ends[finished - MAX_FINISHED];
            pending.retain(|_, entry| {
                !matches!(entry.stage, Stage::Finished { .. }) || entry.expires >= cut
            });
        }
        for entry in pending.values_mut() {
            if entry.expires <= now && !matches!(entry.stage, Stage::Finished { .. }) {
                let error = OAuthError::new(
                    OAuthErrorCode::AccessDenied,
                    "The request expired before the laptop's owner approved it.",
                );
                let redirect = self.error_redirect(
                    &entry.request.redirect_uri,
                    entry.request.state.as_deref(),
                    &error,
                );
                entry.stage = Stage::Finished {
                    outcome: Outcome::Expired,
                    redirect,
                };
                // The finished page stays readable for a while.
                entry.expires = now + PAGE_TTL;
                entry.changed.send_replace(());
            }
        }
    }

    /// The page's view of request `id`.
    pub fn view(&self, id: ApprovalId) -> Option<View> {
        let mut pending = self.lock();
        self.expire_locked(&mut pending, Instant::now());
        let entry = pending.get(&id)?;
        Some(View {
            browser: entry.browser,
            client_name: entry.request.client.client_name.clone(),
            client_id: entry.request.client.client_id.clone(),
            from_document: entry.request.client.from_document,
            redirect_uri: entry.request.redirect_uri.clone(),
            scopes: entry.request.scopes.iter().map(str::to_string).collect(),
            stage: entry.stage.clone(),
        })
    }

    /// Sends request `id` to `user`'s laptop and answers the confirmation code the page shows.
    /// `peer`: the client address's rate-limit key.
    pub fn ask(&self, id: ApprovalId, user: &str, peer: &str) -> Result<String, AskError> {
        let user = user.trim();
        if user.is_empty()
            || user.len() > crate::oauth::token::MAX_SUBJECT_BYTES
            || user.chars().any(char::is_control)
        {
            return Err(AskError::BadUser);
        }
        let now = Instant::now();
        let frame = {
            let mut pending = self.lock();
            self.expire_locked(&mut pending, now);
            let entry = pending.get_mut(&id).ok_or(AskError::Unknown)?;
            if entry.stage != Stage::Opened {
                return Err(AskError::AlreadyAsked);
            }
            let mut entropy = [0u8; 8];
            OsRng.fill_bytes(&mut entropy);
            let code = confirmation_code(entropy);
            let scopes: Vec<&str> = entry.request.scopes.iter().collect();
            let request = AgentApprovalRequest {
                approval_id: id,
                client_id: entry.request.client.client_id.clone(),
                client_name: entry.request.client.client_name.clone(),
                client_verified: entry.request.client.from_document,
                redirect_uri: entry.request.redirect_uri.clone(),
                scopes: catalog_scopes(&scopes),
                confirmation_code: code.clone(),
                expires_in_ms: u64::try_from(self.approval_ttl.as_millis()).unwrap_or(u64::MAX),
            };
            // What the laptop would refuse is never sent (nor counted).
            if request.validate().is_err() {
                return Err(AskError::Unsendable);
            }
            // Counted whether or not the user exists, so the limit says nothing about that.
            self.per_user_and_peer
                .check(&format!("{peer} {user}"))
                .and_then(|()| self.per_user.check(user))
                .map_err(|retry_after| AskError::TooMany { retry_after })?;
            entry.user = Some(user.to_string());
            entry.stage = Stage::Asked { code: code.clone() };
            entry.expires = now + self.approval_ttl;
            entry.changed.send_replace(());
            (Frame::AgentApprovalRequest(request), code)
        };
        let (frame, code) = frame;
        let sent = self.relay.send_to_user(user, &frame);
        tracing::info!(sidecars = sent, "authorization request sent for approval");
        Ok(code)
    }

    /// Waits (at most `wait`) until request `id` changes from `seen`, then answers its view.
    pub async fn wait_for_change(&self, id: ApprovalId, wait: Duration) -> Option<View> {
        let mut receiver = {
            let pending = self.lock();
            let entry = pending.get(&id)?;
            if matches!(entry.stage, Stage::Finished { .. }) {
                drop(pending);
                return self.view(id);
            }
            let deadline = entry.expires;
            let mut receiver = entry.changed.subscribe();
            receiver.mark_unchanged();
            (receiver, deadline)
        };
        let (ref mut changes, deadline) = receiver;
        let until = (Instant::now() + wait).min(deadline + Duration::from_millis(10));
        let _ = tokio::time::timeout_at(until, changes.changed()).await;
        self.view(id)
    }

    /// Applies the owner's decision, sent by a sidecar of `user_id`.
    pub fn decide(&self, user_id: &str, decision: &AgentDecision) {
        let now = Instant::now();
        let mut pending = self.lock();
        self.expire_locked(&mut pending, now);
        let Some(entry) = pending.get_mut(&decision.approval_id) else {
            tracing::info!("decision for an unknown or forgotten authorization request ignored");
            return;
        };
        if entry.user.as_deref() != Some(user_id) || !matches!(entry.stage, Stage::Asked { .. }) {
            tracing::warn!("decision ignored: not this user's open request");
            return;
        }
        let request = &entry.request;
        // Never more than was asked for, whatever the laptop says.
        let granted: Vec<&str> = decision
            .scopes
            .iter()
            .map(String::as_str)
            .filter(|scope| request.scopes.contains(scope))
            .collect();
        let (outcome, redirect) = if decision.approved && !granted.is_empty() {
            let code = self.codes.issue(CodeGrant {
                client_id: request.client.client_id.clone(),
                redirect_uri: request.redirect_uri.clone(),
                redirect_uri_named: request.redirect_uri_named,
                challenge: request.challenge.clone(),
                resource: request.resource.clone(),
                scopes: ScopeSet::from_list(&granted),
                subject: user_id.to_string(),
                approval_id: decision.approval_id.to_hex(),
            });
            match code {
                Some(code) => {
                    let mut pairs = vec![("code", code.as_str())];
                    if let Some(state) = request.state.as_deref() {
                        pairs.push(("state", state));
                    }
                    pairs.push(("iss", self.issuer.as_str()));
                    (Outcome::Approved, with_query(&request.redirect_uri, &pairs))
                }
                None => {
                    let error = OAuthError::new(
                        OAuthErrorCode::TemporarilyUnavailable,
                        "Too many authorizations are in progress; try again in a few minutes.",
                    );
                    let redirect = self.error_redirect(
                        &request.redirect_uri,
                        request.state.as_deref(),
                        &error,
                    );
                    (Outcome::Denied, redirect)
                }
            }
        } else {
            let error = OAuthError::new(
                OAuthErrorCode::AccessDenied,
                "The laptop's owner denied this connection.",
            );
            let redirect =
                self.error_redirect(&request.redirect_uri, request.state.as_deref(), &error);
            (Outcome::Denied, redirect)
        };
        tracing::info!(
            outcome = outcome.as_str(),
            "authorization request decided on the laptop"
        );
        entry.stage = Stage::Finished { outcome, redirect };
        entry.expires = now + PAGE_TTL;
        entry.changed.send_replace(());
    }

    /// The owner revoked an agent: its refresh tokens end in the store, its access tokens are
    /// refused from now on. True once the store has recorded it.
    pub async fn revoke(&self, user_id: &str, approval_id: ApprovalId) -> bool {
        {
            let now = Instant::now();
            let mut revoked = self.lock_revoked();
            revoked.retain(|_, at| now.duration_since(*at) < REVOKED_MEMORY);
            if revoked.len() >= MAX_REVOKED {
                // Not recorded, so not confirmed: the laptop sends it again later.
                tracing::warn!("agent revocation not recorded: too many revocations remembered");
                return false;
            }
            revoked.insert((approval_id, user_id.to_string()), now);
        }
        // A code of this user's approval not redeemed yet must not redeem any more (and one
        // being redeemed right now must not leave a refresh token behind).
        let owned = self
            .lock()
            .get(&approval_id)
            .is_some_and(|entry| entry.user.as_deref() == Some(user_id));
        if owned {
            self.codes.kill_approval(&approval_id.to_hex());
        }
        match self
            .store
            .revoke_refresh_tokens_of_approval(
                approval_id.to_hex(),
                Some(user_id.to_string()),
                unix_ms(),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(%user_id, "agent revoked by the laptop's owner");
                true
            }
            Err(error) => {
                tracing::error!(%error, "could not revoke an agent's refresh tokens");
                false
            }
        }
    }

    /// Whether tokens of `approval_id` held by `subject` are refused: that user's laptop
    /// revoked it, or a code of it was presented twice.
    pub fn is_revoked(&self, approval_id: &ApprovalId, subject: &str) -> bool {
        let revoked = self
            .lock_revoked()
            .contains_key(&(*approval_id, subject.to_string()));
        revoked || self.codes.is_dead(&approval_id.to_hex())
    }

    /// Serves the sidecars' messages until `shutdown`.
    pub(crate) async fn run(
        self: Arc<Self>,
        mut inbox: mpsc::Receiver<AgentEvent>,
        shutdown: CancellationToken,
    ) {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = inbox.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
            };
            match event {
                AgentEvent::Decision { user_id, decision } => self.decide(&user_id, &decision),
                AgentEvent::Revoked {
                    user_id,
                    approval_id,
                    reply,
                } => {
                    if self.revoke(&user_id, approval_id).await {
                        let _ = reply.try_send(Frame::AgentRevokedAck { approval_id });
                    }
                }
            }
        }
    }
}
