//! The writer thread: group commit of the hot-path writes (enqueue, acknowledge, expire, saved
//! peer state, session keys, audit entries), and the queue's reads.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use postgres::{Client, Config, GenericClient, Statement, Transaction};
use tokio::sync::mpsc;

use super::audit::{self, Scopes};
use super::rows::{BatchRows, RowStatements};
use super::{Job, MAX_BATCH, codes, notices};
use crate::protocol::{Priority, WrappedKey};
use crate::store::codes::DbCode as _;
use crate::store::{
    Delivery, Envelope, PeerStateRecord, QueuedEntry, ReceiptRecord, StoreError, StoreResult, WriteOp, WriteOutcome,
};

/// What the batch's jobs are told when its transaction could not begin or commit.
fn batch_error(error: &Arc<postgres::Error>) -> StoreError {
    StoreError::Batch(error.clone())
}

/// The hot path's statements, prepared once per connection (each use is then one round trip).
pub(super) struct Statements {
    rows: RowStatements,
    acknowledge: Statement,
    drop_bodies: Statement,
    /// A tracked message's receipts, one per recipient member.
    insert_receipts: Statement,
    /// A tracked entry's receipt, at its acknowledgement.
    receipt_delivered: Statement,
}

impl Statements {
    fn prepare(client: &mut Client) -> Result<Statements, postgres::Error> {
        Ok(Statements {
            rows: RowStatements::prepare(client)?,
            // One row per statement: a join with the acknowledged pairs may be planned as a scan
            // of the whole queue.
            acknowledge: client.prepare(
                "DELETE FROM queue WHERE member_id = $1 AND seq = $2
                 RETURNING body_seq, tracked, mesh_id, sender_member_id, message_id",
            )?,
            drop_bodies: client.prepare(
                "DELETE FROM bodies b WHERE b.seq = ANY($1::bigint[])
                 AND NOT EXISTS (SELECT 1 FROM queue WHERE body_seq = b.seq)",
            )?,
            // A sender reusing a message id of its own keeps the first message's receipts.
            insert_receipts: client.prepare(
                "INSERT INTO receipts (mesh_id, sender_member_id, message_id, member_id, queued_at)
                 SELECT $1, $2, $3, member_id, $5 FROM unnest($4::text[]) AS m(member_id) ON CONFLICT DO NOTHING",
            )?,
            receipt_delivered: client.prepare(
                "UPDATE receipts SET delivered_at = $5 WHERE mesh_id = $1 AND sender_member_id = $2
                 AND message_id = $3 AND member_id = $4 AND delivered_at IS NULL",
            )?,
        })
    }
}

/// The writer's connection and its prepared statements, made again after the database was lost.
struct Connection {
    client: Client,
    statements: Statements,
}

impl Connection {
    fn open(config: &Config) -> StoreResult<Connection> {
        Connection::with(super::connect(config)?)
    }

    fn with(mut client: Client) -> StoreResult<Connection> {
        let statements = Statements::prepare(&mut client)?;
        Ok(Connection { client, statements })
    }
}

/// How a batch's one transaction ended.
enum Batch {
    Committed(Vec<StoreResult<WriteOutcome>>),
    /// A job failed (or panicked): the transaction was rolled back, and the jobs are run again
    /// one transaction each, so that only that job fails.
    JobFailed,
    /// The transaction could not begin or commit: every job fails with this.
    Failed(Arc<postgres::Error>),
}

/// What one transaction writes besides its ops' own statements: audit rows and queue rows,
/// inserted several per statement at its end.
struct Deferred<'a> {
    scopes: Scopes,
    rows: BatchRows<'a>,
}

impl<'a> Deferred<'a> {
    /// Locks the scopes of `ops` (all at once, in sorted order: taken message by message, in each
    /// batch's own order, two broker processes whose batches touch the same meshes could
    /// deadlock), then draws the sequence numbers their messages need.
    fn begin(tx: &mut Transaction<'_>, statements: &Statements, ops: &[&'a WriteOp]) -> Result<Self, postgres::Error> {
        let mut scopes = Scopes::deferred();
        scopes.lock(tx, ops.iter().flat_map(|op| audit_scopes(op)))?;
        let rows = BatchRows::prepare(tx, &statements.rows, ops.iter().copied())?;
        Ok(Deferred { scopes, rows })
    }

    fn flush(&mut self, tx: &mut Transaction<'_>, statements: &Statements) -> Result<(), postgres::Error> {
        self.rows.flush(tx, &statements.rows)?;
        self.scopes.flush(tx)
    }
}

/// Runs `op` and catches a panic as the job's error.
fn apply_guarded<'a>(
    tx: &mut Transaction<'_>,
    statements: &Statements,
    deferred: &mut Deferred<'a>,
    op: &'a WriteOp,
) -> StoreResult<WriteOutcome> {
    std::panic::catch_unwind(AssertUnwindSafe(|| apply_write(tx, statements, deferred, op)))
        .unwrap_or_else(|_| Err(StoreError::Database("a write panicked inside the store".into())))
}

/// Every op of the batch in one transaction, without savepoints: a savepoint per job would
/// cost two more round trips for every message, and a job fails only when something is wrong.
fn run_batch(connection: &mut Connection, ops: &[&WriteOp]) -> Batch {
    let Connection { client, statements } = connection;
    let mut tx = match client.transaction() {
        Ok(tx) => tx,
        Err(error) => return Batch::Failed(Arc::new(error)),
    };
    let mut deferred = match Deferred::begin(&mut tx, statements, ops) {
        Ok(deferred) => deferred,
        Err(error) => return Batch::Failed(Arc::new(error)),
    };
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        match apply_guarded(&mut tx, statements, &mut deferred, op) {
            Ok(outcome) => outcomes.push(Ok(outcome)),
            Err(_) => return Batch::JobFailed,
        }
    }
    // A deferred row that fails names no job: run them one by one.
    if deferred.flush(&mut tx, statements).is_err() {
        return Batch::JobFailed;
    }

    if let Err(error) = notify_batch(&mut tx, ops.iter().copied().zip(&outcomes)) {
        return Batch::Failed(Arc::new(error));
    }
    match tx.commit() {
        Ok(()) => Batch::Committed(outcomes),
        Err(error) => Batch::Failed(Arc::new(error)),
    }
}

/// One op in a transaction of its own (after its batch failed because of some job).
fn run_alone(connection: &mut Connection, op: &WriteOp) -> StoreResult<WriteOutcome> {
    let Connection { client, statements } = connection;
    let mut tx = client.transaction()?;
    let mut deferred = Deferred::begin(&mut tx, statements, &[op])?;
    let outcome = Ok(apply_guarded(&mut tx, statements, &mut deferred, op)?);
    deferred.flush(&mut tx, statements)?;
    notify_batch(&mut tx, std::iter::once((op, &outcome)))?;
    tx.commit()?;
    outcome
}

/// Tells the other broker processes what the transaction queued or released (sent when it
/// commits; see `notices`).
fn notify_batch<'a>(
    tx: &mut Transaction<'_>,
    writes: impl Iterator<Item = (&'a WriteOp, &'a StoreResult<WriteOutcome>)>,
) -> Result<(), postgres::Error> {
    let bodies = notices::batch_bodies(writes);
    if !bodies.is_empty() {
        notices::notify(tx, &bodies)?;
    }
    Ok(())
}

pub(super) fn run_writer(client: Client, config: Config, mut jobs: mpsc::UnboundedReceiver<Job>, commits: &AtomicU64) {
    let mut connection = Connection::with(client);
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
        // A connection lost with the database (a restart, a failover) is made again for the
        // next batch; until then, jobs fail and their senders are told.
        if connection.as_ref().map_or(true, |c| c.client.is_closed()) {
            connection = Connection::open(&config);
        }
        let conn = match &mut connection {
            Ok(conn) => conn,
            Err(error) => {
                tracing::warn!(%error, "the store's writer cannot reach the database");
                stopping = fail_all(&mut batch, &*error);
                continue;
            }
        };
        let mut writes = Vec::with_capacity(batch.len());
        let mut flushes = Vec::new();
        for job in batch.drain(..) {
            match job {
                Job::Write(op, done) => writes.push((op, done)),
                Job::Flush(reply) => flushes.push(reply),
                Job::Stop => stopping = true,
            }
        }
        let ops: Vec<&WriteOp> = writes.iter().map(|(op, _)| op).collect();
        let (outcomes, commit): (Vec<StoreResult<WriteOutcome>>, Result<(), Arc<postgres::Error>>) =
            match run_batch(conn, &ops) {
                Batch::Committed(outcomes) => {
                    commits.fetch_add(1, Ordering::Relaxed);
                    (outcomes, Ok(()))
                }
                Batch::JobFailed => {
                    let outcomes: Vec<_> = ops.iter().map(|op| run_alone(conn, op)).collect();
                    commits.fetch_add(outcomes.iter().filter(|o| o.is_ok()).count() as u64, Ordering::Relaxed);
                    (outcomes, Ok(()))
                }
                Batch::Failed(error) => (ops.iter().map(|_| Err(batch_error(&error))).collect(), Err(error)),
            };
        for ((_, done), outcome) in writes.into_iter().zip(outcomes) {
            let Some(done) = done else { continue };
            if std::panic::catch_unwind(AssertUnwindSafe(|| done(outcome))).is_err() {
                tracing::error!("a store completion panicked");
            }
        }
        for reply in flushes {
            let _ = reply.send(commit.as_ref().map(|_| ()).map_err(batch_error));
        }
    }
}

/// The audit scopes `op` appends to.
fn audit_scopes(op: &WriteOp) -> impl Iterator<Item = &str> {
    let events = match op {
        WriteOp::Enqueue(message) => message.audit.as_slice(),
        WriteOp::Audit(events) => events.as_slice(),
        _ => &[],
    };
    events.iter().map(|event| event.scope.as_str())
}

/// Fails every job of `batch` with `error`; whether a stop was among them.
fn fail_all(batch: &mut Vec<Job>, error: &dyn std::fmt::Display) -> bool {
    let mut stopping = false;
    for job in batch.drain(..) {
        match job {
            Job::Write(_, Some(done)) => done(Err(StoreError::Database(error.to_string()))),
            Job::Write(_, None) => {}
            Job::Flush(reply) => {
                let _ = reply.send(Err(StoreError::Database(error.to_string())));
            }
            Job::Stop => stopping = true,
        }
    }
    stopping
}

fn apply_write<'a>(
    tx: &mut Transaction<'_>,
    statements: &Statements,
    deferred: &mut Deferred<'a>,
    op: &'a WriteOp,
) -> StoreResult<WriteOutcome> {
    match op {
        WriteOp::Enqueue(message) => {
            if let Some(fire) = &message.fire {
                super::schedules::advance(tx, &fire.schedule_id, fire.due_at, fire.next)?;
            }
            let slots = deferred.rows.place(message);
            audit::append_all_with(tx, &message.audit, message.envelope.created_at, &mut deferred.scopes)?;
            if message.envelope.tracked {
                let env = &message.envelope;
                let members: Vec<&str> = message.deliveries.iter().map(|d| d.member_id.as_str()).collect();
                let queued_at = env.created_at as i64;
                tx.execute(
                    &statements.insert_receipts,
                    &[&env.mesh_id, &env.sender_member_id, &env.message_id, &members, &queued_at],
                )?;
            }
            Ok(WriteOutcome::Enqueued(slots))
        }
        WriteOp::Acknowledge(entries) => acknowledge(tx, statements, entries).map(WriteOutcome::Changed),
        WriteOp::ReleaseSession { member_id, session_pubkey, .. } => {
            // It must reach the rows this batch placed before it too.
            deferred.flush(tx, statements)?;
            Ok(WriteOutcome::Changed(tx.execute(
                "UPDATE queue SET session_pubkey = NULL WHERE member_id = $1 AND session_pubkey = $2",
                &[member_id, session_pubkey],
            )?))
        }
        WriteOp::SavePeerState(state) => save_peer_state(tx, state).map(WriteOutcome::Changed),
        WriteOp::RecordSessionKey { mesh_id, member_id, pubkey, at_ms } => Ok(WriteOutcome::Changed(tx.execute(
            "INSERT INTO mesh_keys (mesh_id, pubkey, member_id, kind, first_seen_at)
             VALUES ($1, $2, $3, 'session', $4) ON CONFLICT DO NOTHING",
            &[mesh_id, pubkey, member_id, &(*at_ms as i64)],
        )?)),
        WriteOp::MarkRead { mesh_id, member_id, message_ids, at_ms } => Ok(WriteOutcome::Changed(tx.execute(
            "UPDATE receipts SET read_at = $4, delivered_at = COALESCE(delivered_at, $4)
             WHERE mesh_id = $1 AND member_id = $2 AND message_id = ANY($3::text[]) AND read_at IS NULL",
            &[mesh_id, member_id, message_ids, &(*at_ms as i64)],
        )?)),
        WriteOp::ExpireBefore(cutoff_ms) => {
            deferred.flush(tx, statements)?;
            expire(tx, *cutoff_ms).map(WriteOutcome::Changed)
        }
        WriteOp::Audit(events) => audit::append_all_with(tx, events, crate::protocol::now_ms(), &mut deferred.scopes)
            .map(|()| WriteOutcome::Changed(events.len() as u64)),
    }
}

fn acknowledge(db: &mut impl GenericClient, statements: &Statements, entries: &[(String, u64)]) -> StoreResult<u64> {
    let mut bodies = Vec::new();
    let mut removed = 0;
    let now = crate::protocol::now_ms() as i64;
    for (member_id, seq) in entries {
        if let Some(row) = db.query_opt(&statements.acknowledge, &[member_id, &(*seq as i64)])? {
            removed += 1;
            bodies.extend(row.try_get::<_, Option<i64>>(0)?);
            if row.try_get::<_, i64>(1)? != 0 {
                let (mesh_id, sender, message_id): (String, String, String) =
                    (row.try_get(2)?, row.try_get(3)?, row.try_get(4)?);
                db.execute(&statements.receipt_delivered, &[&mesh_id, &sender, &message_id, member_id, &now])?;
            }
        }
    }
    if !bodies.is_empty() {
        bodies.sort_unstable();
        bodies.dedup();
        db.execute(&statements.drop_bodies, &[&bodies])?;
    }
    Ok(removed)
}

fn expire(db: &mut impl GenericClient, cutoff_ms: u64) -> StoreResult<u64> {
    let cutoff = cutoff_ms as i64;
    let removed = db.execute("DELETE FROM queue WHERE created_at < $1", &[&cutoff])?;
    db.execute("DELETE FROM receipts WHERE queued_at < $1", &[&cutoff])?;
    db.execute(
        "DELETE FROM bodies WHERE created_at < $1 AND NOT EXISTS (SELECT 1 FROM queue WHERE body_seq = bodies.seq)",
        &[&cutoff],
    )?;
    Ok(removed)
}

/// Saves (or replaces) a member's state; returns 0 for a member that does not exist.
fn save_peer_state(db: &mut impl GenericClient, state: &PeerStateRecord) -> StoreResult<u64> {
    let groups = serde_json::to_string(&state.groups).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let stats = serde_json::to_string(&state.stats).map_err(|e| StoreError::Invalid(e.to_string()))?;
    Ok(db.execute(
        "INSERT INTO peer_state (member_id, mesh_id, groups, summary, display_name, stats, last_seen_at)
         SELECT $1, mesh_id, $2, $3, $4, $5, $6 FROM members WHERE id = $1
         ON CONFLICT (member_id) DO UPDATE SET groups = excluded.groups, summary = excluded.summary,
            display_name = excluded.display_name, stats = excluded.stats, last_seen_at = excluded.last_seen_at",
        &[&state.member_id, &groups, &state.summary, &state.display_name, &stats, &(state.last_seen_at as i64)],
    )?)
}

pub(super) fn pending_for_member(
    db: &mut impl GenericClient,
    member_id: &str,
    urgent: bool,
    after_seq: u64,
    limit: usize,
) -> StoreResult<Vec<QueuedEntry>> {
    let rows = db.query(
        "SELECT q.seq, q.message_id, q.mesh_id, q.session_pubkey, q.exclude_session, q.sender_member_id,
                q.sender_pubkey, q.target_spec, q.priority, q.enc,
                COALESCE(b.nonce, q.nonce), COALESCE(b.ciphertext, q.ciphertext),
                q.key_nonce, q.key_ciphertext, q.created_at, q.sender_member_pubkey, q.sender_session_sig,
                q.tracked
         FROM queue q LEFT JOIN bodies b ON b.seq = q.body_seq
         WHERE q.member_id = $1 AND q.seq > $2 AND (q.priority = $5) = $4 ORDER BY q.seq LIMIT $3",
        &[&member_id, &(after_seq as i64), &(limit as i64), &urgent, &Priority::Now.to_db()],
    )?;
    rows.iter()
        .map(|row| {
            let key_nonce: Option<String> = row.try_get(12)?;
            let key_ciphertext: Option<String> = row.try_get(13)?;
            Ok(QueuedEntry {
                seq: row.try_get::<_, i64>(0)? as u64,
                envelope: Arc::new(Envelope {
                    message_id: row.try_get(1)?,
                    mesh_id: row.try_get(2)?,
                    sender_member_id: row.try_get(5)?,
                    sender_member_pubkey: row.try_get(15)?,
                    sender_pubkey: row.try_get(6)?,
                    sender_session_sig: row.try_get(16)?,
                    target_spec: row.try_get(7)?,
                    priority: codes::read(row, 8, "queue.priority")?,
                    enc: codes::read(row, 9, "queue.enc")?,
                    nonce: row.try_get(10)?,
                    ciphertext: row.try_get::<_, Option<String>>(11)?.unwrap_or_default(),
                    created_at: row.try_get::<_, i64>(14)? as u64,
                    tracked: row.try_get::<_, i64>(17)? != 0,
                }),
                delivery: Delivery {
                    member_id: member_id.to_owned(),
                    session_pubkey: row.try_get(3)?,
                    exclude_session: row.try_get(4)?,
                    key: key_nonce.zip(key_ciphertext).map(|(nonce, ciphertext)| WrappedKey { nonce, ciphertext }),
                },
            })
        })
        .collect()
}

pub(super) fn receipts(
    db: &mut impl GenericClient,
    mesh_id: &str,
    sender_member_id: &str,
    message_id: &str,
) -> StoreResult<Vec<ReceiptRecord>> {
    let rows = db.query(
        "SELECT r.member_id, r.queued_at, r.delivered_at, r.read_at,
                EXISTS (SELECT 1 FROM queue q WHERE q.member_id = r.member_id AND q.message_id = r.message_id)
         FROM receipts r WHERE r.mesh_id = $1 AND r.sender_member_id = $2 AND r.message_id = $3
         ORDER BY r.member_id",
        &[&mesh_id, &sender_member_id, &message_id],
    )?;
    rows.iter()
        .map(|row| {
            Ok(ReceiptRecord {
                member_id: row.try_get(0)?,
                queued_at: row.try_get::<_, i64>(1)? as u64,
                delivered_at: row.try_get::<_, Option<i64>>(2)?.map(|at| at as u64),
                read_at: row.try_get::<_, Option<i64>>(3)?.map(|at| at as u64),
                queued: row.try_get(4)?,
            })
        })
        .collect()
}

pub(super) fn peer_states(db: &mut impl GenericClient, mesh_id: &str) -> StoreResult<Vec<PeerStateRecord>> {
    let rows = db.query(
        "SELECT member_id, groups, summary, display_name, stats, last_seen_at FROM peer_state WHERE mesh_id = $1",
        &[&mesh_id],
    )?;
    rows.iter()
        .map(|row| {
            Ok(PeerStateRecord {
                member_id: row.try_get(0)?,
                groups: codes::read_json(row, 1, "peer_state.groups")?,
                summary: row.try_get(2)?,
                display_name: row.try_get(3)?,
                stats: codes::read_json(row, 4, "peer_state.stats")?,
                last_seen_at: row.try_get::<_, i64>(5)? as u64,
            })
        })
        .collect()
}
