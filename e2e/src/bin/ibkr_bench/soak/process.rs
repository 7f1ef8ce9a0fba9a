//! A helper process of the soak, driven by lines: commands on its stdin, one line per answer or
//! event on its stdout.

use crate::{BenchResult, bench_error, helper_command};
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub(super) struct HelperProcess {
    name: &'static str,
    child: Child,
    stdin: Arc<Mutex<ChildStdin>>,
}

/// Writes commands to a helper; cheap to clone, usable from any task.
#[derive(Clone)]
pub(super) struct CommandSink {
    name: &'static str,
    stdin: Arc<Mutex<ChildStdin>>,
}

impl CommandSink {
    pub(super) fn send(&self, command: &str) -> BenchResult<()> {
        let mut stdin = self
            .stdin
            .lock()
            .map_err(|_| bench_error(format!("the {} helper's stdin is poisoned", self.name)))?;
        writeln!(stdin, "{command}")?;
        stdin.flush()?;
        Ok(())
    }
}

impl HelperProcess {
    /// Starts `exe <args>` and returns it with the receiver of its stdout lines.
    pub(super) fn spawn(
        name: &'static str,
        exe: &Path,
        args: &[String],
    ) -> BenchResult<(Self, mpsc::UnboundedReceiver<String>)> {
        let mut command = helper_command(exe);
        command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        let mut child = command.spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| bench_error(format!("the {name} helper has no stdin")))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| bench_error(format!("the {name} helper has no stdout")))?;
        let (sender, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Ok((
            HelperProcess {
                name,
                child,
                stdin: Arc::new(Mutex::new(stdin)),
            },
            lines,
        ))
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn sink(&self) -> CommandSink {
        CommandSink {
            name: self.name,
            stdin: Arc::clone(&self.stdin),
        }
    }

    /// Sends `STOP` and waits for the helper to exit; kills it if it does not within `limit`.
    pub(super) async fn stop(mut self, limit: Duration) -> BenchResult<()> {
        let _ = self.sink().send("STOP");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return if status.success() {
                    Ok(())
                } else {
                    Err(bench_error(format!(
                        "the {} helper failed ({status})",
                        self.name
                    )))
                };
            }
            if Instant::now() >= deadline {
                self.child.kill()?;
                let _ = self.child.wait();
                return Err(bench_error(format!(
                    "the {} helper did not stop",
                    self.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for HelperProcess {
    fn drop(&mut self) {
        // A soak that fails half-way must not leave its helpers behind.
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for the next line of `lines`, which must start with `tag`.
pub(super) async fn expect_line(
    lines: &mut mpsc::UnboundedReceiver<String>,
    tag: &str,
    limit: Duration,
    what: &str,
) -> BenchResult<String> {
    match tokio::time::timeout(limit, lines.recv()).await {
        Ok(Some(line)) if line.split_whitespace().next() == Some(tag) => Ok(line),
        Ok(Some(line)) => Err(bench_error(format!(
            "expected {tag} ({what}), the helper said {line:?}"
        ))),
        Ok(None) => Err(bench_error(format!("the helper exited before {what}"))),
        Err(_) => Err(bench_error(format!("timed out waiting for {what}"))),
    }
}
