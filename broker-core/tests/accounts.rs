//! The control plane against a real broker: meshes through the API, invites (with email to a
//! local SMTP sink), kick/ban, grants and the audit chain.

mod common;

use std::time::Duration;

use broker_core::client::{ClientError, ClientEvent};
use broker_core::crypto::Keypair;
use broker_core::invite::{Invite, InviteTerms};
use broker_core::protocol::{self, ErrorCode, Priority, Role, SendRejection};
use broker_core::store::Store;
use common::accounts::{create_mesh, first_device, generous};
use common::{TestBroker, api};
use serde_json::json;

#[tokio::test]
async fn meshes_through_the_api() {
    let broker = TestBroker::start_with(generous()).await;
    let alice = first_device(&broker, "alice").await;
    let bob = first_device(&broker, "bob").await;
    let alice_key = Keypair::generate();

    // A bad creator key is refused before anything is written.
    let (status, body) =
        api(broker.addr, "POST", "/v1/meshes", Some(&alice), Some(json!({"name": "acme", "pubkey": "nope"}))).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("pubkey_malformed")));
    assert!(broker.store.meshes().expect("meshes").is_empty());

    let create = |token: String, pubkey: String| async move {
        api(
            broker.addr,
            "POST",
            "/v1/meshes",
            Some(&token),
            Some(json!({"name": "Acme", "pubkey": pubkey, "displayName": "alice"})),
        )
        .await
    };
    let (status, first) = create(alice.clone(), alice_key.public_hex()).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["slug"], "acme");
    let (_, second) = create(bob.clone(), Keypair::generate().public_hex()).await;
    assert_eq!(second["slug"], "acme-2", "slugs are unique per broker");
    let mesh_id = first["id"].as_str().expect("id").to_owned();

    // Online counts follow live sessions.
    let member = common::TestMember {
        key: alice_key.clone(),
        record: broker.store.member_by_pubkey(&mesh_id, &alice_key.public_hex()).expect("read").expect("member"),
    };
    let _session = broker.connect(&mesh_id, &member, "alice").await;
    let (_, list) = api(broker.addr, "GET", "/v1/meshes", Some(&alice), None).await;
    let meshes = list["meshes"].as_array().expect("meshes");
    assert_eq!(meshes.len(), 1, "only alice's mesh: {list}");
    assert_eq!(meshes[0]["memberCount"], 1);
    assert_eq!(meshes[0]["onlineCount"], 1);
    assert_eq!(meshes[0]["role"], "admin");
    assert_eq!(meshes[0]["owner"], true);

    let (status, renamed) =
        api(broker.addr, "PATCH", &format!("/v1/meshes/{mesh_id}"), Some(&alice), Some(json!({"name": "Acme Inc"})))
            .await;
    assert_eq!((status, renamed["name"].as_str()), (200, Some("Acme Inc")));
    let (_, members) = api(broker.addr, "GET", &format!("/v1/meshes/{mesh_id}/members"), Some(&alice), None).await;
    assert_eq!(members["members"][0]["role"], "admin");
    assert_eq!(members["members"][0]["online"], true);

    assert_eq!(api(broker.addr, "POST", &format!("/v1/meshes/{mesh_id}/archive"), Some(&alice), None).await.0, 200);
    let (status, _) =
        api(broker.addr, "PATCH", &format!("/v1/meshes/{mesh_id}"), Some(&bob), Some(json!({"name": "x"}))).await;
    assert_eq!(status, 404, "bob is not in alice's mesh");
}

/// A device signs an invite with its admin member key and registers it with the broker.
/// A fresh invite's terms, valid for an hour.
fn invite_terms(broker: &TestBroker, mesh_id: &str, role: Role, max_uses: u32) -> InviteTerms {
    common::invite_terms(broker, mesh_id, role, max_uses, protocol::now_ms() / 1000 + 3600)
}

fn signed_invite(broker: &TestBroker, mesh_id: &str, admin: &Keypair, role: Role, max_uses: u32) -> Invite {
    Invite::sign(invite_terms(broker, mesh_id, role, max_uses), admin)
}

#[tokio::test]
async fn invites_through_the_api_are_signed_on_the_device_and_emailed_when_possible() {
    let (smtp_url, mut mails) = broker_core::testing::smtp_sink().await;
    let mailer = broker_core::email::Mailer::new(&smtp_url, "claudemesh <noreply@example.test>").expect("mailer");
    let broker = TestBroker::start_full(generous(), None, Some(mailer)).await;
    let alice = first_device(&broker, "alice").await;
    let admin_key = Keypair::generate();
    let (_, mesh) = api(
        broker.addr,
        "POST",
        "/v1/meshes",
        Some(&alice),
        Some(json!({"name": "acme", "pubkey": admin_key.public_hex()})),
    )
    .await;
    let mesh_id = mesh["id"].as_str().expect("id").to_owned();

    let invite = signed_invite(&broker, &mesh_id, &admin_key, Role::Member, 2);
    let (status, created) = api(
        broker.addr,
        "POST",
        &format!("/v1/meshes/{mesh_id}/invites"),
        Some(&alice),
        Some(json!({"invite": invite.link(), "email": "carol@example.test"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["emailed"], true, "{created}");
    let mail = tokio::time::timeout(common::WAIT, mails.recv()).await.expect("mail in time").expect("mail");
    assert!(mail.contains("carol@example.test"));
    assert!(mail.contains("text/plain") && mail.contains("text/html"), "an HTML and a text part");
    assert!(mail.contains(&invite.invite_id[..8]) || mail.contains("/join/"), "the link is in the mail");

    // Redeemable, and listed with its use count.
    let (status, joined) =
        api(broker.addr, "POST", "/join", None, Some(common::join_body(&invite, Some("carol")))).await;
    assert_eq!(status, 200, "{joined}");
    let (_, invites) = api(broker.addr, "GET", &format!("/v1/meshes/{mesh_id}/invites"), Some(&alice), None).await;
    assert_eq!(invites["invites"][0]["usedCount"], 1);

    // Revoked invites stop working.
    let (status, _) = api(
        broker.addr,
        "POST",
        &format!("/v1/meshes/{mesh_id}/invites/{}/revoke", invite.invite_id),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, refused) = api(broker.addr, "POST", "/join", None, Some(common::join_body(&invite, None))).await;
    assert_eq!((status, refused["error"].as_str()), (410, Some("invite_revoked")));

    // Signed by a key that is not one of the caller's admin members: refused.
    let stranger = signed_invite(&broker, &mesh_id, &Keypair::generate(), Role::Admin, 1);
    let (status, _) = api(
        broker.addr,
        "POST",
        &format!("/v1/meshes/{mesh_id}/invites"),
        Some(&alice),
        Some(json!({"invite": stranger.to_token()})),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn without_smtp_the_api_says_the_invite_was_not_emailed() {
    let broker = TestBroker::start().await;
    let alice = first_device(&broker, "alice").await;
    let admin_key = Keypair::generate();
    let (_, mesh) = api(
        broker.addr,
        "POST",
        "/v1/meshes",
        Some(&alice),
        Some(json!({"name": "acme", "pubkey": admin_key.public_hex()})),
    )
    .await;
    let mesh_id = mesh["id"].as_str().expect("id").to_owned();
    let invite = signed_invite(&broker, &mesh_id, &admin_key, Role::Member, 1);
    let (status, created) = api(
        broker.addr,
        "POST",
        &format!("/v1/meshes/{mesh_id}/invites"),
        Some(&alice),
        Some(json!({"invite": invite.to_token(), "email": "carol@example.test"})),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(created["emailed"], false);
    assert!(created["emailError"].as_str().expect("why").contains("SMTP"));
}

#[tokio::test]
async fn kick_ends_sessions_ban_refuses_hello_and_unban_restores() {
    let broker = TestBroker::start_with(generous()).await;
    let alice = first_device(&broker, "alice").await;
    let admin_key = Keypair::generate();
    let (_, mesh) = api(
        broker.addr,
        "POST",
        "/v1/meshes",
        Some(&alice),
        Some(json!({"name": "acme", "pubkey": admin_key.public_hex()})),
    )
    .await;
    let mesh_id = mesh["id"].as_str().expect("id").to_owned();
    let bob = broker.add_member(&mesh_id, "bob", Role::Member);
    let carol = broker.add_member(&mesh_id, "carol", Role::Member);

    let mut bob_session = broker.connect(&mesh_id, &bob, "bob").await;
    let path = |member: &str, action: &str| format!("/v1/meshes/{mesh_id}/members/{member}/{action}");
    let (status, body) = api(broker.addr, "POST", &path(&bob.record.id, "ban"), Some(&alice), None).await;
    assert_eq!(status, 200, "{body}");
    let refused = loop {
        match tokio::time::timeout(common::WAIT, bob_session.events.recv()).await.expect("in time").expect("events") {
            ClientEvent::Refused { code, .. } => break code,
            _ => continue,
        }
    };
    assert_eq!(refused, ErrorCode::Revoked);
    // Banned: hello refused.
    let mut socket = common::RawSocket::connect(&broker.ws_url()).await;
    socket.send_frame(&protocol::ClientFrame::Hello(common::signed_hello(&mesh_id, &bob, protocol::now_ms()))).await;
    assert!(matches!(socket.next().await, Ok(protocol::ServerFrame::Error(e)) if e.code == ErrorCode::Unauthorized));
    // Unbanned: the same key works again.
    assert_eq!(api(broker.addr, "POST", &path(&bob.record.id, "unban"), Some(&alice), None).await.0, 200);
    broker.connect(&mesh_id, &bob, "bob").await;

    let carol_session = broker.connect(&mesh_id, &carol, "carol").await;
    assert_eq!(api(broker.addr, "POST", &path(&carol.record.id, "kick"), Some(&alice), None).await.0, 200);
    let mut carol_session = carol_session;
    loop {
        match tokio::time::timeout(common::WAIT, carol_session.events.recv()).await.expect("in time").expect("events") {
            ClientEvent::Refused { code, .. } => {
                assert_eq!(code, ErrorCode::Revoked);
                break;
            }
            _ => continue,
        }
    }
    // Members cannot moderate.
    let carol_device = first_device(&broker, "carol-account").await;
    let (status, _) = api(broker.addr, "POST", &path(&bob.record.id, "kick"), Some(&carol_device), None).await;
    assert_eq!(status, 404, "carol's account has no member here");
}

#[tokio::test]
async fn grants_are_enforced_for_direct_group_and_broadcast_sends() {
    let broker = TestBroker::start_with(generous()).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob", "carol"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    let mut bob = broker.connect(&mesh, &members[1], "bob").await;
    let mut carol = broker.connect(&mesh, &members[2], "carol").await;
    let alice_key = members[0].key.public_hex();
    let bob_key = members[1].key.public_hex();
    bob.client.join_group("team", None).await.expect("join");
    carol.client.join_group("team", None).await.expect("join");

    // Default: everything reaches bob.
    alice.client.send(&bob_key, b"hi", Priority::Now).await.expect("queued");
    assert_eq!(bob.message().await.text().as_deref(), Some("hi"));

    // Explicit: bob accepts only broadcasts from alice.
    let grants =
        bob.client.set_grants([(alice_key.clone(), Some(vec!["broadcast".to_owned()]))].into()).await.expect("grants");
    assert_eq!(grants.get(&alice_key), Some(&vec!["broadcast".to_owned()]));
    match alice.client.send(&bob_key, b"dm", Priority::Now).await {
        Err(ClientError::Rejected { reason, .. }) => assert_eq!(reason, Some(SendRejection::Blocked)),
        other => panic!("expected blocked, got {other:?}"),
    }
    alice.client.send("@team", b"team news", Priority::Now).await.expect("queued");
    assert_eq!(bob.message().await.text().as_deref(), Some("team news"));
    assert_eq!(carol.message().await.text().as_deref(), Some("team news"));

    // Blocked: broadcasts and group messages are dropped for bob only, silently.
    bob.client.set_grants([(alice_key.clone(), Some(vec![]))].into()).await.expect("grants");
    let receipt = alice.client.send("*", b"to all", Priority::Now).await.expect("queued");
    assert_eq!(receipt.recipients, 1, "only carol");
    assert_eq!(carol.message().await.text().as_deref(), Some("to all"));
    alice.client.send("@team", b"team again", Priority::Now).await.expect("queued");
    assert_eq!(carol.message().await.text().as_deref(), Some("team again"));
    bob.no_message_within(Duration::from_millis(300)).await;
    let metrics = broker.broker.metrics().render();
    assert!(metrics.contains("broker_messages_dropped_by_grant_total{cap=\"broadcast\"} 2"), "{metrics}");
    assert!(metrics.contains("broker_messages_dropped_by_grant_total{cap=\"dm\"} 1"), "{metrics}");

    // Reset: back to the defaults.
    let grants = bob.client.set_grants([(alice_key.clone(), None)].into()).await.expect("grants");
    assert!(grants.is_empty());
    alice.client.send(&bob_key, b"welcome back", Priority::Now).await.expect("queued");
    assert_eq!(bob.message().await.text().as_deref(), Some("welcome back"));

    // The drops are in the audit log, as metadata.
    let (entries, _) = broker.store.audit_entries(&mesh, Some("message_dropped"), 50, 0).expect("audit");
    assert_eq!(entries.len(), 3);
    assert!(entries.iter().all(|e| e.payload["recipient"] == members[1].record.id));
}

#[tokio::test]
async fn the_audit_chain_verifies_and_reports_an_edited_row() {
    let broker = TestBroker::start_with(generous()).await;
    let (mesh, members) = broker.mesh("acme", &["alice", "bob"]);
    let alice = broker.connect(&mesh, &members[0], "alice").await;
    let mut bob = broker.connect(&mesh, &members[1], "bob").await;
    alice.client.send(&members[1].key.public_hex(), b"metadata only", Priority::Now).await.expect("queued");
    bob.message().await;
    bob.client.set_grants([(members[0].key.public_hex(), Some(vec!["dm".to_owned()]))].into()).await.expect("grants");

    let result = alice.client.audit_verify().await.expect("admin may verify");
    assert!(result.valid, "{result:?}");
    let page = alice.client.audit_query(None, 100, 0).await.expect("admin may read");
    let kinds: Vec<&str> = page.entries.iter().map(|e| e.event_type.as_str()).collect();
    for kind in ["mesh_created", "member_joined", "message_sent", "grants_changed"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let sent = page.entries.iter().find(|e| e.event_type == "message_sent").expect("message_sent");
    assert!(!sent.payload.to_string().contains("metadata only"), "never content");
    assert_eq!(alice.client.audit_query(Some("message_sent"), 10, 0).await.expect("filter").total, 1);
    // Members who are not admins may not read it.
    assert!(matches!(bob.client.audit_query(None, 10, 0).await, Err(ClientError::Rejected { .. })));

    // Editing any row breaks the chain exactly there.
    let victim = page.entries.iter().find(|e| e.event_type == "message_sent").expect("row").id;
    let conn = rusqlite::Connection::open(broker.dir.path().join("broker.db")).expect("db");
    conn.execute(
        "UPDATE audit_log SET payload = replace(payload, '\"priority\":\"now\"', '\"priority\":\"low\"') WHERE id = ?1",
        [victim],
    )
    .expect("tamper");
    let report = alice.client.audit_verify().await.expect("verify");
    assert!(!report.valid);
    assert_eq!(report.broken_at, Some(victim));
}

#[tokio::test]
async fn only_the_owner_moderates_admins_and_nobody_moderates_the_owner() {
    let broker = TestBroker::start_with(generous()).await;
    let owner = first_device(&broker, "owner").await;
    let admin = first_device(&broker, "admin").await;
    let owner_key = Keypair::generate();
    let (_, mesh) = api(
        broker.addr,
        "POST",
        "/v1/meshes",
        Some(&owner),
        Some(json!({"name": "acme", "pubkey": owner_key.public_hex()})),
    )
    .await;
    let mesh_id = mesh["id"].as_str().expect("id").to_owned();
    let owner_member = mesh["memberId"].as_str().expect("member").to_owned();
    // The owner invites a second admin, who signs in from another account.
    let invite = signed_invite(&broker, &mesh_id, &owner_key, Role::Admin, 1);
    api(
        broker.addr,
        "POST",
        &format!("/v1/meshes/{mesh_id}/invites"),
        Some(&owner),
        Some(json!({"invite": invite.to_token()})),
    )
    .await;
    let (status, joined) =
        api(broker.addr, "POST", "/join", Some(&admin), Some(common::join_body(&invite, Some("admin")))).await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["role"], "admin");
    let admin_member = joined["memberId"].as_str().expect("member").to_owned();

    let path = |member: &str, action: &str| format!("/v1/meshes/{mesh_id}/members/{member}/{action}");
    let (status, _) = api(broker.addr, "POST", &path(&owner_member, "ban"), Some(&admin), None).await;
    assert_eq!(status, 403, "an admin cannot ban the owner");
    let (status, _) = api(broker.addr, "POST", &path(&admin_member, "kick"), Some(&owner), None).await;
    assert_eq!(status, 200, "the owner can remove an admin");
}

#[tokio::test]
async fn invites_must_name_this_broker_and_their_creation_is_budgeted() {
    let config = broker_core::config::BrokerConfig {
        invite_limit_per_account: broker_core::config::RateLimit { burst: 3, per_minute: 1 },
        ..generous()
    };
    let broker = TestBroker::start_with(config).await;
    let alice = first_device(&broker, "alice").await;
    let (mesh_id, admin_key) = create_mesh(&broker, &alice, "acme").await;
    let create = |invite: Invite| {
        let (alice, path) = (alice.clone(), format!("/v1/meshes/{mesh_id}/invites"));
        async move { api(broker.addr, "POST", &path, Some(&alice), Some(json!({"invite": invite.to_token()}))).await }
    };

    // The account tells which URL invites must name.
    let (_, me) = api(broker.addr, "GET", "/v1/account", Some(&alice), None).await;
    assert_eq!(me["brokerUrl"], broker.http_url());

    // A link that would send people (and their new keys) somewhere else.
    let terms =
        InviteTerms { broker_url: "https://evil.example".into(), ..invite_terms(&broker, &mesh_id, Role::Member, 1) };
    let elsewhere = Invite::sign(terms, &admin_key);
    let (status, body) = create(elsewhere).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invite_broker_mismatch")), "{body}");

    // Three invites, then the account must wait.
    for _ in 0..3 {
        let (status, body) = create(signed_invite(&broker, &mesh_id, &admin_key, Role::Member, 1)).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = create(signed_invite(&broker, &mesh_id, &admin_key, Role::Member, 1)).await;
    assert_eq!((status, body["error"].as_str()), (429, Some("too_many_invites")), "{body}");
}

#[tokio::test]
async fn admins_set_a_meshs_pair_limits_durably() {
    let broker = TestBroker::start_with(generous()).await;
    let alice = first_device(&broker, "alice").await;
    let bob = first_device(&broker, "bob").await;
    let (mesh_id, _) = create_mesh(&broker, &alice, "acme").await;
    let path = format!("/v1/meshes/{mesh_id}/pair-limits");

    let (status, defaults) = api(broker.addr, "GET", &path, Some(&alice), None).await;
    assert_eq!((status, defaults["burst"].as_u64()), (200, Some(8)), "{defaults}");
    let tighter = json!({"burst": 5, "perMinute": 2, "loopTurns": 10, "loopGapSeconds": 30});
    assert_eq!(api(broker.addr, "PUT", &path, Some(&bob), Some(tighter.clone())).await.0, 404, "not bob's mesh");
    let (status, body) = api(
        broker.addr,
        "PUT",
        &path,
        Some(&alice),
        Some(json!({"burst": 0, "perMinute": 2, "loopTurns": 10, "loopGapSeconds": 30})),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid")), "{body}");
    let (status, set) = api(broker.addr, "PUT", &path, Some(&alice), Some(tighter.clone())).await;
    assert_eq!((status, &set), (200, &tighter));

    // They survive a restart; `null` brings the defaults back.
    let broker = broker.restart(generous()).await;
    assert_eq!(api(broker.addr, "GET", &path, Some(&alice), None).await.1, tighter);
    let (_, reset) = api(broker.addr, "PUT", &path, Some(&alice), Some(serde_json::Value::Null)).await;
    assert_eq!(reset["burst"], 8);
}
