//! `docs/first-trade.md` runs as written: every `ibkr-agent` line of its `sh` blocks, in order,
//! against a real gateway, the dev OAuth issuer and the CPGW simulator, with the agent's dry-run
//! buy where the page describes it. A command added to the page that cannot run here fails
//! this test, so the page cannot drift from the product.

use crate::trading_support::{call, ibkr_agent, ok};
use e2e::system::{System, SystemOptions};
use serde_json::json;
use std::process::ExitCode;
use std::time::Duration;

const PAGE: &str = include_str!("../../../docs/first-trade.md");
/// What the page shows for the gateway URL and the code, replaced by the real ones.
const PAGE_GATEWAY: &str = "https://gateway.example.com";
const PAGE_CODE: &str = "K7QM-3XW9-PT4R";

/// One command of the page, with the section it appears in.
struct PageCommand {
    section: String,
    words: Vec<String>,
}

/// The `ibkr-agent` lines of the page's `sh` blocks.
fn page_commands(page: &str) -> Vec<PageCommand> {
    let mut commands = Vec::new();
    let mut section = String::new();
    let mut in_sh = false;
    for line in page.lines() {
        if let Some(title) = line.strip_prefix("## ") {
            section = title.to_string();
        } else if line.starts_with("```") {
            in_sh = !in_sh && line.trim() == "```sh";
        } else if in_sh {
            let line = line.trim();
            assert!(
                line.is_empty() || line.starts_with("ibkr-agent "),
                "a line in an sh block that this test cannot run: {line}"
            );
            assert!(
                !line.contains(['"', '\'', '$', '|', '>', ';', '&']),
                "keep page commands free of shell syntax: {line}"
            );
            if !line.is_empty() {
                commands.push(PageCommand {
                    section: section.clone(),
                    words: line.split_whitespace().map(str::to_string).collect(),
                });
            }
        }
    }
    commands
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_trade_page_runs_as_written() {
    let mut system = System::start(SystemOptions {
        with_sidecar: false,
        ..SystemOptions::default()
    })
    .await
    .unwrap();
    let commands = page_commands(PAGE);
    let ran: Vec<String> = commands.iter().map(|c| c.words[1..].join(" ")).collect();
    for expected in [
        "sidecar identity create",
        "sidecar pair",
        "sidecar pairing grant",
        "sidecar run",
        "sidecar doctor",
    ] {
        assert!(
            ran.iter().any(|command| command.starts_with(expected)),
            "the page lost `ibkr-agent {expected}`: {ran:?}"
        );
    }

    let mut bought = false;
    for command in &commands {
        let mut words = command.words.clone();
        // The agent's order comes where the page describes it, before that section's commands.
        if command.section.contains("first order") && !bought {
            let buy = ok(&call(
                &system,
                "ibkr_buy",
                json!({"symbol": "AAPL", "cash_amount": "5"}),
            )
            .await);
            assert_eq!(buy["status"], "dry_run", "{buy}");
            assert!(
                system.sim.order_log().is_empty(),
                "a dry run reached the broker"
            );
            bought = true;
        }
        match words.get(1..3) {
            Some([sidecar, run]) if sidecar == "sidecar" && run == "run" => {
                // `sidecar run` blocks until a signal; the same daemon runs here as a task,
                // from the same sidecar.yaml.
                system.start_sidecar_from_file().await.unwrap();
                continue;
            }
            Some([sidecar, service]) if sidecar == "sidecar" && service == "service" => {
                panic!("service commands change the machine's service manager: keep them in prose");
            }
            Some([sidecar, pair]) if sidecar == "sidecar" && pair == "pair" => {
                let gateway = system.gateway().unwrap();
                let code = gateway
                    .issue_pairing_code(&system.options.user_id, Duration::from_secs(600))
                    .await
                    .unwrap();
                let base_url = gateway.base_url();
                for word in &mut words {
                    if word == PAGE_GATEWAY {
                        *word = base_url.clone();
                    } else if word == PAGE_CODE {
                        *word = code.to_string();
                    }
                }
            }
            _ => {}
        }
        let args: Vec<&str> = words[1..].iter().map(String::as_str).collect();
        let exit = ibkr_agent(system.sidecar_state_dir(), &args).await;
        assert_eq!(exit, ExitCode::SUCCESS, "`{}` failed", words.join(" "));
        if words.get(1..3).is_some_and(|w| w == ["sidecar", "pair"]) {
            // The page's "if yours listens elsewhere" edit: the simulator is not on :5000.
            let path = system
                .sidecar_state_dir()
                .join(ibkr_agent::config::CONFIG_FILE);
            let text = std::fs::read_to_string(&path).unwrap();
            let default = ibkr_agent::config::DEFAULT_CLIENT_PORTAL_BASE_URL;
            assert!(text.contains(default), "{text}");
            std::fs::write(&path, text.replace(default, &system.sim.base_url())).unwrap();
        }
    }
    assert!(bought, "the page lost its first-order section");
    system.shutdown().await;
}
