//! Backups of a broker's store, made while it serves, and restoring one.
//!
//! A backup is a directory: `broker.db`, a consistent copy of the database made in one read
//! transaction (a serving broker keeps writing meanwhile, and every message it acknowledged
//! before the copy began is in it), the operator keys, and `backup.json`, which says what it
//! holds. The copy is a SQLite database whichever store it came from: SQLite's `VACUUM INTO`, or
//! for Postgres every table read in one snapshot ([`crate::migrate::postgres_to_sqlite`]); so a
//! backup of either restores into either. Restoring into a data directory checks the copy,
//! refuses while a broker serves the directory (`serve` holds `broker.lock`), keeps the database
//! it replaces next to it; restoring into Postgres needs an empty database. Neither overwrites
//! an operator key.

use std::fs::File;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use serde::{Deserialize, Serialize};

use crate::operator::{DATABASE_FILE, OPERATOR_KEYS_DIR, OperatorError, OperatorResult, write_private_file};
use crate::protocol;
use crate::store::{MIGRATIONS, create_private_dir, restrict_permissions};

/// What `backup.json` says it is.
pub const BACKUP_FORMAT: &str = "claudemesh-broker-backup/1";
const MANIFEST_FILE: &str = "backup.json";
/// Held by `serve` (and `restore`) for as long as it uses the data directory.
const LOCK_FILE: &str = "broker.lock";

/// `backup.json`: when the backup was made and what it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackupManifest {
    pub format: String,
    pub created_at: String,
    pub broker_version: String,
    /// The schema migrations the copy has.
    pub migrations: Vec<String>,
    pub meshes: u64,
    pub members: u64,
    /// Deliveries waiting in the queue (one per message and recipient).
    pub queued_deliveries: u64,
    pub operator_keys: u64,
}

/// What `restore` did.
#[derive(Debug, Clone)]
pub struct Restored {
    pub manifest: BackupManifest,
    /// Where the database the backup replaced was moved, if there was one.
    pub replaced: Option<PathBuf>,
    /// Operator keys copied in (keys already there are kept as they are).
    pub keys_copied: u64,
}

/// Holds the data directory for one `serve` (or `restore`) until dropped. Operator commands do
/// not take it: they work while a broker serves.
pub fn lock_data_dir(data_dir: &Path) -> OperatorResult<File> {
    create_private_dir(data_dir)?;
    let path = data_dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| OperatorError::Io(format!("cannot open {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(OperatorError::Invalid(format!(
            "another claudemesh-broker is serving {} (or restoring into it); stop it first",
            data_dir.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(OperatorError::Io(format!("cannot lock {}: {e}", path.display()))),
    }
}

/// Copies `data_dir` into the new directory `to`, consistently, while a broker may serve it.
pub fn backup(data_dir: &Path, to: &Path) -> OperatorResult<BackupManifest> {
    if !data_dir.join(DATABASE_FILE).is_file() {
        return Err(OperatorError::NotFound(format!("{} holds no broker database", data_dir.display())));
    }
    prepare_target(to)?;
    copy_database(&data_dir.join(DATABASE_FILE), &to.join(DATABASE_FILE))?;
    finish_backup(data_dir, to)
}

/// Copies the Postgres database `url` (and the operator keys of `data_dir`) into the new
/// directory `to`, in one snapshot, while brokers serve it.
pub fn backup_postgres(url: &str, data_dir: &Path, to: &Path) -> OperatorResult<BackupManifest> {
    prepare_target(to)?;
    crate::migrate::postgres_to_sqlite(url, &to.join(DATABASE_FILE))?;
    finish_backup(data_dir, to)
}

/// `to` is new or empty, and made owner-only.
fn prepare_target(to: &Path) -> OperatorResult<()> {
    let empty = std::fs::read_dir(to).map(|mut entries| entries.next().is_none()).unwrap_or(true);
    if to.exists() && !empty {
        return Err(OperatorError::Invalid(format!(
            "{} exists and is not empty: back up into a new directory",
            to.display()
        )));
    }
    Ok(create_private_dir(to)?)
}

/// The copy made owner-only, the operator keys beside it, and the manifest.
fn finish_backup(data_dir: &Path, to: &Path) -> OperatorResult<BackupManifest> {
    let database = to.join(DATABASE_FILE);
    restrict_permissions(&database)?;
    let operator_keys = copy_keys(&data_dir.join(OPERATOR_KEYS_DIR), &to.join(OPERATOR_KEYS_DIR))?;
    let manifest = describe(&database, operator_keys)?;
    let text = serde_json::to_vec_pretty(&manifest).expect("the manifest serializes");
    write_private_file(&to.join(MANIFEST_FILE), &text)
        .map_err(|e| OperatorError::Io(format!("cannot write {}: {e}", to.join(MANIFEST_FILE).display())))?;
    Ok(manifest)
}

/// Makes `data_dir` hold the backup in `from`; refused while a broker serves it.
pub fn restore(from: &Path, data_dir: &Path) -> OperatorResult<Restored> {
    let (manifest, source) = checked_backup(from)?;
    let _lock = lock_data_dir(data_dir)?;

    // Everything that can fail for lack of space happens before the current database moves.
    let database = data_dir.join(DATABASE_FILE);
    let restoring = path_with(&database, ".restoring");
    std::fs::copy(&source, &restoring)
        .and_then(|_| File::open(&restoring)?.sync_all())
        .map_err(|e| OperatorError::Io(format!("cannot copy {} to {}: {e}", source.display(), restoring.display())))?;
    restrict_permissions(&restoring)?;
    let keys_copied = copy_keys(&from.join(OPERATOR_KEYS_DIR), &data_dir.join(OPERATOR_KEYS_DIR))?;

    let replaced = if database.exists() {
        let aside = data_dir.join(format!("{DATABASE_FILE}.replaced-{}", protocol::now_ms()));
        move_database(&database, &aside)?;
        Some(aside)
    } else {
        None
    };
    if let Err(e) = std::fs::rename(&restoring, &database) {
        if let Some(aside) = &replaced {
            move_database(aside, &database)?;
        }
        return Err(OperatorError::Io(format!("cannot move {} into place: {e}", restoring.display())));
    }
    Ok(Restored { manifest, replaced, keys_copied })
}

/// Makes the empty Postgres database `url` hold the backup in `from` (and `data_dir` its
/// operator keys). The copy is compared table by table and its audit chains verified.
pub fn restore_postgres(from: &Path, url: &str, data_dir: &Path) -> OperatorResult<Restored> {
    let (manifest, source) = checked_backup(from)?;
    // The backup directory is copied from, never changed: the copy works on a scratch file.
    let scratch = path_with(&source, &format!(".restoring-{}", std::process::id()));
    std::fs::copy(&source, &scratch)
        .map_err(|e| OperatorError::Io(format!("cannot copy {} to {}: {e}", source.display(), scratch.display())))?;
    let copied = crate::migrate::copy_into_postgres(&scratch, url);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(path_with(&scratch, suffix));
    }
    copied?;
    let keys_copied = copy_keys(&from.join(OPERATOR_KEYS_DIR), &data_dir.join(OPERATOR_KEYS_DIR))?;
    Ok(Restored { manifest, replaced: None, keys_copied })
}

/// The manifest of the backup in `from` and its database, checked.
fn checked_backup(from: &Path) -> OperatorResult<(BackupManifest, PathBuf)> {
    let manifest_path = from.join(MANIFEST_FILE);
    let manifest: BackupManifest = std::fs::read(&manifest_path)
        .map_err(|e| OperatorError::NotFound(format!("{} is not a backup ({}: {e})", from.display(), MANIFEST_FILE)))
        .and_then(|bytes| {
            serde_json::from_slice(&bytes)
                .map_err(|e| OperatorError::Invalid(format!("{} is unreadable: {e}", manifest_path.display())))
        })?;
    if manifest.format != BACKUP_FORMAT {
        return Err(OperatorError::Invalid(format!(
            "{} is a {:?} backup, not {BACKUP_FORMAT}",
            from.display(),
            manifest.format
        )));
    }
    let source = from.join(DATABASE_FILE);
    check_copy(&source)?;
    Ok((manifest, source))
}

/// Moves a database with its write-ahead log and index (which may hold the last commits).
fn move_database(from: &Path, to: &Path) -> OperatorResult<()> {
    for suffix in ["", "-wal", "-shm"] {
        let (file, moved) = (path_with(from, suffix), path_with(to, suffix));
        if file.exists() {
            std::fs::rename(&file, &moved).map_err(|e| {
                OperatorError::Io(format!("cannot move {} to {}: {e}", file.display(), moved.display()))
            })?;
        }
    }
    Ok(())
}

/// Writes a consistent copy of `database` to the new file `to` (SQLite's `VACUUM INTO`: one read
/// transaction, so a serving broker's writes go on, and every commit made before it is in the
/// copy). The database is opened as it is, without migrating it under the broker that serves it.
fn copy_database(database: &Path, to: &Path) -> OperatorResult<()> {
    let failed = |e: rusqlite::Error| OperatorError::Io(format!("cannot copy {}: {e}", database.display()));
    let target = to.to_str().ok_or_else(|| OperatorError::Invalid(format!("{} is not a UTF-8 path", to.display())))?;
    let conn = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_WRITE).map_err(failed)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(failed)?;
    conn.execute("VACUUM INTO ?1", [target]).map_err(failed)?;
    Ok(())
}

/// The copy is intact, and made by a broker that knows no migration this one does not.
fn check_copy(database: &Path) -> OperatorResult<()> {
    let unreadable = |e: rusqlite::Error| OperatorError::Invalid(format!("{} is unreadable: {e}", database.display()));
    let conn = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(unreadable)?;
    let verdict: String = conn.query_row("PRAGMA integrity_check", [], |row| row.get(0)).map_err(unreadable)?;
    if verdict != "ok" {
        return Err(OperatorError::Invalid(format!("{} is damaged: {verdict}", database.display())));
    }
    for name in migrations(&conn).map_err(unreadable)? {
        if !MIGRATIONS.iter().any(|(known, _)| *known == name) {
            return Err(OperatorError::Invalid(format!(
                "the backup was made by a newer broker (its schema has {name:?}); restore it with that version"
            )));
        }
    }
    Ok(())
}

fn migrations(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = conn.prepare("SELECT name FROM schema_migrations ORDER BY name")?;
    statement.query_map([], |row| row.get(0))?.collect()
}

fn describe(database: &Path, operator_keys: u64) -> OperatorResult<BackupManifest> {
    let unreadable =
        |e: rusqlite::Error| OperatorError::Io(format!("cannot read the copy {}: {e}", database.display()));
    let conn = Connection::open_with_flags(database, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(unreadable)?;
    let count = |table: &str| -> OperatorResult<u64> {
        conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| row.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(unreadable)
    };
    Ok(BackupManifest {
        format: BACKUP_FORMAT.to_owned(),
        created_at: protocol::iso8601_ms(protocol::now_ms()),
        broker_version: env!("CARGO_PKG_VERSION").to_owned(),
        migrations: migrations(&conn).map_err(unreadable)?,
        meshes: count("meshes")?,
        members: count("members")?,
        queued_deliveries: count("queue")?,
        operator_keys,
    })
}

/// Copies the `*.key` files of `from` that `to` does not have; how many it copied.
fn copy_keys(from: &Path, to: &Path) -> OperatorResult<u64> {
    let entries = match std::fs::read_dir(from) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(OperatorError::Io(format!("cannot read {}: {e}", from.display()))),
    };
    let mut copied = 0;
    for entry in entries {
        let path = entry.map_err(|e| OperatorError::Io(format!("cannot read {}: {e}", from.display())))?.path();
        let Some(name) = path.file_name().filter(|_| path.extension().is_some_and(|e| e == "key")) else { continue };
        let target = to.join(name);
        if target.exists() {
            continue;
        }
        let key =
            std::fs::read(&path).map_err(|e| OperatorError::Io(format!("cannot read {}: {e}", path.display())))?;
        write_private_file(&target, &key)
            .map_err(|e| OperatorError::Io(format!("cannot write {}: {e}", target.display())))?;
        copied += 1;
    }
    Ok(copied)
}

fn path_with(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::Operator;

    fn data_dir_with_a_mesh() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        Operator::open(&data).expect("opens").create_mesh("Acme", None).expect("creates");
        (dir, data)
    }

    #[test]
    fn one_broker_at_a_time_serves_a_data_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = lock_data_dir(dir.path()).expect("locks");
        let second = lock_data_dir(dir.path());
        assert!(matches!(&second, Err(OperatorError::Invalid(why)) if why.contains("serving")), "{second:?}");
        drop(held);
        lock_data_dir(dir.path()).expect("free again");
    }

    #[test]
    fn a_backup_goes_only_into_a_new_directory_and_says_what_it_holds() {
        let (dir, data) = data_dir_with_a_mesh();
        let target = dir.path().join("backup");
        let made = backup(&data, &target).expect("backs up");
        assert_eq!((made.meshes, made.members, made.operator_keys), (1, 1, 1));
        assert_eq!(made.migrations.len(), MIGRATIONS.len());
        assert!(matches!(backup(&data, &target), Err(OperatorError::Invalid(_))), "never over an existing backup");
        let nothing = dir.path().join("nothing");
        assert!(matches!(backup(&nothing, &dir.path().join("b2")), Err(OperatorError::NotFound(_))));
    }

    #[test]
    fn restore_sets_the_old_database_aside_with_its_log_keeps_keys_and_refuses_a_newer_schema() {
        let (dir, data) = data_dir_with_a_mesh();
        let target = dir.path().join("backup");
        backup(&data, &target).expect("backs up");

        // Into a directory with a mesh of its own: its database is set aside with its write-ahead
        // log (a broker killed mid-write leaves one), its key stays.
        let (_other, elsewhere) = data_dir_with_a_mesh();
        let own_keys = std::fs::read_dir(elsewhere.join(OPERATOR_KEYS_DIR)).expect("keys").count();
        let killed_broker = Connection::open(elsewhere.join(DATABASE_FILE)).expect("opens");
        killed_broker.execute("INSERT INTO settings (key, value) VALUES ('last', 'write')", []).expect("writes");
        assert!(path_with(&elsewhere.join(DATABASE_FILE), "-wal").exists(), "a write-ahead log to carry");
        let restored = restore(&target, &elsewhere).expect("restores");
        drop(killed_broker);
        let aside = restored.replaced.clone().expect("set aside");
        assert!(aside.is_file() && path_with(&aside, "-wal").is_file(), "{aside:?} and its log");
        assert_eq!(restored.keys_copied, 1);
        assert_eq!(std::fs::read_dir(elsewhere.join(OPERATOR_KEYS_DIR)).expect("keys").count(), own_keys + 1);
        let meshes = Operator::open(&elsewhere).expect("opens").store().meshes().expect("lists");
        assert_eq!(meshes.len(), 1, "the backup's mesh, not both");

        let conn = Connection::open(target.join(DATABASE_FILE)).expect("opens");
        conn.execute("INSERT INTO schema_migrations (name, applied_at) VALUES ('9999_future', 0)", []).expect("adds");
        drop(conn);
        let newer = restore(&target, &dir.path().join("fresh"));
        assert!(matches!(&newer, Err(OperatorError::Invalid(why)) if why.contains("newer broker")), "{newer:?}");
    }
}
