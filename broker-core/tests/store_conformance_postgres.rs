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
