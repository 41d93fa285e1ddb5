//! The mesh's membership and keys as the broker keeps them for its clients to check:
//! `membership_log` (pages of the signed membership log, for any member), `mesh_keys`,
//! `new_epoch` and `add_wraps` (epoch records and wrapped content keys, `meshkey`). Clients
//! verify all of it themselves; the broker stores, orders (compare-and-set on epochs) and hands
//! out.

use std::collections::HashSet;
use std::sync::Arc;

use crate::meshkey::Wrap;
use crate::protocol::{
    self, ErrorCode, KeysStored, MAX_WRAPS, MEMBERSHIP_LOG_PAGE, MembershipLogPage, MeshKeysResult, ServerFrame,
};
use crate::router::Router;
use crate::router::state::SessionHandle;
use crate::store::StoreError;

impl Router {
    pub(in crate::router) async fn membership_log(
        self: &Arc<Self>,
        session: &SessionHandle,
        query: protocol::MembershipLog,
    ) {
        let (mesh_id, after) = (session.mesh_id().to_owned(), query.after);
        // One more than a page tells whether more follow.
        match self.blocking(move |store| store.membership_log(&mesh_id, after, MEMBERSHIP_LOG_PAGE + 1)).await {
            Ok(mut entries) => {
                let more = entries.len() > MEMBERSHIP_LOG_PAGE;
                entries.truncate(MEMBERSHIP_LOG_PAGE);
                self.reply(
                    session,
                    ServerFrame::MembershipLogPage(MembershipLogPage { entries, more, req_id: query.req_id }),
                );
            }
            Err(error) => {
                tracing::error!(%error, "reading the membership log failed");
                self.reply_error(
                    session,
                    ErrorCode::Internal,
                    "the broker could not read the membership log; retry",
                    query.req_id,
                );
            }
        }
    }
}

impl Router {
    /// `set_key_history` (admins): the setting signed by this member's key for the log as long as
    /// it is now, appended to the log (clients check the signature and the admin again).
    pub(in crate::router) async fn set_key_history(
        self: &Arc<Self>,
        session: &SessionHandle,
        set: protocol::SetKeyHistory,
    ) {
        if !self.is_admin(session) {
            let problem = "only admins of the mesh may set its key history";
            return self.reply_error(session, ErrorCode::Forbidden, problem, set.req_id);
        }
        let (Some(by), _) = self.member_keys(session) else { return };
        let bytes = crate::membership::key_history_bytes(session.mesh_id(), set.mode, set.after);
        if crate::crypto::verify_signed(&by, bytes.as_bytes(), &set.signature).is_err() {
            let problem =
                "the key history setting is signed by this member's key over claudemesh-membership/v1|key-history|…";
            return self.reply_error(session, ErrorCode::Malformed, problem, set.req_id);
        }
        let change =
            crate::membership::Change::KeyHistory { mode: set.mode, by, after: set.after, signature: set.signature };
        let (mesh_id, actor) = (session.mesh_id().to_owned(), session.member_id.clone());
        match self.blocking(move |store| store.append_key_history(&mesh_id, &change, &actor, protocol::now_ms())).await
        {
            Ok(entry) => {
                let reply = protocol::KeyHistorySet { mode: set.mode, seq: entry.seq, req_id: set.req_id };
                self.reply(session, ServerFrame::KeyHistorySet(reply));
            }
            Err(StoreError::Conflict(_)) => self.reply_error(
                session,
                ErrorCode::Conflict,
                "log_moved: the membership log changed since it was read; read it again and sign anew",
                set.req_id,
            ),
            Err(StoreError::Invalid(problem)) => self.reply_error(session, ErrorCode::Malformed, &problem, set.req_id),
            Err(error) => {
                tracing::error!(%error, "storing a key history setting failed");
                self.reply_error(
                    session,
                    ErrorCode::Internal,
                    "the broker could not store the setting; retry",
                    set.req_id,
                );
            }
        }
    }
}

/// At most this many members in `mesh_keys_result.unwrapped`.
const MAX_UNWRAPPED: usize = 1024;

impl Router {
    /// This member's key and the active members' keys, from the directory in memory.
    fn member_keys(&self, session: &SessionHandle) -> (Option<String>, Vec<String>) {
        let state = session.shard.state.lock().expect("mesh lock");
        let mine = state.members.get(&session.member_id).map(|m| m.record.pubkey.clone());
        let active = state.members.values().filter(|m| m.record.is_active()).map(|m| m.record.pubkey.clone()).collect();
        (mine, active)
    }

    /// `mesh_keys`: the epoch records, the wraps addressed to this member, and the active
    /// members without a wrap of the newest epoch (for a client to wrap for, after it checked
    /// their admission).
    pub(in crate::router) async fn mesh_keys(self: &Arc<Self>, session: &SessionHandle, query: protocol::MeshKeys) {
        let (Some(mine), active) = self.member_keys(session) else { return };
        let mesh_id = session.mesh_id().to_owned();
        let read = self
            .blocking(move |store| {
                let epochs = store.mesh_epochs(&mesh_id)?;
                let wraps = store.wraps_for(&mesh_id, &mine)?;
                let wrapped = match epochs.last() {
                    Some(newest) => store.wrapped(&mesh_id, newest.epoch)?,
                    None => Vec::new(),
                };
                Ok((epochs, wraps, wrapped))
            })
            .await;
        match read {
            Ok((epochs, wraps, wrapped)) => {
                // Capped to keep the reply within a frame: the rest are listed once these are wrapped.
                let unwrapped = if epochs.is_empty() {
                    Vec::new()
                } else {
                    let wrapped: HashSet<&String> = wrapped.iter().collect();
                    active.into_iter().filter(|key| !wrapped.contains(key)).take(MAX_UNWRAPPED).collect()
                };
                let result = MeshKeysResult { epochs, wraps, unwrapped, req_id: query.req_id };
                self.reply(session, ServerFrame::MeshKeysResult(result));
            }
            Err(error) => {
                tracing::error!(%error, "reading the mesh's keys failed");
                self.reply_error(
                    session,
                    ErrorCode::Internal,
                    "the broker could not read the mesh's keys; retry",
                    query.req_id,
                );
            }
        }
    }

    /// `new_epoch`: stored only as the epoch after the newest (`conflict` otherwise: another
    /// client made it first; read the keys again).
    pub(in crate::router) async fn new_epoch(self: &Arc<Self>, session: &SessionHandle, epoch: protocol::NewEpoch) {
        let Some(wraps) = self.checked_wraps(session, &epoch.wraps, epoch.req_id.clone()) else { return };
        let (mine, _) = self.member_keys(session);
        if mine.as_deref() != Some(epoch.record.by.as_str()) {
            return self.reply_error(
                session,
                ErrorCode::Malformed,
                "an epoch record is signed by its sender's member key",
                epoch.req_id,
            );
        }
        let (mesh_id, record) = (session.mesh_id().to_owned(), epoch.record);
        let number = record.epoch;
        match self.blocking(move |store| store.create_epoch(&mesh_id, &record, &wraps, protocol::now_ms())).await {
            Ok(()) => self.reply(session, ServerFrame::KeysStored(KeysStored { epoch: number, req_id: epoch.req_id })),
            Err(StoreError::Conflict(_)) => self.reply_error(
                session,
                ErrorCode::Conflict,
                "epoch_taken: that epoch exists already; read the mesh's keys again",
                epoch.req_id,
            ),
            Err(error) => {
                tracing::error!(%error, "storing an epoch failed");
                self.reply_error(
                    session,
                    ErrorCode::Internal,
                    "the broker could not store the epoch; retry",
                    epoch.req_id,
                );
            }
        }
    }

    /// `add_wraps`: wraps of existing epochs for members without them.
    pub(in crate::router) async fn add_wraps(self: &Arc<Self>, session: &SessionHandle, add: protocol::AddWraps) {
        let Some(wraps) = self.checked_wraps(session, &add.wraps, add.req_id.clone()) else { return };
        let mesh_id = session.mesh_id().to_owned();
        let stored = self
            .blocking(move |store| {
                store.add_wraps(&mesh_id, &wraps, protocol::now_ms())?;
                Ok(store.mesh_epochs(&mesh_id)?.last().map_or(0, |e| e.epoch))
            })
            .await;
        match stored {
            Ok(epoch) => self.reply(session, ServerFrame::KeysStored(KeysStored { epoch, req_id: add.req_id })),
            Err(error) => {
                tracing::error!(%error, "storing wraps failed");
                self.reply_error(
                    session,
                    ErrorCode::Internal,
                    "the broker could not store the wraps; retry",
                    add.req_id,
                );
            }
        }
    }

    /// Wraps a session may store: at most `MAX_WRAPS`, each from this member to an active
    /// member. `None` after replying with the refusal.
    fn checked_wraps(&self, session: &SessionHandle, wraps: &[Wrap], req_id: Option<String>) -> Option<Vec<Wrap>> {
        let (mine, active) = self.member_keys(session);
        let problem = if wraps.len() > MAX_WRAPS {
            Some(format!("at most {MAX_WRAPS} wraps at once"))
        } else if wraps.iter().any(|w| Some(w.wrapper.as_str()) != mine.as_deref()) {
            Some("a wrap is sealed by its sender's member key".to_owned())
        } else if wraps.iter().any(|w| !active.contains(&w.recipient)) {
            Some("a wrap is for an active member of the mesh".to_owned())
        } else {
            None
        };
        match problem {
            Some(problem) => {
                self.reply_error(session, ErrorCode::Malformed, &problem, req_id);
                None
            }
            None => Some(wraps.to_vec()),
        }
    }
}
