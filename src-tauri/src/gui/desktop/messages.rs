//! Messages: the person's conversations (received and sent, grouped per peer, group and mesh),
//! reading one, and sending through the mesh supervisor's one send path.

use broker_core::protocol::{Priority, now_ms};

use super::{Desktop, Output, UiEvent, blocking, lock};
use crate::gui::conversations::{self, ConversationSummary, ThreadMessage};
use crate::gui::error::{CommandError, CommandResult};
use crate::inbox::{PersonMessage, SentMessage};
use crate::mesh::resolve::Resolution;

/// Messages of history a person's view reads.
const HISTORY_LIMIT: usize = 2000;

impl Desktop {
    async fn history(&self) -> CommandResult<(Vec<PersonMessage>, Vec<SentMessage>)> {
        let (inbox, own) = (self.inbox.clone(), self.own_member_keys());
        blocking(move || Ok((inbox.person_history(&own, HISTORY_LIMIT)?, inbox.sent_history(HISTORY_LIMIT)?))).await
    }

    pub async fn conversations(&self) -> CommandResult<Vec<ConversationSummary>> {
        let (received, sent) = self.history().await?;
        Ok(conversations::summarize(&received, &sent))
    }

    /// One conversation's messages; marks the received ones seen.
    pub async fn conversation(&self, key: &str) -> CommandResult<Vec<ThreadMessage>> {
        let (received, sent) = self.history().await?;
        let thread = conversations::thread(key, &received, &sent);
        let unseen: Vec<String> = thread.iter().filter(|m| !m.seen).map(|m| m.id.clone()).collect();
        if !unseen.is_empty() {
            let inbox = self.inbox.clone();
            let seen = unseen.clone();
            blocking(move || Ok(inbox.mark_seen(&seen, now_ms())?)).await?;
            self.recount_unread().await;
            // The senders' message_status shows that the person read them.
            let read: Vec<_> = received.into_iter().map(|m| m.message).filter(|m| unseen.contains(&m.id)).collect();
            let supervisors: Vec<_> = lock(&self.links).values().cloned().collect();
            for supervisor in supervisors {
                supervisor.tell_read(&read).await;
            }
        }
        Ok(thread)
    }

    /// Sends `text` as this person (`peerType: human`, `channel: desktop`) to a conversation's
    /// peer, group or mesh through the supervisor's send path, and records it with its delivery
    /// state (an unsent message keeps why).
    /// Releases messages the broker held between this device's member and the peer of a
    /// conversation (the person's click on a claudemesh notice). Returns whether any were held.
    pub async fn release_pair(&self, conversation: &str) -> CommandResult<bool> {
        let (mesh_id, target) =
            conversations::target_of(conversation).ok_or_else(|| CommandError::invalid("not a conversation"))?;
        let entry = self.mesh_entry(&mesh_id)?;
        let supervisor = self.supervisor(&mesh_id)?;
        let resolution =
            Resolution { mesh_id, slug: entry.slug, label: target.clone(), target_spec: target, offline: false };
        Ok(supervisor.release_resolved(&resolution).await?)
    }

    pub async fn send_message(&self, conversation: &str, label: &str, text: &str) -> CommandResult<ThreadMessage> {
        let text = text.trim();
        if text.is_empty() {
            return Err(CommandError::invalid("write something first"));
        }
        let (mesh_id, target) =
            conversations::target_of(conversation).ok_or_else(|| CommandError::invalid("not a conversation"))?;
        let entry = self.mesh_entry(&mesh_id)?;
        // A mesh whose member key could not be loaded has no session to send from.
        self.session(&mesh_id)?;
        let supervisor = self.supervisor(&mesh_id)?;
        let label = label.trim().to_owned();
        let sent_at = now_ms();
        let resolution = Resolution {
            mesh_id: mesh_id.clone(),
            slug: entry.slug.clone(),
            target_spec: target.clone(),
            label: label.clone(),
            offline: false,
        };
        let outcome = supervisor.send_resolved(resolution, text, Priority::Next).await;
        let sent = SentMessage {
            id: outcome.message_id.unwrap_or_else(|| format!("unsent_{}", broker_core::ids::new_id("m"))),
            mesh_id,
            mesh_slug: entry.slug,
            target_spec: target,
            conversation: conversation.to_owned(),
            recipient_label: label,
            text: text.to_owned(),
            recipients: outcome.recipients.unwrap_or(0),
            delivered: 0,
            error: outcome.error.map(|e| e.to_string()),
            sent_at,
        };
        let inbox = self.inbox.clone();
        let _order = self.sent_order.lock().await;
        // Receipts may have come first: the recorded message counts them.
        let sent = blocking(move || Ok(inbox.record_sent(&sent)?)).await?;
        let message = conversations::sent(&sent);
        self.send(Output::Ui(UiEvent::Message(message.clone())));
        Ok(message)
    }

    pub(super) async fn recount_unread(&self) {
        let (inbox, own) = (self.inbox.clone(), self.own_member_keys());
        let unread = blocking(move || Ok(inbox.person_history(&own, HISTORY_LIMIT)?))
            .await
            .map(|rows| rows.iter().filter(|m| !m.seen).count() as u64);
        if let Ok(unread) = unread {
            let changed = {
                let mut state = lock(&self.state);
                std::mem::replace(&mut state.unread, unread) != unread
            };
            if changed {
                self.emit_status();
            }
        }
    }
}
