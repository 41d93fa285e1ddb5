//! The writer thread: group commit of every write, and the hot-path writes themselves
//! (enqueue, acknowledge, expire, saved peer state).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc;

use super::{BatchResult, Finisher, Job, MAX_BATCH, audit};
use crate::store::codes::DbCode as _;
use crate::store::{NewMessage, PeerStateRecord, QueueSlot, StoreError, StoreResult, WriteOp, WriteOutcome};

/// A job's own outcome, unless the batch's commit failed.
pub(super) fn after_commit<T>(outcome: StoreResult<T>, commit: &BatchResult) -> StoreResult<T> {
    match (outcome, commit) {
        (Ok(value), Ok(())) => Ok(value),
        (Err(error), _) => Err(error),
        (Ok(_), Err(error)) => Err(StoreError::Batch(error.clone())),
    }
}

pub(super) fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
    conn.execute_batch("SAVEPOINT job")?;
    // A bug in one job must not take the writer thread, and with it every later write, down:
    // its panic becomes that job's error and its changes are rolled back.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| f(conn)))
        .unwrap_or_else(|_| Err(StoreError::Database("a write panicked inside the store".into())));
    let end = if result.is_ok() { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
    conn.execute_batch(end)?;
    result
}

pub(super) fn run_writer(
    conn: Connection,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut next_seq: u64,
    commits: &AtomicU64,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut stopping = false;
    while !stopping {
        let Some(first) = jobs.blocking_recv() else { break };
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        if let Err(error) = conn.execute_batch("BEGIN IMMEDIATE") {
            let error = Arc::new(error);
            for job in batch.drain(..) {
                match job {
                    Job::Write(_, Some(done)) => done(Err(StoreError::Batch(error.clone()))),
                    Job::Call(call) => (call.fail)(StoreError::Batch(error.clone())),
                    Job::Write(_, None) => {}
                    Job::Stop => stopping = true,
                }
            }
            continue;
        }
        let mut finishers: Vec<Finisher> = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            match job {
                Job::Write(op, done) => {
                    let outcome = in_savepoint(&conn, |conn| apply_write(conn, op, &mut next_seq));
                    finishers.push(Box::new(move |commit: &BatchResult| {
                        if let Some(done) = done {
                            done(after_commit(outcome, commit));
                        }
                    }));
                }
                Job::Call(call) => finishers.push((call.run)(&conn)),
                Job::Stop => stopping = true,
            }
        }
        let commit: BatchResult = conn.execute_batch("COMMIT").map_err(Arc::new);
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        } else {
            commits.fetch_add(1, Ordering::Relaxed);
        }
        for finish in finishers {
            if std::panic::catch_unwind(AssertUnwindSafe(|| finish(&commit))).is_err() {
                tracing::error!("a store completion panicked");
            }
        }
    }
}

fn apply_write(conn: &Connection, op: WriteOp, next_seq: &mut u64) -> StoreResult<WriteOutcome> {
    match op {
        WriteOp::Enqueue(message) => {
            if let Some(fire) = &message.fire {
                super::schedules::advance(conn, &fire.schedule_id, fire.due_at, fire.next)?;
            }
            enqueue(conn, &message, next_seq).map(WriteOutcome::Enqueued)
        }
        WriteOp::Acknowledge(entries) => acknowledge(conn, &entries).map(WriteOutcome::Changed),
        WriteOp::ReleaseSession { member_id, session_pubkey, .. } => conn
            .prepare_cached("UPDATE queue SET session_pubkey = NULL WHERE member_id = ?1 AND session_pubkey = ?2")
            .and_then(|mut stmt| stmt.execute(params![member_id, session_pubkey]))
            .map(|n| WriteOutcome::Changed(n as u64))
            .map_err(StoreError::from),
        WriteOp::SavePeerState(state) => save_peer_state(conn, &state).map(WriteOutcome::Changed),
        WriteOp::RecordSessionKey { mesh_id, member_id, pubkey, at_ms } => conn
            .prepare_cached(
                "INSERT OR IGNORE INTO mesh_keys (mesh_id, pubkey, member_id, kind, first_seen_at)
                 VALUES (?1, ?2, ?3, 'session', ?4)",
            )
            .and_then(|mut stmt| stmt.execute(params![mesh_id, pubkey, member_id, at_ms as i64]))
            .map(|n| WriteOutcome::Changed(n as u64))
            .map_err(StoreError::from),
        WriteOp::MarkRead { mesh_id, member_id, message_ids, at_ms } => {
            mark_read(conn, &mesh_id, &member_id, &message_ids, at_ms).map(WriteOutcome::Changed)
        }
        WriteOp::ExpireBefore(cutoff_ms) => expire(conn, cutoff_ms).map(WriteOutcome::Changed),
        WriteOp::Audit(events) => audit::append_all(conn, &events, crate::protocol::now_ms())
            .map(|()| WriteOutcome::Changed(events.len() as u64)),
    }
}

/// Assigns sequence numbers in commit order (one writer): `after` is always 0.
fn enqueue(conn: &Connection, message: &NewMessage, next_seq: &mut u64) -> StoreResult<Vec<QueueSlot>> {
    let env = &message.envelope;
    let shared_body = if message.deliveries.len() > 1 {
        let body_seq = *next_seq;
        *next_seq += 1;
        conn.prepare_cached("INSERT INTO bodies (seq, nonce, ciphertext, created_at) VALUES (?1, ?2, ?3, ?4)")
            .and_then(|mut stmt| {
                stmt.execute(params![body_seq as i64, env.nonce, env.ciphertext, env.created_at as i64])
            })?;
        Some(body_seq)
    } else {
        None
    };
    let mut insert = conn.prepare_cached(
        "INSERT INTO queue (member_id, seq, message_id, mesh_id, session_pubkey, exclude_session, sender_member_id,
                sender_member_pubkey, sender_pubkey, sender_session_sig, target_spec, priority, enc, nonce, ciphertext,
                body_seq, key_nonce, key_ciphertext, created_at, tracked)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)",
    )?;
    let mut seqs = Vec::with_capacity(message.deliveries.len());
    for delivery in &message.deliveries {
        let seq = *next_seq;
        *next_seq += 1;
        let (inline_nonce, inline_ciphertext) = match shared_body {
            Some(_) => ("", None),
            None => (env.nonce.as_str(), Some(env.ciphertext.as_str())),
        };
        insert.execute(params![
            delivery.member_id,
            seq as i64,
            env.message_id,
            env.mesh_id,
            delivery.session_pubkey,
            delivery.exclude_session,
            env.sender_member_id,
            env.sender_member_pubkey,
            env.sender_pubkey,
            env.sender_session_sig,
            env.target_spec,
            env.priority.to_db(),
            env.enc.to_db(),
            inline_nonce,
            inline_ciphertext,
            shared_body.map(|s| s as i64),
            delivery.key.as_ref().map(|k| k.nonce.as_str()),
            delivery.key.as_ref().map(|k| k.ciphertext.as_str()),
            env.created_at as i64,
            env.tracked,
        ])?;
        seqs.push(QueueSlot { seq, after: 0 });
    }
    if env.tracked {
        // A sender reusing a message id of its own keeps the first message's receipts.
        let mut receipt = conn.prepare_cached(
            "INSERT OR IGNORE INTO receipts (mesh_id, sender_member_id, message_id, member_id, queued_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for delivery in &message.deliveries {
            receipt.execute(params![
                env.mesh_id,
                env.sender_member_id,
                env.message_id,
                delivery.member_id,
                env.created_at as i64
            ])?;
        }
    }
    audit::append_all(conn, &message.audit, env.created_at)?;
    Ok(seqs)
}

fn acknowledge(conn: &Connection, entries: &[(String, u64)]) -> StoreResult<u64> {
    let mut delete = conn.prepare_cached(
        "DELETE FROM queue WHERE member_id = ?1 AND seq = ?2
         RETURNING body_seq, tracked, mesh_id, sender_member_id, message_id",
    )?;
    let mut bodies = Vec::new();
    let mut removed = 0;
    let now = crate::protocol::now_ms() as i64;
    for (member_id, seq) in entries {
        let deleted = delete
            .query_row(params![member_id, *seq as i64], |row| {
                let body: Option<i64> = row.get(0)?;
                let receipt: Option<(String, String, String)> =
                    if row.get::<_, i64>(1)? != 0 { Some((row.get(2)?, row.get(3)?, row.get(4)?)) } else { None };
                Ok((body, receipt))
            })
            .optional()?;
        let Some((body, receipt)) = deleted else { continue };
        removed += 1;
        bodies.extend(body);
        if let Some((mesh_id, sender_member_id, message_id)) = receipt {
            conn.prepare_cached(
                "UPDATE receipts SET delivered_at = ?5 WHERE mesh_id = ?1 AND sender_member_id = ?2
                 AND message_id = ?3 AND member_id = ?4 AND delivered_at IS NULL",
            )?
            .execute(params![mesh_id, sender_member_id, message_id, member_id, now])?;
        }
    }
    let mut drop_body = conn
        .prepare_cached("DELETE FROM bodies WHERE seq = ?1 AND NOT EXISTS (SELECT 1 FROM queue WHERE body_seq = ?1)")?;
    bodies.sort_unstable();
    bodies.dedup();
    for body in bodies {
        drop_body.execute([body])?;
    }
    Ok(removed)
}

/// Stamps the receipts of `message_ids` for `member_id` read (and delivered, if not yet).
fn mark_read(
    conn: &Connection,
    mesh_id: &str,
    member_id: &str,
    message_ids: &[String],
    at_ms: u64,
) -> StoreResult<u64> {
    let mut update = conn.prepare_cached(
        "UPDATE receipts SET read_at = ?4, delivered_at = COALESCE(delivered_at, ?4)
         WHERE mesh_id = ?1 AND member_id = ?2 AND message_id = ?3 AND read_at IS NULL",
    )?;
    let mut changed = 0;
    for message_id in message_ids {
        changed += update.execute(params![mesh_id, member_id, message_id, at_ms as i64])? as u64;
    }
    Ok(changed)
}

fn expire(conn: &Connection, cutoff_ms: u64) -> StoreResult<u64> {
    let removed = conn.execute("DELETE FROM queue WHERE created_at < ?1", [cutoff_ms as i64])?;
    conn.execute("DELETE FROM receipts WHERE queued_at < ?1", [cutoff_ms as i64])?;
    conn.execute(
        "DELETE FROM bodies WHERE created_at < ?1 AND NOT EXISTS (SELECT 1 FROM queue WHERE body_seq = bodies.seq)",
        [cutoff_ms as i64],
    )?;
    Ok(removed as u64)
}

/// Saves (or replaces) a member's state; returns 0 for a member that does not exist.
fn save_peer_state(conn: &Connection, state: &PeerStateRecord) -> StoreResult<u64> {
    let groups = serde_json::to_string(&state.groups).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let stats = serde_json::to_string(&state.stats).map_err(|e| StoreError::Invalid(e.to_string()))?;
    conn.prepare_cached(
        "INSERT INTO peer_state (member_id, mesh_id, groups, summary, display_name, stats, last_seen_at)
         SELECT ?1, mesh_id, ?2, ?3, ?4, ?5, ?6 FROM members WHERE id = ?1
         ON CONFLICT (member_id) DO UPDATE SET groups = excluded.groups, summary = excluded.summary,
            display_name = excluded.display_name, stats = excluded.stats, last_seen_at = excluded.last_seen_at",
    )
    .and_then(|mut stmt| {
        stmt.execute(params![
            state.member_id,
            groups,
            state.summary,
            state.display_name,
            stats,
            state.last_seen_at as i64
        ])
    })
    .map(|saved| saved as u64)
    .map_err(StoreError::from)
}
