//! The gateway's store shared by several replicas: every atomic rule holds across them because
//! the database enforces it. Each test runs against both backends: three `Store` handles on
//! one SQLite file (three processes on one host) and three on one private PostgreSQL server
//! (three replicas), racing where a race could break a rule.

use e2e::private_postgres::PrivatePostgres;
use ibkr_gateway::store::{
    CodeCheck, CodeState, CompleteOutcome, KeyContinuity, NewPairing, NewPairingCode, PairingId,
    PostgresOptions, Store,
};
use protocol::identity::{PublicKey, StaticKeypair};
use zeroize::Zeroizing;

/// Three handles on one store, and what keeps it alive.
struct Replicas {
    stores: [Store; 3],
    _sqlite: Option<tempfile::TempDir>,
    _postgres: Option<PrivatePostgres>,
}

async fn sqlite_replicas() -> Replicas {
    let dir = tempfile::tempdir().unwrap();
    let open = || Store::open(dir.path()).unwrap();
    Replicas {
        stores: [open(), open(), open()],
        _sqlite: Some(dir),
        _postgres: None,
    }
}

async fn postgres_replicas() -> Option<Replicas> {
    let server = PrivatePostgres::start_or_skip().unwrap()?;
    let options = PostgresOptions::new(server.url());
    // Opened together, as replicas starting at once: the schema is created once.
    let (a, b, c) = tokio::join!(
        Store::open_postgres(&options),
        Store::open_postgres(&options),
        Store::open_postgres(&options)
    );
    Some(Replicas {
        stores: [a.unwrap(), b.unwrap(), c.unwrap()],
        _sqlite: None,
        _postgres: Some(server),
    })
}

/// Runs `scenario` on both backends.
macro_rules! on_both_backends {
    ($scenario:ident) => {
        $scenario(sqlite_replicas().await, "sqlite").await;
        if let Some(replicas) = postgres_replicas().await {
            $scenario(replicas, "postgres").await;
        }
    };
}

fn key(byte: u8) -> PublicKey {
    StaticKeypair::from_secret_bytes([byte; 32]).public()
}

fn code(id: &str, user: &str, now: i64, max_attempts: u32) -> NewPairingCode {
    NewPairingCode {
        code_id: id.into(),
        secret: Zeroizing::new("3XW9PT4R".into()),
        user_id: user.into(),
        created_at_ms: now,
        expires_at_ms: now + 600_000,
        max_attempts,
    }
}

fn pairing(code_id: &str, sidecar_id: &str, key: PublicKey, now: i64) -> NewPairing {
    NewPairing {
        pairing_id: PairingId::random(),
        code_id: code_id.into(),
        sidecar_id: sidecar_id.into(),
        sidecar_public_key: key,
        display_name: "laptop".into(),
        now_ms: now,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pairing_code_is_used_once_when_replicas_finish_it_at_once() {
    async fn scenario(replicas: Replicas, backend: &str) {
        let [a, b, c] = &replicas.stores;
        // Issued on one replica, looked up on another.
        assert!(
            a.insert_pairing_code(code("K7QM", "alice", 1_000, 5))
                .await
                .unwrap()
        );
        assert!(
            !b.insert_pairing_code(code("K7QM", "mallory", 1_001, 5))
                .await
                .unwrap(),
            "{backend}: a live code's id is not taken over"
        );
        match b.lookup_pairing_code("K7QM".into(), 2_000).await.unwrap() {
            CodeCheck::Live { user_id, .. } => assert_eq!(user_id, "alice"),
            CodeCheck::Dead(state) => panic!("{backend}: {state:?}"),
        }
        // Three replicas finish the same code at the same moment, each for its own laptop.
        let (x, y, z) = tokio::join!(
            a.complete_pairing(pairing("K7QM", "laptop-a", key(1), 3_000)),
            b.complete_pairing(pairing("K7QM", "laptop-b", key(2), 3_000)),
            c.complete_pairing(pairing("K7QM", "laptop-c", key(3), 3_000)),
        );
        let outcomes = [x.unwrap(), y.unwrap(), z.unwrap()];
        let paired = outcomes
            .iter()
            .filter(|o| matches!(o, CompleteOutcome::Paired(_)))
            .count();
        assert_eq!(paired, 1, "{backend}: exactly one pairing: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, CompleteOutcome::Paired(_) | CompleteOutcome::CodeUsed)),
            "{backend}: {outcomes:?}"
        );
        assert_eq!(c.list_pairings().await.unwrap().len(), 1, "{backend}");
        assert_eq!(
            c.active_pairings_for_user("alice".into())
                .await
                .unwrap()
                .len(),
            1
        );
        assert!(matches!(
            a.lookup_pairing_code("K7QM".into(), 4_000).await.unwrap(),
            CodeCheck::Dead(CodeState::Used)
        ));
    }
    on_both_backends!(scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tested_guesses_are_counted_once_each_across_replicas() {
    async fn scenario(replicas: Replicas, backend: &str) {
        let [a, b, _] = &replicas.stores;
        assert!(
            a.insert_pairing_code(code("GUESS", "alice", 0, 5))
                .await
                .unwrap()
        );
        let mut tasks = Vec::new();
        for i in 0..24 {
            let store = replicas.stores[i % 3].clone();
            tasks.push(tokio::spawn(async move {
                store
                    .count_pairing_attempt("GUESS".into(), 10)
                    .await
                    .unwrap()
            }));
        }
        let mut counted = 0;
        for task in tasks {
            match task.await.unwrap() {
                None => counted += 1,
                Some(state) => assert_eq!(state, CodeState::AttemptsExceeded, "{backend}"),
            }
        }
        assert_eq!(
            counted, 5,
            "{backend}: exactly max_attempts guesses were tested"
        );
        assert!(matches!(
            b.lookup_pairing_code("GUESS".into(), 11).await.unwrap(),
            CodeCheck::Dead(CodeState::AttemptsExceeded)
        ));
    }
    on_both_backends!(scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_key_is_paired_once_even_with_two_codes_on_two_replicas() {
    async fn scenario(replicas: Replicas, backend: &str) {
        let [a, b, _] = &replicas.stores;
        assert!(
            a.insert_pairing_code(code("ONE", "alice", 0, 5))
                .await
                .unwrap()
        );
        assert!(
            b.insert_pairing_code(code("TWO", "mallory", 0, 5))
                .await
                .unwrap()
        );
        // The same laptop key, registered through two codes at once: one pairing at most.
        let (x, y) = tokio::join!(
            a.complete_pairing(pairing("ONE", "laptop-1", key(9), 1)),
            b.complete_pairing(pairing("TWO", "laptop-2", key(9), 1)),
        );
        let outcomes = [x.unwrap(), y.unwrap()];
        let paired: Vec<_> = outcomes
            .iter()
            .filter_map(|o| match o {
                CompleteOutcome::Paired(record) => Some(record.user_id.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(paired.len(), 1, "{backend}: {outcomes:?}");
        assert!(
            outcomes.contains(&CompleteOutcome::KeyAlreadyPaired),
            "{backend}: {outcomes:?}"
        );
        // The same sidecar id under another key: refused while the first is active.
        assert!(
            a.insert_pairing_code(code("THREE", "alice", 2, 5))
                .await
                .unwrap()
        );
        let taken = if paired[0] == "alice" {
            "laptop-1"
        } else {
            "laptop-2"
        };
        assert_eq!(
            b.complete_pairing(pairing("THREE", taken, key(10), 3))
                .await
                .unwrap(),
            CompleteOutcome::SidecarIdConflict,
            "{backend}"
        );
        let active = a.active_pairing_by_key(key(9)).await.unwrap().unwrap();
        assert_eq!(active.user_id, paired[0]);
    }
    on_both_backends!(scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_handshake_replayed_to_another_replica_is_refused() {
    async fn scenario(replicas: Replicas, backend: &str) {
        let [a, b, c] = &replicas.stores;
        assert!(a.accept_handshake_timestamp(key(1), 100).await.unwrap());
        // The same message 1 replayed to replicas that never saw it.
        assert!(
            !b.accept_handshake_timestamp(key(1), 100).await.unwrap(),
            "{backend}"
        );
        assert!(
            !c.accept_handshake_timestamp(key(1), 99).await.unwrap(),
            "{backend}"
        );
        assert_eq!(b.last_handshake_timestamp(key(1)).await.unwrap(), Some(100));
        // One new timestamp offered to every replica at once: accepted once.
        let (x, y, z) = tokio::join!(
            a.accept_handshake_timestamp(key(1), 101),
            b.accept_handshake_timestamp(key(1), 101),
            c.accept_handshake_timestamp(key(1), 101),
        );
        let accepted = [x.unwrap(), y.unwrap(), z.unwrap()]
            .iter()
            .filter(|ok| **ok)
            .count();
        assert_eq!(accepted, 1, "{backend}");
        assert_eq!(c.last_handshake_timestamp(key(1)).await.unwrap(), Some(101));
        assert_eq!(c.last_handshake_timestamp(key(2)).await.unwrap(), None);
    }
    on_both_backends!(scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoke_on_one_replica_counts_on_the_others_from_their_next_lookup() {
    async fn scenario(replicas: Replicas, backend: &str) {
        let [a, b, c] = &replicas.stores;
        assert!(
            a.insert_pairing_code(code("R1", "alice", 0, 5))
                .await
                .unwrap()
        );
        assert!(matches!(
            a.complete_pairing(pairing("R1", "laptop-a", key(1), 1))
                .await
                .unwrap(),
            CompleteOutcome::Paired(_)
        ));
        // Warm every replica's cache.
        for store in [a, b, c] {
            for _ in 0..2 {
                assert_eq!(store.user_pairings("alice").await.unwrap().active.len(), 1);
            }
        }
        let (seen, active) = c.active_pairings_if_changed(None).await.unwrap();
        assert_eq!(active.map(|ids| ids.len()), Some(1));
        assert_eq!(
            c.active_pairings_if_changed(Some(seen)).await.unwrap().1,
            None
        );
        assert!(b.revoke_pairing("laptop-a".into(), 2).await.unwrap());
        for store in [a, c] {
            assert!(
                store
                    .user_pairings("alice")
                    .await
                    .unwrap()
                    .active
                    .is_empty(),
                "{backend}: a replica served a revoked pairing from its cache"
            );
        }
        let (_, changed) = c.active_pairings_if_changed(Some(seen)).await.unwrap();
        assert_eq!(changed.map(|ids| ids.len()), Some(0), "{backend}");
        // A rotation's revoke says why, on every replica.
        assert!(
            a.insert_pairing_code(code("R2", "alice", 3, 5))
                .await
                .unwrap()
        );
        assert!(matches!(
            c.complete_pairing(pairing("R2", "laptop-a", key(1), 4))
                .await
                .unwrap(),
            CompleteOutcome::Paired(_)
        ));
        assert_eq!(a.user_pairings("alice").await.unwrap().active.len(), 1);
        assert_eq!(b.revoke_all_for_key_rotation(5).await.unwrap(), 1);
        let after = a.user_pairings("alice").await.unwrap();
        assert!(after.active.is_empty());
        assert_eq!(after.ended_by_key_rotation, Some(5), "{backend}");
    }
    on_both_backends!(scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_record_one_gateway_key_and_refuse_another_while_pairings_use_it() {
    async fn scenario(replicas: Replicas, backend: &str) {
        let stores = replicas.stores.clone();
        // Blocking, as at startup: on the blocking pool.
        let check = move |index: usize, key: Option<PublicKey>, now: i64| {
            let store = stores[index].clone();
            tokio::task::spawn_blocking(move || store.check_gateway_key(key.as_ref(), now))
        };
        let gateway = key(40);
        assert_eq!(
            check(0, Some(gateway), 1).await.unwrap().unwrap(),
            KeyContinuity::Recorded
        );
        assert_eq!(
            check(1, Some(gateway), 2).await.unwrap().unwrap(),
            KeyContinuity::Same,
            "{backend}"
        );
        let [a, ..] = &replicas.stores;
        assert!(
            a.insert_pairing_code(code("K", "alice", 0, 5))
                .await
                .unwrap()
        );
        assert!(matches!(
            a.complete_pairing(pairing("K", "laptop-a", key(1), 1))
                .await
                .unwrap(),
            CompleteOutcome::Paired(_)
        ));
        // Another replica configured with another key refuses to start.
        match check(2, Some(key(41)), 3).await.unwrap().unwrap() {
            KeyContinuity::Broken {
                active_pairings, ..
            } => assert_eq!(active_pairings, 1, "{backend}"),
            other => panic!("{backend}: {other:?}"),
        }
        a.ping().await.unwrap();
    }
    on_both_backends!(scenario);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_embedded_deployment_moves_to_the_shared_store_with_its_pairings_clocks_and_anchors() {
    let Some(server) = PrivatePostgres::start_or_skip().unwrap() else {
        return;
    };
    // An embedded gateway with a paired laptop that made an order call.
    let mut system = crate::trading_support::trading_system(Default::default()).await;
    let buy = crate::trading_support::call(
        &system,
        "ibkr_buy",
        serde_json::json!({"symbol": "AAPL", "cash_amount": "20"}),
    )
    .await;
    assert_ne!(buy.is_error, Some(true), "{buy:?}");
    let gateway_key = system.gateway().unwrap().public_key();
    assert!(system.gateway().unwrap().flush_audit().await);
    let embedded = Store::open(system.gateway_state_dir()).unwrap();
    let pairing = embedded.list_pairings().await.unwrap().pop().unwrap();
    let anchor = embedded
        .journal_anchor(pairing.pairing_id)
        .await
        .unwrap()
        .expect("the order call left an anchor");
    let clock = embedded
        .last_handshake_timestamp(pairing.sidecar_public_key)
        .await
        .unwrap();
    assert!(clock.is_some());
    if let Some(sidecar) = system.take_sidecar() {
        sidecar.stop().await;
    }
    system.stop_gateway().await;

    let options = PostgresOptions::new(server.url());
    let shared = ibkr_gateway::store::PostgresStore::open(&options)
        .await
        .unwrap();
    let sqlite = ibkr_gateway::store::SqliteStore::open(system.gateway_state_dir()).unwrap();
    let report = ibkr_gateway::store::migrate::migrate_embedded(&sqlite, &shared)
        .await
        .unwrap();
    assert_eq!(
        (
            report.pairings,
            report.active_pairings,
            report.handshake_timestamps,
            report.journal_anchors,
            report.gateway_key_recorded
        ),
        (1, 1, 1, 1, true),
        "{report:?}"
    );
    // Never twice: a second run would merge histories.
    assert!(
        ibkr_gateway::store::migrate::migrate_embedded(&sqlite, &shared)
            .await
            .is_err()
    );

    // A replica on the shared store sees what the laptop depends on.
    let store = Store::open_postgres(&options).await.unwrap();
    let pairings = store.user_pairings(&pairing.user_id).await.unwrap();
    assert_eq!(pairings.active, vec![pairing.clone()]);
    assert_eq!(
        store.journal_anchor(pairing.pairing_id).await.unwrap(),
        Some(anchor)
    );
    assert_eq!(
        store
            .last_handshake_timestamp(pairing.sidecar_public_key)
            .await
            .unwrap(),
        clock
    );
    // A replayed handshake is still refused, and the key is the one the pairings were made with.
    assert!(
        !store
            .accept_handshake_timestamp(pairing.sidecar_public_key, clock.unwrap())
            .await
            .unwrap()
    );
    let checked =
        tokio::task::spawn_blocking(move || store.check_gateway_key(Some(&gateway_key), 1))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(checked, KeyContinuity::Same);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_upgraded_in_place_and_a_newer_one_is_used_only_if_it_says_so() {
    let Some(server) = PrivatePostgres::start_or_skip().unwrap() else {
        return;
    };
    let options = PostgresOptions::new(server.url());
    let store = Store::open_postgres(&options).await.unwrap();
    assert!(
        store
            .insert_pairing_code(code("K7QM", "alice", 1_000, 5))
            .await
            .unwrap()
    );
    drop(store);
    // Back to version 1, as a deployment made before version 2 left it.
    let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(
            "DROP TABLE mcp_sessions; DROP TABLE pairing_exchanges; DROP TABLE audit_records;
             DROP TABLE refresh_tokens;
             UPDATE ibkr_gateway_schema SET version = 1",
        )
        .await
        .unwrap();

    let store = Store::open_postgres(&options).await.unwrap();
    match store
        .lookup_pairing_code("K7QM".into(), 2_000)
        .await
        .unwrap()
    {
        CodeCheck::Live { user_id, .. } => assert_eq!(user_id, "alice"),
        CodeCheck::Dead(state) => panic!("the code did not survive the upgrade: {state:?}"),
    }
    let version: i32 = client
        .query_one("SELECT version FROM ibkr_gateway_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 3);
    for table in [
        "mcp_sessions",
        "pairing_exchanges",
        "audit_records",
        "refresh_tokens",
    ] {
        client
            .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .await
            .unwrap();
    }
    drop(store);

    // A newer gateway's schema that it declared usable by this version is used as it is
    // (a rolling upgrade), never written back down.
    client
        .batch_execute("UPDATE ibkr_gateway_schema SET version = 4, compatible_since = 3")
        .await
        .unwrap();
    let store = Store::open_postgres(&options).await.unwrap();
    assert!(matches!(
        store
            .lookup_pairing_code("K7QM".into(), 2_000)
            .await
            .unwrap(),
        CodeCheck::Live { .. }
    ));
    let (version, since): (i32, i32) = client
        .query_one(
            "SELECT version, compatible_since FROM ibkr_gateway_schema",
            &[],
        )
        .await
        .map(|row| (row.get(0), row.get(1)))
        .unwrap();
    assert_eq!((version, since), (4, 3));
    drop(store);
    assert!(
        ibkr_gateway::store::PostgresStore::open_existing(&options)
            .await
            .is_ok()
    );

    // One this version cannot work with is refused, by a starting gateway and by a command
    // that only reads.
    client
        .batch_execute("UPDATE ibkr_gateway_schema SET version = 99, compatible_since = 99")
        .await
        .unwrap();
    assert!(Store::open_postgres(&options).await.is_err());
    assert!(
        ibkr_gateway::store::PostgresStore::open_existing(&options)
            .await
            .is_err()
    );
    // A command that only reads never upgrades an older schema.
    client
        .batch_execute("UPDATE ibkr_gateway_schema SET version = 1, compatible_since = 1")
        .await
        .unwrap();
    assert!(
        ibkr_gateway::store::PostgresStore::open_existing(&options)
            .await
            .is_err()
    );
    let version: i32 = client
        .query_one("SELECT version FROM ibkr_gateway_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 1);
}

/// Copies every file of `from` into `to` (a state directory's backup, or putting one back).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn audit_record(n: i64) -> ibkr_gateway::audit::log::AuditRecord {
    ibkr_gateway::audit::log::AuditRecord {
        time_ms: n,
        subject: "alice".into(),
        tool: "ibkr_quote".into(),
        outcome: "ok".into(),
        latency_ms: 3,
        ..Default::default()
    }
}

/// Appends records `numbers` to the trail in `dir`, then copies it with a fresh copier until
/// the shared copy holds `expected` rows of `replica`.
async fn append_and_copy(
    dir: &std::path::Path,
    numbers: std::ops::RangeInclusive<i64>,
    shared: &ibkr_gateway::store::PostgresStore,
    replica: &str,
    expected: usize,
) -> Vec<(i64, Option<String>)> {
    let key = ibkr_gateway::audit::AuditKey::from_secret(b"a test secret of 32 bytes length");
    let local = ibkr_gateway::store::SqliteStore::open(dir).unwrap();
    let mut log = ibkr_gateway::audit::log::AuditLog::open(&local, &key).unwrap();
    let records: Vec<_> = numbers.map(audit_record).collect();
    log.append(&records).unwrap();
    drop(log);
    let (_commits, watching) = tokio::sync::watch::channel(0u64);
    let stop = tokio_util::sync::CancellationToken::new();
    let copier = ibkr_gateway::audit::shared::spawn_copier(
        ibkr_gateway::audit::shared::SharedCopy::new(shared.clone(), local, replica.into()),
        watching,
        stop.clone(),
    );
    let copied = tokio::time::timeout(e2e::system::WAIT_LIMIT, async {
        loop {
            let rows: Vec<(i64, Option<String>)> = ibkr_gateway::audit::shared::tail(shared, 1_000)
                .await
                .unwrap()
                .into_iter()
                .filter(|record| record.replica_id == replica)
                .map(|record| (record.stored.id, record.stored.hash))
                .collect();
            if rows.len() >= expected {
                return rows;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the copy caught up in time");
    stop.cancel();
    copier.await.unwrap();
    copied
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trail_put_back_from_an_older_copy_never_rewrites_the_shared_copy() {
    let Some(server) = PrivatePostgres::start_or_skip().unwrap() else {
        return;
    };
    let shared = ibkr_gateway::store::PostgresStore::open(&PostgresOptions::new(server.url()))
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let (live, backup) = (root.path().join("live"), root.path().join("backup"));
    append_and_copy(&live, 1..=2, &shared, "replica-a", 2).await;
    copy_dir(&live, &backup);
    let before = append_and_copy(&live, 3..=3, &shared, "replica-a", 3).await;
    assert_eq!(
        before.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        [1, 2, 3]
    );

    // The trail is put back to the backup (rows 1 and 2) and goes on: its new rows 3 and 4
    // reuse ids, not hashes. The copy keeps the first row 3 and adds the new ones.
    std::fs::remove_dir_all(&live).unwrap();
    copy_dir(&backup, &live);
    let after = append_and_copy(&live, 4..=5, &shared, "replica-a", 5).await;
    let ids: Vec<i64> = after.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.iter().filter(|id| **id == 3).count(), 2, "{after:?}");
    assert!(ids.contains(&4), "{after:?}");
    let first_three = before.iter().find(|(id, _)| *id == 3).unwrap();
    assert!(
        after.contains(first_three),
        "the first row 3 is kept as it was"
    );
}

fn refresh_token(
    byte: u8,
    family: &str,
    expires_at_ms: i64,
) -> ibkr_gateway::store::NewRefreshToken {
    ibkr_gateway::store::NewRefreshToken {
        digest: [byte; 32],
        family_id: family.into(),
        client_id: "client-1".into(),
        subject: "alice".into(),
        scopes: "ibkr:health:read".into(),
        resource: "https://gateway.example/mcp".into(),
        approval_id: format!("approval-of-{family}"),
        created_at_ms: 1_000,
        expires_at_ms,
    }
}

fn successor(byte: u8) -> ibkr_gateway::store::RefreshSuccessor {
    ibkr_gateway::store::RefreshSuccessor {
        digest: [byte; 32],
        expires_at_ms: 10_000,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_token_rotates_once_and_its_reuse_revokes_the_family_across_replicas() {
    async fn scenario(replicas: Replicas, backend: &str) {
        use ibkr_gateway::store::RefreshUse;
        let [a, b, c] = &replicas.stores;
        a.insert_refresh_token(refresh_token(1, "family-1", 10_000))
            .await
            .unwrap();
        // Three replicas presented the same token at once, each with its own successor: one
        // rotates it; the others find it spent (or its family revoked already), and the
        // family is revoked, the winner's successor included.
        let (x, y, z) = tokio::join!(
            a.use_refresh_token([1; 32], 2_000, successor(11)),
            b.use_refresh_token([1; 32], 2_000, successor(12)),
            c.use_refresh_token([1; 32], 2_000, successor(13)),
        );
        let uses = [x.unwrap(), y.unwrap(), z.unwrap()];
        let rotated = uses
            .iter()
            .position(|used| matches!(used, RefreshUse::Rotated(_)))
            .expect("one rotated");
        assert_eq!(
            uses.iter()
                .filter(|used| matches!(used, RefreshUse::Rotated(_)))
                .count(),
            1,
            "{backend}: {uses:?}"
        );
        assert!(
            uses.iter()
                .any(|used| matches!(used, RefreshUse::Reused { .. })),
            "{backend}: {uses:?}"
        );
        let winner = 11 + u8::try_from(rotated).unwrap();
        assert_eq!(
            a.use_refresh_token([winner; 32], 3_000, successor(20))
                .await
                .unwrap(),
            RefreshUse::Revoked,
            "{backend}: the winner's successor went with its family"
        );
        // The losers' successors were never stored.
        for loser in (11..=13).filter(|byte| *byte != winner) {
            assert_eq!(
                b.use_refresh_token([loser; 32], 3_000, successor(21))
                    .await
                    .unwrap(),
                RefreshUse::Unknown,
                "{backend}"
            );
        }

        // One rotation, then the old token again: the new one dies with it.
        a.insert_refresh_token(refresh_token(3, "family-2", 10_000))
            .await
            .unwrap();
        assert!(matches!(
            b.use_refresh_token([3; 32], 2_000, successor(4)).await.unwrap(),
            RefreshUse::Rotated(grant) if grant.family_id == "family-2" && grant.client_id == "client-1"
        ));
        assert_eq!(
            a.use_refresh_token([3; 32], 2_100, successor(30))
                .await
                .unwrap(),
            RefreshUse::Reused {
                family_id: "family-2".into()
            },
            "{backend}"
        );
        assert_eq!(
            b.use_refresh_token([4; 32], 2_200, successor(31))
                .await
                .unwrap(),
            RefreshUse::Revoked,
            "{backend}"
        );

        // The owner revokes an agent: every token of its approval goes.
        a.insert_refresh_token(refresh_token(7, "family-4", 10_000))
            .await
            .unwrap();
        // Another user's laptop naming the approval changes nothing; its owner's does.
        assert_eq!(
            c.revoke_refresh_tokens_of_approval(
                "approval-of-family-4".into(),
                Some("someone-else".into()),
                2_000
            )
            .await
            .unwrap(),
            0,
            "{backend}"
        );
        assert_eq!(
            c.revoke_refresh_tokens_of_approval(
                "approval-of-family-4".into(),
                Some("alice".into()),
                2_000
            )
            .await
            .unwrap(),
            1,
            "{backend}"
        );
        assert_eq!(
            a.use_refresh_token([7; 32], 2_100, successor(32))
                .await
                .unwrap(),
            RefreshUse::Revoked
        );

        // Expired and unknown tokens.
        a.insert_refresh_token(refresh_token(5, "family-3", 2_000))
            .await
            .unwrap();
        assert_eq!(
            b.use_refresh_token([5; 32], 2_000, successor(33))
                .await
                .unwrap(),
            RefreshUse::Expired
        );
        assert_eq!(
            c.use_refresh_token([6; 32], 2_000, successor(34))
                .await
                .unwrap(),
            RefreshUse::Unknown
        );
    }
    on_both_backends!(scenario);
}
