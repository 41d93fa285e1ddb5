//! `message_status` (where each recipient's copy of a tracked message stands, for its sender
//! only) and `mark_read` (a recipient's session read messages).

use std::sync::Arc;

use crate::protocol::{self, DeliveryState, ErrorCode, MessageStatusResult, RecipientStatus, ServerFrame};
use crate::router::Router;
use crate::router::state::{MeshState, SessionHandle, display_name_of};
use crate::store::{ReceiptRecord, WriteOp};

impl Router {
    pub(in crate::router) async fn message_status(
        self: &Arc<Self>,
        session: &SessionHandle,
        ask: protocol::MessageStatus,
    ) {
        let (mesh_id, sender, message_id) = (session.mesh_id().to_owned(), session.member_id.clone(), ask.message_id);
        let asked = message_id.clone();
        match self.blocking(move |store| store.receipts(&mesh_id, &sender, &asked)).await {
            Ok(receipts) => {
                let recipients = {
                    let state = session.shard.state.lock().expect("mesh lock");
                    receipts.iter().map(|receipt| recipient_status(&state, receipt)).collect()
                };
                let result = MessageStatusResult { message_id, recipients, req_id: ask.req_id };
                self.reply(session, ServerFrame::MessageStatusResult(result));
            }
            Err(error) => {
                tracing::error!(%error, "reading receipts failed");
                self.reply_error(
                    session,
                    ErrorCode::Internal,
                    "the broker could not read the status; retry",
                    ask.req_id,
                );
            }
        }
    }

    pub(in crate::router) fn mark_read(&self, session: &SessionHandle, read: protocol::MarkRead) {
        if read.message_ids.len() > protocol::MAX_MARK_READ {
            let problem = format!("mark_read takes at most {} message ids", protocol::MAX_MARK_READ);
            return self.reply_error(session, ErrorCode::Malformed, &problem, None);
        }
        if read.message_ids.is_empty() {
            return;
        }
        self.store.submit(
            WriteOp::MarkRead {
                mesh_id: session.mesh_id().to_owned(),
                member_id: session.member_id.clone(),
                message_ids: read.message_ids,
                at_ms: protocol::now_ms(),
            },
            None,
        );
    }
}

/// One receipt as its sender sees it: the recipient by key and name, and its state.
fn recipient_status(state: &MeshState, receipt: &ReceiptRecord) -> RecipientStatus {
    let member = state.members.get(&receipt.member_id);
    let active = member.is_some_and(|m| m.record.is_active());
    let state_now = match (receipt.read_at, receipt.delivered_at) {
        (Some(_), _) => DeliveryState::Read,
        (None, Some(_)) => DeliveryState::Delivered,
        (None, None) if !active => DeliveryState::Removed,
        (None, None) if receipt.queued => DeliveryState::Queued,
        (None, None) => DeliveryState::Expired,
    };
    RecipientStatus {
        member_pubkey: member.map(|m| m.record.pubkey.clone()).unwrap_or_default(),
        display_name: member.map(|m| display_name_of(state, m)).unwrap_or_default(),
        state: state_now,
        queued_at: protocol::iso8601_ms(receipt.queued_at),
        delivered_at: receipt.delivered_at.map(protocol::iso8601_ms),
        read_at: receipt.read_at.map(protocol::iso8601_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::fixture;

    #[test]
    fn a_receipt_reads_as_queued_delivered_read_expired_or_removed() {
        let mut mesh = fixture::Mesh::new();
        mesh.member("bob");
        mesh.member("eve").record.revoked_at = Some(1);
        let receipt = |member: &str, delivered: Option<u64>, read: Option<u64>, queued: bool| ReceiptRecord {
            member_id: format!("m-{member}"),
            queued_at: 1_000,
            delivered_at: delivered,
            read_at: read,
            queued,
        };
        let state_of = |r: ReceiptRecord| recipient_status(&mesh.state, &r).state;
        assert_eq!(state_of(receipt("bob", None, None, true)), DeliveryState::Queued);
        assert_eq!(state_of(receipt("bob", Some(2_000), None, false)), DeliveryState::Delivered);
        assert_eq!(state_of(receipt("bob", Some(2_000), Some(3_000), false)), DeliveryState::Read);
        assert_eq!(state_of(receipt("bob", None, None, false)), DeliveryState::Expired);
        assert_eq!(state_of(receipt("eve", None, None, false)), DeliveryState::Removed);
        assert_eq!(state_of(receipt("eve", Some(2_000), None, false)), DeliveryState::Delivered, "before it left");
        let shown = recipient_status(&mesh.state, &receipt("bob", Some(2_000), None, false));
        assert_eq!((shown.display_name.as_str(), shown.member_pubkey), ("bob", fixture::key("bob")));
        assert_eq!(shown.delivered_at.as_deref(), Some("1970-01-01T00:00:02.000Z"));
    }
}
