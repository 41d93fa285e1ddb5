//! Frames a client sends to the broker.

use serde::{Deserialize, Serialize};

use crate::crypto::{self, Keypair};

use super::{
    Capability, Enc, Forget, GroupMembership, Memories, PeerType, Priority, Remember, StateDelete, StateGet, StateList,
    StateSet, Stats, Status, StatusSource,
};

/// Every frame a client may send.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    Hello(Hello),
    Send(Send),
    /// Ours: a message sealed now and queued later, once (`at`) or at every occurrence of
    /// `cron`; answered with an `ack` carrying `scheduleId`.
    Schedule(ScheduleSend),
    /// Ours: this member's scheduled messages (every member's, for an admin).
    ListScheduled(ListScheduled),
    /// Ours: cancel a scheduled message (its scheduler, or an admin).
    CancelScheduled(CancelScheduled),
    /// Ours (`delivery_ack`): the client has safely stored these pushes.
    Delivered(Delivered),
    SetStatus(SetStatus),
    SetSummary(SetSummary),
    SetStats(SetStats),
    JoinGroup(JoinGroup),
    LeaveGroup(LeaveGroup),
    ListPeers(ListPeers),
    /// Ours: every active member of the mesh, online or not (a name typed for an offline
    /// member still reaches its queue).
    ListMembers(ListMembers),
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
    /// Ours: a person lets messages between this member and `peer` flow again after the
    /// broker held them (see `pair_held`).
    ReleasePair(ReleasePair),
    /// Ours: where each recipient's copy of a tracked message this member sent stands.
    MessageStatus(MessageStatus),
    /// Ours: a session of this member read these messages (their senders' `message_status`
    /// shows it). No reply.
    MarkRead(MarkRead),
    /// Ours: a page of the mesh's signed membership log, for the client to verify.
    MembershipLog(MembershipLog),
    /// Ours: the mesh's epoch records and this member's wraps of their keys.
    MeshKeys(MeshKeys),
    /// Ours: the next epoch of the mesh's key, with a wrap for each entitled member.
    NewEpoch(NewEpoch),
    /// Ours: wraps of existing epochs' keys for members that have none.
    AddWraps(AddWraps),
    /// Ours (admins): set the mesh's key history, signed, into the membership log.
    SetKeyHistory(SetKeyHistory),
    /// Ours: write a shared-state entry (compare-and-set on its version).
    StateSet(StateSet),
    /// Ours: remove a shared-state entry.
    StateDelete(StateDelete),
    /// Ours: shared-state entries by blinded name.
    StateGet(StateGet),
    /// Ours: a page of the mesh's shared state.
    StateList(StateList),
    /// Ours: store a memory.
    Remember(Remember),
    /// Ours: the mesh's memories after a sequence number (a client keeps its own index).
    Memories(Memories),
    /// Ours: forget a memory.
    Forget(Forget),
}

impl ClientFrame {
    /// The frame's `type` string, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Hello(_) => "hello",
            ClientFrame::Send(_) => "send",
            ClientFrame::Schedule(_) => "schedule",
            ClientFrame::ListScheduled(_) => "list_scheduled",
            ClientFrame::CancelScheduled(_) => "cancel_scheduled",
            ClientFrame::Delivered(_) => "delivered",
            ClientFrame::SetStatus(_) => "set_status",
            ClientFrame::SetSummary(_) => "set_summary",
            ClientFrame::SetStats(_) => "set_stats",
            ClientFrame::JoinGroup(_) => "join_group",
            ClientFrame::LeaveGroup(_) => "leave_group",
            ClientFrame::ListPeers(_) => "list_peers",
            ClientFrame::ListMembers(_) => "list_members",
            ClientFrame::Resolve(_) => "resolve",
            ClientFrame::SetGrants(_) => "set_grants",
            ClientFrame::GetGrants(_) => "get_grants",
            ClientFrame::AuditQuery(_) => "audit_query",
            ClientFrame::AuditVerify(_) => "audit_verify",
            ClientFrame::LeaveMesh(_) => "leave_mesh",
            ClientFrame::ReleasePair(_) => "release_pair",
            ClientFrame::MessageStatus(_) => "message_status",
            ClientFrame::MarkRead(_) => "mark_read",
            ClientFrame::MembershipLog(_) => "membership_log",
            ClientFrame::MeshKeys(_) => "mesh_keys",
            ClientFrame::NewEpoch(_) => "new_epoch",
            ClientFrame::AddWraps(_) => "add_wraps",
            ClientFrame::SetKeyHistory(_) => "set_key_history",
            ClientFrame::StateSet(_) => "state_set",
            ClientFrame::StateDelete(_) => "state_delete",
            ClientFrame::StateGet(_) => "state_get",
            ClientFrame::StateList(_) => "state_list",
            ClientFrame::Remember(_) => "remember",
            ClientFrame::Memories(_) => "memories",
            ClientFrame::Forget(_) => "forget",
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

impl Hello {
    /// Whether the signature must cover the v2 bytes: the client announced `hello_v2`.
    pub fn is_v2(&self) -> bool {
        self.capabilities.iter().any(|c| c == Capability::HelloV2.as_str())
    }

    /// The exact bytes `signature` covers: v2 when announced, else the reference v1 bytes.
    pub fn signed_bytes(&self) -> String {
        if self.is_v2() {
            crypto::hello_v2_signed_bytes(
                &self.mesh_id,
                &self.member_id,
                &self.pubkey,
                self.session_pubkey.as_deref().unwrap_or_default(),
                &self.capabilities,
                self.timestamp,
            )
        } else {
            crypto::hello_signed_bytes(&self.mesh_id, &self.member_id, &self.pubkey, self.timestamp)
        }
    }

    /// Signs the hello as it stands with the member key; call it after the last field changed.
    pub fn sign(&mut self, member: &Keypair) {
        self.signature = member.sign_hex(self.signed_bytes().as_bytes());
    }
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
    /// Ours: keep this message's delivery status per recipient for `message_status`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub track: bool,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// A `send` to queue later: at `at` (ms since the epoch), or at every occurrence of `cron` (five
/// fields) read in `tz` (IANA; UTC when absent). Exactly one of `at` and `cron`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSend {
    #[serde(flatten)]
    pub send: Send,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListScheduled {
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelScheduled {
    pub schedule_id: String,
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
pub struct MessageStatus {
    pub message_id: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// At most this many ids in one `mark_read`.
pub const MAX_MARK_READ: usize = 1000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MarkRead {
    pub message_ids: Vec<String>,
}

/// At most this many entries in one `membership_log_page` (an entry holding an invite is about
/// 1.5 KB: a page stays far below the frame limit).
pub const MEMBERSHIP_LOG_PAGE: usize = 256;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MembershipLog {
    /// Entries after this `seq` (0: from the start).
    #[serde(default)]
    pub after: u64,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MeshKeys {
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// At most this many wraps in one `new_epoch` or `add_wraps` (a wrap is about 300 bytes of
/// JSON: a frame stays well within the 1 MiB limit).
pub const MAX_WRAPS: usize = 2048;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewEpoch {
    pub record: crate::meshkey::EpochRecord,
    #[serde(default)]
    pub wraps: Vec<crate::meshkey::Wrap>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AddWraps {
    pub wraps: Vec<crate::meshkey::Wrap>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// An admin's key history setting: its signature over `membership::key_history_bytes` for the
/// log as long as `after`, which must be the log's length when it arrives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetKeyHistory {
    pub mode: crate::membership::KeyHistory,
    pub after: u64,
    pub signature: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ListMembers {
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

/// Explicit grants one member may hold, one per other member's key: bounds what one member makes
/// the broker store and keep in memory, and what every `grants` reply lists.
pub const MAX_GRANTS: usize = 1024;

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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleasePair {
    /// The other member: its member key or one of its session keys.
    pub peer: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
