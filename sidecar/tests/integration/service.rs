//! `ibkr-agent sidecar service`, through the binary: only what runs no service manager (a dry
//! run, refusals); install, uninstall and status against a fake manager are unit tests in
//! `sidecar/src/service`.
#![cfg(any(target_os = "linux", target_os = "macos"))]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary HOME whose default state directory holds a valid configuration.
struct Home {
    _root: tempfile::TempDir,
    home: PathBuf,
}

impl Home {
    fn new() -> Home {
        let root = tempfile::tempdir().unwrap();
        let home = root.path().join("home");
        let state = home.join(".config").join("ibkr-agent");
        ibkr_agent::paths::ensure_state_dir(&state).unwrap();
        ibkr_agent::config::write_default_config_if_absent(&state, "ws://127.0.0.1:9/relay")
            .unwrap();
        Home { _root: root, home }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ibkr-agent"))
            .args(args)
            .env("HOME", &self.home)
            .env_remove("IBKR_AGENT_HOME")
            .env_remove("XDG_CONFIG_HOME")
            .output()
            .unwrap()
    }

    fn service_file(&self) -> PathBuf {
        if cfg!(target_os = "macos") {
            self.home
                .join("Library/LaunchAgents/com.ibkr-agent.sidecar.plist")
        } else {
            self.home
                .join(".config/systemd/user/ibkr-agent-sidecar.service")
        }
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path.clone());
            }
            found.push(path);
        }
    }
    found.sort();
    found
}

fn exe() -> String {
    std::fs::canonicalize(env!("CARGO_BIN_EXE_ibkr-agent"))
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

/// The command line the printed file runs.
fn program_arguments(text: &str) -> Vec<String> {
    if cfg!(target_os = "macos") {
        let dict = plist::Value::from_reader_xml(text.as_bytes())
            .unwrap()
            .into_dictionary()
            .unwrap();
        return dict["ProgramArguments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|value| value.as_string().unwrap().to_string())
            .collect();
    }
    let exec = text
        .lines()
        .find_map(|line| line.strip_prefix("ExecStart="))
        .unwrap();
    // Enough of systemd's quoting for these paths (spaces only).
    let mut words = Vec::new();
    let mut rest = exec;
    while !rest.is_empty() {
        let (word, tail) = match rest.strip_prefix('"') {
            Some(quoted) => quoted.split_once('"').unwrap(),
            None => rest.split_once(' ').unwrap_or((rest, "")),
        };
        words.push(word.to_string());
        rest = tail.trim_start();
    }
    words
}

fn stdout_of_success(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn dry_run_prints_the_file_and_writes_nothing() {
    let home = Home::new();
    let before = files_under(&home.home);
    let output = home.run(&["sidecar", "service", "install", "--dry-run"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("nothing was written"));
    let text = stdout_of_success(output);
    assert!(text.contains("Written by ibkr-agent sidecar service install"));
    assert_eq!(program_arguments(&text), [exe().as_str(), "sidecar", "run"]);
    assert_eq!(files_under(&home.home), before);

    // The JSON answer says the same and names no path.
    let output = home.run(&["sidecar", "service", "install", "--dry-run", "--json"]);
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(json["dry_run"], true);
    assert_eq!(json["written"], false);
    assert_eq!(json["started"], false);
    assert!(!stdout.contains('/'), "{stdout}");
    assert_eq!(files_under(&home.home), before);
}

#[test]
fn a_non_default_state_dir_and_config_with_spaces_are_pinned() {
    let home = Home::new();
    let state = home.home.join("my state");
    let config = home.home.join("conf dir").join("my sidecar.yaml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::copy(home.home.join(".config/ibkr-agent/sidecar.yaml"), &config).unwrap();
    let output = home.run(&[
        "--state-dir",
        state.to_str().unwrap(),
        "sidecar",
        "service",
        "install",
        "--config",
        config.to_str().unwrap(),
        "--dry-run",
    ]);
    let text = stdout_of_success(output);
    assert_eq!(
        program_arguments(&text),
        [
            exe().as_str(),
            "sidecar",
            "run",
            "--state-dir",
            state.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ]
    );
    assert!(!state.exists(), "a dry run creates no state directory");
}

#[test]
fn refusals_carry_their_codes() {
    let home = Home::new();
    // A file of the same name that `service install` did not write.
    let file = home.service_file();
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, "hand-written\n").unwrap();
    for command in [
        &["sidecar", "service", "install", "--dry-run", "--json"][..],
        &["sidecar", "service", "uninstall", "--json"][..],
    ] {
        let output = home.run(command);
        assert_eq!(output.status.code(), Some(3), "{command:?}");
        let json: serde_json::Value =
            serde_json::from_str(String::from_utf8(output.stdout).unwrap().trim()).unwrap();
        assert_eq!(json["error"]["code"], "SERVICE_FILE_FOREIGN");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "hand-written\n");

    // No configuration the daemon could start with: nothing is installed (exit 2).
    std::fs::remove_file(home.home.join(".config/ibkr-agent/sidecar.yaml")).unwrap();
    std::fs::remove_file(&file).unwrap();
    let output = home.run(&["sidecar", "service", "install", "--json"]);
    assert_eq!(output.status.code(), Some(2));
    let json: serde_json::Value =
        serde_json::from_str(String::from_utf8(output.stdout).unwrap().trim()).unwrap();
    assert_eq!(json["error"]["code"], "CONFIG_INVALID");
    assert!(!file.exists());
}
