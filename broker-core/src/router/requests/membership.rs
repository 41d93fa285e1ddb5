//! `membership_log`: a page of the mesh's signed membership log, for any member. Clients verify
//! it themselves (`membership::verify`); the broker only hands out what it stored.

use std::sync::Arc;

use crate::protocol::{self, ErrorCode, MEMBERSHIP_LOG_PAGE, MembershipLogPage, ServerFrame};
use crate::router::Router;
use crate::router::state::SessionHandle;

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
