//! Who may use the console, as pure checks the server applies to every request (and unit
//! tests can reach): the per-start login secret, sessions and their CSRF tokens, the Host
//! header (DNS rebinding), the Origin and Sec-Fetch-Site headers (other pages in the owner's
//! browser, other ports on loopback) and the Cookie header.
//!
//! Why each exists is in docs/console.md ("Security model") and docs/threat-model.md (A51..A55).

use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use shared_safety::ErrorCode;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::time::Instant;
use zeroize::Zeroizing;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "ibkr_console_session";

/// Sessions kept at once; the least recently used goes first. One person with a few browsers.
const MAX_SESSIONS: usize = 8;

/// A session unused for this long is forgotten (the owner opens the console again).
pub const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);

/// 32 random bytes from the OS, shown as 64 lowercase hex digits. Zeroized on drop.
pub struct Token(Zeroizing<String>);

impl Token {
    pub fn random() -> Token {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(bytes.as_mut());
        Token(Zeroizing::new(hex::encode(bytes.as_ref())))
    }

    /// The hex text (for the URL, the cookie or a form field; never for a log).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison with what a request presented.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

impl Clone for Token {
    fn clone(&self) -> Self {
        Token(Zeroizing::new(self.0.as_str().to_string()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// Where the console listens, and so which Host and Origin values are its own.
#[derive(Clone, Debug)]
pub struct OwnAddress {
    hosts: [String; 2],
    origins: [String; 2],
}

impl OwnAddress {
    pub fn new(bound: SocketAddr) -> OwnAddress {
        let port = bound.port();
        let ip = match bound {
            SocketAddr::V4(v4) => v4.ip().to_string(),
            SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        };
        OwnAddress {
            hosts: [format!("{ip}:{port}"), format!("localhost:{port}")],
            origins: [
                format!("http://{ip}:{port}"),
                format!("http://localhost:{port}"),
            ],
        }
    }

    /// `http://127.0.0.1:<port>`: the console's canonical base.
    pub fn base_url(&self) -> &str {
        &self.origins[0]
    }

    /// A request must name the console's own address: a page on a rebound DNS name
    /// (attacker.example resolving to 127.0.0.1) sends its own name, and is refused.
    pub fn check_host(&self, host: Option<&str>) -> Result<(), ErrorCode> {
        match host {
            Some(host)
                if self
                    .hosts
                    .iter()
                    .any(|own| own.eq_ignore_ascii_case(host.trim())) =>
            {
                Ok(())
            }
            _ => Err(ErrorCode::ConsoleHostRefused),
        }
    }

    /// An Origin, when present, must be the console's own; a state-changing request must carry
    /// one. `Origin: null` (sandboxed frames, file pages) is foreign.
    pub fn check_origin(
        &self,
        origin: Option<&str>,
        state_changing: bool,
    ) -> Result<(), ErrorCode> {
        match origin {
            Some(origin)
                if self
                    .origins
                    .iter()
                    .any(|own| own.eq_ignore_ascii_case(origin.trim())) =>
            {
                Ok(())
            }
            Some(_) => Err(ErrorCode::ConsoleOriginRefused),
            None if state_changing => Err(ErrorCode::ConsoleOriginRefused),
            None => Ok(()),
        }
    }
}

/// Fetch metadata: a request another site (or another port on loopback: the same "site" for
/// the browser) started is refused even where it carries no Origin, e.g. an `<img>` or a
/// top-level link to a console page. `none` (typed, bookmarked, opened by the CLI) and
/// `same-origin` pass; browsers that send no such header rely on the other checks.
pub fn check_fetch_site(fetch_site: Option<&str>) -> Result<(), ErrorCode> {
    match fetch_site.map(str::trim) {
        None | Some("none") | Some("same-origin") => Ok(()),
        Some(_) => Err(ErrorCode::ConsoleOriginRefused),
    }
}

/// Every value the Cookie header gives `name` (a page on another loopback port can plant a
/// cookie of the same name: cookies do not keep ports apart, so all are tried).
pub fn cookie_values<'a>(header: &'a str, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    header.split(';').filter_map(move |pair| {
        let (key, value) = pair.trim().split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

/// The `Set-Cookie` value for a new session: HttpOnly (no script reads it), SameSite=Strict
/// (no other site's request carries it), Path=/, and no expiry (gone with the browser session;
/// the daemon forgets it at its stop anyway).
pub fn session_cookie(value: &str) -> String {
    format!("{SESSION_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/")
}

struct Session {
    /// SHA-256 of the cookie value: the table never holds a usable cookie, and a lookup
    /// compares digests in constant time.
    digest: [u8; 32],
    csrf: Token,
    last_used: Instant,
}

/// What a valid session cookie gives a request.
#[derive(Clone, Debug)]
pub struct SessionAccess {
    /// The session's CSRF token, put in every form and required back on every POST.
    pub csrf: Token,
}

impl SessionAccess {
    pub fn check_csrf(&self, presented: Option<&str>) -> Result<(), ErrorCode> {
        match presented {
            Some(token) if self.csrf.matches(token) => Ok(()),
            _ => Err(ErrorCode::ConsoleCsrfInvalid),
        }
    }
}

/// The console's secret for this daemon start and its sessions.
pub struct Gate {
    login: Token,
    sessions: Mutex<Vec<Session>>,
}

impl Gate {
    pub fn new() -> Gate {
        Gate {
            login: Token::random(),
            sessions: Mutex::new(Vec::new()),
        }
    }

    /// The secret the CLI's login link carries.
    pub fn login_secret(&self) -> &Token {
        &self.login
    }

    /// Exchanges the login secret for a new session; returns the cookie value.
    pub fn login(&self, presented: Option<&str>) -> Result<Token, ErrorCode> {
        match presented {
            Some(secret) if self.login.matches(secret) => {}
            _ => return Err(ErrorCode::ConsoleLoginRefused),
        }
        let cookie = Token::random();
        let now = Instant::now();
        let mut sessions = self.sessions.lock().map_err(|_| ErrorCode::InternalError)?;
        sessions.retain(|session| now.saturating_duration_since(session.last_used) < SESSION_IDLE);
        if sessions.len() >= MAX_SESSIONS {
            sessions.sort_by_key(|session| std::cmp::Reverse(session.last_used));
            sessions.truncate(MAX_SESSIONS - 1);
        }
        sessions.push(Session {
            digest: digest(cookie.expose()),
            csrf: Token::random(),
            last_used: now,
        });
        Ok(cookie)
    }

    /// The session a Cookie header names, if any is live.
    pub fn session(&self, cookie_header: Option<&str>) -> Result<SessionAccess, ErrorCode> {
        let header = cookie_header.ok_or(ErrorCode::ConsoleSessionRequired)?;
        let now = Instant::now();
        let mut sessions = self.sessions.lock().map_err(|_| ErrorCode::InternalError)?;
        for value in cookie_values(header, SESSION_COOKIE) {
            let presented = digest(value);
            let found = sessions.iter_mut().find(|session| {
                bool::from(session.digest.ct_eq(&presented))
                    && now.saturating_duration_since(session.last_used) < SESSION_IDLE
            });
            if let Some(session) = found {
                session.last_used = now;
                return Ok(SessionAccess {
                    csrf: session.csrf.clone(),
                });
            }
        }
        Err(ErrorCode::ConsoleSessionRequired)
    }
}

impl Default for Gate {
    fn default() -> Self {
        Gate::new()
    }
}

fn digest(value: &str) -> [u8; 32] {
    Sha256::digest(value.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own() -> OwnAddress {
        OwnAddress::new("127.0.0.1:43117".parse().unwrap())
    }

    #[test]
    fn only_the_consoles_own_host_passes() {
        let own = own();
        for host in ["127.0.0.1:43117", "localhost:43117", "LOCALHOST:43117"] {
            own.check_host(Some(host)).unwrap();
        }
        for host in [
            None,
            Some("attacker.example:43117"),
            Some("127.0.0.1"),
            Some("127.0.0.1:80"),
            Some("localhost:43118"),
            Some("127.0.0.1:43117.attacker.example"),
            Some(""),
        ] {
            assert_eq!(
                own.check_host(host),
                Err(ErrorCode::ConsoleHostRefused),
                "{host:?}"
            );
        }
        let v6 = OwnAddress::new("[::1]:9".parse().unwrap());
        v6.check_host(Some("[::1]:9")).unwrap();
        assert_eq!(v6.base_url(), "http://[::1]:9");
    }

    #[test]
    fn a_foreign_origin_is_refused_and_a_post_must_name_one() {
        let own = own();
        own.check_origin(None, false).unwrap();
        own.check_origin(Some("http://127.0.0.1:43117"), true)
            .unwrap();
        own.check_origin(Some("http://localhost:43117"), true)
            .unwrap();
        assert_eq!(
            own.check_origin(None, true),
            Err(ErrorCode::ConsoleOriginRefused)
        );
        for origin in [
            "http://127.0.0.1:8080",
            "https://127.0.0.1:43117",
            "http://attacker.example",
            "null",
            "",
        ] {
            assert_eq!(
                own.check_origin(Some(origin), false),
                Err(ErrorCode::ConsoleOriginRefused),
                "{origin}"
            );
        }
    }

    #[test]
    fn fetch_metadata_refuses_requests_other_sites_started() {
        check_fetch_site(None).unwrap();
        check_fetch_site(Some("none")).unwrap();
        check_fetch_site(Some("same-origin")).unwrap();
        for site in ["same-site", "cross-site", "weird"] {
            assert_eq!(
                check_fetch_site(Some(site)),
                Err(ErrorCode::ConsoleOriginRefused)
            );
        }
    }

    #[test]
    fn cookies_are_parsed_leniently_and_every_same_named_value_is_seen() {
        let header = "a=1; ibkr_console_session=planted;ibkr_console_session=\"real\" ; b";
        let values: Vec<_> = cookie_values(header, SESSION_COOKIE).collect();
        assert_eq!(values, ["planted", "real"]);
        assert_eq!(cookie_values("", SESSION_COOKIE).count(), 0);
        assert_eq!(
            cookie_values("ibkr_console_session_x=1", SESSION_COOKIE).count(),
            0
        );
        let cookie = session_cookie("abc");
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
            assert!(cookie.contains(attribute), "{cookie}");
        }
    }

    #[test]
    fn the_secret_buys_a_session_whose_csrf_token_is_its_own() {
        let gate = Gate::new();
        let secret = gate.login_secret().expose().to_string();
        assert_eq!(secret.len(), 64);
        assert_eq!(
            gate.login(None).unwrap_err(),
            ErrorCode::ConsoleLoginRefused
        );
        assert_eq!(
            gate.login(Some("00")).unwrap_err(),
            ErrorCode::ConsoleLoginRefused
        );
        let mut wrong = secret.clone();
        wrong.replace_range(63.., if secret.ends_with('0') { "1" } else { "0" });
        assert_eq!(
            gate.login(Some(&wrong)).unwrap_err(),
            ErrorCode::ConsoleLoginRefused
        );

        let cookie = gate.login(Some(&secret)).unwrap();
        assert_ne!(cookie.expose(), secret);
        let header = format!(
            "other=1; {SESSION_COOKIE}=planted; {SESSION_COOKIE}={}",
            cookie.expose()
        );
        let access = gate.session(Some(&header)).unwrap();
        access.check_csrf(Some(access.csrf.expose())).unwrap();
        assert_eq!(access.check_csrf(None), Err(ErrorCode::ConsoleCsrfInvalid));
        assert_eq!(
            access.check_csrf(Some("")),
            Err(ErrorCode::ConsoleCsrfInvalid)
        );

        let second = gate.login(Some(&secret)).unwrap();
        let other = gate
            .session(Some(&format!("{SESSION_COOKIE}={}", second.expose())))
            .unwrap();
        assert_eq!(
            access.check_csrf(Some(other.csrf.expose())),
            Err(ErrorCode::ConsoleCsrfInvalid),
            "one session's token is no good for another"
        );
        assert_eq!(
            gate.session(None).unwrap_err(),
            ErrorCode::ConsoleSessionRequired
        );
        assert_eq!(
            gate.session(Some(&format!("{SESSION_COOKIE}={secret}")))
                .unwrap_err(),
            ErrorCode::ConsoleSessionRequired,
            "the login secret is not a session"
        );
    }

    #[test]
    fn sessions_are_bounded_and_the_oldest_goes() {
        let gate = Gate::new();
        let secret = gate.login_secret().expose().to_string();
        let first = gate.login(Some(&secret)).unwrap();
        let header = |token: &Token| format!("{SESSION_COOKIE}={}", token.expose());
        let mut last = None;
        for _ in 0..MAX_SESSIONS {
            last = Some(gate.login(Some(&secret)).unwrap());
        }
        assert!(gate.session(Some(&header(&first))).is_err());
        assert!(gate.session(Some(&header(&last.unwrap()))).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_session_expires() {
        let gate = Gate::new();
        let secret = gate.login_secret().expose().to_string();
        let cookie = gate.login(Some(&secret)).unwrap();
        let header = format!("{SESSION_COOKIE}={}", cookie.expose());
        tokio::time::advance(SESSION_IDLE - Duration::from_secs(1)).await;
        assert!(gate.session(Some(&header)).is_ok(), "use keeps it alive");
        tokio::time::advance(SESSION_IDLE - Duration::from_secs(1)).await;
        assert!(gate.session(Some(&header)).is_ok());
        tokio::time::advance(SESSION_IDLE).await;
        assert_eq!(
            gate.session(Some(&header)).unwrap_err(),
            ErrorCode::ConsoleSessionRequired
        );
    }
}
