//! Scheduled messages in SQLite: created and cancelled with their audit entries, listed, and
//! found when due. Firing one is a queue write that also `advance`s its schedule.

use rusqlite::{Connection, Row, params};
use serde_json::json;

use super::{audit, codes, conflict_on_duplicate};
use crate::store::codes::DbCode as _;
use crate::store::records::{SCHEDULE_COLUMNS, event, schedule_created};
use crate::store::{ScheduleRecord, StoreError, StoreResult};

pub(super) fn create(
    conn: &Connection,
    schedule: &ScheduleRecord,
    max_per_member: u64,
    now_ms: u64,
) -> StoreResult<()> {
    let pending: i64 = conn.query_row(
        "SELECT COUNT(*) FROM schedules WHERE mesh_id = ?1 AND sender_member_id = ?2",
        params![schedule.mesh_id, schedule.sender_member_id],
        |row| row.get(0),
    )?;
    if pending as u64 >= max_per_member {
        return Err(StoreError::Conflict("schedule_limit".into()));
    }
    let deliveries = serde_json::to_string(&schedule.deliveries).map_err(|e| StoreError::Invalid(e.to_string()))?;
    conn.execute(
        &format!(
            "INSERT INTO schedules ({SCHEDULE_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        ),
        params![
            schedule.id,
            schedule.mesh_id,
            schedule.sender_member_id,
            schedule.sender_member_pubkey,
            schedule.sender_pubkey,
            schedule.sender_session_sig,
            schedule.target_spec,
            schedule.priority.to_db(),
            schedule.enc.to_db(),
            schedule.nonce,
            schedule.ciphertext,
            deliveries,
            schedule.cron,
            schedule.tz,
            schedule.next_fire_at as i64,
            schedule.fired as i64,
            schedule.created_at as i64,
        ],
    )
    .map_err(conflict_on_duplicate("a schedule with this id already exists"))?;
    audit::append(conn, &schedule_created(schedule), now_ms)
}

pub(super) fn of_mesh(
    conn: &Connection,
    mesh_id: &str,
    sender_member_id: Option<&str>,
) -> rusqlite::Result<Vec<ScheduleRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE mesh_id = ?1 AND (?2 IS NULL OR sender_member_id = ?2)
         ORDER BY next_fire_at, id"
    ))?;
    stmt.query_map(params![mesh_id, sender_member_id], row_to_schedule)?.collect()
}

pub(super) fn due(conn: &Connection, now_ms: u64, limit: usize) -> rusqlite::Result<Vec<ScheduleRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE next_fire_at <= ?1 ORDER BY next_fire_at, id LIMIT ?2"
    ))?;
    stmt.query_map(params![now_ms as i64, limit as i64], row_to_schedule)?.collect()
}

pub(super) fn cancel(
    conn: &Connection,
    mesh_id: &str,
    schedule_id: &str,
    actor: Option<&str>,
    now_ms: u64,
) -> StoreResult<bool> {
    let removed =
        conn.execute("DELETE FROM schedules WHERE mesh_id = ?1 AND id = ?2", params![mesh_id, schedule_id])?;
    if removed == 0 {
        return Ok(false);
    }
    audit::append(conn, &event(mesh_id, "schedule_cancelled", actor, json!({"scheduleId": schedule_id})), now_ms)?;
    Ok(true)
}

/// Moves a schedule past the occurrence `due_at` being queued (deletes it when `next` is none);
/// `Conflict` when it is no longer at that occurrence (fired already, or cancelled).
pub(super) fn advance(conn: &Connection, schedule_id: &str, due_at: u64, next: Option<u64>) -> StoreResult<()> {
    let moved = match next {
        Some(next) => conn
            .prepare_cached(
                "UPDATE schedules SET next_fire_at = ?3, fired = fired + 1 WHERE id = ?1 AND next_fire_at = ?2",
            )?
            .execute(params![schedule_id, due_at as i64, next as i64])?,
        None => conn
            .prepare_cached("DELETE FROM schedules WHERE id = ?1 AND next_fire_at = ?2")?
            .execute(params![schedule_id, due_at as i64])?,
    };
    if moved == 0 {
        return Err(StoreError::Conflict(format!("schedule {schedule_id} already fired at {due_at} or was cancelled")));
    }
    Ok(())
}

fn row_to_schedule(row: &Row<'_>) -> rusqlite::Result<ScheduleRecord> {
    Ok(ScheduleRecord {
        id: row.get(0)?,
        mesh_id: row.get(1)?,
        sender_member_id: row.get(2)?,
        sender_member_pubkey: row.get(3)?,
        sender_pubkey: row.get(4)?,
        sender_session_sig: row.get(5)?,
        target_spec: row.get(6)?,
        priority: codes::read(row, 7, "schedules.priority")?,
        enc: codes::read(row, 8, "schedules.enc")?,
        nonce: row.get(9)?,
        ciphertext: row.get(10)?,
        deliveries: codes::read_json(row, 11)?,
        cron: row.get(12)?,
        tz: row.get(13)?,
        next_fire_at: row.get::<_, i64>(14)? as u64,
        fired: row.get::<_, i64>(15)? as u64,
        created_at: row.get::<_, i64>(16)? as u64,
    })
}
