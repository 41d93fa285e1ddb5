//! The `notifications/claude/channel` payload for one received message.
//!
//! Claude Code (with channels enabled) shows it to the model as
//! `<channel source="claudemesh" key="value"…>content</channel>`: `content` is the peer's text
//! and every `meta` entry becomes an attribute. Meta keys are plain identifiers (letters,
//! digits, underscores) and values are strings, which is what the host accepts.

use serde_json::{Map, Value, json};

use crate::inbox::StoredMessage;

pub const METHOD: &str = "notifications/claude/channel";

pub fn params(message: &StoredMessage) -> Value {
    let content = match (&message.text, &message.error) {
        (Some(text), _) => text.clone(),
        (None, Some(error)) => format!("[claudemesh could not open this message: {error}]"),
        (None, None) => String::new(),
    };
    let mut meta = Map::new();
    let mut put = |key: &str, value: &str| {
        meta.insert(key.to_owned(), Value::String(value.to_owned()));
    };
    put("from_name", &message.from);
    put("from_id", &message.from_pubkey);
    if let Some(member) = &message.from_member_pubkey {
        put("from_member_id", member);
    }
    put("mesh", &message.mesh_slug);
    put("mesh_id", &message.mesh_id);
    put("priority", &message.priority);
    put("kind", message.kind.as_str());
    if let Some(target) = &message.target
        && message.kind != crate::inbox::MessageKind::Direct
    {
        put("to", target);
    }
    put("sent_at", &message.sent_at);
    // An occurrence of a scheduled message: when it was meant for, and whether it came late
    // (the broker was down at the time).
    if let Some((_, due_at)) = broker_core::schedule::occurrence_of(&message.id) {
        put("scheduled_for", &broker_core::protocol::iso8601_ms(due_at));
        let queued_at = broker_core::schedule::parse_at(&message.sent_at).unwrap_or(due_at);
        if broker_core::schedule::lateness(due_at, queued_at).is_some() {
            put("late", "true");
        }
    }
    put("message_id", &message.id);
    put("verified", if message.verified { "true" } else { "false" });
    json!({ "content": content, "meta": meta })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbox::MessageKind;

    fn message() -> StoredMessage {
        StoredMessage {
            id: "msg_1".into(),
            mesh_id: "mesh_1".into(),
            mesh_slug: "acme".into(),
            from: "alice".into(),
            from_pubkey: "a".repeat(64),
            from_member_pubkey: Some("b".repeat(64)),
            verified: true,
            priority: "now".into(),
            target: Some("@dev".into()),
            kind: MessageKind::Group,
            text: Some("build is green".into()),
            error: None,
            sent_at: "2026-04-15T10:00:00.000Z".into(),
            received_at: 1,
            receiving_session: "c".repeat(64),
            read: false,
        }
    }

    #[test]
    fn text_is_the_content_and_everything_else_string_attributes_with_identifier_keys() {
        let params = params(&message());
        assert_eq!(params["content"], "build is green");
        let meta = params["meta"].as_object().expect("meta object");
        assert_eq!(meta["from_name"], "alice");
        assert_eq!(meta["mesh"], "acme");
        assert_eq!(meta["priority"], "now");
        assert_eq!(meta["kind"], "group");
        assert_eq!(meta["to"], "@dev");
        assert_eq!(meta["sent_at"], "2026-04-15T10:00:00.000Z");
        for (key, value) in meta {
            assert!(key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{key}");
            assert!(value.is_string(), "{key}");
        }
    }

    #[test]
    fn an_unopenable_message_says_so() {
        let mut broken = message();
        broken.text = None;
        broken.error = Some("decryption failed".into());
        assert!(params(&broken)["content"].as_str().expect("text").contains("could not open"));
    }

    #[test]
    fn an_occurrence_of_a_scheduled_message_says_when_it_was_meant_for_and_if_late() {
        let due = 1_796_112_000_000;
        let on_time = StoredMessage {
            id: broker_core::schedule::occurrence_id("sch_1", due),
            sent_at: broker_core::protocol::iso8601_ms(due + 300),
            ..message()
        };
        let meta = params(&on_time)["meta"].clone();
        assert_eq!(meta["scheduled_for"], "2026-12-01T08:00:00.000Z");
        assert!(meta.get("late").is_none(), "{meta}");
        let late = StoredMessage { sent_at: broker_core::protocol::iso8601_ms(due + 3_600_000), ..on_time };
        assert_eq!(params(&late)["meta"]["late"], "true");
        assert!(params(&message())["meta"].get("scheduled_for").is_none());
    }
}
