//! The gateway's long-term identity: an x25519 static key (what sidecars pin at pairing) and
//! the instance id (what they name in every handshake). Both are created on first start in
//! `state_dir` and reused afterwards, so a restart keeps every pairing valid.
//!
//! The key file holds the 32 secret bytes as hex, is created 0600 through a temporary file and
//! a rename (never half-written), and is refused if group or others can read it.

use crate::store::ensure_state_dir;
use protocol::identity::StaticKeypair;
use rand_core::{OsRng, RngCore};
use std::io::Write;
use std::path::Path;
use zeroize::Zeroizing;

/// The gateway's static key, in `state_dir` (replicas of one cluster hold the same one).
pub const KEY_FILE: &str = "gateway.key";
const INSTANCE_FILE: &str = "instance_id";
/// The audit HMAC secret, when none is given in the environment.
pub const AUDIT_SECRET_FILE: &str = "audit_hmac.key";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is readable by group or others; run chmod 600 on it")]
    Permissions(String),
    #[error("{0} is corrupt: expected 64 hex characters")]
    Corrupt(String),
}

fn io_error(path: &Path, source: std::io::Error) -> KeyError {
    KeyError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `contents` to `path` atomically with mode 0600. Fails if `path` already exists, so
/// two processes starting at once cannot overwrite each other's key.
pub(crate) fn write_private_file_new(path: &Path, contents: &[u8]) -> Result<(), KeyError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut suffix = [0u8; 8];
    OsRng.fill_bytes(&mut suffix);
    let temp = dir.join(format!(".tmp-{}", hex::encode(suffix)));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options.open(&temp).map_err(|e| io_error(&temp, e))?;
        file.write_all(contents).map_err(|e| io_error(&temp, e))?;
        file.sync_all().map_err(|e| io_error(&temp, e))?;
        // hard_link fails if the target exists: the first writer wins, atomically.
        std::fs::hard_link(&temp, path).map_err(|e| io_error(path, e))
    })();
    let _ = std::fs::remove_file(&temp);
    result
}

/// The bytes of a private file (refused when group or others can read it); `None` when it
/// does not exist.
pub(crate) fn read_private_file(path: &Path) -> Result<Option<Zeroizing<Vec<u8>>>, KeyError> {
    if !path.exists() {
        return Ok(None);
    }
    check_private(path)?;
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    Ok(Some(Zeroizing::new(bytes)))
}

fn check_private(path: &Path) -> Result<(), KeyError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let metadata = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
        if metadata.permissions().mode() & 0o077 != 0 {
            return Err(KeyError::Permissions(path.display().to_string()));
        }
    }
    let _ = path;
    Ok(())
}

/// Whether the key file exists in `state_dir`.
pub fn key_file_exists(state_dir: &Path) -> bool {
    state_dir.join(KEY_FILE).exists()
}

/// Moves the key file aside as `gateway.key.retired-<unix seconds>` (kept 0600, for the
/// record), so the next [`load_or_create_keypair`] creates a new key. Returns the new name.
pub fn retire_key_file(state_dir: &Path, now_unix: i64) -> Result<String, KeyError> {
    let path = state_dir.join(KEY_FILE);
    let name = format!("{KEY_FILE}.retired-{now_unix}");
    let target = state_dir.join(&name);
    // hard_link refuses to replace an existing file: nothing retired is ever overwritten.
    std::fs::hard_link(&path, &target).map_err(|e| io_error(&target, e))?;
    std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
    Ok(name)
}

/// Loads the gateway key from `state_dir`, creating it on first start.
pub fn load_or_create_keypair(state_dir: &Path) -> Result<StaticKeypair, KeyError> {
    ensure_state_dir(state_dir).map_err(|e| io_error(state_dir, e))?;
    let path = state_dir.join(KEY_FILE);
    if !path.exists() {
        let keypair = StaticKeypair::generate(&mut OsRng);
        let text = Zeroizing::new(format!("{}\n", hex::encode(keypair.secret_bytes())));
        match write_private_file_new(&path, text.as_bytes()) {
            Ok(()) => return Ok(keypair),
            // Another process created it first: fall through and load theirs.
            Err(KeyError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(other) => return Err(other),
        }
    }
    check_private(&path)?;
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| io_error(&path, e))?);
    let bytes = Zeroizing::new(
        hex::decode(text.trim()).map_err(|_| KeyError::Corrupt(path.display().to_string()))?,
    );
    let secret: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| KeyError::Corrupt(path.display().to_string()))?;
    let keypair = StaticKeypair::from_secret_bytes(secret);
    let mut secret = secret;
    zeroize::Zeroize::zeroize(&mut secret);
    Ok(keypair)
}

/// The audit HMAC secret persisted in `state_dir` (32 random bytes, hex, 0600), created on
/// first use, so token ids stay linkable across restarts without a secret in the environment.
pub fn load_or_create_audit_secret(state_dir: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    ensure_state_dir(state_dir).map_err(|e| io_error(state_dir, e))?;
    let path = state_dir.join(AUDIT_SECRET_FILE);
    if !path.exists() {
        let mut secret = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(secret.as_mut());
        let text = Zeroizing::new(format!("{}\n", hex::encode(secret.as_ref())));
        match write_private_file_new(&path, text.as_bytes()) {
            Ok(()) => return Ok(Zeroizing::new(secret.to_vec())),
            Err(KeyError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(other) => return Err(other),
        }
    }
    read_audit_secret(state_dir)
}

/// The audit HMAC secret persisted in `state_dir`, never creating one (an error of kind
/// `NotFound` when there is none): what the CLI checks the audit chain with.
pub fn read_audit_secret(state_dir: &Path) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let path = state_dir.join(AUDIT_SECRET_FILE);
    check_private(&path)?;
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| io_error(&path, e))?);
    let bytes = Zeroizing::new(
        hex::decode(text.trim()).map_err(|_| KeyError::Corrupt(path.display().to_string()))?,
    );
    if bytes.len() != 32 {
        return Err(KeyError::Corrupt(path.display().to_string()));
    }
    Ok(bytes)
}

/// The instance id: the configured one if set, else the one persisted in `state_dir`, else a
/// new random one (persisted).
pub fn load_or_create_instance_id(
    state_dir: &Path,
    configured: Option<&str>,
) -> Result<String, KeyError> {
    if let Some(id) = configured {
        return Ok(id.to_string());
    }
    load_or_create_name(state_dir, INSTANCE_FILE, "gw", 6)
}

/// A name persisted in `state_dir/file`: read when present (and checked), else created as
/// `prefix-<hex of random_bytes>`. Two processes creating it at once end with the same one.
fn load_or_create_name(
    state_dir: &Path,
    file: &str,
    prefix: &str,
    random_bytes: usize,
) -> Result<String, KeyError> {
    ensure_state_dir(state_dir).map_err(|e| io_error(state_dir, e))?;
    let path = state_dir.join(file);
    if !path.exists() {
        let mut bytes = vec![0u8; random_bytes];
        OsRng.fill_bytes(&mut bytes);
        let id = format!("{prefix}-{}", hex::encode(bytes));
        match write_private_file_new(&path, format!("{id}\n").as_bytes()) {
            Ok(()) => return Ok(id),
            Err(KeyError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(other) => return Err(other),
        }
    }
    let text = std::fs::read_to_string(&path).map_err(|e| io_error(&path, e))?;
    let id = text.trim().to_string();
    let valid = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(KeyError::Corrupt(path.display().to_string()));
    }
    Ok(id)
}

/// The file naming this replica among the replicas of one cluster store (its audit rows
/// are kept under this name in the shared copy).
pub const REPLICA_FILE: &str = "replica.id";

/// This replica's name in the shared store: persisted in `state_dir`, created once.
pub fn load_or_create_replica_id(state_dir: &Path) -> Result<String, KeyError> {
    load_or_create_name(state_dir, REPLICA_FILE, "replica", 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_keypair(dir.path()).unwrap();
        let second = load_or_create_keypair(dir.path()).unwrap();
        assert_eq!(first.public(), second.public());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
            std::fs::set_permissions(
                dir.path().join(KEY_FILE),
                std::fs::Permissions::from_mode(0o644),
            )
            .unwrap();
            assert!(matches!(
                load_or_create_keypair(dir.path()),
                Err(KeyError::Permissions(_))
            ));
        }
    }

    #[test]
    fn audit_secret_is_created_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_audit_secret(dir.path()).unwrap();
        let second = load_or_create_audit_secret(dir.path()).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(*first, *second);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(AUDIT_SECRET_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn instance_id_is_persisted_unless_configured() {
        let dir = tempfile::tempdir().unwrap();
        let generated = load_or_create_instance_id(dir.path(), None).unwrap();
        assert!(generated.starts_with("gw-"));
        assert_eq!(
            load_or_create_instance_id(dir.path(), None).unwrap(),
            generated
        );
        assert_eq!(
            load_or_create_instance_id(dir.path(), Some("remote-1")).unwrap(),
            "remote-1"
        );
    }
}
