//! The audit chain: hashes and links, paging, verification and tampering, atomicity with the
//! change it records, and one chain under concurrent writers.

use std::collections::BTreeSet;

use serde_json::json;

use super::{
    NOW_MS, TestDatabase, add_member, assert_invalid, audit_event, audit_log, mesh_with_admin, new_member, pubkey,
    write,
};
use crate::crypto::AUDIT_GENESIS;
use crate::protocol::Role;
use crate::store::{AuditEntry, AuditVerification, MembershipAction, Store, WriteOp, WriteOutcome};

/// Asserts that `entries` (oldest first) form one chain from the genesis, each hash computed
/// by `crypto::audit_hash` over the entry's own fields.
#[track_caller]
fn assert_chained(entries: &[AuditEntry]) {
    let mut prev = AUDIT_GENESIS.to_owned();
    for entry in entries {
        assert_eq!(entry.prev_hash, prev, "entry {} links to the one before it", entry.id);
        assert_eq!(entry.hash, entry.recomputed_hash(), "entry {} carries the hash of its fields", entry.id);
        prev = entry.hash.clone();
    }
}

/// Appended events come back with their fields, each scope chained on its own from the genesis,
/// and verification agrees.
pub fn the_audit_chain_links_every_entry<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, admin) = mesh_with_admin(&*store, "audited", 1, NOW_MS);
    let account = store.create_account("alice", None, NOW_MS).expect("creates");
    let account_scope = format!("account:{}", account.id);
    let events = vec![
        audit_event(&mesh.id, "custom_a", Some(&admin.id), json!({"n": 1, "nested": {"b": [1, 2], "a": "ü"}})),
        audit_event(&mesh.id, "custom_b", None, json!({})),
    ];
    assert_eq!(write(&*store, WriteOp::Audit(events.clone())).expect("appends"), WriteOutcome::Changed(2));
    let account_event = audit_event(&account_scope, "custom_c", Some("dev_x"), json!({"ok": true}));
    write(&*store, WriteOp::Audit(vec![account_event.clone()])).expect("appends");

    let log = audit_log(&*store, &mesh.id);
    let types: Vec<&str> = log.iter().map(|entry| entry.event_type.as_str()).collect();
    assert_eq!(types, ["mesh_created", "member_joined", "custom_a", "custom_b"]);
    for (entry, event) in log[2..].iter().zip(&events) {
        assert_eq!((&entry.scope, &entry.actor, &entry.payload), (&event.scope, &event.actor, &event.payload));
    }
    assert!(log.windows(2).all(|pair| pair[0].id < pair[1].id), "ids rise in append order");
    assert_chained(&log);
    assert_eq!(
        store.verify_audit(&mesh.id).expect("verifies"),
        AuditVerification { valid: true, entries: 4, broken_at: None }
    );

    let account_log = audit_log(&*store, &account_scope);
    assert_eq!(account_log.len(), 2, "account_created, then the appended event");
    assert_eq!(account_log[1].payload, account_event.payload);
    assert_chained(&account_log);
    assert!(store.verify_audit(&account_scope).expect("verifies").valid);
    assert_eq!(
        store.verify_audit("scope-without-entries").expect("verifies"),
        AuditVerification { valid: true, entries: 0, broken_at: None }
    );
}

/// Entries come newest first in pages of `limit` from `offset`, optionally one event type, with
/// the total that matches.
pub fn audit_entries_page_and_filter_newest_first<D: TestDatabase>(database: &D) {
    let store = database.open();
    let scope = "scope-paged";
    let events: Vec<_> =
        (0..7).map(|n| audit_event(scope, if n % 2 == 0 { "even" } else { "odd" }, None, json!({ "n": n }))).collect();
    write(&*store, WriteOp::Audit(events)).expect("appends");
    let numbers = |entries: &[AuditEntry]| -> Vec<i64> {
        entries.iter().map(|entry| entry.payload["n"].as_i64().expect("a number")).collect()
    };

    let (first, total) = store.audit_entries(scope, None, 3, 0).expect("reads");
    assert_eq!((numbers(&first), total), (vec![6, 5, 4], 7));
    let (second, _) = store.audit_entries(scope, None, 3, 3).expect("reads");
    assert_eq!(numbers(&second), [3, 2, 1]);
    let (last, _) = store.audit_entries(scope, None, 3, 6).expect("reads");
    assert_eq!(numbers(&last), [0]);
    let (beyond, total) = store.audit_entries(scope, None, 3, 7).expect("reads");
    assert_eq!((beyond.len(), total), (0, 7));

    let (odd, total) = store.audit_entries(scope, Some("odd"), 10, 0).expect("reads");
    assert_eq!((numbers(&odd), total), (vec![5, 3, 1], 3));
    let (even_page, total) = store.audit_entries(scope, Some("even"), 2, 1).expect("reads");
    assert_eq!((numbers(&even_page), total), (vec![4, 2], 4));
    let (none, total) = store.audit_entries(scope, Some("missing"), 10, 0).expect("reads");
    assert_eq!((none.len(), total), (0, 0));
}

/// Rewriting a stored payload, or making it unreadable, breaks verification at that entry.
pub fn verification_finds_a_tampered_entry<D: TestDatabase>(database: &D) {
    let store = database.open();
    for scope in ["scope-edited", "scope-garbled"] {
        let events: Vec<_> = (0..4).map(|n| audit_event(scope, "custom", None, json!({ "n": n }))).collect();
        write(&*store, WriteOp::Audit(events)).expect("appends");
    }
    let edited = audit_log(&*store, "scope-edited");
    database.tamper_with_audit_payload(edited[2].id, r#"{"n":20}"#);
    let garbled = audit_log(&*store, "scope-garbled");
    database.tamper_with_audit_payload(garbled[1].id, "not json");

    let verdict = store.verify_audit("scope-edited").expect("verifies");
    assert_eq!((verdict.valid, verdict.broken_at), (false, Some(edited[2].id)), "{verdict:?}");
    let verdict = store.verify_audit("scope-garbled").expect("verifies");
    assert_eq!((verdict.valid, verdict.broken_at), (false, Some(garbled[1].id)), "{verdict:?}");
}

/// A refused control-plane change writes nothing: neither the change nor its audit entry nor a
/// new directory version.
pub fn a_refused_change_leaves_no_trace<D: TestDatabase>(database: &D) {
    let store = database.open();
    let (mesh, admin) = mesh_with_admin(&*store, "atomic", 1, NOW_MS);
    let bob = add_member(&*store, &mesh, 2, NOW_MS + 1);
    let log_before = audit_log(&*store, &mesh.id);
    let version_before = store.directory_version().expect("reads");

    assert!(store.add_member(&mesh.id, &new_member(2, "again"), Role::Member, Some(&admin.id), NOW_MS + 2).is_err());
    assert_invalid(store.set_grants(
        &bob.id,
        &[(pubkey(1), Some(vec!["dm".into()])), ("NOT-A-KEY".into(), None)],
        NOW_MS + 3,
    ));
    assert!(store.change_membership("mem_unknown", MembershipAction::Ban, Some(&admin.id), NOW_MS + 4).is_err());
    assert!(store.rename_mesh("mesh_unknown", "renamed", Some(&admin.id)).is_err());

    assert_eq!(audit_log(&*store, &mesh.id), log_before);
    assert_eq!(store.directory_version().expect("reads"), version_before);
    assert!(store.grants(&mesh.id).expect("lists").is_empty());
    assert_eq!(store.members(&mesh.id).expect("lists").len(), 2);
}

/// Threads adding members and granting through two stores on one database, while hot-path audit
/// writes go on: no change is lost and the mesh keeps a single, valid chain.
pub fn concurrent_control_plane_calls_lose_nothing_and_keep_one_chain<D: TestDatabase>(database: &D) {
    const THREADS: u32 = 6;
    const MEMBERS_EACH: u32 = 5;
    let stores = [database.open(), database.open()];
    let (mesh, admin) = mesh_with_admin(&*stores[0], "contended", 1, NOW_MS);
    let version_before = stores[0].directory_version().expect("reads");

    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (store, mesh, admin) = (&stores[thread as usize % 2], &mesh, &admin);
            scope.spawn(move || {
                for index in 0..MEMBERS_EACH {
                    let n = 100 + thread * MEMBERS_EACH + index;
                    let member = store
                        .add_member(
                            &mesh.id,
                            &new_member(n, &format!("worker {n}")),
                            Role::Member,
                            Some(&admin.id),
                            NOW_MS + 1,
                        )
                        .expect("adds");
                    store
                        .set_grants(&admin.id, &[(member.pubkey.clone(), Some(vec!["dm".into()]))], NOW_MS + 2)
                        .expect("grants");
                    let event = audit_event(&mesh.id, "custom", None, json!({ "thread": thread, "index": index }));
                    write(&**store, WriteOp::Audit(vec![event])).expect("appends");
                }
            });
        }
    });

    let added = (THREADS * MEMBERS_EACH) as usize;
    assert_eq!(stores[0].members(&mesh.id).expect("lists").len(), 1 + added);
    let granted: BTreeSet<String> =
        stores[1].grants(&mesh.id).expect("lists").into_iter().map(|grant| grant.peer_pubkey).collect();
    assert_eq!(granted.len(), added, "no grant was lost");
    assert!(stores[1].directory_version().expect("reads") > version_before);

    let log = audit_log(&*stores[1], &mesh.id);
    assert_eq!(log.len(), 2 + 3 * added, "mesh_created, member_joined, and three entries per worker");
    let links: BTreeSet<&str> = log.iter().map(|entry| entry.prev_hash.as_str()).collect();
    assert_eq!(links.len(), log.len(), "no two entries extend the same tail");
    assert_chained(&log);
    assert_eq!(
        stores[0].verify_audit(&mesh.id).expect("verifies"),
        AuditVerification { valid: true, entries: log.len() as u64, broken_at: None }
    );
}
