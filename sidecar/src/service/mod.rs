//! `ibkr-agent sidecar service install|uninstall|status`: the daemon as a per-user service, a
//! systemd user unit on Linux and a launchd agent on macOS (`docs/sidecar-cli.md`).
//!
//! [`render`] turns an explicit [`ServiceSpec`] into the file's text, [`runner`] is the seam to
//! `systemctl` and `launchctl`, and this module decides what to write and what to run. The
//! service file holds no secret: the daemon reads its keys from the state directory.

mod command;
pub mod render;
pub mod runner;

use crate::config::{CONFIG_FILE, SidecarConfig};
use crate::error::SidecarError;
use clap::{Args, Subcommand};
pub use command::{command, install_json, status_json};
pub use render::{LAUNCHD_LABEL, MARKER, SYSTEMD_UNIT, ServiceSpec};
use render::{launchd_plist, path_text, systemd_unit};
use runner::shell_word;
pub use runner::{CommandOutput, CommandRunner, ManagerCommand, SystemRunner};
use shared_safety::ErrorCode;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub command: ServiceCommand,
}

#[derive(Debug, Subcommand)]
pub enum ServiceCommand {
    /// Write the service file (systemd user unit, launchd agent) and start the daemon now and
    /// at every login; it restarts after a failure.
    Install(InstallArgs),
    /// Stop and disable the service and remove its file.
    Uninstall(UninstallArgs),
    /// Whether the service file is installed, loaded by the service manager, and running.
    Status,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// The daemon configuration the service runs with. Default: <state_dir>/sidecar.yaml. It
    /// must pass validation, or nothing is installed.
    #[arg(long, value_name = "YAML")]
    pub config: Option<PathBuf>,
    /// Write the file, but neither load nor start it.
    #[arg(long)]
    pub no_start: bool,
    /// Print the file that would be written; write nothing and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Replace a file of the same name that `service install` did not write.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Also stop and remove a file of the same name that `service install` did not write.
    #[arg(long)]
    pub force: bool,
}

/// The service manager this system has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    /// Linux: a systemd user unit.
    Systemd,
    /// macOS: a launchd agent in the user's GUI domain.
    Launchd,
}

impl Platform {
    /// This system's, or `SERVICE_UNSUPPORTED`.
    pub fn current() -> Result<Platform, SidecarError> {
        if cfg!(target_os = "linux") {
            Ok(Platform::Systemd)
        } else if cfg!(target_os = "macos") {
            Ok(Platform::Launchd)
        } else {
            Err(SidecarError::new(
                ErrorCode::ServiceUnsupported,
                format!("(this system is {})", std::env::consts::OS),
            ))
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Systemd => "systemd",
            Platform::Launchd => "launchd",
        }
    }

    /// The unit's name, or the agent's label.
    pub fn service_name(self) -> &'static str {
        match self {
            Platform::Systemd => SYSTEMD_UNIT,
            Platform::Launchd => LAUNCHD_LABEL,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Platform::Systemd => "systemd user unit",
            Platform::Launchd => "launchd agent",
        }
    }
}

/// Everything the service commands take from the process, so tests can set every piece.
#[derive(Clone, Debug)]
pub struct Host {
    pub platform: Platform,
    pub home: PathBuf,
    /// `$XDG_CONFIG_HOME` when it is absolute: systemd looks for user units under it.
    pub xdg_config_home: Option<PathBuf>,
    /// The `ibkr-agent` executable the service runs: the one running now.
    pub exe: PathBuf,
    /// A relative `--state-dir` or `--config` is taken from here.
    pub cwd: PathBuf,
}

impl Host {
    pub fn from_process() -> Result<Host, SidecarError> {
        let platform = Platform::current()?;
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|home| home.is_absolute())
            .ok_or_else(|| {
                SidecarError::config(
                    "(HOME is not an absolute path, and the service file goes under the home \
                     directory)",
                )
            })?;
        let xdg_config_home = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|dir| dir.is_absolute());
        let exe = std::env::current_exe().map_err(|error| {
            SidecarError::internal(format!(
                "(cannot find the running ibkr-agent executable: {})",
                error.kind()
            ))
        })?;
        let cwd = std::env::current_dir().map_err(|error| {
            SidecarError::internal(format!(
                "(cannot read the current directory: {})",
                error.kind()
            ))
        })?;
        Ok(Host {
            platform,
            home,
            xdg_config_home,
            exe,
            cwd,
        })
    }

    /// Where the service file goes.
    pub fn service_file(&self) -> PathBuf {
        match self.platform {
            Platform::Systemd => self
                .xdg_config_home
                .clone()
                .unwrap_or_else(|| self.home.join(".config"))
                .join("systemd")
                .join("user")
                .join(SYSTEMD_UNIT),
            Platform::Launchd => self
                .home
                .join("Library")
                .join("LaunchAgents")
                .join(format!("{LAUNCHD_LABEL}.plist")),
        }
    }

    /// Where launchd writes the daemon's output.
    pub fn log_dir(&self) -> PathBuf {
        self.home.join("Library").join("Logs").join("ibkr-agent")
    }

    fn absolute(&self, path: &Path) -> PathBuf {
        self.cwd
            .join(path)
            .components()
            .filter(|component| *component != Component::CurDir)
            .collect()
    }

    /// A path for a message: under the home directory as `~/...`.
    fn shown(&self, path: &Path) -> String {
        shell_word(&path.to_string_lossy(), &self.home)
    }

    /// What the service runs: this executable with `sidecar run`, plus `--state-dir` unless the
    /// state directory is the one the daemon finds by itself under HOME, and `--config` unless
    /// it is `<state_dir>/sidecar.yaml`.
    pub fn spec(
        &self,
        state_dir: &Path,
        config: Option<&Path>,
    ) -> Result<ServiceSpec, SidecarError> {
        let state_dir = self.absolute(state_dir);
        let mut args = vec!["sidecar".to_string(), "run".to_string()];
        if state_dir != self.home.join(".config").join("ibkr-agent") {
            args.push("--state-dir".into());
            args.push(path_text(&state_dir, "state directory")?.to_string());
        }
        if let Some(config) = config.map(|config| self.absolute(config))
            && config != state_dir.join(CONFIG_FILE)
        {
            args.push("--config".into());
            args.push(path_text(&config, "configuration")?.to_string());
        }
        Ok(ServiceSpec {
            program: self.exe.clone(),
            args,
            home: self.home.clone(),
            log_dir: self.log_dir(),
        })
    }

    fn render(&self, spec: &ServiceSpec) -> Result<String, SidecarError> {
        match self.platform {
            Platform::Systemd => systemd_unit(spec),
            Platform::Launchd => launchd_plist(spec),
        }
    }

    /// How to start an installed service by hand.
    fn start_hint(&self) -> String {
        match self.platform {
            Platform::Systemd => format!(
                "systemctl --user daemon-reload && systemctl --user enable --now {SYSTEMD_UNIT}"
            ),
            Platform::Launchd => format!(
                "launchctl bootstrap gui/$(id -u) {}",
                self.shown(&self.service_file())
            ),
        }
    }

    fn logs_hint(&self) -> String {
        match self.platform {
            Platform::Systemd => format!("journalctl --user -u {SYSTEMD_UNIT} -f"),
            Platform::Launchd => format!(
                "tail -f {}",
                self.shown(&self.log_dir().join(render::LAUNCHD_LOG_FILE))
            ),
        }
    }
}

// ---- install --------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
pub struct InstallOptions {
    pub config: Option<PathBuf>,
    /// Load and start it (not `--no-start`).
    pub start: bool,
    pub dry_run: bool,
    pub force: bool,
}

#[derive(Clone, Debug)]
pub struct InstallReport {
    pub file: PathBuf,
    /// The file's text (written, or with `dry_run` what would be).
    pub text: String,
    pub spec: ServiceSpec,
    pub dry_run: bool,
    /// The file was written (false for a dry run and when it already held this text).
    pub written: bool,
    /// It replaced an older file.
    pub replaced: bool,
    /// The service manager loaded and started it (or it was loaded and unchanged).
    pub started: bool,
}

/// Writes the service file and, with `start`, loads and starts it. Refuses a configuration that
/// does not validate (`CONFIG_INVALID`: the service could never start) and a file it did not
/// write (`SERVICE_FILE_FOREIGN`, unless `force`).
pub fn install(
    host: &Host,
    runner: &mut dyn CommandRunner,
    state_dir: &Path,
    options: &InstallOptions,
) -> Result<InstallReport, SidecarError> {
    let config = options.config.as_deref().map(|path| host.absolute(path));
    let spec = host.spec(state_dir, config.as_deref())?;
    SidecarConfig::load_for_state_dir(config.as_deref(), &host.absolute(state_dir))?;
    let text = host.render(&spec)?;
    let file = host.service_file();
    let existing = read_existing(host, &file)?;
    if existing
        .as_deref()
        .is_some_and(|existing| !existing.contains(MARKER))
        && !options.force
    {
        return Err(foreign(host, &file));
    }
    let changed = existing.as_deref() != Some(text.as_str());
    let mut report = InstallReport {
        file,
        text,
        spec,
        dry_run: options.dry_run,
        written: false,
        replaced: false,
        started: false,
    };
    if options.dry_run {
        return Ok(report);
    }
    if changed {
        write_service_file(host, &report.file, &report.text)?;
        report.written = true;
        report.replaced = existing.is_some();
    }
    if host.platform == Platform::Launchd {
        create_log_dir(host)?;
    }
    if !options.start {
        return Ok(report);
    }
    let written = format!(
        "The service file is in place at {}",
        host.shown(&report.file)
    );
    match host.platform {
        Platform::Systemd => {
            let commands = if report.replaced {
                // `enable --now` would leave a running daemon on the old unit.
                vec![
                    ManagerCommand::systemctl(&["daemon-reload"]),
                    ManagerCommand::systemctl(&["enable", SYSTEMD_UNIT]),
                    ManagerCommand::systemctl(&["restart", SYSTEMD_UNIT]),
                ]
            } else {
                vec![
                    ManagerCommand::systemctl(&["daemon-reload"]),
                    ManagerCommand::systemctl(&["enable", "--now", SYSTEMD_UNIT]),
                ]
            };
            run_all(host, runner, &commands, &written, "")?;
        }
        Platform::Launchd => {
            let domain = gui_domain(host, runner)?;
            let target = format!("{domain}/{LAUNCHD_LABEL}");
            let loaded = launchd_print(host, runner, &target)?.is_some();
            // Loaded and unchanged: it runs the file as it is.
            if !loaded || changed {
                let path = path_text(&report.file, "service file")?;
                let mut commands = Vec::new();
                if loaded {
                    // A loaded agent keeps its old definition until it is booted out.
                    commands.push(ManagerCommand::launchctl(&["bootout", &target]));
                }
                commands.push(ManagerCommand::launchctl(&["enable", &target]));
                commands.push(ManagerCommand::launchctl(&["bootstrap", &domain, path]));
                run_all(host, runner, &commands, &written, "")?;
            }
        }
    }
    report.started = true;
    Ok(report)
}

// ---- uninstall ------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct UninstallReport {
    pub file: PathBuf,
    /// There was a file to remove.
    pub was_installed: bool,
    /// The service manager was told to stop it (systemd always; launchd when it was loaded).
    pub stopped: bool,
    pub removed: bool,
}

/// Stops and disables the service and removes its file. Nothing installed: nothing to do. A
/// file `service install` did not write is left alone unless `force` (`SERVICE_FILE_FOREIGN`).
pub fn uninstall(
    host: &Host,
    runner: &mut dyn CommandRunner,
    force: bool,
) -> Result<UninstallReport, SidecarError> {
    let file = host.service_file();
    let mut report = UninstallReport {
        file: file.clone(),
        was_installed: false,
        stopped: false,
        removed: false,
    };
    let Some(existing) = read_existing(host, &file)? else {
        return Ok(report);
    };
    report.was_installed = true;
    if !existing.contains(MARKER) && !force {
        return Err(foreign(host, &file));
    }
    let remove_hint = format!(", then `rm {}`", host.shown(&file));
    match host.platform {
        Platform::Systemd => {
            let stop = [ManagerCommand::systemctl(&[
                "disable",
                "--now",
                SYSTEMD_UNIT,
            ])];
            let reload = [ManagerCommand::systemctl(&["daemon-reload"])];
            run_all(
                host,
                runner,
                &stop,
                "Nothing was removed",
                &format!("{remove_hint} and `{}`", reload[0].display(&host.home)),
            )?;
            report.stopped = true;
            remove_service_file(host, &file)?;
            report.removed = true;
            run_all(host, runner, &reload, "The unit file is removed", "")?;
        }
        Platform::Launchd => {
            let domain = gui_domain(host, runner)?;
            let target = format!("{domain}/{LAUNCHD_LABEL}");
            if launchd_print(host, runner, &target)?.is_some() {
                let stop = [ManagerCommand::launchctl(&["bootout", &target])];
                run_all(host, runner, &stop, "Nothing was removed", &remove_hint)?;
                report.stopped = true;
            }
            remove_service_file(host, &file)?;
            report.removed = true;
        }
    }
    Ok(report)
}

// ---- status ---------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
pub struct StatusReport {
    pub file: PathBuf,
    pub installed: bool,
    /// Written by `service install` (`None` when not installed).
    pub ours: Option<bool>,
    /// The service manager knows it (systemd: `LoadState=loaded`; launchd: bootstrapped in the
    /// user's GUI domain). `None`: the manager could not be asked.
    pub loaded: Option<bool>,
    /// systemd only: it starts at login (`UnitFileState=enabled`).
    pub enabled: Option<bool>,
    /// The daemon is running.
    pub active: Option<bool>,
    /// The manager's own word for its state (`active (running)`, `failed (failed)`, `running`).
    pub state: Option<String>,
    pub pid: Option<u32>,
    /// Why the manager could not be asked (`SERVICE_MANAGER_FAILED`).
    pub manager_error: Option<SidecarError>,
}

/// What the file and the service manager say. The manager not answering is reported, not an
/// error.
pub fn status(host: &Host, runner: &mut dyn CommandRunner) -> Result<StatusReport, SidecarError> {
    let file = host.service_file();
    let existing = read_existing(host, &file)?;
    let mut report = StatusReport {
        installed: existing.is_some(),
        ours: existing.as_deref().map(|text| text.contains(MARKER)),
        file,
        ..StatusReport::default()
    };
    let asked = match host.platform {
        Platform::Systemd => systemd_status(host, runner, &mut report),
        Platform::Launchd => launchd_status(host, runner, &mut report),
    };
    if let Err(error) = asked {
        report.manager_error = Some(error);
    }
    Ok(report)
}

fn systemd_status(
    host: &Host,
    runner: &mut dyn CommandRunner,
    report: &mut StatusReport,
) -> Result<(), SidecarError> {
    let show = ManagerCommand::systemctl(&[
        "show",
        "--property=LoadState,ActiveState,SubState,UnitFileState,MainPID",
        SYSTEMD_UNIT,
    ]);
    let output = checked_run(host, runner, &show)?;
    let value = |key: &str| {
        output.stdout.lines().find_map(|line| {
            line.strip_prefix(key)
                .and_then(|rest| rest.strip_prefix('='))
                .map(str::trim)
        })
    };
    let active_state = value("ActiveState").unwrap_or("");
    report.loaded = Some(value("LoadState") == Some("loaded"));
    report.enabled = Some(matches!(
        value("UnitFileState"),
        Some("enabled" | "enabled-runtime")
    ));
    report.active = Some(active_state == "active");
    report.state = Some(format!(
        "{active_state} ({})",
        value("SubState").unwrap_or("")
    ));
    report.pid = value("MainPID")
        .and_then(|pid| pid.parse().ok())
        .filter(|pid| *pid != 0);
    Ok(())
}

fn launchd_status(
    host: &Host,
    runner: &mut dyn CommandRunner,
    report: &mut StatusReport,
) -> Result<(), SidecarError> {
    let domain = gui_domain(host, runner)?;
    let printed = launchd_print(host, runner, &format!("{domain}/{LAUNCHD_LABEL}"))?;
    report.loaded = Some(printed.is_some());
    let Some(printed) = printed else {
        report.active = Some(false);
        return Ok(());
    };
    let value = |key: &str| {
        printed.lines().find_map(|line| {
            line.trim()
                .strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(" = "))
                .map(str::trim)
        })
    };
    let state = value("state");
    report.active = Some(state == Some("running"));
    report.state = state.map(str::to_string);
    report.pid = value("pid").and_then(|pid| pid.parse().ok());
    Ok(())
}

// ---- the service manager --------------------------------------------------------------------

/// Runs one command; `SERVICE_MANAGER_FAILED` when it cannot be started.
fn spawn(
    host: &Host,
    runner: &mut dyn CommandRunner,
    command: &ManagerCommand,
) -> Result<CommandOutput, SidecarError> {
    runner.run(command).map_err(|error| {
        SidecarError::new(
            ErrorCode::ServiceManagerFailed,
            format!(
                "(cannot run `{}`: {})",
                command.display(&host.home),
                error.kind()
            ),
        )
    })
}

/// Runs one command that must succeed.
fn checked_run(
    host: &Host,
    runner: &mut dyn CommandRunner,
    command: &ManagerCommand,
) -> Result<CommandOutput, SidecarError> {
    let output = spawn(host, runner, command)?;
    if output.success() {
        return Ok(output);
    }
    Err(SidecarError::new(
        ErrorCode::ServiceManagerFailed,
        format!(
            "(`{}` failed: {})",
            command.display(&host.home),
            output.summary()
        ),
    ))
}

/// Runs `commands` in order, stopping at the first failure with a message that says what was
/// done (`done`) and what to run by hand (the failed command, those after it, then `then`).
fn run_all(
    host: &Host,
    runner: &mut dyn CommandRunner,
    commands: &[ManagerCommand],
    done: &str,
    then: &str,
) -> Result<(), SidecarError> {
    for (index, command) in commands.iter().enumerate() {
        if let Err(error) = checked_run(host, runner, command) {
            let by_hand = commands[index..]
                .iter()
                .map(|command| command.display(&host.home))
                .collect::<Vec<_>>()
                .join(" && ");
            let detail = error.detail().unwrap_or("");
            let detail = detail
                .strip_suffix(')')
                .unwrap_or(detail)
                .trim_start_matches('(');
            return Err(SidecarError::new(
                ErrorCode::ServiceManagerFailed,
                format!("({detail}. {done}; to finish by hand run `{by_hand}`{then})"),
            ));
        }
    }
    Ok(())
}

/// `gui/<uid>`: the uid from `id -u`, else the owner of the home directory.
fn gui_domain(host: &Host, runner: &mut dyn CommandRunner) -> Result<String, SidecarError> {
    let from_id = runner
        .run(&ManagerCommand::new("id", &["-u"]))
        .ok()
        .filter(CommandOutput::success)
        .and_then(|output| output.stdout.trim().parse::<u32>().ok());
    let uid = match from_id {
        Some(uid) => uid,
        None => std::fs::metadata(&host.home)
            .map_err(|error| {
                SidecarError::new(
                    ErrorCode::ServiceManagerFailed,
                    format!(
                        "(cannot tell the user id: `id -u` failed and the home directory \
                         cannot be read: {})",
                        error.kind()
                    ),
                )
            })?
            .uid(),
    };
    Ok(format!("gui/{uid}"))
}

/// `launchctl print <target>`: its output when the agent is loaded, `None` when it is not.
fn launchd_print(
    host: &Host,
    runner: &mut dyn CommandRunner,
    target: &str,
) -> Result<Option<String>, SidecarError> {
    let output = spawn(host, runner, &ManagerCommand::launchctl(&["print", target]))?;
    Ok(output.success().then_some(output.stdout))
}

// ---- files ----------------------------------------------------------------------------------

fn file_error(host: &Host, what: &str, path: &Path, error: &std::io::Error) -> SidecarError {
    SidecarError::new(
        ErrorCode::ServiceFileError,
        format!("(cannot {what} {}: {})", host.shown(path), error.kind()),
    )
}

fn foreign(host: &Host, file: &Path) -> SidecarError {
    SidecarError::new(
        ErrorCode::ServiceFileForeign,
        format!("({} lacks the line `{MARKER}`)", host.shown(file)),
    )
}

/// The file's text, or `None` when there is none.
fn read_existing(host: &Host, file: &Path) -> Result<Option<String>, SidecarError> {
    match std::fs::read(file) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(file_error(host, "read", file, &error)),
    }
}

/// Writes the file whole (a temporary file renamed over it), mode 0644.
fn write_service_file(host: &Host, file: &Path, text: &str) -> Result<(), SidecarError> {
    let dir = file.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|error| file_error(host, "create", dir, &error))?;
    let name = file.file_name().map(|name| name.to_string_lossy());
    let temporary = dir.join(format!(".{}.tmp", name.unwrap_or_default()));
    let written = (|| {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&temporary)?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        // The mode given to open() is narrowed by the umask; the manager needs it readable.
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o644))?;
        std::fs::rename(&temporary, file)
    })();
    written.map_err(|error| {
        let _ = std::fs::remove_file(&temporary);
        file_error(host, "write", file, &error)
    })
}

fn remove_service_file(host: &Host, file: &Path) -> Result<(), SidecarError> {
    match std::fs::remove_file(file) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(file_error(host, "remove", file, &error)),
    }
}

/// launchd opens the log file itself but does not create its directory.
fn create_log_dir(host: &Host) -> Result<(), SidecarError> {
    let dir = host.log_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|error| file_error(host, "create", &dir, &error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::collections::VecDeque;

    /// Records every command and answers from a script (success with empty output once the
    /// script runs out).
    #[derive(Default)]
    struct FakeRunner {
        calls: Vec<String>,
        answers: VecDeque<std::io::Result<CommandOutput>>,
    }

    impl FakeRunner {
        fn answering(answers: Vec<std::io::Result<CommandOutput>>) -> Self {
            FakeRunner {
                calls: Vec::new(),
                answers: answers.into(),
            }
        }
    }

    impl CommandRunner for FakeRunner {
        fn run(&mut self, command: &ManagerCommand) -> std::io::Result<CommandOutput> {
            let mut line = command.program.to_string();
            for arg in &command.args {
                line.push(' ');
                line.push_str(arg);
            }
            self.calls.push(line);
            self.answers.pop_front().unwrap_or_else(|| Ok(ok("")))
        }
    }

    fn ok(stdout: &str) -> CommandOutput {
        CommandOutput {
            status: Some(0),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    fn failed(status: i32, stderr: &str) -> CommandOutput {
        CommandOutput {
            status: Some(status),
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }

    /// A temporary HOME with a paired-looking state directory (a valid sidecar.yaml) at the
    /// default place.
    struct Fixture {
        _root: tempfile::TempDir,
        host: Host,
        state_dir: PathBuf,
    }

    fn fixture(platform: Platform) -> Fixture {
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home dir");
        let state_dir = home.join(".config").join("ibkr-agent");
        crate::paths::ensure_state_dir(&state_dir).unwrap();
        crate::config::write_default_config_if_absent(&state_dir, "ws://127.0.0.1:9/relay")
            .unwrap();
        let host = Host {
            platform,
            home: home.clone(),
            xdg_config_home: None,
            exe: PathBuf::from("/opt/ibkr agent/bin/ibkr-agent"),
            cwd: root.path().to_path_buf(),
        };
        Fixture {
            _root: root,
            host,
            state_dir,
        }
    }

    /// [`fixture`] with the service file installed (not started).
    fn installed(platform: Platform) -> Fixture {
        let f = fixture(platform);
        let mut runner = FakeRunner::default();
        install(
            &f.host,
            &mut runner,
            &f.state_dir,
            &InstallOptions::default(),
        )
        .unwrap();
        assert!(runner.calls.is_empty());
        f
    }

    fn start() -> InstallOptions {
        InstallOptions {
            start: true,
            ..InstallOptions::default()
        }
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Files anywhere under `dir`.
    fn files_under(dir: &Path) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    found.push(path);
                }
            }
        }
        found.sort();
        found
    }

    #[test]
    fn the_service_runs_sidecar_run_and_pins_only_what_is_not_the_default() {
        let f = fixture(Platform::Systemd);
        let spec = f.host.spec(&f.state_dir, None).unwrap();
        assert_eq!(
            spec.program,
            PathBuf::from("/opt/ibkr agent/bin/ibkr-agent")
        );
        assert_eq!(spec.args, ["sidecar", "run"]);
        // The default configuration named explicitly is still the default.
        let default_config = f.state_dir.join("sidecar.yaml");
        let spec = f.host.spec(&f.state_dir, Some(&default_config)).unwrap();
        assert_eq!(spec.args, ["sidecar", "run"]);
        // A relative configuration and state directory are pinned as absolute paths.
        let spec = f
            .host
            .spec(
                Path::new("./my state"),
                Some(Path::new("conf dir/sidecar.yaml")),
            )
            .unwrap();
        let cwd = f.host.cwd.to_str().unwrap();
        assert_eq!(
            spec.args,
            [
                "sidecar".to_string(),
                "run".into(),
                "--state-dir".into(),
                format!("{cwd}/my state"),
                "--config".into(),
                format!("{cwd}/conf dir/sidecar.yaml"),
            ]
        );
    }

    #[test]
    fn the_unit_goes_under_xdg_config_home_and_the_agent_under_library() {
        let mut f = fixture(Platform::Systemd);
        assert_eq!(
            f.host.service_file(),
            f.host
                .home
                .join(".config/systemd/user/ibkr-agent-sidecar.service")
        );
        f.host.xdg_config_home = Some(PathBuf::from("/xdg"));
        assert_eq!(
            f.host.service_file(),
            PathBuf::from("/xdg/systemd/user/ibkr-agent-sidecar.service")
        );
        f.host.platform = Platform::Launchd;
        assert_eq!(
            f.host.service_file(),
            f.host
                .home
                .join("Library/LaunchAgents/com.ibkr-agent.sidecar.plist")
        );
    }

    #[test]
    fn dry_run_writes_nothing_and_runs_nothing() {
        for platform in [Platform::Systemd, Platform::Launchd] {
            let f = fixture(platform);
            let before = files_under(&f.host.home);
            let mut runner = FakeRunner::default();
            let options = InstallOptions {
                dry_run: true,
                ..start()
            };
            let report = install(&f.host, &mut runner, &f.state_dir, &options).unwrap();
            assert!(report.dry_run && !report.written && !report.started);
            assert!(report.text.contains(MARKER));
            assert!(report.text.contains("/opt/ibkr agent/bin/ibkr-agent"));
            assert_eq!(files_under(&f.host.home), before);
            assert!(!f.host.log_dir().exists());
            assert!(runner.calls.is_empty(), "{:?}", runner.calls);
        }
    }

    #[test]
    fn systemd_install_writes_the_unit_0644_then_reloads_and_enables_it() {
        let f = fixture(Platform::Systemd);
        let mut runner = FakeRunner::default();
        let report = install(&f.host, &mut runner, &f.state_dir, &start()).unwrap();
        assert!(report.written && !report.replaced && report.started);
        let file = f.host.service_file();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), report.text);
        assert_eq!(mode(&file), 0o644);
        assert_eq!(
            runner.calls,
            [
                "systemctl --user daemon-reload",
                "systemctl --user enable --now ibkr-agent-sidecar.service",
            ]
        );
        // No temporary file is left beside it.
        assert_eq!(
            files_under(file.parent().unwrap()),
            std::slice::from_ref(&file)
        );

        // Installing again with the same text leaves the file and starts it again (idempotent).
        let mut runner = FakeRunner::default();
        let again = install(&f.host, &mut runner, &f.state_dir, &start()).unwrap();
        assert!(!again.written && !again.replaced && again.started);
        assert_eq!(runner.calls.len(), 2);

        // A changed unit replaces the old one and restarts the running daemon on it.
        let other = f.host.home.join("other.yaml");
        std::fs::copy(f.state_dir.join("sidecar.yaml"), &other).unwrap();
        let mut runner = FakeRunner::default();
        let options = InstallOptions {
            config: Some(other.clone()),
            ..start()
        };
        let replaced = install(&f.host, &mut runner, &f.state_dir, &options).unwrap();
        assert!(replaced.written && replaced.replaced);
        assert!(
            std::fs::read_to_string(&file)
                .unwrap()
                .contains(&format!("--config \"{}\"", other.display()))
        );
        assert_eq!(
            runner.calls,
            [
                "systemctl --user daemon-reload",
                "systemctl --user enable ibkr-agent-sidecar.service",
                "systemctl --user restart ibkr-agent-sidecar.service",
            ]
        );
    }

    #[test]
    fn no_start_writes_the_file_and_runs_nothing() {
        let f = fixture(Platform::Systemd);
        let mut runner = FakeRunner::default();
        let report = install(
            &f.host,
            &mut runner,
            &f.state_dir,
            &InstallOptions::default(),
        )
        .unwrap();
        assert!(report.written && !report.started);
        assert!(f.host.service_file().exists());
        assert!(runner.calls.is_empty());
    }

    #[test]
    fn a_configuration_that_does_not_validate_installs_nothing() {
        let f = fixture(Platform::Systemd);
        let missing = f.host.home.join("missing.yaml");
        let mut runner = FakeRunner::default();
        let options = InstallOptions {
            config: Some(missing),
            ..start()
        };
        let error = install(&f.host, &mut runner, &f.state_dir, &options).unwrap_err();
        assert_eq!(error.code(), ErrorCode::ConfigInvalid);
        std::fs::remove_file(f.state_dir.join("sidecar.yaml")).unwrap();
        let error = install(&f.host, &mut runner, &f.state_dir, &start()).unwrap_err();
        assert_eq!(error.code(), ErrorCode::ConfigInvalid);
        assert!(!f.host.service_file().exists());
        assert!(runner.calls.is_empty());
    }

    #[test]
    fn a_foreign_file_is_neither_replaced_nor_removed_without_force() {
        let f = fixture(Platform::Systemd);
        let file = f.host.service_file();
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let foreign = "[Service]\nExecStart=/usr/bin/something-else\n";
        std::fs::write(&file, foreign).unwrap();
        let mut runner = FakeRunner::default();
        for options in [
            start(),
            InstallOptions {
                dry_run: true,
                ..start()
            },
        ] {
            let error = install(&f.host, &mut runner, &f.state_dir, &options).unwrap_err();
            assert_eq!(error.code(), ErrorCode::ServiceFileForeign);
            assert_eq!(error.exit_code(), 3);
            assert!(
                error
                    .to_string()
                    .contains("~/.config/systemd/user/ibkr-agent-sidecar.service"),
                "{error}"
            );
        }
        let error = uninstall(&f.host, &mut runner, false).unwrap_err();
        assert_eq!(error.code(), ErrorCode::ServiceFileForeign);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), foreign);
        assert!(runner.calls.is_empty());

        let status = status(&f.host, &mut runner).unwrap();
        assert_eq!((status.installed, status.ours), (true, Some(false)));

        let forced = InstallOptions {
            force: true,
            ..InstallOptions::default()
        };
        let report = install(&f.host, &mut runner, &f.state_dir, &forced).unwrap();
        assert!(report.replaced);
        assert!(std::fs::read_to_string(&file).unwrap().contains(MARKER));
    }

    #[test]
    fn uninstall_stops_disables_removes_and_reloads() {
        let f = fixture(Platform::Systemd);
        let mut runner = FakeRunner::default();
        install(&f.host, &mut runner, &f.state_dir, &start()).unwrap();
        let mut runner = FakeRunner::default();
        let report = uninstall(&f.host, &mut runner, false).unwrap();
        assert!(report.was_installed && report.stopped && report.removed);
        assert!(!f.host.service_file().exists());
        assert_eq!(
            runner.calls,
            [
                "systemctl --user disable --now ibkr-agent-sidecar.service",
                "systemctl --user daemon-reload",
            ]
        );
        // Again: nothing installed, nothing to do.
        let mut runner = FakeRunner::default();
        let report = uninstall(&f.host, &mut runner, false).unwrap();
        assert!(!report.was_installed && !report.stopped && !report.removed);
        assert!(runner.calls.is_empty());
    }

    #[test]
    fn a_failing_manager_is_refused_with_what_to_run_by_hand() {
        let f = fixture(Platform::Systemd);
        let mut runner = FakeRunner::answering(vec![Ok(failed(
            1,
            "Failed to connect to bus: No medium found",
        ))]);
        let error = install(&f.host, &mut runner, &f.state_dir, &start()).unwrap_err();
        assert_eq!(error.code(), ErrorCode::ServiceManagerFailed);
        assert_eq!(error.exit_code(), 1);
        let message = error.to_string();
        for part in [
            "`systemctl --user daemon-reload` failed: exit 1: Failed to connect to bus",
            "in place at ~/.config/systemd/user/ibkr-agent-sidecar.service",
            "by hand run `systemctl --user daemon-reload && systemctl --user enable --now \
             ibkr-agent-sidecar.service`",
        ] {
            assert!(message.contains(part), "{part} not in {message}");
        }
        assert!(
            !message.contains(f.host.home.to_str().unwrap()),
            "{message}"
        );
        // The file is written: running the commands by hand finishes the job.
        assert!(f.host.service_file().exists());
        assert_eq!(runner.calls.len(), 1);

        // A missing systemctl: uninstall leaves the file and says what to do.
        let mut runner = FakeRunner::answering(vec![Err(std::io::Error::from(
            std::io::ErrorKind::NotFound,
        ))]);
        let error = uninstall(&f.host, &mut runner, false).unwrap_err();
        assert_eq!(error.code(), ErrorCode::ServiceManagerFailed);
        let message = error.to_string();
        assert!(
            message.contains("cannot run `systemctl --user disable --now"),
            "{message}"
        );
        assert!(message.contains("Nothing was removed"), "{message}");
        assert!(
            message.contains("then `rm ~/.config/systemd/user/ibkr-agent-sidecar.service`"),
            "{message}"
        );
        assert!(f.host.service_file().exists());
    }

    #[test]
    fn systemd_status_reads_the_managers_properties() {
        let f = installed(Platform::Systemd);
        let mut runner = FakeRunner::answering(vec![Ok(ok(
            "LoadState=loaded\nActiveState=active\nSubState=running\nUnitFileState=enabled\nMainPID=4242\n",
        ))]);
        let report = status(&f.host, &mut runner).unwrap();
        assert_eq!(
            runner.calls,
            [
                "systemctl --user show --property=LoadState,ActiveState,SubState,UnitFileState,MainPID ibkr-agent-sidecar.service"
            ]
        );
        assert_eq!(
            status_json(&f.host, &report),
            json!({
                "platform": "systemd",
                "name": "ibkr-agent-sidecar.service",
                "installed": true,
                "ours": true,
                "loaded": true,
                "enabled": true,
                "active": true,
                "state": "active (running)",
                "pid": 4242,
                "manager_error": null,
            })
        );

        let mut runner = FakeRunner::answering(vec![Ok(ok(
            "LoadState=not-found\nActiveState=inactive\nSubState=dead\nUnitFileState=\nMainPID=0\n",
        ))]);
        let report = status(&f.host, &mut runner).unwrap();
        assert_eq!(
            (report.loaded, report.enabled, report.active, report.pid),
            (Some(false), Some(false), Some(false), None)
        );

        // No user manager to ask: reported, not an error.
        let mut runner = FakeRunner::answering(vec![Ok(failed(
            1,
            "Failed to connect to bus: No medium found",
        ))]);
        let report = status(&f.host, &mut runner).unwrap();
        let out = status_json(&f.host, &report);
        assert_eq!(out["installed"], true);
        assert_eq!(out["loaded"], Value::Null);
        assert_eq!(out["active"], Value::Null);
        assert_eq!(out["manager_error"]["code"], "SERVICE_MANAGER_FAILED");
    }

    #[test]
    fn launchd_install_writes_the_agent_and_bootstraps_it() {
        let f = fixture(Platform::Launchd);
        let mut runner = FakeRunner::answering(vec![
            Ok(ok("501\n")),
            Ok(failed(113, "Could not find service")),
        ]);
        let report = install(&f.host, &mut runner, &f.state_dir, &start()).unwrap();
        assert!(report.written && report.started);
        let file = f.host.service_file();
        assert_eq!(mode(&file), 0o644);
        assert_eq!(mode(&f.host.log_dir()), 0o700);
        let dict = plist::Value::from_file(&file)
            .unwrap()
            .into_dictionary()
            .unwrap();
        assert_eq!(dict["Label"].as_string(), Some(LAUNCHD_LABEL));
        let log = f.host.log_dir().join("sidecar.log");
        assert_eq!(dict["StandardErrorPath"].as_string(), log.to_str());
        assert_eq!(
            runner.calls,
            [
                "id -u".to_string(),
                "launchctl print gui/501/com.ibkr-agent.sidecar".into(),
                "launchctl enable gui/501/com.ibkr-agent.sidecar".into(),
                format!("launchctl bootstrap gui/501 {}", file.display()),
            ]
        );

        // Loaded and unchanged: nothing to do. Loaded and changed: booted out first.
        let mut runner = FakeRunner::answering(vec![Ok(ok("501\n")), Ok(ok("state = running"))]);
        install(&f.host, &mut runner, &f.state_dir, &start()).unwrap();
        assert_eq!(runner.calls.len(), 2);
        let other = f.host.home.join("other.yaml");
        std::fs::copy(f.state_dir.join("sidecar.yaml"), &other).unwrap();
        let mut runner = FakeRunner::answering(vec![Ok(ok("501\n")), Ok(ok("state = running"))]);
        let options = InstallOptions {
            config: Some(other),
            ..start()
        };
        install(&f.host, &mut runner, &f.state_dir, &options).unwrap();
        assert_eq!(
            runner.calls[2..],
            [
                "launchctl bootout gui/501/com.ibkr-agent.sidecar".to_string(),
                "launchctl enable gui/501/com.ibkr-agent.sidecar".into(),
                format!("launchctl bootstrap gui/501 {}", file.display()),
            ]
        );
    }

    #[test]
    fn launchd_status_and_uninstall() {
        let f = installed(Platform::Launchd);
        let printed = "gui/501/com.ibkr-agent.sidecar = {\n\tactive count = 1\n\tstate = running\n\tpid = 777\n}\n";
        let mut runner = FakeRunner::answering(vec![Ok(ok("501")), Ok(ok(printed))]);
        let report = status(&f.host, &mut runner).unwrap();
        let out = status_json(&f.host, &report);
        assert_eq!(
            (&out["loaded"], &out["active"], &out["pid"], &out["enabled"]),
            (&json!(true), &json!(true), &json!(777), &Value::Null)
        );
        assert_eq!(out["state"], "running");

        let mut runner = FakeRunner::answering(vec![Ok(ok("501")), Ok(ok(printed))]);
        let report = uninstall(&f.host, &mut runner, false).unwrap();
        assert!(report.stopped && report.removed);
        assert!(!f.host.service_file().exists());
        assert_eq!(
            runner.calls,
            [
                "id -u",
                "launchctl print gui/501/com.ibkr-agent.sidecar",
                "launchctl bootout gui/501/com.ibkr-agent.sidecar",
            ]
        );

        // `id -u` unavailable: the home directory's owner is the user.
        let mut runner = FakeRunner::answering(vec![
            Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
            Ok(failed(113, "Could not find service")),
        ]);
        let report = status(&f.host, &mut runner).unwrap();
        let uid = std::fs::metadata(&f.host.home).unwrap().uid();
        assert_eq!(
            runner.calls[1],
            format!("launchctl print gui/{uid}/com.ibkr-agent.sidecar")
        );
        assert_eq!(
            (report.installed, report.loaded, report.active),
            (false, Some(false), Some(false))
        );
    }

    #[test]
    fn install_json_carries_no_path() {
        let f = fixture(Platform::Systemd);
        let mut runner = FakeRunner::default();
        let report = install(&f.host, &mut runner, &f.state_dir, &start()).unwrap();
        let out = install_json(&f.host, &report).to_string();
        assert!(!out.contains('/'), "{out}");
        assert_eq!(
            install_json(&f.host, &report),
            json!({
                "platform": "systemd",
                "name": "ibkr-agent-sidecar.service",
                "dry_run": false,
                "written": true,
                "replaced": false,
                "started": true,
            })
        );
    }
}
