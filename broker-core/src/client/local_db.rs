//! A device's own SQLite files (the inbox, the memory index): owner-only, shared by the
//! device's processes (bridges, the app, the CLI) in WAL mode, migrated by `user_version`.

use std::path::Path;

use rusqlite::Connection;

/// Opens (creating it owner-only) a database several processes of this device share. WAL +
/// NORMAL: a commit survives a process crash without an fsync per write.
pub fn open_private(path: &Path) -> rusqlite::Result<Connection> {
    let existed = path.exists();
    let conn = Connection::open(path)?;
    if !existed {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
    }
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Runs the migrations after the database's `user_version`, each once, in one transaction.
pub fn migrate(conn: &mut Connection, migrations: &[&str]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version = tx.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    for (index, migration) in migrations.iter().enumerate().skip(version) {
        tx.execute_batch(migration)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
    }
    tx.commit()
}
