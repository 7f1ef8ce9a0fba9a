//! A small disk under a state directory, for faults a disk has: full (ENOSPC) and read-only
//! (EROFS). It is a tmpfs of a few megabytes mounted over the directory, with the directory's
//! files copied onto it, so the process using the directory keeps its paths.
//!
//! Mounting needs root (as CI runs). Elsewhere [`SmallDisk::over`] answers
//! [`DiskError::NotPermitted`] and the tests that need it say they were skipped, unless
//! `IBKR_E2E_REQUIRE_DISK_FAULTS=1` (set by `.ci/run`) makes that a failure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Set by CI: a test that cannot mount its small disk fails instead of being skipped.
pub const REQUIRE_ENV: &str = "IBKR_E2E_REQUIRE_DISK_FAULTS";

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("mounting a tmpfs needs root: {0}")]
    NotPermitted(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} failed: {1}")]
    Command(String, String),
}

fn run(what: &str, command: &mut Command) -> Result<(), DiskError> {
    let output = command
        .output()
        .map_err(|e| DiskError::Io(what.to_string(), e))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(DiskError::Command(
            what.to_string(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), DiskError> {
    let io = |what: &str, path: &Path| {
        let what = format!("{what} {}", path.display());
        move |e| DiskError::Io(what, e)
    };
    for entry in std::fs::read_dir(from).map_err(io("reading", from))? {
        let entry = entry.map_err(io("reading", from))?;
        let source = entry.path();
        let target = to.join(entry.file_name());
        let kind = entry.file_type().map_err(io("reading", &source))?;
        if kind.is_dir() {
            std::fs::create_dir_all(&target).map_err(io("creating", &target))?;
            copy_tree(&source, &target)?;
        } else if kind.is_file() {
            // `fs::copy` keeps the permission bits: 0600 files stay 0600.
            std::fs::copy(&source, &target).map_err(io("copying", &source))?;
        }
    }
    Ok(())
}

/// A tmpfs mounted over a directory; unmounted (and the directory's old files back in view)
/// when dropped.
#[derive(Debug)]
pub struct SmallDisk {
    mount_point: PathBuf,
    filler: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size_kib` over `dir` and copies `dir`'s files onto it. Stop every
    /// process using `dir` first (open files would stay on the disk below).
    pub fn over(dir: &Path, size_kib: u64) -> Result<SmallDisk, DiskError> {
        let saved = tempfile::tempdir().map_err(|e| DiskError::Io("tempdir".into(), e))?;
        copy_tree(dir, saved.path())?;
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k,mode=0700")])
            .arg("tmpfs")
            .arg(dir)
            .output()
            .map_err(|e| DiskError::Io("mount".into(), e))?;
        if !mounted.status.success() {
            return Err(DiskError::NotPermitted(
                String::from_utf8_lossy(&mounted.stderr).into_owned(),
            ));
        }
        let disk = SmallDisk {
            mount_point: dir.to_path_buf(),
            filler: dir.join("filler.bin"),
        };
        copy_tree(saved.path(), dir)?;
        Ok(disk)
    }

    /// Fills every free byte, so the next write that needs a new block fails with ENOSPC.
    pub fn fill(&self) -> Result<(), DiskError> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)
            .map_err(|e| DiskError::Io("opening the filler".into(), e))?;
        let block = vec![0u8; 4096];
        loop {
            match file.write(&block) {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(error) if error.raw_os_error() == Some(28) => return Ok(()),
                Err(error) => return Err(DiskError::Io("filling".into(), error)),
            }
        }
    }

    /// Frees what [`SmallDisk::fill`] took.
    pub fn free(&self) -> Result<(), DiskError> {
        match std::fs::remove_file(&self.filler) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(DiskError::Io("freeing".into(), error)),
        }
    }

    /// Remounts read-only: every write fails with EROFS (open files included).
    pub fn read_only(&self) -> Result<(), DiskError> {
        run(
            "remount read-only",
            Command::new("mount")
                .args(["-o", "remount,ro"])
                .arg(&self.mount_point),
        )
    }

    /// Remounts read-write.
    pub fn read_write(&self) -> Result<(), DiskError> {
        run(
            "remount read-write",
            Command::new("mount")
                .args(["-o", "remount,rw"])
                .arg(&self.mount_point),
        )
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a file some task still holds open does not keep the mount alive for ever.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.mount_point)
            .output();
    }
}

/// The small disk for a test, or `None` when it cannot be had here and the test should be
/// skipped (said on stderr). Panics when [`REQUIRE_ENV`] is set.
#[allow(clippy::panic)] // a test helper: the panic is the failure report
pub fn for_test(dir: &Path, size_kib: u64) -> Option<SmallDisk> {
    match SmallDisk::over(dir, size_kib) {
        Ok(disk) => Some(disk),
        Err(DiskError::NotPermitted(why)) if std::env::var_os(REQUIRE_ENV).is_none() => {
            eprintln!("SKIPPED: this disk fault test needs root to mount a tmpfs ({why})");
            None
        }
        Err(error) => panic!("cannot set up the small disk: {error}"),
    }
}
