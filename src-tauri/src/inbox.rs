//! The local inbox: every message this device received, in SQLite (`<config>/inbox.db`).
//!
//! A message is committed here before it is acknowledged to the broker, so nothing the broker
//! let go of is lost when the bridge restarts. The message id is the primary key: a message the
//! broker pushes again (after a reconnect or a restart) is recognised and not stored twice.
//! Rows stay after they are read, so history can be read later (`claudemesh inbox --all`).
//!
//! Bodies are stored opened (this file is the device owner's own copy, owner-only); the broker
//! only ever held them sealed.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("inbox database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("inbox {path}: {message}")]
    Open { path: String, message: String },
}

/// Migrations by `user_version`; each runs once, in a transaction, at open.
const MIGRATIONS: &[&str] = &[
    "CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        mesh_id TEXT NOT NULL,
        mesh_slug TEXT NOT NULL,
        sender_pubkey TEXT NOT NULL,
        sender_member_pubkey TEXT,
        sender_name TEXT NOT NULL,
        verified INTEGER NOT NULL,
        priority TEXT NOT NULL,
        target_spec TEXT,
        kind TEXT NOT NULL,
        body TEXT,
        open_error TEXT,
        created_at TEXT NOT NULL,
        received_at INTEGER NOT NULL,
        receiving_session TEXT NOT NULL,
        read_at INTEGER
    );
    CREATE INDEX messages_unread ON messages (read_at, received_at);
    CREATE INDEX messages_received ON messages (received_at);",
    // The desktop app: which kind of session received a message (so a person's view can leave
    // out what was addressed to a Claude Code session), the person's own read marker (separate
    // from `read_at`, which is the sessions' `check_messages` marker), and the messages the
    // person sent with their delivery state.
    "ALTER TABLE messages ADD COLUMN receiving_channel TEXT;
    ALTER TABLE messages ADD COLUMN seen_at INTEGER;
    CREATE TABLE sent (
        id TEXT PRIMARY KEY,
        mesh_id TEXT NOT NULL,
        mesh_slug TEXT NOT NULL,
        target_spec TEXT NOT NULL,
        conversation TEXT NOT NULL,
        recipient_label TEXT NOT NULL,
        body TEXT NOT NULL,
        recipients INTEGER NOT NULL,
        delivered INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        sent_at INTEGER NOT NULL
    );
    CREATE INDEX sent_at ON sent (sent_at);",
    // Receipts that arrived before their message was recorded as sent: the broker's receipt can
    // overtake the send's own answer on its way through the app. Applied when it is recorded.
    "CREATE TABLE early_receipts (
        id TEXT PRIMARY KEY,
        count INTEGER NOT NULL
    );",
];

/// How a message was addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    Direct,
    Group,
    Broadcast,
    /// From claudemesh itself (`from` "claudemesh"): the broker held messages between this
    /// member and the peer whose member key is in `target`, or released them.
    Notice,
    /// A shared-state entry this session follows (`watch_state`) changed: `from` is who
    /// changed it, `target` the entry's name, `text` what it says now.
    State,
}

impl MessageKind {
    pub fn of_target(target_spec: Option<&str>) -> MessageKind {
        match target_spec {
            Some("*") | Some("@all") => MessageKind::Broadcast,
            Some(t) if t.starts_with('@') => MessageKind::Group,
            _ => MessageKind::Direct,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Direct => "direct",
            MessageKind::Group => "group",
            MessageKind::Broadcast => "broadcast",
            MessageKind::Notice => "notice",
            MessageKind::State => "state",
        }
    }

    fn parse(text: &str) -> MessageKind {
        match text {
            "group" => MessageKind::Group,
            "broadcast" => MessageKind::Broadcast,
            "notice" => MessageKind::Notice,
            "state" => MessageKind::State,
            _ => MessageKind::Direct,
        }
    }
}

/// One received message, as stored and as shown (`--json`, `check_messages`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredMessage {
    pub id: String,
    pub mesh_id: String,
    pub mesh_slug: String,
    /// The sender's display name when it was received.
    pub from: String,
    /// The sender's session key (or member key): what to reply to.
    pub from_pubkey: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_member_pubkey: Option<String>,
    /// The sender's member identity was verified end to end.
    pub verified: bool,
    pub priority: String,
    /// What the sender addressed: a key, `@group` or `*`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    pub kind: MessageKind,
    /// The text; absent when the message could not be opened (see `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the sender's broker accepted it (ISO 8601).
    pub sent_at: String,
    /// Unix milliseconds.
    pub received_at: u64,
    /// The session key of the bridge or command that received it.
    #[serde(skip)]
    pub receiving_session: String,
    pub read: bool,
}

/// Runs an inbox call off the async runtime (every statement is short, but it touches the
/// disk); a task that did not finish is an error too.
pub async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> Result<T, InboxError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(|error| error.to_string()),
        Err(error) => Err(format!("inbox task failed: {error}")),
    }
}

pub struct Inbox {
    /// One connection; every statement is short, and callers run them off the async runtime.
    conn: Mutex<Connection>,
}

impl Inbox {
    pub fn open(path: &Path) -> Result<Inbox, InboxError> {
        // A commit survives a process crash (what "the bridge restarted" means) without an fsync
        // per message; several bridges of one device share the file.
        let mut conn = broker_core::client::local_db::open_private(path)
            .map_err(|e| InboxError::Open { path: path.display().to_string(), message: e.to_string() })?;
        broker_core::client::local_db::migrate(&mut conn, MIGRATIONS)?;
        Ok(Inbox { conn: Mutex::new(conn) })
    }

    /// Stores `message` unless a message with its id is already there. Returns whether it was
    /// new. When this returns, the row is committed. `receiving_channel` is the channel of the
    /// session that received it (`claude-code`, `cli`, `desktop`).
    pub fn insert(&self, message: &StoredMessage, receiving_channel: &str) -> Result<bool, InboxError> {
        let conn = self.conn.lock().expect("inbox lock");
        let inserted = conn.execute(
            "INSERT OR IGNORE INTO messages (id, mesh_id, mesh_slug, sender_pubkey, sender_member_pubkey,
                sender_name, verified, priority, target_spec, kind, body, open_error, created_at, received_at,
                receiving_session, read_at, receiving_channel)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                message.id,
                message.mesh_id,
                message.mesh_slug,
                message.from_pubkey,
                message.from_member_pubkey,
                message.from,
                message.verified,
                message.priority,
                message.target,
                message.kind.as_str(),
                message.text,
                message.error,
                message.sent_at,
                message.received_at as i64,
                message.receiving_session,
                message.read.then_some(message.received_at as i64),
                receiving_channel,
            ],
        )?;
        Ok(inserted == 1)
    }

    pub fn get(&self, id: &str) -> Result<Option<StoredMessage>, InboxError> {
        let conn = self.conn.lock().expect("inbox lock");
        let sql = format!("SELECT {COLUMNS} FROM messages WHERE id = ?1");
        Ok(conn.query_row(&sql, [id], row_to_message).optional()?)
    }

    /// Unread messages `visible` accepts, oldest first, marked read in the same transaction (so
    /// two bridges sharing the inbox never both hand out one message).
    pub fn take_unread(
        &self,
        mut visible: impl FnMut(&StoredMessage) -> bool,
        now_ms: u64,
    ) -> Result<Vec<StoredMessage>, InboxError> {
        let mut conn = self.conn.lock().expect("inbox lock");
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut taken = Vec::new();
        {
            let sql = format!("SELECT {COLUMNS} FROM messages WHERE read_at IS NULL ORDER BY received_at, rowid");
            let mut select = tx.prepare(&sql)?;
            let mut mark = tx.prepare("UPDATE messages SET read_at = ?2 WHERE id = ?1")?;
            for message in select.query_map([], row_to_message)? {
                let mut message = message?;
                if visible(&message) {
                    mark.execute(params![message.id, now_ms as i64])?;
                    message.read = true;
                    taken.push(message);
                }
            }
        }
        tx.commit()?;
        Ok(taken)
    }

    /// The oldest unread messages, at most `limit`, without marking them: for a front end that
    /// marks each read only once it has handed it on (the Telegram connector, once Telegram
    /// accepted it), so nothing is lost when handing on fails or the process stops.
    pub fn oldest_unread(&self, limit: usize) -> Result<Vec<StoredMessage>, InboxError> {
        let conn = self.conn.lock().expect("inbox lock");
        let sql = format!("SELECT {COLUMNS} FROM messages WHERE read_at IS NULL ORDER BY received_at, rowid LIMIT ?1");
        let mut select = conn.prepare(&sql)?;
        let rows = select.query_map([limit as i64], row_to_message)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Marks one message read (see [`Inbox::oldest_unread`]).
    pub fn mark_read(&self, id: &str, now_ms: u64) -> Result<(), InboxError> {
        let conn = self.conn.lock().expect("inbox lock");
        conn.execute("UPDATE messages SET read_at = ?2 WHERE id = ?1 AND read_at IS NULL", params![id, now_ms as i64])?;
        Ok(())
    }

    /// The last `limit` messages, oldest first.
    pub fn history(&self, limit: usize) -> Result<Vec<StoredMessage>, InboxError> {
        let conn = self.conn.lock().expect("inbox lock");
        let sql = format!(
            "SELECT * FROM (SELECT {COLUMNS}, rowid AS r FROM messages ORDER BY received_at DESC, rowid DESC LIMIT ?1)
             ORDER BY received_at, r"
        );
        let mut select = conn.prepare(&sql)?;
        let rows = select.query_map([limit as i64], row_to_message)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The last `limit` messages a person at this device may read (see [`for_person`]), oldest
    /// first, with whether the person has seen each.
    #[cfg_attr(not(feature = "gui"), allow(dead_code))]
    pub fn person_history(&self, own_member_keys: &[String], limit: usize) -> Result<Vec<PersonMessage>, InboxError> {
        let conn = self.conn.lock().expect("inbox lock");
        let sql = format!(
            "SELECT * FROM (SELECT {COLUMNS}, receiving_channel, seen_at, rowid AS r FROM messages
                ORDER BY received_at DESC, rowid DESC LIMIT ?1)
             ORDER BY received_at, r"
        );
        let mut select = conn.prepare(&sql)?;
        let rows = select
            .query_map([limit as i64], |row| {
                Ok((row_to_message(row)?, row.get::<_, Option<String>>(16)?, row.get::<_, Option<i64>>(17)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows
            .into_iter()
            .filter(|(message, channel, _)| for_person(message, channel.as_deref(), own_member_keys))
            .map(|(message, _, seen)| PersonMessage { message, seen: seen.is_some() })
            .collect())
    }

    /// Marks messages as seen by the person (leaves the sessions' read markers alone).
    #[cfg_attr(not(feature = "gui"), allow(dead_code))]
    pub fn mark_seen(&self, ids: &[String], now_ms: u64) -> Result<(), InboxError> {
        let mut conn = self.conn.lock().expect("inbox lock");
        let tx = conn.transaction()?;
        {
            let mut mark = tx.prepare("UPDATE messages SET seen_at = ?2 WHERE id = ?1 AND seen_at IS NULL")?;
            for id in ids {
                mark.execute(params![id, now_ms as i64])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a message the person sent (queued, or refused with `error`); returns it as it
    /// stands, with the receipts that came before it counted.
    #[cfg_attr(not(feature = "gui"), allow(dead_code))]
    pub fn record_sent(&self, sent: &SentMessage) -> Result<SentMessage, InboxError> {
        let mut conn = self.conn.lock().expect("inbox lock");
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT OR REPLACE INTO sent (id, mesh_id, mesh_slug, target_spec, conversation, recipient_label, body,
                recipients, delivered, error, sent_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                sent.id,
                sent.mesh_id,
                sent.mesh_slug,
                sent.target_spec,
                sent.conversation,
                sent.recipient_label,
                sent.text,
                sent.recipients,
                sent.delivered,
                sent.error,
                sent.sent_at as i64,
            ],
        )?;
        let early: Option<i64> = tx
            .query_row("DELETE FROM early_receipts WHERE id = ?1 RETURNING count", [&sent.id], |row| row.get(0))
            .optional()?;
        if let Some(count) = early {
            tx.execute(
                "UPDATE sent SET delivered = MIN(delivered + ?2, recipients) WHERE id = ?1",
                params![sent.id, count],
            )?;
        }
        let sql = format!("SELECT {SENT_COLUMNS} FROM sent WHERE id = ?1");
        let recorded = tx.query_row(&sql, [&sent.id], row_to_sent)?;
        tx.commit()?;
        Ok(recorded)
    }

    /// One recipient member stored a sent message; returns it as it stands now (`None` when it
    /// is not recorded yet: the receipt waits for it).
    #[cfg_attr(not(feature = "gui"), allow(dead_code))]
    pub fn mark_delivered(&self, id: &str) -> Result<Option<SentMessage>, InboxError> {
        let conn = self.conn.lock().expect("inbox lock");
        let changed = conn.execute("UPDATE sent SET delivered = MIN(delivered + 1, recipients) WHERE id = ?1", [id])?;
        if changed == 0 {
            conn.execute(
                "INSERT INTO early_receipts (id, count) VALUES (?1, 1)
                 ON CONFLICT (id) DO UPDATE SET count = count + 1",
                [id],
            )?;
            return Ok(None);
        }
        let sql = format!("SELECT {SENT_COLUMNS} FROM sent WHERE id = ?1");
        Ok(conn.query_row(&sql, [id], row_to_sent).optional()?)
    }

    /// The last `limit` sent messages, oldest first.
    #[cfg_attr(not(feature = "gui"), allow(dead_code))]
    pub fn sent_history(&self, limit: usize) -> Result<Vec<SentMessage>, InboxError> {
        let conn = self.conn.lock().expect("inbox lock");
        let sql = format!(
            "SELECT * FROM (SELECT {SENT_COLUMNS}, rowid AS r FROM sent ORDER BY sent_at DESC, rowid DESC LIMIT ?1)
             ORDER BY sent_at, r"
        );
        let mut select = conn.prepare(&sql)?;
        let rows = select.query_map([limit as i64], row_to_sent)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn unread_count(&self) -> Result<u64, InboxError> {
        let conn = self.conn.lock().expect("inbox lock");
        Ok(conn.query_row("SELECT COUNT(*) FROM messages WHERE read_at IS NULL", [], |r| r.get::<_, i64>(0))? as u64)
    }
}

/// A received message as a person's view shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "gui"), allow(dead_code))]
pub struct PersonMessage {
    pub message: StoredMessage,
    /// The person opened its conversation since it arrived.
    pub seen: bool,
}

/// A message the person sent from this device (its own copy: the broker only held it sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "gui"), allow(dead_code))]
pub struct SentMessage {
    /// The broker's message id, or a local `unsent_…` id when it was refused before queueing.
    pub id: String,
    pub mesh_id: String,
    pub mesh_slug: String,
    /// A key, `@group` or `*`.
    pub target_spec: String,
    /// The conversation it belongs to (chosen by the front end).
    pub conversation: String,
    /// Who it went to, as shown (a name, `@group`, `everyone`).
    pub recipient_label: String,
    pub text: String,
    /// Members it was queued for.
    pub recipients: u32,
    /// Members whose client stored it (delivery receipts).
    pub delivered: u32,
    /// Why it was not queued.
    pub error: Option<String>,
    /// Unix milliseconds.
    pub sent_at: u64,
}

/// Whether a person at this device may read a received message: everything addressed to the
/// member, a group or the mesh, and direct messages that reached the desktop app's own session.
/// A message addressed to one Claude Code session's key is that session's.
#[cfg_attr(not(feature = "gui"), allow(dead_code))]
pub fn for_person(message: &StoredMessage, receiving_channel: Option<&str>, own_member_keys: &[String]) -> bool {
    match message.kind {
        MessageKind::Group | MessageKind::Broadcast | MessageKind::Notice | MessageKind::State => true,
        MessageKind::Direct => {
            receiving_channel == Some("desktop")
                || message.target.as_ref().is_none_or(|target| own_member_keys.contains(target))
        }
    }
}

#[cfg_attr(not(feature = "gui"), allow(dead_code))]
const SENT_COLUMNS: &str =
    "id, mesh_id, mesh_slug, target_spec, conversation, recipient_label, body, recipients, delivered, error, sent_at";

#[cfg_attr(not(feature = "gui"), allow(dead_code))]
fn row_to_sent(row: &rusqlite::Row<'_>) -> rusqlite::Result<SentMessage> {
    Ok(SentMessage {
        id: row.get(0)?,
        mesh_id: row.get(1)?,
        mesh_slug: row.get(2)?,
        target_spec: row.get(3)?,
        conversation: row.get(4)?,
        recipient_label: row.get(5)?,
        text: row.get(6)?,
        recipients: row.get(7)?,
        delivered: row.get(8)?,
        error: row.get(9)?,
        sent_at: row.get::<_, i64>(10)? as u64,
    })
}

const COLUMNS: &str = "id, mesh_id, mesh_slug, sender_name, sender_pubkey, sender_member_pubkey, verified, priority,
    target_spec, kind, body, open_error, created_at, received_at, receiving_session, read_at";

fn row_to_message(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        id: row.get(0)?,
        mesh_id: row.get(1)?,
        mesh_slug: row.get(2)?,
        from: row.get(3)?,
        from_pubkey: row.get(4)?,
        from_member_pubkey: row.get(5)?,
        verified: row.get(6)?,
        priority: row.get(7)?,
        target: row.get(8)?,
        kind: MessageKind::parse(&row.get::<_, String>(9)?),
        text: row.get(10)?,
        error: row.get(11)?,
        sent_at: row.get(12)?,
        received_at: row.get::<_, i64>(13)? as u64,
        receiving_session: row.get(14)?,
        read: row.get::<_, Option<i64>>(15)?.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, received_at: u64, session: &str) -> StoredMessage {
        StoredMessage {
            id: id.into(),
            mesh_id: "mesh_1".into(),
            mesh_slug: "acme".into(),
            from: "alice".into(),
            from_pubkey: "aa".repeat(32),
            from_member_pubkey: Some("bb".repeat(32)),
            verified: true,
            priority: "next".into(),
            target: Some("@dev".into()),
            kind: MessageKind::Group,
            text: Some(format!("text of {id}")),
            error: None,
            sent_at: "2026-01-01T00:00:00.000Z".into(),
            received_at,
            receiving_session: session.into(),
            read: false,
        }
    }

    #[test]
    fn a_message_is_stored_once_and_survives_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("inbox.db");
        {
            let inbox = Inbox::open(&path).expect("opens");
            assert!(inbox.insert(&message("m1", 1, "s"), "claude-code").expect("insert"));
            assert!(
                !inbox.insert(&message("m1", 2, "s"), "claude-code").expect("insert again"),
                "duplicate id is ignored"
            );
        }
        let inbox = Inbox::open(&path).expect("reopens");
        assert_eq!(inbox.get("m1").expect("get"), Some(message("m1", 1, "s")));
        assert_eq!(inbox.unread_count().expect("count"), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn take_unread_marks_read_respects_the_filter_and_keeps_history() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = Inbox::open(&dir.path().join("inbox.db")).expect("opens");
        for (id, at, session) in [("m1", 1, "mine"), ("m2", 2, "other"), ("m3", 3, "mine")] {
            inbox.insert(&message(id, at, session), "claude-code").expect("insert");
        }
        let taken = inbox.take_unread(|m| m.receiving_session == "mine", 10).expect("take");
        assert_eq!(taken.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["m1", "m3"]);
        assert!(taken.iter().all(|m| m.read));
        assert!(inbox.take_unread(|m| m.receiving_session == "mine", 11).expect("take").is_empty(), "read once");
        assert_eq!(inbox.unread_count().expect("count"), 1, "m2 is still unread");

        let history = inbox.history(2).expect("history");
        assert_eq!(history.iter().map(|m| (m.id.as_str(), m.read)).collect::<Vec<_>>(), [("m2", false), ("m3", true)]);
    }

    #[test]
    fn oldest_unread_leaves_messages_unread_until_each_is_marked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = Inbox::open(&dir.path().join("inbox.db")).expect("opens");
        for (id, at) in [("m2", 2), ("m1", 1), ("m3", 3)] {
            inbox.insert(&message(id, at, "s"), "telegram").expect("insert");
        }
        let ids = |rows: Vec<StoredMessage>| rows.into_iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids(inbox.oldest_unread(2).expect("unread")), ["m1", "m2"]);
        assert_eq!(ids(inbox.oldest_unread(2).expect("unread")), ["m1", "m2"], "reading marks nothing");
        inbox.mark_read("m1", 10).expect("mark");
        assert_eq!(ids(inbox.oldest_unread(5).expect("unread")), ["m2", "m3"]);
        assert!(inbox.get("m1").expect("get").is_some_and(|m| m.read));
    }

    #[test]
    fn a_persons_view_has_its_own_seen_marker_and_leaves_session_mail_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = Inbox::open(&dir.path().join("inbox.db")).expect("opens");
        let own = "cc".repeat(32);
        let session = "dd".repeat(32);
        let direct = |id: &str, at: u64, target: &str| StoredMessage {
            target: Some(target.to_owned()),
            kind: MessageKind::Direct,
            ..message(id, at, "s")
        };
        inbox.insert(&message("group", 1, "s"), "claude-code").expect("insert");
        inbox.insert(&direct("to-member", 2, &own), "claude-code").expect("insert");
        inbox.insert(&direct("to-a-claude-session", 3, &session), "claude-code").expect("insert");
        inbox.insert(&direct("to-the-app", 4, &"ee".repeat(32)), "desktop").expect("insert");

        let view = inbox.person_history(std::slice::from_ref(&own), 10).expect("history");
        let ids: Vec<_> = view.iter().map(|m| m.message.id.as_str()).collect();
        assert_eq!(ids, ["group", "to-member", "to-the-app"]);
        assert!(view.iter().all(|m| !m.seen));

        inbox.mark_seen(&["group".into(), "to-the-app".into()], 9).expect("mark");
        let seen: Vec<_> = inbox
            .person_history(std::slice::from_ref(&own), 10)
            .expect("history")
            .iter()
            .map(|m| (m.message.id.clone(), m.seen))
            .collect();
        assert_eq!(seen, [("group".into(), true), ("to-member".into(), false), ("to-the-app".into(), true)]);
        // The sessions' own read markers are untouched: check_messages still gets everything.
        assert_eq!(inbox.unread_count().expect("count"), 4);
    }

    #[test]
    fn sent_messages_count_their_receipts_up_to_the_recipients() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = Inbox::open(&dir.path().join("inbox.db")).expect("opens");
        let sent = SentMessage {
            id: "msg_1".into(),
            mesh_id: "mesh_1".into(),
            mesh_slug: "acme".into(),
            target_spec: "*".into(),
            conversation: "mesh:mesh_1".into(),
            recipient_label: "everyone".into(),
            text: "hello".into(),
            recipients: 2,
            delivered: 0,
            error: None,
            sent_at: 5,
        };
        assert_eq!(inbox.record_sent(&sent).expect("record"), sent);
        assert_eq!(inbox.mark_delivered("msg_1").expect("mark").map(|s| s.delivered), Some(1));
        assert_eq!(inbox.mark_delivered("msg_1").expect("mark").map(|s| s.delivered), Some(2));
        assert_eq!(inbox.mark_delivered("msg_1").expect("mark").map(|s| s.delivered), Some(2), "capped");
        assert_eq!(inbox.mark_delivered("unknown").expect("mark"), None);
        assert_eq!(inbox.sent_history(10).expect("history"), [SentMessage { delivered: 2, ..sent }]);
    }

    #[test]
    fn a_receipt_that_overtakes_its_message_counts_once_the_message_is_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let inbox = Inbox::open(&dir.path().join("inbox.db")).expect("opens");
        assert_eq!(inbox.mark_delivered("msg_early").expect("mark"), None, "not recorded yet");
        let sent = SentMessage {
            id: "msg_early".into(),
            mesh_id: "mesh_1".into(),
            mesh_slug: "acme".into(),
            target_spec: "b".repeat(64),
            conversation: "peer".into(),
            recipient_label: "bob".into(),
            text: "hello".into(),
            recipients: 1,
            delivered: 0,
            error: None,
            sent_at: 5,
        };
        assert_eq!(inbox.record_sent(&sent).expect("record").delivered, 1, "the early receipt counts");
        assert_eq!(inbox.mark_delivered("msg_early").expect("mark").map(|s| s.delivered), Some(1), "capped");
    }

    #[test]
    fn kinds_follow_the_target() {
        assert_eq!(MessageKind::of_target(Some("*")), MessageKind::Broadcast);
        assert_eq!(MessageKind::of_target(Some("@all")), MessageKind::Broadcast);
        assert_eq!(MessageKind::of_target(Some("@dev")), MessageKind::Group);
        assert_eq!(MessageKind::of_target(Some(&"ab".repeat(32))), MessageKind::Direct);
        assert_eq!(MessageKind::of_target(None), MessageKind::Direct);
    }
}
