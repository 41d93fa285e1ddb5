//! `leave_mesh`: the member leaves for good; its key is refused from now on.

use std::sync::Arc;

use crate::protocol::{self, ErrorCode, ServerFrame};
use crate::router::state::SessionHandle;
use crate::router::{Router, frame_text};

impl Router {
    /// The member leaves for good: its key is refused from now on, and all its sessions end.
    pub(in crate::router) async fn leave_mesh(self: &Arc<Self>, session: &SessionHandle, leave: protocol::LeaveMesh) {
        let member_id = session.member_id.clone();
        session.shard.state.lock().expect("mesh lock").leaving.insert(member_id.clone());
        let stored = self
            .blocking(move |store| {
                store.change_membership(
                    &member_id,
                    crate::store::MembershipAction::Leave,
                    Some(&member_id),
                    protocol::now_ms(),
                )
            })
            .await;
        match stored {
            Ok(member) => {
                // Gone for every sender before the member hears so; then its sessions close.
                {
                    let mut state = session.shard.state.lock().expect("mesh lock");
                    if let Some(entry) = state.members.get_mut(&member.id) {
                        entry.record = member.clone();
                    }
                    let left = protocol::Left { member_id: member.id, req_id: leave.req_id };
                    if let Some(own) = state.sessions.get(&session.session_id) {
                        self.send_to(own, frame_text(&ServerFrame::Left(left)));
                    }
                    state.leaving.remove(&session.member_id);
                }
                if let Err(error) = self.reload_directory().await {
                    tracing::error!(%error, "reloading the directory after a leave failed");
                }
            }
            Err(error) => {
                session.shard.state.lock().expect("mesh lock").leaving.remove(&session.member_id);
                tracing::error!(%error, "storing a leave failed");
                self.reply_error(
                    session,
                    ErrorCode::Internal,
                    "the broker could not record the leave; retry",
                    leave.req_id,
                );
            }
        }
    }
}
