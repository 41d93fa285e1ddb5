//! Moving a store between SQLite and Postgres, whole: every table row for row, ids and hashes as
//! they are (the audit chains verify unchanged), the queue with its sequence numbers (so every
//! queued message is delivered once, and later ones number above them).
//!
//! - [`sqlite_to_postgres`] is `claudemesh-broker migrate --from DATA_DIR --to postgres://…`: the
//!   source broker must be stopped (its data directory's lock is taken). The copy is one Postgres
//!   transaction into an empty database: a failure leaves it as empty as it was. Afterwards each
//!   table's rows are compared between the two databases and every audit chain is verified on
//!   the target. `restore --database-url` uses the same copy ([`copy_into_postgres`]).
//! - [`postgres_to_sqlite`] is the copy a Postgres backup makes: every table read in one
//!   snapshot (`REPEATABLE READ`) while brokers serve, written into a new SQLite database.
//!
//! The only module that knows both schemas; a table it does not know stops it, so a new table
//! can never be left behind unnoticed.

use std::path::Path;

use postgres::types::{ToSql, Type};
use rusqlite::types::Value;
use serde::Serialize;

use crate::operator::{DATABASE_FILE, OperatorError, OperatorResult};
use crate::store::{PostgresStore, SqliteStore, Store, StoreError};

/// Every table of the store, parents before children (foreign keys hold at each insert).
/// Postgres's `queue_tails` is not among them: it is derived from `queue`, and rebuilt after a
/// copy into Postgres.
const TABLES: &[&str] = &[
    "settings",
    "accounts",
    "devices",
    "device_codes",
    "email_codes",
    "meshes",
    "members",
    "mesh_keys",
    "invites",
    "invite_redemptions",
    "grants",
    "peer_state",
    "audit_log",
    "bodies",
    "queue",
    "receipts",
    "schedules",
    "membership_log",
    "endorsements",
    "mesh_epochs",
    "epoch_wraps",
    "state_entries",
    "memories",
];

/// What was copied.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Migrated {
    /// Rows per table, the same in both databases, in copying order.
    pub tables: Vec<TableRows>,
    /// Audit scopes whose chain verified on the target.
    pub audit_scopes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableRows {
    pub table: String,
    pub rows: u64,
}

fn failed(what: impl std::fmt::Display) -> OperatorError {
    OperatorError::Io(what.to_string())
}

/// Copies the SQLite store of `data_dir`, whose broker is stopped, into the empty Postgres
/// database `url`.
pub fn sqlite_to_postgres(data_dir: &Path, url: &str) -> OperatorResult<Migrated> {
    let _lock = crate::backup::lock_data_dir(data_dir)?;
    let path = data_dir.join(DATABASE_FILE);
    if !path.exists() {
        return Err(OperatorError::NotFound(format!("no broker database at {}", path.display())));
    }
    copy_into_postgres(&path, url)
}

/// Copies the SQLite database at `path` (nobody else writing it) into the empty Postgres
/// database `url`, then compares both and verifies the audit chains.
pub fn copy_into_postgres(path: &Path, url: &str) -> OperatorResult<Migrated> {
    // Opening brings the source to this broker's schema, as starting it would.
    drop(SqliteStore::open(path, crate::store::Durability::Full)?);
    let target = PostgresStore::open(url)?;
    let source = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(StoreError::from)?;
    check_tables(&source)?;
    let mut client = crate::store::parse_database_url(url)?.connect(postgres::NoTls).map_err(StoreError::from)?;
    let mut tx = client.transaction().map_err(StoreError::from)?;
    refuse_non_empty(&mut tx)?;
    let mut tables = Vec::new();
    for table in TABLES {
        let rows = copy_table(&source, &mut tx, table)?;
        tables.push(TableRows { table: (*table).to_owned(), rows });
    }
    // Numbers handed out after the move continue above the copied ones.
    tx.batch_execute(
        "SELECT setval('queue_seq', GREATEST((SELECT MAX(seq) FROM queue), (SELECT MAX(seq) FROM bodies), 1));
         SELECT setval(pg_get_serial_sequence('audit_log', 'id'), GREATEST((SELECT MAX(id) FROM audit_log), 1));
         INSERT INTO queue_tails (member_id, urgent, seq)
             SELECT member_id, priority = 0, MAX(seq) FROM queue GROUP BY member_id, priority = 0",
    )
    .map_err(StoreError::from)?;
    tx.commit().map_err(StoreError::from)?;
    for table in TABLES {
        compare_table(&source, &mut client, table)?;
    }
    let scopes: Vec<String> = client
        .query("SELECT DISTINCT mesh_id FROM audit_log ORDER BY mesh_id", &[])
        .map_err(StoreError::from)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    for scope in &scopes {
        let verified = target.verify_audit(scope)?;
        if !verified.valid {
            return Err(failed(format!(
                "the audit chain of {scope} does not verify after the copy (entry {:?})",
                verified.broken_at
            )));
        }
    }
    Ok(Migrated { tables, audit_scopes: scopes.len() as u64 })
}

/// Writes every table of the Postgres database `url`, read in one snapshot while brokers may
/// serve it, into a new SQLite database at `path` (created with this broker's schema).
pub fn postgres_to_sqlite(url: &str, path: &Path) -> OperatorResult<()> {
    drop(SqliteStore::open(path, crate::store::Durability::Full)?);
    let mut target = rusqlite::Connection::open(path).map_err(StoreError::from)?;
    check_tables(&target)?;
    let mut client = crate::store::parse_database_url(url)?.connect(postgres::NoTls).map_err(StoreError::from)?;
    let mut snapshot = client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(StoreError::from)?;
    let tx = target.transaction().map_err(StoreError::from)?;
    for table in TABLES {
        let columns = columns(&tx, table)?;
        let placeholders: Vec<String> = (1..=columns.len()).map(|n| format!("?{n}")).collect();
        let mut insert = tx
            .prepare(&format!("INSERT INTO {table} ({}) VALUES ({})", columns.join(", "), placeholders.join(", ")))
            .map_err(StoreError::from)?;
        let rows =
            snapshot.query(&format!("SELECT {} FROM {table}", columns.join(", ")), &[]).map_err(StoreError::from)?;
        for row in rows {
            let values = (0..columns.len())
                .map(|index| {
                    let value = if *row.columns()[index].type_() == Type::INT8 {
                        row.try_get::<_, Option<i64>>(index)?.map_or(Value::Null, Value::Integer)
                    } else {
                        row.try_get::<_, Option<String>>(index)?.map_or(Value::Null, Value::Text)
                    };
                    Ok(value)
                })
                .collect::<Result<Vec<Value>, postgres::Error>>()
                .map_err(StoreError::from)?;
            insert.execute(rusqlite::params_from_iter(values)).map_err(StoreError::from)?;
        }
    }
    tx.commit().map_err(StoreError::from)?;
    snapshot.commit().map_err(StoreError::from)?;
    Ok(())
}

/// The source holds no table this module does not know.
fn check_tables(source: &rusqlite::Connection) -> OperatorResult<()> {
    let mut statement = source
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .map_err(StoreError::from)?;
    let names: Vec<String> =
        statement.query_map([], |row| row.get(0)).and_then(Iterator::collect).map_err(StoreError::from)?;
    match names.iter().find(|name| *name != "schema_migrations" && !TABLES.contains(&name.as_str())) {
        Some(unknown) => Err(failed(format!("the source has a table migrate does not know: {unknown}"))),
        None => Ok(()),
    }
}

fn refuse_non_empty(tx: &mut postgres::Transaction<'_>) -> OperatorResult<()> {
    for table in TABLES {
        let row = tx.query_one(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), &[]).map_err(StoreError::from)?;
        if row.get::<_, bool>(0) {
            return Err(OperatorError::Invalid(format!(
                "the target database is not empty ({table} has rows); migrate into a new database"
            )));
        }
    }
    Ok(())
}

fn columns(source: &rusqlite::Connection, table: &str) -> OperatorResult<Vec<String>> {
    let mut statement = source
        .prepare(&format!("SELECT name FROM pragma_table_info('{table}') ORDER BY cid"))
        .map_err(StoreError::from)?;
    Ok(statement.query_map([], |row| row.get(0)).and_then(Iterator::collect).map_err(StoreError::from)?)
}

/// One SQLite value as a parameter of its column's Postgres type `kind` (every column is TEXT or
/// BIGINT; a NULL is bound with the column's type).
fn parameter(value: Value, kind: &Type, column: &str, table: &str) -> OperatorResult<Box<dyn ToSql + Sync>> {
    Ok(match value {
        Value::Null if *kind == Type::INT8 => Box::new(None::<i64>),
        Value::Null => Box::new(None::<String>),
        Value::Integer(number) => Box::new(number),
        Value::Text(text) => Box::new(text),
        Value::Real(_) | Value::Blob(_) => {
            return Err(failed(format!("{table}.{column} holds a value that is neither text nor an integer")));
        }
    })
}

fn copy_table(source: &rusqlite::Connection, tx: &mut postgres::Transaction<'_>, table: &str) -> OperatorResult<u64> {
    let columns = columns(source, table)?;
    let placeholders: Vec<String> = (1..=columns.len()).map(|n| format!("${n}")).collect();
    // Identity columns (audit_log.id) keep their values.
    let insert = tx
        .prepare(&format!(
            "INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
            columns.join(", "),
            placeholders.join(", ")
        ))
        .map_err(StoreError::from)?;
    let types = insert.params().to_vec();
    let mut statement =
        source.prepare(&format!("SELECT {} FROM {table}", columns.join(", "))).map_err(StoreError::from)?;
    let mut rows = statement.query([]).map_err(StoreError::from)?;
    let mut copied = 0;
    while let Some(row) = rows.next().map_err(StoreError::from)? {
        let mut values = Vec::with_capacity(columns.len());
        for (index, column) in columns.iter().enumerate() {
            let value: Value = row.get(index).map_err(StoreError::from)?;
            values.push(parameter(value, &types[index], column, table)?);
        }
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|value| value.as_ref()).collect();
        tx.execute(&insert, &params).map_err(StoreError::from)?;
        copied += 1;
    }
    Ok(copied)
}

/// Both databases hold the same rows of `table` (every value as text, rows sorted).
fn compare_table(source: &rusqlite::Connection, target: &mut postgres::Client, table: &str) -> OperatorResult<()> {
    let columns = columns(source, table)?;
    let select = format!(
        "SELECT {} FROM {table}",
        columns.iter().map(|c| format!("COALESCE(CAST({c} AS TEXT), '(null)')")).collect::<Vec<_>>().join(", ")
    );
    let mut statement = source.prepare(&select).map_err(StoreError::from)?;
    let mut expected: Vec<Vec<String>> = statement
        .query_map([], |row| (0..columns.len()).map(|i| row.get::<_, String>(i)).collect())
        .and_then(Iterator::collect)
        .map_err(StoreError::from)?;
    let mut found: Vec<Vec<String>> = target
        .query(&select, &[])
        .map_err(StoreError::from)?
        .iter()
        .map(|row| (0..columns.len()).map(|i| row.get::<_, String>(i)).collect())
        .collect();
    expected.sort_unstable();
    found.sort_unstable();
    if expected != found {
        return Err(failed(format!(
            "{table} differs after the copy ({} rows in SQLite, {} in Postgres)",
            expected.len(),
            found.len()
        )));
    }
    Ok(())
}
