//! Pairing as an attacker tries it, over real loopback sockets.
//!
//! - A user who holds an ordinary code for their own subject tries to take over another user's
//!   sidecar: register its public key (with and without its sidecar id), or its sidecar id
//!   under their own key. Each is refused; the victim's pairing and live session stay as they
//!   were, and the victim's sidecar is never registered under the attacker's subject.
//! - A code id's liveness does not leak before a finish, and junk starts cannot burn a
//!   rightful user's code; one client address that keeps failing is cut off.
//!
//! Several client addresses on one machine: every 127/8 address reaches the loopback
//! listener, so a client bound to 127.0.0.2 is a different peer.

use crate::common::*;
use ibkr_gateway::GatewayHandle;
use protocol::handshake::user_id_hash;
use protocol::identity::StaticKeypair;
use protocol::pairing::{PairStartReply, PairingCode, SidecarInfo, SidecarPairing};
use rand_core::OsRng;
use serde_json::json;
use std::time::Duration;

async fn post(
    client: &reqwest::Client,
    handle: &GatewayHandle,
    path: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    client
        .post(format!("{}{path}", handle.base_url()))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// `(status, error code)` of a refused pairing request.
async fn refusal(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap();
    (status, body["error"]["code"].as_str().unwrap().to_string())
}

async fn start(
    client: &reqwest::Client,
    handle: &GatewayHandle,
    code: &PairingCode,
) -> (SidecarPairing, reqwest::Response) {
    let (pairing, start) = SidecarPairing::start(code, &mut OsRng);
    let response = post(
        client,
        handle,
        "/pair/start",
        protocol::pairing::encode(&start).unwrap(),
    )
    .await;
    (pairing, response)
}

/// A hostile pairing: `code` is the attacker's own, `claimed` the key it registers (not
/// necessarily its own), `held` the key whose secret it has.
async fn hostile_pair(
    from: u8,
    handle: &GatewayHandle,
    code: &str,
    claimed: protocol::identity::PublicKey,
    held: &StaticKeypair,
    sidecar_id: &str,
) -> Result<(), (u16, String)> {
    let client = http_from(from);
    let code = PairingCode::parse(code).unwrap();
    let (pairing, response) = start(&client, handle, &code).await;
    assert_eq!(response.status(), 200);
    let reply: PairStartReply =
        protocol::pairing::decode(&response.bytes().await.unwrap()).unwrap();
    let info = SidecarInfo {
        static_public: claimed,
        sidecar_id: sidecar_id.into(),
        display_name: "not yours".into(),
    };
    let (_, finish) = pairing.finish_claiming(&reply, &info, held).unwrap();
    let response = post(
        &client,
        handle,
        "/pair/finish",
        protocol::pairing::encode(&finish).unwrap(),
    )
    .await;
    if response.status() == 200 {
        Ok(())
    } else {
        Err(refusal(response).await)
    }
}

#[tokio::test]
async fn a_code_for_one_user_cannot_take_over_another_users_sidecar() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let mut events = handle.subscribe_sessions();

    // Alice's laptop is paired and connected.
    let (alice_key, alice_info) = pair(&handle, "alice", "laptop-a").await;
    let alice_sidecar = FakeSidecar::connect(&handle, &alice_key, "laptop-a").await;
    assert_eq!(
        alice_sidecar.server_hello.user_id_hash,
        user_id_hash("alice")
    );
    assert_eq!(alice_sidecar.server_hello.pairing_id, alice_info.pairing_id);
    registered_sessions(&mut events, 1).await;
    let mut alice_seen = answering_sidecar(alice_sidecar);

    // Bob holds an ordinary code for his own subject.
    let bob_code = handle
        .issue_pairing_code("bob", Duration::from_secs(60))
        .await
        .unwrap();
    let bob_key = StaticKeypair::generate(&mut OsRng);
    // Alice's public key, with her sidecar id and with another: he cannot prove he holds it.
    // (From two addresses: one address gets two tested guesses on one code.)
    for (from, sidecar_id) in [(66, "laptop-a"), (67, "laptop-bob")] {
        assert_eq!(
            hostile_pair(
                from,
                &handle,
                &bob_code,
                alice_key.public(),
                &bob_key,
                sidecar_id
            )
            .await,
            Err((403, "PAIRING_KEY_PROOF_FAILED".to_string())),
            "{sidecar_id}"
        );
    }
    // His own key under alice's sidecar id: the id is taken.
    assert_eq!(
        hostile_pair(
            68,
            &handle,
            &bob_code,
            bob_key.public(),
            &bob_key,
            "laptop-a"
        )
        .await,
        Err((409, "SIDECAR_ID_CONFLICT".to_string()))
    );

    // Alice's pairing is exactly as it was, and still the only active one.
    let pairings = handle.pairings().await.unwrap();
    let active: Vec<_> = pairings.iter().filter(|p| p.is_active()).collect();
    assert_eq!(active.len(), 1, "{pairings:?}");
    assert_eq!(
        (
            active[0].user_id.as_str(),
            active[0].sidecar_id.as_str(),
            active[0].sidecar_public_key,
            active[0].pairing_id.0
        ),
        (
            "alice",
            "laptop-a",
            alice_key.public(),
            alice_info.pairing_id
        )
    );
    // Her session is intact and still hers.
    let live = handle.live_sidecars();
    assert_eq!(live.len(), 1);
    assert_eq!(
        (live[0].sidecar_id.as_str(), live[0].user_id.as_str()),
        ("laptop-a", "alice")
    );

    // Bob's calls never reach alice's laptop; alice's do.
    let mut bob = McpClient::new(
        &handle.mcp_url(),
        &issuer.token("bob", &handle.mcp_url(), &["ibkr:accounts:read"]),
    );
    bob.initialize().await;
    let answer = call(&mut bob, "ibkr_accounts_list", json!({})).await;
    assert_eq!(error_code(&answer), "SIDECAR_PAIRING_REQUIRED");
    let mut alice = McpClient::new(
        &handle.mcp_url(),
        &issuer.token("alice", &handle.mcp_url(), &["ibkr:accounts:read"]),
    );
    alice.initialize().await;
    let answer = call(&mut alice, "ibkr_accounts_list", json!({})).await;
    assert_eq!(answer["result"]["isError"], json!(false), "{answer}");
    // The first request alice's sidecar ever saw is alice's own.
    match next_seen(&mut alice_seen).await {
        protocol::frame::Frame::Request(request) => {
            assert_eq!(request.tool_name, "ibkr_accounts_list")
        }
        other => panic!("unexpected {other:?}"),
    }

    // A reconnect of alice's laptop still lands on alice.
    let again = FakeSidecar::connect(&handle, &alice_key, "laptop-a").await;
    assert_eq!(again.server_hello.user_id_hash, user_id_hash("alice"));
    assert_eq!(again.server_hello.pairing_id, alice_info.pairing_id);

    // Bob's code was not burned by his failed tries (each was one tested guess; the code
    // allows five): he can still pair a laptop of his own.
    let info = pair_with_code_from(&http_from(69), &handle, &bob_code, &bob_key, "laptop-b")
        .await
        .unwrap();
    assert_eq!(info.user_id, "bob");
    handle.shutdown().await;
}

#[tokio::test]
async fn a_paired_key_is_not_paired_again_until_an_operator_revokes_it() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let (key, first) = pair(&handle, "alice", "laptop-a").await;
    let code = handle
        .issue_pairing_code("alice", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        pair_with_code(&handle, &code, &key, "laptop-a").await.err(),
        Some((409, "PAIRING_KEY_ALREADY_PAIRED".to_string()))
    );
    assert!(handle.revoke_pairing("laptop-a").await.unwrap());
    let second = pair_with_code(&handle, &code, &key, "laptop-a")
        .await
        .unwrap();
    assert_ne!(second.pairing_id, first.pairing_id);
    handle.shutdown().await;
}

/// A code with `code_id` and a secret that is certainly not the live one's.
fn wrong_secret(code_id: &str, live: &str) -> PairingCode {
    for secret in ["AAAAAAAA", "BBBBBBBB"] {
        let candidate = PairingCode::parse(&format!("{code_id}{secret}")).unwrap();
        if *candidate.display() != live {
            return candidate;
        }
    }
    unreachable!("two different secrets")
}

/// A running gateway with one live code for alice: (issuer, state dir, gateway, code, code id).
async fn gateway_with_a_live_code() -> (TestIssuer, tempfile::TempDir, GatewayHandle, String, String)
{
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let live = handle
        .issue_pairing_code("alice", Duration::from_secs(60))
        .await
        .unwrap();
    let live_id = PairingCode::parse(&live).unwrap().code_id().to_string();
    (issuer, dir, handle, live, live_id)
}

/// A code id no live code has.
fn unused_id(live_id: &str) -> &'static str {
    if live_id == "ZZZZ" { "YYYY" } else { "ZZZZ" }
}

#[tokio::test]
async fn unknown_and_live_code_ids_look_the_same_until_a_finish_fails() {
    let (_issuer, _dir, handle, live, live_id) = gateway_with_a_live_code().await;
    let client = http_from(70);
    let key = StaticKeypair::generate(&mut OsRng);

    let mut answers = Vec::new();
    for code in [
        wrong_secret(&live_id, &live),
        PairingCode::parse(&format!("{}AAAAAAAA", unused_id(&live_id))).unwrap(),
    ] {
        let (pairing, response) = start(&client, &handle, &code).await;
        let status = response.status().as_u16();
        let content_type = response.headers()["content-type"].clone();
        let bytes = response.bytes().await.unwrap();
        let reply: PairStartReply = protocol::pairing::decode(&bytes).unwrap();
        let (_, finish) = pairing
            .finish(
                &reply,
                &SidecarInfo {
                    static_public: key.public(),
                    sidecar_id: "laptop".into(),
                    display_name: "laptop".into(),
                },
                &key,
            )
            .unwrap();
        let finished = refusal(
            post(
                &client,
                &handle,
                "/pair/finish",
                protocol::pairing::encode(&finish).unwrap(),
            )
            .await,
        )
        .await;
        answers.push((status, content_type, bytes.len(), finished));
    }
    // Same status, type and size before the finish; the same refusal after it.
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0].0, 200);
    assert_eq!(answers[0].3, (401, "PAIRING_CODE_INVALID".to_string()));
    // A malformed id (not of the code alphabet) is refused at once: it can never be live.
    let bad = protocol::pairing::encode(&protocol::pairing::PairStart {
        protocol_version: protocol::PROTOCOL_VERSION,
        code_id: "UUUU".into(),
        pake: vec![0; 33],
    })
    .unwrap();
    assert_eq!(
        refusal(post(&client, &handle, "/pair/start", bad).await).await,
        (401, "PAIRING_CODE_INVALID".to_string())
    );
    handle.shutdown().await;
}

#[tokio::test]
async fn junk_starts_and_another_clients_guesses_cannot_lock_out_the_rightful_user() {
    let (_issuer, _dir, handle, live, live_id) = gateway_with_a_live_code().await;

    // Junk starts on the live id from one client: they spend nothing (past a few exchanges in
    // flight the client is refused, which costs the code nothing either).
    let junk = http_from(80);
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let (_, response) = start(&junk, &handle, &wrong_secret(&live_id, &live)).await;
        statuses.push(response.status().as_u16());
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    assert!(statuses.contains(&429));

    // Wrong guesses from another client: each is a tested guess, but one client gets only two
    // on one code, fewer than the code's five.
    let guesser = http_from(81);
    let mut refusals = Vec::new();
    for _ in 0..4 {
        let wrong = wrong_secret(&live_id, &live).display().to_string();
        let key = StaticKeypair::generate(&mut OsRng);
        refusals.push(
            pair_with_code_from(&guesser, &handle, &wrong, &key, "guess")
                .await
                .unwrap_err(),
        );
    }
    assert_eq!(
        refusals,
        vec![
            (401, "PAIRING_CODE_INVALID".to_string()),
            (401, "PAIRING_CODE_INVALID".to_string()),
            (429, "AUTH_RATE_LIMITED".to_string()),
            (429, "AUTH_RATE_LIMITED".to_string()),
        ]
    );

    // The rightful user, from their own address, pairs with the code.
    let key = StaticKeypair::generate(&mut OsRng);
    let info: Result<protocol::pairing::GatewayInfo, _> =
        pair_with_code(&handle, &live, &key, "laptop-a").await;
    assert_eq!(info.unwrap().user_id, "alice");
    handle.shutdown().await;
}

#[tokio::test]
async fn a_client_that_keeps_failing_is_cut_off_and_others_are_not() {
    let issuer = TestIssuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let handle = start_gateway(&issuer, dir.path()).await;
    let prober = http_from(90);
    let key = StaticKeypair::generate(&mut OsRng);
    // Blind guesses at code ids: every finish fails.
    let mut codes = Vec::new();
    for n in 0..12u32 {
        let code = format!("{n:04}-AAAA-AAAA");
        let refused = pair_with_code_from(&prober, &handle, &code, &key, "probe")
            .await
            .unwrap_err();
        codes.push(refused.1);
    }
    // The refusal says when to ask again.
    let code = PairingCode::parse("0000AAAAAAAA").unwrap();
    let (_, response) = start(&prober, &handle, &code).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "60");
    let expected: Vec<&str> = std::iter::repeat_n("PAIRING_CODE_INVALID", 10)
        .chain(std::iter::repeat_n("AUTH_RATE_LIMITED", 2))
        .collect();
    assert_eq!(codes, expected);
    // Another client still pairs.
    let (_, info) = pair(&handle, "alice", "laptop-a").await;
    assert_eq!(info.user_id, "alice");
    handle.shutdown().await;
}
