//! The product's own binaries as separate processes, for the faults only a process can have:
//! killed with SIGKILL mid-call, frozen with SIGSTOP and resumed. Each binary is the one the
//! test command built beside this test binary (`target/<profile>/ibkr-gateway`,
//! `target/<profile>/ibkr-agent`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(
        "{0} is not built beside the test binary ({1}); build the workspace's binaries first \
         (`cargo build --workspace --bins`, which `cargo test --workspace` does)"
    )]
    NotBuilt(&'static str, PathBuf),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("signal {0} to process {1} failed")]
    Signal(&'static str, u32),
}

/// The path of a workspace binary built with the running test binary: the test binary lives
/// in `target/<profile>/deps/`, the binaries one level up.
pub fn workspace_binary(name: &'static str) -> Result<PathBuf, ProcessError> {
    let exe = std::env::current_exe().map_err(|e| ProcessError::Io("current_exe".into(), e))?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| {
            if deps.ends_with("deps") {
                deps.parent()
            } else {
                Some(deps)
            }
        })
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = profile_dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ProcessError::NotBuilt(name, path))
    }
}

/// A child process that is killed (SIGKILL) when dropped, so a failing test leaves nothing
/// running.
#[derive(Debug)]
pub struct ChildProcess {
    name: &'static str,
    child: Option<Child>,
}

impl ChildProcess {
    /// Starts `binary` with `args`; its stdout and stderr go to `log` (for the failure
    /// report), and it reads nothing.
    pub fn spawn(
        name: &'static str,
        binary: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        log: &Path,
    ) -> Result<ChildProcess, ProcessError> {
        let out = std::fs::File::create(log)
            .map_err(|e| ProcessError::Io(format!("creating {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| ProcessError::Io("cloning the log handle".into(), e))?;
        let mut command = Command::new(binary);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (key, value) in envs {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .map_err(|e| ProcessError::Io(format!("starting {}", binary.display()), e))?;
        Ok(ChildProcess {
            name,
            child: Some(child),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn signal(&self, signal: &'static str) -> Result<(), ProcessError> {
        let pid = self.pid();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .map_err(|e| ProcessError::Io(format!("kill -{signal}"), e))?;
        if status.success() {
            Ok(())
        } else {
            Err(ProcessError::Signal(signal, pid))
        }
    }

    /// SIGSTOP: the process stops mid-whatever, sockets open, as a laptop that hangs.
    pub fn freeze(&self) -> Result<(), ProcessError> {
        self.signal("STOP")
    }

    /// SIGCONT after [`ChildProcess::freeze`].
    pub fn resume(&self) -> Result<(), ProcessError> {
        self.signal("CONT")
    }

    /// SIGKILL, then waits for the exit (the kernel closes its sockets and releases its
    /// file locks when it is reaped).
    pub fn kill(mut self) -> Result<(), ProcessError> {
        self.kill_now()
    }

    fn kill_now(&mut self) -> Result<(), ProcessError> {
        if let Some(mut child) = self.child.take() {
            // A frozen process still dies of SIGKILL.
            child
                .kill()
                .map_err(|e| ProcessError::Io(format!("killing {}", self.name), e))?;
            child
                .wait()
                .map_err(|e| ProcessError::Io(format!("reaping {}", self.name), e))?;
        }
        Ok(())
    }

    /// Whether it has exited, and with which code.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.kill_now();
    }
}
