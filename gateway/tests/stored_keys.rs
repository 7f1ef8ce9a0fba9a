#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is the failure report
//! Reading pairings back from the store costs no x25519 scalar multiplication: the keys were
//! validated when they were written, and the per-call lookup must not pay for it again.
//!
//! A binary of its own with a single test: `protocol::identity::low_order_checks()` counts
//! for the whole process, and no other test runs here to move it.

use ibkr_gateway::store::{CompleteOutcome, NewPairingCode, Store};
use ibkr_gateway::store::{NewPairing, PairingId};
use protocol::identity::{PublicKey, StaticKeypair, low_order_checks};
use zeroize::Zeroizing;

async fn pair(store: &Store, code: &str, user: &str, sidecar_id: &str, key: PublicKey, now: i64) {
    assert!(
        store
            .insert_pairing_code(NewPairingCode {
                code_id: code.into(),
                secret: Zeroizing::new("3XW9PT4R".into()),
                user_id: user.into(),
                created_at_ms: now,
                expires_at_ms: now + 60_000,
                max_attempts: 5,
            })
            .await
            .unwrap()
    );
    let outcome = store
        .complete_pairing(NewPairing {
            pairing_id: PairingId::random(),
            code_id: code.into(),
            sidecar_id: sidecar_id.into(),
            sidecar_public_key: key,
            display_name: "laptop".into(),
            now_ms: now,
        })
        .await
        .unwrap();
    assert!(matches!(outcome, CompleteOutcome::Paired(_)), "{outcome:?}");
}

#[tokio::test]
async fn pairings_read_back_from_the_store_run_no_low_order_check() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let alice = StaticKeypair::from_secret_bytes([1; 32]).public();
    let bob = StaticKeypair::from_secret_bytes([2; 32]).public();
    pair(&store, "AAAA", "alice", "laptop-a", alice, 1).await;
    pair(&store, "BBBB", "bob", "laptop-b", bob, 2).await;

    let before = low_order_checks();
    for round in 0..50 {
        // The per-call lookup: its first read and every re-read after a change come from the
        // database, the rest from memory.
        let pairings = store.user_pairings("alice").await.unwrap();
        assert_eq!(pairings.active[0].sidecar_public_key, alice);
        // The uncached reads: handshake, CLI listing, per-user.
        let by_key = store.active_pairing_by_key(bob).await.unwrap().unwrap();
        assert_eq!(by_key.user_id, "bob");
        assert_eq!(store.list_pairings().await.unwrap().len(), 2 + round / 10);
        assert_eq!(
            store
                .active_pairings_for_user("bob".into())
                .await
                .unwrap()
                .len(),
            1
        );
        if round % 10 == 9 {
            // A change forces the lookup back to the database.
            let code = format!("C{round:03}");
            let key = StaticKeypair::from_secret_bytes([round as u8 + 10; 32]).public();
            pair(&store, &code, "carol", &format!("laptop-{round}"), key, 3).await;
        }
    }
    assert_eq!(
        low_order_checks(),
        before,
        "a pairing read back from the store ran the low-order check"
    );

    // The counter does count: a key from untrusted input is checked.
    assert!(PublicKey::from_hex(&alice.to_hex()).is_ok());
    assert_eq!(low_order_checks(), before + 1);
}
