//! Where the sidecar keeps its state: `--state-dir`, else `$IBKR_AGENT_HOME`, else the user's
//! config directory (`$XDG_CONFIG_HOME/ibkr-agent` or `~/.config/ibkr-agent`).
//!
//! The directory holds the identity key, so it is created 0700 and tightened to 0700 if it
//! already exists.

use crate::error::SidecarError;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The identity key file: 32 secret bytes, mode 0600.
pub const IDENTITY_KEY_FILE: &str = "identity.key";
/// The SQLite state store.
pub const STATE_DB_FILE: &str = "state.db";

/// Resolves the state directory without touching the file system.
pub fn resolve_state_dir(flag: Option<&Path>) -> Result<PathBuf, SidecarError> {
    if let Some(dir) = flag {
        return Ok(dir.to_path_buf());
    }
    resolve_from_env(|name| std::env::var_os(name))
}

fn resolve_from_env(
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Result<PathBuf, SidecarError> {
    let non_empty = |name: &str| var(name).filter(|value| !value.is_empty());
    if let Some(home) = non_empty("IBKR_AGENT_HOME") {
        return Ok(PathBuf::from(home));
    }
    if let Some(config) = non_empty("XDG_CONFIG_HOME") {
        let config = PathBuf::from(config);
        // The XDG spec says relative values are invalid and must be ignored.
        if config.is_absolute() {
            return Ok(config.join("ibkr-agent"));
        }
    }
    if let Some(home) = non_empty("HOME") {
        return Ok(PathBuf::from(home).join(".config").join("ibkr-agent"));
    }
    Err(SidecarError::flag(
        "(no state directory: pass --state-dir or set IBKR_AGENT_HOME)",
    ))
}

/// Creates the state directory (0700) if needed and makes sure only the owner can enter it.
pub fn ensure_state_dir(dir: &Path) -> Result<(), SidecarError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| {
            SidecarError::state(format!(
                "(cannot create the state directory: {})",
                error.kind()
            ))
        })?;
    let metadata = std::fs::metadata(dir).map_err(|error| {
        SidecarError::state(format!(
            "(cannot read the state directory: {})",
            error.kind()
        ))
    })?;
    if !metadata.is_dir() {
        return Err(SidecarError::state(
            "(the state directory is not a directory)",
        ));
    }
    if metadata.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|error| {
            SidecarError::state(format!(
                "(cannot restrict the state directory to its owner: {})",
                error.kind()
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn resolution_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| OsString::from(value))
            }
        };
        assert_eq!(
            resolve_from_env(env(&[
                ("IBKR_AGENT_HOME", "/a"),
                ("XDG_CONFIG_HOME", "/b"),
                ("HOME", "/c")
            ]))
            .unwrap(),
            PathBuf::from("/a")
        );
        assert_eq!(
            resolve_from_env(env(&[("XDG_CONFIG_HOME", "/b"), ("HOME", "/c")])).unwrap(),
            PathBuf::from("/b/ibkr-agent")
        );
        assert_eq!(
            resolve_from_env(env(&[("XDG_CONFIG_HOME", "rel"), ("HOME", "/c")])).unwrap(),
            PathBuf::from("/c/.config/ibkr-agent")
        );
        assert!(resolve_from_env(env(&[])).is_err());
        assert_eq!(
            resolve_state_dir(Some(Path::new("/flag"))).unwrap(),
            PathBuf::from("/flag")
        );
    }

    #[test]
    fn state_dir_is_owner_only() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("nested").join("state");
        ensure_state_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_state_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
