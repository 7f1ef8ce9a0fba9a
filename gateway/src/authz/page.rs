//! The authorization page a person sees in their browser: who is asking, where the answer
//! goes, what it may do; then a user id field; then the confirmation code to type on the
//! laptop. Plain HTML with one small script that waits for the laptop's answer; without
//! scripts the page reloads itself. Every value is HTML-escaped; the page is never framed
//! and its script runs only with this response's nonce.

use super::approvals::{Stage, View};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use rand_core::{OsRng, RngCore};

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:36rem;margin:2rem auto;padding:0 1rem;color:#1b1b1b}\
h1{font-size:1.4rem}dl{display:grid;grid-template-columns:auto 1fr;gap:.3rem 1rem}dt{font-weight:600}\
dd{margin:0;word-break:break-all}.code{font:700 2.2rem ui-monospace,monospace;letter-spacing:.2rem;padding:.6rem 1rem;border:2px solid #1b1b1b;display:inline-block}\
.note{color:#555;font-size:.9rem}input[type=text]{font-size:1rem;padding:.4rem;width:16rem}button{font-size:1rem;padding:.4rem 1rem}\
.warn{background:#fff4d6;padding:.5rem}";

fn page(status: StatusCode, title: &str, body: &str, script: Option<&str>) -> Response {
    let mut nonce_bytes = [0u8; 16];
    OsRng.fill_bytes(&mut nonce_bytes);
    let nonce = base64::engine::general_purpose::STANDARD.encode(nonce_bytes);
    let script = script
        .map(|code| format!("<script nonce=\"{nonce}\">{code}</script>"))
        .unwrap_or_default();
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{title}</title><style>{STYLE}</style></head><body>{body}{script}</body></html>",
        title = escape(title),
    );
    let csp = format!(
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(value) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    response
}

/// A page that only says something went wrong (no redirect: the client could not be trusted
/// with one, RFC 6749 section 4.1.2.1).
pub fn error(status: StatusCode, message: &str) -> Response {
    page(
        status,
        "Cannot connect this agent",
        &format!(
            "<h1>Cannot connect this agent</h1><p id=\"error\">{}</p>\
             <p class=\"note\">Start again from the application that sent you here.</p>",
            escape(message)
        ),
        None,
    )
}

/// An OAuth error found before anyone acted on the page: its RFC name, what it means, and a
/// link back to the client carrying the error (followed only if the person chooses to).
pub fn error_with_return(
    status: StatusCode,
    code: &str,
    description: &str,
    back: &str,
) -> Response {
    page(
        status,
        "Cannot connect this agent",
        &format!(
            "<h1>Cannot connect this agent</h1>\
             <p>Error <code id=\"error-code\">{code}</code>: <span id=\"error\">{description}</span></p>\
             <p class=\"note\">The application that sent you here made a request this gateway \
             does not accept. <a id=\"return\" href=\"{back}\">Return to the application</a> \
             (it is told the error) or start again from it.</p>",
            code = escape(code),
            description = escape(description),
            back = escape(back),
        ),
        None,
    )
}

fn summary(view: &View) -> String {
    let scopes: String = view
        .scopes
        .iter()
        .map(|scope| format!("<li><code>{}</code></li>", escape(scope)))
        .collect();
    let claim = if view.from_document {
        "named by its metadata document"
    } else {
        "as the client calls itself (unverified)"
    };
    format!(
        "<dl><dt>Client</dt><dd id=\"client-name\">{name} <span class=\"note\">({claim})</span></dd>\
         <dt>Client id</dt><dd>{id}</dd>\
         <dt>Sends the answer to</dt><dd id=\"redirect\">{redirect}</dd>\
         <dt>Asks for</dt><dd><ul id=\"scopes\">{scopes}</ul></dd></dl>",
        name = escape(&view.client_name),
        id = escape(&view.client_id),
        redirect = escape(&view.redirect_uri),
    )
}

/// Step 1: who is the user?
pub fn ask_user(view: &View, handle: &str, notice: Option<&str>) -> Response {
    let notice = notice
        .map(|text| format!("<p class=\"warn\" id=\"notice\">{}</p>", escape(text)))
        .unwrap_or_default();
    let body = format!(
        "<h1>An agent asks to use your IBKR sidecar</h1>{summary}{notice}\
         <form method=\"post\" action=\"/oauth/authorize\">\
         <input type=\"hidden\" name=\"request\" value=\"{handle}\">\
         <p><label for=\"user_id\">Your user id on this gateway</label><br>\
         <input type=\"text\" id=\"user_id\" name=\"user_id\" autocomplete=\"username\" required maxlength=\"128\"></p>\
         <p><button type=\"submit\" id=\"continue\">Continue</button></p></form>\
         <p class=\"note\">Nothing is granted here: the owner of the paired laptop approves or \
         denies, and may grant less than is asked.</p>",
        summary = summary(view),
        handle = escape(handle),
    );
    page(StatusCode::OK, "Connect an agent", &body, None)
}

/// Step 2: the code to type on the laptop, then wait.
pub fn waiting(view: &View, handle: &str, code: &str) -> Response {
    let body = format!(
        "<h1>Approve on your laptop</h1>{summary}\
         <p>If this user id has a paired laptop that is online, it now has a request from this \
         agent. Approve it there by typing this code:</p>\
         <p class=\"code\" id=\"confirmation-code\">{code}</p>\
         <pre class=\"note\">ibkr-agent sidecar agents approve {code}</pre>\
         <p class=\"note\">or in the sidecar console. Type the code only if you opened this \
         page yourself. The request expires in a few minutes.</p>\
         <p id=\"status\" class=\"note\">Waiting for the laptop\u{2026}</p>\
         <p><a id=\"continue-link\" hidden>Continue to the application</a></p>\
         <noscript><meta http-equiv=\"refresh\" content=\"3\"></noscript>",
        summary = summary(view),
        code = escape(code),
    );
    // Long-polls the status; goes to the client's redirect URI once decided.
    // A link too: a browser may not follow a script's redirect to an app's own scheme
    // minutes after the last click. An unknown request (expired, or a gateway restart) ends
    // the polling.
    let script = format!(
        "(function(){{var h={handle:?};var st=document.getElementById('status');function poll(){{\
         fetch('/oauth/authorize/status?request='+h+'&wait=20',{{cache:'no-store',credentials:'same-origin'}})\
         .then(function(r){{return r.json()}}).then(function(s){{if(s.redirect){{st.textContent='Decided: '+s.stage+'.';\
         var a=document.getElementById('continue-link');a.href=s.redirect;a.hidden=false;window.location.replace(s.redirect);}}\
         else if(s.stage==='unknown'){{st.textContent='This request is no longer known here (it expired). Start again from the application.';}}\
         else{{setTimeout(poll,200)}}}}).catch(function(){{setTimeout(poll,2000)}})}}poll();}})();",
        handle = handle,
    );
    page(
        StatusCode::OK,
        "Approve on your laptop",
        &body,
        Some(&script),
    )
}

/// Renders `view` at its stage (a finished one is a redirect instead, see the routes).
pub fn for_stage(view: &View, handle: &str) -> Response {
    match &view.stage {
        Stage::Opened => ask_user(view, handle, None),
        Stage::Asked { code } => waiting(view, handle, code),
        Stage::Finished { .. } => error(StatusCode::OK, "This request is finished."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_shown_is_escaped() {
        assert_eq!(
            escape("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
        let view = View {
            browser: [0; 32],
            client_name: "<img src=x onerror=alert(1)>".into(),
            client_id: "reg.x".into(),
            from_document: false,
            redirect_uri: "http://127.0.0.1/cb?a=\"b\"".into(),
            scopes: vec!["ibkr:health:read".into()],
            stage: Stage::Opened,
        };
        let response = ask_user(&view, "00ff", None);
        assert_eq!(
            response.headers()[header::X_FRAME_OPTIONS],
            HeaderValue::from_static("DENY")
        );
        let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .to_string();
        assert!(csp.contains("frame-ancestors 'none'") && csp.contains("script-src 'nonce-"));
        let text = summary(&view);
        assert!(!text.contains("<img"), "{text}");
        assert!(text.contains("&lt;img src=x onerror=alert(1)&gt;"));
    }
}
