//! Frames the broker sends to a client, and the codes of its refusals.

use serde::{Deserialize, Serialize};

use super::{
    Enc, GroupMembership, MemoriesPage, MemoryStored, PeerType, Priority, Role, StateDeleted, StateEntries,
    StateStored, Stats, Status, WrappedKey,
};

/// Every frame the broker may send.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    HelloAck(HelloAck),
    Ack(Ack),
    Push(Push),
    PeersList(PeersList),
    /// Ours: the answer to `list_members`.
    MembersList(MembersList),
    Resolved(Resolved),
    /// Ours: a member's grants, after `set_grants` or `get_grants`.
    Grants(GrantsFrame),
    AuditResult(AuditResult),
    AuditVerifyResult(AuditVerifyResult),
    /// Ours: the answer to `leave_mesh`; the member's sessions close after it.
    Left(Left),
    /// Ours: the answer to `release_pair`.
    Released(Released),
    /// Ours: the answer to `message_status`.
    MessageStatusResult(MessageStatusResult),
    /// Ours: the answer to `list_scheduled`.
    ScheduledList(ScheduledList),
    /// Ours: the answer to `cancel_scheduled`.
    ScheduleCancelled(ScheduleCancelled),
    /// Ours: the answer to `membership_log`.
    MembershipLogPage(MembershipLogPage),
    /// Ours: the answer to `mesh_keys`.
    MeshKeysResult(MeshKeysResult),
    /// Ours: the answer to `new_epoch` and `add_wraps`.
    KeysStored(KeysStored),
    /// Ours: the answer to `set_key_history`.
    KeyHistorySet(KeyHistorySet),
    /// Ours: the answer to `state_set`.
    StateStored(StateStored),
    /// Ours: the answer to `state_delete`.
    StateDeleted(StateDeleted),
    /// Ours: the answer to `state_get` and `state_list`.
    StateEntries(StateEntries),
    /// Ours: the answer to `remember` and `forget`.
    MemoryStored(MemoryStored),
    /// Ours: the answer to `memories`.
    MemoriesPage(MemoriesPage),
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
            ServerFrame::MembersList(f) => f.req_id.as_deref(),
            ServerFrame::Resolved(f) => f.req_id.as_deref(),
            ServerFrame::Grants(f) => f.req_id.as_deref(),
            ServerFrame::AuditResult(f) => f.req_id.as_deref(),
            ServerFrame::AuditVerifyResult(f) => f.req_id.as_deref(),
            ServerFrame::Left(f) => f.req_id.as_deref(),
            ServerFrame::Released(f) => f.req_id.as_deref(),
            ServerFrame::MessageStatusResult(f) => f.req_id.as_deref(),
            ServerFrame::ScheduledList(f) => f.req_id.as_deref(),
            ServerFrame::ScheduleCancelled(f) => f.req_id.as_deref(),
            ServerFrame::MembershipLogPage(f) => f.req_id.as_deref(),
            ServerFrame::MeshKeysResult(f) => f.req_id.as_deref(),
            ServerFrame::KeysStored(f) => f.req_id.as_deref(),
            ServerFrame::KeyHistorySet(f) => f.req_id.as_deref(),
            ServerFrame::StateStored(f) => f.req_id.as_deref(),
            ServerFrame::StateDeleted(f) => f.req_id.as_deref(),
            ServerFrame::StateEntries(f) => f.req_id.as_deref(),
            ServerFrame::MemoryStored(f) => f.req_id.as_deref(),
            ServerFrame::MemoriesPage(f) => f.req_id.as_deref(),
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
    /// Ours: the acknowledged frame was a `schedule`: its id and first occurrence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleInfo>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// A scheduled message as its scheduler (or an admin) sees it: never its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleInfo {
    pub schedule_id: String,
    pub target_spec: String,
    pub priority: Priority,
    /// ISO 8601 UTC.
    pub next_fire_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    /// Occurrences queued so far.
    pub fired: u64,
    /// Recipient members, as resolved when it was scheduled.
    pub recipients: u32,
    pub created_at: String,
    pub sender_member_pubkey: String,
    pub sender_name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScheduledList {
    pub schedules: Vec<ScheduleInfo>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleCancelled {
    pub schedule_id: String,
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

/// One connected session, as `peers_list` and `peer_updated` show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Ours: connected sessions left out so that the reply stays within one frame and no
    /// member's sessions crowd out the others' (absent when none were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<usize>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// Where each recipient's copy of a tracked message stands. No recipients: the asking member
/// did not send that message with `track`, or its status expired with the queue (7 days).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageStatusResult {
    pub message_id: String,
    pub recipients: Vec<RecipientStatus>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RecipientStatus {
    pub member_pubkey: String,
    pub display_name: String,
    pub state: DeliveryState,
    pub queued_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_at: Option<String>,
}

/// One recipient's copy of a message, from queued to read, or why it was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Waiting in the recipient's queue (it is offline, busy, or has not acknowledged yet).
    Queued,
    /// The recipient's client stored it.
    Delivered,
    /// A session of the recipient read it.
    Read,
    /// Never delivered: it outlived the queue's TTL (7 days).
    Expired,
    /// Never delivered: the recipient left or was removed from the mesh.
    Removed,
}

/// A page of the mesh's membership log (`membership::LogEntry`), oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MembershipLogPage {
    pub entries: Vec<crate::membership::LogEntry>,
    /// More entries follow: ask again with `after` the last one's `seq`.
    pub more: bool,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// The mesh's epoch records, this member's wraps, and the active members without a wrap of the
/// newest epoch.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MeshKeysResult {
    pub epochs: Vec<crate::meshkey::EpochRecord>,
    pub wraps: Vec<crate::meshkey::Wrap>,
    pub unwrapped: Vec<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct KeysStored {
    /// The mesh's newest epoch now.
    pub epoch: u64,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// The key history setting, as the membership log now holds it at `seq`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyHistorySet {
    pub mode: crate::membership::KeyHistory,
    pub seq: u64,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// The mesh's active members, as `members_list` shows them (name order).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MembersList {
    pub members: Vec<MemberInfo>,
    /// Members left out so that the reply stays within one frame (absent when none were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub omitted: Option<usize>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberInfo {
    pub pubkey: String,
    /// The name its sessions use (the one it last used while offline).
    pub display_name: String,
    pub role: Role,
    /// It has a session connected (to any replica).
    pub online: bool,
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Released {
    /// Whether anything was held between the two members.
    pub released: bool,
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
    /// Ours: the request names something that does not exist (for example a schedule).
    NotFound,
    /// Ours: another client got there first (an epoch of the mesh's key was taken, a state
    /// entry moved past the version a write expected).
    Conflict,
    /// Ours: the member is at one of its limits (shared-state entries, memories, their bytes).
    QuotaExceeded,
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
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::QuotaExceeded => "quota_exceeded",
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
    /// The broker holds messages from this sender to this recipient (a runaway exchange); a
    /// person releases them.
    Held,
    /// A `schedule` past the member's limit of pending scheduled messages.
    ScheduleLimit,
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
            SendRejection::Held => "held",
            SendRejection::ScheduleLimit => "schedule_limit",
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn refusal_codes_are_typed_and_unknown_ones_read_as_absent() {
        let text = r#"{"type":"ack","id":"1","messageId":"","queued":false,"error":"rate_limit: slow down","errorCode":"rate_limit"}"#;
        let ServerFrame::Ack(ack) = serde_json::from_str(text).expect("parses") else { panic!("not an ack") };
        assert_eq!(ack.error_code, Some(SendRejection::RateLimit));
        let newer = text.replace(r#""errorCode":"rate_limit""#, r#""errorCode":"quota""#);
        let ServerFrame::Ack(ack) = serde_json::from_str(&newer).expect("parses") else { panic!("not an ack") };
        assert_eq!(ack.error_code, None);
        assert_eq!(SendRejection::Blocked.text("no"), "blocked: no");
    }
}
