//! URL policy shared by every outbound connection of the sidecar.
//!
//! Plain-text schemes (`http`, `ws`) are allowed only towards loopback hosts: on the laptop
//! itself nothing can observe the traffic, anywhere else it would travel in the clear. The
//! CPGW's self-signed certificate is likewise accepted only on loopback.

use url::{Host, Url};

/// True for `localhost`, `127.0.0.0/8` and `::1`.
pub fn is_loopback_host(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name == "localhost"
        }
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        None => false,
    }
}

/// The two transport families the sidecar dials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlKind {
    /// `https`, or `http` to a loopback host.
    Http,
    /// `wss`, or `ws` to a loopback host.
    WebSocket,
}

/// Why a URL was refused; the caller turns it into a CONFIG_INVALID naming its key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlPolicyError {
    #[error("is not a valid absolute URL")]
    Unparsable,
    #[error("must use {expected}")]
    WrongScheme { expected: &'static str },
    #[error("uses a plain-text scheme towards a non-loopback host; use {secure}")]
    PlainTextOffLoopback { secure: &'static str },
    #[error("must not carry a username, password, query or fragment")]
    ExtraParts,
}

/// Parses and checks a URL against the policy for its kind.
pub fn checked_url(text: &str, kind: UrlKind) -> Result<Url, UrlPolicyError> {
    let url = Url::parse(text.trim()).map_err(|_| UrlPolicyError::Unparsable)?;
    if url.host().is_none() {
        return Err(UrlPolicyError::Unparsable);
    }
    // Credentials in a URL would end up in logs and process listings.
    if !url.username().is_empty()
        || url.password().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(UrlPolicyError::ExtraParts);
    }
    let (plain, secure) = match kind {
        UrlKind::Http => ("http", "https"),
        UrlKind::WebSocket => ("ws", "wss"),
    };
    let scheme = url.scheme();
    if scheme == secure {
        return Ok(url);
    }
    if scheme == plain {
        if is_loopback_host(&url) {
            return Ok(url);
        }
        return Err(UrlPolicyError::PlainTextOffLoopback { secure });
    }
    Err(UrlPolicyError::WrongScheme {
        expected: match kind {
            UrlKind::Http => "https (or http to a loopback host)",
            UrlKind::WebSocket => "wss (or ws to a loopback host)",
        },
    })
}

/// `http://h/base` -> `ws://h/base/relay`, `https://h/base` -> `wss://h/base/relay`.
pub fn relay_url_for_gateway(base: &Url) -> Option<String> {
    let scheme = match base.scheme() {
        "http" => "ws",
        "https" => "wss",
        _ => return None,
    };
    let rest = base.as_str().strip_prefix(base.scheme())?;
    Some(format!("{scheme}{}/relay", rest.trim_end_matches('/')))
}

/// `base` without a trailing slash, for joining endpoint paths.
pub fn join(base: &Url, path: &str) -> String {
    format!("{}{}", base.as_str().trim_end_matches('/'), path)
}

/// `scheme://host:port` of a URL: where a person finds a local service, without the path.
pub fn origin_text(url: &Url) -> String {
    let host = match url.host() {
        Some(Host::Ipv6(ip)) => format!("[{ip}]"),
        Some(host) => host.to_string(),
        None => String::new(),
    };
    match url.port_or_known_default() {
        Some(port) => format!("{}://{}:{}", url.scheme(), host, port),
        None => format!("{}://{}", url.scheme(), host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_only_on_loopback() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://localhost:1/x",
            "http://[::1]:5000/v1/api",
            "https://gateway.example.com",
        ] {
            assert!(checked_url(ok, UrlKind::Http).is_ok(), "{ok}");
        }
        assert_eq!(
            checked_url("http://gateway.example.com", UrlKind::Http),
            Err(UrlPolicyError::PlainTextOffLoopback { secure: "https" })
        );
        assert!(checked_url("ws://10.0.0.1/relay", UrlKind::WebSocket).is_err());
        assert!(checked_url("ws://127.0.0.1:9/relay", UrlKind::WebSocket).is_ok());
        assert!(checked_url("wss://g.example.com/relay", UrlKind::WebSocket).is_ok());
        assert!(checked_url("ftp://127.0.0.1", UrlKind::Http).is_err());
        assert!(checked_url("https://u:p@g.example.com", UrlKind::Http).is_err());
        assert!(checked_url("not a url", UrlKind::Http).is_err());
        // A hostname that merely starts with localhost is not loopback.
        assert!(checked_url("http://localhost.evil.example", UrlKind::Http).is_err());
    }

    #[test]
    fn relay_url_is_derived_from_the_gateway_base() {
        let base = Url::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            relay_url_for_gateway(&base).as_deref(),
            Some("ws://127.0.0.1:8080/relay")
        );
        let base = Url::parse("https://gw.example.com/ibkr/").unwrap();
        assert_eq!(
            relay_url_for_gateway(&base).as_deref(),
            Some("wss://gw.example.com/ibkr/relay")
        );
        assert_eq!(
            join(&base, "/pair/start"),
            "https://gw.example.com/ibkr/pair/start"
        );
    }

    #[test]
    fn origin_drops_the_path() {
        let url = Url::parse("https://localhost:5000/v1/api").unwrap();
        assert_eq!(origin_text(&url), "https://localhost:5000");
        let url = Url::parse("https://[::1]/v1/api").unwrap();
        assert_eq!(origin_text(&url), "https://[::1]:443");
    }
}
