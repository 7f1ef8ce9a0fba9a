//! The `sidecar service` command line: runs [`install`], [`uninstall`] and [`status`] against
//! this system's service manager and prints their answers (JSON without paths, like every
//! command; see `cli`).

use super::runner::shell_word;
use super::*;
use serde_json::{Value, json};
use std::io::Write;

/// `ibkr-agent sidecar service ...`, against this system's service manager.
pub fn command(state_dir: &Path, args: &ServiceArgs, json: bool) -> Result<(), SidecarError> {
    let host = Host::from_process()?;
    let mut runner = SystemRunner;
    let out = match &args.command {
        ServiceCommand::Install(args) => {
            let options = InstallOptions {
                config: args.config.clone(),
                start: !args.no_start,
                dry_run: args.dry_run,
                force: args.force,
            };
            let report = install(&host, &mut runner, state_dir, &options)?;
            if json {
                install_json(&host, &report)
            } else {
                print_install(&host, &report);
                return Ok(());
            }
        }
        ServiceCommand::Uninstall(args) => {
            let report = uninstall(&host, &mut runner, args.force)?;
            if json {
                json!({
                    "platform": host.platform.as_str(),
                    "name": host.platform.service_name(),
                    "was_installed": report.was_installed,
                    "stopped": report.stopped,
                    "removed": report.removed,
                })
            } else {
                print_uninstall(&host, &report);
                return Ok(());
            }
        }
        ServiceCommand::Status => {
            let report = status(&host, &mut runner)?;
            if json {
                status_json(&host, &report)
            } else {
                print_status(&host, &report);
                return Ok(());
            }
        }
    };
    let _ = writeln!(std::io::stdout().lock(), "{out}");
    Ok(())
}

/// The JSON answer of `install` (no path: see the module docs of `cli`).
pub fn install_json(host: &Host, report: &InstallReport) -> Value {
    json!({
        "platform": host.platform.as_str(),
        "name": host.platform.service_name(),
        "dry_run": report.dry_run,
        "written": report.written,
        "replaced": report.replaced,
        "started": report.started,
    })
}

/// The JSON answer of `status` (no path).
pub fn status_json(host: &Host, report: &StatusReport) -> Value {
    let manager_error = report.manager_error.as_ref().map(|error| {
        let body = error.body();
        json!({
            "code": body.code,
            "message": body.message,
            "retryable": body.retryable,
            "user_action": body.user_action,
        })
    });
    json!({
        "platform": host.platform.as_str(),
        "name": host.platform.service_name(),
        "installed": report.installed,
        "ours": report.ours,
        "loaded": report.loaded,
        "enabled": report.enabled,
        "active": report.active,
        "state": report.state,
        "pid": report.pid,
        "manager_error": manager_error,
    })
}

fn command_line(spec: &ServiceSpec) -> String {
    std::iter::once(spec.program.to_string_lossy().into_owned())
        .chain(spec.args.iter().cloned())
        .map(|word| shell_word(&word, Path::new("")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_install(host: &Host, report: &InstallReport) {
    let file = report.file.display();
    let kind = host.platform.kind();
    if report.dry_run {
        print!("{}", report.text);
        eprintln!(
            "dry run: nothing was written. `service install` would write this {kind} to {file}, \
             then run: {}",
            host.start_hint()
        );
        return;
    }
    if report.replaced {
        println!("Replaced {file} ({kind})");
    } else if report.written {
        println!("Wrote {file} ({kind})");
    } else {
        println!("{file} ({kind}) is up to date; left as it is");
    }
    println!("  runs:   {}", command_line(&report.spec));
    if report.started {
        println!("Started: it runs now and at every login, and restarts after a failure.");
    } else {
        println!("Not started (--no-start). To start it now and at every login:");
        println!("  {}", host.start_hint());
    }
    println!("  logs:   {}", host.logs_hint());
    println!("  check:  ibkr-agent sidecar service status");
}

fn print_uninstall(host: &Host, report: &UninstallReport) {
    let file = report.file.display();
    if !report.was_installed {
        println!("Nothing to uninstall: {file} does not exist.");
        return;
    }
    if report.stopped {
        println!("Stopped and disabled {}.", host.platform.service_name());
    }
    println!("Removed {file}.");
}

fn yes_no(value: Option<bool>) -> &'static str {
    match value {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    }
}

fn print_status(host: &Host, report: &StatusReport) {
    println!(
        "Service: {} ({})",
        host.platform.service_name(),
        host.platform.kind()
    );
    let file = report.file.display();
    match report.ours {
        None => println!("  file:    {file} (not installed)"),
        Some(true) => println!("  file:    {file}"),
        Some(false) => {
            println!("  file:    {file} (NOT written by `ibkr-agent sidecar service install`)")
        }
    }
    println!("  loaded:  {}", yes_no(report.loaded));
    if host.platform == Platform::Systemd {
        println!("  enabled: {}", yes_no(report.enabled));
    }
    let mut active = yes_no(report.active).to_string();
    if let Some(state) = &report.state {
        active.push_str(&format!(" ({state})"));
    }
    if let Some(pid) = report.pid {
        active.push_str(&format!(", pid {pid}"));
    }
    println!("  active:  {active}");
    println!("  logs:    {}", host.logs_hint());
    if let Some(error) = &report.manager_error {
        println!("  manager: could not be asked: {error}");
    }
}
