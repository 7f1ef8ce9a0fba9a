//! Walking the gateway's built-in authorization server as a client and a person would, over
//! real HTTP: register, open the authorization page, name the user, read the confirmation
//! code, wait for the laptop's decision, redeem the code. And the laptop's side: wait for the
//! request to arrive in the sidecar's state store and approve it by code.

use base64::Engine;
use ibkr_agent::agents::{AgentRecord, AgentStatus};
/// Milliseconds since the Unix epoch, as the sidecar counts them.
pub use ibkr_agent::trading::now_ms;
use rand_core::{OsRng, RngCore};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};

pub type WalkError = Box<dyn std::error::Error + Send + Sync>;

/// A PKCE pair (RFC 7636, S256).
#[derive(Clone, Debug)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        let verifier = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        Pkce {
            verifier,
            challenge,
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Pkce::new()
    }
}

/// The text between `start` and the next `end` after it.
pub fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)? + from;
    Some(&text[from..to])
}

/// One query parameter of a URL.
pub fn query_param(url: &str, name: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    url.query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// A client and a person, against one gateway.
pub struct Walk {
    pub http: reqwest::Client,
    pub base_url: String,
    /// The browser's binding cookie, as the authorization page set it.
    cookie: std::sync::Mutex<Option<String>>,
}

impl Walk {
    pub fn new(base_url: &str) -> Walk {
        Walk {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap_or_default(),
            base_url: base_url.trim_end_matches('/').to_string(),
            cookie: std::sync::Mutex::new(None),
        }
    }

    /// The `Cookie` header a browser would send back, if the page set one.
    pub fn cookie(&self) -> Option<String> {
        self.cookie.lock().ok().and_then(|cookie| cookie.clone())
    }

    fn keep_cookie(&self, response: &reqwest::Response) {
        if let Some(set) = response
            .headers()
            .get("set-cookie")
            .and_then(|value| value.to_str().ok())
            && let Some(pair) = set.split(';').next()
            && let Ok(mut cookie) = self.cookie.lock()
        {
            *cookie = Some(pair.trim().to_string());
        }
    }

    /// A GET as the browser that opened the page makes it.
    pub fn get(&self, url: &str) -> reqwest::RequestBuilder {
        let request = self.http.get(url);
        match self.cookie() {
            Some(cookie) => request.header("cookie", cookie),
            None => request,
        }
    }

    /// RFC 7591 registration; the client id.
    pub async fn register(&self, name: &str, redirect_uri: &str) -> Result<String, WalkError> {
        let answer: Value = self
            .http
            .post(format!("{}/oauth/register", self.base_url))
            .json(&serde_json::json!({
                "client_name": name,
                "redirect_uris": [redirect_uri],
                "token_endpoint_auth_method": "none",
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
            }))
            .send()
            .await?
            .json()
            .await?;
        Ok(answer["client_id"]
            .as_str()
            .ok_or_else(|| format!("no client_id in {answer}"))?
            .to_string())
    }

    pub fn authorize_url(
        &self,
        client_id: &str,
        redirect_uri: &str,
        pkce: &Pkce,
        state: &str,
        scope: Option<&str>,
    ) -> String {
        let resource = format!("{}/mcp", self.base_url);
        let mut pairs = vec![
            ("response_type", "code"),
            ("client_id", client_id),
            ("redirect_uri", redirect_uri),
            ("code_challenge", pkce.challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("state", state),
            ("resource", resource.as_str()),
        ];
        if let Some(scope) = scope {
            pairs.push(("scope", scope));
        }
        let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        format!("{}/oauth/authorize?{query}", self.base_url)
    }

    /// Opens the authorization page; its request handle.
    pub async fn open_page(&self, authorize_url: &str) -> Result<String, WalkError> {
        let response = self.get(authorize_url).send().await?;
        self.keep_cookie(&response);
        let status = response.status();
        let body = response.text().await?;
        if status != 200 {
            return Err(format!("authorization page answered {status}: {body}").into());
        }
        Ok(between(&body, "name=\"request\" value=\"", "\"")
            .ok_or("no request handle on the page")?
            .to_string())
    }

    /// Names the user on the page; the confirmation code it then shows.
    pub async fn name_user(&self, handle: &str, user: &str) -> Result<String, WalkError> {
        let mut request = self.http.post(format!("{}/oauth/authorize", self.base_url));
        if let Some(cookie) = self.cookie() {
            request = request.header("cookie", cookie);
        }
        let response = request
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string([
                ("request", handle),
                ("user_id", user),
            ])?)
            .send()
            .await?;
        if response.status() != 303 {
            return Err(format!("naming the user answered {}", response.status()).into());
        }
        let location = response
            .headers()
            .get("location")
            .and_then(|value| value.to_str().ok())
            .ok_or("no Location")?
            .to_string();
        let page = self
            .get(&format!("{}{location}", self.base_url))
            .send()
            .await?
            .text()
            .await?;
        Ok(between(&page, "id=\"confirmation-code\">", "<")
            .ok_or("no confirmation code on the page")?
            .to_string())
    }

    /// The page's status, waiting up to `wait` for a change.
    pub async fn status(&self, handle: &str, wait: Duration) -> Result<Value, WalkError> {
        Ok(self
            .get(&format!(
                "{}/oauth/authorize/status?request={handle}&wait={}",
                self.base_url,
                wait.as_secs()
            ))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Waits (at most `limit`) for the decision; the URL the browser is sent to.
    pub async fn decision(&self, handle: &str, limit: Duration) -> Result<String, WalkError> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            let status = self.status(handle, Duration::from_secs(5)).await?;
            if let Some(redirect) = status["redirect"].as_str() {
                return Ok(redirect.to_string());
            }
        }
        Err("no decision in time".into())
    }

    /// POST to the token endpoint; the status and the JSON answer.
    pub async fn token(&self, form: &[(&str, &str)]) -> Result<(u16, Value), WalkError> {
        let response = self
            .http
            .post(format!("{}/oauth/token", self.base_url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form)?)
            .send()
            .await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await?))
    }

    /// Redeems `code`.
    pub async fn redeem(
        &self,
        client_id: &str,
        redirect_uri: &str,
        code: &str,
        verifier: &str,
    ) -> Result<(u16, Value), WalkError> {
        let resource = format!("{}/mcp", self.base_url);
        self.token(&[
            ("grant_type", "authorization_code"),
            ("client_id", client_id),
            ("redirect_uri", redirect_uri),
            ("code", code),
            ("code_verifier", verifier),
            ("resource", &resource),
        ])
        .await
    }

    /// Uses a refresh token.
    pub async fn refresh(
        &self,
        client_id: &str,
        refresh_token: &str,
    ) -> Result<(u16, Value), WalkError> {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("client_id", client_id),
            ("refresh_token", refresh_token),
        ])
        .await
    }
}

/// Waits (at most `limit`) until the sidecar in `state_dir` holds an open request; the newest.
pub async fn wait_for_request(state_dir: &Path, limit: Duration) -> Result<AgentRecord, WalkError> {
    let store = ibkr_agent::StateStore::open(state_dir)?;
    let until = Instant::now() + limit;
    loop {
        let now = now_ms();
        if let Some(record) = ibkr_agent::agents::list(&store, now)?
            .into_iter()
            .find(|record| record.status == AgentStatus::Pending)
        {
            return Ok(record);
        }
        if Instant::now() >= until {
            return Err("no agent request reached the sidecar".into());
        }
        // The request arrives over the relay and is written by the daemon: no signal crosses
        // into this test, so look again shortly.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The owner types `code` on the laptop (what `ibkr-agent sidecar agents approve` does).
pub fn approve_on_laptop(
    state_dir: &Path,
    code: &str,
    scopes: Option<&[String]>,
) -> Result<AgentRecord, WalkError> {
    let store = ibkr_agent::StateStore::open(state_dir)?;
    Ok(ibkr_agent::agents::approve(
        &store,
        code,
        scopes,
        "e2e-owner",
        now_ms(),
    )?)
}

/// What one approval produced.
#[derive(Debug)]
pub struct Approval {
    /// The page's request handle.
    pub handle: String,
    /// The laptop's record of the approved agent.
    pub record: AgentRecord,
    /// The URL the browser is sent to (with the authorization code).
    pub redirect: String,
}

/// The person on the page and the laptop's owner together: open `authorize_url`, name
/// `user`, wait for the request on the laptop in `state_dir`, type the page's code there
/// (granting `scopes`, or what was asked), and wait (at most `limit` each) for the page's
/// answer.
pub async fn approve_as_person_and_owner(
    walk: &Walk,
    authorize_url: &str,
    user: &str,
    state_dir: &Path,
    scopes: Option<&[String]>,
    limit: Duration,
) -> Result<Approval, WalkError> {
    let handle = walk.open_page(authorize_url).await?;
    let code = walk.name_user(&handle, user).await?;
    wait_for_request(state_dir, limit).await?;
    let record = approve_on_laptop(state_dir, &code, scopes)?;
    let redirect = walk.decision(&handle, limit).await?;
    Ok(Approval {
        handle,
        record,
        redirect,
    })
}
