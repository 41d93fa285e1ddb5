//! Conversations: received messages (the person's view of the inbox) and sent ones, grouped per
//! peer, per group and per mesh. Pure functions over rows; the inbox does the I/O.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::inbox::{MessageKind, PersonMessage, SentMessage, StoredMessage};

/// The conversation a received message belongs to: `peer:<mesh>:<member key>`,
/// `group:<mesh>:@name` or `mesh:<mesh>`.
pub fn key_of_received(message: &StoredMessage) -> String {
    match message.kind {
        MessageKind::Direct => {
            let peer = message.from_member_pubkey.as_deref().unwrap_or(&message.from_pubkey);
            peer_key(&message.mesh_id, peer)
        }
        MessageKind::Group => format!("group:{}:{}", message.mesh_id, message.target.as_deref().unwrap_or("@?")),
        // The mesh's shared state is the whole mesh's.
        MessageKind::Broadcast | MessageKind::State => mesh_key(&message.mesh_id),
        // About the pair with that peer: shown in the conversation with it.
        MessageKind::Notice => peer_key(&message.mesh_id, message.target.as_deref().unwrap_or(&message.from_pubkey)),
    }
}

pub fn peer_key(mesh_id: &str, member_pubkey: &str) -> String {
    format!("peer:{mesh_id}:{member_pubkey}")
}

pub fn mesh_key(mesh_id: &str) -> String {
    format!("mesh:{mesh_id}")
}

/// Where a conversation's messages go: `(mesh id, target spec)`.
pub fn target_of(key: &str) -> Option<(String, String)> {
    let mut parts = key.splitn(3, ':');
    match (parts.next()?, parts.next()?, parts.next()) {
        ("peer", mesh, Some(member)) if broker_core::protocol::is_key_hex(member) => {
            Some((mesh.to_owned(), member.to_owned()))
        }
        ("group", mesh, Some(group)) if group.starts_with('@') && group.len() > 1 => {
            Some((mesh.to_owned(), group.to_owned()))
        }
        ("mesh", mesh, None) => Some((mesh.to_owned(), "*".to_owned())),
        _ => None,
    }
}

/// Where a sent message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// The broker stored it for its recipients; not every recipient's client has it yet.
    Queued,
    /// Every recipient member's client stored it.
    Delivered,
    /// It was not queued (see the error).
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub state: DeliveryState,
    pub delivered: u32,
    pub recipients: u32,
    pub error: Option<String>,
}

pub fn delivery_of(sent: &SentMessage) -> Delivery {
    let state = match &sent.error {
        Some(_) => DeliveryState::Error,
        None if sent.recipients > 0 && sent.delivered >= sent.recipients => DeliveryState::Delivered,
        None => DeliveryState::Queued,
    };
    Delivery { state, delivered: sent.delivered, recipients: sent.recipients, error: sent.error.clone() }
}

/// One message in a thread.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadMessage {
    pub id: String,
    pub conversation: String,
    pub mesh_id: String,
    /// `in` (received) or `out` (sent by the person).
    pub direction: &'static str,
    pub from: String,
    /// Absent when a received message could not be opened (`error` says why).
    pub text: Option<String>,
    pub error: Option<String>,
    /// Unix milliseconds.
    pub at: u64,
    /// The sender's identity was verified end to end (received messages).
    pub verified: bool,
    pub seen: bool,
    /// Sent messages only.
    pub delivery: Option<Delivery>,
    /// From claudemesh itself about this conversation's peer (messages held or released).
    pub notice: bool,
}

pub fn received(message: &PersonMessage) -> ThreadMessage {
    let m = &message.message;
    ThreadMessage {
        id: m.id.clone(),
        conversation: key_of_received(m),
        mesh_id: m.mesh_id.clone(),
        direction: "in",
        from: m.from.clone(),
        text: m.text.clone(),
        error: m.error.clone(),
        at: m.received_at,
        verified: m.verified,
        seen: message.seen,
        delivery: None,
        notice: m.kind == MessageKind::Notice,
    }
}

pub fn sent(message: &SentMessage) -> ThreadMessage {
    ThreadMessage {
        id: message.id.clone(),
        conversation: message.conversation.clone(),
        mesh_id: message.mesh_id.clone(),
        direction: "out",
        from: "You".into(),
        text: Some(message.text.clone()),
        error: None,
        at: message.sent_at,
        verified: true,
        seen: true,
        delivery: Some(delivery_of(message)),
        notice: false,
    }
}

/// A conversation in the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationSummary {
    pub key: String,
    pub mesh_id: String,
    /// `peer`, `group` or `mesh`.
    pub kind: &'static str,
    pub title: String,
    pub last_text: String,
    pub last_at: u64,
    pub unread: u32,
}

/// Every conversation with its latest message, newest first.
pub fn summarize(received: &[PersonMessage], sent: &[SentMessage]) -> Vec<ConversationSummary> {
    let mut by_key: BTreeMap<String, ConversationSummary> = BTreeMap::new();
    let mut touch = |key: String, mesh_id: &str, title: Option<&str>, text: &str, at: u64, unread: bool| {
        let kind = match key.split(':').next() {
            Some("peer") => "peer",
            Some("group") => "group",
            _ => "mesh",
        };
        let summary = by_key.entry(key.clone()).or_insert_with(|| ConversationSummary {
            title: match kind {
                "group" => key.rsplit(':').next().unwrap_or_default().to_owned(),
                "mesh" => "Everyone".to_owned(),
                _ => String::new(),
            },
            key,
            mesh_id: mesh_id.to_owned(),
            kind,
            last_text: String::new(),
            last_at: 0,
            unread: 0,
        });
        if at >= summary.last_at {
            summary.last_at = at;
            summary.last_text = text.chars().take(120).collect();
            if kind == "peer"
                && let Some(title) = title
            {
                summary.title = title.to_owned();
            }
        }
        if summary.title.is_empty()
            && let Some(title) = title
        {
            summary.title = title.to_owned();
        }
        summary.unread += u32::from(unread);
    };
    for message in received {
        let m = &message.message;
        let text = m.text.as_deref().unwrap_or("(could not be opened)");
        // A notice is about the conversation's peer, not from it: it names nobody.
        let title = (m.kind != MessageKind::Notice).then_some(m.from.as_str());
        touch(key_of_received(m), &m.mesh_id, title, text, m.received_at, !message.seen);
    }
    for message in sent {
        let title = message.conversation.starts_with("peer:").then_some(message.recipient_label.as_str());
        touch(message.conversation.clone(), &message.mesh_id, title, &message.text, message.sent_at, false);
    }
    let mut list: Vec<ConversationSummary> = by_key.into_values().collect();
    list.sort_by(|a, b| b.last_at.cmp(&a.last_at).then_with(|| a.key.cmp(&b.key)));
    list
}

/// One conversation's messages, oldest first.
pub fn thread(key: &str, received_rows: &[PersonMessage], sent_rows: &[SentMessage]) -> Vec<ThreadMessage> {
    let mut messages: Vec<ThreadMessage> = received_rows
        .iter()
        .filter(|m| key_of_received(&m.message) == key)
        .map(received)
        .chain(sent_rows.iter().filter(|m| m.conversation == key).map(sent))
        .collect();
    messages.sort_by(|a, b| a.at.cmp(&b.at).then_with(|| a.id.cmp(&b.id)));
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incoming(id: &str, at: u64, from_member: &str, target: Option<&str>, seen: bool) -> PersonMessage {
        PersonMessage {
            message: StoredMessage {
                id: id.into(),
                mesh_id: "mesh_1".into(),
                mesh_slug: "acme".into(),
                from: format!("name-{}", &from_member[..2]),
                from_pubkey: "ff".repeat(32),
                from_member_pubkey: Some(from_member.into()),
                verified: true,
                priority: "next".into(),
                target: target.map(str::to_owned),
                kind: MessageKind::of_target(target),
                text: Some(format!("text {id}")),
                error: None,
                sent_at: String::new(),
                received_at: at,
                receiving_session: String::new(),
                read: false,
            },
            seen,
        }
    }

    fn outgoing(id: &str, at: u64, conversation: &str, delivered: u32, error: Option<&str>) -> SentMessage {
        SentMessage {
            id: id.into(),
            mesh_id: "mesh_1".into(),
            mesh_slug: "acme".into(),
            target_spec: "x".into(),
            conversation: conversation.into(),
            recipient_label: "bob".into(),
            text: format!("text {id}"),
            recipients: 1,
            delivered,
            error: error.map(str::to_owned),
            sent_at: at,
        }
    }

    #[test]
    fn messages_group_into_peer_group_and_mesh_conversations() {
        let bob = "bb".repeat(32);
        let carol = "cc".repeat(32);
        let received = [
            incoming("r1", 1, &bob, Some(&"aa".repeat(32)), true),
            incoming("r2", 5, &carol, Some("@dev"), false),
            incoming("r3", 6, &bob, Some("*"), false),
            incoming("r4", 7, &bob, Some(&"aa".repeat(32)), false),
        ];
        let bob_key = peer_key("mesh_1", &bob);
        let sent = [outgoing("s1", 3, &bob_key, 1, None)];
        let list = summarize(&received, &sent);
        let keys: Vec<&str> = list.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, [bob_key.as_str(), "mesh:mesh_1", "group:mesh_1:@dev"]);
        assert_eq!(list[0].title, "name-bb");
        assert_eq!(list[0].unread, 1);
        assert_eq!(list[2].title, "@dev");
        assert_eq!(list[1].title, "Everyone");

        let thread = thread(&bob_key, &received, &sent);
        let ids: Vec<&str> = thread.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["r1", "s1", "r4"]);
        assert_eq!(thread[1].direction, "out");
    }

    #[test]
    fn delivery_is_queued_until_every_recipient_stored_it() {
        assert_eq!(delivery_of(&outgoing("s", 0, "mesh:m", 0, None)).state, DeliveryState::Queued);
        assert_eq!(delivery_of(&outgoing("s", 0, "mesh:m", 1, None)).state, DeliveryState::Delivered);
        let refused = delivery_of(&outgoing("s", 0, "mesh:m", 0, Some("blocked: bob blocks you")));
        assert_eq!(refused.state, DeliveryState::Error);
        assert_eq!(refused.error.as_deref(), Some("blocked: bob blocks you"));
    }

    #[test]
    fn conversation_keys_name_their_target() {
        let bob = "bb".repeat(32);
        assert_eq!(target_of(&peer_key("mesh_1", &bob)), Some(("mesh_1".into(), bob)));
        assert_eq!(target_of("group:mesh_1:@dev"), Some(("mesh_1".into(), "@dev".into())));
        assert_eq!(target_of("mesh:mesh_1"), Some(("mesh_1".into(), "*".into())));
        assert_eq!(target_of("peer:mesh_1:not-a-key"), None);
        assert_eq!(target_of("nonsense"), None);
    }
}
