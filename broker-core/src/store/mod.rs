//! Durable state behind one trait: meshes, members, invites, per-member saved presence, and the
//! per-recipient message queue.
//!
//! The queue only ever holds sealed envelopes ([`Envelope`]): the store has no way to see
//! message content. Writes on the hot path ([`Store::submit`]) are batched by the implementation
//! and report back through a completion once durably committed; nothing is acknowledged to a
//! sender before that. `SqliteStore` is the embedded default; a Postgres implementation can sit
//! behind the same trait.

mod sqlite;

use std::sync::Arc;

use crate::protocol::{Enc, GroupMembership, Priority, Role, Stats, WrappedKey};

pub use sqlite::{Durability, SqliteStore};

/// Names of the embedded migrations, in order. `/health/ready` compares `EXPECTED_MIGRATION`
/// against these.
pub const MIGRATIONS: &[(&str, &str)] = &[("0001_init", include_str!("migrations/0001_init.sql"))];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub id: String,
    pub mesh_id: String,
    pub pubkey: String,
    pub display_name: String,
    pub role: Role,
    pub created_at: u64,
    /// Set when the member left, was kicked or was revoked: hello is refused.
    pub revoked_at: Option<u64>,
    /// Set while banned: hello is refused until unbanned.
    pub banned_at: Option<u64>,
}

impl MemberRecord {
    pub fn is_active(&self) -> bool {
        self.revoked_at.is_none() && self.banned_at.is_none()
    }
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
    pub expires_at: u64,
    pub issuer_member_id: String,
    pub created_at: u64,
    pub revoked_at: Option<u64>,
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
}

/// Where one recipient member's copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub member_id: String,
    /// Only this session may receive it (a DM to a session key).
    pub session_pubkey: Option<String>,
    /// Every session of the member but this one (a sender's own other sessions).
    pub exclude_session: Option<String>,
    /// This recipient's copy of the content key (`enc: "multi"`).
    pub key: Option<WrappedKey>,
}

/// A message to enqueue: one envelope, one queue entry per recipient member.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub envelope: Arc<Envelope>,
    pub deliveries: Vec<Delivery>,
}

/// A queue entry as loaded back from storage.
#[derive(Debug, Clone)]
pub struct QueuedEntry {
    pub seq: u64,
    pub envelope: Arc<Envelope>,
    pub delivery: Delivery,
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
        member_id: String,
        session_pubkey: String,
    },
    SavePeerState(PeerStateRecord),
    /// Drop undelivered entries created before this time (ms).
    ExpireBefore(u64),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Sequence numbers, in the order of `NewMessage::deliveries`.
    Enqueued(Vec<u64>),
    /// How many queue entries the op removed or changed.
    Changed(u64),
}

/// Called once the op is durably committed (or failed). Runs on the store's writer thread, in
/// commit order: it must be quick and must not block.
pub type Completion = Box<dyn FnOnce(StoreResult<WriteOutcome>) + Send>;

/// The outcome of redeeming an invite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redemption {
    pub member: MemberRecord,
    pub already_member: bool,
}

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
    fn applied_migrations(&self) -> StoreResult<Vec<String>>;
    /// Changes whenever meshes or members change, from this process or another.
    fn directory_version(&self) -> StoreResult<i64>;

    fn mesh(&self, id_or_slug: &str) -> StoreResult<Option<MeshRecord>>;
    fn meshes(&self) -> StoreResult<Vec<MeshRecord>>;
    fn members(&self, mesh_id: &str) -> StoreResult<Vec<MemberRecord>>;
    fn member_by_pubkey(&self, mesh_id: &str, pubkey: &str) -> StoreResult<Option<MemberRecord>>;
    fn peer_states(&self, mesh_id: &str) -> StoreResult<Vec<PeerStateRecord>>;
    /// Entries for `member_id` with `seq > after_seq`, in order, at most `limit`.
    fn pending_for_member(&self, member_id: &str, after_seq: u64, limit: usize) -> StoreResult<Vec<QueuedEntry>>;
    /// Undelivered queue entries in total.
    fn queue_depth(&self) -> StoreResult<u64>;

    /// Creates a mesh and its first member, an admin holding `creator_pubkey`, atomically. The
    /// slug is unique per broker: `slug_hint` (or the name) slugified, with `-2`, `-3`… on clashes.
    fn create_mesh(
        &self,
        name: &str,
        slug_hint: &str,
        creator_pubkey: &str,
        creator_name: &str,
        now_ms: u64,
    ) -> StoreResult<(MeshRecord, MemberRecord)>;
    fn add_member(
        &self,
        mesh_id: &str,
        pubkey: &str,
        display_name: &str,
        role: Role,
        now_ms: u64,
    ) -> StoreResult<MemberRecord>;
    fn create_invite(&self, invite: &InviteRecord) -> StoreResult<()>;
    fn invite(&self, invite_id: &str) -> StoreResult<Option<InviteRecord>>;
    /// Atomically: refuses a revoked, expired or used-up invite; returns the existing member for
    /// a pubkey that already joined (without using the invite up); else adds the member with
    /// the invite's role and counts one use.
    fn redeem_invite(&self, invite_id: &str, pubkey: &str, display_name: &str, now_ms: u64) -> StoreResult<Redemption>;

    /// A broker-wide setting (for example the public URL the last `serve` announced).
    fn setting(&self, key: &str) -> StoreResult<Option<String>>;
    fn set_setting(&self, key: &str, value: &str) -> StoreResult<()>;
}
