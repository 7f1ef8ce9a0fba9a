//! The sidecar's long-term identity: an x25519 key pair whose secret half lives in
//! `identity.key` (32 raw bytes, mode 0600) and whose public half is recorded in the store.
//!
//! The key file is written to a 0600 temp file in the same directory, synced, then linked into
//! place without ever replacing an existing key (losing the key would silently unpair the
//! laptop). The secret is zeroized in memory and never printed or logged.

use crate::clock::now_unix_seconds;
use crate::error::SidecarError;
use crate::paths::{IDENTITY_KEY_FILE, ensure_state_dir};
use crate::secret_file::PrivateFileError;
use crate::state::{IdentityRecord, StateStore};
use protocol::identity::{PublicKey, StaticKeypair};
use protocol::limits::MAX_SHORT_STRING;
use rand_core::OsRng;
use sha2::{Digest, Sha256};
use shared_safety::ErrorCode;
use std::path::Path;
use zeroize::Zeroizing;

/// Default sidecar id: `sidecar-` + the first 8 hex characters of SHA-256 of the public key.
pub fn default_sidecar_id(public_key: &PublicKey) -> String {
    let digest = Sha256::digest(public_key.0);
    format!("sidecar-{}", &hex::encode(digest)[..8])
}

/// Sidecar ids travel in handshakes and show up in gateway logs: keep them short and plain.
pub fn validate_sidecar_id(id: &str) -> Result<(), SidecarError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(SidecarError::flag(
            "(--sidecar-id must be 1-64 characters of letters, digits, '-', '_' or '.')",
        ))
    }
}

fn validate_display_name(name: &str) -> Result<(), SidecarError> {
    let ok = !name.trim().is_empty()
        && name.len() <= MAX_SHORT_STRING
        && !name.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(SidecarError::flag(format!(
            "(--display-name must be 1-{MAX_SHORT_STRING} printable characters)"
        )))
    }
}

/// `--public-key`: an x25519 public key as 64 hex characters (what `sidecar identity` prints)
/// or as base64 of its 32 bytes (44 characters, padded or not; standard or URL-safe alphabet),
/// the form WireGuard-style tools print. A low-order key is refused either way.
pub fn parse_public_key(text: &str) -> Result<PublicKey, SidecarError> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let refused = || {
        SidecarError::flag(
            "(--public-key must be an x25519 public key: 64 hex characters, or its 32 bytes in \
             base64)",
        )
    };
    let text = text.trim();
    if text.len() == 64 && text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return PublicKey::from_hex(text).map_err(|_| refused());
    }
    let bytes = [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
        .ok_or_else(refused)?;
    if bytes.len() != 32 {
        return Err(refused());
    }
    PublicKey::from_hex(&hex::encode(bytes)).map_err(|_| refused())
}

/// Creates the sidecar identity in `state_dir`.
///
/// Without `public_key`, generates a key pair and writes `identity.key` (0600). With
/// `public_key` (hex or base64, see [`parse_public_key`]), records an externally held public key and writes no key
/// file: that serves operator workflows (pairing records, relay primitives), but the daemon
/// cannot run without the secret. IDENTITY_EXISTS if an identity or a key file already exists.
pub fn create_identity(
    state_dir: &Path,
    display_name: &str,
    sidecar_id: Option<&str>,
    public_key: Option<&str>,
) -> Result<IdentityRecord, SidecarError> {
    validate_display_name(display_name)?;
    if let Some(id) = sidecar_id {
        validate_sidecar_id(id)?;
    }
    let external = public_key.map(parse_public_key).transpose()?;

    let store = StateStore::open(state_dir)?;
    let key_path = state_dir.join(IDENTITY_KEY_FILE);
    if store.identity()?.is_some() || key_path.exists() {
        return Err(SidecarError::bare(ErrorCode::IdentityExists));
    }

    let (public, keypair) = match external {
        Some(key) => (key, None),
        None => {
            let keypair = StaticKeypair::generate(&mut OsRng);
            (keypair.public(), Some(keypair))
        }
    };
    let record = IdentityRecord {
        sidecar_id: sidecar_id
            .map(str::to_string)
            .unwrap_or_else(|| default_sidecar_id(&public)),
        display_name: display_name.trim().to_string(),
        public_key: public,
        has_secret: keypair.is_some(),
        created_at: now_unix_seconds(),
    };

    if let Some(keypair) = &keypair {
        write_new_secret_file(state_dir, IDENTITY_KEY_FILE, keypair.secret_bytes())?;
    }
    if let Err(error) = store.insert_identity(&record) {
        // Another process recorded an identity between our check and our insert. The key file
        // we linked is ours (linking never replaces), so removing it loses nothing.
        if keypair.is_some() {
            let _ = std::fs::remove_file(&key_path);
        }
        return Err(error);
    }
    Ok(record)
}

/// Writes `bytes` to `dir/name`, mode 0600, atomically and without replacing an existing file.
fn write_new_secret_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), SidecarError> {
    ensure_state_dir(dir)?;
    crate::secret_file::create_new(dir, name, bytes).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            SidecarError::bare(ErrorCode::IdentityExists)
        } else {
            SidecarError::state(format!("(cannot create {name}: {})", error.kind()))
        }
    })
}

/// Loads the identity and its secret key for the daemon.
///
/// IDENTITY_MISSING without an identity or when it was created with `--public-key`; the key
/// file must be a regular file readable by its owner only and must match the recorded key.
pub fn load_keypair(
    state_dir: &Path,
    store: &StateStore,
) -> Result<(IdentityRecord, StaticKeypair), SidecarError> {
    let identity = store
        .identity()?
        .ok_or_else(|| SidecarError::bare(ErrorCode::IdentityMissing))?;
    if !identity.has_secret {
        return Err(SidecarError::new(
            ErrorCode::IdentityMissing,
            "(this identity was created with --public-key and has no local secret key, so the \
             daemon cannot run; create an identity without --public-key in another state \
             directory)",
        ));
    }
    let path = state_dir.join(IDENTITY_KEY_FILE);
    let bytes = crate::secret_file::read_private(&path, 32).map_err(|error| match error {
        PrivateFileError::Missing(_) => SidecarError::new(
            ErrorCode::IdentityMissing,
            "(cannot open identity.key: not found)",
        ),
        other => SidecarError::state(format!("({other})")),
    })?;
    let mut secret = Zeroizing::new([0u8; 32]);
    secret.copy_from_slice(&bytes);
    let keypair = StaticKeypair::from_secret_bytes(*secret);
    if keypair.public() != identity.public_key {
        return Err(SidecarError::state(
            "(identity.key does not match the identity recorded in state.db)",
        ));
    }
    Ok((identity, keypair))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn public_keys_are_accepted_in_hex_and_base64() {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let key = protocol::identity::StaticKeypair::from_secret_bytes([6; 32]).public();
        let hex_form = key.to_hex();
        let bytes = hex::decode(&hex_form).unwrap();
        for text in [
            hex_form.clone(),
            hex_form.to_uppercase(),
            format!("  {hex_form}\n"),
            STANDARD.encode(&bytes),
            STANDARD.encode(&bytes).trim_end_matches('=').to_string(),
            URL_SAFE_NO_PAD.encode(&bytes),
        ] {
            assert_eq!(parse_public_key(&text).unwrap(), key, "{text:?}");
        }
        for text in [
            String::new(),
            "abcd".to_string(),
            STANDARD.encode([1u8; 31]),
            STANDARD.encode([1u8; 33]),
            // All zeros is a low-order point, in either form.
            "00".repeat(32),
            STANDARD.encode([0u8; 32]),
            "not base64 at all!".to_string(),
        ] {
            let error = parse_public_key(&text).unwrap_err();
            assert_eq!(error.code(), ErrorCode::CliArgumentInvalid, "{text:?}");
            assert!(error.detail().unwrap().contains("--public-key"));
        }
    }

    #[test]
    fn create_writes_an_owner_only_key_and_refuses_a_second_identity() {
        let dir = tempfile::tempdir().unwrap();
        let record = create_identity(dir.path(), "laptop", None, None).unwrap();
        assert!(record.has_secret);
        assert_eq!(record.sidecar_id, default_sidecar_id(&record.public_key));
        assert!(record.sidecar_id.starts_with("sidecar-") && record.sidecar_id.len() == 16);
        let key_path = dir.path().join(IDENTITY_KEY_FILE);
        let metadata = std::fs::metadata(&key_path).unwrap();
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
        assert_eq!(metadata.len(), 32);
        // No temp files left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty());

        let again = create_identity(dir.path(), "laptop", None, None).unwrap_err();
        assert_eq!(again.code(), ErrorCode::IdentityExists);

        let store = StateStore::open(dir.path()).unwrap();
        let (loaded, keypair) = load_keypair(dir.path(), &store).unwrap();
        assert_eq!(loaded, record);
        assert_eq!(keypair.public(), record.public_key);
    }

    #[test]
    fn external_public_key_records_no_secret_and_cannot_run() {
        let dir = tempfile::tempdir().unwrap();
        let public = StaticKeypair::from_secret_bytes([9; 32]).public();
        let record = create_identity(
            dir.path(),
            "laptop",
            Some("sidecar-example"),
            Some(&public.to_hex()),
        )
        .unwrap();
        assert!(!record.has_secret);
        assert_eq!(record.sidecar_id, "sidecar-example");
        assert!(!dir.path().join(IDENTITY_KEY_FILE).exists());
        let store = StateStore::open(dir.path()).unwrap();
        let error = load_keypair(dir.path(), &store).unwrap_err();
        assert_eq!(error.code(), ErrorCode::IdentityMissing);
        // Still exactly one identity per state directory.
        assert_eq!(
            create_identity(dir.path(), "x", None, None)
                .unwrap_err()
                .code(),
            ErrorCode::IdentityExists
        );
    }

    #[test]
    fn bad_inputs_are_flag_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (name, id, key) in [
            ("", None, None),
            ("laptop", Some("bad id!"), None),
            ("laptop", None, Some("abcd")),
            ("laptop", None, Some(&*"00".repeat(32))),
        ] {
            assert_eq!(
                create_identity(dir.path(), name, id, key)
                    .unwrap_err()
                    .code(),
                ErrorCode::CliArgumentInvalid
            );
        }
    }

    #[test]
    fn a_group_readable_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        create_identity(dir.path(), "laptop", None, None).unwrap();
        let key_path = dir.path().join(IDENTITY_KEY_FILE);
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let store = StateStore::open(dir.path()).unwrap();
        assert_eq!(
            load_keypair(dir.path(), &store).unwrap_err().code(),
            ErrorCode::StateStoreError
        );
    }

    #[test]
    fn a_stray_key_file_blocks_creation() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IDENTITY_KEY_FILE), [0u8; 32]).unwrap();
        assert_eq!(
            create_identity(dir.path(), "laptop", None, None)
                .unwrap_err()
                .code(),
            ErrorCode::IdentityExists
        );
    }
}
