//! The shared workspace: `state_set`, `state_delete`, `state_get`, `state_list` (sealed
//! shared-state entries, compare-and-set on their version, `state_changed` to the sessions that
//! follow them on every replica) and `remember`, `memories`, `forget` (sealed memories that
//! clients sync into their own search index). The broker checks shapes, versions, epochs,
//! grants and quotas; what the entries say it cannot read.
//!
//! Who may change whose entries: a member its own; another member's entry only when that member
//! grants it `state` (the default grants allow everything) or it is an admin of the mesh.

use std::sync::Arc;

use crate::protocol::{
    self, ErrorCode, MAX_ENTRY_CIPHERTEXT, MAX_STATE_GET, MAX_STATE_TTL_MS, MEMORY_PAGE, MemoryEntry, STATE_PAGE,
    ServerFrame, StateChanged, StateEntry, SystemEvent, grant_cap,
};
use crate::router::Router;
use crate::router::state::{MeshState, SessionHandle};
use crate::store::{MemoryRecord, StateRecord, StoreError, WorkspaceQuota};

/// A base64 XChaCha20 nonce (24 bytes).
const NONCE_B64_LEN: usize = 32;

/// What is wrong with a sealed entry's shape, if anything.
fn entry_problem(nonce: &str, ciphertext: &str) -> Option<String> {
    if nonce.len() != NONCE_B64_LEN || ciphertext.is_empty() {
        return Some("an entry carries a 24-byte nonce and its ciphertext, in base64".to_owned());
    }
    (ciphertext.len() > MAX_ENTRY_CIPHERTEXT)
        .then(|| format!("too_large: an entry's ciphertext is at most {MAX_ENTRY_CIPHERTEXT} bytes"))
}

/// A memory id: 1–64 letters, digits, `_` or `-`.
fn is_memory_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Why a workspace write was refused, as the client hears it.
fn refusal(error: &StoreError) -> Option<(ErrorCode, &'static str)> {
    let StoreError::Conflict(code) = error else { return None };
    Some(match code.as_str() {
        "version_mismatch" => (
            ErrorCode::Conflict,
            "version_mismatch: the entry is not at the version this write expected; read it again",
        ),
        "stale_epoch" => (
            ErrorCode::Conflict,
            "stale_epoch: the mesh's key moved to a newer epoch; refresh the mesh keys and write again",
        ),
        "quota_exceeded" => (
            ErrorCode::QuotaExceeded,
            "quota_exceeded: this member keeps as many entries or bytes in the mesh's workspace as it may; delete some first",
        ),
        "duplicate" => (ErrorCode::Conflict, "duplicate: a memory with this id exists"),
        _ => return None,
    })
}

impl Router {
    fn workspace_quota(&self) -> WorkspaceQuota {
        WorkspaceQuota {
            state_entries: self.config.max_state_entries_per_member,
            memories: self.config.max_memories_per_member,
            bytes: self.config.max_workspace_bytes_per_member,
        }
    }

    /// This member's key, when it is an active member.
    fn own_key(&self, session: &SessionHandle) -> Option<String> {
        let state = session.shard.state.lock().expect("mesh lock");
        state.members.get(&session.member_id).filter(|m| m.record.is_active()).map(|m| m.record.pubkey.clone())
    }

    /// May this session's member change an entry `writer_member_id` wrote?
    fn may_change(&self, session: &SessionHandle, writer_member_id: &str) -> bool {
        if writer_member_id == session.member_id || self.is_admin(session) {
            return true;
        }
        let state = session.shard.state.lock().expect("mesh lock");
        let Some(me) = state.members.get(&session.member_id) else { return false };
        state.grants.allows(writer_member_id, &me.record.pubkey, grant_cap::STATE)
    }

    /// Tells the sessions here that follow shared state (but `except`), and the other replicas.
    pub(in crate::router) fn state_changed(&self, state: &MeshState, change: StateChanged, except: Option<u64>) {
        self.announce_state(&state.mesh.id, &change);
        self.push_state_changed(state, change, except);
    }

    pub(in crate::router) fn push_state_changed(&self, state: &MeshState, change: StateChanged, except: Option<u64>) {
        let event = SystemEvent::StateChanged(change);
        self.push_event(state, &event, |s| s.caps.has(protocol::Capability::StateUpdates) && Some(s.id) != except);
    }

    fn workspace_failure(&self, session: &SessionHandle, error: &StoreError, what: &str, req_id: Option<String>) {
        if let Some((code, message)) = refusal(error) {
            if code == ErrorCode::QuotaExceeded {
                self.metrics.workspace_quota_refusals_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            return self.reply_error(session, code, message, req_id);
        }
        tracing::error!(%error, "{what} failed");
        self.reply_error(session, ErrorCode::Internal, &format!("the broker could not finish {what}; retry"), req_id);
    }

    pub(in crate::router) async fn state_set(self: &Arc<Self>, session: &SessionHandle, set: protocol::StateSet) {
        let problem = if !protocol::is_key_hex(&set.name) {
            Some("a state name travels blinded: 64 lowercase hex".to_owned())
        } else if set.ttl_ms.is_some_and(|ttl| ttl == 0 || ttl > MAX_STATE_TTL_MS) {
            Some(format!("ttl is between 1 ms and {MAX_STATE_TTL_MS} ms (30 days)"))
        } else {
            entry_problem(&set.nonce, &set.ciphertext)
        };
        if let Some(problem) = problem {
            return self.reply_error(session, ErrorCode::Malformed, &problem, set.req_id);
        }
        let Some(writer) = self.own_key(session) else { return };
        let (mesh_id, name) = (session.mesh_id().to_owned(), set.name.clone());
        let current = self.blocking(move |store| store.state_entries(&mesh_id, &[name], protocol::now_ms())).await;
        let current = match current {
            Ok(mut found) => found.pop(),
            Err(error) => return self.workspace_failure(session, &error, "reading the entry", set.req_id),
        };
        if let Some(current) = &current
            && !self.may_change(session, &current.writer_member_id)
        {
            return self.reply_error(
                session,
                ErrorCode::Forbidden,
                "forbidden: the member that wrote this entry does not let you change its entries (grant `state`)",
                set.req_id,
            );
        }
        let now = protocol::now_ms();
        let record = StateRecord {
            mesh_id: session.mesh_id().to_owned(),
            writer_member_id: session.member_id.clone(),
            entry: StateEntry {
                name: set.name,
                version: set.expected_version + 1,
                epoch: set.epoch,
                nonce: set.nonce,
                ciphertext: set.ciphertext,
                writer,
                updated_at: now,
                expires_at: set.ttl_ms.map(|ttl| now + ttl),
            },
        };
        let (stored, quota) = (record.clone(), self.workspace_quota());
        match self.blocking(move |store| store.put_state(&stored, &quota, now)).await {
            Ok(()) => {
                self.metrics.workspace_write("state_set");
                let entry = record.entry;
                let change = StateChanged {
                    name: entry.name.clone(),
                    version: entry.version,
                    by: entry.writer.clone(),
                    entry: Some(entry.clone()),
                };
                self.reply(session, ServerFrame::StateStored(protocol::StateStored { entry, req_id: set.req_id }));
                self.state_changed(&session.shard.state.lock().expect("mesh lock"), change, Some(session.session_id));
            }
            Err(error) => self.workspace_failure(session, &error, "storing the entry", set.req_id),
        }
    }

    pub(in crate::router) async fn state_delete(
        self: &Arc<Self>,
        session: &SessionHandle,
        delete: protocol::StateDelete,
    ) {
        if !protocol::is_key_hex(&delete.name) {
            let problem = "a state name travels blinded: 64 lowercase hex";
            return self.reply_error(session, ErrorCode::Malformed, problem, delete.req_id);
        }
        let Some(me) = self.own_key(session) else { return };
        let (mesh_id, name) = (session.mesh_id().to_owned(), delete.name.clone());
        let current = self.blocking(move |store| store.state_entries(&mesh_id, &[name], protocol::now_ms())).await;
        let current = match current {
            Ok(mut found) => found.pop(),
            Err(error) => return self.workspace_failure(session, &error, "reading the entry", delete.req_id),
        };
        let Some(current) = current else {
            if delete.expected_version.is_some_and(|v| v != 0) {
                let mismatch = StoreError::Conflict("version_mismatch".into());
                return self.workspace_failure(session, &mismatch, "removing the entry", delete.req_id);
            }
            let deleted = protocol::StateDeleted { name: delete.name, version: 0, req_id: delete.req_id };
            return self.reply(session, ServerFrame::StateDeleted(deleted));
        };
        if !self.may_change(session, &current.writer_member_id) {
            return self.reply_error(
                session,
                ErrorCode::Forbidden,
                "forbidden: the member that wrote this entry does not let you change its entries (grant `state`)",
                delete.req_id,
            );
        }
        // The version checked against the grants is the one removed: a write in between fails it.
        let expected = Some(delete.expected_version.unwrap_or(current.entry.version));
        let (mesh_id, name, actor) = (session.mesh_id().to_owned(), delete.name.clone(), session.member_id.clone());
        let removed =
            self.blocking(move |store| store.delete_state(&mesh_id, &name, expected, &actor, protocol::now_ms())).await;
        match removed {
            Ok(version) => {
                self.metrics.workspace_write("state_delete");
                let change = StateChanged { name: delete.name.clone(), version, by: me, entry: None };
                let deleted = protocol::StateDeleted { name: delete.name, version, req_id: delete.req_id };
                self.reply(session, ServerFrame::StateDeleted(deleted));
                if version > 0 {
                    self.state_changed(
                        &session.shard.state.lock().expect("mesh lock"),
                        change,
                        Some(session.session_id),
                    );
                }
            }
            Err(error) => self.workspace_failure(session, &error, "removing the entry", delete.req_id),
        }
    }

    pub(in crate::router) async fn state_get(self: &Arc<Self>, session: &SessionHandle, get: protocol::StateGet) {
        if get.names.len() > MAX_STATE_GET || !get.names.iter().all(|n| protocol::is_key_hex(n)) {
            let problem = format!("state_get takes at most {MAX_STATE_GET} blinded names (64 lowercase hex)");
            return self.reply_error(session, ErrorCode::Malformed, &problem, get.req_id);
        }
        let (mesh_id, names) = (session.mesh_id().to_owned(), get.names);
        match self.blocking(move |store| store.state_entries(&mesh_id, &names, protocol::now_ms())).await {
            Ok(found) => {
                let entries = found.into_iter().map(|r| r.entry).collect();
                let reply = protocol::StateEntries { entries, more: false, req_id: get.req_id };
                self.reply(session, ServerFrame::StateEntries(reply));
            }
            Err(error) => self.workspace_failure(session, &error, "reading the entries", get.req_id),
        }
    }

    pub(in crate::router) async fn state_list(self: &Arc<Self>, session: &SessionHandle, list: protocol::StateList) {
        let (mesh_id, after) = (session.mesh_id().to_owned(), list.after);
        // One more than a page tells whether more follow.
        let page = self
            .blocking(move |store| store.state_page(&mesh_id, after.as_deref(), STATE_PAGE + 1, protocol::now_ms()))
            .await;
        match page {
            Ok(mut found) => {
                let more = found.len() > STATE_PAGE;
                found.truncate(STATE_PAGE);
                let entries = found.into_iter().map(|r| r.entry).collect();
                self.reply(
                    session,
                    ServerFrame::StateEntries(protocol::StateEntries { entries, more, req_id: list.req_id }),
                );
            }
            Err(error) => self.workspace_failure(session, &error, "listing the entries", list.req_id),
        }
    }

    pub(in crate::router) async fn remember(self: &Arc<Self>, session: &SessionHandle, remember: protocol::Remember) {
        let problem = if is_memory_id(&remember.id) {
            entry_problem(&remember.nonce, &remember.ciphertext)
        } else {
            Some("a memory id is 1-64 letters, digits, '_' or '-'".to_owned())
        };
        if let Some(problem) = problem {
            return self.reply_error(session, ErrorCode::Malformed, &problem, remember.req_id);
        }
        let Some(writer) = self.own_key(session) else { return };
        let now = protocol::now_ms();
        let record = MemoryRecord {
            mesh_id: session.mesh_id().to_owned(),
            writer_member_id: session.member_id.clone(),
            entry: MemoryEntry {
                seq: 0,
                id: remember.id.clone(),
                epoch: remember.epoch,
                nonce: remember.nonce,
                ciphertext: remember.ciphertext,
                writer,
                created_at: now,
                forgotten: false,
            },
        };
        let quota = self.workspace_quota();
        match self.blocking(move |store| store.add_memory(&record, &quota, now)).await {
            Ok(seq) => {
                self.metrics.workspace_write("remember");
                let stored = protocol::MemoryStored { id: remember.id, seq, req_id: remember.req_id };
                self.reply(session, ServerFrame::MemoryStored(stored));
            }
            Err(error) => self.workspace_failure(session, &error, "storing the memory", remember.req_id),
        }
    }

    pub(in crate::router) async fn memories(self: &Arc<Self>, session: &SessionHandle, query: protocol::Memories) {
        let (mesh_id, after) = (session.mesh_id().to_owned(), query.after);
        match self.blocking(move |store| store.memories(&mesh_id, after, MEMORY_PAGE + 1)).await {
            Ok(mut found) => {
                let more = found.len() > MEMORY_PAGE;
                found.truncate(MEMORY_PAGE);
                let entries = found.into_iter().map(|r| r.entry).collect();
                self.reply(
                    session,
                    ServerFrame::MemoriesPage(protocol::MemoriesPage { entries, more, req_id: query.req_id }),
                );
            }
            Err(error) => self.workspace_failure(session, &error, "reading the memories", query.req_id),
        }
    }

    pub(in crate::router) async fn forget(self: &Arc<Self>, session: &SessionHandle, forget: protocol::Forget) {
        let (mesh_id, id) = (session.mesh_id().to_owned(), forget.id.clone());
        let found = match self.blocking(move |store| store.memory(&mesh_id, &id)).await {
            Ok(found) => found.filter(|m| !m.entry.forgotten),
            Err(error) => return self.workspace_failure(session, &error, "reading the memory", forget.req_id),
        };
        let Some(memory) = found else {
            let message = format!("no memory {:?} in this mesh (it may be forgotten already)", forget.id);
            return self.reply_error(session, ErrorCode::NotFound, &message, forget.req_id);
        };
        if !self.may_change(session, &memory.writer_member_id) {
            return self.reply_error(
                session,
                ErrorCode::Forbidden,
                "forbidden: the member that remembered this does not let you change its entries (grant `state`)",
                forget.req_id,
            );
        }
        let (mesh_id, id, actor) = (session.mesh_id().to_owned(), forget.id.clone(), session.member_id.clone());
        match self.blocking(move |store| store.forget_memory(&mesh_id, &id, &actor, protocol::now_ms())).await {
            Ok(Some(seq)) => {
                self.metrics.workspace_write("forget");
                let stored = protocol::MemoryStored { id: forget.id, seq, req_id: forget.req_id };
                self.reply(session, ServerFrame::MemoryStored(stored));
            }
            Ok(None) => {
                let message = format!("no memory {:?} in this mesh (it may be forgotten already)", forget.id);
                self.reply_error(session, ErrorCode::NotFound, &message, forget.req_id);
            }
            Err(error) => self.workspace_failure(session, &error, "forgetting the memory", forget.req_id),
        }
    }
}
