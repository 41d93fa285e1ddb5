//! The Postgres store, for brokers that outgrow one process and for operators who keep the mesh
//! in a database they already run, back up and replicate. Several broker processes may serve
//! from one database.
//!
//! It keeps the shape of the SQLite store: hot-path writes ([`Store::submit`]) go to one writer
//! thread per store that commits whatever is waiting in one transaction (group commit), then
//! runs the completions in order; reads and control-plane changes run on pooled connections,
//! each change in its own transaction. What SQLite's single writer made atomic, Postgres gets
//! from locks: the audit chain and a mesh's membership take a transaction-scoped advisory lock
//! per scope ([`lock_scope`]), rows read to be changed are read `FOR UPDATE`, queue sequence
//! numbers come from one database sequence, and migrations apply under an advisory lock so
//! that replicas starting together apply each once.
//!
//! The client is `postgres`, the blocking face of tokio-postgres: `Store`'s methods block (the
//! router calls them off the runtime), and the writer is a plain thread. A connection string
//! may hold a password: it is never logged or shown. Connections are plain TCP or a Unix
//! socket (`host=/run/postgresql`); TLS to the database is not supported yet.

mod accounts;
mod audit;
mod codes;
mod directory;
mod membership;
mod notices;
mod rows;
mod schedules;
mod workspace;
mod writer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, Config, GenericClient, NoTls, Transaction};
use tokio::sync::mpsc;

use super::{
    AccountMesh, AccountRecord, AuditEntry, AuditVerification, Completion, DeviceCodeRecord, DeviceInfo, DeviceRecord,
    EmailCodeOutcome, EndorsementRecord, GrantChange, GrantRecord, InviteRecord, MemberRecord, MembershipAction,
    MemoryRecord, MeshRecord, NewDeviceCode, NewMember, PeerStateRecord, PollOutcome, QueuedEntry, ReceiptRecord,
    Redemption, ScheduleRecord, StateRecord, Store, StoreError, StoreNotice, StoreResult, WorkspaceQuota, WriteOp,
};
use crate::membership::{Change, LogEntry};
use crate::meshkey::{EpochRecord, Wrap};
use crate::protocol::Role;

/// The migrations, under the same names as SQLite's: `EXPECTED_MIGRATION` means the same on
/// either store.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("../migrations/postgres/0001_init.sql")),
    ("0002_accounts", include_str!("../migrations/postgres/0002_accounts.sql")),
    ("0003_hardening", include_str!("../migrations/postgres/0003_hardening.sql")),
    ("0004_confirm_keys", include_str!("../migrations/postgres/0004_confirm_keys.sql")),
    ("0005_email_codes", include_str!("../migrations/postgres/0005_email_codes.sql")),
    ("0006_queue_tails", include_str!("../migrations/postgres/0006_queue_tails.sql")),
    ("0007_receipts", include_str!("../migrations/postgres/0007_receipts.sql")),
    ("0008_schedules", include_str!("../migrations/postgres/0008_schedules.sql")),
    ("0009_membership", include_str!("../migrations/postgres/0009_membership.sql")),
    ("0010_workspace", include_str!("../migrations/postgres/0010_workspace.sql")),
];

/// Idle connections kept for reads and control-plane changes.
const POOL_SIZE: usize = 8;
/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 4096;
/// How long connecting may take before the database counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The advisory lock migrations run under (any fixed number; "cmsh" in ASCII).
const MIGRATION_LOCK: i64 = 0x636d_7368;

impl From<postgres::Error> for StoreError {
    fn from(error: postgres::Error) -> Self {
        StoreError::Postgres(error)
    }
}

/// Turns a clash on a primary key or unique column into `Conflict(what)`; any other failure
/// stays a database error.
fn conflict_on_duplicate(what: &'static str) -> impl FnOnce(postgres::Error) -> StoreError {
    move |error| match error.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => StoreError::Conflict(what.to_owned()),
        _ => error.into(),
    }
}

/// Takes the transaction-scoped advisory lock of `scope` (a mesh id, `account:<id>`, or a name
/// of its own): changes to one scope's audit chain and membership run one at a time across
/// every process on the database. Taking it again in the same transaction is free.
fn lock_scope(db: &mut impl GenericClient, scope: &str) -> Result<(), postgres::Error> {
    db.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", &[&scope])?;
    Ok(())
}

enum Job {
    Write(WriteOp, Option<Completion>),
    /// Answered once every job before it is committed.
    Flush(std::sync::mpsc::Sender<StoreResult<()>>),
    /// Ends the writer thread after the jobs before it.
    Stop,
}

pub struct PostgresStore {
    config: Config,
    /// Names this store's notifications (`notices`), so that its own are not news to it.
    origin: String,
    pool: Mutex<Vec<Client>>,
    /// Jobs for the writer thread (unbounded for the same reasons as SQLite's).
    jobs: mpsc::UnboundedSender<Job>,
    writer: Mutex<Option<JoinHandle<()>>>,
    commits: Arc<AtomicU64>,
}

impl std::fmt::Debug for PostgresStore {
    /// Names the database without the password a connection string may hold.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("hosts", &self.config.get_hosts())
            .field("dbname", &self.config.get_dbname())
            .finish_non_exhaustive()
    }
}

/// A connection string as `postgres` understands it (`postgres://user:pass@host:port/db` or
/// `host=… dbname=…`), with a connect timeout when it names none.
pub fn parse_database_url(url: &str) -> StoreResult<Config> {
    let mut config: Config =
        url.parse().map_err(|error: postgres::Error| StoreError::Invalid(format!("the database URL: {error}")))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok(config)
}

fn connect(config: &Config) -> StoreResult<Client> {
    Ok(config.connect(NoTls)?)
}

impl PostgresStore {
    /// Connects, applies pending migrations (one process at a time) and starts the writer.
    /// Blocks, like every method of [`Store`] but `submit`.
    pub fn open(url: &str) -> StoreResult<Arc<PostgresStore>> {
        let mut config = parse_database_url(url)?;
        let origin = crate::ids::new_id("brk");
        let options = config.get_options().map(|o| format!("{o} ")).unwrap_or_default();
        config.options(&format!("{options}-c {}={origin}", notices::ORIGIN_SETTING));
        let mut client = connect(&config)?;
        migrate(&mut client)?;
        let writer_client = connect(&config)?;
        let (jobs, receiver) = mpsc::unbounded_channel();
        let commits = Arc::new(AtomicU64::new(0));
        let (writer_commits, writer_config) = (commits.clone(), config.clone());
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer::run_writer(writer_client, writer_config, receiver, &writer_commits))
            .map_err(|source| StoreError::Io { context: "cannot start the writer thread".into(), source })?;
        Ok(Arc::new(PostgresStore {
            config,
            origin,
            pool: Mutex::new(vec![client]),
            jobs,
            writer: Mutex::new(Some(thread)),
            commits,
        }))
    }

    /// Runs `f` on a pooled connection (a new one when none is idle). A connection that broke is
    /// not returned to the pool, so the next call reconnects.
    fn with_client<T>(&self, f: impl FnOnce(&mut Client) -> StoreResult<T>) -> StoreResult<T> {
        let pooled = self.pool.lock().expect("pool lock").pop();
        let mut client = match pooled {
            Some(client) if !client.is_closed() => client,
            _ => connect(&self.config)?,
        };
        let result = f(&mut client);
        if !client.is_closed() {
            let mut pool = self.pool.lock().expect("pool lock");
            if pool.len() < POOL_SIZE {
                pool.push(client);
            }
        }
        result
    }

    /// Runs `f` in a transaction of its own, committed when `f` succeeds.
    fn transaction<T>(&self, f: impl FnOnce(&mut Transaction<'_>) -> StoreResult<T>) -> StoreResult<T> {
        self.with_client(|client| {
            let mut tx = client.transaction()?;
            let value = f(&mut tx)?;
            tx.commit()?;
            self.commits.fetch_add(1, Ordering::Relaxed);
            Ok(value)
        })
    }
}

impl Drop for PostgresStore {
    /// Lets the writer commit what is queued, then waits for it to end.
    fn drop(&mut self) {
        // A client closes its connection on a runtime of its own, which must not happen on a
        // thread that drives async tasks (where the last reference may well go away).
        let pool = std::mem::take(&mut *self.pool.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        super::off_runtime(move || drop(pool));
        let _ = self.jobs.send(Job::Stop);
        if let Some(handle) = self.writer.lock().map(|mut h| h.take()).unwrap_or_default() {
            // The last reference may go away inside a completion, on the writer thread itself.
            if handle.thread().id() != std::thread::current().id() {
                let _ = handle.join();
            }
        }
    }
}

/// Applies the migrations not applied yet, in one transaction under [`MIGRATION_LOCK`]: broker
/// processes starting together wait for the first, then find nothing left to do.
fn migrate(client: &mut Client) -> StoreResult<()> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )?;
    for (name, sql) in MIGRATIONS {
        let applied: bool =
            tx.query_one("SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE name = $1)", &[name])?.try_get(0)?;
        if !applied {
            tx.batch_execute(sql).map_err(|source| StoreError::Migration { name, source: Box::new(source) })?;
            tx.execute(
                "INSERT INTO schema_migrations (name, applied_at) VALUES ($1, $2)",
                &[name, &(crate::protocol::now_ms() as i64)],
            )?;
        }
    }
    tx.commit()?;
    Ok(())
}

impl Store for PostgresStore {
    fn submit(&self, op: WriteOp, done: Option<Completion>) {
        if let Err(mpsc::error::SendError(Job::Write(_, Some(done)))) = self.jobs.send(Job::Write(op, done)) {
            done(Err(StoreError::Closed));
        }
    }

    fn flush(&self) -> StoreResult<()> {
        let (reply, result) = std::sync::mpsc::channel();
        self.jobs.send(Job::Flush(reply)).map_err(|_| StoreError::Closed)?;
        result.recv().map_err(|_| StoreError::Closed)?
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn ping(&self) -> StoreResult<()> {
        self.with_client(|client| Ok(client.batch_execute("SELECT 1")?))
    }

    /// Starts a thread that listens on a connection of its own (`notices::listen`); it ends
    /// when the receiver is dropped.
    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<StoreNotice>> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let (config, origin) = (self.config.clone(), self.origin.clone());
        let started = std::thread::Builder::new()
            .name("store-notices".into())
            .spawn(move || notices::listen(config, origin, sender));
        if let Err(error) = started {
            tracing::error!(%error, "cannot start the thread that listens for other broker processes");
        }
        Some(receiver)
    }

    fn announce(&self, text: &str) -> StoreResult<()> {
        if text.len() > super::MAX_ANNOUNCEMENT {
            return Err(StoreError::Invalid(format!("an announcement of {} bytes is too long", text.len())));
        }
        self.with_client(|client| Ok(notices::notify(client, &[format!("a\t{text}")])?))
    }

    fn applied_migrations(&self) -> StoreResult<Vec<String>> {
        self.with_client(|client| {
            let rows = client.query("SELECT name FROM schema_migrations ORDER BY name", &[])?;
            Ok(rows.iter().map(|row| row.try_get(0)).collect::<Result<_, _>>()?)
        })
    }

    fn directory_version(&self) -> StoreResult<i64> {
        self.with_client(|client| {
            let row = client.query_one(
                "SELECT COALESCE((SELECT value::bigint FROM settings WHERE key = 'directory_version'), 0)",
                &[],
            )?;
            Ok(row.try_get(0)?)
        })
    }

    fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        self.with_client(|client| {
            let row = client.query_opt("SELECT value FROM settings WHERE key = $1", &[&key])?;
            Ok(row.map(|row| row.try_get(0)).transpose()?)
        })
    }

    fn set_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        self.transaction(|tx| {
            tx.execute(
                "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                &[&key, &value],
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
        self.with_client(|client| writer::pending_for_member(client, member_id, urgent, after_seq, limit))
    }

    fn queue_depth(&self) -> StoreResult<u64> {
        self.with_client(|client| Ok(client.query_one("SELECT COUNT(*) FROM queue", &[])?.try_get::<_, i64>(0)? as u64))
    }

    fn receipts(&self, mesh_id: &str, sender_member_id: &str, message_id: &str) -> StoreResult<Vec<ReceiptRecord>> {
        self.with_client(|client| writer::receipts(client, mesh_id, sender_member_id, message_id))
    }

    fn peer_states(&self, mesh_id: &str) -> StoreResult<Vec<PeerStateRecord>> {
        self.with_client(|client| writer::peer_states(client, mesh_id))
    }

    fn create_schedule(&self, schedule: &ScheduleRecord, max_per_member: u64) -> StoreResult<()> {
        self.transaction(|tx| schedules::create(tx, schedule, max_per_member, crate::protocol::now_ms()))
    }

    fn schedules(&self, mesh_id: &str, sender_member_id: Option<&str>) -> StoreResult<Vec<ScheduleRecord>> {
        self.with_client(|client| schedules::of_mesh(client, mesh_id, sender_member_id))
    }

    fn cancel_schedule(&self, mesh_id: &str, schedule_id: &str, actor: Option<&str>) -> StoreResult<bool> {
        self.transaction(|tx| schedules::cancel(tx, mesh_id, schedule_id, actor, crate::protocol::now_ms()))
    }

    fn due_schedules(&self, now_ms: u64, limit: usize) -> StoreResult<Vec<ScheduleRecord>> {
        self.with_client(|client| schedules::due(client, now_ms, limit))
    }

    fn state_entries(&self, mesh_id: &str, names: &[String], now_ms: u64) -> StoreResult<Vec<StateRecord>> {
        self.with_client(|client| workspace::entries(client, mesh_id, names, now_ms))
    }

    fn state_page(
        &self,
        mesh_id: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> StoreResult<Vec<StateRecord>> {
        self.with_client(|client| workspace::page(client, mesh_id, after, limit, now_ms))
    }

    fn put_state(&self, record: &StateRecord, quota: &WorkspaceQuota, now_ms: u64) -> StoreResult<()> {
        self.transaction(|tx| workspace::put(tx, record, quota, now_ms))
    }

    fn delete_state(
        &self,
        mesh_id: &str,
        name: &str,
        expected: Option<u64>,
        actor: &str,
        now_ms: u64,
    ) -> StoreResult<u64> {
        self.transaction(|tx| workspace::delete(tx, mesh_id, name, expected, actor, now_ms))
    }

    fn expire_state(&self, now_ms: u64) -> StoreResult<u64> {
        self.with_client(|client| workspace::expire(client, now_ms))
    }

    fn add_memory(&self, record: &MemoryRecord, quota: &WorkspaceQuota, now_ms: u64) -> StoreResult<u64> {
        self.transaction(|tx| workspace::add_memory(tx, record, quota, now_ms))
    }

    fn memories(&self, mesh_id: &str, after: u64, limit: usize) -> StoreResult<Vec<MemoryRecord>> {
        self.with_client(|client| workspace::memories(client, mesh_id, after, limit))
    }

    fn memory(&self, mesh_id: &str, id: &str) -> StoreResult<Option<MemoryRecord>> {
        self.with_client(|client| workspace::memory(client, mesh_id, id))
    }

    fn forget_memory(&self, mesh_id: &str, id: &str, actor: &str, now_ms: u64) -> StoreResult<Option<u64>> {
        self.transaction(|tx| workspace::forget(tx, mesh_id, id, actor, now_ms))
    }

    fn mesh(&self, id_or_slug: &str) -> StoreResult<Option<MeshRecord>> {
        self.with_client(|client| directory::mesh(client, id_or_slug))
    }

    fn meshes(&self) -> StoreResult<Vec<MeshRecord>> {
        self.with_client(directory::meshes)
    }

    fn create_mesh(
        &self,
        name: &str,
        slug_hint: &str,
        owner_account_id: Option<&str>,
        creator: &NewMember,
        now_ms: u64,
    ) -> StoreResult<(MeshRecord, MemberRecord)> {
        let name = name.trim();
        if name.is_empty() {
            return Err(StoreError::Invalid("the mesh name is empty".into()));
        }
        super::check_pubkey(&creator.pubkey)?;
        let base = super::slugify(if slug_hint.trim().is_empty() { name } else { slug_hint });
        self.transaction(|tx| directory::create_mesh(tx, name, &base, owner_account_id, creator, now_ms))
    }

    fn rename_mesh(&self, mesh_id: &str, name: &str, actor: Option<&str>) -> StoreResult<MeshRecord> {
        let name = name.trim();
        if name.is_empty() {
            return Err(StoreError::Invalid("the mesh name is empty".into()));
        }
        self.transaction(|tx| directory::rename_mesh(tx, mesh_id, name, actor, crate::protocol::now_ms()))
    }

    fn archive_mesh(&self, mesh_id: &str, actor: Option<&str>, now_ms: u64) -> StoreResult<MeshRecord> {
        self.transaction(|tx| directory::archive_mesh(tx, mesh_id, actor, now_ms))
    }

    fn members(&self, mesh_id: &str) -> StoreResult<Vec<MemberRecord>> {
        self.with_client(|client| directory::members(client, mesh_id))
    }

    fn member(&self, member_id: &str) -> StoreResult<Option<MemberRecord>> {
        self.with_client(|client| directory::member(client, member_id))
    }

    fn member_by_pubkey(&self, mesh_id: &str, pubkey: &str) -> StoreResult<Option<MemberRecord>> {
        self.with_client(|client| directory::member_by_pubkey(client, mesh_id, pubkey))
    }

    fn key_owner(&self, mesh_id: &str, pubkey: &str) -> StoreResult<Option<String>> {
        self.with_client(|client| directory::key_owner(client, mesh_id, pubkey))
    }

    fn append_key_history(&self, mesh_id: &str, change: &Change, actor: &str, now_ms: u64) -> StoreResult<LogEntry> {
        self.transaction(|tx| membership::append_key_history(tx, mesh_id, change, actor, now_ms))
    }

    fn mesh_epochs(&self, mesh_id: &str) -> StoreResult<Vec<EpochRecord>> {
        self.with_client(|client| membership::epochs(client, mesh_id))
    }

    fn create_epoch(&self, mesh_id: &str, record: &EpochRecord, wraps: &[Wrap], now_ms: u64) -> StoreResult<()> {
        self.transaction(|tx| membership::create_epoch(tx, mesh_id, record, wraps, now_ms))
    }

    fn add_wraps(&self, mesh_id: &str, wraps: &[Wrap], now_ms: u64) -> StoreResult<()> {
        self.transaction(|tx| membership::add_wraps(tx, mesh_id, wraps, now_ms))
    }

    fn wraps_for(&self, mesh_id: &str, recipient: &str) -> StoreResult<Vec<Wrap>> {
        self.with_client(|client| membership::wraps_for(client, mesh_id, recipient))
    }

    fn wrapped(&self, mesh_id: &str, epoch: u64) -> StoreResult<Vec<String>> {
        self.with_client(|client| membership::wrapped(client, mesh_id, epoch))
    }

    fn add_endorsements(&self, endorsements: &[EndorsementRecord]) -> StoreResult<()> {
        self.transaction(|tx| membership::add_endorsements(tx, endorsements))
    }

    fn endorsement(&self, mesh_id: &str, device_key: &str) -> StoreResult<Option<EndorsementRecord>> {
        self.with_client(|client| membership::endorsement(client, mesh_id, device_key))
    }

    fn membership_log(&self, mesh_id: &str, after: u64, limit: usize) -> StoreResult<Vec<LogEntry>> {
        self.with_client(|client| membership::log(client, mesh_id, after, limit))
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
        self.transaction(|tx| directory::add_member(tx, mesh_id, member, role, actor, now_ms))
    }

    fn change_membership(
        &self,
        member_id: &str,
        action: MembershipAction,
        actor: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<MemberRecord> {
        self.transaction(|tx| directory::change_membership(tx, member_id, action, actor, now_ms))
    }

    fn account_meshes(&self, account_id: &str) -> StoreResult<Vec<AccountMesh>> {
        self.with_client(|client| directory::account_meshes(client, account_id))
    }

    fn create_invite(&self, invite: &InviteRecord) -> StoreResult<()> {
        self.transaction(|tx| directory::create_invite(tx, invite, crate::protocol::now_ms()))
    }

    fn invite(&self, invite_id: &str) -> StoreResult<Option<InviteRecord>> {
        self.with_client(|client| directory::invite(client, invite_id))
    }

    fn invites(&self, mesh_id: &str) -> StoreResult<Vec<InviteRecord>> {
        self.with_client(|client| directory::invites(client, mesh_id))
    }

    fn revoke_invite(&self, invite_id: &str, actor: Option<&str>, now_ms: u64) -> StoreResult<InviteRecord> {
        self.transaction(|tx| directory::revoke_invite(tx, invite_id, actor, now_ms))
    }

    fn redeem_invite(&self, invite_id: &str, member: &NewMember, now_ms: u64) -> StoreResult<Redemption> {
        super::check_pubkey(&member.pubkey)?;
        self.transaction(|tx| directory::redeem_invite(tx, invite_id, member, now_ms))
    }

    fn grants(&self, mesh_id: &str) -> StoreResult<Vec<GrantRecord>> {
        self.with_client(|client| directory::grants(client, mesh_id))
    }

    fn set_grants(&self, member_id: &str, changes: &[GrantChange], now_ms: u64) -> StoreResult<Vec<GrantRecord>> {
        self.transaction(|tx| directory::set_grants(tx, member_id, changes, now_ms))
    }

    fn create_account(&self, name: &str, email: Option<&str>, now_ms: u64) -> StoreResult<AccountRecord> {
        self.transaction(|tx| accounts::create_account(tx, name, email, now_ms))
    }

    fn account(&self, id_or_name: &str) -> StoreResult<Option<AccountRecord>> {
        self.with_client(|client| accounts::account(client, id_or_name))
    }

    fn create_device(
        &self,
        account_id: &str,
        info: &DeviceInfo,
        token_hash: &str,
        expires_at: u64,
        now_ms: u64,
    ) -> StoreResult<DeviceRecord> {
        self.transaction(|tx| accounts::create_device(tx, account_id, info, token_hash, expires_at, now_ms))
    }

    fn device_by_token(&self, token_hash: &str) -> StoreResult<Option<(DeviceRecord, AccountRecord)>> {
        self.with_client(|client| accounts::device_by_token(client, token_hash))
    }

    fn touch_device(&self, device_id: &str, now_ms: u64, expires_at: u64) -> StoreResult<()> {
        self.transaction(|tx| accounts::touch_device(tx, device_id, now_ms, expires_at))
    }

    fn devices(&self, account_id: &str) -> StoreResult<Vec<DeviceRecord>> {
        self.with_client(|client| accounts::devices(client, account_id))
    }

    fn revoke_device(&self, device_id: &str, actor: Option<&str>, now_ms: u64) -> StoreResult<Vec<MemberRecord>> {
        self.transaction(|tx| accounts::revoke_device(tx, device_id, actor, now_ms))
    }

    fn create_device_code(&self, code: &NewDeviceCode) -> StoreResult<()> {
        self.transaction(|tx| accounts::create_device_code(tx, code))
    }

    fn device_code(&self, user_code: &str) -> StoreResult<Option<DeviceCodeRecord>> {
        self.with_client(|client| accounts::device_code(client, user_code))
    }

    fn pending_device_codes(&self, account: &AccountRecord, now_ms: u64) -> StoreResult<Vec<DeviceCodeRecord>> {
        self.with_client(|client| accounts::pending_device_codes(client, account, now_ms))
    }

    fn count_device_code_attempt(&self, user_code: &str, max: u32) -> StoreResult<DeviceCodeRecord> {
        self.transaction(|tx| accounts::count_device_code_attempt(tx, user_code, max))
    }

    fn decide_device_code(
        &self,
        user_code: &str,
        approve: bool,
        account_id: &str,
        decided_by: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<DeviceCodeRecord> {
        self.transaction(|tx| accounts::decide_device_code(tx, user_code, approve, account_id, decided_by, now_ms))
    }

    fn poll_device_code(
        &self,
        device_code_hash: &str,
        token_hash: &str,
        token_expires_at: u64,
        claimant: &DeviceInfo,
        now_ms: u64,
    ) -> StoreResult<PollOutcome> {
        self.transaction(|tx| {
            accounts::poll_device_code(tx, device_code_hash, token_hash, token_expires_at, claimant, now_ms)
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
        self.transaction(|tx| accounts::create_login_token(tx, token_hash, account_id, made_by, now_ms, expires_at))
    }

    fn create_email_code(
        &self,
        email: &str,
        code_hash: &str,
        now_ms: u64,
        expires_at: u64,
    ) -> StoreResult<Option<AccountRecord>> {
        self.transaction(|tx| accounts::create_email_code(tx, email, code_hash, now_ms, expires_at))
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
        self.transaction(|tx| {
            accounts::redeem_email_code(
                tx,
                email,
                code_hash,
                max_attempts,
                device,
                token_hash,
                token_expires_at,
                now_ms,
            )
        })
    }

    fn audit_entries(
        &self,
        scope: &str,
        event_type: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> StoreResult<(Vec<AuditEntry>, u64)> {
        self.with_client(|client| audit::entries(client, scope, event_type, limit, offset))
    }

    fn verify_audit(&self, scope: &str) -> StoreResult<AuditVerification> {
        self.with_client(|client| audit::verify(client, scope))
    }
}
