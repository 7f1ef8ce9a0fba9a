//! The `ibkr-gateway` command line.
//!
//! ```text
//! ibkr-gateway serve --config gateway.yaml
//! ibkr-gateway pairing code   --config gateway.yaml --user-id <oauth subject> [--ttl-seconds N] [--json]
//! ibkr-gateway pairing list   --config gateway.yaml [--json]
//! ibkr-gateway pairing revoke --config gateway.yaml --sidecar-id <id>
//! ibkr-gateway audit tail     --config gateway.yaml [--limit N] [--shared] [--json]
//! ibkr-gateway audit verify   --config gateway.yaml [--json]
//! ibkr-gateway audit reseal   --config gateway.yaml [--json]
//! ```
//! Every command validates the whole configuration first; a bad one prints its code, key and
//! message to stderr and exits 2 without binding or writing anything. The pairing commands
//! write the same SQLite store a running server uses (WAL), so they work while it serves.

use crate::config::{GatewayConfiguration, LogFormat};
use crate::store::{PairingRecord, Store};
use clap::{Parser, Subcommand};
use shared_safety::ErrorCode;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(
    name = "ibkr-gateway",
    version,
    about = "Cloud gateway relaying MCP tool calls to paired IBKR sidecars"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway until SIGINT or SIGTERM.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Manage sidecar pairings.
    Pairing {
        #[command(subcommand)]
        command: PairingCommand,
    },
    /// Read the audit trail of tool calls.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// The gateway's static key (what every laptop pinned at pairing).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// The store's backends (docs/scale-out.md).
    Store {
        #[command(subcommand)]
        command: StoreCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy an embedded deployment (state_dir/gateway.sqlite3) into the shared PostgreSQL
    /// store the configuration names (store.backend: postgres): pairings, handshake
    /// timestamps, the gateway key's record and journal anchors, in one transaction. The
    /// shared store must hold no pairing yet. Stop the embedded gateway first.
    Migrate {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Replace the static key on purpose: revokes every active pairing (they pinned the old
    /// key), keeps the old key file as gateway.key.retired-<time>, creates a new key. Stop the
    /// gateway first; each laptop then pairs again with a new code.
    Rotate {
        #[arg(long)]
        config: PathBuf,
        /// Required when active pairings exist (they are all revoked).
        #[arg(long)]
        confirm: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print the newest audit records, oldest first.
    Tail {
        #[arg(long)]
        config: PathBuf,
        /// How many records (1-10000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        limit: u32,
        /// Every replica's records, from the shared store's copy (cluster store only),
        /// instead of this replica's own trail.
        #[arg(long)]
        shared: bool,
        /// One JSON array instead of tab-separated lines.
        #[arg(long)]
        json: bool,
    },
    /// Check every record against the keyed chain and audit.head: exits 3 when a record was
    /// edited, removed or reordered, the tail was cut or an older copy of the database put back.
    Verify {
        #[arg(long)]
        config: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// After a break was investigated: append an operator record naming it and write a new
    /// audit.head, so the gateway stores records (and serves order tools) again. Stop the
    /// gateway first; records are never changed or removed.
    Reseal {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

/// Exit code of `audit verify` when the trail does not verify.
const EXIT_AUDIT_BROKEN: u8 = 3;

#[derive(Debug, Subcommand)]
pub enum PairingCommand {
    /// Issue a single-use pairing code for a user (OAuth subject).
    Code {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        user_id: String,
        /// Defaults to pairing.code_ttl_seconds.
        #[arg(long)]
        ttl_seconds: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// List pairings (revoked ones included).
    List {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a pairing; the sidecar's session is refused from its next call on.
    Revoke {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        sidecar_id: String,
    },
}

/// Exit code for configuration errors.
const EXIT_CONFIG: u8 = 2;

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn report_error(code: ErrorCode, key: Option<&str>, message: &str) {
    match key {
        Some(key) if !key.is_empty() => eprintln!("error: {code} at {key}: {message}"),
        _ => eprintln!("error: {code}: {message}"),
    }
    eprintln!("what to do: {}", code.user_action());
}

fn load_config(path: &std::path::Path) -> Result<GatewayConfiguration, ExitCode> {
    GatewayConfiguration::from_yaml_file(path).map_err(|error| {
        report_error(error.code, Some(&error.key), &error.message);
        ExitCode::from(EXIT_CONFIG)
    })
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve { config } => serve(&config).await,
        Command::Pairing { command } => pairing(command).await,
        Command::Audit { command } => audit(command).await,
        Command::Key {
            command: KeyCommand::Rotate { config, confirm },
        } => key_rotate(&config, confirm).await,
        Command::Store {
            command: StoreCommand::Migrate { config, json },
        } => store_migrate(&config, json).await,
    }
}

/// The SQLite file in `state_dir` (the audit trail's, and the embedded store's), opened on
/// the blocking pool; a failure is reported and becomes the exit code.
async fn open_local_file(
    config: &GatewayConfiguration,
) -> Result<crate::store::SqliteStore, ExitCode> {
    let state_dir = config.state_dir.clone();
    match tokio::task::spawn_blocking(move || crate::store::SqliteStore::open(&state_dir)).await {
        Ok(Ok(store)) => Ok(store),
        Ok(Err(error)) => {
            report_error(
                ErrorCode::StateStoreError,
                Some("state_dir"),
                &error.to_string(),
            );
            Err(ExitCode::FAILURE)
        }
        Err(_) => {
            report_error(ErrorCode::InternalError, None, "startup task failed");
            Err(ExitCode::FAILURE)
        }
    }
}

/// The cluster store's connection settings, or the configuration error (`why_postgres`: what
/// needs the cluster store) reported.
fn postgres_options(
    config: &GatewayConfiguration,
    why_postgres: &str,
) -> Result<crate::store::PostgresOptions, ExitCode> {
    match config.store.postgres_options() {
        Ok(Some(options)) => Ok(options),
        Ok(None) => {
            report_error(
                ErrorCode::ConfigInvalid,
                Some("store.backend"),
                why_postgres,
            );
            Err(ExitCode::from(EXIT_CONFIG))
        }
        Err(error) => {
            report_error(error.code, Some(&error.key), &error.message);
            Err(ExitCode::from(EXIT_CONFIG))
        }
    }
}

async fn store_migrate(path: &std::path::Path, json: bool) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_logging(config.log_format, "warn");
    let options = match postgres_options(
        &config,
        "must be postgres: the configuration names the store to migrate into",
    ) {
        Ok(options) => options,
        Err(code) => return code,
    };
    let file = config.state_dir.join(crate::store::sqlite::DATABASE_FILE);
    if !file.exists() {
        report_error(
            ErrorCode::StateStoreError,
            Some("state_dir"),
            &format!(
                "{} does not exist: there is nothing to migrate",
                file.display()
            ),
        );
        return ExitCode::FAILURE;
    }
    let sqlite = match open_local_file(&config).await {
        Ok(sqlite) => sqlite,
        Err(code) => return code,
    };
    let postgres = match crate::store::PostgresStore::open(&options).await {
        Ok(postgres) => postgres,
        Err(error) => {
            report_error(
                ErrorCode::StateStoreError,
                Some("store"),
                &error.to_string(),
            );
            return ExitCode::FAILURE;
        }
    };
    match crate::store::migrate::migrate_embedded(&sqlite, &postgres).await {
        Ok(report) => {
            if json {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            } else {
                println!(
                    "migrated {} pairings ({} active), {} handshake timestamps, {} journal anchors{}",
                    report.pairings,
                    report.active_pairings,
                    report.handshake_timestamps,
                    report.journal_anchors,
                    if report.gateway_key_recorded {
                        ", and the gateway key's record"
                    } else {
                        ""
                    }
                );
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            report_error(
                ErrorCode::StateStoreError,
                Some("store"),
                &error.to_string(),
            );
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn serve(path: &std::path::Path) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_logging(config.log_format, "info");
    let handle = match crate::start(config).await {
        Ok(handle) => handle,
        Err(error) => {
            report_error(error.code(), error.key(), &error.message());
            return match error {
                crate::StartError::Config(_) => ExitCode::from(EXIT_CONFIG),
                _ => ExitCode::FAILURE,
            };
        }
    };
    shutdown_signal().await;
    tracing::info!("shutdown requested");
    handle.shutdown().await;
    ExitCode::SUCCESS
}

struct Opened {
    config: GatewayConfiguration,
    store: Store,
    instance_id: String,
    public_key: protocol::identity::PublicKey,
}

async fn open_state(path: &std::path::Path) -> Result<Opened, ExitCode> {
    let config = load_config(path)?;
    init_logging(config.log_format, "warn");
    if let Err(error) = config.resolve() {
        report_error(error.code, Some(&error.key), &error.message);
        return Err(ExitCode::from(EXIT_CONFIG));
    }
    let state_dir = config.state_dir.clone();
    let configured = config.instance_id.clone();
    let shared = match crate::app::open_shared_store(&config).await {
        Ok(shared) => shared,
        Err(error) => {
            report_error(
                ErrorCode::StateStoreError,
                Some("store"),
                &error.to_string(),
            );
            return Err(ExitCode::FAILURE);
        }
    };
    let opened = tokio::task::spawn_blocking(move || {
        let store = match shared {
            Some(store) => store,
            None => Store::open(&state_dir).map_err(|e| e.to_string())?,
        };
        let keypair =
            crate::app::load_gateway_key(&store, &state_dir).map_err(|e| e.to_string())?;
        let instance_id =
            crate::store::keys::load_or_create_instance_id(&state_dir, configured.as_deref())
                .map_err(|e| e.to_string())?;
        Ok::<_, String>((store, keypair.public(), instance_id))
    })
    .await;
    let (store, public_key, instance_id) = opened_or_exit(opened)?;
    Ok(Opened {
        config,
        store,
        instance_id,
        public_key,
    })
}

/// `ibkr-gateway key rotate`. Revokes first, then replaces the key: a crash in between leaves
/// the old key with no pairing to contradict it, never a new key under old pairings.
async fn key_rotate(path: &std::path::Path, confirm: bool) -> ExitCode {
    let config = match load_config(path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    init_logging(config.log_format, "warn");
    let state_dir = config.state_dir.clone();
    let opened = tokio::task::spawn_blocking({
        let state_dir = state_dir.clone();
        move || Store::open(&state_dir).map_err(|e| e.to_string())
    })
    .await;
    let store = match opened_or_exit(opened) {
        Ok(store) => store,
        Err(code) => return code,
    };
    let active: Vec<_> = match store.list_pairings().await {
        Ok(pairings) => pairings.into_iter().filter(|p| p.is_active()).collect(),
        Err(error) => {
            report_error(ErrorCode::StateStoreError, None, &error.to_string());
            return ExitCode::FAILURE;
        }
    };
    if !active.is_empty() && !confirm {
        report_error(
            ErrorCode::CliArgumentInvalid,
            Some("--confirm"),
            &format!(
                "{} active pairing(s) pinned the current key and will be revoked; pass --confirm \
                 to rotate anyway",
                active.len()
            ),
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    if let Err(error) = store
        .revoke_all_for_key_rotation(crate::clock::unix_ms())
        .await
    {
        report_error(ErrorCode::StateStoreError, None, &error.to_string());
        return ExitCode::FAILURE;
    }
    let rotated = tokio::task::spawn_blocking(move || {
        let now = crate::clock::unix_ms() / 1000;
        let retired = if crate::store::keys::key_file_exists(&state_dir) {
            Some(crate::store::keys::retire_key_file(&state_dir, now).map_err(|e| e.to_string())?)
        } else {
            None
        };
        let keypair =
            crate::app::load_gateway_key(&store, &state_dir).map_err(|e| e.to_string())?;
        Ok::<_, String>((retired, keypair.public().fingerprint()))
    })
    .await;
    let (retired, fingerprint) = match opened_or_exit(rotated) {
        Ok(done) => done,
        Err(code) => return code,
    };
    println!("New gateway key: fingerprint {fingerprint}");
    if let Some(retired) = retired {
        println!("The old key is kept as {retired} in state_dir (0600); delete it when done.");
    }
    println!("Revoked {} pairing(s):", active.len());
    for pairing in &active {
        println!("  {} (user {})", pairing.sidecar_id, pairing.user_id);
    }
    println!(
        "Start the gateway, then give each user a new code (ibkr-gateway pairing code --config \
         <file> --user-id <subject>); on each laptop: ibkr-agent sidecar pairing revoke \
         --remote-instance-id <id> --sidecar-id <id>, then ibkr-agent sidecar pair --gateway \
         <URL> --code -, and compare the new fingerprint above."
    );
    ExitCode::SUCCESS
}

/// What a blocking startup task opened, or the error reported and the exit code.
fn opened_or_exit<T>(
    opened: Result<Result<T, String>, tokio::task::JoinError>,
) -> Result<T, ExitCode> {
    match opened {
        Ok(Ok(opened)) => Ok(opened),
        Ok(Err(message)) => {
            report_error(ErrorCode::StateStoreError, Some("state_dir"), &message);
            Err(ExitCode::FAILURE)
        }
        Err(_) => {
            report_error(ErrorCode::InternalError, None, "startup task failed");
            Err(ExitCode::FAILURE)
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the Unix epoch (UTC).
pub fn format_utc_ms(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let in_day = seconds.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        in_day / 3600,
        (in_day % 3600) / 60,
        in_day % 60
    )
}

async fn audit(command: AuditCommand) -> ExitCode {
    match command {
        AuditCommand::Verify { config, json } => audit_verify(&config, json).await,
        AuditCommand::Reseal { config, json } => audit_reseal(&config, json).await,
        AuditCommand::Tail {
            config,
            limit,
            shared,
            json,
        } => {
            let config = match load_config(&config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            init_logging(config.log_format, "warn");
            let records = if shared {
                shared_audit_tail(&config, limit).await
            } else {
                local_audit_tail(&config, limit).await
            };
            let records = match records {
                Ok(records) => records,
                Err(code) => return code,
            };
            print_audit_records(&records, json);
            ExitCode::SUCCESS
        }
    }
}

/// The newest records of this replica's own trail, each with no replica named.
async fn local_audit_tail(
    config: &GatewayConfiguration,
    limit: u32,
) -> Result<Vec<(Option<String>, crate::audit::log::StoredAuditRecord)>, ExitCode> {
    // The audit trail is in state_dir's SQLite file, whatever the store's backend.
    let store = open_local_file(config).await?;
    match crate::audit::log::tail(&store, limit).await {
        Ok(records) => Ok(records.into_iter().map(|record| (None, record)).collect()),
        Err(error) => {
            report_error(ErrorCode::StateStoreError, None, &error.to_string());
            Err(ExitCode::FAILURE)
        }
    }
}

/// The newest records of every replica, from the shared store's copy.
async fn shared_audit_tail(
    config: &GatewayConfiguration,
    limit: u32,
) -> Result<Vec<(Option<String>, crate::audit::log::StoredAuditRecord)>, ExitCode> {
    let options = postgres_options(
        config,
        "--shared reads the cluster store's copy of the trail: store.backend must be postgres",
    )?;
    let read = async {
        // A reading command never changes the schema.
        let store = crate::store::PostgresStore::open_existing(&options).await?;
        crate::audit::shared::tail(&store, limit).await
    };
    match read.await {
        Ok(records) => Ok(records
            .into_iter()
            .map(|shared| (Some(shared.replica_id), shared.stored))
            .collect()),
        Err(error) => {
            report_error(ErrorCode::StateStoreError, None, &error.to_string());
            Err(ExitCode::FAILURE)
        }
    }
}

fn print_audit_records(
    records: &[(Option<String>, crate::audit::log::StoredAuditRecord)],
    json: bool,
) {
    if json {
        let list: Vec<serde_json::Value> = records
            .iter()
            .map(|(replica, stored)| {
                let mut value = serde_json::to_value(stored).unwrap_or_default();
                if let Some(object) = value.as_object_mut() {
                    object.insert("time".into(), format_utc_ms(stored.record.time_ms).into());
                    if let Some(replica) = replica {
                        object.insert("replica_id".into(), replica.clone().into());
                    }
                }
                value
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
    } else if records.is_empty() {
        println!("no audit records");
    } else {
        let dash = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
        for (replica, stored) in records {
            let record = &stored.record;
            let replica = replica
                .as_ref()
                .map(|replica| format!("{replica}\t"))
                .unwrap_or_default();
            println!(
                "{replica}{}\t{}\t{}\t{}\t{}ms\tscope={}\tsidecar={}\trequest={}\tpayload={}\ttoken={}",
                format_utc_ms(record.time_ms),
                record.subject,
                record.tool,
                record.outcome,
                record.latency_ms,
                dash(&record.scope),
                dash(&record.sidecar_id),
                dash(&record.request_id),
                dash(&record.payload_hash),
                dash(&record.token_id_hmac),
            );
        }
    }
}

/// The store's database connection and the chain key, for `audit verify` and `audit reseal`:
/// the secret is the one the gateway runs with (environment, else `state_dir`), never a new
/// one.
async fn open_audit(
    path: &std::path::Path,
) -> Result<
    (
        rusqlite::Connection,
        std::path::PathBuf,
        crate::audit::chain::ChainKey,
    ),
    ExitCode,
> {
    let config = load_config(path)?;
    init_logging(config.log_format, "warn");
    let state_dir = config.state_dir.clone();
    let variable = config.remote_mcp.token_id_hmac_secret_env.clone();
    let opened = tokio::task::spawn_blocking(move || {
        crate::audit::verify::open_trail(&state_dir, &variable)
            .map(|(conn, key)| (conn, state_dir, key))
    })
    .await;
    opened_or_exit(opened)
}

/// The human summary of a verify report (stdout).
fn print_verify_report(report: &crate::audit::verify::VerifyReport) {
    let range = match (report.first_id, report.last_id) {
        (Some(first), Some(last)) => format!(" (records {first} to {last})"),
        _ => String::new(),
    };
    if report.ok {
        println!(
            "Audit trail OK: {} records{range}; chain from record {}, audit.head at record {}, retention pruned through record {}.",
            report.records,
            report.chain_start.unwrap_or(1),
            report.head_tip.unwrap_or(0),
            report.pruned_through.unwrap_or(0),
        );
    } else {
        let at = report
            .broken_at_id
            .map_or_else(String::new, |id| format!(" at record {id}"));
        println!(
            "Audit trail BROKEN{at}: {}",
            report.problem.as_deref().unwrap_or("unknown problem")
        );
    }
    if report.unchained_records > 0 {
        println!(
            "Note: {} records before the chain (written before it existed, or under an earlier audit secret) are not covered by it.",
            report.unchained_records
        );
    }
    for reseal in &report.reseals {
        println!(
            "Note: resealed by an operator at record {} on {}: {}",
            reseal.id,
            format_utc_ms(reseal.time_ms),
            reseal.note.as_deref().unwrap_or("-")
        );
    }
}

async fn audit_verify(path: &std::path::Path, json: bool) -> ExitCode {
    let (mut conn, state_dir, key) = match open_audit(path).await {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let checked = tokio::task::spawn_blocking(move || {
        crate::audit::verify::verify(&mut conn, &state_dir, &key)
    })
    .await;
    let report = match checked {
        Ok(Ok(report)) => report,
        Ok(Err(error)) => {
            report_error(ErrorCode::StateStoreError, None, &error.to_string());
            return ExitCode::FAILURE;
        }
        Err(_) => {
            report_error(ErrorCode::InternalError, None, "verify task failed");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!("{}", serde_json::to_value(&report).unwrap_or_default());
    } else {
        print_verify_report(&report);
    }
    if report.ok {
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "error: the audit trail does not verify: {}",
        report.problem.as_deref().unwrap_or("unknown problem")
    );
    eprintln!(
        "what to do: keep a copy of state_dir for the investigation; restore the newest backup of gateway.sqlite3 with its audit.head if one holds the missing records; otherwise, once investigated, run `ibkr-gateway audit reseal` with the gateway stopped (docs/operations.md)."
    );
    ExitCode::from(EXIT_AUDIT_BROKEN)
}

async fn audit_reseal(path: &std::path::Path, json: bool) -> ExitCode {
    let (mut conn, state_dir, key) = match open_audit(path).await {
        Ok(opened) => opened,
        Err(code) => return code,
    };
    let now = crate::clock::unix_ms();
    let done = tokio::task::spawn_blocking(move || {
        crate::audit::verify::reseal(&mut conn, &state_dir, &key, now)
    })
    .await;
    match done {
        Ok(Ok(resealed)) => {
            if json {
                println!("{}", serde_json::to_value(&resealed).unwrap_or_default());
            } else {
                println!(
                    "Resealed: operator record {} names what was found ({}); the {}. Start the gateway again.",
                    resealed.marker_id,
                    resealed.problem,
                    if resealed.continued {
                        "chain continues"
                    } else {
                        "chain starts a new segment there"
                    }
                );
            }
            ExitCode::SUCCESS
        }
        Ok(Err(crate::audit::verify::ResealError::Intact)) => {
            eprintln!("error: nothing to reseal: the audit trail verifies");
            ExitCode::FAILURE
        }
        Ok(Err(error)) => {
            report_error(ErrorCode::StateStoreError, None, &error.to_string());
            ExitCode::FAILURE
        }
        Err(_) => {
            report_error(ErrorCode::InternalError, None, "reseal task failed");
            ExitCode::FAILURE
        }
    }
}

fn pairing_json(record: &PairingRecord) -> serde_json::Value {
    serde_json::json!({
        "pairing_id": record.pairing_id.to_hex(),
        "sidecar_id": record.sidecar_id,
        "user_id": record.user_id,
        "display_name": record.display_name,
        "sidecar_public_key": record.sidecar_public_key.to_hex(),
        "fingerprint": record.sidecar_public_key.fingerprint(),
        "created_at_ms": record.created_at_ms,
        "revoked_at_ms": record.revoked_at_ms,
        "active": record.is_active(),
    })
}

async fn pairing(command: PairingCommand) -> ExitCode {
    match command {
        PairingCommand::Code {
            config,
            user_id,
            ttl_seconds,
            json,
        } => {
            let opened = match open_state(&config).await {
                Ok(opened) => opened,
                Err(code) => return code,
            };
            let resolved = match opened.config.resolve() {
                Ok(resolved) => resolved,
                Err(_) => return ExitCode::from(EXIT_CONFIG),
            };
            if !resolved.relay_enabled {
                report_error(
                    ErrorCode::ConfigSidecarForbidden,
                    Some("sidecar.enabled"),
                    "pairing needs the sidecar relay enabled",
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            let ttl =
                Duration::from_secs(ttl_seconds.unwrap_or(opened.config.pairing.code_ttl_seconds));
            match crate::pairing::issue_code(
                &opened.store,
                &user_id,
                ttl,
                opened.config.pairing.max_attempts_per_code,
            )
            .await
            {
                Ok(issued) => {
                    if json {
                        let output = serde_json::json!({
                            "code": issued.code.as_str(),
                            "code_id": issued.code_id,
                            "user_id": issued.user_id,
                            "expires_at_ms": issued.expires_at_ms,
                            "expires_in_seconds": ttl.as_secs(),
                            "gateway_url": resolved.base_url,
                            "relay_url": resolved.relay_url,
                            "instance_id": opened.instance_id,
                            "gateway_public_key": opened.public_key.to_hex(),
                            "gateway_fingerprint": opened.public_key.fingerprint(),
                        });
                        println!("{output}");
                    } else {
                        println!("{}", issued.code.as_str());
                        eprintln!(
                            "Pairing code for user {} (single use, expires in {} s).\n\
                             On the laptop run: ibkr-agent sidecar pair --gateway {} --code -   (then type the code)\n\
                             Gateway fingerprint: {}",
                            issued.user_id,
                            ttl.as_secs(),
                            resolved.base_url,
                            opened.public_key.fingerprint()
                        );
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    report_error(error.code, None, &error.message());
                    ExitCode::FAILURE
                }
            }
        }
        PairingCommand::List { config, json } => {
            let opened = match open_state(&config).await {
                Ok(opened) => opened,
                Err(code) => return code,
            };
            match opened.store.list_pairings().await {
                Ok(records) => {
                    if json {
                        let list: Vec<_> = records.iter().map(pairing_json).collect();
                        println!("{}", serde_json::Value::Array(list));
                    } else if records.is_empty() {
                        println!("no pairings");
                    } else {
                        for record in &records {
                            println!(
                                "{}\tuser={}\tname={}\tfingerprint={}\t{}",
                                record.sidecar_id,
                                record.user_id,
                                record.display_name,
                                record.sidecar_public_key.fingerprint(),
                                if record.is_active() {
                                    "active"
                                } else {
                                    "revoked"
                                }
                            );
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    report_error(ErrorCode::StateStoreError, None, &error.to_string());
                    ExitCode::FAILURE
                }
            }
        }
        PairingCommand::Revoke { config, sidecar_id } => {
            let opened = match open_state(&config).await {
                Ok(opened) => opened,
                Err(code) => return code,
            };
            match opened
                .store
                .revoke_pairing(sidecar_id.clone(), crate::clock::unix_ms())
                .await
            {
                Ok(true) => {
                    println!("revoked {sidecar_id}");
                    ExitCode::SUCCESS
                }
                Ok(false) => {
                    eprintln!("error: no active pairing has sidecar id {sidecar_id}");
                    ExitCode::FAILURE
                }
                Err(error) => {
                    report_error(ErrorCode::StateStoreError, None, &error.to_string());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_render_like_rfc3339() {
        assert_eq!(format_utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_utc_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_utc_ms(1_794_225_600_000), "2026-11-09T12:00:00.000Z");
        assert_eq!(format_utc_ms(-1), "1969-12-31T23:59:59.999Z");
    }
}
