//! Wire frames of the claudemesh WebSocket protocol, and the small value types they carry.
//!
//! This module is the only place that knows field names. It has no I/O and no async:
//! frames are plain serde types. Core frames keep the reference protocol's shapes
//! (camelCase, `type` discriminator); our additions are optional fields and frames that a
//! peer only sees after announcing the matching capability in `hello`.

pub mod account;
mod time;

use serde::{Deserialize, Serialize};

pub use time::{iso8601_ms, now_ms};

/// Highest protocol version this implementation speaks. The reference protocol is version 1.
pub const PROTOCOL_VERSION: u32 = 2;

/// Capabilities a client may announce in `hello.capabilities`; the broker echoes those it
/// supports. On the wire they stay strings, so a capability one side does not know is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// The client proves its session key: `sessionSig` (the member key's signature delegating it)
    /// and `sessionProof` (the session key's own signature over the hello).
    SessionSig,
    /// The client acknowledges each push with a `delivered` frame; unacknowledged pushes are
    /// re-sent after a reconnect. Without it, a push counts as delivered once written.
    DeliveryAck,
    /// Pushes carry an explicit `enc` envelope kind.
    Enc,
    /// End-to-end sealed group and broadcast messages: `send.keys`, `push.key` and `resolve`.
    SealedMulticast,
    /// The sending session hears a `receipt` when a recipient member's client acknowledged one
    /// of its messages (stored it), so it can show "delivered" rather than only "queued".
    DeliveryReceipt,
    /// A refused `send` ack and an empty `resolved` carry `errorCode`, the [`SendRejection`],
    /// next to the human text.
    RefusalCode,
}

impl Capability {
    /// Every capability this implementation supports, in the order `hello_ack` lists them.
    pub const ALL: [Capability; 6] = [
        Capability::SessionSig,
        Capability::DeliveryAck,
        Capability::Enc,
        Capability::SealedMulticast,
        Capability::DeliveryReceipt,
        Capability::RefusalCode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::SessionSig => "session_sig",
            Capability::DeliveryAck => "delivery_ack",
            Capability::Enc => "enc",
            Capability::SealedMulticast => "sealed_multicast",
            Capability::DeliveryReceipt => "delivery_receipt",
            Capability::RefusalCode => "refusal_code",
        }
    }

    pub fn parse(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

/// A set of [`Capability`]s: what a session announced, or what it negotiated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities(u8);

impl Capabilities {
    /// The known capabilities among `names`; unknown names are ignored.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Capabilities {
        names.iter().filter_map(|n| Capability::parse(n.as_ref())).collect()
    }

    pub fn has(self, capability: Capability) -> bool {
        self.0 & Self::bit(capability) != 0
    }

    /// The names, in the order of [`Capability::ALL`].
    pub fn names(self) -> Vec<String> {
        Capability::ALL.into_iter().filter(|c| self.has(*c)).map(|c| c.as_str().to_owned()).collect()
    }

    fn bit(capability: Capability) -> u8 {
        1 << Capability::ALL.iter().position(|c| *c == capability).expect("every capability is in ALL")
    }
}

impl FromIterator<Capability> for Capabilities {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Capabilities {
        Capabilities(iter.into_iter().fold(0, |bits, c| bits | Capabilities::bit(c)))
    }
}

/// Message priority; gates delivery by the recipient's status (see [`Priority::deliverable_to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Now,
    #[default]
    Next,
    Low,
}

impl Priority {
    /// The priority gating table: `now` always goes out; `next` and `low` wait until the
    /// recipient is idle.
    pub fn deliverable_to(self, status: Status) -> bool {
        match status {
            Status::Idle => true,
            Status::Working | Status::Dnd => self == Priority::Now,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Now => "now",
            Priority::Next => "next",
            Priority::Low => "low",
        }
    }
}

/// A peer session's availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Idle,
    Working,
    Dnd,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Idle => "idle",
            Status::Working => "working",
            Status::Dnd => "dnd",
        }
    }
}

/// Who reported a status. Higher ranks win (see `router::status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StatusSource {
    /// Inferred by the broker (the working-status TTL). The reference calls this `jsonl`.
    #[serde(alias = "jsonl")]
    Inferred,
    /// Set by the peer through `set_status`.
    #[default]
    Manual,
    /// Reported by a Claude Code hook through the session's bridge.
    Hook,
}

/// How a pushed payload is encrypted, so a receiver never guesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Enc {
    /// `crypto_box` from the sender's key to the recipient's key (the reference DM format).
    #[default]
    Box,
    /// `crypto_secretbox` under a random content key, the key `crypto_box`ed to each recipient
    /// member separately (`send.keys` / `push.key`).
    Multi,
    /// A broker event: no payload (`nonce` and `ciphertext` are empty).
    System,
}

/// Peer kind shown to others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerType {
    Ai,
    Human,
    Connector,
}

/// A member's role in a mesh. Admins may invite, kick and ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    #[default]
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// A group a session belongs to, with an optional free-form role (`lead`, `member`, `observer`…).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembership {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Self-reported counters (`set_stats`), accumulated per member across sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Stats {
    pub messages_in: u64,
    pub messages_out: u64,
    pub tool_calls: u64,
    /// Seconds the session has been up.
    pub uptime: u64,
    pub errors: u64,
}

impl Stats {
    pub fn plus(self, other: Stats) -> Stats {
        Stats {
            messages_in: self.messages_in.saturating_add(other.messages_in),
            messages_out: self.messages_out.saturating_add(other.messages_out),
            tool_calls: self.tool_calls.saturating_add(other.tool_calls),
            uptime: self.uptime.saturating_add(other.uptime),
            errors: self.errors.saturating_add(other.errors),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client → broker
// ---------------------------------------------------------------------------------------------

/// Every frame a client may send.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello(Hello),
    Send(Send),
    /// Ours (`delivery_ack`): the client has safely stored these pushes.
    Delivered(Delivered),
    SetStatus(SetStatus),
    SetSummary(SetSummary),
    SetStats(SetStats),
    JoinGroup(JoinGroup),
    LeaveGroup(LeaveGroup),
    ListPeers(ListPeers),
    /// Ours (`sealed_multicast`): which members a target reaches, so the sender can seal to each.
    Resolve(Resolve),
    /// Ours: change this member's grants for other members.
    SetGrants(SetGrants),
    /// Ours: this member's grants.
    GetGrants(GetGrants),
    /// Ours (admins): a page of the mesh's audit log.
    AuditQuery(AuditQuery),
    /// Ours (admins): walk the mesh's audit chain.
    AuditVerify(AuditVerify),
    /// Ours: this member leaves the mesh for good (its key is refused afterwards).
    LeaveMesh(LeaveMesh),
}

impl ClientFrame {
    /// The frame's `type` string, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Hello(_) => "hello",
            ClientFrame::Send(_) => "send",
            ClientFrame::Delivered(_) => "delivered",
            ClientFrame::SetStatus(_) => "set_status",
            ClientFrame::SetSummary(_) => "set_summary",
            ClientFrame::SetStats(_) => "set_stats",
            ClientFrame::JoinGroup(_) => "join_group",
            ClientFrame::LeaveGroup(_) => "leave_group",
            ClientFrame::ListPeers(_) => "list_peers",
            ClientFrame::Resolve(_) => "resolve",
            ClientFrame::SetGrants(_) => "set_grants",
            ClientFrame::GetGrants(_) => "get_grants",
            ClientFrame::AuditQuery(_) => "audit_query",
            ClientFrame::AuditVerify(_) => "audit_verify",
            ClientFrame::LeaveMesh(_) => "leave_mesh",
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    pub mesh_id: String,
    pub member_id: String,
    pub pubkey: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_pubkey: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_sig: Option<String>,
    /// Ours: the session key's signature over `crypto::session_proof_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_proof: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_type: Option<PeerType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<GroupMembership>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    pub timestamp: u64,
    pub signature: String,
}

/// One recipient's copy of the content key of an `enc: "multi"` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyWrap {
    /// The recipient member's public key (64 hex).
    pub to: String,
    /// base64 24-byte nonce of the `crypto_box` around the content key.
    pub nonce: String,
    /// base64 `crypto_box` of the 32-byte content key.
    pub ciphertext: String,
}

/// The part of a [`KeyWrap`] a recipient receives in its push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedKey {
    pub nonce: String,
    pub ciphertext: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Send {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub target_spec: String,
    #[serde(default)]
    pub priority: Priority,
    pub nonce: String,
    pub ciphertext: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enc: Option<Enc>,
    /// `enc: "multi"` only: the content key wrapped for each recipient member.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<KeyWrap>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivered {
    pub message_ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SetStatus {
    pub status: Status,
    /// Ours: `hook` when a Claude Code hook reported it through the bridge; default `manual`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<StatusSource>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetSummary {
    pub summary: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetStats {
    pub stats: Stats,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinGroup {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaveGroup {
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListPeers {
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolve {
    pub target_spec: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// Capabilities a grant can give; a member grants them per peer (see `router::grants`).
pub mod grant_cap {
    pub const DM: &str = "dm";
    pub const BROADCAST: &str = "broadcast";
    pub const STATE: &str = "state";
    pub const TOOLS: &str = "tools";
    pub const FILES: &str = "files";
    /// Every capability.
    pub const ALL: &str = "all";

    /// Every capability name a grant may list.
    pub const KNOWN: [&str; 6] = [DM, BROADCAST, STATE, TOOLS, FILES, ALL];
}

/// Grant changes keyed by the other member's key: a list of capabilities, `[]` to block, or
/// `null` to go back to the mesh defaults.
pub type GrantMap = std::collections::BTreeMap<String, Option<Vec<String>>>;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetGrants {
    pub grants: GrantMap,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GetGrants {
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditVerify {
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LeaveMesh {
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Broker → client
// ---------------------------------------------------------------------------------------------

/// Every frame the broker may send.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    HelloAck(HelloAck),
    Ack(Ack),
    Push(Push),
    PeersList(PeersList),
    Resolved(Resolved),
    /// Ours: a member's grants, after `set_grants` or `get_grants`.
    Grants(GrantsFrame),
    AuditResult(AuditResult),
    AuditVerifyResult(AuditVerifyResult),
    /// Ours: the answer to `leave_mesh`; the member's sessions close after it.
    Left(Left),
    /// Ours (`delivery_receipt`): one recipient member acknowledged a message this session sent.
    Receipt(Receipt),
    Error(ErrorFrame),
}

impl ServerFrame {
    /// The `_reqId` of the request this frame answers. A send's `ack` answers by the send's
    /// `id` instead; pushes, receipts and `hello_ack` answer nothing.
    pub fn req_id(&self) -> Option<&str> {
        match self {
            ServerFrame::PeersList(f) => f.req_id.as_deref(),
            ServerFrame::Resolved(f) => f.req_id.as_deref(),
            ServerFrame::Grants(f) => f.req_id.as_deref(),
            ServerFrame::AuditResult(f) => f.req_id.as_deref(),
            ServerFrame::AuditVerifyResult(f) => f.req_id.as_deref(),
            ServerFrame::Left(f) => f.req_id.as_deref(),
            ServerFrame::Error(f) => f.req_id.as_deref(),
            ServerFrame::Ack(f) => f.req_id.as_deref(),
            ServerFrame::HelloAck(_) | ServerFrame::Push(_) | ServerFrame::Receipt(_) => None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelloAck {
    pub presence_id: String,
    pub member_display_name: String,
    /// Ours: the mesh's slug, so a client can label the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_slug: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_groups: Option<Vec<GroupMembership>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_stats: Option<Stats>,
    pub protocol_version: u32,
    #[serde(default)]
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub message_id: String,
    pub queued: bool,
    /// Present when `queued` is false: a stable code, a colon, and what to do about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Ours (`refusal_code`): the code of `error`, typed.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "SendRejection::lenient")]
    pub error_code: Option<SendRejection>,
    /// Ours: the number of recipient members the message was queued for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipients: Option<u32>,
    /// Ours (`sealed_multicast`): members the target reaches that `keys` did not cover; they
    /// did not get the message. The sender may `resolve` again and send them a copy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uncovered: Vec<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Push {
    pub message_id: String,
    pub mesh_id: String,
    /// The sender's session key, else its member key, or `"system"` for broker events.
    pub sender_pubkey: String,
    /// Ours: the sender's member key, so a receiver can check the session binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_member_pubkey: Option<String>,
    /// Ours: the member's signature delegating `senderPubkey` (see `crypto::session_binding_bytes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sender_session_sig: Option<String>,
    pub priority: Priority,
    pub nonce: String,
    pub ciphertext: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_data: Option<serde_json::Value>,
    /// Ours (`enc`): the envelope kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enc: Option<Enc>,
    /// Ours (`sealed_multicast`): this recipient's copy of the content key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<WrappedKey>,
    /// Ours: the target the sender addressed (`@group`, `*`, or a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_spec: Option<String>,
}

/// Borrowing twin of [`Push`] for the broker's hot path: serializes to exactly the same JSON
/// (including the `type` tag) without copying the envelope.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushRef<'a> {
    #[serde(rename = "type")]
    pub frame_type: &'static str,
    pub message_id: &'a str,
    pub mesh_id: &'a str,
    pub sender_pubkey: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_member_pubkey: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_session_sig: Option<&'a str>,
    pub priority: Priority,
    pub nonce: &'a str,
    pub ciphertext: &'a str,
    pub created_at: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtype: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_data: Option<&'a serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enc: Option<Enc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'a WrappedKey>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_spec: Option<&'a str>,
}

impl PushRef<'_> {
    pub const TYPE: &'static str = "push";
}

/// A recipient member's client stored a message: sent to the session that sent it, while that
/// session is connected (a receipt is not queued; a sender that was away keeps "queued").
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    pub message_id: String,
    /// The recipient member whose client acknowledged it.
    pub member_pubkey: String,
    pub delivered_at: String,
}

/// A broker event: a `push` with `subtype: "system"`, its name in `event` and its data in
/// `eventData`. The wire keeps the reference protocol's shapes; this type is how both ends
/// build and read them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "eventData", rename_all = "snake_case")]
pub enum SystemEvent {
    /// A member's first session came online (it has no saved peer state).
    PeerJoined(PeerJoined),
    /// A member with saved peer state came back online.
    PeerReturned(PeerReturned),
    /// A session went away.
    PeerLeft(PeerLeft),
}

/// The `push.subtype` of broker events.
pub const SYSTEM_SUBTYPE: &str = "system";

impl SystemEvent {
    /// The `event` name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            SystemEvent::PeerJoined(_) => "peer_joined",
            SystemEvent::PeerReturned(_) => "peer_returned",
            SystemEvent::PeerLeft(_) => "peer_left",
        }
    }

    /// The `eventData` object on the wire.
    pub fn data(&self) -> serde_json::Value {
        let data = match self {
            SystemEvent::PeerJoined(data) => serde_json::to_value(data),
            SystemEvent::PeerReturned(data) => serde_json::to_value(data),
            SystemEvent::PeerLeft(data) => serde_json::to_value(data),
        };
        data.expect("event data serializes")
    }

    /// Reads a system push's `event` and `eventData`; an error for an event this build does not
    /// know or data of the wrong shape.
    pub fn parse(event: &str, data: serde_json::Value) -> Result<SystemEvent, serde_json::Error> {
        serde_json::from_value(serde_json::json!({ "event": event, "eventData": data }))
    }

    /// The peer the event is about: its display name, routing key and member key.
    pub fn peer(&self) -> (&str, &str, &str) {
        match self {
            SystemEvent::PeerJoined(p) => (&p.name, &p.pubkey, &p.member_pubkey),
            SystemEvent::PeerReturned(p) => (&p.name, &p.pubkey, &p.member_pubkey),
            SystemEvent::PeerLeft(p) => (&p.name, &p.pubkey, &p.member_pubkey),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerJoined {
    pub name: String,
    /// The session's routing key (its session key, else its member key).
    pub pubkey: String,
    /// Ours: the member key, so a client can tell its own other sessions.
    #[serde(default)]
    pub member_pubkey: String,
    #[serde(default)]
    pub groups: Vec<GroupMembership>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerReturned {
    pub name: String,
    pub pubkey: String,
    #[serde(default)]
    pub member_pubkey: String,
    #[serde(default)]
    pub groups: Vec<GroupMembership>,
    pub last_seen_at: String,
    #[serde(default)]
    pub summary: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerLeft {
    pub name: String,
    pub pubkey: String,
    #[serde(default)]
    pub member_pubkey: String,
}

/// One connected session, as `peers_list` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerInfo {
    /// Session key when the session has one, else the member key.
    pub pubkey: String,
    pub member_pubkey: String,
    /// Ours: the member's signature binding `pubkey` to `memberPubkey`, when the session proved it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_sig: Option<String>,
    pub display_name: String,
    pub status: Status,
    pub summary: Option<String>,
    pub groups: Vec<GroupMembership>,
    #[serde(default)]
    pub session_id: String,
    pub connected_at: String,
    #[serde(default)]
    pub cwd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_type: Option<PeerType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PeersList {
    pub peers: Vec<PeerInfo>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// A member a target reaches, as `resolved` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Recipient {
    pub member_pubkey: String,
    pub display_name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resolved {
    pub target_spec: String,
    pub recipients: Vec<Recipient>,
    /// Why `recipients` is empty, with the same stable code prefix as a refused send's ack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Ours (`refusal_code`): the code of `error`, typed.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "SendRejection::lenient")]
    pub error_code: Option<SendRejection>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GrantsFrame {
    /// Explicit grants only; a key absent here gets the mesh defaults.
    pub grants: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// One audit entry as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub id: i64,
    pub event_type: String,
    pub actor: Option<String>,
    pub payload: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditResult {
    pub entries: Vec<AuditRecord>,
    pub total: u64,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditVerifyResult {
    pub valid: bool,
    pub entries: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<i64>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Left {
    pub member_id: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// Codes of `error` frames. Handshake refusals are followed by close code 1008.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Malformed,
    TimestampSkew,
    BadSignature,
    Unauthorized,
    BadSessionPubkey,
    Capacity,
    Replay,
    NoHello,
    /// Ours: a second `hello` on an established connection.
    AlreadyHello,
    /// Ours: the broker could not complete a request (for example a storage failure).
    Internal,
    /// Ours: the session is being closed because it does not read its socket fast enough.
    SlowConsumer,
    /// Ours: the member was kicked, banned or revoked while connected.
    Revoked,
    /// Ours: the request needs a role this member does not have (for example admin).
    Forbidden,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::TimestampSkew => "timestamp_skew",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::BadSessionPubkey => "bad_session_pubkey",
            ErrorCode::Capacity => "capacity",
            ErrorCode::Replay => "replay",
            ErrorCode::NoHello => "no_hello",
            ErrorCode::AlreadyHello => "already_hello",
            ErrorCode::Internal => "internal",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::Revoked => "revoked",
            ErrorCode::Forbidden => "forbidden",
        }
    }
}

/// Why a `send` (or a `resolve`) was refused: the stable code that starts the `error` text, and
/// the typed `errorCode` for sessions that negotiated `refusal_code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendRejection {
    RateLimit,
    TooLarge,
    UnknownRecipient,
    NoRecipient,
    Blocked,
    Malformed,
    Unavailable,
}

impl SendRejection {
    pub fn code(self) -> &'static str {
        match self {
            SendRejection::RateLimit => "rate_limit",
            SendRejection::TooLarge => "too_large",
            SendRejection::UnknownRecipient => "unknown_recipient",
            SendRejection::NoRecipient => "no_recipient",
            SendRejection::Blocked => "blocked",
            SendRejection::Malformed => "malformed",
            SendRejection::Unavailable => "unavailable",
        }
    }

    /// The human text of a refusal: the code, a colon, the detail.
    pub fn text(self, detail: &str) -> String {
        format!("{}: {detail}", self.code())
    }

    /// Reads `errorCode`; a code this build does not know reads as absent (a newer broker's
    /// refusal is still a refusal, with its text).
    fn lenient<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<SendRejection>, D::Error> {
        let code = Option::<String>::deserialize(deserializer)?;
        Ok(code.and_then(|code| serde_json::from_value(serde_json::Value::String(code)).ok()))
    }
}

/// What a `targetSpec` names, by its form alone (the broker then resolves keys to members or
/// sessions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// `*` or `@all`: every other member of the mesh.
    Broadcast,
    /// `@name`: members whose sessions joined that group.
    Group(&'a str),
    /// 64 lowercase hex: a member key or a session key.
    Key(&'a str),
}

impl<'a> Target<'a> {
    pub fn parse(spec: &'a str) -> Option<Target<'a>> {
        if spec == "*" || spec == "@all" {
            return Some(Target::Broadcast);
        }
        if let Some(name) = spec.strip_prefix('@') {
            return (!name.is_empty()).then_some(Target::Group(name));
        }
        is_key_hex(spec).then_some(Target::Key(spec))
    }
}

/// True for a 64-char lowercase hex string, the encoding of ed25519 public keys.
pub fn is_key_hex(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// True for a 128-char lowercase hex string, the encoding of signatures. One spelling only, so
/// a signature seen once is recognised again (the hello replay guard compares strings).
pub fn is_signature_hex(value: &str) -> bool {
    value.len() == 128 && value.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gating_table_matches_the_protocol() {
        let cases = [
            (Status::Idle, [true, true, true]),
            (Status::Working, [true, false, false]),
            (Status::Dnd, [true, false, false]),
        ];
        for (status, expected) in cases {
            let got = [Priority::Now, Priority::Next, Priority::Low].map(|p| p.deliverable_to(status));
            assert_eq!(got, expected, "status {status:?}");
        }
    }

    #[test]
    fn hello_parses_reference_shape() {
        let text = r#"{"type":"hello","meshId":"m","memberId":"u","pubkey":"ab","sessionId":"s","pid":7,"cwd":"/x","timestamp":1764230400000,"signature":"cd","groups":[{"name":"backend","role":"lead"}]}"#;
        let ClientFrame::Hello(hello) = serde_json::from_str(text).expect("parses") else {
            panic!("not a hello");
        };
        assert_eq!(hello.pid, Some(7));
        assert_eq!(hello.groups.expect("groups")[0].role.as_deref(), Some("lead"));
        assert!(hello.capabilities.is_empty());
    }

    #[test]
    fn send_defaults_priority_to_next() {
        let text = r#"{"type":"send","id":"1","targetSpec":"*","nonce":"","ciphertext":"aGk="}"#;
        let ClientFrame::Send(send) = serde_json::from_str(text).expect("parses") else {
            panic!("not a send");
        };
        assert_eq!(send.priority, Priority::Next);
        assert!(send.keys.is_empty());
    }

    #[test]
    fn push_serializes_camel_case_and_omits_absent_fields() {
        let frame = ServerFrame::Push(Push {
            message_id: "m1".into(),
            mesh_id: "mesh".into(),
            sender_pubkey: "system".into(),
            priority: Priority::Low,
            created_at: "2026-11-27T09:00:00.000Z".into(),
            subtype: Some("system".into()),
            event: Some("peer_joined".into()),
            ..Push::default()
        });
        let text = serde_json::to_string(&frame).expect("serializes");
        assert_eq!(
            text,
            r#"{"type":"push","messageId":"m1","meshId":"mesh","senderPubkey":"system","priority":"low","nonce":"","ciphertext":"","createdAt":"2026-11-27T09:00:00.000Z","subtype":"system","event":"peer_joined"}"#
        );
    }

    #[test]
    fn push_ref_serializes_like_push() {
        let key = WrappedKey { nonce: "bg==".into(), ciphertext: "Yw==".into() };
        let data = serde_json::json!({"name": "x"});
        let borrowed = PushRef {
            frame_type: PushRef::TYPE,
            message_id: "m",
            mesh_id: "h",
            sender_pubkey: "s",
            sender_member_pubkey: Some("p"),
            sender_session_sig: Some("g"),
            priority: Priority::Now,
            nonce: "n",
            ciphertext: "c",
            created_at: "t",
            subtype: Some("system"),
            event: Some("e"),
            event_data: Some(&data),
            enc: Some(Enc::Multi),
            key: Some(&key),
            target_spec: Some("*"),
        };
        let owned = ServerFrame::Push(Push {
            message_id: "m".into(),
            mesh_id: "h".into(),
            sender_pubkey: "s".into(),
            sender_member_pubkey: Some("p".into()),
            sender_session_sig: Some("g".into()),
            priority: Priority::Now,
            nonce: "n".into(),
            ciphertext: "c".into(),
            created_at: "t".into(),
            subtype: Some("system".into()),
            event: Some("e".into()),
            event_data: Some(data.clone()),
            enc: Some(Enc::Multi),
            key: Some(key.clone()),
            target_spec: Some("*".into()),
        });
        assert_eq!(
            serde_json::to_string(&borrowed).expect("serializes"),
            serde_json::to_string(&owned).expect("serializes")
        );
    }

    #[test]
    fn system_events_keep_the_reference_shapes() {
        let joined = SystemEvent::PeerJoined(PeerJoined {
            name: "alice".into(),
            pubkey: "k".into(),
            member_pubkey: "m".into(),
            groups: vec![],
        });
        assert_eq!(joined.name(), "peer_joined");
        assert_eq!(
            joined.data(),
            serde_json::json!({"name": "alice", "pubkey": "k", "memberPubkey": "m", "groups": []})
        );
        let returned = SystemEvent::parse(
            "peer_returned",
            serde_json::json!({"name": "bob", "pubkey": "k", "groups": [], "lastSeenAt": "t", "summary": null}),
        )
        .expect("a reference client's peer_returned parses");
        assert_eq!(returned.peer(), ("bob", "k", ""));
        assert_eq!(SystemEvent::parse(returned.name(), returned.data()).expect("round trip"), returned);
        assert!(SystemEvent::parse("peer_danced", serde_json::json!({})).is_err());
        assert!(SystemEvent::parse("peer_left", serde_json::json!({"name": 5})).is_err());
    }

    #[test]
    fn status_source_accepts_reference_jsonl() {
        let source: StatusSource = serde_json::from_str("\"jsonl\"").expect("parses");
        assert_eq!(source, StatusSource::Inferred);
        assert!(StatusSource::Hook > StatusSource::Manual && StatusSource::Manual > StatusSource::Inferred);
    }

    #[test]
    fn target_forms() {
        let key = "a".repeat(64);
        assert_eq!(Target::parse("*"), Some(Target::Broadcast));
        assert_eq!(Target::parse("@all"), Some(Target::Broadcast));
        assert_eq!(Target::parse("@backend"), Some(Target::Group("backend")));
        assert_eq!(Target::parse(&key), Some(Target::Key(&key)));
        assert_eq!(Target::parse("@"), None);
        assert_eq!(Target::parse(&"A".repeat(64)), None);
        assert_eq!(Target::parse("alice"), None);
    }

    #[test]
    fn refusal_codes_are_typed_and_unknown_ones_read_as_absent() {
        let text = r#"{"type":"ack","id":"1","messageId":"","queued":false,"error":"rate_limit: slow down","errorCode":"rate_limit"}"#;
        let ServerFrame::Ack(ack) = serde_json::from_str(text).expect("parses") else { panic!("not an ack") };
        assert_eq!(ack.error_code, Some(SendRejection::RateLimit));
        let newer = text.replace(r#""errorCode":"rate_limit""#, r#""errorCode":"quota""#);
        let ServerFrame::Ack(ack) = serde_json::from_str(&newer).expect("parses") else { panic!("not an ack") };
        assert_eq!(ack.error_code, None);
        assert_eq!(SendRejection::Blocked.text("no"), "blocked: no");
    }

    #[test]
    fn capabilities_ignore_unknown_names_and_list_in_order() {
        let caps = Capabilities::from_names(&["delivery_receipt", "teleport", "session_sig"]);
        assert!(caps.has(Capability::SessionSig) && caps.has(Capability::DeliveryReceipt));
        assert!(!caps.has(Capability::Enc));
        assert_eq!(caps.names(), ["session_sig", "delivery_receipt"]);
        assert_eq!(Capabilities::from_names(&Capabilities::from_iter(Capability::ALL).names()).names().len(), 6);
    }
}
