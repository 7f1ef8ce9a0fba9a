//! The store under concurrent writers, as a running gateway sees it: the server's own
//! connection (pairings, handshake timestamps), the audit writer's connection, and the
//! `ibkr-gateway pairing` CLI's connection from another process, all on one database file.
//!
//! A transaction that reads and then writes must take the write lock when it begins: a deferred
//! one is answered SQLITE_BUSY at once (no busy-handler wait) when another connection committed
//! in between, which surfaced as `STATE_STORE_ERROR` from `/pair/finish` on a loaded machine.
//! Twenty rounds, each a fresh database, every operation must succeed.

use ibkr_gateway::audit::log::{AuditLog, AuditRecord};
use ibkr_gateway::store::NewPairing;
use ibkr_gateway::store::{CompleteOutcome, NewPairingCode, PairingId, Store};
use protocol::identity::StaticKeypair;
use rand_core::OsRng;
use zeroize::Zeroizing;

const ROUNDS: usize = 20;
const PAIRINGS: usize = 12;
const HANDSHAKE_KEYS: usize = 6;
const HANDSHAKES_PER_KEY: u64 = 15;
const AUDIT_BATCHES: i64 = 30;

fn audit_record(n: i64) -> AuditRecord {
    AuditRecord {
        time_ms: n,
        subject: "alice".into(),
        tool: "ibkr_quote".into(),
        outcome: "ok".into(),
        latency_ms: 1,
        ..AuditRecord::default()
    }
}

async fn one_round() {
    let dir = tempfile::tempdir().unwrap();
    let server = Store::open(dir.path()).unwrap();
    let cli = Store::open(dir.path()).unwrap();
    // The audit trail's own handle on the same file, as the server opens it.
    let audit_db = ibkr_gateway::store::SqliteStore::open(dir.path()).unwrap();
    let mut audit = AuditLog::open(&audit_db, &ibkr_gateway::audit::AuditKey::random()).unwrap();

    // The CLI issues codes while the server completes pairings with them.
    let pairing = {
        let (server, cli) = (server.clone(), cli.clone());
        tokio::spawn(async move {
            for n in 0..PAIRINGS {
                let code_id = format!("{n:04}");
                assert!(
                    cli.insert_pairing_code(NewPairingCode {
                        code_id: code_id.clone(),
                        secret: Zeroizing::new("3XW9PT4R".into()),
                        user_id: format!("user-{n}"),
                        created_at_ms: 1,
                        expires_at_ms: i64::MAX,
                        max_attempts: 5,
                    })
                    .await
                    .unwrap()
                );
                assert_eq!(
                    server
                        .count_pairing_attempt(code_id.clone(), 2)
                        .await
                        .unwrap(),
                    None
                );
                let outcome = server
                    .complete_pairing(NewPairing {
                        pairing_id: PairingId::random(),
                        code_id,
                        sidecar_id: format!("laptop-{n}"),
                        sidecar_public_key: StaticKeypair::generate(&mut OsRng).public(),
                        display_name: "laptop".into(),
                        now_ms: 3,
                    })
                    .await
                    .unwrap();
                assert!(matches!(outcome, CompleteOutcome::Paired(_)));
            }
        })
    };
    // Sidecars reconnect: strictly increasing handshake timestamps.
    let handshakes = {
        let server = server.clone();
        tokio::spawn(async move {
            let keys: Vec<_> = (0..HANDSHAKE_KEYS)
                .map(|_| StaticKeypair::generate(&mut OsRng).public())
                .collect();
            for timestamp in 1..=HANDSHAKES_PER_KEY {
                for key in &keys {
                    assert!(
                        server
                            .accept_handshake_timestamp(*key, timestamp)
                            .await
                            .unwrap()
                    );
                }
            }
        })
    };
    // The audit writer commits batches on its own connection.
    let audit = tokio::task::spawn_blocking(move || {
        for batch in 0..AUDIT_BATCHES {
            let records: Vec<_> = (0..20).map(|n| audit_record(batch * 20 + n)).collect();
            audit.append(&records).unwrap();
        }
    });
    // The CLI lists and revokes meanwhile.
    let operator = tokio::spawn(async move {
        for n in 0..PAIRINGS {
            cli.list_pairings().await.unwrap();
            cli.revoke_pairing(format!("laptop-{n}"), 4).await.unwrap();
        }
    });
    pairing.await.unwrap();
    handshakes.await.unwrap();
    audit.await.unwrap();
    operator.await.unwrap();
    assert_eq!(
        ibkr_gateway::audit::log::tail(&audit_db, 10_000)
            .await
            .unwrap()
            .len(),
        (AUDIT_BATCHES * 20) as usize
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pairings_handshakes_and_audit_writes_run_concurrently_without_store_errors() {
    for _ in 0..ROUNDS {
        one_round().await;
    }
}
