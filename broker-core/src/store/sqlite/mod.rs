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

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc;

mod accounts;
mod audit;
mod codes;
mod directory;
mod membership;
mod schedules;
mod workspace;
mod writer;

use writer::{after_commit, in_savepoint, run_writer};

use crate::store::codes::DbCode as _;
use crate::store::records::MESH_COLUMNS;

use super::{
    AccountMesh, AccountRecord, AuditEntry, AuditVerification, Completion, Delivery, DeviceCodeRecord, DeviceInfo,
    DeviceRecord, EmailCodeOutcome, EndorsementRecord, Envelope, GrantChange, GrantRecord, InviteRecord, MIGRATIONS,
    MemberRecord, MembershipAction, MemoryRecord, MeshRecord, NewDeviceCode, NewMember, PeerStateRecord, PollOutcome,
    QueuedEntry, ReceiptRecord, Redemption, ScheduleRecord, StateRecord, Store, StoreError, StoreNotice, StoreResult,
    WorkspaceQuota, WriteOp,
};
use crate::membership::{Change, LogEntry};
use crate::meshkey::{EpochRecord, Wrap};
use crate::protocol::{Priority, Role, WrappedKey};

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

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        match error {
            // A stored code no variant matches, found while reading a row (see `codes`).
            rusqlite::Error::FromSqlConversionFailure(index, data_type, source) => {
                match source.downcast::<super::codes::UnknownCode>() {
                    Ok(unknown) => (*unknown).into(),
                    Err(source) => {
                        StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(index, data_type, source))
                    }
                }
            }
            other => StoreError::Sqlite(other),
        }
    }
}

/// Turns a clash on a primary key or unique column into `Conflict(what)`; any other failure
/// (a missing row a foreign key names, a broken database) stays a database error.
fn conflict_on_duplicate(what: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |error| match error {
        rusqlite::Error::SqliteFailure(failure, _)
            if matches!(
                failure.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY | rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            ) =>
        {
            StoreError::Conflict(what.to_owned())
        }
        other => other.into(),
    }
}

/// How a batch's transaction ended: its jobs share the one error when it failed.
type BatchResult = Result<(), Arc<rusqlite::Error>>;

/// Runs after the batch's commit with its result.
type Finisher = Box<dyn FnOnce(&BatchResult) + Send>;

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
        let last_seq: i64 = writer.query_row(
            "SELECT MAX(COALESCE((SELECT MAX(seq) FROM queue), 0), COALESCE((SELECT MAX(seq) FROM bodies), 0))",
            [],
            |row| row.get(0),
        )?;
        let next_seq = last_seq as u64 + 1;
        let (jobs, receiver) = mpsc::unbounded_channel();
        let commits = Arc::new(AtomicU64::new(0));
        let writer_commits = commits.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run_writer(writer, receiver, next_seq, &writer_commits))
            .map_err(|source| StoreError::Io { context: "cannot start the writer thread".into(), source })?;
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
        let result = f(&conn).map_err(StoreError::from);
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
                Box::new(move |commit: &BatchResult| {
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
            // The last reference may go away inside a completion, on the writer thread itself:
            // it then ends on its own after this job.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

/// Creates `dir` and its parents, owner-only (0700); a directory that exists keeps its mode.
pub(crate) fn create_private_dir(dir: &Path) -> StoreResult<()> {
    if dir.as_os_str().is_empty() || dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .map_err(|source| StoreError::Io { context: format!("cannot create {}", dir.display()), source })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|source| StoreError::Io { context: format!("cannot restrict {}", dir.display()), source })?;
    }
    Ok(())
}

/// The database holds who is in which mesh: owner-only, like every file we write. SQLite gives
/// its `-wal` and `-shm` files the database file's mode.
pub(crate) fn restrict_permissions(path: &Path) -> StoreResult<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|source| StoreError::Io { context: format!("cannot restrict {}", path.display()), source })?;
    }
    Ok(())
}

fn open_connection(path: &Path, durability: Durability) -> StoreResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON;"
    ))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> StoreResult<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    for (name, sql) in MIGRATIONS {
        let applied: bool =
            tx.query_row("SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE name = ?1)", [name], |row| row.get(0))?;
        if !applied {
            tx.execute_batch(sql).map_err(|source| StoreError::Migration { name, source: Box::new(source) })?;
            tx.execute(
                "INSERT INTO schema_migrations (name, applied_at) VALUES (?1, ?2)",
                params![name, crate::protocol::now_ms() as i64],
            )?;
        }
    }
    tx.commit().map_err(StoreError::from)
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

    /// The broker that holds the data directory's lock is its only process.
    fn subscribe(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<StoreNotice>> {
        None
    }

    fn announce(&self, _text: &str) -> StoreResult<()> {
        Ok(())
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
            )?;
            Ok(())
        })
    }

    fn pending_for_member(
        &self,
        member_id: &str,
        urgent: bool,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<QueuedEntry>> {
        self.read(|conn| pending_for_member(conn, member_id, urgent, after_seq, limit))
    }

    fn queue_depth(&self) -> StoreResult<u64> {
        self.read(|conn| conn.query_row("SELECT COUNT(*) FROM queue", [], |row| row.get::<_, i64>(0))).map(|n| n as u64)
    }

    fn receipts(&self, mesh_id: &str, sender_member_id: &str, message_id: &str) -> StoreResult<Vec<ReceiptRecord>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT r.member_id, r.queued_at, r.delivered_at, r.read_at,
                        EXISTS (SELECT 1 FROM queue q WHERE q.member_id = r.member_id AND q.message_id = r.message_id)
                 FROM receipts r WHERE r.mesh_id = ?1 AND r.sender_member_id = ?2 AND r.message_id = ?3
                 ORDER BY r.member_id",
            )?;
            stmt.query_map(params![mesh_id, sender_member_id, message_id], |row| {
                Ok(ReceiptRecord {
                    member_id: row.get(0)?,
                    queued_at: row.get::<_, i64>(1)? as u64,
                    delivered_at: row.get::<_, Option<i64>>(2)?.map(|at| at as u64),
                    read_at: row.get::<_, Option<i64>>(3)?.map(|at| at as u64),
                    queued: row.get(4)?,
                })
            })?
            .collect()
        })
    }

    fn peer_states(&self, mesh_id: &str) -> StoreResult<Vec<PeerStateRecord>> {
        self.read(|conn| peer_states(conn, mesh_id))
    }

    fn create_schedule(&self, schedule: &ScheduleRecord, max_per_member: u64) -> StoreResult<()> {
        let schedule = schedule.clone();
        self.call(move |conn| schedules::create(conn, &schedule, max_per_member, crate::protocol::now_ms()))
    }

    fn schedules(&self, mesh_id: &str, sender_member_id: Option<&str>) -> StoreResult<Vec<ScheduleRecord>> {
        self.read(|conn| schedules::of_mesh(conn, mesh_id, sender_member_id))
    }

    fn cancel_schedule(&self, mesh_id: &str, schedule_id: &str, actor: Option<&str>) -> StoreResult<bool> {
        let (mesh_id, schedule_id, actor) = (mesh_id.to_owned(), schedule_id.to_owned(), actor.map(str::to_owned));
        self.call(move |conn| {
            schedules::cancel(conn, &mesh_id, &schedule_id, actor.as_deref(), crate::protocol::now_ms())
        })
    }

    fn due_schedules(&self, now_ms: u64, limit: usize) -> StoreResult<Vec<ScheduleRecord>> {
        self.read(|conn| schedules::due(conn, now_ms, limit))
    }

    fn state_entries(&self, mesh_id: &str, names: &[String], now_ms: u64) -> StoreResult<Vec<StateRecord>> {
        self.read(|conn| workspace::entries(conn, mesh_id, names, now_ms))
    }

    fn state_page(
        &self,
        mesh_id: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> StoreResult<Vec<StateRecord>> {
        self.read(|conn| workspace::page(conn, mesh_id, after, limit, now_ms))
    }

    fn put_state(&self, record: &StateRecord, quota: &WorkspaceQuota, now_ms: u64) -> StoreResult<()> {
        let (record, quota) = (record.clone(), *quota);
        self.call(move |conn| workspace::put(conn, &record, &quota, now_ms))
    }

    fn delete_state(
        &self,
        mesh_id: &str,
        name: &str,
        expected: Option<u64>,
        actor: &str,
        now_ms: u64,
    ) -> StoreResult<u64> {
        let (mesh_id, name, actor) = (mesh_id.to_owned(), name.to_owned(), actor.to_owned());
        self.call(move |conn| workspace::delete(conn, &mesh_id, &name, expected, &actor, now_ms))
    }

    fn expire_state(&self, now_ms: u64) -> StoreResult<u64> {
        self.call(move |conn| Ok(workspace::expire(conn, now_ms)?))
    }

    fn add_memory(&self, record: &MemoryRecord, quota: &WorkspaceQuota, now_ms: u64) -> StoreResult<u64> {
        let (record, quota) = (record.clone(), *quota);
        self.call(move |conn| workspace::add_memory(conn, &record, &quota, now_ms))
    }

    fn memories(&self, mesh_id: &str, after: u64, limit: usize) -> StoreResult<Vec<MemoryRecord>> {
        self.read(|conn| workspace::memories(conn, mesh_id, after, limit))
    }

    fn memory(&self, mesh_id: &str, id: &str) -> StoreResult<Option<MemoryRecord>> {
        self.read(|conn| workspace::memory(conn, mesh_id, id))
    }

    fn forget_memory(&self, mesh_id: &str, id: &str, actor: &str, now_ms: u64) -> StoreResult<Option<u64>> {
        let (mesh_id, id, actor) = (mesh_id.to_owned(), id.to_owned(), actor.to_owned());
        self.call(move |conn| workspace::forget(conn, &mesh_id, &id, &actor, now_ms))
    }

    fn mesh(&self, id_or_slug: &str) -> StoreResult<Option<MeshRecord>> {
        self.read(|conn| directory::mesh(conn, id_or_slug))
    }

    fn meshes(&self) -> StoreResult<Vec<MeshRecord>> {
        self.read(|conn| {
            let mut stmt = conn.prepare(&format!("SELECT {MESH_COLUMNS} FROM meshes ORDER BY created_at"))?;

            stmt.query_map([], directory::mesh_from_row)?.collect()
        })
    }

    fn create_mesh(
        &self,
        name: &str,
        slug_hint: &str,
        owner_account_id: Option<&str>,
        creator: &NewMember,
        now_ms: u64,
    ) -> StoreResult<(MeshRecord, MemberRecord)> {
        let name = name.trim().to_owned();
        if name.is_empty() {
            return Err(StoreError::Invalid("the mesh name is empty".into()));
        }
        super::check_pubkey(&creator.pubkey)?;
        let base = super::slugify(if slug_hint.trim().is_empty() { &name } else { slug_hint });
        let (owner, creator) = (owner_account_id.map(str::to_owned), creator.clone());
        self.call(move |conn| directory::create_mesh(conn, &name, &base, owner.as_deref(), &creator, now_ms))
    }

    fn rename_mesh(&self, mesh_id: &str, name: &str, actor: Option<&str>) -> StoreResult<MeshRecord> {
        let name = name.trim().to_owned();
        if name.is_empty() {
            return Err(StoreError::Invalid("the mesh name is empty".into()));
        }
        let (mesh_id, actor) = (mesh_id.to_owned(), actor.map(str::to_owned));
        self.call(move |conn| {
            directory::rename_mesh(conn, &mesh_id, &name, actor.as_deref(), crate::protocol::now_ms())
        })
    }

    fn archive_mesh(&self, mesh_id: &str, actor: Option<&str>, now_ms: u64) -> StoreResult<MeshRecord> {
        let (mesh_id, actor) = (mesh_id.to_owned(), actor.map(str::to_owned));
        self.call(move |conn| directory::archive_mesh(conn, &mesh_id, actor.as_deref(), now_ms))
    }

    fn members(&self, mesh_id: &str) -> StoreResult<Vec<MemberRecord>> {
        self.read(|conn| directory::members(conn, mesh_id))
    }

    fn member(&self, member_id: &str) -> StoreResult<Option<MemberRecord>> {
        self.read(|conn| directory::member(conn, member_id))
    }

    fn member_by_pubkey(&self, mesh_id: &str, pubkey: &str) -> StoreResult<Option<MemberRecord>> {
        self.read(|conn| directory::member_by_pubkey(conn, mesh_id, pubkey))
    }

    fn key_owner(&self, mesh_id: &str, pubkey: &str) -> StoreResult<Option<String>> {
        self.read(|conn| directory::key_owner(conn, mesh_id, pubkey))
    }

    fn append_key_history(&self, mesh_id: &str, change: &Change, actor: &str, now_ms: u64) -> StoreResult<LogEntry> {
        let (mesh_id, change, actor) = (mesh_id.to_owned(), change.clone(), actor.to_owned());
        self.call(move |conn| membership::append_key_history(conn, &mesh_id, &change, &actor, now_ms))
    }

    fn mesh_epochs(&self, mesh_id: &str) -> StoreResult<Vec<EpochRecord>> {
        self.read(|conn| membership::epochs(conn, mesh_id))?
            .into_iter()
            .map(|text| super::records::stored_json("mesh_epochs.record", text))
            .collect()
    }

    fn create_epoch(&self, mesh_id: &str, record: &EpochRecord, wraps: &[Wrap], now_ms: u64) -> StoreResult<()> {
        let (mesh_id, record, wraps) = (mesh_id.to_owned(), record.clone(), wraps.to_vec());
        self.call(move |conn| membership::create_epoch(conn, &mesh_id, &record, &wraps, now_ms))
    }

    fn add_wraps(&self, mesh_id: &str, wraps: &[Wrap], now_ms: u64) -> StoreResult<()> {
        let (mesh_id, wraps) = (mesh_id.to_owned(), wraps.to_vec());
        self.call(move |conn| membership::add_wraps(conn, &mesh_id, &wraps, now_ms))
    }

    fn wraps_for(&self, mesh_id: &str, recipient: &str) -> StoreResult<Vec<Wrap>> {
        self.read(|conn| membership::wraps_for(conn, mesh_id, recipient))
    }

    fn wrapped(&self, mesh_id: &str, epoch: u64) -> StoreResult<Vec<String>> {
        self.read(|conn| membership::wrapped(conn, mesh_id, epoch))
    }

    fn add_endorsements(&self, endorsements: &[EndorsementRecord]) -> StoreResult<()> {
        let endorsements = endorsements.to_vec();
        self.call(move |conn| Ok(membership::add_endorsements(conn, &endorsements)?))
    }

    fn endorsement(&self, mesh_id: &str, device_key: &str) -> StoreResult<Option<EndorsementRecord>> {
        self.read(|conn| membership::endorsement(conn, mesh_id, device_key))
    }

    fn membership_log(&self, mesh_id: &str, after: u64, limit: usize) -> StoreResult<Vec<LogEntry>> {
        self.read(|conn| membership::rows(conn, mesh_id, after, limit))?.into_iter().map(membership::entry).collect()
    }

    fn add_member(
        &self,
        mesh_id: &str,
        member: &NewMember,
        role: Role,
        actor: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<MemberRecord> {
        super::check_pubkey(&member.pubkey)?;
        let (mesh_id, member, actor) = (mesh_id.to_owned(), member.clone(), actor.map(str::to_owned));
        self.call(move |conn| directory::add_member(conn, &mesh_id, &member, role, actor.as_deref(), now_ms))
    }

    fn change_membership(
        &self,
        member_id: &str,
        action: MembershipAction,
        actor: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<MemberRecord> {
        let (member_id, actor) = (member_id.to_owned(), actor.map(str::to_owned));
        self.call(move |conn| directory::change_membership(conn, &member_id, action, actor.as_deref(), now_ms))
    }

    fn account_meshes(&self, account_id: &str) -> StoreResult<Vec<AccountMesh>> {
        self.read(|conn| directory::account_meshes(conn, account_id))
    }

    fn create_invite(&self, invite: &InviteRecord) -> StoreResult<()> {
        let invite = invite.clone();
        self.call(move |conn| directory::create_invite(conn, &invite, crate::protocol::now_ms()))
    }

    fn invite(&self, invite_id: &str) -> StoreResult<Option<InviteRecord>> {
        self.read(|conn| directory::invite(conn, invite_id))
    }

    fn invites(&self, mesh_id: &str) -> StoreResult<Vec<InviteRecord>> {
        self.read(|conn| directory::invites(conn, mesh_id))
    }

    fn revoke_invite(&self, invite_id: &str, actor: Option<&str>, now_ms: u64) -> StoreResult<InviteRecord> {
        let (invite_id, actor) = (invite_id.to_owned(), actor.map(str::to_owned));
        self.call(move |conn| directory::revoke_invite(conn, &invite_id, actor.as_deref(), now_ms))
    }

    fn redeem_invite(&self, invite_id: &str, member: &NewMember, now_ms: u64) -> StoreResult<Redemption> {
        super::check_pubkey(&member.pubkey)?;
        let (invite_id, member) = (invite_id.to_owned(), member.clone());
        self.call(move |conn| directory::redeem_invite(conn, &invite_id, &member, now_ms))
    }

    fn grants(&self, mesh_id: &str) -> StoreResult<Vec<GrantRecord>> {
        self.read(|conn| directory::grants(conn, mesh_id))
    }

    fn set_grants(&self, member_id: &str, changes: &[GrantChange], now_ms: u64) -> StoreResult<Vec<GrantRecord>> {
        let (member_id, changes) = (member_id.to_owned(), changes.to_vec());
        self.call(move |conn| directory::set_grants(conn, &member_id, &changes, now_ms))
    }

    fn create_account(&self, name: &str, email: Option<&str>, now_ms: u64) -> StoreResult<AccountRecord> {
        let (name, email) = (name.to_owned(), email.map(str::to_owned));
        self.call(move |conn| accounts::create_account(conn, &name, email.as_deref(), now_ms))
    }

    fn account(&self, id_or_name: &str) -> StoreResult<Option<AccountRecord>> {
        self.read(|conn| accounts::account(conn, id_or_name))
    }

    fn create_device(
        &self,
        account_id: &str,
        info: &DeviceInfo,
        token_hash: &str,
        expires_at: u64,
        now_ms: u64,
    ) -> StoreResult<DeviceRecord> {
        let (account_id, info, token_hash) = (account_id.to_owned(), info.clone(), token_hash.to_owned());
        self.call(move |conn| accounts::create_device(conn, &account_id, &info, &token_hash, expires_at, now_ms))
    }

    fn device_by_token(&self, token_hash: &str) -> StoreResult<Option<(DeviceRecord, AccountRecord)>> {
        self.read(|conn| accounts::device_by_token(conn, token_hash))
    }

    fn touch_device(&self, device_id: &str, now_ms: u64, expires_at: u64) -> StoreResult<()> {
        let device_id = device_id.to_owned();
        self.call(move |conn| accounts::touch_device(conn, &device_id, now_ms, expires_at))
    }

    fn devices(&self, account_id: &str) -> StoreResult<Vec<DeviceRecord>> {
        self.read(|conn| accounts::devices(conn, account_id))
    }

    fn revoke_device(&self, device_id: &str, actor: Option<&str>, now_ms: u64) -> StoreResult<Vec<MemberRecord>> {
        let (device_id, actor) = (device_id.to_owned(), actor.map(str::to_owned));
        self.call(move |conn| accounts::revoke_device(conn, &device_id, actor.as_deref(), now_ms))
    }

    fn create_device_code(&self, code: &NewDeviceCode) -> StoreResult<()> {
        let code = code.clone();
        self.call(move |conn| accounts::create_device_code(conn, &code))
    }

    fn device_code(&self, user_code: &str) -> StoreResult<Option<DeviceCodeRecord>> {
        self.read(|conn| accounts::device_code(conn, user_code))
    }

    fn pending_device_codes(&self, account: &AccountRecord, now_ms: u64) -> StoreResult<Vec<DeviceCodeRecord>> {
        self.read(|conn| accounts::pending_device_codes(conn, account, now_ms))
    }

    fn count_device_code_attempt(&self, user_code: &str, max: u32) -> StoreResult<DeviceCodeRecord> {
        let user_code = user_code.to_owned();
        self.call(move |conn| accounts::count_device_code_attempt(conn, &user_code, max))
    }

    fn decide_device_code(
        &self,
        user_code: &str,
        approve: bool,
        account_id: &str,
        decided_by: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<DeviceCodeRecord> {
        let (user_code, account_id, decided_by) =
            (user_code.to_owned(), account_id.to_owned(), decided_by.map(str::to_owned));
        self.call(move |conn| {
            accounts::decide_device_code(conn, &user_code, approve, &account_id, decided_by.as_deref(), now_ms)
        })
    }

    fn poll_device_code(
        &self,
        device_code_hash: &str,
        token_hash: &str,
        token_expires_at: u64,
        claimant: &DeviceInfo,
        now_ms: u64,
    ) -> StoreResult<PollOutcome> {
        let (code_hash, token_hash, claimant) = (device_code_hash.to_owned(), token_hash.to_owned(), claimant.clone());
        self.call(move |conn| {
            accounts::poll_device_code(conn, &code_hash, &token_hash, token_expires_at, &claimant, now_ms)
        })
    }

    fn create_email_code(
        &self,
        email: &str,
        code_hash: &str,
        now_ms: u64,
        expires_at: u64,
    ) -> StoreResult<Option<AccountRecord>> {
        let (email, code_hash) = (email.to_owned(), code_hash.to_owned());
        self.call(move |conn| accounts::create_email_code(conn, &email, &code_hash, now_ms, expires_at))
    }

    fn redeem_email_code(
        &self,
        email: &str,
        code_hash: &str,
        max_attempts: u32,
        device: &DeviceInfo,
        token_hash: &str,
        token_expires_at: u64,
        now_ms: u64,
    ) -> StoreResult<EmailCodeOutcome> {
        let (email, code_hash, device, token_hash) =
            (email.to_owned(), code_hash.to_owned(), device.clone(), token_hash.to_owned());
        self.call(move |conn| {
            accounts::redeem_email_code(
                conn,
                &email,
                &code_hash,
                max_attempts,
                &device,
                &token_hash,
                token_expires_at,
                now_ms,
            )
        })
    }

    fn create_login_token(
        &self,
        token_hash: &str,
        account_id: &str,
        made_by: &str,
        now_ms: u64,
        expires_at: u64,
    ) -> StoreResult<()> {
        let (token_hash, account_id, made_by) = (token_hash.to_owned(), account_id.to_owned(), made_by.to_owned());
        self.call(move |conn| {
            accounts::create_login_token(conn, &token_hash, &account_id, &made_by, now_ms, expires_at)
        })
    }

    fn audit_entries(
        &self,
        scope: &str,
        event_type: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> StoreResult<(Vec<AuditEntry>, u64)> {
        self.read(|conn| audit::entries(conn, scope, event_type, limit, offset))
    }

    fn verify_audit(&self, scope: &str) -> StoreResult<AuditVerification> {
        self.read(|conn| audit::verify(conn, scope))
    }
}

fn pending_for_member(
    conn: &Connection,
    member_id: &str,
    urgent: bool,
    after_seq: u64,
    limit: usize,
) -> rusqlite::Result<Vec<QueuedEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT q.seq, q.message_id, q.mesh_id, q.session_pubkey, q.exclude_session, q.sender_member_id,
                q.sender_pubkey, q.target_spec, q.priority, q.enc,
                COALESCE(b.nonce, q.nonce), COALESCE(b.ciphertext, q.ciphertext),
                q.key_nonce, q.key_ciphertext, q.created_at, q.sender_member_pubkey, q.sender_session_sig,
                q.tracked
         FROM queue q LEFT JOIN bodies b ON b.seq = q.body_seq
         WHERE q.member_id = ?1 AND q.seq > ?2 AND (q.priority = ?5) = ?4 ORDER BY q.seq LIMIT ?3",
    )?;

    stmt.query_map(params![member_id, after_seq as i64, limit as i64, urgent, Priority::Now.to_db()], |row| {
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
                priority: codes::read(row, 8, "queue.priority")?,
                enc: codes::read(row, 9, "queue.enc")?,
                nonce: row.get(10)?,
                ciphertext: row.get::<_, Option<String>>(11)?.unwrap_or_default(),
                created_at: row.get::<_, i64>(14)? as u64,
                tracked: row.get::<_, i64>(17)? != 0,
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
}

fn peer_states(conn: &Connection, mesh_id: &str) -> rusqlite::Result<Vec<PeerStateRecord>> {
    let mut stmt = conn.prepare(
        "SELECT member_id, groups, summary, display_name, stats, last_seen_at FROM peer_state WHERE mesh_id = ?1",
    )?;

    stmt.query_map([mesh_id], |row| {
        Ok(PeerStateRecord {
            member_id: row.get(0)?,
            groups: codes::read_json(row, 1)?,
            summary: row.get(2)?,
            display_name: row.get(3)?,
            stats: codes::read_json(row, 4)?,
            last_seen_at: row.get::<_, i64>(5)? as u64,
        })
    })?
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_job_fails_alone_and_the_writer_keeps_going() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("broker.db"), Durability::Full).expect("open");
        let panicked = store.call(|conn| -> StoreResult<()> {
            conn.execute_batch("CREATE TABLE scratch (x INTEGER); INSERT INTO scratch VALUES (1);")?;
            panic!("a bug in a job")
        });
        assert!(matches!(panicked, Err(StoreError::Database(_))), "{panicked:?}");

        let rows = store
            .call(|conn| {
                conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'scratch'", [], |row| {
                    row.get::<_, i64>(0)
                })
                .map_err(StoreError::from)
            })
            .expect("the writer still answers");
        assert_eq!(rows, 0, "the panicking job's changes were rolled back");
        store.flush().expect("and still commits");
    }

    #[test]
    fn a_database_error_keeps_the_driver_error_as_its_source() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("broker.db"), Durability::Full).expect("open");
        let error = store
            .call(|conn| conn.execute_batch("INSERT INTO no_such_table VALUES (1)").map_err(StoreError::from))
            .expect_err("no such table");
        let source = std::error::Error::source(&error).expect("a source");
        let driver = source.downcast_ref::<rusqlite::Error>().expect("the rusqlite error");
        assert!(driver.to_string().contains("no_such_table"), "{driver}");
        assert!(error.to_string().contains("no_such_table"), "logs show the reason: {error}");
    }

    #[test]
    fn stored_values_the_broker_cannot_read_are_errors_naming_them() {
        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("broker.db"), Durability::Full).expect("open");
        let creator = NewMember { pubkey: "a".repeat(64), display_name: "admin".into(), ..NewMember::default() };
        let (mesh, admin) = store.create_mesh("mesh", "", None, &creator, 1).expect("creates");
        let member = admin.id.clone();
        store
            .call(move |conn| {
                conn.execute_batch("PRAGMA ignore_check_constraints = ON")?;
                conn.execute("UPDATE members SET role = 'owner' WHERE id = ?1", [&member])?;
                conn.execute(
                    "INSERT INTO grants (member_id, peer_pubkey, caps, updated_at) VALUES (?1, ?2, 'not json', 0)",
                    [&member, &"b".repeat(64)],
                )?;
                conn.execute_batch("PRAGMA ignore_check_constraints = OFF")?;
                Ok(())
            })
            .expect("edits the rows behind the store's back");

        let unknown_role = store.member(&admin.id).expect_err("an unknown role");
        assert!(
            matches!(&unknown_role, StoreError::Unreadable { column: "members.role", value } if value == "\"owner\""),
            "{unknown_role:?}"
        );
        let bad_caps = store.grants(&mesh.id).expect_err("malformed caps");
        let StoreError::Sqlite(rusqlite::Error::FromSqlConversionFailure(2, _, reason)) = &bad_caps else {
            panic!("expected a conversion failure of the caps column, got {bad_caps:?}")
        };
        assert!(reason.downcast_ref::<serde_json::Error>().is_some(), "serde's reason is kept: {reason}");
    }
}
