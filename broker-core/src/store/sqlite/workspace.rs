//! The shared workspace in SQLite: sealed state entries (compare-and-set on their version) and
//! memories (numbered per mesh), each write with its quota check and audit entry in one
//! transaction.

use rusqlite::{Connection, OptionalExtension, Row, params};

use super::audit;
use crate::protocol::{MemoryEntry, StateEntry};
use crate::store::records::{
    MEMORY_COLUMNS, STATE_COLUMNS, WorkspaceUsage, check_quota, check_state_write, memory_forgotten, state_deleted,
    state_overwritten,
};
use crate::store::{MemoryRecord, StateRecord, StoreError, StoreResult, WorkspaceQuota};

fn row_to_state(row: &Row<'_>) -> rusqlite::Result<StateRecord> {
    Ok(StateRecord {
        mesh_id: row.get(0)?,
        writer_member_id: row.get(6)?,
        entry: StateEntry {
            name: row.get(1)?,
            version: row.get::<_, i64>(2)? as u64,
            epoch: row.get::<_, i64>(3)? as u64,
            nonce: row.get(4)?,
            ciphertext: row.get(5)?,
            writer: row.get(7)?,
            updated_at: row.get::<_, i64>(8)? as u64,
            expires_at: row.get::<_, Option<i64>>(9)?.map(|at| at as u64),
        },
    })
}

fn row_to_memory(row: &Row<'_>) -> rusqlite::Result<MemoryRecord> {
    Ok(MemoryRecord {
        mesh_id: row.get(0)?,
        writer_member_id: row.get(6)?,
        entry: MemoryEntry {
            id: row.get(1)?,
            seq: row.get::<_, i64>(2)? as u64,
            epoch: row.get::<_, i64>(3)? as u64,
            nonce: row.get(4)?,
            ciphertext: row.get(5)?,
            writer: row.get(7)?,
            created_at: row.get::<_, i64>(8)? as u64,
            forgotten: row.get::<_, Option<i64>>(9)?.is_some(),
        },
    })
}

/// A live entry: no expiry, or one still ahead.
const LIVE: &str = "(expires_at IS NULL OR expires_at > ?2)";

pub(super) fn entries(
    conn: &Connection,
    mesh_id: &str,
    names: &[String],
    now_ms: u64,
) -> rusqlite::Result<Vec<StateRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {STATE_COLUMNS} FROM state_entries WHERE mesh_id = ?1 AND name = ?3 AND {LIVE}"
    ))?;
    let mut found = Vec::new();
    for name in names {
        found.extend(stmt.query_row(params![mesh_id, now_ms as i64, name], row_to_state).optional()?);
    }
    Ok(found)
}

pub(super) fn page(
    conn: &Connection,
    mesh_id: &str,
    after: Option<&str>,
    limit: usize,
    now_ms: u64,
) -> rusqlite::Result<Vec<StateRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {STATE_COLUMNS} FROM state_entries WHERE mesh_id = ?1 AND {LIVE} AND name > ?3 ORDER BY name LIMIT ?4"
    ))?;
    stmt.query_map(params![mesh_id, now_ms as i64, after.unwrap_or(""), limit as i64], row_to_state)?.collect()
}

fn newest_epoch(conn: &Connection, mesh_id: &str) -> rusqlite::Result<u64> {
    conn.query_row("SELECT COALESCE(MAX(epoch), 0) FROM mesh_epochs WHERE mesh_id = ?1", [mesh_id], |row| {
        row.get::<_, i64>(0)
    })
    .map(|epoch| epoch as u64)
}

/// What `member_id` keeps in the mesh's workspace, leaving out the state entry `except`.
fn usage(
    conn: &Connection,
    mesh_id: &str,
    member_id: &str,
    except: &str,
    now_ms: u64,
) -> rusqlite::Result<WorkspaceUsage> {
    let (state_entries, state_bytes): (i64, i64) = conn.query_row(
        &format!(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM state_entries
             WHERE mesh_id = ?1 AND {LIVE} AND writer_member_id = ?3 AND name != ?4"
        ),
        params![mesh_id, now_ms as i64, member_id, except],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let (memories, memory_bytes): (i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM memories
         WHERE mesh_id = ?1 AND writer_member_id = ?2 AND forgotten_at IS NULL",
        params![mesh_id, member_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    Ok(WorkspaceUsage {
        state_entries: state_entries as u64,
        memories: memories as u64,
        bytes: (state_bytes + memory_bytes) as u64,
    })
}

/// The live entry's version and writer (member id).
fn live(conn: &Connection, mesh_id: &str, name: &str, now_ms: u64) -> rusqlite::Result<Option<(u64, String)>> {
    conn.query_row(
        &format!("SELECT version, writer_member_id FROM state_entries WHERE mesh_id = ?1 AND name = ?3 AND {LIVE}"),
        params![mesh_id, now_ms as i64, name],
        |row| Ok((row.get::<_, i64>(0)? as u64, row.get(1)?)),
    )
    .optional()
}

pub(super) fn put(conn: &Connection, record: &StateRecord, quota: &WorkspaceQuota, now_ms: u64) -> StoreResult<()> {
    let entry = &record.entry;
    let current = live(conn, &record.mesh_id, &entry.name, now_ms)?;
    check_state_write(
        current.as_ref().map_or(0, |(version, _)| *version),
        newest_epoch(conn, &record.mesh_id)?,
        entry,
    )?;
    let used = usage(conn, &record.mesh_id, &record.writer_member_id, &entry.name, now_ms)?;
    check_quota(used, quota, true, false, entry.ciphertext.len() as u64)?;
    conn.execute(
        &format!(
            "INSERT OR REPLACE INTO state_entries ({STATE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        ),
        params![
            record.mesh_id,
            entry.name,
            entry.version as i64,
            entry.epoch as i64,
            entry.nonce,
            entry.ciphertext,
            record.writer_member_id,
            entry.writer,
            entry.updated_at as i64,
            entry.expires_at.map(|at| at as i64),
            entry.ciphertext.len() as i64,
        ],
    )?;
    match current {
        Some((_, previous)) if previous != record.writer_member_id => {
            audit::append(conn, &state_overwritten(record, &previous), now_ms)
        }
        _ => Ok(()),
    }
}

pub(super) fn delete(
    conn: &Connection,
    mesh_id: &str,
    name: &str,
    expected: Option<u64>,
    actor: &str,
    now_ms: u64,
) -> StoreResult<u64> {
    let Some((version, writer)) = live(conn, mesh_id, name, now_ms)? else {
        return match expected {
            Some(expected) if expected != 0 => Err(StoreError::Conflict("version_mismatch".into())),
            _ => Ok(0),
        };
    };
    if expected.is_some_and(|expected| expected != version) {
        return Err(StoreError::Conflict("version_mismatch".into()));
    }
    conn.execute("DELETE FROM state_entries WHERE mesh_id = ?1 AND name = ?2", params![mesh_id, name])?;
    audit::append(conn, &state_deleted(mesh_id, name, version, &writer, actor), now_ms)?;
    Ok(version)
}

pub(super) fn expire(conn: &Connection, now_ms: u64) -> rusqlite::Result<u64> {
    conn.execute("DELETE FROM state_entries WHERE expires_at <= ?1", [now_ms as i64]).map(|n| n as u64)
}

fn next_memory_seq(conn: &Connection, mesh_id: &str) -> rusqlite::Result<u64> {
    conn.query_row("SELECT COALESCE(MAX(seq), 0) + 1 FROM memories WHERE mesh_id = ?1", [mesh_id], |row| {
        row.get::<_, i64>(0)
    })
    .map(|seq| seq as u64)
}

pub(super) fn add_memory(
    conn: &Connection,
    record: &MemoryRecord,
    quota: &WorkspaceQuota,
    now_ms: u64,
) -> StoreResult<u64> {
    let entry = &record.entry;
    if entry.epoch != newest_epoch(conn, &record.mesh_id)? {
        return Err(StoreError::Conflict("stale_epoch".into()));
    }
    let taken: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM memories WHERE mesh_id = ?1 AND id = ?2)",
        params![record.mesh_id, entry.id],
        |row| row.get(0),
    )?;
    if taken {
        return Err(StoreError::Conflict("duplicate".into()));
    }
    let used = usage(conn, &record.mesh_id, &record.writer_member_id, "", now_ms)?;
    check_quota(used, quota, false, true, entry.ciphertext.len() as u64)?;
    let seq = next_memory_seq(conn, &record.mesh_id)?;
    conn.execute(
        &format!("INSERT INTO memories ({MEMORY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, ?10)"),
        params![
            record.mesh_id,
            entry.id,
            seq as i64,
            entry.epoch as i64,
            entry.nonce,
            entry.ciphertext,
            record.writer_member_id,
            entry.writer,
            entry.created_at as i64,
            entry.ciphertext.len() as i64,
        ],
    )?;
    Ok(seq)
}

pub(super) fn memories(
    conn: &Connection,
    mesh_id: &str,
    after: u64,
    limit: usize,
) -> rusqlite::Result<Vec<MemoryRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MEMORY_COLUMNS} FROM memories WHERE mesh_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
    ))?;
    stmt.query_map(params![mesh_id, after as i64, limit as i64], row_to_memory)?.collect()
}

pub(super) fn memory(conn: &Connection, mesh_id: &str, id: &str) -> rusqlite::Result<Option<MemoryRecord>> {
    conn.query_row(
        &format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE mesh_id = ?1 AND id = ?2"),
        params![mesh_id, id],
        row_to_memory,
    )
    .optional()
}

pub(super) fn forget(conn: &Connection, mesh_id: &str, id: &str, actor: &str, now_ms: u64) -> StoreResult<Option<u64>> {
    let Some(memory) = memory(conn, mesh_id, id)?.filter(|m| !m.entry.forgotten) else { return Ok(None) };
    let seq = next_memory_seq(conn, mesh_id)?;
    conn.execute(
        "UPDATE memories SET seq = ?3, nonce = '', ciphertext = '', size = 0, forgotten_at = ?4 WHERE mesh_id = ?1 AND id = ?2",
        params![mesh_id, id, seq as i64, now_ms as i64],
    )?;
    audit::append(conn, &memory_forgotten(mesh_id, id, &memory.writer_member_id, actor), now_ms)?;
    Ok(Some(seq))
}
