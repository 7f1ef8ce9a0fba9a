//! The authorization server's RFC 8414 metadata: what an MCP client reads after the protected
//! resource metadata names this server, to find where to register, authorize and get tokens.
//! It states exactly what the server supports: the code flow with PKCE S256, public clients,
//! dynamic registration and client ID metadata documents, RFC 9068 tokens signed ES256.

use serde_json::{Value, json};

/// The paths of the server's endpoints, under the gateway's public base URL.
pub const AUTHORIZE_PATH: &str = "/oauth/authorize";
pub const TOKEN_PATH: &str = "/oauth/token";
pub const REGISTER_PATH: &str = "/oauth/register";
pub const REVOKE_PATH: &str = "/oauth/revoke";
pub const JWKS_PATH: &str = "/oauth/jwks.json";

/// The metadata document. `issuer` is the gateway's public base URL (no trailing slash): the
/// value tokens carry in `iss`, and what clients compare the document's `issuer` with.
pub fn document(issuer: &str, scopes_supported: &[String]) -> Value {
    let issuer = issuer.trim_end_matches('/');
    json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}{AUTHORIZE_PATH}"),
        "token_endpoint": format!("{issuer}{TOKEN_PATH}"),
        "registration_endpoint": format!("{issuer}{REGISTER_PATH}"),
        "revocation_endpoint": format!("{issuer}{REVOKE_PATH}"),
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": scopes_supported,
        "client_id_metadata_document_supported": true,
        "authorization_response_iss_parameter_supported": true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_this_issuer_and_only_what_it_supports() {
        let document = document(
            "https://gateway.example/",
            &["ibkr:health:read".to_string()],
        );
        assert_eq!(document["issuer"], "https://gateway.example");
        assert_eq!(
            document["token_endpoint"],
            "https://gateway.example/oauth/token"
        );
        assert_eq!(
            document["code_challenge_methods_supported"],
            json!(["S256"])
        );
        assert_eq!(
            document["grant_types_supported"],
            json!(["authorization_code", "refresh_token"])
        );
        assert_eq!(
            document["token_endpoint_auth_methods_supported"],
            json!(["none"])
        );
        // The gateway's JWKS discovery (crate::oauth::jwks) accepts this document for this
        // issuer: it compares `issuer` exactly, then reads `jwks_uri`.
        assert_eq!(
            document["jwks_uri"],
            "https://gateway.example/oauth/jwks.json"
        );
    }
}
