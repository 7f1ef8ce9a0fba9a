//! Small files in the state directory that must never be half-written: secret keys (created
//! once, 0600, never replaced, read back only while no other user can read them) and
//! checkpoints (0600, replaced atomically).
//!
//! Both writes go through a 0600 temp file in the same directory that is synced before it is
//! put in place, and the directory is synced after, so a crash leaves either the old file or
//! the new one, never a torn one. Contents are never logged.

use rand_core::{OsRng, RngCore};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use zeroize::Zeroizing;

/// Makes an existing data file readable by its owner only (0600), when group or others could
/// read it (copied in, restored from a backup, created under a loose umask by an older build).
/// Returns whether it had to. Trade history and pairing records are private to the laptop's
/// owner; repairing beats refusing, since the owner cannot do more than chmod either.
pub fn restrict_to_owner(path: &Path) -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    if metadata.mode() & 0o077 == 0 {
        return Ok(false);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tracing::warn!(
        file = %file_name(path),
        was = format!("{:o}", metadata.mode() & 0o777),
        "a state file was readable by other users; it is 0600 now"
    );
    Ok(true)
}

/// Why a private file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    #[error("{0} does not exist")]
    Missing(String),
    #[error("{0} is not a regular file")]
    NotRegular(String),
    /// Like ssh: a key others can read may already be compromised, so it is not used.
    #[error("{0} is accessible by other users; run chmod 600 on it")]
    Accessible(String),
    #[error("{name} must hold exactly {expected} bytes")]
    WrongLength { name: String, expected: usize },
    #[error("{name}: {kind}")]
    Io {
        name: String,
        kind: std::io::ErrorKind,
    },
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A fresh 0600 temp file next to `dir/name`, holding `bytes`, synced.
fn write_temp(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<std::path::PathBuf> {
    let temp = dir.join(format!(".{name}.tmp-{:016x}", OsRng.next_u64()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    match written {
        Ok(()) => Ok(temp),
        Err(error) => {
            let _ = std::fs::remove_file(&temp);
            Err(error)
        }
    }
}

/// Makes the directory entries written in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes `bytes` to `dir/name` (0600) without ever replacing an existing file: an error of
/// kind `AlreadyExists` if one is there. Losing a key file silently is worse than failing.
pub fn create_new(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let final_path = dir.join(name);
    let temp = write_temp(dir, name, bytes)?;
    // link(2) fails if the target exists, unlike rename(2): two processes creating the same
    // key at once can never overwrite each other's.
    let placed = match std::fs::hard_link(&temp, &final_path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Err(error),
        Err(_) => {
            // File systems without hard links: fall back to a checked rename.
            if final_path.exists() {
                Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists))
            } else {
                std::fs::rename(&temp, &final_path)
            }
        }
    };
    let _ = std::fs::remove_file(&temp);
    placed?;
    sync_dir(dir)
}

/// Replaces `dir/name` (0600) with `bytes` atomically: temp file, fsync, rename, directory
/// fsync.
pub fn replace(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let temp = write_temp(dir, name, bytes)?;
    if let Err(error) = std::fs::rename(&temp, dir.join(name)) {
        let _ = std::fs::remove_file(&temp);
        return Err(error);
    }
    sync_dir(dir)
}

/// Reads a secret of exactly `length` bytes from `path`: a regular file that neither group
/// nor others can access. The bytes are zeroized when dropped.
pub fn read_private(path: &Path, length: usize) -> Result<Zeroizing<Vec<u8>>, PrivateFileError> {
    let name = file_name(path);
    let io = |error: std::io::Error| PrivateFileError::Io {
        name: name.clone(),
        kind: error.kind(),
    };
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(PrivateFileError::Missing(name));
        }
        Err(error) => return Err(io(error)),
    };
    let metadata = file.metadata().map_err(io)?;
    if !metadata.is_file() {
        return Err(PrivateFileError::NotRegular(name));
    }
    if metadata.mode() & 0o077 != 0 {
        return Err(PrivateFileError::Accessible(name));
    }
    if metadata.len() != length as u64 {
        return Err(PrivateFileError::WrongLength {
            name,
            expected: length,
        });
    }
    let mut secret = Zeroizing::new(vec![0u8; length]);
    file.read_exact(&mut secret).map_err(io)?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_new_file_is_private_and_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        create_new(dir.path(), "k", &[7; 32]).unwrap();
        let path = dir.path().join("k");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let error = create_new(dir.path(), "k", &[8; 32]).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(*read_private(&path, 32).unwrap(), vec![7; 32]);
        // No temp files left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["k".to_string()]);
    }

    #[test]
    fn reading_refuses_shared_short_or_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        assert!(matches!(
            read_private(&path, 32),
            Err(PrivateFileError::Missing(_))
        ));
        create_new(dir.path(), "k", &[7; 31]).unwrap();
        assert!(matches!(
            read_private(&path, 32),
            Err(PrivateFileError::WrongLength { expected: 32, .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert!(matches!(
            read_private(&path, 31),
            Err(PrivateFileError::Accessible(_))
        ));
        assert!(matches!(
            read_private(dir.path(), 31),
            Err(PrivateFileError::Accessible(_) | PrivateFileError::NotRegular(_))
        ));
    }

    #[test]
    fn replacing_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        replace(dir.path(), "h", b"one").unwrap();
        replace(dir.path(), "h", b"two").unwrap();
        assert_eq!(std::fs::read(dir.path().join("h")).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
