//! The membership log's SQL: appended in the transaction that changes a mesh's members.

use rusqlite::{Connection, OptionalExtension, params};

use crate::membership::{Change, LogEntry};
use crate::meshkey::{EpochRecord, Wrap};
use crate::store::records::{
    check_next_epoch, epoch_created, json_text, key_history_entry, next_log_entry, stored_json,
};
use crate::store::{EndorsementRecord, StoreResult};

/// The newest entry of the mesh's log: its seq and hash.
fn tail(conn: &Connection, mesh_id: &str) -> StoreResult<Option<(u64, String)>> {
    let tail: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM membership_log WHERE mesh_id = ?1 ORDER BY seq DESC LIMIT 1",
            [mesh_id],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    Ok(tail.map(|(seq, hash)| (seq as u64, hash)))
}

fn insert(conn: &Connection, mesh_id: &str, entry: &LogEntry) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO membership_log (mesh_id, seq, at, prev, change, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![mesh_id, entry.seq as i64, entry.at as i64, entry.prev, json_text(&entry.change)?, entry.hash],
    )?;
    Ok(())
}

/// Appends `change` to the mesh's log (`records::next_log_entry`).
pub(super) fn append(conn: &Connection, mesh_id: &str, change: Change, now_ms: u64) -> StoreResult<()> {
    match next_log_entry(tail(conn, mesh_id)?, change, now_ms)? {
        Some(entry) => insert(conn, mesh_id, &entry),
        None => Ok(()),
    }
}

/// Appends an admin's key history setting (`records::key_history_entry`).
pub(super) fn append_key_history(
    conn: &Connection,
    mesh_id: &str,
    change: &Change,
    actor: &str,
    now_ms: u64,
) -> StoreResult<LogEntry> {
    let (entry, audit) = key_history_entry(mesh_id, tail(conn, mesh_id)?, change, actor, now_ms)?;
    insert(conn, mesh_id, &entry)?;
    super::audit::append(conn, &audit, now_ms)?;
    Ok(entry)
}

/// A stored entry whose change is still JSON text.
pub(super) type StoredEntry = (i64, i64, String, String, String);

pub(super) fn rows(conn: &Connection, mesh_id: &str, after: u64, limit: usize) -> rusqlite::Result<Vec<StoredEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at, prev, change, hash FROM membership_log WHERE mesh_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    stmt.query_map(params![mesh_id, after as i64, limit as i64], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
    })?
    .collect()
}

pub(super) fn entry((seq, at, prev, change, hash): StoredEntry) -> StoreResult<LogEntry> {
    let change = stored_json("membership_log.change", change)?;
    Ok(LogEntry { seq: seq as u64, at: at as u64, prev, change, hash })
}

pub(super) fn add_endorsements(conn: &Connection, endorsements: &[EndorsementRecord]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO endorsements (mesh_id, device_key, sponsor, signature, created_at) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (mesh_id, device_key) DO UPDATE SET sponsor = excluded.sponsor, signature = excluded.signature,
                                                        created_at = excluded.created_at",
    )?;
    for e in endorsements {
        stmt.execute(params![e.mesh_id, e.device_key, e.sponsor, e.signature, e.created_at as i64])?;
    }
    Ok(())
}

pub(super) fn endorsement(
    conn: &Connection,
    mesh_id: &str,
    device_key: &str,
) -> rusqlite::Result<Option<EndorsementRecord>> {
    conn.query_row(
        "SELECT mesh_id, device_key, sponsor, signature, created_at FROM endorsements WHERE mesh_id = ?1 AND device_key = ?2",
        [mesh_id, device_key],
        |row| {
            Ok(EndorsementRecord {
                mesh_id: row.get(0)?,
                device_key: row.get(1)?,
                sponsor: row.get(2)?,
                signature: row.get(3)?,
                created_at: row.get::<_, i64>(4)? as u64,
            })
        },
    )
    .optional()
}

pub(super) fn epochs(conn: &Connection, mesh_id: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT record FROM mesh_epochs WHERE mesh_id = ?1 ORDER BY epoch")?;
    stmt.query_map([mesh_id], |row| row.get(0))?.collect()
}

pub(super) fn create_epoch(
    conn: &Connection,
    mesh_id: &str,
    record: &EpochRecord,
    wraps: &[Wrap],
    now_ms: u64,
) -> StoreResult<()> {
    let newest: i64 =
        conn.query_row("SELECT COALESCE(MAX(epoch), 0) FROM mesh_epochs WHERE mesh_id = ?1", [mesh_id], |row| {
            row.get(0)
        })?;
    check_next_epoch(newest as u64, record)?;
    conn.execute(
        "INSERT INTO mesh_epochs (mesh_id, epoch, record, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![mesh_id, record.epoch as i64, json_text(record)?, now_ms as i64],
    )?;
    add_wraps(conn, mesh_id, wraps, now_ms)?;
    super::audit::append(conn, &epoch_created(mesh_id, record), now_ms)?;
    Ok(())
}

pub(super) fn add_wraps(conn: &Connection, mesh_id: &str, wraps: &[Wrap], now_ms: u64) -> StoreResult<()> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO epoch_wraps (mesh_id, epoch, recipient, wrapper, nonce, ciphertext, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
    )?;
    for w in wraps {
        stmt.execute(params![mesh_id, w.epoch as i64, w.recipient, w.wrapper, w.nonce, w.ciphertext, now_ms as i64])?;
    }
    Ok(())
}

pub(super) fn wraps_for(conn: &Connection, mesh_id: &str, recipient: &str) -> rusqlite::Result<Vec<Wrap>> {
    let mut stmt = conn.prepare_cached(
        "SELECT epoch, recipient, wrapper, nonce, ciphertext FROM epoch_wraps WHERE mesh_id = ?1 AND recipient = ?2
         ORDER BY epoch",
    )?;
    stmt.query_map([mesh_id, recipient], |row| {
        Ok(Wrap {
            epoch: row.get::<_, i64>(0)? as u64,
            recipient: row.get(1)?,
            wrapper: row.get(2)?,
            nonce: row.get(3)?,
            ciphertext: row.get(4)?,
        })
    })?
    .collect()
}

pub(super) fn wrapped(conn: &Connection, mesh_id: &str, epoch: u64) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare_cached("SELECT recipient FROM epoch_wraps WHERE mesh_id = ?1 AND epoch = ?2")?;
    stmt.query_map(params![mesh_id, epoch as i64], |row| row.get(0))?.collect()
}
