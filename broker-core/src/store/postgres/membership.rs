//! The membership log's SQL: appended in the transaction that changes a mesh's members, under
//! the mesh's scope lock that change already holds (so two processes never append at one seq).

use postgres::GenericClient;

use crate::membership::{Change, LogEntry};
use crate::meshkey::{EpochRecord, Wrap};
use crate::store::records::{
    check_next_epoch, epoch_created, json_text, key_history_entry, next_log_entry, stored_json,
};
use crate::store::{EndorsementRecord, StoreResult};

/// The newest entry of the mesh's log: its seq and hash.
fn tail(db: &mut impl GenericClient, mesh_id: &str) -> StoreResult<Option<(u64, String)>> {
    let tail =
        db.query_opt("SELECT seq, hash FROM membership_log WHERE mesh_id = $1 ORDER BY seq DESC LIMIT 1", &[&mesh_id])?;
    Ok(match tail {
        Some(row) => Some((row.try_get::<_, i64>(0)? as u64, row.try_get(1)?)),
        None => None,
    })
}

fn insert(db: &mut impl GenericClient, mesh_id: &str, entry: &LogEntry) -> StoreResult<()> {
    db.execute(
        "INSERT INTO membership_log (mesh_id, seq, at, prev, change, hash) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&mesh_id, &(entry.seq as i64), &(entry.at as i64), &entry.prev, &json_text(&entry.change)?, &entry.hash],
    )?;
    Ok(())
}

/// Appends `change` to the mesh's log (`records::next_log_entry`).
pub(super) fn append(db: &mut impl GenericClient, mesh_id: &str, change: Change, now_ms: u64) -> StoreResult<()> {
    match next_log_entry(tail(db, mesh_id)?, change, now_ms)? {
        Some(entry) => insert(db, mesh_id, &entry),
        None => Ok(()),
    }
}

/// Appends an admin's key history setting (`records::key_history_entry`), under the mesh's lock.
pub(super) fn append_key_history(
    db: &mut impl GenericClient,
    mesh_id: &str,
    change: &Change,
    actor: &str,
    now_ms: u64,
) -> StoreResult<LogEntry> {
    super::lock_scope(db, mesh_id)?;
    let (entry, audit) = key_history_entry(mesh_id, tail(db, mesh_id)?, change, actor, now_ms)?;
    insert(db, mesh_id, &entry)?;
    super::audit::append(db, &audit, now_ms)?;
    Ok(entry)
}

pub(super) fn log(db: &mut impl GenericClient, mesh_id: &str, after: u64, limit: usize) -> StoreResult<Vec<LogEntry>> {
    let rows = db.query(
        "SELECT seq, at, prev, change, hash FROM membership_log WHERE mesh_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        &[&mesh_id, &(after as i64), &(limit as i64)],
    )?;
    rows.iter()
        .map(|row| {
            Ok(LogEntry {
                seq: row.try_get::<_, i64>(0)? as u64,
                at: row.try_get::<_, i64>(1)? as u64,
                prev: row.try_get(2)?,
                change: stored_json("membership_log.change", row.try_get(3)?)?,
                hash: row.try_get(4)?,
            })
        })
        .collect()
}

pub(super) fn add_endorsements(db: &mut impl GenericClient, endorsements: &[EndorsementRecord]) -> StoreResult<()> {
    for e in endorsements {
        db.execute(
            "INSERT INTO endorsements (mesh_id, device_key, sponsor, signature, created_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (mesh_id, device_key) DO UPDATE SET sponsor = excluded.sponsor, signature = excluded.signature,
                                                            created_at = excluded.created_at",
            &[&e.mesh_id, &e.device_key, &e.sponsor, &e.signature, &(e.created_at as i64)],
        )?;
    }
    Ok(())
}

pub(super) fn endorsement(
    db: &mut impl GenericClient,
    mesh_id: &str,
    device_key: &str,
) -> StoreResult<Option<EndorsementRecord>> {
    let row = db.query_opt(
        "SELECT mesh_id, device_key, sponsor, signature, created_at FROM endorsements WHERE mesh_id = $1 AND device_key = $2",
        &[&mesh_id, &device_key],
    )?;
    row.map(|row| {
        Ok(EndorsementRecord {
            mesh_id: row.try_get(0)?,
            device_key: row.try_get(1)?,
            sponsor: row.try_get(2)?,
            signature: row.try_get(3)?,
            created_at: row.try_get::<_, i64>(4)? as u64,
        })
    })
    .transpose()
}

pub(super) fn epochs(db: &mut impl GenericClient, mesh_id: &str) -> StoreResult<Vec<EpochRecord>> {
    db.query("SELECT record FROM mesh_epochs WHERE mesh_id = $1 ORDER BY epoch", &[&mesh_id])?
        .iter()
        .map(|row| stored_json("mesh_epochs.record", row.try_get(0)?))
        .collect()
}

pub(super) fn create_epoch(
    db: &mut impl GenericClient,
    mesh_id: &str,
    record: &EpochRecord,
    wraps: &[Wrap],
    now_ms: u64,
) -> StoreResult<()> {
    // The mesh's lock: of two processes making the same epoch, one sees the other's.
    super::lock_scope(db, mesh_id)?;
    let newest: i64 =
        db.query_one("SELECT COALESCE(MAX(epoch), 0) FROM mesh_epochs WHERE mesh_id = $1", &[&mesh_id])?.try_get(0)?;
    check_next_epoch(newest as u64, record)?;
    db.execute(
        "INSERT INTO mesh_epochs (mesh_id, epoch, record, created_at) VALUES ($1, $2, $3, $4)",
        &[&mesh_id, &(record.epoch as i64), &json_text(record)?, &(now_ms as i64)],
    )?;
    add_wraps(db, mesh_id, wraps, now_ms)?;
    super::audit::append(db, &epoch_created(mesh_id, record), now_ms)
}

pub(super) fn add_wraps(db: &mut impl GenericClient, mesh_id: &str, wraps: &[Wrap], now_ms: u64) -> StoreResult<()> {
    for w in wraps {
        db.execute(
            "INSERT INTO epoch_wraps (mesh_id, epoch, recipient, wrapper, nonce, ciphertext, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            &[&mesh_id, &(w.epoch as i64), &w.recipient, &w.wrapper, &w.nonce, &w.ciphertext, &(now_ms as i64)],
        )?;
    }
    Ok(())
}

pub(super) fn wraps_for(db: &mut impl GenericClient, mesh_id: &str, recipient: &str) -> StoreResult<Vec<Wrap>> {
    db.query(
        "SELECT epoch, recipient, wrapper, nonce, ciphertext FROM epoch_wraps WHERE mesh_id = $1 AND recipient = $2
         ORDER BY epoch",
        &[&mesh_id, &recipient],
    )?
    .iter()
    .map(|row| {
        Ok(Wrap {
            epoch: row.try_get::<_, i64>(0)? as u64,
            recipient: row.try_get(1)?,
            wrapper: row.try_get(2)?,
            nonce: row.try_get(3)?,
            ciphertext: row.try_get(4)?,
        })
    })
    .collect()
}

pub(super) fn wrapped(db: &mut impl GenericClient, mesh_id: &str, epoch: u64) -> StoreResult<Vec<String>> {
    db.query("SELECT recipient FROM epoch_wraps WHERE mesh_id = $1 AND epoch = $2", &[&mesh_id, &(epoch as i64)])?
        .iter()
        .map(|row| Ok(row.try_get(0)?))
        .collect()
}
