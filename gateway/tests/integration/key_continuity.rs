//! The gateway's static key outlives restarts, and a gateway that lost it (or was handed
//! another) refuses to start while pairings made with the old one are active, instead of
//! answering every paired laptop with HANDSHAKE_FAILED. Replacing the key is the operator's
//! explicit `ibkr-gateway key rotate`.

use crate::common::{TestIssuer, dev_config, pair, start_gateway};
use clap::Parser;
use ibkr_gateway::cli::{Cli, run};
use protocol::identity::StaticKeypair;
use rand_core::OsRng;
use shared_safety::ErrorCode;
use std::process::ExitCode;

const KEY_FILE: &str = "gateway.key";

async fn start_error(issuer: &TestIssuer, state_dir: &std::path::Path) -> ibkr_gateway::StartError {
    match ibkr_gateway::start(dev_config(&issuer.url(), state_dir)).await {
        Ok(_) => panic!("the gateway started"),
        Err(error) => error,
    }
}

#[tokio::test]
async fn a_lost_or_replaced_key_refuses_to_start_while_pairings_exist() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&issuer, dir.path()).await;
    let pinned = gateway.public_key();
    pair(&gateway, "alice", "laptop-a").await;
    gateway.shutdown().await;
    let key_path = dir.path().join(KEY_FILE);
    let original = std::fs::read(&key_path).unwrap();

    // Deleted: not silently replaced.
    std::fs::remove_file(&key_path).unwrap();
    let error = start_error(&issuer, dir.path()).await;
    assert_eq!(error.code(), ErrorCode::GatewayKeyChanged, "{error}");
    assert!(error.to_string().contains("is missing"), "{error}");
    assert!(error.to_string().contains("key rotate"), "{error}");
    assert!(!key_path.exists(), "a new key was created anyway");

    // Another key in its place.
    let other = StaticKeypair::generate(&mut OsRng);
    std::fs::write(
        &key_path,
        format!("{}\n", hex::encode(other.secret_bytes())),
    )
    .unwrap();
    set_private(&key_path);
    let error = start_error(&issuer, dir.path()).await;
    assert_eq!(error.code(), ErrorCode::GatewayKeyChanged, "{error}");
    assert!(error.to_string().contains("holds another key"), "{error}");

    // The original restored: the gateway starts with the key the laptop pinned.
    std::fs::write(&key_path, &original).unwrap();
    set_private(&key_path);
    let gateway = start_gateway(&issuer, dir.path()).await;
    assert_eq!(gateway.public_key(), pinned);
    gateway.shutdown().await;
}

#[tokio::test]
async fn rotating_the_key_revokes_every_pairing_and_the_gateway_starts_with_the_new_key() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gateway = start_gateway(&issuer, dir.path()).await;
    let old = gateway.public_key();
    pair(&gateway, "alice", "laptop-a").await;
    pair(&gateway, "bob", "laptop-b").await;
    gateway.shutdown().await;
    let config_path = dir.path().join("gateway.yaml");
    let config = dev_config(&issuer.url(), dir.path());
    std::fs::write(&config_path, serde_yaml_ng::to_string(&config).unwrap()).unwrap();
    let config_arg = config_path.display().to_string();

    // Without --confirm nothing changes.
    let refused = run(Cli::parse_from([
        "ibkr-gateway",
        "key",
        "rotate",
        "--config",
        &config_arg,
    ]))
    .await;
    assert_eq!(refused, ExitCode::from(2));
    let gateway = start_gateway(&issuer, dir.path()).await;
    assert_eq!(gateway.public_key(), old);
    assert_eq!(active(&gateway).await, 2);
    gateway.shutdown().await;

    let rotated = run(Cli::parse_from([
        "ibkr-gateway",
        "key",
        "rotate",
        "--config",
        &config_arg,
        "--confirm",
    ]))
    .await;
    assert_eq!(rotated, ExitCode::SUCCESS);
    let retired: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with("gateway.key.retired-")
        })
        .collect();
    assert_eq!(retired.len(), 1, "the old key is kept aside");

    let gateway = start_gateway(&issuer, dir.path()).await;
    assert_ne!(gateway.public_key(), old);
    assert_eq!(
        active(&gateway).await,
        0,
        "pairings that pinned the old key"
    );
    // Pairing again works with the new key.
    pair(&gateway, "alice", "laptop-a2").await;
    assert_eq!(active(&gateway).await, 1);
    gateway.shutdown().await;
}

async fn active(gateway: &ibkr_gateway::GatewayHandle) -> usize {
    gateway
        .pairings()
        .await
        .unwrap()
        .iter()
        .filter(|pairing| pairing.is_active())
        .count()
}

fn set_private(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
