//! `set_grants` and `get_grants`: what this member lets each other member do to it.

use std::sync::Arc;

use crate::protocol::{self, ErrorCode, ServerFrame};
use crate::router::state::SessionHandle;
use crate::router::{Router, validate_grants};
use crate::store::StoreError;

impl Router {
    pub(in crate::router) async fn set_grants(self: &Arc<Self>, session: &SessionHandle, set: protocol::SetGrants) {
        let changes = match validate_grants(set.grants) {
            Ok(changes) => changes,
            Err(problem) => return self.reply_error(session, ErrorCode::Malformed, &problem, set.req_id),
        };
        let member_id = session.member_id.clone();
        let stored = self.blocking(move |store| store.set_grants(&member_id, &changes, protocol::now_ms())).await;
        match stored {
            Ok(records) => {
                let grants = {
                    let mut state = session.shard.state.lock().expect("mesh lock");
                    state.grants.replace(&session.member_id, &records);
                    state.grants.of(&session.member_id)
                };
                self.reply(session, ServerFrame::Grants(protocol::GrantsFrame { grants, req_id: set.req_id }));
            }
            Err(StoreError::Invalid(problem)) => self.reply_error(session, ErrorCode::Malformed, &problem, set.req_id),
            Err(error) => {
                tracing::error!(%error, "storing grants failed");
                self.reply_error(
                    session,
                    ErrorCode::Internal,
                    "the broker could not store the grants; retry",
                    set.req_id,
                );
            }
        }
    }

    pub(in crate::router) fn get_grants(&self, session: &SessionHandle, get: protocol::GetGrants) {
        let grants = session.shard.state.lock().expect("mesh lock").grants.of(&session.member_id);
        self.reply(session, ServerFrame::Grants(protocol::GrantsFrame { grants, req_id: get.req_id }));
    }
}
