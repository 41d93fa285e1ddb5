//! `audit_query` and `audit_verify` (admins only).

use std::sync::Arc;

use crate::protocol::{self, ErrorCode, ServerFrame};
use crate::router::Router;
use crate::router::state::SessionHandle;

impl Router {
    pub(in crate::router) fn is_admin(&self, session: &SessionHandle) -> bool {
        let state = session.shard.state.lock().expect("mesh lock");
        state
            .members
            .get(&session.member_id)
            .is_some_and(|m| m.record.role == protocol::Role::Admin && m.record.is_active())
    }

    pub(in crate::router) async fn audit_query(self: &Arc<Self>, session: &SessionHandle, query: protocol::AuditQuery) {
        if !self.is_admin(session) {
            return self.reply_error(
                session,
                ErrorCode::Forbidden,
                "only admins of the mesh may read its audit log",
                query.req_id,
            );
        }
        let scope = session.mesh_id().to_owned();
        let (limit, offset, event_type) =
            (query.limit.unwrap_or(50).clamp(1, 500), query.offset.unwrap_or(0), query.event_type);
        match self.blocking(move |store| store.audit_entries(&scope, event_type.as_deref(), limit, offset)).await {
            Ok((entries, total)) => {
                let entries = entries.into_iter().map(audit_record).collect();
                self.reply(
                    session,
                    ServerFrame::AuditResult(protocol::AuditResult { entries, total, req_id: query.req_id }),
                );
            }
            Err(error) => {
                tracing::error!(%error, "reading the audit log failed");
                self.reply_error(
                    session,
                    ErrorCode::Internal,
                    "the broker could not read the audit log; retry",
                    query.req_id,
                );
            }
        }
    }

    pub(in crate::router) async fn audit_verify(
        self: &Arc<Self>,
        session: &SessionHandle,
        verify: protocol::AuditVerify,
    ) {
        if !self.is_admin(session) {
            return self.reply_error(
                session,
                ErrorCode::Forbidden,
                "only admins of the mesh may verify its audit log",
                verify.req_id,
            );
        }
        let scope = session.mesh_id().to_owned();
        match self.blocking(move |store| store.verify_audit(&scope)).await {
            Ok(report) => self.reply(
                session,
                ServerFrame::AuditVerifyResult(protocol::AuditVerifyResult {
                    valid: report.valid,
                    entries: report.entries,
                    broken_at: report.broken_at,
                    req_id: verify.req_id,
                }),
            ),
            Err(error) => {
                tracing::error!(%error, "verifying the audit log failed");
                self.reply_error(
                    session,
                    ErrorCode::Internal,
                    "the broker could not verify the audit log; retry",
                    verify.req_id,
                );
            }
        }
    }
}

/// An audit entry as the wire shows it.
pub fn audit_record(entry: crate::store::AuditEntry) -> protocol::AuditRecord {
    protocol::AuditRecord {
        id: entry.id,
        event_type: entry.event_type,
        actor: entry.actor,
        payload: entry.payload,
        prev_hash: entry.prev_hash,
        hash: entry.hash,
        created_at: entry.created_at,
    }
}
