//! Where a running daemon tells `ibkr-agent sidecar console` how to reach its console: two
//! 0600 files in the state directory, written at start and removed at the stop.
//!
//! - `console.json`: the console's address and its login link (with the per-start secret).
//! - `console-open.html`: a page that forwards the browser to the login link. The CLI hands
//!   the browser this file's path rather than the link, so the secret never appears on a
//!   command line, where other users of the laptop can read it (`ps`, `/proc`).

use super::security::Token;
use crate::error::SidecarError;
use serde::{Deserialize, Serialize};
use shared_safety::ErrorCode;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub const CONSOLE_FILE: &str = "console.json";
pub const OPENER_FILE: &str = "console-open.html";

/// What `console.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleInfo {
    /// `http://127.0.0.1:<port>/`.
    pub url: String,
    /// The URL that logs a browser in (carries the secret; valid until the daemon stops).
    pub login_url: String,
    pub pid: u32,
    pub started_at: i64,
}

/// The published files; dropping it removes them (a graceful stop, or the daemon's future
/// dropped). A killed process leaves them; the CLI then finds nothing listening.
#[derive(Debug)]
pub struct Published {
    dir: PathBuf,
    /// What this daemon wrote: a second daemon on the same state directory may have replaced
    /// the files since, and its files are not ours to remove.
    login_url: zeroize::Zeroizing<String>,
}

impl Drop for Published {
    fn drop(&mut self) {
        let ours = read(&self.dir).is_ok_and(|info| *info.login_url == **self.login_url);
        if ours {
            for name in [CONSOLE_FILE, OPENER_FILE] {
                let _ = std::fs::remove_file(self.dir.join(name));
            }
        }
    }
}

/// Writes both files (0600, replaced whole).
pub fn publish(state_dir: &Path, base_url: &str, secret: &Token) -> std::io::Result<Published> {
    let info = ConsoleInfo {
        url: format!("{base_url}/"),
        login_url: format!("{base_url}/login?secret={}", secret.expose()),
        pid: std::process::id(),
        started_at: crate::clock::now_unix_seconds(),
    };
    let json =
        zeroize::Zeroizing::new(serde_json::to_vec_pretty(&info).map_err(std::io::Error::other)?);
    let published = Published {
        dir: state_dir.to_path_buf(),
        login_url: zeroize::Zeroizing::new(info.login_url.clone()),
    };
    crate::secret_file::replace(state_dir, CONSOLE_FILE, &json)?;
    let opener = zeroize::Zeroizing::new(opener_page(&info.login_url).into_string());
    crate::secret_file::replace(state_dir, OPENER_FILE, opener.as_bytes())?;
    Ok(published)
}

fn opener_page(login_url: &str) -> maud::Markup {
    maud::html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(format!("0;url={login_url}"));
                title { "Opening the IBKR agent console" }
            }
            body { p { a href=(login_url) { "Open the IBKR agent console" } } }
        }
    }
}

/// Reads `console.json`, refusing one other users could read (like a key file).
pub fn read(state_dir: &Path) -> Result<ConsoleInfo, SidecarError> {
    let path = state_dir.join(CONSOLE_FILE);
    let not_running =
        |why: &str| SidecarError::new(ErrorCode::ConsoleNotRunning, format!("({why})"));
    let metadata = match std::fs::metadata(&path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(not_running(
                "no console.json in the state directory: no daemon runs, or it runs with \
                 console.enabled: false",
            ));
        }
        Err(error) => {
            return Err(SidecarError::state(format!(
                "(cannot read {CONSOLE_FILE}: {})",
                error.kind()
            )));
        }
    };
    if metadata.mode() & 0o077 != 0 {
        return Err(SidecarError::state(format!(
            "({CONSOLE_FILE} is readable by other users; a daemon never writes it so: remove it \
             and restart the daemon)"
        )));
    }
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(|error| {
        SidecarError::state(format!("(cannot read {CONSOLE_FILE}: {})", error.kind()))
    })?);
    serde_json::from_str(&text)
        .map_err(|_| not_running("console.json is not a daemon's console file"))
}

/// The opener page's path (for the browser).
pub fn opener_path(state_dir: &Path) -> PathBuf {
    state_dir.join(OPENER_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_private_readable_back_and_gone_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            read(dir.path()).unwrap_err().code(),
            ErrorCode::ConsoleNotRunning
        );
        let secret = Token::random();
        let published = publish(dir.path(), "http://127.0.0.1:4711", &secret).unwrap();
        for name in [CONSOLE_FILE, OPENER_FILE] {
            let mode = std::fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        let info = read(dir.path()).unwrap();
        assert_eq!(info.url, "http://127.0.0.1:4711/");
        assert_eq!(
            info.login_url,
            format!("http://127.0.0.1:4711/login?secret={}", secret.expose())
        );
        let opener = std::fs::read_to_string(opener_path(dir.path())).unwrap();
        assert!(opener.contains(&info.login_url));
        drop(published);
        assert!(!dir.path().join(CONSOLE_FILE).exists());
        assert!(!dir.path().join(OPENER_FILE).exists());
    }

    #[test]
    fn a_daemon_leaves_the_files_of_another_that_replaced_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let first = publish(dir.path(), "http://127.0.0.1:4711", &Token::random()).unwrap();
        let second = publish(dir.path(), "http://127.0.0.1:4712", &Token::random()).unwrap();
        drop(first);
        assert_eq!(read(dir.path()).unwrap().url, "http://127.0.0.1:4712/");
        drop(second);
        assert!(!dir.path().join(CONSOLE_FILE).exists());
    }

    #[test]
    fn a_file_others_can_read_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let _published = publish(dir.path(), "http://127.0.0.1:4711", &Token::random()).unwrap();
        let path = dir.path().join(CONSOLE_FILE);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            read(dir.path()).unwrap_err().code(),
            ErrorCode::StateStoreError
        );
    }
}
