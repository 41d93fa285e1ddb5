//! Readiness, settings and the commit counter.

use super::{TestDatabase, audit_event, write};
use crate::store::{Store, WriteOp, WriteOutcome};

/// `ping` answers, migrations are listed once each, and opening the database again applies
/// nothing new.
pub fn store_answers_pings_and_lists_its_migrations<D: TestDatabase>(database: &D) {
    let store = database.open();
    store.ping().expect("pings");
    let applied = store.applied_migrations().expect("lists migrations");
    assert!(!applied.is_empty(), "a fresh database has its schema applied");
    let mut sorted = applied.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, applied, "listed in order, each once");
    drop(store);

    let reopened = database.open();
    assert_eq!(reopened.applied_migrations().expect("lists migrations"), applied);
}

/// A setting reads back as last written, and another store on the same database reads it too.
pub fn settings_round_trip_and_are_shared<D: TestDatabase>(database: &D) {
    let store = database.open();
    assert_eq!(store.setting("public_url").expect("reads"), None);
    store.set_setting("public_url", "https://mesh.example.com").expect("writes");
    store.set_setting("greeting", "grüße ✓").expect("writes");
    assert_eq!(store.setting("public_url").expect("reads").as_deref(), Some("https://mesh.example.com"));
    store.set_setting("public_url", "https://other.example.com").expect("overwrites");

    let other = database.open();
    assert_eq!(other.setting("public_url").expect("reads").as_deref(), Some("https://other.example.com"));
    assert_eq!(other.setting("greeting").expect("reads").as_deref(), Some("grüße ✓"));
}

/// The counter grows with every committed write, hot-path or control-plane, and never goes back.
pub fn commits_count_every_committed_write<D: TestDatabase>(database: &D) {
    let store = database.open();
    let opened = store.commits();

    let outcome = write(&*store, WriteOp::Audit(vec![audit_event("scope-a", "custom", None, serde_json::json!({}))]));
    assert_eq!(outcome.expect("commits"), WriteOutcome::Changed(1));
    let after_submit = store.commits();
    assert!(after_submit > opened, "a completed write was committed: {opened} -> {after_submit}");

    store.set_setting("key", "value").expect("writes");
    let after_call = store.commits();
    assert!(after_call > after_submit, "a control-plane write commits too: {after_submit} -> {after_call}");

    for n in 0..50 {
        store.submit(WriteOp::Audit(vec![audit_event("scope-b", "custom", None, serde_json::json!({ "n": n }))]), None);
    }
    store.flush().expect("flushes");
    let after_burst = store.commits();
    assert!(after_burst > after_call && after_burst <= after_call + 51, "{after_call} -> {after_burst}");
    let (_, logged) = store.audit_entries("scope-b", None, 1, 0).expect("reads");
    assert_eq!(logged, 50, "every write of the burst was committed");
}
