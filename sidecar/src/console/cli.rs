//! `ibkr-agent sidecar console`: finds the running daemon's console, prints its address and
//! opens it in the browser (see docs/sidecar-cli.md).

use super::file::{self, ConsoleInfo};
use crate::error::SidecarError;
use serde_json::json;
use shared_safety::ErrorCode;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ConsoleArgs {
    /// Only print the address; do not open a browser.
    #[arg(long)]
    pub no_open: bool,
}

/// How long the CLI waits to see the console answer a connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn command(state_dir: &Path, args: &ConsoleArgs, json: bool) -> Result<(), SidecarError> {
    let info = file::read(state_dir)?;
    check_listening(&info)?;
    let opened = !args.no_open && open_browser(&file::opener_path(state_dir));
    if json {
        // The login link is the point of this command; it is valid only until the daemon
        // stops and only from this laptop.
        crate::cli::print_json_value(&json!({
            "url": info.url,
            "login_url": info.login_url,
            "opened": opened,
        }));
    } else {
        println!("Console: {}", info.url);
        println!(
            "Open this link to log in (it works until the daemon stops; keep it to yourself):"
        );
        println!("  {}", info.login_url);
        if opened {
            println!("Opened in your browser.");
        } else if !args.no_open {
            println!("No browser could be opened here; open the link above yourself.");
        }
    }
    Ok(())
}

/// A file left by a killed daemon names a port nothing (or something else) listens on.
fn check_listening(info: &ConsoleInfo) -> Result<(), SidecarError> {
    let address = url::Url::parse(&info.url)
        .ok()
        .and_then(|url| url.socket_addrs(|| None).ok())
        .and_then(|addrs| {
            addrs
                .into_iter()
                .find(|addr: &SocketAddr| addr.ip().is_loopback())
        });
    let Some(address) = address else {
        return Err(SidecarError::new(
            ErrorCode::ConsoleNotRunning,
            "(console.json names no loopback address)",
        ));
    };
    TcpStream::connect_timeout(&address, PROBE_TIMEOUT).map_err(|_| {
        SidecarError::new(
            ErrorCode::ConsoleNotRunning,
            format!(
                "(console.json names {address}, where nothing answers: the daemon that wrote it \
                 is gone)"
            ),
        )
    })?;
    Ok(())
}

/// Opens `page` with the desktop's opener, where there is a desktop. The browser gets the
/// opener page's path, never the secret link (see [`super::file`]).
fn open_browser(page: &Path) -> bool {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        // Without a display, xdg-open would start a text browser in this terminal.
        if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
            return false;
        }
        "xdg-open"
    };
    std::process::Command::new(opener)
        .arg(page)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_file_whose_daemon_is_gone_says_so() {
        // A port nothing listens on: bind one, note it, free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let info = ConsoleInfo {
            url: format!("http://127.0.0.1:{port}/"),
            login_url: String::new(),
            pid: 1,
            started_at: 0,
        };
        let error = check_listening(&info).unwrap_err();
        assert_eq!(error.code(), ErrorCode::ConsoleNotRunning);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let live = ConsoleInfo {
            url: format!("http://{}/", listener.local_addr().unwrap()),
            ..info
        };
        check_listening(&live).unwrap();
    }
}
