//! A private NATS server for tests and benchmarks: Debian's `nats-server` on a free loopback
//! port, with a user and password, killed when dropped. Where it is missing a test skips,
//! unless `IBKR_E2E_REQUIRE_NATS` is set (`.ci/run` installs the package and sets it).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BINARIES: [&str; 2] = ["/usr/sbin/nats-server", "/usr/bin/nats-server"];
/// The user the replicas authenticate as, and its password.
pub const USER: &str = "ibkr";
pub const PASSWORD: &str = "nats-test-password-not-secret";
const READY_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("nats-server is not installed (apt-get install nats-server)")]
    NotInstalled,
    #[error("{0}")]
    Setup(String),
}

/// A running private NATS server.
pub struct PrivateNats {
    binary: &'static str,
    port: u16,
    child: Option<Child>,
}

impl std::fmt::Debug for PrivateNats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateNats")
            .field("port", &self.port)
            .finish()
    }
}

impl PrivateNats {
    /// `Ok(None)` when NATS is not installed and the run does not require it.
    pub fn start_or_skip() -> Result<Option<PrivateNats>, NatsError> {
        match PrivateNats::start() {
            Err(NatsError::NotInstalled) if std::env::var_os("IBKR_E2E_REQUIRE_NATS").is_none() => {
                eprintln!("skipping: nats-server is not installed (apt-get install nats-server)");
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    pub fn start() -> Result<PrivateNats, NatsError> {
        let binary = BINARIES
            .into_iter()
            .find(|path| Path::new(path).exists())
            .ok_or(NatsError::NotInstalled)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .map_err(|e| NatsError::Setup(format!("no free port: {e}")))?;
        let mut server = PrivateNats {
            binary,
            port,
            child: None,
        };
        server.run()?;
        Ok(server)
    }

    fn run(&mut self) -> Result<(), NatsError> {
        let mut child = Command::new(self.binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["--user", USER, "--pass", PASSWORD])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| NatsError::Setup(format!("nats-server: {e}")))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| NatsError::Setup("no stderr".into()))?;
        // The server says when it accepts clients: wait for that line, then keep draining.
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Server is ready")
                    && let Some(ready) = ready.take()
                {
                    let _ = ready.send(());
                }
            }
        });
        self.child = Some(child);
        ready_rx
            .recv_timeout(READY_LIMIT)
            .map_err(|_| NatsError::Setup("nats-server did not become ready".into()))
    }

    /// The URL replicas connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server at once (connections drop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped server again on the same port.
    pub fn restart(&mut self) -> Result<(), NatsError> {
        self.stop();
        self.run()
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        self.stop();
    }
}
