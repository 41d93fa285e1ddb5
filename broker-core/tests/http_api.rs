//! The broker's HTTP routes: health, readiness, metrics, invite redemption.

mod common;

use broker_core::crypto::{self, Keypair};
use broker_core::invite::{Invite, InviteTerms};
use broker_core::protocol::{self, Role};
use broker_core::protocol::{ClientFrame, ServerFrame};
use broker_core::store::{InviteRecord, Store};
use common::{RawSocket, TestBroker, http, signed_hello_with_session};
use serde_json::{Value, json};

#[tokio::test]
async fn health_is_liveness_and_ready_checks_the_expected_migration() {
    let broker = TestBroker::start_expecting(Default::default(), Some("0001_init")).await;
    let (status, body) = http(broker.addr, "GET", "/health", None).await;
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["db"], "up");
    assert!(health["version"].is_string() && health["uptime"].is_u64());

    let (status, body) = http(broker.addr, "GET", "/health/ready", None).await;
    assert_eq!(status, 200, "{body}");

    let waiting = TestBroker::start_expecting(Default::default(), Some("0099_future")).await;
    let (status, body) = http(waiting.addr, "GET", "/health/ready", None).await;
    assert_eq!(status, 503);
    assert_eq!(serde_json::from_str::<Value>(&body).expect("json")["reason"], "migration_missing");

    let (status, _) = http(broker.addr, "GET", "/nope", None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn metrics_export_every_series() {
    let broker = TestBroker::start().await;
    let (status, body) = http(broker.addr, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    for series in [
        "broker_connections_active",
        "broker_messages_routed_total{priority=\"next\"}",
        "broker_messages_rejected_total{reason=\"rate_limit\"}",
        "broker_queue_depth",
        "broker_messages_dropped_by_grant_total{cap=\"dm\"}",
        "broker_connections_rejected_total{reason=\"bad_signature\"}",
        "broker_hello_latency_seconds_bucket",
    ] {
        assert!(body.contains(series), "missing {series}");
    }
}

/// An invite for `mesh_id` signed by `issuer` and recorded in the broker's store.
fn issue(
    broker: &TestBroker,
    mesh_id: &str,
    issuer: &common::TestMember,
    role: Role,
    max_uses: u32,
    expires_at: u64,
) -> Invite {
    let invite = Invite::sign(common::invite_terms(broker, mesh_id, role, max_uses, expires_at), &issuer.key);
    broker
        .store
        .create_invite(&InviteRecord {
            id: invite.invite_id.clone(),
            mesh_id: mesh_id.to_owned(),
            role,
            max_uses,
            used_count: 0,
            expires_at,
            issuer_member_id: issuer.record.id.clone(),
            created_at: protocol::now_ms(),
            revoked_at: None,
            email: None,
        })
        .expect("stored");
    invite
}

/// Joins with `key`, proving possession as claudemesh does.
async fn join(broker: &TestBroker, invite: &str, key: &Keypair) -> (u16, Value) {
    let proof = Invite::parse(invite).map_or_else(|_| String::new(), |parsed| common::join_proof(&parsed, key));
    join_with(broker, invite, &key.public_hex(), &proof).await
}

async fn join_with(broker: &TestBroker, invite: &str, pubkey: &str, proof: &str) -> (u16, Value) {
    let body = json!({"invite": invite, "pubkey": pubkey, "displayName": "newcomer", "proof": proof}).to_string();
    let (status, body) = http(broker.addr, "POST", "/join", Some(&body)).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn later() -> u64 {
    protocol::now_ms() / 1000 + 3600
}

#[tokio::test]
async fn redeeming_an_invite_adds_the_member_once() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["admin"]);
    let invite = issue(&broker, &mesh, &members[0], Role::Member, 1, later());
    let newcomer = Keypair::generate();

    let (status, body) = join(&broker, &invite.link(), &newcomer).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["meshId"], mesh);
    assert_eq!(body["role"], "member");
    assert_eq!(body["alreadyMember"], false);
    // Idempotent for the same key, and that does not use the invite up.
    let (status, again) = join(&broker, &invite.to_token(), &newcomer).await;
    assert_eq!(status, 200);
    assert_eq!(again["alreadyMember"], true);
    assert_eq!(again["memberId"], body["memberId"]);
    // The single use is spent on the first key.
    let (status, body) = join(&broker, &invite.to_token(), &Keypair::generate()).await;
    assert_eq!((status, body["error"].as_str()), (410, Some("invite_exhausted")));

    // The new member can say hello right away.
    let record = broker.store.member_by_pubkey(&mesh, &newcomer.public_hex()).expect("read").expect("member");
    let member = common::TestMember { key: newcomer, record };
    broker.connect(&mesh, &member, "newcomer").await;
}

#[tokio::test]
async fn forged_expired_revoked_and_foreign_invites_are_refused() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["admin", "plain"]);
    let joiner = Keypair::generate();

    // Role escalation: the token says admin, the signature covers member.
    let mut escalated = issue(&broker, &mesh, &members[0], Role::Member, 5, later());
    escalated.role = Role::Admin;
    let (status, body) = join(&broker, &escalated.to_token(), &joiner).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("invite_bad_signature")));

    // Re-signed by someone with a valid key but no admin role in the mesh.
    let by_plain_member = issue(&broker, &mesh, &members[1], Role::Member, 5, later());
    let (status, body) = join(&broker, &by_plain_member.to_token(), &joiner).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("invite_issuer_not_admin")));

    // Expired.
    let expired = issue(&broker, &mesh, &members[0], Role::Member, 5, protocol::now_ms() / 1000 - 1);
    let (status, body) = join(&broker, &expired.to_token(), &joiner).await;
    assert_eq!((status, body["error"].as_str()), (410, Some("invite_expired")));

    // Revoked.
    let revoked = issue(&broker, &mesh, &members[0], Role::Member, 5, later());
    let conn = rusqlite::Connection::open(broker.dir.path().join("broker.db")).expect("opens");
    conn.execute("UPDATE invites SET revoked_at = 1 WHERE id = ?1", [&revoked.invite_id]).expect("revokes");
    let (status, body) = join(&broker, &revoked.to_token(), &joiner).await;
    assert_eq!((status, body["error"].as_str()), (410, Some("invite_revoked")));

    // A valid invite of another mesh, relabelled for this one, fails its signature; and one the
    // broker never issued is unknown.
    let (other_mesh, other_members) = broker.mesh("other", &["boss"]);
    let mut relabelled = issue(&broker, &other_mesh, &other_members[0], Role::Member, 5, later());
    relabelled.mesh_id = mesh.clone();
    let (status, body) = join(&broker, &relabelled.to_token(), &joiner).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("invite_bad_signature")));
    let stranger = Keypair::generate();
    let unknown = Invite::sign(
        InviteTerms {
            mesh_id: mesh.clone(),
            mesh_slug: "acme".into(),
            mesh_name: "acme".into(),
            broker_url: broker.http_url(),
            invite_id: "inv_unknown".into(),
            role: Role::Member,
            max_uses: 1,
            expires_at: later(),
        },
        &stranger,
    );
    let (status, body) = join(&broker, &unknown.to_token(), &joiner).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("invite_not_found")));

    // Garbage.
    let (status, body) = join(&broker, "not an invite", &joiner).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invite_malformed")));
    let valid = issue(&broker, &mesh, &members[0], Role::Member, 5, later());
    let (status, body) = join_with(&broker, &valid.to_token(), "XYZ", "").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("pubkey_malformed")));
    // Keys that are hex but no usable key: the identity point and a point of order 2 (every
    // broadcast sealed to them would fail or be readable by anyone).
    for weak in [format!("01{}", "00".repeat(31)), format!("ec{}7f", "ff".repeat(30))] {
        let (status, body) = join_with(&broker, &valid.to_token(), &weak, "").await;
        assert_eq!((status, body["error"].as_str()), (400, Some("pubkey_malformed")), "{weak}");
    }
    let (status, _) = http(broker.addr, "POST", "/join", Some("{\"nope\":1}")).await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn exactly_one_of_many_concurrent_redemptions_of_a_single_use_invite_wins() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["admin"]);
    let invite = issue(&broker, &mesh, &members[0], Role::Admin, 1, later());
    let token = invite.to_token();
    let attempts = (0..12).map(|_| {
        let token = token.clone();
        let broker = &broker;
        async move { join(broker, &token, &Keypair::generate()).await }
    });
    let results = futures_util::future::join_all(attempts).await;
    let winners: Vec<_> = results.iter().filter(|(status, _)| *status == 200).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(winners[0].1["role"], "admin", "the role comes from the signed invite");
    assert!(
        results
            .iter()
            .filter(|(status, _)| *status != 200)
            .all(|(status, body)| *status == 410 && body["error"] == "invite_exhausted")
    );
    assert_eq!(broker.store.members(&mesh).expect("members").len(), 2);
}

#[tokio::test]
async fn joining_proves_the_key_and_never_takes_a_key_another_member_used() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["admin", "alice"]);
    let invite = issue(&broker, &mesh, &members[0], Role::Member, 5, later()).to_token();

    // Without a proof, or with another key's: the joiner may not hold the key it names.
    let seen_key = Keypair::generate();
    let (status, body) = join_with(&broker, &invite, &seen_key.public_hex(), "").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("proof_invalid")));
    let parsed = Invite::parse(&invite).expect("invite");
    let bytes = crypto::join_proof_bytes(&parsed.invite_id, &parsed.mesh_id, &seen_key.public_hex());
    let wrong = Keypair::generate().sign_hex(bytes.as_bytes());
    let (status, body) = join_with(&broker, &invite, &seen_key.public_hex(), &wrong).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("proof_invalid")));

    // Alice's session key, even in the hands of its holder, never becomes a member key: mail
    // for her session would go to the new member.
    let session = Keypair::generate();
    let hello = signed_hello_with_session(&mesh, &members[1], protocol::now_ms(), &session);
    let mut alice = RawSocket::connect(&broker.ws_url()).await;
    alice.send_frame(&ClientFrame::Hello(hello)).await;
    assert!(matches!(alice.next().await, Ok(ServerFrame::HelloAck(_))));
    let (status, body) = join(&broker, &invite, &session).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("key_taken")), "{body}");

    // Durably: not only while the broker remembers the session.
    drop(alice);
    let broker = broker.restart(broker_core::config::BrokerConfig::default()).await;
    let (status, body) = join(&broker, &invite, &session).await;
    assert_eq!((status, body["error"].as_str()), (409, Some("key_taken")), "{body}");
    let (status, body) = join(&broker, &invite, &Keypair::generate()).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn member_names_are_unique_and_reserved_names_refused_at_join() {
    let broker = TestBroker::start().await;
    let (mesh, members) = broker.mesh("acme", &["admin", "alice"]);
    let invite = issue(&broker, &mesh, &members[0], Role::Member, 5, later());
    let parsed = Invite::parse(&invite.to_token()).expect("invite");
    let join_named = |name: &'static str| {
        let (broker, token, parsed) = (&broker, invite.to_token(), parsed.clone());
        async move {
            let key = Keypair::generate();
            let body = json!({"invite": token, "pubkey": key.public_hex(), "displayName": name,
                "proof": common::join_proof(&parsed, &key)});
            let (status, body) = http(broker.addr, "POST", "/join", Some(&body.to_string())).await;
            (status, serde_json::from_str::<Value>(&body).unwrap_or(Value::Null)["error"].as_str().map(str::to_owned))
        }
    };
    assert_eq!(join_named("Al1ce").await, (409, Some("name_taken".to_owned())));
    assert_eq!(join_named("assistant").await, (400, Some("name_reserved".to_owned())));
    assert_eq!(join_named("carol").await.0, 200);
}
