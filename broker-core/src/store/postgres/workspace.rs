//! The shared workspace in Postgres: sealed state entries (compare-and-set on their version) and
//! memories (numbered per mesh). Every write takes the mesh's scope lock first, so two replicas
//! never both pass one version, one quota or one memory number.

use postgres::{GenericClient, Row};

use super::{audit, lock_scope};
use crate::protocol::{MemoryEntry, StateEntry};
use crate::store::records::{
    MEMORY_COLUMNS, STATE_COLUMNS, WorkspaceUsage, check_quota, check_state_write, memory_forgotten, state_deleted,
    state_overwritten,
};
use crate::store::{MemoryRecord, StateRecord, StoreError, StoreResult, WorkspaceQuota};

fn row_to_state(row: &Row) -> Result<StateRecord, postgres::Error> {
    Ok(StateRecord {
        mesh_id: row.try_get(0)?,
        writer_member_id: row.try_get(6)?,
        entry: StateEntry {
            name: row.try_get(1)?,
            version: row.try_get::<_, i64>(2)? as u64,
            epoch: row.try_get::<_, i64>(3)? as u64,
            nonce: row.try_get(4)?,
            ciphertext: row.try_get(5)?,
            writer: row.try_get(7)?,
            updated_at: row.try_get::<_, i64>(8)? as u64,
            expires_at: row.try_get::<_, Option<i64>>(9)?.map(|at| at as u64),
        },
    })
}

fn row_to_memory(row: &Row) -> Result<MemoryRecord, postgres::Error> {
    Ok(MemoryRecord {
        mesh_id: row.try_get(0)?,
        writer_member_id: row.try_get(6)?,
        entry: MemoryEntry {
            id: row.try_get(1)?,
            seq: row.try_get::<_, i64>(2)? as u64,
            epoch: row.try_get::<_, i64>(3)? as u64,
            nonce: row.try_get(4)?,
            ciphertext: row.try_get(5)?,
            writer: row.try_get(7)?,
            created_at: row.try_get::<_, i64>(8)? as u64,
            forgotten: row.try_get::<_, Option<i64>>(9)?.is_some(),
        },
    })
}

/// A live entry: no expiry, or one still ahead.
const LIVE: &str = "(expires_at IS NULL OR expires_at > $2)";

pub(super) fn entries(
    db: &mut impl GenericClient,
    mesh_id: &str,
    names: &[String],
    now_ms: u64,
) -> StoreResult<Vec<StateRecord>> {
    let rows = db.query(
        &format!("SELECT {STATE_COLUMNS} FROM state_entries WHERE mesh_id = $1 AND {LIVE} AND name = ANY($3)"),
        &[&mesh_id, &(now_ms as i64), &names],
    )?;
    Ok(rows.iter().map(row_to_state).collect::<Result<_, _>>()?)
}

pub(super) fn page(
    db: &mut impl GenericClient,
    mesh_id: &str,
    after: Option<&str>,
    limit: usize,
    now_ms: u64,
) -> StoreResult<Vec<StateRecord>> {
    let rows = db.query(
        &format!(
            "SELECT {STATE_COLUMNS} FROM state_entries WHERE mesh_id = $1 AND {LIVE} AND name > $3
             ORDER BY name COLLATE \"C\" LIMIT $4"
        ),
        &[&mesh_id, &(now_ms as i64), &after.unwrap_or(""), &(limit as i64)],
    )?;
    Ok(rows.iter().map(row_to_state).collect::<Result<_, _>>()?)
}

fn newest_epoch(db: &mut impl GenericClient, mesh_id: &str) -> StoreResult<u64> {
    let row = db.query_one("SELECT COALESCE(MAX(epoch), 0) FROM mesh_epochs WHERE mesh_id = $1", &[&mesh_id])?;
    Ok(row.try_get::<_, i64>(0)? as u64)
}

/// What `member_id` keeps in the mesh's workspace, leaving out the state entry `except`.
fn usage(
    db: &mut impl GenericClient,
    mesh_id: &str,
    member_id: &str,
    except: &str,
    now_ms: u64,
) -> StoreResult<WorkspaceUsage> {
    let state = db.query_one(
        &format!(
            "SELECT COUNT(*), COALESCE(SUM(size), 0)::BIGINT FROM state_entries
             WHERE mesh_id = $1 AND {LIVE} AND writer_member_id = $3 AND name != $4"
        ),
        &[&mesh_id, &(now_ms as i64), &member_id, &except],
    )?;
    let memories = db.query_one(
        "SELECT COUNT(*), COALESCE(SUM(size), 0)::BIGINT FROM memories
         WHERE mesh_id = $1 AND writer_member_id = $2 AND forgotten_at IS NULL",
        &[&mesh_id, &member_id],
    )?;
    Ok(WorkspaceUsage {
        state_entries: state.try_get::<_, i64>(0)? as u64,
        memories: memories.try_get::<_, i64>(0)? as u64,
        bytes: (state.try_get::<_, i64>(1)? + memories.try_get::<_, i64>(1)?) as u64,
    })
}

/// The live entry's version and writer (member id).
fn live(db: &mut impl GenericClient, mesh_id: &str, name: &str, now_ms: u64) -> StoreResult<Option<(u64, String)>> {
    let row = db.query_opt(
        &format!("SELECT version, writer_member_id FROM state_entries WHERE mesh_id = $1 AND {LIVE} AND name = $3"),
        &[&mesh_id, &(now_ms as i64), &name],
    )?;
    match row {
        Some(row) => Ok(Some((row.try_get::<_, i64>(0)? as u64, row.try_get(1)?))),
        None => Ok(None),
    }
}

pub(super) fn put(
    db: &mut impl GenericClient,
    record: &StateRecord,
    quota: &WorkspaceQuota,
    now_ms: u64,
) -> StoreResult<()> {
    lock_scope(db, &record.mesh_id)?;
    let entry = &record.entry;
    let current = live(db, &record.mesh_id, &entry.name, now_ms)?;
    let newest = newest_epoch(db, &record.mesh_id)?;
    check_state_write(current.as_ref().map_or(0, |(version, _)| *version), newest, entry)?;
    let used = usage(db, &record.mesh_id, &record.writer_member_id, &entry.name, now_ms)?;
    check_quota(used, quota, true, false, entry.ciphertext.len() as u64)?;
    db.execute(
        &format!(
            "INSERT INTO state_entries ({STATE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (mesh_id, name) DO UPDATE SET version = excluded.version, epoch = excluded.epoch,
                 nonce = excluded.nonce, ciphertext = excluded.ciphertext,
                 writer_member_id = excluded.writer_member_id, writer_pubkey = excluded.writer_pubkey,
                 updated_at = excluded.updated_at, expires_at = excluded.expires_at, size = excluded.size"
        ),
        &[
            &record.mesh_id,
            &entry.name,
            &(entry.version as i64),
            &(entry.epoch as i64),
            &entry.nonce,
            &entry.ciphertext,
            &record.writer_member_id,
            &entry.writer,
            &(entry.updated_at as i64),
            &entry.expires_at.map(|at| at as i64),
            &(entry.ciphertext.len() as i64),
        ],
    )?;
    match current {
        Some((_, previous)) if previous != record.writer_member_id => {
            audit::append(db, &state_overwritten(record, &previous), now_ms)
        }
        _ => Ok(()),
    }
}

pub(super) fn delete(
    db: &mut impl GenericClient,
    mesh_id: &str,
    name: &str,
    expected: Option<u64>,
    actor: &str,
    now_ms: u64,
) -> StoreResult<u64> {
    lock_scope(db, mesh_id)?;
    let Some((version, writer)) = live(db, mesh_id, name, now_ms)? else {
        return match expected {
            Some(expected) if expected != 0 => Err(StoreError::Conflict("version_mismatch".into())),
            _ => Ok(0),
        };
    };
    if expected.is_some_and(|expected| expected != version) {
        return Err(StoreError::Conflict("version_mismatch".into()));
    }
    db.execute("DELETE FROM state_entries WHERE mesh_id = $1 AND name = $2", &[&mesh_id, &name])?;
    audit::append(db, &state_deleted(mesh_id, name, version, &writer, actor), now_ms)?;
    Ok(version)
}

pub(super) fn expire(db: &mut impl GenericClient, now_ms: u64) -> StoreResult<u64> {
    Ok(db.execute("DELETE FROM state_entries WHERE expires_at <= $1", &[&(now_ms as i64)])?)
}

fn next_memory_seq(db: &mut impl GenericClient, mesh_id: &str) -> StoreResult<u64> {
    let row = db.query_one("SELECT COALESCE(MAX(seq), 0) + 1 FROM memories WHERE mesh_id = $1", &[&mesh_id])?;
    Ok(row.try_get::<_, i64>(0)? as u64)
}

pub(super) fn add_memory(
    db: &mut impl GenericClient,
    record: &MemoryRecord,
    quota: &WorkspaceQuota,
    now_ms: u64,
) -> StoreResult<u64> {
    lock_scope(db, &record.mesh_id)?;
    let entry = &record.entry;
    if entry.epoch != newest_epoch(db, &record.mesh_id)? {
        return Err(StoreError::Conflict("stale_epoch".into()));
    }
    if db.query_opt("SELECT 1 FROM memories WHERE mesh_id = $1 AND id = $2", &[&record.mesh_id, &entry.id])?.is_some() {
        return Err(StoreError::Conflict("duplicate".into()));
    }
    let used = usage(db, &record.mesh_id, &record.writer_member_id, "", now_ms)?;
    check_quota(used, quota, false, true, entry.ciphertext.len() as u64)?;
    let seq = next_memory_seq(db, &record.mesh_id)?;
    db.execute(
        &format!("INSERT INTO memories ({MEMORY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10)"),
        &[
            &record.mesh_id,
            &entry.id,
            &(seq as i64),
            &(entry.epoch as i64),
            &entry.nonce,
            &entry.ciphertext,
            &record.writer_member_id,
            &entry.writer,
            &(entry.created_at as i64),
            &(entry.ciphertext.len() as i64),
        ],
    )?;
    Ok(seq)
}

pub(super) fn memories(
    db: &mut impl GenericClient,
    mesh_id: &str,
    after: u64,
    limit: usize,
) -> StoreResult<Vec<MemoryRecord>> {
    let rows = db.query(
        &format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE mesh_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"),
        &[&mesh_id, &(after as i64), &(limit as i64)],
    )?;
    Ok(rows.iter().map(row_to_memory).collect::<Result<_, _>>()?)
}

pub(super) fn memory(db: &mut impl GenericClient, mesh_id: &str, id: &str) -> StoreResult<Option<MemoryRecord>> {
    let row = db.query_opt(
        &format!("SELECT {MEMORY_COLUMNS} FROM memories WHERE mesh_id = $1 AND id = $2"),
        &[&mesh_id, &id],
    )?;
    Ok(row.as_ref().map(row_to_memory).transpose()?)
}

pub(super) fn forget(
    db: &mut impl GenericClient,
    mesh_id: &str,
    id: &str,
    actor: &str,
    now_ms: u64,
) -> StoreResult<Option<u64>> {
    lock_scope(db, mesh_id)?;
    let Some(memory) = memory(db, mesh_id, id)?.filter(|m| !m.entry.forgotten) else { return Ok(None) };
    let seq = next_memory_seq(db, mesh_id)?;
    db.execute(
        "UPDATE memories SET seq = $3, nonce = '', ciphertext = '', size = 0, forgotten_at = $4 WHERE mesh_id = $1 AND id = $2",
        &[&mesh_id, &id, &(seq as i64), &(now_ms as i64)],
    )?;
    audit::append(db, &memory_forgotten(mesh_id, id, &memory.writer_member_id, actor), now_ms)?;
    Ok(Some(seq))
}
