//! Ours: the frames of the shared workspace — shared state (`state_*`) and memory (`remember`,
//! `memories`, `forget`). Entries travel sealed ([`crate::workspace`]); the broker sees blinded
//! names, versions, epochs, sizes, writers and times.

use serde::{Deserialize, Serialize};

/// The largest sealed entry (its base64 ciphertext), state or memory.
pub const MAX_ENTRY_CIPHERTEXT: usize = 96 * 1024;
/// At most this many names in one `state_get`, entries in one `state_entries` page of
/// `state_list`, and memories in one `memories_page`.
pub const MAX_STATE_GET: usize = 100;
pub const STATE_PAGE: usize = 256;
pub const MEMORY_PAGE: usize = 256;
/// The longest time to live a state entry may ask for: 30 days.
pub const MAX_STATE_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// A shared-state entry as the broker keeps and shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateEntry {
    /// The blinded name (64 hex).
    pub name: String,
    pub version: u64,
    pub epoch: u64,
    pub nonce: String,
    pub ciphertext: String,
    /// The member key of the member that wrote this version.
    pub writer: String,
    /// Milliseconds since the epoch.
    pub updated_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

/// `state_set`: store `version = expectedVersion + 1` of an entry, if the live entry is at
/// `expectedVersion` (0: there is none) and `epoch` is the mesh's newest.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateSet {
    pub name: String,
    pub expected_version: u64,
    pub epoch: u64,
    pub nonce: String,
    pub ciphertext: String,
    /// The entry expires this long after it is written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `state_delete`: removes the live entry (only at `expectedVersion` when given).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateDelete {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<u64>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `state_get`: the live entries of these blinded names (absent ones are left out).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateGet {
    pub names: Vec<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `state_list`: a page of the mesh's live entries in blinded-name order, after `after`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateList {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// The answer to `state_set`: the entry as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateStored {
    pub entry: StateEntry,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// The answer to `state_delete`: the version removed (0: there was no live entry).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateDeleted {
    pub name: String,
    pub version: u64,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// The answer to `state_get` and `state_list`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StateEntries {
    pub entries: Vec<StateEntry>,
    /// `state_list`: more entries follow; ask again with `after` the last one's name.
    #[serde(default)]
    pub more: bool,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// A memory as the broker keeps it: sealed, numbered in the order the mesh stored it. A
/// forgotten memory keeps its id and a new `seq`, without content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryEntry {
    pub seq: u64,
    pub id: String,
    pub epoch: u64,
    pub nonce: String,
    pub ciphertext: String,
    /// The member key of the member that remembered it.
    pub writer: String,
    pub created_at: u64,
    #[serde(default)]
    pub forgotten: bool,
}

/// `remember`: stores a memory the client sealed under the mesh's newest epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Remember {
    pub id: String,
    pub epoch: u64,
    pub nonce: String,
    pub ciphertext: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `memories`: the mesh's memories changed after `after` (a `seq`), oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Memories {
    #[serde(default)]
    pub after: u64,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// `forget`: removes a memory's content for everyone (its writer, a member it grants `state`, or
/// an admin).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Forget {
    pub id: String,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// The answer to `remember` and `forget`: the memory's new place in the mesh's order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemoryStored {
    pub id: String,
    pub seq: u64,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// The answer to `memories`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MemoriesPage {
    pub entries: Vec<MemoryEntry>,
    pub more: bool,
    #[serde(rename = "_reqId", default, skip_serializing_if = "Option::is_none")]
    pub req_id: Option<String>,
}

/// Ours, with `state_updates`: a shared-state entry was written (`entry`) or removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateChanged {
    pub name: String,
    pub version: u64,
    /// The member key of the member that made the change.
    pub by: String,
    /// The entry as written; absent for a removal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<StateEntry>,
}
