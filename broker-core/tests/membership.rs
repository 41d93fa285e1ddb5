//! The signed membership log against a real broker: what the API's admissions and removals
//! append, what a client fetches over the WebSocket (`membership_log`, in pages), and what it
//! makes of members the broker added or entries it edited.

mod common;

use broker_core::crypto::Keypair;
use broker_core::invite::Invite;
use broker_core::membership::{self, LogError, RemovalReason, Standing};
use broker_core::protocol::{self, Role};
use broker_core::store::Store;
use common::accounts::{
    approved_device, confirm_key_of, confirmed_api, create_mesh, first_device, generous, poll, start_login,
};
use common::{TestBroker, TestMember, api};
use serde_json::json;

/// The creator's member, as a test connects it.
fn creator_member(broker: &TestBroker, mesh_id: &str, key: &Keypair) -> TestMember {
    let record = broker.store.member_by_pubkey(mesh_id, &key.public_hex()).expect("reads").expect("exists");
    TestMember { key: key.clone(), record }
}

#[tokio::test]
async fn the_log_follows_the_api_and_clients_verify_it_back_to_the_creator() {
    let broker = TestBroker::start_with(generous()).await;
    let alice = first_device(&broker, "alice").await;
    let (mesh_id, creator) = create_mesh(&broker, &alice, "acme").await;

    // Bob joins with an invite the creator signed; alice's second device enrols.
    let invite = Invite::sign(
        common::invite_terms(&broker, &mesh_id, Role::Member, 1, protocol::now_ms() / 1000 + 600),
        &creator,
    );
    let path = format!("/v1/meshes/{mesh_id}/invites");
    let (status, body) = api(broker.addr, "POST", &path, Some(&alice), Some(json!({"invite": invite.link()}))).await;
    assert_eq!(status, 201, "{body}");
    let bob = Keypair::generate();
    let join = json!({"invite": invite.to_token(), "pubkey": bob.public_hex(), "proof": common::join_proof(&invite, &bob), "displayName": "bob"});
    let (status, joined) = api(broker.addr, "POST", "/join", None, Some(join)).await;
    assert_eq!(status, 200, "{joined}");
    let laptop = approved_device(&broker, &alice, "alice-second").await;
    let second = Keypair::generate();
    let path = format!("/v1/meshes/{mesh_id}/enrol");
    let (status, body) =
        api(broker.addr, "POST", &path, Some(&laptop), Some(json!({"pubkey": second.public_hex()}))).await;
    assert_eq!(status, 200, "{body}");
    // Bob is kicked.
    let bob_id = joined["memberId"].as_str().expect("member id");
    let path = format!("/v1/meshes/{mesh_id}/members/{bob_id}/kick");
    assert_eq!(api(broker.addr, "POST", &path, Some(&alice), None).await.0, 200);

    let client = broker.connect(&mesh_id, &creator_member(&broker, &mesh_id, &creator), "alice").await;
    let entries = client.client.membership_log(0).await.expect("fetches the log");
    assert_eq!(entries.len(), 4, "genesis, invited, enrolled, removed");
    let roster = membership::verify(&mesh_id, Some(&creator.public_hex()), None, &entries).expect("verifies");
    assert!(roster.is_verified_member(&creator.public_hex()));
    let bob = &roster.members[&bob.public_hex()];
    assert_eq!((bob.standing, bob.active, bob.removed), (Standing::Verified, false, Some(RemovalReason::Kick)));
    let second = &roster.members[&second.public_hex()];
    assert_eq!((second.standing, second.active), (Standing::Vouched, true), "only the broker vouches for an enrolment");

    // A key the broker adds on its own is never verified; one it slips into the members table
    // without a log entry is not in the roster at all.
    let invented = Keypair::generate();
    broker
        .store
        .add_member(&mesh_id, &common::new_member(&invented, "mallory"), Role::Admin, None, protocol::now_ms())
        .expect("adds");
    let entries = client.client.membership_log(0).await.expect("fetches the log");
    let roster =
        membership::verify(&mesh_id, Some(&creator.public_hex()), Some(&roster.head), &entries).expect("verifies");
    assert!(!roster.is_verified_member(&invented.public_hex()));

    // An edited entry (the broker makes bob an admin) breaks the chain.
    let db = rusqlite::Connection::open(broker.dir.path().join("broker.db")).expect("opens the database");
    let edited = db.execute("UPDATE membership_log SET change = replace(change, '\"role\":\"member\"', '\"role\":\"admin\"') WHERE seq = 2", [])
        .expect("edits");
    assert_eq!(edited, 1);
    let edited = client.client.membership_log(0).await.expect("fetches the log");
    let result = membership::verify(&mesh_id, None, None, &edited);
    assert!(matches!(result, Err(LogError::Invalid { seq: 2, .. })), "{result:?}");
}

#[tokio::test]
async fn a_long_log_comes_in_pages_and_a_mesh_without_one_says_so() {
    let broker = TestBroker::start().await;
    let alice_device = first_device(&broker, "alice").await;
    let (mesh_id, creator) = create_mesh(&broker, &alice_device, "big").await;
    let count = protocol::MEMBERSHIP_LOG_PAGE + 40;
    for n in 0..count {
        broker.add_member(&mesh_id, &format!("member-{n}"), Role::Member);
    }
    let client = broker.connect(&mesh_id, &creator_member(&broker, &mesh_id, &creator), "alice").await;
    let entries = client.client.membership_log(0).await.expect("fetches the log");
    assert_eq!(entries.len(), count + 1);
    let roster = membership::verify(&mesh_id, None, None, &entries).expect("verifies");
    assert_eq!(roster.members.len(), count + 1);
    let tail = client.client.membership_log(count as u64 - 1).await.expect("fetches the tail");
    assert_eq!(tail, entries[count - 1..]);

    // A mesh made without a genesis (as before the log existed) keeps none.
    let (legacy, members) = broker.mesh("legacy", &["admin", "member"]);
    let client = broker.connect(&legacy, &members[0], "admin").await;
    let entries = client.client.membership_log(0).await.expect("fetches the log");
    assert_eq!(membership::verify(&legacy, None, None, &entries), Err(LogError::Absent));
}

#[tokio::test]
async fn a_genesis_must_be_the_creators_signature_over_the_id_it_chose() {
    let broker = TestBroker::start_with(generous()).await;
    let alice = first_device(&broker, "alice").await;
    let key = Keypair::generate();
    let id = broker_core::ids::new_id("mesh");
    let signed = |id: &str| key.sign_hex(membership::genesis_bytes(id, &key.public_hex()).as_bytes());
    for (body, why) in [
        (json!({"name": "a", "pubkey": key.public_hex(), "genesis": signed(&id)}), "no id"),
        (
            json!({"name": "a", "pubkey": key.public_hex(), "id": "mesh_short", "genesis": signed("mesh_short")}),
            "bad id",
        ),
        (
            json!({"name": "a", "pubkey": key.public_hex(), "id": id, "genesis": signed("mesh_aaaaaaaaaaaaaaaa")}),
            "another id",
        ),
        (
            json!({"name": "a", "pubkey": Keypair::generate().public_hex(), "id": id, "genesis": signed(&id)}),
            "another key",
        ),
    ] {
        let (status, answer) = api(broker.addr, "POST", "/v1/meshes", Some(&alice), Some(body)).await;
        assert_eq!((status, answer["error"].as_str()), (400, Some("genesis_invalid")), "{why}: {answer}");
    }
    let body = json!({"name": "a", "pubkey": key.public_hex(), "id": id, "genesis": signed(&id)});
    let (status, created) = api(broker.addr, "POST", "/v1/meshes", Some(&alice), Some(body.clone())).await;
    assert_eq!((status, created["id"].as_str()), (201, Some(id.as_str())), "{created}");
    let (status, again) = api(broker.addr, "POST", "/v1/meshes", Some(&alice), Some(body)).await;
    assert_eq!(status, 409, "the id is taken: {again}");
}

#[tokio::test]
async fn a_device_its_account_endorsed_when_approving_it_enrols_verifiably() {
    let broker = TestBroker::start_with(generous()).await;
    let alice = first_device(&broker, "alice").await;
    let (mesh_id, creator) = create_mesh(&broker, &alice, "acme").await;
    let (device_code, user_code) = start_login(&broker, "alice-desk").await;
    let device_key = confirm_key_of("alice-desk");

    // The approver sees the device's confirmation key and endorses it with its member key.
    let path = format!("/v1/device/requests/{user_code}");
    let (status, shown) = api(broker.addr, "GET", &path, Some(&alice), None).await;
    assert_eq!((status, shown["confirmKey"].as_str()), (200, Some(device_key.public_hex().as_str())), "{shown}");
    let endorse = |signer: &Keypair, device: &str| {
        json!({"meshId": mesh_id, "sponsor": signer.public_hex(),
               "signature": signer.sign_hex(membership::endorsement_bytes(&mesh_id, device).as_bytes())})
    };
    // A key that is no member of the approver's account, or one signed for another device, is refused.
    for wrong in
        [endorse(&Keypair::generate(), &device_key.public_hex()), endorse(&creator, &Keypair::generate().public_hex())]
    {
        let body = json!({"userCode": user_code, "endorsements": [wrong]});
        let (status, refused) = confirmed_api(&broker, "POST", "/v1/device/approve", &alice, Some(body)).await;
        assert_eq!((status, refused["error"].as_str()), (400, Some("endorsement_invalid")), "{refused}");
    }
    let body = json!({"userCode": user_code, "endorsements": [endorse(&creator, &device_key.public_hex())]});
    let (status, approved) = confirmed_api(&broker, "POST", "/v1/device/approve", &alice, Some(body)).await;
    assert_eq!(status, 200, "{approved}");
    let (status, token) = poll(&broker, &device_code).await;
    assert_eq!(status, 200, "{token}");
    let desk = token["access_token"].as_str().expect("token").to_owned();

    // The new device binds its member key with its confirmation key.
    let member = Keypair::generate();
    let path = format!("/v1/meshes/{mesh_id}/enrol");
    let bad = Keypair::generate().sign_hex(membership::device_key_bytes(&mesh_id, &member.public_hex()).as_bytes());
    let body = json!({"pubkey": member.public_hex(), "binding": bad});
    let (status, refused) = api(broker.addr, "POST", &path, Some(&desk), Some(body)).await;
    assert_eq!((status, refused["error"].as_str()), (400, Some("binding_invalid")), "{refused}");
    let binding = device_key.sign_hex(membership::device_key_bytes(&mesh_id, &member.public_hex()).as_bytes());
    let body = json!({"pubkey": member.public_hex(), "binding": binding});
    let (status, enrolled) = api(broker.addr, "POST", &path, Some(&desk), Some(body)).await;
    assert_eq!(status, 200, "{enrolled}");

    let client = broker.connect(&mesh_id, &creator_member(&broker, &mesh_id, &creator), "alice").await;
    let entries = client.client.membership_log(0).await.expect("fetches the log");
    let roster = membership::verify(&mesh_id, Some(&creator.public_hex()), None, &entries).expect("verifies");
    assert!(roster.is_verified_member(&member.public_hex()), "{roster:?}");
    assert_eq!(roster.members[&member.public_hex()].role, Role::Admin, "the sponsor's role");
}
