//! Durable state behind one trait: accounts and devices, meshes, members, invites, grants, the
//! audit chain, per-member saved presence, and the per-recipient message queue.
//!
//! The queue only ever holds sealed envelopes ([`Envelope`]): the store has no way to see
//! message content. Writes on the hot path ([`Store::submit`]) are batched by the implementation
//! and report back through a completion once durably committed; nothing is acknowledged to a
//! sender before that. Control-plane changes append their audit entry in the same transaction,
//! so an event is recorded exactly when it happens. `SqliteStore` is the embedded default; a
//! Postgres implementation can sit behind the same trait, and `store::conformance` (feature
//! `store-conformance`) holds the checks every implementation passes.

mod codes;
#[cfg(feature = "store-conformance")]
pub mod conformance;
mod postgres;
mod records;
mod sqlite;

use std::sync::Arc;

use crate::membership::{Admission, AdmittedVia, Change, LogEntry, RemovalReason};
use crate::meshkey::{EpochRecord, Wrap};
use crate::protocol::{Enc, GroupMembership, MemoryEntry, Priority, Role, StateEntry, Stats, WrappedKey};

pub use self::postgres::PostgresStore;
pub(crate) use self::postgres::parse_database_url;
pub use sqlite::{Durability, SqliteStore};
pub(crate) use sqlite::{create_private_dir, restrict_permissions};

/// Names of the embedded migrations, in order. `/health/ready` compares `EXPECTED_MIGRATION`
/// against these.
pub const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_init", include_str!("migrations/0001_init.sql")),
    ("0002_accounts", include_str!("migrations/0002_accounts.sql")),
    ("0003_hardening", include_str!("migrations/0003_hardening.sql")),
    ("0004_confirm_keys", include_str!("migrations/0004_confirm_keys.sql")),
    ("0005_email_codes", include_str!("migrations/0005_email_codes.sql")),
    ("0006_queue_tails", include_str!("migrations/0006_queue_tails.sql")),
    ("0007_receipts", include_str!("migrations/0007_receipts.sql")),
    ("0008_schedules", include_str!("migrations/0008_schedules.sql")),
    ("0009_membership", include_str!("migrations/0009_membership.sql")),
    ("0010_workspace", include_str!("migrations/0010_workspace.sql")),
];

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

pub(crate) fn check_pubkey(pubkey: &str) -> StoreResult<()> {
    if crate::protocol::is_key_hex(pubkey) {
        return Ok(());
    }
    Err(StoreError::Invalid(format!(
        "public key {pubkey:?} is not 64 lowercase hex characters (an ed25519 public key)"
    )))
}

/// Runs `f` on a thread of its own and waits for it: for the few store calls made from async
/// code (a broker's start-up). [`Store`]'s methods block, and the Postgres client's blocking
/// calls refuse to run on a thread that drives async tasks.
pub fn off_runtime<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| scope.spawn(f).join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
}

/// Why a store call failed. Callers branch on the kind (`NotFound` becomes a 404, `Conflict` a
/// 409…); a database failure keeps the driver's error as its source.
///
/// The variants that carry a source also print its text: the broker logs errors with their
/// `Display` alone, and "database error" without the reason would not help anyone.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed a statement of this call.
    #[error("database error: {0}")]
    Sqlite(#[source] rusqlite::Error),
    /// Postgres failed a statement of this call, or could not be reached.
    #[error("database error: {0}")]
    Postgres(#[source] ::postgres::Error),
    /// The transaction holding this write could not begin or commit. Every job of the batch
    /// fails with the one error, hence shared.
    #[error("the write batch failed: {0}")]
    Batch(#[source] Arc<dyn std::error::Error + Send + Sync>),
    /// An embedded migration did not apply.
    #[error("migration {name} failed: {source}")]
    Migration {
        name: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The file system refused something around the database (its directory, its permissions)
    /// or the writer thread could not start.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The database holds a value this broker cannot read back (an unknown code, a missing
    /// value): a newer broker wrote it, or someone edited the database.
    #[error("column {column} holds {value}, which this broker cannot read")]
    Unreadable { column: &'static str, value: String },
    /// A failure known only by its description: a write that panicked inside the store, or a
    /// failure a caller met around the store (a blocking task that did not finish).
    #[error("store failure: {0}")]
    Database(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("the store is shut down")]
    Closed,
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshRecord {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub created_at: u64,
    pub archived_at: Option<u64>,
    /// The account that created it (may archive it).
    pub owner_account_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: String,
    pub mesh_id: String,
    pub pubkey: String,
    pub display_name: String,
    pub role: Role,
    pub created_at: u64,
    /// Set when the member left, was kicked, or its device was revoked: hello is refused.
    pub revoked_at: Option<u64>,
    /// Set while banned: hello is refused until unbanned.
    pub banned_at: Option<u64>,
    pub account_id: Option<String>,
    /// The signed-in device holding this member's key.
    pub device_id: Option<String>,
}

impl MemberRecord {
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none() && self.banned_at.is_none()
    }
}

/// A member to add: its key and where it lives.
#[derive(Debug, Clone, Default)]
pub struct NewMember {
    pub pubkey: String,
    pub display_name: String,
    pub account_id: Option<String>,
    pub device_id: Option<String>,
    /// The signatures that admit it, for the mesh's membership log; `None` when only the broker
    /// vouches for it (an account's device enrolling).
    pub admission: Option<Admission>,
}

/// What a member's last session left behind, restored on its next hello.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerStateRecord {
    pub member_id: String,
    pub groups: Vec<GroupMembership>,
    pub summary: Option<String>,
    pub display_name: Option<String>,
    /// Cumulative over every finished session.
    pub stats: Stats,
    pub last_seen_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteRecord {
    pub id: String,
    pub mesh_id: String,
    pub role: Role,
    pub max_uses: u32,
    pub used_count: u32,
    /// Seconds since the epoch, as in the signed token (other times here are milliseconds).
    pub expires_at: u64,
    pub issuer_member_id: String,
    pub created_at: u64,
    pub revoked_at: Option<u64>,
    /// Where it was emailed, if it was.
    pub email: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountRecord {
    pub id: String,
    pub name: String,
    pub email: Option<String>,
    pub created_at: u64,
}

/// What a device says about itself when it asks to sign in, plus the address it asked from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceInfo {
    pub hostname: String,
    pub platform: String,
    pub arch: String,
    pub app_version: String,
    pub ip: String,
    /// The device's confirmation key (hex ed25519 public key), when it registered one.
    pub confirm_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    pub id: String,
    pub account_id: String,
    pub info: DeviceInfo,
    pub created_at: u64,
    pub last_seen_at: u64,
    /// The bearer token stops working at this time unless renewed by use.
    pub expires_at: u64,
    pub revoked_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceCodeStatus {
    Pending,
    Approved,
    Denied,
    /// The token was handed out.
    Consumed,
}

impl DeviceCodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceCodeStatus::Pending => "pending",
            DeviceCodeStatus::Approved => "approved",
            DeviceCodeStatus::Denied => "denied",
            DeviceCodeStatus::Consumed => "consumed",
        }
    }
}

/// A device login waiting for (or past) its approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceCodeRecord {
    pub user_code: String,
    pub info: DeviceInfo,
    pub created_at: u64,
    pub expires_at: u64,
    pub interval_ms: u64,
    pub status: DeviceCodeStatus,
    pub account_id: Option<String>,
    pub attempts: u32,
}

/// A new device login.
#[derive(Debug, Clone)]
pub struct NewDeviceCode {
    pub device_code_hash: String,
    pub user_code: String,
    pub info: DeviceInfo,
    /// The account (name or id) the device says it wants to join.
    pub account_hint: Option<String>,
    pub created_at: u64,
    pub expires_at: u64,
    pub interval_ms: u64,
}

/// What polling a device code finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    Pending,
    /// Polled faster than the interval; the interval grew by 5 s.
    SlowDown,
    Denied,
    Expired,
    /// Approved: the device now exists with the token whose hash was passed in.
    Issued {
        account: AccountRecord,
        device: DeviceRecord,
    },
    /// Unknown code, or its token was already handed out.
    Invalid,
}

/// A new audit entry; the store chains it (prev hash, hash, time) when it writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// A mesh id, or `account:<id>` for account events.
    pub scope: String,
    pub event_type: String,
    /// The acting member id (or device id for account events); `None` for the broker/operator.
    pub actor: Option<String>,
    pub payload: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub scope: String,
    pub event_type: String,
    pub actor: Option<String>,
    pub payload: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
    pub created_at: String,
}

impl AuditEntry {
    /// The hash of this entry's own fields chained to its `prev_hash`: equal to `hash` unless
    /// the entry was altered after it was written.
    pub fn recomputed_hash(&self) -> String {
        crate::crypto::audit_hash(
            &self.prev_hash,
            &self.scope,
            &self.event_type,
            self.actor.as_deref(),
            &self.payload,
            &self.created_at,
        )
    }
}

/// The result of walking a scope's audit chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditVerification {
    pub valid: bool,
    pub entries: u64,
    /// The id of the first entry whose hash or link does not check out.
    pub broken_at: Option<i64>,
}

/// A member's endorsement of a device's confirmation key in a mesh, made when it approved the
/// device's sign-in (`membership::endorsement_bytes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndorsementRecord {
    pub mesh_id: String,
    pub device_key: String,
    pub sponsor: String,
    pub signature: String,
    pub created_at: u64,
}

/// What an admin or the member itself does to a membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipAction {
    /// Removed by an admin (can come back only with a new invite).
    Kick,
    /// Suspended by an admin; hello refused until unbanned.
    Ban,
    Unban,
    /// Removed by the member itself.
    Leave,
}

impl MembershipAction {
    /// The membership-log entry for this action, when it changed whether `before` is a member.
    fn log_change(self, before: &MemberRecord, after: &MemberRecord) -> Option<Change> {
        let member = after.pubkey.clone();
        match (before.is_active(), after.is_active()) {
            (true, false) => Some(Change::Removed {
                member,
                reason: match self {
                    MembershipAction::Ban => RemovalReason::Ban,
                    MembershipAction::Leave => RemovalReason::Leave,
                    MembershipAction::Kick | MembershipAction::Unban => RemovalReason::Kick,
                },
            }),
            (false, true) => Some(Change::Admitted {
                member,
                role: after.role,
                via: AdmittedVia::Unban,
                by: None,
                after: None,
                signature: None,
            }),
            _ => None,
        }
    }

    pub fn event(self) -> &'static str {
        match self {
            MembershipAction::Kick => "member_kicked",
            MembershipAction::Ban => "member_banned",
            MembershipAction::Unban => "member_unbanned",
            MembershipAction::Leave => "member_left",
        }
    }
}

/// The membership-log entry for `member`, just added to the directory `how` (`create`,
/// `invite`, `added`) with the signatures in `admission`. `None` for a mesh's first member
/// without a genesis signature: such a mesh keeps no log.
fn admission_change(member: &MemberRecord, how: &str, admission: Option<&Admission>) -> Option<Change> {
    let (pubkey, role) = (member.pubkey.clone(), member.role);
    let vouched = |via| Change::Admitted { member: pubkey.clone(), role, via, by: None, after: None, signature: None };
    Some(match (how, admission) {
        ("create", Some(Admission::Genesis { signature, .. })) => {
            Change::Genesis { creator: pubkey.clone(), signature: signature.clone() }
        }
        ("create", _) => return None,
        (_, Some(Admission::Invite { token, proof })) => {
            Change::Invited { member: pubkey.clone(), role, invite: token.clone(), proof: proof.clone() }
        }
        (_, Some(Admission::Admin { by, after, signature })) => Change::Admitted {
            member: pubkey.clone(),
            role,
            via: AdmittedVia::Admin,
            by: Some(by.clone()),
            after: Some(*after),
            signature: Some(signature.clone()),
        },
        (_, Some(Admission::Endorsed { sponsor, endorsement, device, binding })) => Change::Endorsed {
            member: pubkey.clone(),
            role,
            sponsor: sponsor.clone(),
            endorsement: endorsement.clone(),
            device: device.clone(),
            binding: binding.clone(),
        },
        ("invite", _) => vouched(AdmittedVia::Invite),
        _ => vouched(AdmittedVia::Enrolment),
    })
}

/// A member's grant for one peer: `None` resets to the mesh defaults, `Some([])` blocks.
pub type GrantChange = (String, Option<Vec<String>>);

/// One stored grant: `member_id` lets `peer_pubkey` do `caps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub member_id: String,
    pub peer_pubkey: String,
    pub caps: Vec<String>,
}

/// A sealed message as the broker holds it: routing metadata plus opaque `nonce`/`ciphertext`.
/// Shared by every recipient's queue entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub message_id: String,
    pub mesh_id: String,
    pub sender_member_id: String,
    pub sender_member_pubkey: String,
    /// The sender's session key, else its member key.
    pub sender_pubkey: String,
    /// The sender member's signature delegating `sender_pubkey` (when it is a proven session key),
    /// so recipients can check the binding themselves.
    pub sender_session_sig: Option<String>,
    pub target_spec: String,
    pub priority: Priority,
    pub enc: Enc,
    pub nonce: String,
    pub ciphertext: String,
    /// Milliseconds since the epoch.
    pub created_at: u64,
    /// The sender asked for its delivery status (`send.track`): each recipient's copy has a
    /// receipt row, stamped when it is acknowledged and when it is read.
    pub tracked: bool,
}

/// Where one recipient member's copy goes (stored as JSON with a schedule).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub member_id: String,
    /// Only this session may receive it (a DM to a session key).
    pub session_pubkey: Option<String>,
    /// Every session of the member but this one (a sender's own other sessions).
    pub exclude_session: Option<String>,
    /// This recipient's copy of the content key (`enc: "multi"`).
    pub key: Option<WrappedKey>,
}

/// A message to enqueue: one envelope, one queue entry per recipient member, and the
/// metadata-only audit entries to append with it.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub envelope: Arc<Envelope>,
    pub deliveries: Vec<Delivery>,
    pub audit: Vec<AuditEvent>,
    /// This message is an occurrence of a schedule: queued only together with moving the
    /// schedule past it (else the write fails with `Conflict`, and nothing is queued).
    pub fire: Option<ScheduleFire>,
}

/// Moving a schedule past the occurrence `due_at` that is being queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleFire {
    pub schedule_id: String,
    /// The occurrence being queued: the schedule's `next_fire_at` must still be this.
    pub due_at: u64,
    /// The occurrence after it; `None` ends the schedule (a one-shot).
    pub next: Option<u64>,
}

/// A scheduled or recurring message: the sealed envelope and its recipients as resolved when it
/// was scheduled, and when it fires next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRecord {
    pub id: String,
    pub mesh_id: String,
    pub sender_member_id: String,
    pub sender_member_pubkey: String,
    pub sender_pubkey: String,
    pub sender_session_sig: Option<String>,
    pub target_spec: String,
    pub priority: Priority,
    pub enc: Enc,
    pub nonce: String,
    pub ciphertext: String,
    pub deliveries: Vec<Delivery>,
    /// Five-field cron expression of a recurring message (`None`: once).
    pub cron: Option<String>,
    /// IANA time zone the cron expression reads in.
    pub tz: Option<String>,
    /// Milliseconds since the epoch.
    pub next_fire_at: u64,
    /// Occurrences queued so far.
    pub fired: u64,
    pub created_at: u64,
}

/// A shared-state entry as the store keeps it: the sealed entry and the member that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRecord {
    pub mesh_id: String,
    pub writer_member_id: String,
    pub entry: StateEntry,
}

/// A memory as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryRecord {
    pub mesh_id: String,
    pub writer_member_id: String,
    pub entry: MemoryEntry,
}

/// What one member may keep in a mesh's shared workspace: live state entries, memories, and
/// the bytes of both (their ciphertext).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkspaceQuota {
    pub state_entries: u64,
    pub memories: u64,
    pub bytes: u64,
}

/// A queue entry as loaded back from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEntry {
    pub seq: u64,
    pub envelope: Arc<Envelope>,
    pub delivery: Delivery,
}

/// Where one recipient's copy of a tracked message stands, as the sender may ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRecord {
    /// The recipient member.
    pub member_id: String,
    pub queued_at: u64,
    /// When its client acknowledged (stored) it.
    pub delivered_at: Option<u64>,
    /// When one of its sessions marked it read.
    pub read_at: Option<u64>,
    /// Its queue entry is still there (false and undelivered: it expired, or the member was
    /// removed).
    pub queued: bool,
}

/// Hot-path writes, batched and committed together.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Store a message; the outcome carries each delivery's assigned queue sequence number.
    Enqueue(NewMessage),
    /// Recipients acknowledged these entries: `(member_id, seq)`.
    Acknowledge(Vec<(String, u64)>),
    /// A session left for good: its session-only entries now go to any session of the member.
    ReleaseSession {
        mesh_id: String,
        member_id: String,
        session_pubkey: String,
    },
    SavePeerState(PeerStateRecord),
    /// A member used this session key in its mesh (recorded once; a key is never another
    /// member's afterwards).
    RecordSessionKey {
        mesh_id: String,
        member_id: String,
        pubkey: String,
        at_ms: u64,
    },
    /// Sessions of `member_id` read these messages: their receipts (if their senders tracked
    /// them) are stamped read, and delivered if they were not yet.
    MarkRead {
        mesh_id: String,
        member_id: String,
        message_ids: Vec<String>,
        at_ms: u64,
    },
    /// Drop undelivered entries, and receipts, created before this time (ms).
    ExpireBefore(u64),
    Audit(Vec<AuditEvent>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Each delivery's place in its recipient's queue, in the order of `NewMessage::deliveries`.
    Enqueued(Vec<QueueSlot>),
    /// How many rows the op removed or changed: queue entries (`Acknowledge`, `ReleaseSession`,
    /// `ExpireBefore`), saved states (`SavePeerState`: 0 for an unknown member) or audit entries.
    Changed(u64),
}

/// Where an enqueued entry landed in its recipient member's queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueSlot {
    pub seq: u64,
    /// The sequence number of the newest entry of the same member and lane (`now` apart from the
    /// rest) when this one committed, 0 when there was none. A store with one writer may always
    /// say 0: its commits are seen in sequence order. With several broker processes on one
    /// database, a broker that has seen entries only up to a lower number knows that another
    /// process committed one in between.
    pub after: u64,
}

/// What another broker process on the same database did that this one must act on. Stores
/// that one process owns (SQLite) have no such news.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreNotice {
    /// An entry was committed to a member's queue (whole, to be pushed without reading it back).
    Entry { slot: QueueSlot, entry: QueuedEntry },
    /// Entries were committed to a member's queue, the newest with `seq` in its lane (entries too
    /// large to carry whole, or not readable by this version): read them from the store.
    Queued { mesh_id: String, member_id: String, urgent: bool, seq: u64 },
    /// A member's session-only entries became member-wide (`WriteOp::ReleaseSession`).
    Released { mesh_id: String, member_id: String },
    /// Meshes, members or grants changed.
    Directory,
    /// What another process announced with [`Store::announce`].
    Announcement(String),
    /// The stream of notices was interrupted: anything may have been missed.
    Resync,
}

/// Called once the op is durably committed (or failed). Runs on the store's writer thread, in
/// commit order: it must be quick and must not block.
pub type Completion = Box<dyn FnOnce(StoreResult<WriteOutcome>) + Send>;

/// What redeeming an emailed sign-in code did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmailCodeOutcome {
    /// The code was right: a new device of the account holds the token.
    Issued { account: AccountRecord, device: DeviceRecord },
    /// No live code for that address, or not this one (one attempt of the live code spent).
    Refused,
    /// The live code has had all its attempts: a new one must be asked for.
    Exhausted,
}

/// The outcome of redeeming an invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redemption {
    pub member: MemberRecord,
    pub already_member: bool,
}

/// A mesh as one account sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountMesh {
    pub mesh: MeshRecord,
    /// The highest role the account holds there.
    pub role: Role,
    pub member_count: u64,
}

/// Devices signed in through a device's approval or login token this long before that device
/// is revoked are revoked with it: a stolen device must not leave accomplices behind.
/// The longest text [`Store::announce`] carries (Postgres notifications hold at most 8000
/// bytes, and the announcing process's id rides along).
pub const MAX_ANNOUNCEMENT: usize = 7_000;

pub const APPROVAL_RECALL_WINDOW: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// Durable state. Methods other than [`Store::submit`] block: call them from a blocking thread.
pub trait Store: Send + Sync + 'static {
    /// Queues a hot-path write; `done` runs after the batch holding it commits.
    fn submit(&self, op: WriteOp, done: Option<Completion>);
    /// Blocks until every write submitted before this call is committed.
    fn flush(&self) -> StoreResult<()>;
    /// Transactions committed since the store was opened.
    fn commits(&self) -> u64;

    /// Cheap round trip for readiness checks.
    fn ping(&self) -> StoreResult<()>;

    /// News of the other broker processes on this database, in the order it was committed;
    /// `None` when no other process can share the store. Never this process's own notices.
    /// The first notice is `Resync`, once everything after it will be heard.
    fn subscribe(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<StoreNotice>>;
    /// Tells the other broker processes' subscriptions `text` (at most
    /// [`MAX_ANNOUNCEMENT`] bytes), in the order of this process's calls. A no-op without them.
    fn announce(&self, text: &str) -> StoreResult<()>;
    fn applied_migrations(&self) -> StoreResult<Vec<String>>;
    /// Changes whenever meshes, members or grants change, from this process or another.
    fn directory_version(&self) -> StoreResult<i64>;
    /// A broker-wide setting (for example the public URL the last `serve` announced).
    fn setting(&self, key: &str) -> StoreResult<Option<String>>;
    fn set_setting(&self, key: &str, value: &str) -> StoreResult<()>;

    // --- the message queue -------------------------------------------------------------------

    /// Entries for `member_id` with `seq > after_seq`, in order, at most `limit`: the `now`
    /// ones when `urgent`, else the `next` and `low` ones.
    fn pending_for_member(
        &self,
        member_id: &str,
        urgent: bool,
        after_seq: u64,
        limit: usize,
    ) -> StoreResult<Vec<QueuedEntry>>;
    /// Undelivered queue entries in total.
    fn queue_depth(&self) -> StoreResult<u64>;
    /// The receipts of a tracked message `sender_member_id` sent, one per recipient member
    /// (empty for a message it did not send, did not track, or whose receipts expired).
    fn receipts(&self, mesh_id: &str, sender_member_id: &str, message_id: &str) -> StoreResult<Vec<ReceiptRecord>>;
    fn peer_states(&self, mesh_id: &str) -> StoreResult<Vec<PeerStateRecord>>;

    // --- scheduled messages ------------------------------------------------------------------

    /// Stores a schedule, with its `schedule_created` audit entry; `Conflict("schedule_limit")`
    /// when its sender already has `max_per_member` schedules in the mesh.
    fn create_schedule(&self, schedule: &ScheduleRecord, max_per_member: u64) -> StoreResult<()>;
    /// The mesh's schedules (only `sender_member_id`'s when given), soonest first.
    fn schedules(&self, mesh_id: &str, sender_member_id: Option<&str>) -> StoreResult<Vec<ScheduleRecord>>;
    /// Deletes a schedule of the mesh, with its `schedule_cancelled` audit entry by `actor`;
    /// `false` when there is none by that id.
    fn cancel_schedule(&self, mesh_id: &str, schedule_id: &str, actor: Option<&str>) -> StoreResult<bool>;
    /// Schedules due at `now_ms` (their next occurrence at or before it), soonest first, at
    /// most `limit`.
    fn due_schedules(&self, now_ms: u64, limit: usize) -> StoreResult<Vec<ScheduleRecord>>;

    // --- the shared workspace: sealed state entries and memories -------------------------------

    /// The live entries (not expired at `now_ms`) among `names`.
    fn state_entries(&self, mesh_id: &str, names: &[String], now_ms: u64) -> StoreResult<Vec<StateRecord>>;
    /// Live entries named after `after`, in name order, at most `limit`.
    fn state_page(
        &self,
        mesh_id: &str,
        after: Option<&str>,
        limit: usize,
        now_ms: u64,
    ) -> StoreResult<Vec<StateRecord>>;
    /// Stores `record` as its name's entry if the live entry is at `record.entry.version - 1`
    /// (0: none is), its epoch is the mesh's newest, and its writer stays within `quota`;
    /// `Conflict` with `version_mismatch`, `stale_epoch` or `quota_exceeded` otherwise.
    /// Overwriting another member's entry is audited (`state_overwritten`).
    fn put_state(&self, record: &StateRecord, quota: &WorkspaceQuota, now_ms: u64) -> StoreResult<()>;
    /// Removes the live entry of `name` (only while at `expected`, when given:
    /// `Conflict("version_mismatch")`), audited `state_deleted` by the member `actor`; the
    /// version removed, 0 when none was live.
    fn delete_state(
        &self,
        mesh_id: &str,
        name: &str,
        expected: Option<u64>,
        actor: &str,
        now_ms: u64,
    ) -> StoreResult<u64>;
    /// Deletes the entries expired at `now_ms`; how many.
    fn expire_state(&self, now_ms: u64) -> StoreResult<u64>;
    /// Stores a memory under the mesh's next `seq` (returned) if its epoch is the newest and its
    /// writer stays within `quota`; `Conflict` with `stale_epoch`, `quota_exceeded`, or
    /// `duplicate` (the id is taken).
    fn add_memory(&self, record: &MemoryRecord, quota: &WorkspaceQuota, now_ms: u64) -> StoreResult<u64>;
    /// The mesh's memories with `seq > after`, in order, at most `limit`.
    fn memories(&self, mesh_id: &str, after: u64, limit: usize) -> StoreResult<Vec<MemoryRecord>>;
    fn memory(&self, mesh_id: &str, id: &str) -> StoreResult<Option<MemoryRecord>>;
    /// Empties a memory's content and moves it to the mesh's next `seq` (returned), audited
    /// `memory_forgotten` by the member `actor`; `None` when no memory by that id is left.
    fn forget_memory(&self, mesh_id: &str, id: &str, actor: &str, now_ms: u64) -> StoreResult<Option<u64>>;

    // --- meshes and members ------------------------------------------------------------------

    fn mesh(&self, id_or_slug: &str) -> StoreResult<Option<MeshRecord>>;
    /// Every mesh, archived ones too, in creation order.
    fn meshes(&self) -> StoreResult<Vec<MeshRecord>>;
    /// Creates a mesh and its first member, an admin, atomically. The slug is unique per broker:
    /// `slug_hint` (or the name) slugified, with `-2`, `-3`… on clashes.
    fn create_mesh(
        &self,
        name: &str,
        slug_hint: &str,
        owner_account_id: Option<&str>,
        creator: &NewMember,
        now_ms: u64,
    ) -> StoreResult<(MeshRecord, MemberRecord)>;
    fn rename_mesh(&self, mesh_id: &str, name: &str, actor: Option<&str>) -> StoreResult<MeshRecord>;
    fn archive_mesh(&self, mesh_id: &str, actor: Option<&str>, now_ms: u64) -> StoreResult<MeshRecord>;
    /// Every member the mesh ever had (removed ones too), in joining order.
    fn members(&self, mesh_id: &str) -> StoreResult<Vec<MemberRecord>>;
    fn member(&self, member_id: &str) -> StoreResult<Option<MemberRecord>>;
    fn member_by_pubkey(&self, mesh_id: &str, pubkey: &str) -> StoreResult<Option<MemberRecord>>;
    /// The member that used `pubkey` in `mesh_id`, as its member key or a session key, now or
    /// ever (removed members included).
    fn key_owner(&self, mesh_id: &str, pubkey: &str) -> StoreResult<Option<String>>;
    fn add_member(
        &self,
        mesh_id: &str,
        member: &NewMember,
        role: Role,
        actor: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<MemberRecord>;
    /// Kick, ban, unban or leave; returns the member as it is now.
    fn change_membership(
        &self,
        member_id: &str,
        action: MembershipAction,
        actor: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<MemberRecord>;
    /// The mesh's membership log from entry `after + 1` on, at most `limit` entries; empty for
    /// a mesh that keeps none.
    fn membership_log(&self, mesh_id: &str, after: u64, limit: usize) -> StoreResult<Vec<LogEntry>>;
    /// Appends an admin's key history setting (a `Change::KeyHistory`) to the mesh's log, audited
    /// `key_history_set` by the member `actor`, if the log's newest entry is the one the admin
    /// saw (`after`): `Conflict("log_moved")` otherwise.
    fn append_key_history(&self, mesh_id: &str, change: &Change, actor: &str, now_ms: u64) -> StoreResult<LogEntry>;
    /// The mesh's epoch records, oldest first.
    fn mesh_epochs(&self, mesh_id: &str) -> StoreResult<Vec<EpochRecord>>;
    /// Stores `record` with its wraps, with an `epoch_created` audit entry, if its epoch follows
    /// the newest one (1 for the first); `Conflict("epoch_taken")` otherwise.
    fn create_epoch(&self, mesh_id: &str, record: &EpochRecord, wraps: &[Wrap], now_ms: u64) -> StoreResult<()>;
    /// Adds wraps of existing epochs; a recipient's wrap of an epoch already there is kept.
    fn add_wraps(&self, mesh_id: &str, wraps: &[Wrap], now_ms: u64) -> StoreResult<()>;
    /// Every wrap addressed to `recipient` in the mesh, by epoch.
    fn wraps_for(&self, mesh_id: &str, recipient: &str) -> StoreResult<Vec<Wrap>>;
    /// The recipients holding a wrap of `epoch`.
    fn wrapped(&self, mesh_id: &str, epoch: u64) -> StoreResult<Vec<String>>;
    /// Keeps endorsements of device keys (one per mesh and device key: a newer one replaces it).
    fn add_endorsements(&self, endorsements: &[EndorsementRecord]) -> StoreResult<()>;
    fn endorsement(&self, mesh_id: &str, device_key: &str) -> StoreResult<Option<EndorsementRecord>>;
    /// Meshes where `account_id` has an active member, in creation order.
    fn account_meshes(&self, account_id: &str) -> StoreResult<Vec<AccountMesh>>;

    // --- invites -----------------------------------------------------------------------------

    /// `NotFound` for an unknown mesh, `Conflict` for an id already used.
    fn create_invite(&self, invite: &InviteRecord) -> StoreResult<()>;
    fn invite(&self, invite_id: &str) -> StoreResult<Option<InviteRecord>>;
    /// The mesh's invites, newest first.
    fn invites(&self, mesh_id: &str) -> StoreResult<Vec<InviteRecord>>;
    fn revoke_invite(&self, invite_id: &str, actor: Option<&str>, now_ms: u64) -> StoreResult<InviteRecord>;
    /// Atomically: refuses a revoked, expired or used-up invite; returns the existing member for
    /// a pubkey that already joined (without using the invite up); else adds the member with
    /// the invite's role and counts one use. Refusals are `NotFound("invite_not_found")` and
    /// `Conflict` with `invite_revoked`, `invite_expired`, `invite_exhausted` or `member_revoked`
    /// (a removed member's key), the codes the join route maps.
    fn redeem_invite(&self, invite_id: &str, member: &NewMember, now_ms: u64) -> StoreResult<Redemption>;

    // --- grants ------------------------------------------------------------------------------

    fn grants(&self, mesh_id: &str) -> StoreResult<Vec<GrantRecord>>;
    /// Applies changes to `member_id`'s grants; returns its grants afterwards.
    fn set_grants(&self, member_id: &str, changes: &[GrantChange], now_ms: u64) -> StoreResult<Vec<GrantRecord>>;

    // --- accounts and devices ----------------------------------------------------------------

    fn create_account(&self, name: &str, email: Option<&str>, now_ms: u64) -> StoreResult<AccountRecord>;
    fn account(&self, id_or_name: &str) -> StoreResult<Option<AccountRecord>>;
    /// A device signed in without a device code (the local owner, open sign-up).
    fn create_device(
        &self,
        account_id: &str,
        info: &DeviceInfo,
        token_hash: &str,
        expires_at: u64,
        now_ms: u64,
    ) -> StoreResult<DeviceRecord>;
    /// The device and account a bearer token (by hash) belongs to, if not revoked.
    fn device_by_token(&self, token_hash: &str) -> StoreResult<Option<(DeviceRecord, AccountRecord)>>;
    /// Records use: last seen now, expiry pushed to `expires_at`.
    fn touch_device(&self, device_id: &str, now_ms: u64, expires_at: u64) -> StoreResult<()>;
    /// The account's devices, revoked ones too, in creation order.
    fn devices(&self, account_id: &str) -> StoreResult<Vec<DeviceRecord>>;
    /// Revokes the device and every member key it holds; returns those members as they are now
    /// (revoked). Approvals and login tokens the device gave that nobody redeemed yet die with
    /// it, and devices they signed in within [`APPROVAL_RECALL_WINDOW`] before are revoked too
    /// (audited as `device_revoked_with_approver`), and so on down the line.
    fn revoke_device(&self, device_id: &str, actor: Option<&str>, now_ms: u64) -> StoreResult<Vec<MemberRecord>>;

    // --- device login (RFC 8628) ---------------------------------------------------------------

    fn create_device_code(&self, code: &NewDeviceCode) -> StoreResult<()>;
    fn device_code(&self, user_code: &str) -> StoreResult<Option<DeviceCodeRecord>>;
    /// Pending, unexpired device logins that named `account` (its id or name) as the one they
    /// want, oldest first.
    fn pending_device_codes(&self, account: &AccountRecord, now_ms: u64) -> StoreResult<Vec<DeviceCodeRecord>>;
    /// Counts one lookup or decision on a code; past `max`, the code is denied for good.
    fn count_device_code_attempt(&self, user_code: &str, max: u32) -> StoreResult<DeviceCodeRecord>;
    /// Approves (for `account_id`) or denies a pending code, by the signed-in device `decided_by`.
    fn decide_device_code(
        &self,
        user_code: &str,
        approve: bool,
        account_id: &str,
        decided_by: Option<&str>,
        now_ms: u64,
    ) -> StoreResult<DeviceCodeRecord>;
    /// One poll by the device; when approved, creates the device holding `token_hash`. A login
    /// token's device is described by `claimant` (who pasted it), a device code's by its request.
    fn poll_device_code(
        &self,
        device_code_hash: &str,
        token_hash: &str,
        token_expires_at: u64,
        claimant: &DeviceInfo,
        now_ms: u64,
    ) -> StoreResult<PollOutcome>;
    /// A one-time login token for `account_id`, made by the signed-in device `made_by`: approved
    /// from the start, redeemed like a device code.
    fn create_login_token(
        &self,
        token_hash: &str,
        account_id: &str,
        made_by: &str,
        now_ms: u64,
        expires_at: u64,
    ) -> StoreResult<()>;

    // --- sign-in by emailed code ------------------------------------------------------------

    /// A new sign-in code (by hash) for the account whose email is `email` (compared without
    /// case), replacing any live one; `None`, and nothing stored, when no account has it.
    fn create_email_code(
        &self,
        email: &str,
        code_hash: &str,
        now_ms: u64,
        expires_at: u64,
    ) -> StoreResult<Option<AccountRecord>>;
    /// Redeems the live code of `email`: right, it signs in a new device holding `token_hash`
    /// and ends the code; wrong, it spends one of `max_attempts`.
    #[allow(clippy::too_many_arguments)]
    fn redeem_email_code(
        &self,
        email: &str,
        code_hash: &str,
        max_attempts: u32,
        device: &DeviceInfo,
        token_hash: &str,
        token_expires_at: u64,
        now_ms: u64,
    ) -> StoreResult<EmailCodeOutcome>;

    // --- audit -------------------------------------------------------------------------------

    /// Newest first; `event_type` filters; returns the page and the total matching.
    fn audit_entries(
        &self,
        scope: &str,
        event_type: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> StoreResult<(Vec<AuditEntry>, u64)>;
    fn verify_audit(&self, scope: &str) -> StoreResult<AuditVerification>;
}
