//! The audit chain in SQLite: append inside the caller's transaction, query, verify.
//!
//! Appends read the scope's tail inside the write transaction. SQLite admits one writer at a
//! time across processes (`BEGIN IMMEDIATE`), so two writers — the broker and an operator
//! command — can never both extend the same tail: the chain cannot fork.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::crypto::{AUDIT_GENESIS, audit_hash, canonical_json};
use crate::protocol::iso8601_ms;
use crate::store::{AuditEntry, AuditEvent, AuditVerification, StoreResult};

pub(super) fn append(conn: &Connection, event: &AuditEvent, now_ms: u64) -> StoreResult<()> {
    let prev: Option<String> = conn
        .prepare_cached("SELECT hash FROM audit_log WHERE mesh_id = ?1 ORDER BY id DESC LIMIT 1")
        .and_then(|mut stmt| stmt.query_row([&event.scope], |row| row.get(0)).optional())?;
    let prev = prev.unwrap_or_else(|| AUDIT_GENESIS.to_owned());
    let created_at = iso8601_ms(now_ms);
    let hash = audit_hash(&prev, &event.scope, &event.event_type, event.actor.as_deref(), &event.payload, &created_at);
    conn.prepare_cached(
        "INSERT INTO audit_log (mesh_id, event_type, actor, payload, prev_hash, hash, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            event.scope,
            event.event_type,
            event.actor,
            canonical_json(&event.payload),
            prev,
            hash,
            created_at
        ])
    })?;
    Ok(())
}

pub(super) fn append_all(conn: &Connection, events: &[AuditEvent], now_ms: u64) -> StoreResult<()> {
    events.iter().try_for_each(|event| append(conn, event, now_ms))
}

fn entry_from_row(row: &Row<'_>) -> rusqlite::Result<AuditEntry> {
    let payload: String = row.get(4)?;
    Ok(AuditEntry {
        id: row.get(0)?,
        scope: row.get(1)?,
        event_type: row.get(2)?,
        actor: row.get(3)?,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::String(payload)),
        prev_hash: row.get(5)?,
        hash: row.get(6)?,
        created_at: row.get(7)?,
    })
}

const COLUMNS: &str = "id, mesh_id, event_type, actor, payload, prev_hash, hash, created_at";

pub(super) fn entries(
    conn: &Connection,
    scope: &str,
    event_type: Option<&str>,
    limit: u32,
    offset: u32,
) -> rusqlite::Result<(Vec<AuditEntry>, u64)> {
    let total: i64 = conn.query_row(
        "SELECT COUNT(*) FROM audit_log WHERE mesh_id = ?1 AND (?2 IS NULL OR event_type = ?2)",
        params![scope, event_type],
        |row| row.get(0),
    )?;
    let mut stmt = conn.prepare(&format!(
        "SELECT {COLUMNS} FROM audit_log WHERE mesh_id = ?1 AND (?2 IS NULL OR event_type = ?2)
         ORDER BY id DESC LIMIT ?3 OFFSET ?4"
    ))?;
    let rows =
        stmt.query_map(params![scope, event_type, limit, offset], entry_from_row)?.collect::<Result<Vec<_>, _>>()?;
    Ok((rows, total as u64))
}

/// Walks the chain in order; the first entry whose link or hash does not check out is reported.
pub(super) fn verify(conn: &Connection, scope: &str) -> rusqlite::Result<AuditVerification> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM audit_log WHERE mesh_id = ?1 ORDER BY id"))?;
    let mut rows = stmt.query([scope])?;
    let mut expected_prev = AUDIT_GENESIS.to_owned();
    let mut count = 0u64;
    while let Some(row) = rows.next()? {
        count += 1;
        let id: i64 = row.get(0)?;
        let stored_payload: String = row.get(4)?;
        let entry = entry_from_row(row)?;
        let recomputed = entry.recomputed_hash();
        let payload_intact = serde_json::from_str::<serde_json::Value>(&stored_payload).is_ok();
        if entry.prev_hash != expected_prev || entry.hash != recomputed || !payload_intact {
            return Ok(AuditVerification { valid: false, entries: count, broken_at: Some(id) });
        }
        expected_prev = entry.hash;
    }
    Ok(AuditVerification { valid: true, entries: count, broken_at: None })
}
