//! What the connector remembers between runs, in `telegram.json` in its data directory
//! (owner-only, written atomically): the Bot API update offset, and per chat where its sign-in
//! stands, which meshes it muted, and whom each forwarded message came from (so a reply in
//! Telegram reaches that sender). Secrets are not here: each chat's device token and keys live
//! in that chat's own keystore.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{ConfigError, write_private_atomic};

/// Replies are remembered for this many forwarded messages per chat (oldest forgotten first):
/// enough for any conversation a person scrolls back to, small enough to rewrite the file often.
pub const REMEMBERED_REPLIES: usize = 200;

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorState {
    /// The next update to ask Telegram for: every update before it was handled.
    #[serde(default)]
    pub offset: i32,
    #[serde(default)]
    pub chats: BTreeMap<i64, ChatRecord>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatRecord {
    #[serde(default)]
    pub stage: Stage,
    /// Mesh ids whose join notices are dropped and whose messages arrive silently.
    #[serde(default)]
    pub muted: BTreeSet<String>,
    /// Telegram message id → the peer a reply to it goes to.
    #[serde(default)]
    pub replies: BTreeMap<i32, ReplyTo>,
}

/// Where a chat's sign-in stands.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "stage")]
pub enum Stage {
    #[default]
    SignedOut,
    /// `/connect` was typed; the next text is the email address.
    AwaitingEmail,
    /// A code was asked for this address; the next six digits are tried.
    AwaitingCode { email: String },
    /// Signed in: the chat's config directory holds its account and meshes.
    Connected,
}

/// Who answers a forwarded message: the sender's member key (or session key) in its mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplyTo {
    pub mesh_id: String,
    pub slug: String,
    pub name: String,
    pub target_spec: String,
}

impl ChatRecord {
    pub fn remember_reply(&mut self, message_id: i32, to: ReplyTo) {
        self.replies.insert(message_id, to);
        while self.replies.len() > REMEMBERED_REPLIES {
            self.replies.pop_first();
        }
    }
}

/// `telegram.json` in the data directory.
fn state_file(data_dir: &Path) -> PathBuf {
    data_dir.join("telegram.json")
}

/// Writes a state serialized with [`ConnectorState::to_json`] (owner-only, atomically; it syncs
/// to disk, so callers on the runtime run it where blocking is allowed).
pub fn save_json(data_dir: &Path, json: &[u8]) -> Result<(), ConfigError> {
    write_private_atomic(&state_file(data_dir), json)
}

impl ConnectorState {
    pub fn load(data_dir: &Path) -> Result<ConnectorState, ConfigError> {
        let path = state_file(data_dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ConfigError::Parse { path, source }),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(ConnectorState::default()),
            Err(source) => Err(ConfigError::Io { path, source }),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("the connector state serializes")
    }

    pub fn chat(&mut self, chat_id: i64) -> &mut ChatRecord {
        self.chats.entry(chat_id).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_survives_a_restart_and_forgets_the_oldest_replies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut state = ConnectorState { offset: 42, ..ConnectorState::default() };
        let chat = state.chat(-100);
        chat.stage = Stage::AwaitingCode { email: "alice@example.test".into() };
        chat.muted.insert("mesh_1".into());
        for id in 0..(REMEMBERED_REPLIES as i32 + 5) {
            let to =
                ReplyTo { mesh_id: "mesh_1".into(), slug: "team".into(), name: "bob".into(), target_spec: "k".into() };
            chat.remember_reply(id, to);
        }
        save_json(dir.path(), &state.to_json()).expect("saves");

        let loaded = ConnectorState::load(dir.path()).expect("loads");
        assert_eq!(loaded.offset, 42);
        let chat = &loaded.chats[&-100];
        assert_eq!(chat.stage, Stage::AwaitingCode { email: "alice@example.test".into() });
        assert!(chat.muted.contains("mesh_1"));
        assert_eq!(chat.replies.len(), REMEMBERED_REPLIES);
        assert_eq!(chat.replies.keys().next(), Some(&5), "the oldest were forgotten");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(state_file(dir.path())).expect("metadata").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_missing_file_is_a_fresh_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = ConnectorState::load(dir.path()).expect("loads");
        assert_eq!((state.offset, state.chats.len()), (0, 0));
    }
}
