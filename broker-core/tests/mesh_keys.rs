//! Mesh content keys against a real broker: the first online member makes epoch 1 for the
//! verified members, others pass keys on to verified newcomers, a removal starts a new epoch
//! without the removed member, and members the broker only vouches for, or keys it makes up,
//! get nowhere.

mod common;

use broker_core::client::MeshKeyError;
use broker_core::crypto::Keypair;
use broker_core::membership::Head;
use broker_core::meshkey::{EpochRecord, new_key};
use broker_core::protocol::{self, Role};
use broker_core::store::Store;
use common::accounts::{create_mesh, first_device, generous, invited, member};
use common::{TestBroker, api};

#[tokio::test]
async fn keys_reach_verified_members_only_and_a_removal_starts_a_new_epoch() {
    let broker = TestBroker::start_with(generous()).await;
    let token = first_device(&broker, "alice").await;
    let (mesh_id, creator) = create_mesh(&broker, &token, "keys").await;
    let alice = member(&broker, &mesh_id, &creator);
    let bob = invited(&broker, &mesh_id, &creator, "bob").await;
    // A member the broker adds on its own: vouched for, never verified.
    let mallory = broker.add_member(&mesh_id, "mallory", Role::Admin);

    // The first member online makes epoch 1 for the verified members.
    let alice_client = broker.connect(&mesh_id, &alice, "alice").await.client;
    let status = alice_client.refresh_mesh_keys(Some(&creator.public_hex()), None).await.expect("refreshes");
    assert_eq!((status.epoch, status.made, status.holds_newest), (Some(1), Some(1), true));
    let bob_client = broker.connect(&mesh_id, &bob, "bob").await.client;
    let status = bob_client.refresh_mesh_keys(None, None).await.expect("refreshes");
    assert_eq!((status.epoch, status.made, status.holds_newest), (Some(1), None, true));
    assert_eq!(bob_client.mesh_key(1), alice_client.mesh_key(1));

    let mallory_client = broker.connect(&mesh_id, &mallory, "mallory").await.client;
    assert!(matches!(mallory_client.refresh_mesh_keys(None, None).await, Err(MeshKeyError::NotVerified)));
    assert_eq!(broker.store.wraps_for(&mesh_id, &mallory.key.public_hex()).expect("reads"), []);

    // A newcomer gets the keys from any online member once that member checked its admission.
    let carol = invited(&broker, &mesh_id, &creator, "carol").await;
    let carol_client = broker.connect(&mesh_id, &carol, "carol").await.client;
    let status = carol_client.refresh_mesh_keys(None, None).await.expect("refreshes");
    assert_eq!((status.epoch, status.holds_newest), (Some(1), false), "nobody wrapped for carol yet");
    let status = bob_client.refresh_mesh_keys(None, None).await.expect("refreshes");
    assert_eq!(status.wrapped_for, [carol.key.public_hex()], "mallory is not wrapped for");
    let status = carol_client.refresh_mesh_keys(None, None).await.expect("refreshes");
    assert!(status.holds_newest);
    assert_eq!(carol_client.mesh_key(1), alice_client.mesh_key(1));

    // Bob is kicked: the next refresh anywhere starts epoch 2 without him.
    let path = format!("/v1/meshes/{mesh_id}/members/{}/kick", bob.record.id);
    assert_eq!(api(broker.addr, "POST", &path, Some(&token), None).await.0, 200);
    let status = carol_client.refresh_mesh_keys(None, None).await.expect("refreshes");
    assert_eq!((status.epoch, status.made), (Some(2), Some(2)));
    let bobs: Vec<u64> =
        broker.store.wraps_for(&mesh_id, &bob.key.public_hex()).expect("reads").iter().map(|w| w.epoch).collect();
    assert_eq!(bobs, [1], "bob keeps what he could read, nothing after");
    let status = alice_client.refresh_mesh_keys(None, None).await.expect("refreshes");
    assert!(status.holds_newest);
    assert_eq!(alice_client.mesh_key(2), carol_client.mesh_key(2));
    assert_ne!(alice_client.mesh_key(2), alice_client.mesh_key(1));
}

#[tokio::test]
async fn a_key_the_broker_makes_up_is_refused() {
    let broker = TestBroker::start_with(generous()).await;
    let token = first_device(&broker, "alice").await;
    let (mesh_id, creator) = create_mesh(&broker, &token, "keys").await;
    let alice = member(&broker, &mesh_id, &creator);
    let mallory = broker.add_member(&mesh_id, "mallory", Role::Admin);

    // The broker stores epoch 1 signed by the member it invented, with a wrap for alice.
    let entries = broker.store.membership_log(&mesh_id, 0, 100).expect("reads the log");
    let last = entries.last().expect("a log");
    let key = new_key();
    let record = EpochRecord::sign(&mesh_id, 1, &key, &Head { seq: last.seq, hash: last.hash.clone() }, &mallory.key);
    let wrap = broker_core::meshkey::Wrap::seal(1, &key, &mallory.key, &creator.public());
    broker.store.create_epoch(&mesh_id, &record, &[wrap], protocol::now_ms()).expect("stores");

    let client = broker.connect(&mesh_id, &alice, "alice").await.client;
    let refused = client.refresh_mesh_keys(None, None).await;
    assert!(matches!(refused, Err(MeshKeyError::Epochs(_))), "{refused:?}");
    assert_eq!(client.mesh_key(1), None);
}

#[tokio::test]
async fn a_mesh_larger_than_a_frame_of_wraps_has_every_member_wrapped() {
    let broker = TestBroker::start_with(generous()).await;
    let token = first_device(&broker, "alice").await;
    let (mesh_id, creator) = create_mesh(&broker, &token, "big").await;
    // Members the creator admitted with its signature, more than one `new_epoch` holds.
    let count = protocol::MAX_WRAPS + 60;
    for n in 0..count {
        let key = Keypair::generate();
        let after = n as u64 + 1;
        let statement = broker_core::membership::admission_bytes(&mesh_id, &key.public_hex(), Role::Member, after);
        let admission = broker_core::membership::Admission::Admin {
            by: creator.public_hex(),
            after,
            signature: creator.sign_hex(statement.as_bytes()),
        };
        let new =
            broker_core::store::NewMember { admission: Some(admission), ..common::new_member(&key, &format!("m{n}")) };
        broker.store.add_member(&mesh_id, &new, Role::Member, None, protocol::now_ms()).expect("adds");
    }
    let alice = broker.connect(&mesh_id, &member(&broker, &mesh_id, &creator), "alice").await.client;
    let status = alice.refresh_mesh_keys(None, None).await.expect("refreshes");
    assert_eq!(status.made, Some(1));
    assert_eq!(broker.store.wrapped(&mesh_id, 1).expect("reads").len(), count + 1);
}
