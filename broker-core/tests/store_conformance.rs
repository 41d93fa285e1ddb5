//! The store conformance suite (`broker_core::store::conformance`) against `SqliteStore` on a
//! real database file in a temporary directory, once per durability setting.

use std::path::PathBuf;
use std::sync::Arc;

use broker_core::store::conformance::TestDatabase;
use broker_core::store::{Durability, SqliteStore};

/// A fresh database file in its own temporary directory, removed when the check ends.
struct SqliteDatabase {
    dir: tempfile::TempDir,
    durability: Durability,
}

impl SqliteDatabase {
    fn new(durability: Durability) -> SqliteDatabase {
        SqliteDatabase { dir: tempfile::tempdir().expect("a temporary directory"), durability }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("broker.db")
    }
}

impl TestDatabase for SqliteDatabase {
    type Store = SqliteStore;

    fn open(&self) -> Arc<SqliteStore> {
        SqliteStore::open(&self.path(), self.durability).expect("opens the store")
    }

    fn tamper_with_audit_payload(&self, id: i64, payload: &str) {
        let conn = rusqlite::Connection::open(self.path()).expect("opens the database");
        conn.busy_timeout(std::time::Duration::from_secs(5)).expect("sets the busy timeout");
        let changed = conn
            .execute("UPDATE audit_log SET payload = ?2 WHERE id = ?1", rusqlite::params![id, payload])
            .expect("rewrites the entry");
        assert_eq!(changed, 1, "audit entry {id} exists");
    }
}

mod full {
    broker_core::store_conformance_tests!(super::SqliteDatabase::new(broker_core::store::Durability::Full));
}

mod normal {
    broker_core::store_conformance_tests!(super::SqliteDatabase::new(broker_core::store::Durability::Normal));
}
