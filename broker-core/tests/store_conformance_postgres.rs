//! The store conformance suite (`broker_core::store::conformance`) against `PostgresStore` on a
//! real PostgreSQL server, one per check (`broker_core::testing::postgres`).

use std::sync::Arc;

use broker_core::store::PostgresStore;
use broker_core::store::conformance::TestDatabase;
use broker_core::testing::postgres::PostgresServer;

/// A server of its own with one empty database, stopped and removed when the check ends.
struct PostgresDatabase {
    server: PostgresServer,
    url: String,
}

impl PostgresDatabase {
    fn new() -> PostgresDatabase {
        let server = PostgresServer::start();
        let url = server.create_database("broker");
        PostgresDatabase { server, url }
    }
}

impl TestDatabase for PostgresDatabase {
    type Store = PostgresStore;

    fn open(&self) -> Arc<PostgresStore> {
        PostgresStore::open(&self.url).unwrap_or_else(|e| panic!("opens the store: {e}\n{}", self.server.log()))
    }

    fn tamper_with_audit_payload(&self, id: i64, payload: &str) {
        let mut client = postgres::Client::connect(&self.url, postgres::NoTls).expect("connects");
        let changed =
            client.execute("UPDATE audit_log SET payload = $2 WHERE id = $1", &[&id, &payload]).expect("rewrites it");
        assert_eq!(changed, 1, "audit entry {id} exists");
    }
}

mod postgres_store {
    broker_core::store_conformance_tests!(super::PostgresDatabase::new());
}

/// The writer commits a batch in one transaction without savepoints; when one write of it fails
/// (here: its table is gone), the batch is run again write by write, so only that one fails.
#[test]
fn a_failing_write_fails_alone_and_the_rest_of_its_batch_commits() {
    use broker_core::store::{AuditEvent, PeerStateRecord, Store as _, WriteOp};
    let database = PostgresDatabase::new();
    let store = database.open();
    database.server.query("broker", "ALTER TABLE peer_state RENAME TO peer_state_gone");
    let (outcomes, results) = std::sync::mpsc::channel();
    let audit = |n: u32| {
        let event = AuditEvent {
            scope: "scope-a".into(),
            event_type: "custom".into(),
            actor: None,
            payload: serde_json::json!({ "n": n }),
        };
        WriteOp::Audit(vec![event])
    };
    let failing = WriteOp::SavePeerState(PeerStateRecord { member_id: "mem_x".into(), ..PeerStateRecord::default() });
    let ops = (0..3).map(audit).chain([failing]).chain((3..6).map(audit)).enumerate();
    for (index, op) in ops {
        let outcomes = outcomes.clone();
        store.submit(op, Some(Box::new(move |result| outcomes.send((index, result.is_ok())).expect("reported"))));
    }
    store.flush().expect("flushes");
    drop(outcomes);
    let mut reported: Vec<(usize, bool)> = results.iter().collect();
    reported.sort_unstable();
    let expected: Vec<(usize, bool)> = (0..7).map(|index| (index, index != 3)).collect();
    assert_eq!(reported, expected, "only the write whose table is gone failed");
    let (_, logged) = store.audit_entries("scope-a", None, 1, 0).expect("reads");
    assert_eq!(logged, 6, "every other write of the batch committed");
    assert!(store.verify_audit("scope-a").expect("verifies").valid);
}
