//! The embedded SQLite store: one writer thread doing group commit, a small pool of readers.
//!
//! Every write goes through the writer thread. It takes whatever jobs are waiting (up to
//! [`MAX_BATCH`]), runs each inside its own savepoint of one `BEGIN IMMEDIATE` transaction, commits
//! once, then runs the jobs' completions in order. With `Durability::Full` that commit is one
//! fsync of the WAL per batch, however many messages the batch holds: under load, batches grow
//! and the fsync cost is shared. Readers use their own connections (WAL lets them read while
//! the writer writes).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use rusqlite::{Connection, OptionalExtension, Row, params};
use tokio::sync::mpsc;

use super::{
    Completion, Delivery, Envelope, InviteRecord, MIGRATIONS, MemberRecord, MeshRecord, NewMessage, PeerStateRecord,
    QueuedEntry, Redemption, Store, StoreError, StoreResult, WriteOp, WriteOutcome,
};
use crate::protocol::{Enc, Priority, Role, WrappedKey};

/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 4096;
/// Idle reader connections kept open.
const READER_POOL: usize = 4;
/// How long a connection waits for another process's write lock before failing.
const BUSY_TIMEOUT_MS: u64 = 5_000;

/// What a commit guarantees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: a committed write survives a process crash and a power loss.
    #[default]
    Full,
    /// `synchronous=NORMAL`: a committed write survives a process crash; the last commits
    /// before a power loss may be lost.
    Normal,
}

impl std::str::FromStr for Durability {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "full" => Ok(Durability::Full),
            "normal" => Ok(Durability::Normal),
            other => Err(format!("unknown durability {other:?}: expected full or normal")),
        }
    }
}

fn db_error(error: rusqlite::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

/// Runs after the batch's commit with its result.
type Finisher = Box<dyn FnOnce(&StoreResult<()>) + Send>;

/// A control-plane write run on the writer connection inside its own savepoint.
struct Call {
    run: Box<dyn FnOnce(&Connection) -> Finisher + Send>,
    /// Reports a failure when the batch could not even begin.
    fail: Box<dyn FnOnce(StoreError) + Send>,
}

enum Job {
    Write(WriteOp, Option<Completion>),
    Call(Call),
    /// Ends the writer thread after the jobs before it.
    Stop,
}

pub struct SqliteStore {
    path: PathBuf,
    /// Jobs for the writer thread. Unbounded: hot-path callers bound themselves (the router
    /// holds a permit per in-flight enqueue), and acknowledgements are bounded by delivery windows.
    jobs: mpsc::UnboundedSender<Job>,
    readers: Mutex<Vec<Connection>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Transactions the writer thread committed (shared with it).
    commits: Arc<AtomicU64>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.path).finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies pending migrations in one
    /// transaction and starts the writer thread.
    pub fn open(path: &Path, durability: Durability) -> StoreResult<Arc<SqliteStore>> {
        if let Some(parent) = path.parent() {
            create_private_dir(parent)?;
        }
        let mut writer = open_connection(path, durability)?;
        restrict_permissions(path)?;
        migrate(&mut writer)?;
        let next_seq: u64 = writer
            .query_row(
                "SELECT MAX(COALESCE((SELECT MAX(seq) FROM queue), 0), COALESCE((SELECT MAX(seq) FROM bodies), 0))",
                [],
                |row| row.get::<_, i64>(0),
            )
            .map_err(db_error)? as u64
            + 1;
        let (jobs, receiver) = mpsc::unbounded_channel();
        let commits = Arc::new(AtomicU64::new(0));
        let writer_commits = commits.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run_writer(writer, receiver, next_seq, &writer_commits))
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        Ok(Arc::new(SqliteStore {
            path: path.to_owned(),
            jobs,
            readers: Mutex::new(Vec::new()),
            writer: Mutex::new(Some(thread)),
            commits,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> StoreResult<T> {
        let pooled = self.readers.lock().expect("reader pool lock").pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => open_connection(&self.path, Durability::Normal)?,
        };
        let result = f(&conn).map_err(db_error);
        let mut pool = self.readers.lock().expect("reader pool lock");
        if pool.len() < READER_POOL {
            pool.push(conn);
        }
        result
    }

    /// Runs `f` on the writer thread inside a savepoint of the next batch and waits for the
    /// batch to commit.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (reply, result) = std::sync::mpsc::channel::<StoreResult<T>>();
        let fail_reply = reply.clone();
        let call = Call {
            run: Box::new(move |conn| {
                let outcome = in_savepoint(conn, f);
                Box::new(move |commit: &StoreResult<()>| {
                    let _ = reply.send(after_commit(outcome, commit));
                })
            }),
            fail: Box::new(move |error| {
                let _ = fail_reply.send(Err(error));
            }),
        };
        self.jobs.send(Job::Call(call)).map_err(|_| StoreError::Closed)?;
        result.recv().map_err(|_| StoreError::Closed)?
    }
}

impl Drop for SqliteStore {
    /// Lets the writer commit what is queued, then waits for it to end.
    fn drop(&mut self) {
        let _ = self.jobs.send(Job::Stop);
        if let Some(handle) = self.writer.lock().map(|mut h| h.take()).unwrap_or_default() {
            let _ = handle.join();
        }
    }
}

/// A job's own outcome, unless the batch's commit failed.
fn after_commit<T>(outcome: StoreResult<T>, commit: &StoreResult<()>) -> StoreResult<T> {
    match (outcome, commit) {
        (Ok(value), Ok(())) => Ok(value),
        (Err(error), _) => Err(error),
        (Ok(_), Err(error)) => Err(StoreError::Database(error.to_string())),
    }
}

fn create_private_dir(dir: &Path) -> StoreResult<()> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Database(format!("cannot create {}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| StoreError::Database(format!("cannot restrict {}: {e}", dir.display())))?;
    }
    Ok(())
}

/// The database holds who is in which mesh: owner-only, like every file we write. SQLite gives
/// its `-wal` and `-shm` files the database file's mode.
fn restrict_permissions(path: &Path) -> StoreResult<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::Database(format!("cannot restrict {}: {e}", path.display())))?;
    }
    Ok(())
}

fn open_connection(path: &Path, durability: Durability) -> StoreResult<Connection> {
    let conn = Connection::open(path).map_err(db_error)?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS)).map_err(db_error)?;
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON;"
    ))
    .map_err(db_error)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_error)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .map_err(db_error)?;
    for (name, sql) in MIGRATIONS {
        let applied: bool = tx
            .query_row("SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE name = ?1)", [name], |row| row.get(0))
            .map_err(db_error)?;
        if !applied {
            tx.execute_batch(sql).map_err(|e| StoreError::Database(format!("migration {name}: {e}")))?;
            tx.execute(
                "INSERT INTO schema_migrations (name, applied_at) VALUES (?1, ?2)",
                params![name, crate::protocol::now_ms() as i64],
            )
            .map_err(db_error)?;
        }
    }
    tx.commit().map_err(db_error)
}

fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> StoreResult<T>) -> StoreResult<T> {
    conn.execute_batch("SAVEPOINT job").map_err(db_error)?;
    let result = f(conn);
    let end = if result.is_ok() { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
    conn.execute_batch(end).map_err(db_error)?;
    result
}

fn run_writer(conn: Connection, mut jobs: mpsc::UnboundedReceiver<Job>, mut next_seq: u64, commits: &AtomicU64) {
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
            let error = db_error(error);
            for job in batch.drain(..) {
                match job {
                    Job::Write(_, Some(done)) => done(Err(StoreError::Database(error.to_string()))),
                    Job::Call(call) => (call.fail)(StoreError::Database(error.to_string())),
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
                    finishers.push(Box::new(move |commit: &StoreResult<()>| {
                        if let Some(done) = done {
                            done(after_commit(outcome, commit));
                        }
                    }));
                }
                Job::Call(call) => finishers.push((call.run)(&conn)),
                Job::Stop => stopping = true,
            }
        }
        let commit = conn.execute_batch("COMMIT").map_err(db_error);
        if commit.is_err() {
            let _ = conn.execute_batch("ROLLBACK");
        } else {
            commits.fetch_add(1, Ordering::Relaxed);
        }
        for finish in finishers {
            finish(&commit);
        }
    }
}

fn apply_write(conn: &Connection, op: WriteOp, next_seq: &mut u64) -> StoreResult<WriteOutcome> {
    match op {
        WriteOp::Enqueue(message) => enqueue(conn, &message, next_seq).map(WriteOutcome::Enqueued),
        WriteOp::Acknowledge(entries) => acknowledge(conn, &entries).map(WriteOutcome::Changed),
        WriteOp::ReleaseSession { member_id, session_pubkey } => conn
            .prepare_cached("UPDATE queue SET session_pubkey = NULL WHERE member_id = ?1 AND session_pubkey = ?2")
            .and_then(|mut stmt| stmt.execute(params![member_id, session_pubkey]))
            .map(|n| WriteOutcome::Changed(n as u64))
            .map_err(db_error),
        WriteOp::SavePeerState(state) => save_peer_state(conn, &state).map(|()| WriteOutcome::Changed(1)),
        WriteOp::ExpireBefore(cutoff_ms) => expire(conn, cutoff_ms).map(WriteOutcome::Changed),
    }
}

fn enqueue(conn: &Connection, message: &NewMessage, next_seq: &mut u64) -> StoreResult<Vec<u64>> {
    let env = &message.envelope;
    let shared_body = if message.deliveries.len() > 1 {
        let body_seq = *next_seq;
        *next_seq += 1;
        conn.prepare_cached("INSERT INTO bodies (seq, nonce, ciphertext, created_at) VALUES (?1, ?2, ?3, ?4)")
            .and_then(|mut stmt| {
                stmt.execute(params![body_seq as i64, env.nonce, env.ciphertext, env.created_at as i64])
            })
            .map_err(db_error)?;
        Some(body_seq)
    } else {
        None
    };
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO queue (member_id, seq, message_id, mesh_id, session_pubkey, exclude_session, sender_member_id,
                sender_member_pubkey, sender_pubkey, sender_session_sig, target_spec, priority, enc, nonce, ciphertext,
                body_seq, key_nonce, key_ciphertext, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        )
        .map_err(db_error)?;
    let mut seqs = Vec::with_capacity(message.deliveries.len());
    for delivery in &message.deliveries {
        let seq = *next_seq;
        *next_seq += 1;
        let (inline_nonce, inline_ciphertext) = match shared_body {
            Some(_) => ("", None),
            None => (env.nonce.as_str(), Some(env.ciphertext.as_str())),
        };
        insert
            .execute(params![
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
                env.enc.as_str(),
                inline_nonce,
                inline_ciphertext,
                shared_body.map(|s| s as i64),
                delivery.key.as_ref().map(|k| k.nonce.as_str()),
                delivery.key.as_ref().map(|k| k.ciphertext.as_str()),
                env.created_at as i64,
            ])
            .map_err(db_error)?;
        seqs.push(seq);
    }
    Ok(seqs)
}

fn acknowledge(conn: &Connection, entries: &[(String, u64)]) -> StoreResult<u64> {
    let mut delete = conn
        .prepare_cached("DELETE FROM queue WHERE member_id = ?1 AND seq = ?2 RETURNING body_seq")
        .map_err(db_error)?;
    let mut bodies = Vec::new();
    let mut removed = 0;
    for (member_id, seq) in entries {
        let body: Option<Option<i64>> =
            delete.query_row(params![member_id, *seq as i64], |row| row.get(0)).optional().map_err(db_error)?;
        if let Some(body) = body {
            removed += 1;
            bodies.extend(body);
        }
    }
    let mut drop_body = conn
        .prepare_cached("DELETE FROM bodies WHERE seq = ?1 AND NOT EXISTS (SELECT 1 FROM queue WHERE body_seq = ?1)")
        .map_err(db_error)?;
    bodies.sort_unstable();
    bodies.dedup();
    for body in bodies {
        drop_body.execute([body]).map_err(db_error)?;
    }
    Ok(removed)
}

fn expire(conn: &Connection, cutoff_ms: u64) -> StoreResult<u64> {
    let removed = conn.execute("DELETE FROM queue WHERE created_at < ?1", [cutoff_ms as i64]).map_err(db_error)?;
    conn.execute(
        "DELETE FROM bodies WHERE created_at < ?1 AND NOT EXISTS (SELECT 1 FROM queue WHERE body_seq = bodies.seq)",
        [cutoff_ms as i64],
    )
    .map_err(db_error)?;
    Ok(removed as u64)
}

fn save_peer_state(conn: &Connection, state: &PeerStateRecord) -> StoreResult<()> {
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
    .map_err(db_error)?;
    Ok(())
}

/// Records that meshes or members changed, so running brokers reload their directory.
fn bump_directory_version(conn: &Connection) -> StoreResult<()> {
    conn.execute(
        "INSERT INTO settings (key, value) VALUES ('directory_version', '1')
         ON CONFLICT (key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
        [],
    )
    .map_err(db_error)?;
    Ok(())
}

fn mesh_from_row(row: &Row<'_>) -> rusqlite::Result<MeshRecord> {
    Ok(MeshRecord {
        id: row.get(0)?,
        slug: row.get(1)?,
        name: row.get(2)?,
        created_at: row.get::<_, i64>(3)? as u64,
        archived_at: row.get::<_, Option<i64>>(4)?.map(|v| v as u64),
    })
}

const MEMBER_COLUMNS: &str = "id, mesh_id, pubkey, display_name, role, created_at, revoked_at, banned_at";

fn member_from_row(row: &Row<'_>) -> rusqlite::Result<MemberRecord> {
    let role: String = row.get(4)?;
    Ok(MemberRecord {
        id: row.get(0)?,
        mesh_id: row.get(1)?,
        pubkey: row.get(2)?,
        display_name: row.get(3)?,
        role: Role::parse(&role).unwrap_or_default(),
        created_at: row.get::<_, i64>(5)? as u64,
        revoked_at: row.get::<_, Option<i64>>(6)?.map(|v| v as u64),
        banned_at: row.get::<_, Option<i64>>(7)?.map(|v| v as u64),
    })
}

fn invite_from_row(row: &Row<'_>) -> rusqlite::Result<InviteRecord> {
    let role: String = row.get(2)?;
    Ok(InviteRecord {
        id: row.get(0)?,
        mesh_id: row.get(1)?,
        role: Role::parse(&role).unwrap_or_default(),
        max_uses: row.get::<_, i64>(3)? as u32,
        used_count: row.get::<_, i64>(4)? as u32,
        expires_at: row.get::<_, i64>(5)? as u64,
        issuer_member_id: row.get(6)?,
        created_at: row.get::<_, i64>(7)? as u64,
        revoked_at: row.get::<_, Option<i64>>(8)?.map(|v| v as u64),
    })
}

const INVITE_COLUMNS: &str =
    "id, mesh_id, role, max_uses, used_count, expires_at, issuer_member_id, created_at, revoked_at";

/// Lowercase ASCII letters, digits and single dashes; never empty.
pub(crate) fn slugify(text: &str) -> String {
    let mut slug = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-').chars().take(40).collect::<String>();
    if slug.is_empty() { "mesh".to_owned() } else { slug }
}

impl Store for SqliteStore {
    fn submit(&self, op: WriteOp, done: Option<Completion>) {
        if let Err(mpsc::error::SendError(Job::Write(_, Some(done)))) = self.jobs.send(Job::Write(op, done)) {
            done(Err(StoreError::Closed));
        }
    }

    fn flush(&self) -> StoreResult<()> {
        self.call(|_| Ok(()))
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn ping(&self) -> StoreResult<()> {
        self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(())))
    }

    fn applied_migrations(&self) -> StoreResult<Vec<String>> {
        self.read(|conn| {
            let mut stmt = conn.prepare("SELECT name FROM schema_migrations ORDER BY name")?;
            let names = stmt.query_map([], |row| row.get(0))?.collect::<Result<Vec<String>, _>>()?;
            Ok(names)
        })
    }

    fn directory_version(&self) -> StoreResult<i64> {
        self.read(|conn| {
            conn.query_row(
                "SELECT COALESCE((SELECT CAST(value AS INTEGER) FROM settings WHERE key = 'directory_version'), 0)",
                [],
                |row| row.get(0),
            )
        })
    }

    fn mesh(&self, id_or_slug: &str) -> StoreResult<Option<MeshRecord>> {
        self.read(|conn| {
            conn.query_row(
                "SELECT id, slug, name, created_at, archived_at FROM meshes WHERE id = ?1 OR slug = ?1",
                [id_or_slug],
                mesh_from_row,
            )
            .optional()
        })
    }

    fn meshes(&self) -> StoreResult<Vec<MeshRecord>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare("SELECT id, slug, name, created_at, archived_at FROM meshes ORDER BY created_at")?;

            stmt.query_map([], mesh_from_row)?.collect()
        })
    }

    fn members(&self, mesh_id: &str) -> StoreResult<Vec<MemberRecord>> {
        self.read(|conn| {
            let mut stmt = conn
                .prepare(&format!("SELECT {MEMBER_COLUMNS} FROM members WHERE mesh_id = ?1 ORDER BY created_at, id"))?;

            stmt.query_map([mesh_id], member_from_row)?.collect()
        })
    }

    fn member_by_pubkey(&self, mesh_id: &str, pubkey: &str) -> StoreResult<Option<MemberRecord>> {
        self.read(|conn| {
            conn.query_row(
                &format!("SELECT {MEMBER_COLUMNS} FROM members WHERE mesh_id = ?1 AND pubkey = ?2"),
                [mesh_id, pubkey],
                member_from_row,
            )
            .optional()
        })
    }

    fn peer_states(&self, mesh_id: &str) -> StoreResult<Vec<PeerStateRecord>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(
                "SELECT member_id, groups, summary, display_name, stats, last_seen_at FROM peer_state WHERE mesh_id = ?1",
            )?;

            stmt
                .query_map([mesh_id], |row| {
                    let groups: String = row.get(1)?;
                    let stats: String = row.get(4)?;
                    Ok(PeerStateRecord {
                        member_id: row.get(0)?,
                        groups: serde_json::from_str(&groups).unwrap_or_default(),
                        summary: row.get(2)?,
                        display_name: row.get(3)?,
                        stats: serde_json::from_str(&stats).unwrap_or_default(),
                        last_seen_at: row.get::<_, i64>(5)? as u64,
                    })
                })?
                .collect()
        })
    }

    fn pending_for_member(&self, member_id: &str, after_seq: u64, limit: usize) -> StoreResult<Vec<QueuedEntry>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT q.seq, q.message_id, q.mesh_id, q.session_pubkey, q.exclude_session, q.sender_member_id,
                        q.sender_pubkey, q.target_spec, q.priority, q.enc,
                        COALESCE(b.nonce, q.nonce), COALESCE(b.ciphertext, q.ciphertext),
                        q.key_nonce, q.key_ciphertext, q.created_at, q.sender_member_pubkey, q.sender_session_sig
                 FROM queue q LEFT JOIN bodies b ON b.seq = q.body_seq
                 WHERE q.member_id = ?1 AND q.seq > ?2 ORDER BY q.seq LIMIT ?3",
            )?;

            stmt.query_map(params![member_id, after_seq as i64, limit as i64], |row| {
                let enc: String = row.get(9)?;
                let key_nonce: Option<String> = row.get(12)?;
                let key_ciphertext: Option<String> = row.get(13)?;
                Ok(QueuedEntry {
                    seq: row.get::<_, i64>(0)? as u64,
                    envelope: Arc::new(Envelope {
                        message_id: row.get(1)?,
                        mesh_id: row.get(2)?,
                        sender_member_id: row.get(5)?,
                        sender_member_pubkey: row.get(15)?,
                        sender_pubkey: row.get(6)?,
                        sender_session_sig: row.get(16)?,
                        target_spec: row.get(7)?,
                        priority: Priority::from_db(row.get(8)?),
                        enc: Enc::from_db(&enc),
                        nonce: row.get(10)?,
                        ciphertext: row.get::<_, Option<String>>(11)?.unwrap_or_default(),
                        created_at: row.get::<_, i64>(14)? as u64,
                    }),
                    delivery: Delivery {
                        member_id: member_id.to_owned(),
                        session_pubkey: row.get(3)?,
                        exclude_session: row.get(4)?,
                        key: key_nonce.zip(key_ciphertext).map(|(nonce, ciphertext)| WrappedKey { nonce, ciphertext }),
                    },
                })
            })?
            .collect()
        })
    }

    fn queue_depth(&self) -> StoreResult<u64> {
        self.read(|conn| conn.query_row("SELECT COUNT(*) FROM queue", [], |row| row.get::<_, i64>(0))).map(|n| n as u64)
    }

    fn create_mesh(
        &self,
        name: &str,
        slug_hint: &str,
        creator_pubkey: &str,
        creator_name: &str,
        now_ms: u64,
    ) -> StoreResult<(MeshRecord, MemberRecord)> {
        let name = name.trim().to_owned();
        if name.is_empty() {
            return Err(StoreError::Invalid("the mesh name is empty".into()));
        }
        check_pubkey(creator_pubkey)?;
        let base = slugify(if slug_hint.trim().is_empty() { &name } else { slug_hint });
        let mesh_id = crate::ids::new_id("mesh");
        let creator = MemberRecord {
            id: crate::ids::new_id("mem"),
            mesh_id: mesh_id.clone(),
            pubkey: creator_pubkey.to_owned(),
            display_name: creator_name.trim().to_owned(),
            role: Role::Admin,
            created_at: now_ms,
            revoked_at: None,
            banned_at: None,
        };
        self.call(move |conn| {
            let mut slug = base.clone();
            let mut suffix = 2;
            while conn
                .query_row("SELECT EXISTS (SELECT 1 FROM meshes WHERE slug = ?1)", [&slug], |row| row.get::<_, bool>(0))
                .map_err(db_error)?
            {
                slug = format!("{base}-{suffix}");
                suffix += 1;
            }
            let mesh = MeshRecord { id: mesh_id, slug, name, created_at: now_ms, archived_at: None };
            conn.execute(
                "INSERT INTO meshes (id, slug, name, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![mesh.id, mesh.slug, mesh.name, now_ms as i64],
            )
            .map_err(db_error)?;
            insert_member(conn, &creator)?;
            Ok((mesh, creator))
        })
    }

    fn add_member(
        &self,
        mesh_id: &str,
        pubkey: &str,
        display_name: &str,
        role: Role,
        now_ms: u64,
    ) -> StoreResult<MemberRecord> {
        check_pubkey(pubkey)?;
        let member = MemberRecord {
            id: crate::ids::new_id("mem"),
            mesh_id: mesh_id.to_owned(),
            pubkey: pubkey.to_owned(),
            display_name: display_name.trim().to_owned(),
            role,
            created_at: now_ms,
            revoked_at: None,
            banned_at: None,
        };
        self.call(move |conn| {
            let exists: bool = conn
                .query_row("SELECT EXISTS (SELECT 1 FROM meshes WHERE id = ?1)", [&member.mesh_id], |row| row.get(0))
                .map_err(db_error)?;
            if !exists {
                return Err(StoreError::NotFound(format!("mesh {}", member.mesh_id)));
            }
            let taken: bool = conn
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM members WHERE mesh_id = ?1 AND pubkey = ?2)",
                    [&member.mesh_id, &member.pubkey],
                    |row| row.get(0),
                )
                .map_err(db_error)?;
            if taken {
                return Err(StoreError::Conflict("a member with this public key is already in the mesh".into()));
            }
            insert_member(conn, &member)?;
            Ok(member)
        })
    }

    fn create_invite(&self, invite: &InviteRecord) -> StoreResult<()> {
        let invite = invite.clone();
        self.call(move |conn| {
            conn.execute(
                &format!("INSERT INTO invites ({INVITE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    invite.id,
                    invite.mesh_id,
                    invite.role.as_str(),
                    invite.max_uses as i64,
                    invite.used_count as i64,
                    invite.expires_at as i64,
                    invite.issuer_member_id,
                    invite.created_at as i64,
                    invite.revoked_at.map(|v| v as i64),
                ],
            )
            .map_err(db_error)?;
            Ok(())
        })
    }

    fn invite(&self, invite_id: &str) -> StoreResult<Option<InviteRecord>> {
        self.read(|conn| {
            conn.query_row(&format!("SELECT {INVITE_COLUMNS} FROM invites WHERE id = ?1"), [invite_id], invite_from_row)
                .optional()
        })
    }

    fn redeem_invite(&self, invite_id: &str, pubkey: &str, display_name: &str, now_ms: u64) -> StoreResult<Redemption> {
        check_pubkey(pubkey)?;
        let (invite_id, pubkey, display_name) =
            (invite_id.to_owned(), pubkey.to_owned(), display_name.trim().to_owned());
        self.call(move |conn| {
            let invite = conn
                .query_row(
                    &format!("SELECT {INVITE_COLUMNS} FROM invites WHERE id = ?1"),
                    [&invite_id],
                    invite_from_row,
                )
                .optional()
                .map_err(db_error)?
                .ok_or_else(|| StoreError::NotFound("invite_not_found".into()))?;
            let existing = conn
                .query_row(
                    &format!("SELECT {MEMBER_COLUMNS} FROM members WHERE mesh_id = ?1 AND pubkey = ?2"),
                    [&invite.mesh_id, &pubkey],
                    member_from_row,
                )
                .optional()
                .map_err(db_error)?;
            if let Some(member) = existing {
                if member.is_active() {
                    return Ok(Redemption { member, already_member: true });
                }
                return Err(StoreError::Conflict("member_revoked".into()));
            }
            if invite.revoked_at.is_some() {
                return Err(StoreError::Conflict("invite_revoked".into()));
            }
            if now_ms / 1000 >= invite.expires_at {
                return Err(StoreError::Conflict("invite_expired".into()));
            }
            let used = conn
                .execute(
                    "UPDATE invites SET used_count = used_count + 1 WHERE id = ?1 AND used_count < max_uses",
                    [&invite_id],
                )
                .map_err(db_error)?;
            if used == 0 {
                return Err(StoreError::Conflict("invite_exhausted".into()));
            }
            let member = MemberRecord {
                id: crate::ids::new_id("mem"),
                mesh_id: invite.mesh_id.clone(),
                pubkey,
                display_name,
                role: invite.role,
                created_at: now_ms,
                revoked_at: None,
                banned_at: None,
            };
            insert_member(conn, &member)?;
            conn.execute(
                "INSERT INTO invite_redemptions (invite_id, member_id, redeemed_at) VALUES (?1, ?2, ?3)",
                params![invite_id, member.id, now_ms as i64],
            )
            .map_err(db_error)?;
            Ok(Redemption { member, already_member: false })
        })
    }

    fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        self.read(|conn| {
            conn.query_row("SELECT value FROM settings WHERE key = ?1", [key], |row| row.get(0)).optional()
        })
    }

    fn set_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [key, value],
            )
            .map_err(db_error)?;
            Ok(())
        })
    }
}

fn check_pubkey(pubkey: &str) -> StoreResult<()> {
    if crate::protocol::is_key_hex(pubkey) {
        return Ok(());
    }
    Err(StoreError::Invalid(format!(
        "public key {pubkey:?} is not 64 lowercase hex characters (an ed25519 public key)"
    )))
}

fn insert_member(conn: &Connection, member: &MemberRecord) -> StoreResult<()> {
    conn.execute(
        &format!("INSERT INTO members ({MEMBER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, NULL)"),
        params![
            member.id,
            member.mesh_id,
            member.pubkey,
            member.display_name,
            member.role.as_str(),
            member.created_at as i64
        ],
    )
    .map_err(db_error)?;
    bump_directory_version(conn)
}
