//! The shared workspace against a real broker: shared state sealed with the mesh key under
//! blinded names, compare-and-set (two sessions racing for one lock, exactly one wins), expiry,
//! grants, change events, and memories synced by sequence number and forgotten for everyone;
//! a removed member cannot read what is written after its removal, a newcomer reads what was
//! there once an online member admitted it, a member the broker invented never can; and the
//! broker's files never hold a name, value or memory in the clear.

mod common;

use std::time::Duration;

use broker_core::client::{MemoryChange, StateItem, WorkspaceError};
use broker_core::membership::KeyHistory;
use broker_core::protocol::{self, Role, StateChanged};
use broker_core::store::Store;
use common::accounts::{create_mesh, first_device, generous, invited, member};
use common::{Peer, TestBroker, api};
use serde_json::json;

/// A session of `member` that follows shared state, holding the mesh's keys.
async fn session(broker: &TestBroker, mesh_id: &str, member: &common::TestMember, name: &str) -> Peer {
    let mut config = broker.client_config(mesh_id, member, name);
    config.state_updates = true;
    let peer = Peer::connect(config).await;
    let _ = peer.client.refresh_mesh_keys(None, None).await;
    peer
}

/// Everything in the broker's data directory, as text.
fn broker_files(broker: &TestBroker) -> String {
    broker.store.flush().expect("flushes");
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(broker.dir.path()).expect("data dir") {
        let path = entry.expect("entry").path();
        if path.is_file() {
            bytes.extend(std::fs::read(&path).expect("reads"));
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn shared_state_is_sealed_compare_and_set_and_follows_the_membership() {
    let broker = TestBroker::start_with(generous()).await;
    let token = first_device(&broker, "alice").await;
    let (mesh_id, creator) = create_mesh(&broker, &token, "board").await;
    let alice = member(&broker, &mesh_id, &creator);
    let bob = invited(&broker, &mesh_id, &creator, "bob").await;
    let alice_session = session(&broker, &mesh_id, &alice, "alice").await;
    let mut bob_session = session(&broker, &mesh_id, &bob, "bob").await;
    let (alice_client, bob_client) = (alice_session.client.clone(), bob_session.client.clone());

    // Written by one, read by the other, with its writer and version; the other hears it.
    let value = json!({"owner": "alice", "note": "value-secret-7f3a"});
    let written = alice_client.set_state("lock/deploy-7f3a", value.clone(), Some(0), None).await.expect("writes");
    assert_eq!(written.version, 1);
    let read = bob_client.get_state("lock/deploy-7f3a").await.expect("reads").expect("there");
    assert_eq!((read.value.clone(), read.version, read.writer.as_str()), (value, 1, creator.public_hex().as_str()));
    let event: StateChanged = serde_json::from_value(bob_session.system_event("state_changed").await).expect("event");
    let heard = bob_client.open_state(&event.entry.expect("the entry")).expect("opens");
    assert_eq!(heard, read);

    // Two sessions race for one lock: exactly one wins, the other is told the version moved.
    let (a, b) = tokio::join!(
        alice_client.set_state("lock/release", json!("alice"), Some(0), None),
        bob_client.set_state("lock/release", json!("bob"), Some(0), None),
    );
    let outcomes = [&a, &b];
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1, "{a:?} {b:?}");
    assert!(outcomes.iter().any(|o| matches!(o, Err(WorkspaceError::VersionMismatch { current: 1, .. }))));
    // Without an expected version a write goes over whatever is current.
    let over = bob_client.set_state("lock/release", json!("bob again"), None, None).await.expect("writes");
    assert_eq!(over.version, 2);

    // A ttl ends the entry for readers.
    alice_client
        .set_state("presence/alice", json!("here"), None, Some(Duration::from_millis(150)))
        .await
        .expect("writes");
    assert!(bob_client.get_state("presence/alice").await.expect("reads").is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(bob_client.get_state("presence/alice").await.expect("reads"), None);

    // A prefix lists what is under it, opened.
    let listed: Vec<String> = bob_client
        .list_state("lock/")
        .await
        .expect("lists")
        .into_iter()
        .map(|item| item.expect("opens").name)
        .collect();
    assert_eq!(listed, ["lock/deploy-7f3a", "lock/release"]);

    // Alice takes away bob's `state` grant: he can no longer change her entries, only his own.
    let grants = protocol::GrantMap::from([(bob.key.public_hex(), Some(vec!["dm".to_owned()]))]);
    alice_client.set_grants(grants).await.expect("grants");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = bob_client.set_state("lock/deploy-7f3a", json!("mine now"), None, None).await;
    assert!(matches!(&refused, Err(WorkspaceError::Refused(m)) if m.starts_with("forbidden")), "{refused:?}");
    assert!(matches!(bob_client.delete_state("lock/deploy-7f3a", None).await, Err(WorkspaceError::Refused(_))));
    assert_eq!(bob_client.delete_state("lock/release", Some(2)).await.expect("his own"), 2);
    assert_eq!(alice_client.get_state("lock/release").await.expect("reads"), None);

    // Bob is kicked: what is written afterwards is sealed under a key he never gets.
    let path = format!("/v1/meshes/{mesh_id}/members/{}/kick", bob.record.id);
    assert_eq!(api(broker.addr, "POST", &path, Some(&token), None).await.0, 200);
    let status = alice_client.refresh_mesh_keys(None, None).await.expect("refreshes");
    assert_eq!(status.made, Some(2), "the removal started a new epoch");
    alice_client.set_state("plan/after-kick", json!("after"), None, None).await.expect("writes");
    let stored = broker.store.state_page(&mesh_id, None, 100, protocol::now_ms()).expect("reads");
    let after_kick = stored.iter().find(|r| r.entry.epoch == 2).expect("an entry under epoch 2");
    assert!(matches!(bob_client.open_state(&after_kick.entry), Err(WorkspaceError::NoKey)));

    // A newcomer reads the existing state once an online member checked its admission.
    let carol = invited(&broker, &mesh_id, &creator, "carol").await;
    let carol_session = session(&broker, &mesh_id, &carol, "carol").await;
    assert!(matches!(carol_session.client.get_state("lock/deploy-7f3a").await, Err(WorkspaceError::NoKey)));
    alice_client.refresh_mesh_keys(None, None).await.expect("wraps for carol");
    carol_session.client.refresh_mesh_keys(None, None).await.expect("opens carol's wraps");
    let seen = carol_session.client.get_state("lock/deploy-7f3a").await.expect("reads").expect("there");
    assert_eq!(seen.value["owner"], "alice");
    assert_eq!(
        carol_session.client.get_state("plan/after-kick").await.expect("reads").map(|i| i.value),
        Some(json!("after"))
    );

    // A member the broker adds on its own never gets a key, so never reads or writes.
    let mallory = broker.add_member(&mesh_id, "mallory", Role::Admin);
    let mallory_session = session(&broker, &mesh_id, &mallory, "mallory").await;
    alice_client.refresh_mesh_keys(None, None).await.expect("refreshes");
    assert!(matches!(mallory_session.client.get_state("lock/deploy-7f3a").await, Err(WorkspaceError::NoKey)));
    assert!(matches!(mallory_session.client.set_state("x", json!(1), None, None).await, Err(WorkspaceError::NoKey)));

    // The broker's files hold neither names nor values.
    let files = broker_files(&broker);
    assert!(files.contains(&mesh_id), "sanity: the database was read");
    for secret in ["lock/deploy-7f3a", "value-secret-7f3a", "plan/after-kick", "lock/release"] {
        assert!(!files.contains(secret), "{secret} found in the broker's files");
    }
}

#[tokio::test]
async fn a_write_under_an_old_epoch_is_refused_and_the_broker_cannot_move_entries() {
    let broker = TestBroker::start_with(generous()).await;
    let token = first_device(&broker, "alice").await;
    let (mesh_id, creator) = create_mesh(&broker, &token, "epochs").await;
    let alice = member(&broker, &mesh_id, &creator);
    let bob = invited(&broker, &mesh_id, &creator, "bob").await;
    let alice_session = session(&broker, &mesh_id, &alice, "alice").await;
    let bob_session = session(&broker, &mesh_id, &bob, "bob").await;
    alice_session.client.set_state("a", json!(1), None, None).await.expect("writes");

    // Another member moves the key on (carol left): bob still writes under epoch 1 until he refreshes.
    let carol = invited(&broker, &mesh_id, &creator, "carol").await;
    let path = format!("/v1/meshes/{mesh_id}/members/{}/kick", carol.record.id);
    assert_eq!(api(broker.addr, "POST", &path, Some(&token), None).await.0, 200);
    alice_session.client.refresh_mesh_keys(None, None).await.expect("epoch 2");
    let stale = bob_session.client.set_state("b", json!(2), None, None).await;
    assert!(matches!(stale, Err(WorkspaceError::StaleEpoch)), "{stale:?}");
    bob_session.client.refresh_mesh_keys(None, None).await.expect("refreshes");
    bob_session.client.set_state("b", json!(2), None, None).await.expect("writes under epoch 2");

    // An entry copied under another name does not open there.
    let entries = broker.store.state_page(&mesh_id, None, 10, protocol::now_ms()).expect("reads");
    let mut moved = entries[0].entry.clone();
    moved.name = entries[1].entry.name.clone();
    assert!(matches!(bob_session.client.open_state(&moved), Err(WorkspaceError::Unreadable(_))));
}

#[tokio::test]
async fn memories_sync_by_sequence_and_forgetting_reaches_everyone() {
    let broker = TestBroker::start_with(generous()).await;
    let token = first_device(&broker, "alice").await;
    let (mesh_id, creator) = create_mesh(&broker, &token, "memory").await;
    let alice = member(&broker, &mesh_id, &creator);
    let bob = invited(&broker, &mesh_id, &creator, "bob").await;
    let alice_session = session(&broker, &mesh_id, &alice, "alice").await;
    let bob_session = session(&broker, &mesh_id, &bob, "bob").await;
    let (alice_client, bob_client) = (alice_session.client.clone(), bob_session.client.clone());

    let first =
        alice_client.remember("the staging database is memory-secret-91 on port 5433", vec!["infra".into()]).await;
    let first = first.expect("remembers");
    let second = bob_client.remember("deploys need two approvals", vec!["process".into()]).await.expect("remembers");
    assert!(second.seq > first.seq);

    let (changes, more) = bob_client.memory_changes(0).await.expect("syncs");
    assert!(!more);
    let texts: Vec<(String, Vec<String>, String)> = changes
        .iter()
        .map(|c| match c {
            MemoryChange::Remembered(m) => (m.text.clone(), m.tags.clone(), m.writer.clone()),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(texts[0], (first.text.clone(), vec!["infra".to_owned()], creator.public_hex()));
    assert_eq!(texts[1].0, "deploys need two approvals");

    // Bob was offline for a while: he asks only for what came after what he has.
    let third = alice_client.remember("rotate the api keys monthly", vec![]).await.expect("remembers");
    let (changes, _) = bob_client.memory_changes(second.seq).await.expect("syncs");
    assert_eq!(changes.len(), 1);
    assert!(matches!(&changes[0], MemoryChange::Remembered(m) if m.id == third.id));

    // Forgetting empties it for everyone and moves it to the end, where syncing clients see it.
    let seq = bob_client.forget(&first.id).await.expect("forgets (default grants)");
    let (changes, _) = alice_client.memory_changes(third.seq).await.expect("syncs");
    assert_eq!(changes, [MemoryChange::Forgotten { id: first.id.clone(), seq }]);
    assert!(matches!(bob_client.forget(&first.id).await, Err(WorkspaceError::UnknownMemory(_))));

    let files = broker_files(&broker);
    assert!(files.contains(&mesh_id), "sanity: the database was read");
    for secret in ["memory-secret-91", "two approvals", "rotate the api keys"] {
        assert!(!files.contains(secret), "{secret} found in the broker's files");
    }
}

#[tokio::test]
async fn quotas_and_bad_entries_get_clear_refusals() {
    let config = broker_core::config::BrokerConfig { max_state_entries_per_member: 2, ..generous() };
    let broker = TestBroker::start_with(config).await;
    let token = first_device(&broker, "alice").await;
    let (mesh_id, creator) = create_mesh(&broker, &token, "quota").await;
    let alice = member(&broker, &mesh_id, &creator);
    let alice_session = session(&broker, &mesh_id, &alice, "alice").await;
    let client = &alice_session.client;
    client.set_state("one", json!(1), None, None).await.expect("writes");
    client.set_state("two", json!(2), None, None).await.expect("writes");
    // Rewriting an entry it has is no new entry.
    client.set_state("two", json!(22), None, None).await.expect("rewrites");
    let refused = client.set_state("three", json!(3), None, None).await;
    assert!(matches!(&refused, Err(WorkspaceError::Refused(m)) if m.starts_with("quota_exceeded")), "{refused:?}");
    let too_large = client.set_state("big", json!("x".repeat(100 * 1024)), None, None).await;
    assert!(matches!(&too_large, Err(WorkspaceError::Refused(m)) if m.contains("too_large")), "{too_large:?}");
    let items: Vec<StateItem> =
        client.list_state("").await.expect("lists").into_iter().map(|i| i.expect("opens")).collect();
    assert_eq!(items.iter().map(|i| i.value.clone()).collect::<Vec<_>>(), [json!(1), json!(22)]);
}

#[tokio::test]
async fn with_keys_from_admission_on_a_newcomer_reads_only_what_is_written_after_it_came() {
    let broker = TestBroker::start_with(generous()).await;
    let token = first_device(&broker, "alice").await;
    let (mesh_id, creator) = create_mesh(&broker, &token, "closed-history").await;
    let alice = member(&broker, &mesh_id, &creator);
    let bob = invited(&broker, &mesh_id, &creator, "bob").await;
    let alice_session = session(&broker, &mesh_id, &alice, "alice").await;
    let bob_session = session(&broker, &mesh_id, &bob, "bob").await;
    let (alice_client, bob_client) = (alice_session.client.clone(), bob_session.client.clone());
    alice_client.set_state("plan/before", json!("written before carol came"), None, None).await.expect("writes");

    // Only an admin sets the key history; it is in the signed log for every client to read.
    assert!(bob_client.set_key_history(KeyHistory::FromAdmission).await.is_err(), "bob is no admin");
    alice_client.set_key_history(KeyHistory::FromAdmission).await.expect("the admin sets it");

    let carol = invited(&broker, &mesh_id, &creator, "carol").await;
    let carol_session = session(&broker, &mesh_id, &carol, "carol").await;
    let carol_client = carol_session.client.clone();
    assert!(!carol_client.holds_mesh_keys(), "a newcomer holding no key leaves the next epoch to a member that does");
    // The admission starts a new epoch; carol gets it and the names key, nothing older.
    let status = alice_client.refresh_mesh_keys(None, None).await.expect("refreshes");
    assert_eq!(status.made, Some(2), "{status:?}");
    carol_client.refresh_mesh_keys(None, None).await.expect("opens its keys");
    assert_eq!(carol_client.verified_roster().expect("a roster").key_history, KeyHistory::FromAdmission);
    let carols: Vec<u64> =
        broker.store.wraps_for(&mesh_id, &carol.key.public_hex()).expect("reads").iter().map(|w| w.epoch).collect();
    assert_eq!(carols, [0, 2], "the names key and the epoch made after carol's admission");
    assert!(matches!(carol_client.get_state("plan/before").await, Err(WorkspaceError::NoKey)));

    // What is written from now on, carol reads and writes like everyone.
    alice_client.set_state("plan/after", json!("written after"), None, None).await.expect("writes under epoch 2");
    let after = carol_client.get_state("plan/after").await.expect("reads").expect("there");
    assert_eq!(after.value, json!("written after"));
    carol_client.set_state("plan/carol", json!("mine"), None, None).await.expect("carol writes");
    bob_client.refresh_mesh_keys(None, None).await.expect("bob's keys");
    assert_eq!(bob_client.get_state("plan/carol").await.expect("reads").map(|i| i.value), Some(json!("mine")));
    assert_eq!(
        bob_client.get_state("plan/before").await.expect("reads").map(|i| i.value),
        Some(json!("written before carol came"))
    );
}
