//! A private PostgreSQL server for tests and benchmarks: its own data directory and socket
//! directory in a temporary directory, listening on a free loopback port, password
//! authentication over TCP, stopped (immediately) when dropped.
//!
//! Uses Debian's server binaries (`/usr/lib/postgresql/<version>/bin`, package `postgresql`).
//! PostgreSQL refuses to run as root, so as root the server runs as the `postgres` system user
//! (`runuser`), which owns the temporary directory. Where the binaries are missing, a test
//! skips unless `IBKR_E2E_REQUIRE_POSTGRES` is set (`.ci/run` installs the package and sets
//! it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The database user the tests connect as, and its password.
pub const USER: &str = "ibkr";
const PASSWORD: &str = "test-password-not-secret";
const DATABASE: &str = "ibkr_gateway";

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("PostgreSQL's server binaries are not installed (apt-get install postgresql)")]
    NotInstalled,
    #[error("{0}")]
    Setup(String),
}

/// A running private server.
pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    run_as: Option<String>,
    running: bool,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for PrivatePostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivatePostgres")
            .field("port", &self.port)
            .finish()
    }
}

/// The newest installed server's binary directory.
fn server_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .is_some_and(|uid| uid.trim() == "0")
}

/// A free loopback port (the server binds it right after; a collision only fails the start).
fn free_port() -> Result<u16, PostgresError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|error| PostgresError::Setup(format!("no free port: {error}")))
}

impl PrivatePostgres {
    /// `Ok(None)` when the server is not installed and the run does not require it.
    pub fn start_or_skip() -> Result<Option<PrivatePostgres>, PostgresError> {
        match PrivatePostgres::start() {
            Err(PostgresError::NotInstalled)
                if std::env::var_os("IBKR_E2E_REQUIRE_POSTGRES").is_none() =>
            {
                eprintln!("skipping: PostgreSQL is not installed (apt-get install postgresql)");
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// Creates a new cluster in a temporary directory and starts it.
    pub fn start() -> Result<PrivatePostgres, PostgresError> {
        let bin = server_bin().ok_or(PostgresError::NotInstalled)?;
        let dir = tempfile::Builder::new()
            .prefix("ibkr-pg-")
            .tempdir()
            .map_err(|e| PostgresError::Setup(format!("temporary directory: {e}")))?;
        let run_as = is_root().then(|| "postgres".to_string());
        if run_as.is_some() {
            chown_to_postgres(dir.path())?;
        }
        let data = dir.path().join("data");
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, PASSWORD)
            .map_err(|e| PostgresError::Setup(format!("password file: {e}")))?;
        if run_as.is_some() {
            chown_to_postgres(&password_file)?;
        }
        let mut server = PrivatePostgres {
            bin,
            data,
            port: free_port()?,
            run_as,
            running: false,
            _dir: dir,
        };
        server.run(
            "initdb",
            &[
                "-D",
                &server.data.display().to_string(),
                "-U",
                USER,
                "--pwfile",
                &password_file.display().to_string(),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
            ],
        )?;
        server.start_server()?;
        server.run(
            "createdb",
            &[
                "-h",
                &server.socket_dir().display().to_string(),
                "-p",
                &server.port.to_string(),
                "-U",
                USER,
                DATABASE,
            ],
        )?;
        Ok(server)
    }

    fn socket_dir(&self) -> PathBuf {
        self.data.clone()
    }

    /// The connection string the gateway uses: TCP on loopback, with the password.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={USER} password={PASSWORD} dbname={DATABASE}",
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn run(&self, program: &str, args: &[&str]) -> Result<(), PostgresError> {
        let binary = self.bin.join(program);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut command = Command::new("runuser");
                command.args(["-u", user, "--"]).arg(&binary);
                command
            }
            None => Command::new(&binary),
        };
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| PostgresError::Setup(format!("{program}: {e}")))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(PostgresError::Setup(format!(
                "{program} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )))
        }
    }

    fn start_server(&mut self) -> Result<(), PostgresError> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.socket_dir().display()
        );
        let log = self.data.join("server.log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "start",
                "-D",
                &self.data.display().to_string(),
                "-o",
                &options,
                "-l",
                &log,
                "-w",
                "-t",
                "60",
            ],
        )?;
        self.running = true;
        Ok(())
    }

    /// Stops the server at once (as a crash would: open connections are cut).
    pub fn stop(&mut self) -> Result<(), PostgresError> {
        if !self.running {
            return Ok(());
        }
        self.run(
            "pg_ctl",
            &[
                "stop",
                "-D",
                &self.data.display().to_string(),
                "-m",
                "immediate",
                "-w",
            ],
        )?;
        self.running = false;
        Ok(())
    }

    /// Starts a stopped server again, on the same port with the same data.
    pub fn restart(&mut self) -> Result<(), PostgresError> {
        self.stop()?;
        self.start_server()
    }
}

fn chown_to_postgres(path: &Path) -> Result<(), PostgresError> {
    let status = Command::new("chown")
        .arg("postgres:postgres")
        .arg(path)
        .status()
        .map_err(|e| PostgresError::Setup(format!("chown: {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(PostgresError::Setup(format!(
            "chown postgres {} failed",
            path.display()
        )))
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
