#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a panic is the failure report
//! Reading the identity and the pairing records back from the state store costs no x25519
//! scalar multiplication: their keys were validated when they were written, and the daemon
//! reads its pairing for every relayed request.
//!
//! A binary of its own with a single test: `protocol::identity::low_order_checks()` counts
//! for the whole process, and no other test runs here to move it.

use ibkr_agent::state::{IdentityRecord, PairingRecord, StateStore};
use protocol::identity::{PublicKey, StaticKeypair, low_order_checks};
use shared_safety::scope::ScopeSet;

#[test]
fn records_read_back_from_the_state_store_run_no_low_order_check() {
    let dir = tempfile::tempdir().unwrap();
    let store = StateStore::open(dir.path()).unwrap();
    let sidecar = StaticKeypair::from_secret_bytes([1; 32]).public();
    let gateway = StaticKeypair::from_secret_bytes([2; 32]).public();
    store
        .insert_identity(&IdentityRecord {
            sidecar_id: "sidecar-1".into(),
            display_name: "laptop".into(),
            public_key: sidecar,
            has_secret: true,
            created_at: 1,
        })
        .unwrap();
    let record = PairingRecord {
        remote_instance_id: "gw-1".into(),
        sidecar_id: "sidecar-1".into(),
        user_id: "alice".into(),
        gateway_url: Some("https://gateway.example".into()),
        relay_url: None,
        gateway_public_key: Some(gateway),
        gateway_pairing_id: Some([4; 16]),
        local_scopes: ScopeSet::read_only_default(),
        created_at: 1,
        expires_at: None,
        revoked_at: None,
    };
    store.upsert_pairing(&record).unwrap();
    // Another process's command, so the per-request read goes back to the database now and
    // then rather than only serving from memory.
    let cli = StateStore::open(dir.path()).unwrap();

    let before = low_order_checks();
    for round in 0..50 {
        let read = store.pairing("gw-1", "sidecar-1").unwrap().unwrap();
        assert_eq!(read.gateway_public_key, Some(gateway));
        assert_eq!(store.identity().unwrap().unwrap().public_key, sidecar);
        assert_eq!(store.pairings().unwrap().len(), 1);
        assert!(store.dialable_pairing("sidecar-1", 2).unwrap().is_some());
        if round % 10 == 9 {
            assert!(
                cli.set_local_scopes("gw-1", "sidecar-1", &ScopeSet::read_only_default())
                    .unwrap()
            );
        }
    }
    assert_eq!(
        low_order_checks(),
        before,
        "a key read back from the state store ran the low-order check"
    );

    // The counter does count: a key from untrusted input is checked.
    assert!(PublicKey::from_hex(&gateway.to_hex()).is_ok());
    assert_eq!(low_order_checks(), before + 1);
}
