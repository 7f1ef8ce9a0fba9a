//! Clients of the authorization server: their metadata, from RFC 7591 dynamic registration or
//! from a Client ID Metadata Document, checked the same way, and the redirect URI rule.
//!
//! - Public clients only (`token_endpoint_auth_method: none`): MCP clients run on the user's
//!   machines and cannot keep a secret; PKCE binds each code to the client that asked.
//! - Grant types `authorization_code` and `refresh_token`, response type `code`, nothing else.
//! - Redirect URIs: `https`, or `http` to a loopback address (RFC 8252 section 7.3), or a
//!   private-use scheme containing a dot (RFC 8252 section 7.1, e.g. `com.example.app:/cb`).
//!   Never a fragment, never user information, at most [`MAX_REDIRECT_URIS`].
//! - A request's redirect URI must equal a registered one exactly, except that the port of an
//!   `http` loopback URI is free (RFC 8252 section 7.3: native apps listen on whatever port
//!   the system gives them).

use super::errors::{OAuthError, OAuthErrorCode};
use serde::Deserialize;
use url::{Host, Url};

/// Most redirect URIs one client registers.
pub const MAX_REDIRECT_URIS: usize = 8;
/// Longest redirect URI accepted.
pub const MAX_REDIRECT_URI_BYTES: usize = 2_048;
/// Longest client name kept (longer ones are cut; control characters are dropped).
pub const MAX_CLIENT_NAME_CHARS: usize = 100;

/// Client metadata as a client sends it (RFC 7591 section 2; the fields this server reads).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ClientMetadata {
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    pub client_name: Option<String>,
    pub token_endpoint_auth_method: Option<String>,
    pub grant_types: Option<Vec<String>>,
    pub response_types: Option<Vec<String>>,
    pub scope: Option<String>,
    /// Set in a Client ID Metadata Document: must be the URL it was fetched from.
    pub client_id: Option<String>,
}

/// Client metadata that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedClient {
    pub client_name: String,
    pub redirect_uris: Vec<String>,
}

fn invalid_metadata(description: impl Into<String>) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidClientMetadata, description)
}

fn invalid_redirect(description: impl Into<String>) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidRedirectUri, description)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// Checks one redirect URI a client registers.
pub fn check_redirect_uri(text: &str) -> Result<Url, OAuthError> {
    if text.len() > MAX_REDIRECT_URI_BYTES {
        return Err(invalid_redirect("A redirect URI is too long."));
    }
    let url = Url::parse(text)
        .map_err(|_| invalid_redirect(format!("{text:?} is not an absolute URI.")))?;
    // Kept and shown exactly as the browser will be sent there: a URI a parser would rewrite
    // (an international host, a dropped tab) could look like one place and lead to another.
    if url.as_str() != text {
        return Err(invalid_redirect(format!(
            "{text:?} must be written in its normalized form: {:?}.",
            url.as_str()
        )));
    }
    if url.fragment().is_some() {
        return Err(invalid_redirect("A redirect URI must not have a fragment."));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid_redirect(
            "A redirect URI must not carry user information.",
        ));
    }
    let acceptable = match url.scheme() {
        "https" => url.host().is_some(),
        "http" => is_loopback(&url),
        // A private-use scheme names its app in reverse domain order (RFC 8252 7.1).
        scheme => scheme.contains('.') && !matches!(scheme, "javascript" | "data" | "file"),
    };
    if !acceptable {
        return Err(invalid_redirect(format!(
            "{text:?} must be https, http to a loopback address, or an app's own scheme (like com.example.app:/callback)."
        )));
    }
    Ok(url)
}

/// Checks a client's metadata (from registration, or from its metadata document).
pub fn check_metadata(metadata: &ClientMetadata) -> Result<CheckedClient, OAuthError> {
    if metadata.redirect_uris.is_empty() {
        return Err(invalid_redirect(
            "redirect_uris must name at least one URI.",
        ));
    }
    if metadata.redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(invalid_redirect(format!(
            "At most {MAX_REDIRECT_URIS} redirect URIs may be registered."
        )));
    }
    for uri in &metadata.redirect_uris {
        check_redirect_uri(uri)?;
    }
    match metadata.token_endpoint_auth_method.as_deref() {
        None | Some("none") => {}
        Some(other) => {
            return Err(invalid_metadata(format!(
                "token_endpoint_auth_method {other:?} is not supported: this server registers public clients (\"none\") that use PKCE."
            )));
        }
    }
    if let Some(grants) = &metadata.grant_types
        && let Some(other) = grants
            .iter()
            .find(|grant| !matches!(grant.as_str(), "authorization_code" | "refresh_token"))
    {
        return Err(invalid_metadata(format!(
            "grant_type {other:?} is not supported (authorization_code and refresh_token are)."
        )));
    }
    if let Some(responses) = &metadata.response_types
        && responses.iter().any(|response| response != "code")
    {
        return Err(invalid_metadata(
            "Only the response type \"code\" is supported.",
        ));
    }
    let client_name: String = metadata
        .client_name
        .as_deref()
        .unwrap_or("an unnamed client")
        .chars()
        .filter(|c| !protocol::agents::is_display_trap(*c))
        .take(MAX_CLIENT_NAME_CHARS)
        .collect();
    let client_name = match client_name.trim() {
        "" => "an unnamed client".to_string(),
        name => name.to_string(),
    };
    Ok(CheckedClient {
        client_name,
        redirect_uris: metadata.redirect_uris.clone(),
    })
}

/// Whether a request's `redirect_uri` is one of `registered`: exactly, or (for an `http`
/// loopback URI) exactly but for the port.
pub fn redirect_matches(registered: &[String], requested: &str) -> bool {
    if registered.iter().any(|uri| uri == requested) {
        return true;
    }
    let Ok(requested) = Url::parse(requested) else {
        return false;
    };
    if requested.scheme() != "http" || !is_loopback(&requested) {
        return false;
    }
    registered.iter().any(|uri| {
        let Ok(mut registered) = Url::parse(uri) else {
            return false;
        };
        if registered.scheme() != "http" || !is_loopback(&registered) {
            return false;
        }
        if registered.set_port(requested.port()).is_err() {
            return false;
        }
        registered == requested
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(uris: &[&str]) -> ClientMetadata {
        ClientMetadata {
            redirect_uris: uris.iter().map(|uri| uri.to_string()).collect(),
            client_name: Some("Claude Code".into()),
            ..ClientMetadata::default()
        }
    }

    #[test]
    fn redirect_uris_are_https_loopback_http_or_an_apps_own_scheme() {
        for good in [
            "https://client.example/callback",
            "http://127.0.0.1:33418/callback",
            "http://[::1]/cb",
            "http://localhost:8080/oauth/callback",
            "com.example.app:/callback",
        ] {
            assert!(check_redirect_uri(good).is_ok(), "{good}");
        }
        for bad in [
            "http://client.example/callback",
            "https://client.example/callback#fragment",
            "https://user:pass@client.example/callback",
            "javascript:alert(1)",
            "myapp:/callback",
            "/relative/callback",
            "",
        ] {
            let refused = check_redirect_uri(bad).unwrap_err();
            assert_eq!(refused.code.as_str(), "invalid_redirect_uri", "{bad}");
        }
    }

    #[test]
    fn only_public_code_clients_register() {
        assert_eq!(
            check_metadata(&metadata(&["http://127.0.0.1/cb"])).unwrap(),
            CheckedClient {
                client_name: "Claude Code".into(),
                redirect_uris: vec!["http://127.0.0.1/cb".into()],
            }
        );
        let mut secret = metadata(&["http://127.0.0.1/cb"]);
        secret.token_endpoint_auth_method = Some("client_secret_basic".into());
        let mut implicit = metadata(&["http://127.0.0.1/cb"]);
        implicit.response_types = Some(vec!["token".into()]);
        let mut password = metadata(&["http://127.0.0.1/cb"]);
        password.grant_types = Some(vec!["password".into()]);
        for refused in [secret, implicit, password] {
            assert_eq!(
                check_metadata(&refused).unwrap_err().code.as_str(),
                "invalid_client_metadata"
            );
        }
        assert_eq!(
            check_metadata(&metadata(&[])).unwrap_err().code.as_str(),
            "invalid_redirect_uri"
        );
        let too_many: Vec<String> = (0..=MAX_REDIRECT_URIS)
            .map(|n| format!("http://127.0.0.1/cb{n}"))
            .collect();
        let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
        assert!(check_metadata(&metadata(&refs)).is_err());
    }

    #[test]
    fn a_name_shown_to_the_owner_is_bounded_and_printable() {
        let mut hostile = metadata(&["http://127.0.0.1/cb"]);
        hostile.client_name = Some(format!("Trusted\u{0}\u{1b}[2J{}", "x".repeat(500)));
        let checked = check_metadata(&hostile).unwrap();
        assert!(checked.client_name.starts_with("Trusted[2J"));
        assert_eq!(checked.client_name.chars().count(), MAX_CLIENT_NAME_CHARS);
        let mut blank = metadata(&["http://127.0.0.1/cb"]);
        blank.client_name = Some(" \u{7} ".into());
        assert_eq!(
            check_metadata(&blank).unwrap().client_name,
            "an unnamed client"
        );
    }

    #[test]
    fn redirects_match_exactly_except_a_loopback_port() {
        let registered = vec![
            "http://127.0.0.1/callback".to_string(),
            "https://client.example/cb".to_string(),
        ];
        assert!(redirect_matches(
            &registered,
            "http://127.0.0.1:51234/callback"
        ));
        assert!(redirect_matches(&registered, "http://127.0.0.1/callback"));
        assert!(redirect_matches(&registered, "https://client.example/cb"));
        for refused in [
            "http://127.0.0.1:51234/other",
            "http://127.0.0.1:51234/callback?extra=1",
            "http://localhost:51234/callback",
            "https://client.example:8443/cb",
            "https://client.example/cb/",
            "https://client.example/CB",
            "http://127.0.0.2:51234/callback",
        ] {
            assert!(!redirect_matches(&registered, refused), "{refused}");
        }
    }
}
