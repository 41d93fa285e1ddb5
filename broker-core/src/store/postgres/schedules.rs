//! Scheduled messages in Postgres: created and cancelled with their audit entries (under the
//! mesh's lock), listed, and found when due. Firing one is a queue write that also `advance`s
//! its schedule.

use postgres::{GenericClient, Row};
use serde_json::json;

use super::{audit, codes, conflict_on_duplicate};
use crate::store::codes::DbCode as _;
use crate::store::records::{SCHEDULE_COLUMNS, event, schedule_created};
use crate::store::{ScheduleRecord, StoreError, StoreResult};

pub(super) fn create(
    db: &mut impl GenericClient,
    schedule: &ScheduleRecord,
    max_per_member: u64,
    now_ms: u64,
) -> StoreResult<()> {
    // The mesh's lock first: two schedules of one member at once cannot both pass the limit.
    super::lock_scope(db, &schedule.mesh_id)?;
    let pending: i64 = db
        .query_one(
            "SELECT COUNT(*) FROM schedules WHERE mesh_id = $1 AND sender_member_id = $2",
            &[&schedule.mesh_id, &schedule.sender_member_id],
        )?
        .try_get(0)?;
    if pending as u64 >= max_per_member {
        return Err(StoreError::Conflict("schedule_limit".into()));
    }
    let deliveries = serde_json::to_string(&schedule.deliveries).map_err(|e| StoreError::Invalid(e.to_string()))?;
    db.execute(
        &format!(
            "INSERT INTO schedules ({SCHEDULE_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
        ),
        &[
            &schedule.id,
            &schedule.mesh_id,
            &schedule.sender_member_id,
            &schedule.sender_member_pubkey,
            &schedule.sender_pubkey,
            &schedule.sender_session_sig,
            &schedule.target_spec,
            &schedule.priority.to_db(),
            &schedule.enc.to_db(),
            &schedule.nonce,
            &schedule.ciphertext,
            &deliveries,
            &schedule.cron,
            &schedule.tz,
            &(schedule.next_fire_at as i64),
            &(schedule.fired as i64),
            &(schedule.created_at as i64),
        ],
    )
    .map_err(conflict_on_duplicate("a schedule with this id already exists"))?;
    audit::append(db, &schedule_created(schedule), now_ms)
}

pub(super) fn of_mesh(
    db: &mut impl GenericClient,
    mesh_id: &str,
    sender_member_id: Option<&str>,
) -> StoreResult<Vec<ScheduleRecord>> {
    let rows = db.query(
        &format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE mesh_id = $1 AND ($2::text IS NULL OR sender_member_id = $2)
             ORDER BY next_fire_at, id"
        ),
        &[&mesh_id, &sender_member_id],
    )?;
    rows.iter().map(row_to_schedule).collect()
}

pub(super) fn due(db: &mut impl GenericClient, now_ms: u64, limit: usize) -> StoreResult<Vec<ScheduleRecord>> {
    let rows = db.query(
        &format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE next_fire_at <= $1 ORDER BY next_fire_at, id LIMIT $2"
        ),
        &[&(now_ms as i64), &(limit as i64)],
    )?;
    rows.iter().map(row_to_schedule).collect()
}

pub(super) fn cancel(
    db: &mut impl GenericClient,
    mesh_id: &str,
    schedule_id: &str,
    actor: Option<&str>,
    now_ms: u64,
) -> StoreResult<bool> {
    let removed = db.execute("DELETE FROM schedules WHERE mesh_id = $1 AND id = $2", &[&mesh_id, &schedule_id])?;
    if removed == 0 {
        return Ok(false);
    }
    audit::append(db, &event(mesh_id, "schedule_cancelled", actor, json!({"scheduleId": schedule_id})), now_ms)?;
    Ok(true)
}

/// Moves a schedule past the occurrence `due_at` being queued (deletes it when `next` is none);
/// `Conflict` when it is no longer at that occurrence (another replica fired it, or it was
/// cancelled). The row lock makes a second replica wait for the first one's commit, then find
/// nothing to move.
pub(super) fn advance(
    db: &mut impl GenericClient,
    schedule_id: &str,
    due_at: u64,
    next: Option<u64>,
) -> StoreResult<()> {
    let moved = match next {
        Some(next) => db.execute(
            "UPDATE schedules SET next_fire_at = $3, fired = fired + 1 WHERE id = $1 AND next_fire_at = $2",
            &[&schedule_id, &(due_at as i64), &(next as i64)],
        )?,
        None => {
            db.execute("DELETE FROM schedules WHERE id = $1 AND next_fire_at = $2", &[&schedule_id, &(due_at as i64)])?
        }
    };
    if moved == 0 {
        return Err(StoreError::Conflict(format!("schedule {schedule_id} already fired at {due_at} or was cancelled")));
    }
    Ok(())
}

fn row_to_schedule(row: &Row) -> StoreResult<ScheduleRecord> {
    Ok(ScheduleRecord {
        id: row.try_get(0)?,
        mesh_id: row.try_get(1)?,
        sender_member_id: row.try_get(2)?,
        sender_member_pubkey: row.try_get(3)?,
        sender_pubkey: row.try_get(4)?,
        sender_session_sig: row.try_get(5)?,
        target_spec: row.try_get(6)?,
        priority: codes::read(row, 7, "schedules.priority")?,
        enc: codes::read(row, 8, "schedules.enc")?,
        nonce: row.try_get(9)?,
        ciphertext: row.try_get(10)?,
        deliveries: codes::read_json(row, 11, "schedules.deliveries")?,
        cron: row.try_get(12)?,
        tz: row.try_get(13)?,
        next_fire_at: row.try_get::<_, i64>(14)? as u64,
        fired: row.try_get::<_, i64>(15)? as u64,
        created_at: row.try_get::<_, i64>(16)? as u64,
    })
}
