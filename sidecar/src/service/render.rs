//! The service files, rendered from an explicit description: no environment, no file system,
//! so every platform's file can be checked on any machine.

use crate::error::SidecarError;
use std::path::{Path, PathBuf};

/// The systemd user unit's name.
pub const SYSTEMD_UNIT: &str = "ibkr-agent-sidecar.service";
/// The launchd agent's label (and the plist's file name without `.plist`).
pub const LAUNCHD_LABEL: &str = "com.ibkr-agent.sidecar";
/// The launchd agent's log file (stdout and stderr), in the log directory.
pub const LAUNCHD_LOG_FILE: &str = "sidecar.log";
/// Seconds between a failed run and the next start (systemd `RestartSec`, launchd
/// `ThrottleInterval`).
pub const RESTART_DELAY_SECONDS: u32 = 10;
/// Every file `service install` writes carries this line; a file without it is someone else's.
pub const MARKER: &str = "Written by ibkr-agent sidecar service install";

/// What the service runs and where: every path absolute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// The `ibkr-agent` executable.
    pub program: PathBuf,
    /// Its arguments (`sidecar run`, then `--state-dir` and `--config` when they are not the
    /// defaults).
    pub args: Vec<String>,
    /// The user's home directory (the working directory).
    pub home: PathBuf,
    /// Where launchd writes the daemon's output (systemd sends it to the journal).
    pub log_dir: PathBuf,
}

impl ServiceSpec {
    /// The launchd agent's log file.
    pub fn log_file(&self) -> PathBuf {
        self.log_dir.join(LAUNCHD_LOG_FILE)
    }
}

/// A path as service-file text: UTF-8 and free of control characters, or `CONFIG_INVALID`.
pub fn path_text<'a>(path: &'a Path, role: &str) -> Result<&'a str, SidecarError> {
    let text = path.to_str().ok_or_else(|| {
        SidecarError::config(format!(
            "(the {role} path is not UTF-8, which a service file cannot hold)"
        ))
    })?;
    checked_text(text, role)
}

fn checked_text<'a>(text: &'a str, role: &str) -> Result<&'a str, SidecarError> {
    if text.chars().any(char::is_control) {
        return Err(SidecarError::config(format!(
            "(the {role} contains a control character, which a service file cannot hold)"
        )));
    }
    Ok(text)
}

fn absolute<'a>(path: &'a Path, role: &str) -> Result<&'a str, SidecarError> {
    if !path.is_absolute() {
        return Err(SidecarError::config(format!(
            "(the {role} path must be absolute)"
        )));
    }
    path_text(path, role)
}

/// One word of a systemd command line (`systemd.service(5)`, "Command lines"): quoted when it
/// holds anything but plain characters; `\` and `"` escaped, `%` and `$` doubled so neither a
/// specifier nor a variable is expanded.
pub fn systemd_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.,:+=@".contains(c));
    if plain {
        return word.to_string();
    }
    let mut quoted = String::with_capacity(word.len() + 2);
    quoted.push('"');
    for c in word.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '"' => quoted.push_str("\\\""),
            '%' => quoted.push_str("%%"),
            '$' => quoted.push_str("$$"),
            other => quoted.push(other),
        }
    }
    quoted.push('"');
    quoted
}

/// The systemd user unit.
pub fn systemd_unit(spec: &ServiceSpec) -> Result<String, SidecarError> {
    let mut exec = vec![systemd_word(absolute(&spec.program, "executable")?)];
    for arg in &spec.args {
        exec.push(systemd_word(checked_text(arg, "argument")?));
    }
    let exec = exec.join(" ");
    Ok(format!(
        "# {MARKER}; `ibkr-agent sidecar service uninstall` removes it.\n\
         # No secret is kept here: the daemon reads its keys from its state directory.\n\
         [Unit]\n\
         Description=ibkr-agent sidecar (relays AI agents' tool calls to the local IBKR Client Portal Gateway)\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exec}\n\
         WorkingDirectory=~\n\
         UMask=0077\n\
         Restart=on-failure\n\
         RestartSec={RESTART_DELAY_SECONDS}\n\
         # Exit 2 (configuration) and 3 (refused: no identity, no pairing) need a person, not a restart.\n\
         RestartPreventExitStatus=2 3\n\
         StandardOutput=journal\n\
         StandardError=journal\n\
         SyslogIdentifier=ibkr-agent-sidecar\n\
         \n\
         [Install]\n\
         WantedBy=default.target\n"
    ))
}

/// Text as XML character data.
fn xml_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            other => out.push(other),
        }
    }
    out
}

/// The launchd agent (`launchd.plist(5)`): started at load, restarted after a failed exit.
pub fn launchd_plist(spec: &ServiceSpec) -> Result<String, SidecarError> {
    let mut arguments = String::new();
    let program = absolute(&spec.program, "executable")?;
    for word in std::iter::once(program).chain(spec.args.iter().map(String::as_str)) {
        let word = checked_text(word, "argument")?;
        arguments.push_str(&format!("        <string>{}</string>\n", xml_text(word)));
    }
    let home = xml_text(absolute(&spec.home, "home directory")?);
    absolute(&spec.log_dir, "log directory")?;
    let log = xml_text(path_text(&spec.log_file(), "log file")?);
    Ok(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
         <!-- {MARKER}; `ibkr-agent sidecar service uninstall` removes it.\n     \
         No secret is kept here: the daemon reads its keys from its state directory. -->\n\
         <plist version=\"1.0\">\n\
         <dict>\n    \
         <key>Label</key>\n    \
         <string>{LAUNCHD_LABEL}</string>\n    \
         <key>ProgramArguments</key>\n    \
         <array>\n{arguments}    </array>\n    \
         <key>WorkingDirectory</key>\n    \
         <string>{home}</string>\n    \
         <key>RunAtLoad</key>\n    \
         <true/>\n    \
         <key>KeepAlive</key>\n    \
         <dict>\n        \
         <key>SuccessfulExit</key>\n        \
         <false/>\n    \
         </dict>\n    \
         <key>ThrottleInterval</key>\n    \
         <integer>{RESTART_DELAY_SECONDS}</integer>\n    \
         <key>Umask</key>\n    \
         <integer>{umask}</integer>\n    \
         <key>StandardOutPath</key>\n    \
         <string>{log}</string>\n    \
         <key>StandardErrorPath</key>\n    \
         <string>{log}</string>\n\
         </dict>\n\
         </plist>\n",
        umask = 0o077,
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The words of a systemd command line, undoing [`systemd_word`]: quotes, `\` escapes and
    /// doubled `%` and `$`.
    pub(crate) fn split_exec(line: &str) -> Vec<String> {
        let mut words = Vec::new();
        let mut chars = line.chars().peekable();
        loop {
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            let Some(&first) = chars.peek() else {
                return words;
            };
            let quoted = first == '"';
            if quoted {
                chars.next();
            }
            let mut word = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '"' if quoted => break,
                    ' ' if !quoted => break,
                    '\\' => word.push(chars.next().unwrap()),
                    '%' | '$' => {
                        assert_eq!(chars.next(), Some(c), "a lone {c} in {line}");
                        word.push(c);
                    }
                    other => word.push(other),
                }
            }
            words.push(word);
        }
    }

    /// `(section, key, value)` for every setting; panics on a line that is neither a comment,
    /// a section header nor `Key=Value`, and on a key set twice in one section.
    pub(crate) fn parse_unit(text: &str) -> Vec<(String, String, String)> {
        let mut settings: Vec<(String, String, String)> = Vec::new();
        let mut section = None;
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = Some(name.to_string());
                continue;
            }
            let (key, value) = line.split_once('=').expect("Key=Value");
            assert!(key.chars().all(|c| c.is_ascii_alphanumeric()), "{line}");
            let section = section.clone().expect("a setting before any section");
            assert!(
                !settings.iter().any(|(s, k, _)| *s == section && k == key),
                "{key} twice in [{section}]"
            );
            settings.push((section, key.to_string(), value.to_string()));
        }
        settings
    }

    pub(crate) fn setting<'a>(
        settings: &'a [(String, String, String)],
        section: &str,
        key: &str,
    ) -> Option<&'a str> {
        settings
            .iter()
            .find(|(s, k, _)| s == section && k == key)
            .map(|(_, _, v)| v.as_str())
    }

    fn spec(program: &str, args: &[&str]) -> ServiceSpec {
        ServiceSpec {
            program: PathBuf::from(program),
            args: args.iter().map(|a| a.to_string()).collect(),
            home: PathBuf::from("/home/pat"),
            log_dir: PathBuf::from("/home/pat/Library/Logs/ibkr-agent"),
        }
    }

    const AWKWARD: &str = "/home/pat/my \"odd\" dir/50% $HOME\\x/sidecar.yaml";

    #[test]
    fn unit_has_its_sections_and_keys() {
        let text = systemd_unit(&spec("/usr/local/bin/ibkr-agent", &["sidecar", "run"])).unwrap();
        assert!(text.starts_with(&format!("# {MARKER}")));
        let settings = parse_unit(&text);
        let sections: Vec<&str> = settings.iter().map(|(s, _, _)| s.as_str()).collect();
        let mut order = sections.clone();
        order.dedup();
        assert_eq!(order, ["Unit", "Service", "Install"]);
        assert_eq!(
            setting(&settings, "Service", "ExecStart"),
            Some("/usr/local/bin/ibkr-agent sidecar run")
        );
        assert_eq!(setting(&settings, "Service", "Restart"), Some("on-failure"));
        assert_eq!(setting(&settings, "Service", "RestartSec"), Some("10"));
        assert_eq!(
            setting(&settings, "Service", "RestartPreventExitStatus"),
            Some("2 3")
        );
        assert_eq!(
            setting(&settings, "Service", "StandardError"),
            Some("journal")
        );
        assert_eq!(
            setting(&settings, "Service", "StandardOutput"),
            Some("journal")
        );
        assert_eq!(
            setting(&settings, "Install", "WantedBy"),
            Some("default.target")
        );
        assert!(setting(&settings, "Service", "Environment").is_none());
    }

    #[test]
    fn exec_start_round_trips_spaces_quotes_specifiers_and_variables() {
        let program = "/opt/my tools/ibkr-agent";
        let args = ["sidecar", "run", "--config", AWKWARD];
        let text = systemd_unit(&spec(program, &args)).unwrap();
        let settings = parse_unit(&text);
        let exec = setting(&settings, "Service", "ExecStart").unwrap();
        assert!(exec.starts_with("\"/opt/my tools/ibkr-agent\" sidecar run --config \""));
        let words = split_exec(exec);
        assert_eq!(words[0], program);
        assert!(words[0].starts_with('/'));
        assert_eq!(words[1..], args);
    }

    #[test]
    fn paths_a_service_file_cannot_hold_are_refused() {
        let relative = systemd_unit(&spec("ibkr-agent", &["sidecar", "run"])).unwrap_err();
        assert!(relative.to_string().contains("absolute"), "{relative}");
        let newline = spec(
            "/usr/bin/ibkr-agent",
            &["sidecar", "run", "--config", "/a\nb"],
        );
        for error in [
            systemd_unit(&newline).unwrap_err(),
            launchd_plist(&newline).unwrap_err(),
        ] {
            assert_eq!(error.code(), shared_safety::ErrorCode::ConfigInvalid);
            assert!(error.to_string().contains("control character"), "{error}");
        }
        use std::os::unix::ffi::OsStrExt;
        let not_utf8 = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/\xff"));
        assert!(path_text(not_utf8, "configuration").is_err());
    }

    /// `systemd-analyze verify` accepts the unit (an executable in a directory with a space, a
    /// configuration path with specifier and variable characters); skipped where systemd is not
    /// installed.
    #[test]
    fn unit_passes_systemd_analyze_verify() {
        let which = std::process::Command::new("which")
            .arg("systemd-analyze")
            .output();
        if !which.is_ok_and(|output| output.status.success()) {
            println!("note: systemd-analyze is not installed; the unit is only parse-checked");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin dir");
        std::fs::create_dir(&bin).unwrap();
        let program = bin.join("ibkr agent");
        std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let text = systemd_unit(&ServiceSpec {
            program: program.clone(),
            args: ["sidecar", "run", "--config", AWKWARD]
                .map(String::from)
                .to_vec(),
            home: dir.path().to_path_buf(),
            log_dir: dir.path().join("logs"),
        })
        .unwrap();
        let unit = dir.path().join(SYSTEMD_UNIT);
        std::fs::write(&unit, &text).unwrap();
        let output = std::process::Command::new("systemd-analyze")
            .arg("verify")
            .arg(&unit)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "systemd-analyze verify: {stderr}");
        // Unknown keys and bad values are warnings with exit 0: there must be none.
        assert!(
            !stderr.lines().any(|line| line.contains(SYSTEMD_UNIT)),
            "systemd-analyze verify warned: {stderr}"
        );
    }

    fn parse_plist(text: &str) -> plist::Dictionary {
        plist::Value::from_reader_xml(text.as_bytes())
            .unwrap()
            .into_dictionary()
            .unwrap()
    }

    #[test]
    fn plist_has_label_arguments_keepalive_and_logs() {
        let program = "/Applications/My Tools/ibkr-agent";
        let args = [
            "sidecar",
            "run",
            "--config",
            AWKWARD,
            "--state-dir",
            "/a & <b>",
        ];
        let text = launchd_plist(&spec(program, &args)).unwrap();
        assert!(text.contains(MARKER));
        let dict = parse_plist(&text);
        assert_eq!(dict["Label"].as_string(), Some(LAUNCHD_LABEL));
        let arguments: Vec<&str> = dict["ProgramArguments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_string().unwrap())
            .collect();
        assert_eq!(arguments[0], program);
        assert_eq!(arguments[1..], args);
        assert_eq!(dict["RunAtLoad"].as_boolean(), Some(true));
        let keep_alive = dict["KeepAlive"].as_dictionary().unwrap();
        assert_eq!(keep_alive["SuccessfulExit"].as_boolean(), Some(false));
        assert_eq!(keep_alive.len(), 1);
        let log = "/home/pat/Library/Logs/ibkr-agent/sidecar.log";
        assert_eq!(dict["StandardOutPath"].as_string(), Some(log));
        assert_eq!(dict["StandardErrorPath"].as_string(), Some(log));
        assert_eq!(dict["WorkingDirectory"].as_string(), Some("/home/pat"));
        assert_eq!(
            dict["ThrottleInterval"].as_signed_integer(),
            Some(RESTART_DELAY_SECONDS.into())
        );
        assert_eq!(dict["Umask"].as_signed_integer(), Some(0o077));
        assert!(!dict.contains_key("EnvironmentVariables"));
    }
}
