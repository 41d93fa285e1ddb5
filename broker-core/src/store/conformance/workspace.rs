//! The shared workspace: sealed state entries written by compare-and-set on their version under
//! the mesh's newest epoch, within quotas, expiring, deleted; memories numbered per mesh and
//! forgotten for everyone; two processes racing for one version, exactly one wins.

use super::{NOW_MS, TestDatabase, add_member, assert_conflict, audit_types, mesh_with_admin};
use crate::crypto::Keypair;
use crate::membership::Head;
use crate::meshkey::{EpochRecord, new_key};
use crate::protocol::{MemoryEntry, StateEntry};
use crate::store::{MemberRecord, MemoryRecord, StateRecord, Store, WorkspaceQuota};

const QUOTA: WorkspaceQuota = WorkspaceQuota { state_entries: 3, memories: 3, bytes: 1000 };

fn blinded(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

fn state(member: &MemberRecord, name: u8, version: u64, epoch: u64, ciphertext: &str) -> StateRecord {
    StateRecord {
        mesh_id: member.mesh_id.clone(),
        writer_member_id: member.id.clone(),
        entry: StateEntry {
            name: blinded(name),
            version,
            epoch,
            nonce: "n".repeat(32),
            ciphertext: ciphertext.to_owned(),
            writer: member.pubkey.clone(),
            updated_at: NOW_MS,
            expires_at: None,
        },
    }
}

fn memory(member: &MemberRecord, id: &str, epoch: u64) -> MemoryRecord {
    MemoryRecord {
        mesh_id: member.mesh_id.clone(),
        writer_member_id: member.id.clone(),
        entry: MemoryEntry {
            seq: 0,
            id: id.to_owned(),
            epoch,
            nonce: "n".repeat(32),
            ciphertext: "sealed".to_owned(),
            writer: member.pubkey.clone(),
            created_at: NOW_MS,
            forgotten: false,
        },
    }
}

/// Makes the mesh's epochs 1..=`epochs` (what entries must be written under).
fn epochs<S: Store>(store: &S, mesh_id: &str, epochs: u64) {
    let key = Keypair::from_seed(&[7; 32]);
    for epoch in 1..=epochs {
        let record = EpochRecord::sign(mesh_id, epoch, &new_key(), &Head { seq: 1, hash: "h".into() }, &key);
        store.create_epoch(mesh_id, &record, &[], NOW_MS).expect("an epoch");
    }
}

pub fn state_entries_are_written_by_compare_and_set_under_the_newest_epoch<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice) = mesh_with_admin(&*store, "state", 1, NOW_MS);
    let bob = add_member(&*store, &mesh, 2, NOW_MS);
    epochs(&*store, &mesh.id, 2);

    assert_conflict(store.put_state(&state(&alice, 1, 1, 1, "c"), &QUOTA, NOW_MS), "stale_epoch");
    assert_conflict(store.put_state(&state(&alice, 1, 2, 2, "c"), &QUOTA, NOW_MS), "version_mismatch");
    store.put_state(&state(&alice, 1, 1, 2, "first"), &QUOTA, NOW_MS).expect("version 1");
    assert_conflict(store.put_state(&state(&bob, 1, 1, 2, "again"), &QUOTA, NOW_MS), "version_mismatch");
    store.put_state(&state(&bob, 1, 2, 2, "second"), &QUOTA, NOW_MS).expect("version 2 over alice's");
    let found = store.state_entries(&mesh.id, &[blinded(1), blinded(9)], NOW_MS).expect("reads");
    assert_eq!(found, [state(&bob, 1, 2, 2, "second")]);
    assert_eq!(audit_types(&*store, &mesh.id).iter().filter(|t| *t == "state_overwritten").count(), 1);

    // Pages in name order, after a name.
    store.put_state(&state(&alice, 3, 1, 2, "c"), &QUOTA, NOW_MS).expect("writes");
    store.put_state(&state(&alice, 2, 1, 2, "c"), &QUOTA, NOW_MS).expect("writes");
    let names = |after: Option<&str>| -> Vec<String> {
        store.state_page(&mesh.id, after, 2, NOW_MS).expect("pages").into_iter().map(|r| r.entry.name).collect()
    };
    assert_eq!(names(None), [blinded(1), blinded(2)]);
    assert_eq!(names(Some(&blinded(2))), [blinded(3)]);

    // Deleting: only at the expected version; the version removed; 0 when none is live.
    assert_conflict(store.delete_state(&mesh.id, &blinded(1), Some(1), &alice.id, NOW_MS), "version_mismatch");
    assert_eq!(store.delete_state(&mesh.id, &blinded(1), Some(2), &alice.id, NOW_MS).expect("deletes"), 2);
    assert_eq!(store.delete_state(&mesh.id, &blinded(1), None, &alice.id, NOW_MS).expect("nothing"), 0);
    assert_eq!(store.state_entries(&mesh.id, &[blinded(1)], NOW_MS).expect("reads"), []);
    // A name deleted starts again at version 1.
    store.put_state(&state(&alice, 1, 1, 2, "anew"), &QUOTA, NOW_MS).expect("writes");
    assert!(audit_types(&*store, &mesh.id).contains(&"state_deleted".to_owned()));
}

pub fn state_entries_expire_and_count_against_their_writers_quota<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice) = mesh_with_admin(&*store, "quota", 1, NOW_MS);
    let bob = add_member(&*store, &mesh, 2, NOW_MS);
    epochs(&*store, &mesh.id, 1);
    let mut expiring = state(&alice, 1, 1, 1, "c");
    expiring.entry.expires_at = Some(NOW_MS + 10);
    store.put_state(&expiring, &QUOTA, NOW_MS).expect("writes");
    assert_eq!(store.state_entries(&mesh.id, &[blinded(1)], NOW_MS + 9).expect("reads").len(), 1);
    assert_eq!(store.state_entries(&mesh.id, &[blinded(1)], NOW_MS + 10).expect("reads"), []);
    // Past its expiry it is gone for writers too: version 1 again.
    store.put_state(&state(&alice, 1, 1, 1, "c"), &QUOTA, NOW_MS + 20).expect("writes anew");

    store.put_state(&state(&alice, 2, 1, 1, "c"), &QUOTA, NOW_MS).expect("writes");
    store.put_state(&state(&alice, 3, 1, 1, "c"), &QUOTA, NOW_MS).expect("writes");
    assert_conflict(store.put_state(&state(&alice, 4, 1, 1, "c"), &QUOTA, NOW_MS), "quota_exceeded");
    store.put_state(&state(&alice, 3, 2, 1, "rewritten"), &QUOTA, NOW_MS).expect("a rewrite is no new entry");
    store.put_state(&state(&bob, 4, 1, 1, "c"), &QUOTA, NOW_MS).expect("bob has his own quota");
    let big = "x".repeat(1001);
    assert_conflict(store.put_state(&state(&bob, 5, 1, 1, &big), &QUOTA, NOW_MS), "quota_exceeded");

    let mut short = state(&bob, 6, 1, 1, "c");
    short.entry.expires_at = Some(NOW_MS + 5);
    store.put_state(&short, &QUOTA, NOW_MS).expect("writes");
    assert_eq!(store.expire_state(NOW_MS + 5).expect("sweeps"), 1);
    assert_eq!(store.state_page(&mesh.id, None, 100, 0).expect("reads").len(), 4);
}

pub fn memories_are_numbered_per_mesh_and_forgotten_for_everyone<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice) = mesh_with_admin(&*store, "memories", 1, NOW_MS);
    let bob = add_member(&*store, &mesh, 2, NOW_MS);
    epochs(&*store, &mesh.id, 2);
    assert_conflict(store.add_memory(&memory(&alice, "m1", 1), &QUOTA, NOW_MS), "stale_epoch");
    assert_eq!(store.add_memory(&memory(&alice, "m1", 2), &QUOTA, NOW_MS).expect("stores"), 1);
    assert_eq!(store.add_memory(&memory(&bob, "m2", 2), &QUOTA, NOW_MS).expect("stores"), 2);
    assert_conflict(store.add_memory(&memory(&bob, "m2", 2), &QUOTA, NOW_MS), "duplicate");
    let seqs = |after: u64| -> Vec<(u64, String, bool)> {
        let page = store.memories(&mesh.id, after, 10).expect("reads");
        page.into_iter().map(|m| (m.entry.seq, m.entry.id, m.entry.forgotten)).collect()
    };
    assert_eq!(seqs(0), [(1, "m1".into(), false), (2, "m2".into(), false)]);
    assert_eq!(seqs(1), [(2, "m2".into(), false)]);

    assert_eq!(store.forget_memory(&mesh.id, "m1", &bob.id, NOW_MS).expect("forgets"), Some(3));
    assert_eq!(store.forget_memory(&mesh.id, "m1", &bob.id, NOW_MS).expect("nothing left"), None);
    assert_eq!(store.forget_memory(&mesh.id, "nope", &bob.id, NOW_MS).expect("nothing"), None);
    assert_eq!(seqs(2), [(3, "m1".into(), true)]);
    let forgotten = store.memory(&mesh.id, "m1").expect("reads").expect("kept as forgotten");
    assert_eq!((forgotten.entry.ciphertext.as_str(), forgotten.writer_member_id.as_str()), ("", alice.id.as_str()));
    assert!(audit_types(&*store, &mesh.id).contains(&"memory_forgotten".to_owned()));

    // Quota: forgotten memories no longer count.
    for id in ["m3", "m4"] {
        store.add_memory(&memory(&alice, id, 2), &QUOTA, NOW_MS).expect("stores");
    }
    store.add_memory(&memory(&alice, "m5", 2), &QUOTA, NOW_MS).expect("m1 was forgotten");
    assert_conflict(store.add_memory(&memory(&alice, "m6", 2), &QUOTA, NOW_MS), "quota_exceeded");
}

pub fn two_processes_racing_for_one_state_version_never_both_win<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, alice) = mesh_with_admin(&*store, "race", 1, NOW_MS);
    let bob = add_member(&*store, &mesh, 2, NOW_MS);
    epochs(&*store, &mesh.id, 1);
    for round in 0..5u8 {
        let racers: Vec<_> = [&alice, &bob]
            .into_iter()
            .map(|member| {
                let (store, record) = (database.open(), state(member, 10 + round, 1, 1, "c"));
                std::thread::spawn(move || store.put_state(&record, &QUOTA, NOW_MS))
            })
            .collect();
        let results: Vec<_> = racers.into_iter().map(|t| t.join().expect("the thread finishes")).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    }
    let memories: Vec<_> = (0..4)
        .map(|n| {
            let (store, record) =
                (database.open(), memory(if n % 2 == 0 { &alice } else { &bob }, &format!("r{n}"), 1));
            std::thread::spawn(move || store.add_memory(&record, &WorkspaceQuota { memories: 10, ..QUOTA }, NOW_MS))
        })
        .collect();
    let mut seqs: Vec<u64> = memories.into_iter().map(|t| t.join().expect("finishes").expect("stores")).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2, 3, 4], "every memory its own number");
}
