//! The sidecar's one-word summary of the local CPGW session, pushed to the gateway in
//! `Frame::SidecarStatus` and reported by `ibkr_health`.

use super::client::CpgwError;
use super::types::AuthStatus;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerState {
    /// Authenticated brokerage session: broker tools can run.
    Ready,
    /// CPGW runs but nobody is logged in (or the session lapsed): a person must log in in a
    /// browser on the laptop.
    LoginRequired,
    /// CPGW does not answer (not started, wrong port, hung).
    Unreachable,
    /// Another session (TWS, the mobile app, another CPGW) competes for the brokerage session.
    Competing,
    /// IBKR answered 429: requests are held back until its penalty period ends.
    RateLimited,
    /// Not checked yet, or CPGW answered something we could not interpret.
    Unknown,
}

impl BrokerState {
    /// The wire word (`ready`, `login_required`, `unreachable`, `competing`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            BrokerState::Ready => "ready",
            BrokerState::LoginRequired => "login_required",
            BrokerState::Unreachable => "unreachable",
            BrokerState::Competing => "competing",
            BrokerState::RateLimited => "rate_limited",
            BrokerState::Unknown => "unknown",
        }
    }

    /// Classifies an `auth/status` answer.
    pub fn from_auth(result: &Result<AuthStatus, CpgwError>) -> BrokerState {
        match result {
            Ok(status) if status.authenticated && !status.competing => BrokerState::Ready,
            Ok(status) if status.competing => BrokerState::Competing,
            Ok(_) => BrokerState::LoginRequired,
            Err(CpgwError::NotAuthenticated) => BrokerState::LoginRequired,
            Err(CpgwError::Unreachable | CpgwError::Timeout) => BrokerState::Unreachable,
            Err(CpgwError::Http(_) | CpgwError::Malformed) => BrokerState::Unknown,
            Err(CpgwError::RateLimited) => BrokerState::RateLimited,
        }
    }

    /// What the person should do next, or `None` when nothing is needed. `location` is where
    /// CPGW listens (`https://localhost:5000`).
    pub fn next_step(self, location: &str) -> Option<String> {
        match self {
            BrokerState::Ready => None,
            BrokerState::LoginRequired => Some(format!(
                "Log in to the IBKR Client Portal Gateway at {location} in a browser on the laptop \
                 running the sidecar (with 2FA). Nothing logs in for you."
            )),
            BrokerState::Unreachable => Some(format!(
                "Start the IBKR Client Portal Gateway on the laptop (bin/run.sh root/conf.yaml) so \
                 that it answers at {location}, or fix sidecar.local_client_portal_base_url."
            )),
            BrokerState::Competing => Some(
                "Another IBKR session (TWS, the mobile app or another Client Portal login) holds \
                 the brokerage session. Close it; the sidecar then reopens the session by itself."
                    .to_string(),
            ),
            BrokerState::RateLimited => Some(
                "IBKR answered 'too many requests': the sidecar holds every request to the Client \
                 Portal Gateway back for up to 15 minutes. Check that no other program on the \
                 laptop calls it in a loop."
                    .to_string(),
            ),
            BrokerState::Unknown => Some(format!(
                "The sidecar could not read the Client Portal Gateway's state; check it at {location} \
                 on the laptop."
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(authenticated: bool, connected: bool, competing: bool) -> AuthStatus {
        AuthStatus {
            authenticated,
            connected,
            competing,
        }
    }

    #[test]
    fn classification() {
        assert_eq!(
            BrokerState::from_auth(&Ok(status(true, true, false))),
            BrokerState::Ready
        );
        assert_eq!(
            BrokerState::from_auth(&Ok(status(false, true, false))),
            BrokerState::LoginRequired
        );
        assert_eq!(
            BrokerState::from_auth(&Ok(status(true, true, true))),
            BrokerState::Competing
        );
        assert_eq!(
            BrokerState::from_auth(&Err(CpgwError::NotAuthenticated)),
            BrokerState::LoginRequired
        );
        assert_eq!(
            BrokerState::from_auth(&Err(CpgwError::Timeout)),
            BrokerState::Unreachable
        );
        assert_eq!(
            BrokerState::from_auth(&Err(CpgwError::Http(500))),
            BrokerState::Unknown
        );
        assert!(
            BrokerState::Ready
                .next_step("https://localhost:5000")
                .is_none()
        );
        assert!(
            BrokerState::LoginRequired
                .next_step("https://localhost:5000")
                .unwrap_or_default()
                .contains("https://localhost:5000")
        );
    }
}
