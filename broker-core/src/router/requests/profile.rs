//! What a session tells the mesh about itself: `set_status`, `set_summary`, `set_stats`,
//! `join_group`, `leave_group`. A status change may release held `next`/`low` messages.

use tokio::time::Instant;

use crate::protocol::{self, ErrorCode, GroupMembership, StatusSource};
use crate::router::state::SessionHandle;
use crate::router::{Router, limits};

impl Router {
    pub(in crate::router) fn set_status(&self, session: &SessionHandle, set: protocol::SetStatus) {
        let source = set.source.unwrap_or(StatusSource::Manual);
        self.with_session(session, |router, state, id| {
            let fresh = router.config.status_fresh_window;
            let changed =
                state.sessions.get_mut(&id).is_some_and(|s| s.status.report(set.status, source, Instant::now(), fresh));
            if changed {
                router.pump_member(state, &session.member_id);
            }
        });
    }

    pub(in crate::router) fn set_summary(&self, session: &SessionHandle, mut set: protocol::SetSummary) {
        if let Err(problem) = limits::clean_summary(&mut set.summary) {
            return self.reply_error(session, ErrorCode::Malformed, &problem, None);
        }
        self.with_session(session, |_, state, id| {
            if let Some(s) = state.sessions.get_mut(&id) {
                s.summary = Some(set.summary).filter(|v| !v.is_empty());
            }
        })
    }

    pub(in crate::router) fn set_stats(&self, session: &SessionHandle, set: protocol::SetStats) {
        self.with_session(session, |_, state, id| {
            if let Some(s) = state.sessions.get_mut(&id) {
                s.stats = set.stats;
            }
        })
    }

    pub(in crate::router) fn join_group(&self, session: &SessionHandle, join: protocol::JoinGroup) {
        let mut group = GroupMembership { name: join.name, role: join.role };
        if let Err(problem) = limits::clean_group(&mut group) {
            return self.reply_error(session, ErrorCode::Malformed, &problem, None);
        }
        let mut full = false;
        self.with_session(session, |_, state, id| {
            if let Some(s) = state.sessions.get_mut(&id) {
                let count = s.groups.len();
                match s.groups.iter_mut().find(|g| g.name == group.name) {
                    Some(existing) => existing.role = group.role.clone(),
                    None if count >= limits::MAX_GROUPS => full = true,
                    None => s.groups.push(group.clone()),
                }
            }
        });
        if full {
            let problem = format!("a session may be in at most {} groups", limits::MAX_GROUPS);
            self.reply_error(session, ErrorCode::Malformed, &problem, None);
        }
    }

    pub(in crate::router) fn leave_group(&self, session: &SessionHandle, leave: protocol::LeaveGroup) {
        self.with_session(session, |_, state, id| {
            if let Some(s) = state.sessions.get_mut(&id) {
                s.groups.retain(|g| g.name != leave.name);
            }
        })
    }
}
