//! The seam between the service commands and the service manager: every `systemctl`,
//! `launchctl` and `id` call goes through a [`CommandRunner`], so tests answer them instead.

use std::path::Path;

/// One command for the service manager. The arguments are service-file text (UTF-8, no control
/// characters), so the command can be shown to a person as it would be typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagerCommand {
    pub program: &'static str,
    pub args: Vec<String>,
}

impl ManagerCommand {
    pub fn new(program: &'static str, args: &[&str]) -> Self {
        ManagerCommand {
            program,
            args: args.iter().map(|arg| arg.to_string()).collect(),
        }
    }

    pub fn systemctl(args: &[&str]) -> Self {
        let mut all = vec!["--user"];
        all.extend_from_slice(args);
        ManagerCommand::new("systemctl", &all)
    }

    pub fn launchctl(args: &[&str]) -> Self {
        ManagerCommand::new("launchctl", args)
    }

    /// The command as a person would type it into a shell, with the home directory shown as `~`.
    pub fn display(&self, home: &Path) -> String {
        std::iter::once(self.program.to_string())
            .chain(self.args.iter().map(|arg| shell_word(arg, home)))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `~/rest` for a path under `home` (quoted as the shell needs), else the word quoted.
pub fn shell_word(word: &str, home: &Path) -> String {
    if let Some(rest) = home
        .to_str()
        .filter(|home| !home.is_empty() && *home != "/")
        .and_then(|home| word.strip_prefix(home))
        .and_then(|rest| rest.strip_prefix('/'))
    {
        return format!("~/{}", shell_quote(rest));
    }
    shell_quote(word)
}

fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/-_.,:+=@%".contains(c))
    {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// What a command did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit status; `None` when a signal ended it.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// What went wrong, in one short line: the status and the first line of stderr.
    pub fn summary(&self) -> String {
        let status = self.status.map_or_else(
            || "ended by a signal".to_string(),
            |code| format!("exit {code}"),
        );
        let first = self
            .stderr
            .lines()
            .chain(self.stdout.lines())
            .map(str::trim)
            .find(|line| !line.is_empty())
            .unwrap_or("")
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect::<String>();
        if first.is_empty() {
            status
        } else {
            format!("{status}: {first}")
        }
    }
}

/// Runs service-manager commands.
pub trait CommandRunner {
    /// Runs `command` to completion. `Err` only when it could not be started at all.
    fn run(&mut self, command: &ManagerCommand) -> std::io::Result<CommandOutput>;
}

/// The real thing: runs the program found on `PATH`, with no input.
#[derive(Debug, Default)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn run(&mut self, command: &ManagerCommand) -> std::io::Result<CommandOutput> {
        let output = std::process::Command::new(command.program)
            .args(&command.args)
            .stdin(std::process::Stdio::null())
            .output()?;
        Ok(CommandOutput {
            status: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_display_as_typed_with_the_home_as_a_tilde() {
        let home = Path::new("/Users/pat");
        let command = ManagerCommand::launchctl(&[
            "bootstrap",
            "gui/501",
            "/Users/pat/Library/LaunchAgents/com.ibkr-agent.sidecar.plist",
        ]);
        assert_eq!(
            command.display(home),
            "launchctl bootstrap gui/501 ~/Library/LaunchAgents/com.ibkr-agent.sidecar.plist"
        );
        assert_eq!(
            ManagerCommand::systemctl(&["enable", "--now", "x.service"]).display(home),
            "systemctl --user enable --now x.service"
        );
        assert_eq!(
            shell_word("/Users/pat/it's here", home),
            "~/'it'\\''s here'"
        );
        assert_eq!(shell_word("/Users/patricia/x", home), "/Users/patricia/x");
    }

    #[test]
    fn a_failure_is_summed_up_in_one_line() {
        let output = CommandOutput {
            status: Some(1),
            stdout: String::new(),
            stderr: "\nFailed to connect to bus: No medium found\nmore\n".into(),
        };
        assert_eq!(
            output.summary(),
            "exit 1: Failed to connect to bus: No medium found"
        );
        assert_eq!(CommandOutput::default().summary(), "ended by a signal");
    }
}
