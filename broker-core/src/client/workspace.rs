//! The shared workspace as one client uses it: shared-state entries and memories sealed with
//! the mesh's newest key and signed by this member ([`crate::workspace`]), names blinded, and
//! what comes back opened and checked: the seal at its place, the writer's signature, and the
//! writer a verified member of the log this client verified. Writes are compare-and-set on the
//! entry's version; a write without an expected version reads the current one first and
//! retries when another writer got in between.

use std::time::Duration;

use zeroize::Zeroizing;

use super::{ClientError, Correlation, MeshClient};
use crate::membership::Standing;
use crate::meshkey::EpochKey;
use crate::protocol::{self, ClientFrame, ErrorCode, MemoryEntry, ServerFrame, StateEntry};
use crate::workspace::{self, Address, EntryError, Kind, MemoryBody, Sealed, StateBody};

/// A shared-state entry, opened.
#[derive(Debug, Clone, PartialEq)]
pub struct StateItem {
    pub name: String,
    pub value: serde_json::Value,
    pub version: u64,
    /// The writer's member key, as it signed inside the seal.
    pub writer: String,
    /// When the broker stored it (ms), and when it expires.
    pub updated_at: u64,
    pub expires_at: Option<u64>,
}

/// A memory, opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryItem {
    pub id: String,
    pub seq: u64,
    pub text: String,
    pub tags: Vec<String>,
    pub writer: String,
    /// When its writer remembered it (ms, as signed).
    pub at: u64,
}

/// One change to the mesh's memories, in the broker's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryChange {
    Remembered(MemoryItem),
    Forgotten {
        id: String,
        seq: u64,
    },
    /// A memory this client cannot open (no key for its epoch, or it does not check out).
    Unreadable {
        id: String,
        seq: u64,
        reason: String,
    },
}

impl MemoryChange {
    pub fn seq(&self) -> u64 {
        match self {
            MemoryChange::Remembered(item) => item.seq,
            MemoryChange::Forgotten { seq, .. } | MemoryChange::Unreadable { seq, .. } => *seq,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error(
        "this session holds no mesh key yet: the mesh's content keys come from a member online whose client verified this member's admission"
    )]
    NoKey,
    #[error("{name:?} is at version {current}, not {expected}: read it again, then write with the version you read")]
    VersionMismatch { name: String, expected: u64, current: u64 },
    #[error("the mesh's key moved to a newer epoch: refresh the mesh keys and write again")]
    StaleEpoch,
    #[error("{0}")]
    Refused(String),
    #[error("an entry does not check out: {0}")]
    Unreadable(String),
    #[error("no memory {0:?} in this mesh (it may be forgotten already)")]
    UnknownMemory(String),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// A write without an expected version tries this often when other writers keep getting in.
const WRITE_RACES: usize = 5;

fn refused(message: String) -> WorkspaceError {
    WorkspaceError::Refused(message)
}

impl MeshClient {
    /// The newest epoch this member holds a key of, and that key.
    fn newest_key(&self) -> Result<(u64, Zeroizing<EpochKey>), WorkspaceError> {
        self.shared.epoch_keys.newest().ok_or(WorkspaceError::NoKey)
    }

    fn key_of(&self, epoch: u64) -> Result<Zeroizing<EpochKey>, WorkspaceError> {
        self.mesh_key(epoch).map(Zeroizing::new).ok_or(WorkspaceError::NoKey)
    }

    /// `name` as the broker sees it (HMAC under the mesh's names key).
    pub fn blind_state_name(&self, name: &str) -> Result<String, WorkspaceError> {
        let names = self.shared.epoch_keys.names_key(self.mesh_id()).ok_or(WorkspaceError::NoKey)?;
        Ok(workspace::blind_name(&names, name))
    }

    /// Checks that `writer` (signed inside a seal) is the member the broker says wrote it, and
    /// that the verified log admitted it.
    fn check_writer(&self, signed: &str, claimed: &str) -> Result<(), WorkspaceError> {
        if signed != claimed {
            return Err(WorkspaceError::Unreadable("signed by another member than the broker says wrote it".into()));
        }
        let verified = self
            .verified_roster()
            .is_some_and(|roster| roster.members.get(signed).is_some_and(|m| m.standing == Standing::Verified));
        if !verified {
            return Err(WorkspaceError::Unreadable("written by a key the membership log never verified".into()));
        }
        Ok(())
    }

    /// Opens a shared-state entry (from a reply or a `state_changed` event).
    pub fn open_state(&self, entry: &StateEntry) -> Result<StateItem, WorkspaceError> {
        let key = self.key_of(entry.epoch)?;
        let address = Address {
            kind: Kind::State,
            mesh_id: self.mesh_id(),
            id: &entry.name,
            version: entry.version,
            epoch: entry.epoch,
        };
        let sealed = Sealed { nonce: entry.nonce.clone(), ciphertext: entry.ciphertext.clone() };
        let opened = workspace::open::<StateBody>(&key, &address, &sealed).map_err(unreadable)?;
        self.check_writer(&opened.writer, &entry.writer)?;
        if self.blind_state_name(&opened.body.name)? != entry.name {
            return Err(WorkspaceError::Unreadable("its name is not the one it is stored under".into()));
        }
        Ok(StateItem {
            name: opened.body.name,
            value: opened.body.value,
            version: entry.version,
            writer: opened.writer,
            updated_at: entry.updated_at,
            expires_at: entry.expires_at,
        })
    }

    async fn state_entries(
        &self,
        frame: ClientFrame,
        req_id: String,
    ) -> Result<(Vec<StateEntry>, bool), WorkspaceError> {
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::StateEntries(reply) => Ok((reply.entries, reply.more)),
            ServerFrame::Error(error) => Err(refused(error.message)),
            _ => Err(ClientError::UnexpectedReply.into()),
        }
    }

    /// The live entry stored under a blinded name, as the broker has it.
    async fn raw_state(&self, blinded: &str) -> Result<Option<StateEntry>, WorkspaceError> {
        let req_id = self.correlation_id();
        let frame =
            ClientFrame::StateGet(protocol::StateGet { names: vec![blinded.to_owned()], req_id: Some(req_id.clone()) });
        Ok(self.state_entries(frame, req_id).await?.0.into_iter().find(|e| e.name == blinded))
    }

    /// The shared-state entry `name`, if there is a live one.
    pub async fn get_state(&self, name: &str) -> Result<Option<StateItem>, WorkspaceError> {
        let blinded = self.blind_state_name(name)?;
        self.raw_state(&blinded).await?.map(|entry| self.open_state(&entry)).transpose()
    }

    /// Every live entry whose name starts with `prefix` (all for ""), in name order. Entries
    /// that do not check out are returned as errors beside the others.
    pub async fn list_state(&self, prefix: &str) -> Result<Vec<Result<StateItem, WorkspaceError>>, WorkspaceError> {
        let mut after = None;
        let mut items = Vec::new();
        loop {
            let req_id = self.correlation_id();
            let frame =
                ClientFrame::StateList(protocol::StateList { after: after.clone(), req_id: Some(req_id.clone()) });
            let (entries, more) = self.state_entries(frame, req_id).await?;
            after = entries.last().map(|e| e.name.clone());
            items.extend(entries.iter().map(|entry| self.open_state(entry)));
            if !more || after.is_none() {
                break;
            }
        }
        items.retain(|item| item.as_ref().map_or(true, |item| item.name.starts_with(prefix)));
        items.sort_by(|a, b| match (a, b) {
            (Ok(a), Ok(b)) => a.name.cmp(&b.name),
            (Ok(_), Err(_)) => std::cmp::Ordering::Less,
            (Err(_), Ok(_)) => std::cmp::Ordering::Greater,
            (Err(_), Err(_)) => std::cmp::Ordering::Equal,
        });
        Ok(items)
    }

    /// Writes `value` as `name`: at `expected_version` (0: it must not exist), or over whatever
    /// version is current when `None`. `ttl`: the entry expires that long after the write.
    pub async fn set_state(
        &self,
        name: &str,
        value: serde_json::Value,
        expected_version: Option<u64>,
        ttl: Option<Duration>,
    ) -> Result<StateItem, WorkspaceError> {
        let blinded = self.blind_state_name(name)?;
        let body = StateBody { name: name.to_owned(), value };
        for _ in 0..WRITE_RACES {
            let expected = match expected_version {
                Some(version) => version,
                None => self.raw_state(&blinded).await?.map_or(0, |entry| entry.version),
            };
            match self.write_state(&blinded, &body, expected, ttl).await {
                Err(WorkspaceError::VersionMismatch { .. }) if expected_version.is_none() => continue,
                Err(WorkspaceError::VersionMismatch { .. }) => {
                    let current = self.raw_state(&blinded).await?.map_or(0, |entry| entry.version);
                    return Err(WorkspaceError::VersionMismatch { name: name.to_owned(), expected, current });
                }
                other => return other,
            }
        }
        Err(refused(format!("{name:?} kept changing under {WRITE_RACES} tries; try again")))
    }

    async fn write_state(
        &self,
        blinded: &str,
        body: &StateBody,
        expected: u64,
        ttl: Option<Duration>,
    ) -> Result<StateItem, WorkspaceError> {
        let (epoch, key) = self.newest_key()?;
        let version = expected + 1;
        let address = Address { kind: Kind::State, mesh_id: self.mesh_id(), id: blinded, version, epoch };
        let sealed = workspace::seal(&key, &address, body, &self.shared.keys.member, protocol::now_ms());
        let req_id = self.correlation_id();
        let frame = ClientFrame::StateSet(protocol::StateSet {
            name: blinded.to_owned(),
            expected_version: expected,
            epoch,
            nonce: sealed.nonce,
            ciphertext: sealed.ciphertext,
            ttl_ms: ttl.map(|ttl| (ttl.as_millis() as u64).max(1)),
            req_id: Some(req_id.clone()),
        });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::StateStored(stored) => Ok(StateItem {
                name: body.name.clone(),
                value: body.value.clone(),
                version: stored.entry.version,
                writer: self.member_pubkey(),
                updated_at: stored.entry.updated_at,
                expires_at: stored.entry.expires_at,
            }),
            ServerFrame::Error(error) => Err(write_refusal(error, &body.name, expected)),
            _ => Err(ClientError::UnexpectedReply.into()),
        }
    }

    /// Removes `name` (only at `expected_version`, when given); the version removed, 0 when
    /// there was none.
    pub async fn delete_state(&self, name: &str, expected_version: Option<u64>) -> Result<u64, WorkspaceError> {
        let blinded = self.blind_state_name(name)?;
        let req_id = self.correlation_id();
        let frame = ClientFrame::StateDelete(protocol::StateDelete {
            name: blinded.clone(),
            expected_version,
            req_id: Some(req_id.clone()),
        });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::StateDeleted(deleted) => Ok(deleted.version),
            ServerFrame::Error(error) if error.message.starts_with("version_mismatch") => {
                let current = self.raw_state(&blinded).await?.map_or(0, |entry| entry.version);
                let expected = expected_version.unwrap_or_default();
                Err(WorkspaceError::VersionMismatch { name: name.to_owned(), expected, current })
            }
            ServerFrame::Error(error) => Err(refused(error.message)),
            _ => Err(ClientError::UnexpectedReply.into()),
        }
    }

    /// Stores a memory sealed under the newest epoch.
    pub async fn remember(&self, text: &str, tags: Vec<String>) -> Result<MemoryItem, WorkspaceError> {
        let (epoch, key) = self.newest_key()?;
        let id = crate::ids::new_id("mem");
        let at = protocol::now_ms();
        let body = MemoryBody { text: text.to_owned(), tags };
        let address = Address { kind: Kind::Memory, mesh_id: self.mesh_id(), id: &id, version: 1, epoch };
        let sealed = workspace::seal(&key, &address, &body, &self.shared.keys.member, at);
        let req_id = self.correlation_id();
        let frame = ClientFrame::Remember(protocol::Remember {
            id: id.clone(),
            epoch,
            nonce: sealed.nonce,
            ciphertext: sealed.ciphertext,
            req_id: Some(req_id.clone()),
        });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::MemoryStored(stored) => Ok(MemoryItem {
                id,
                seq: stored.seq,
                text: body.text,
                tags: body.tags,
                writer: self.member_pubkey(),
                at,
            }),
            ServerFrame::Error(error) => Err(write_refusal(error, "", 0)),
            _ => Err(ClientError::UnexpectedReply.into()),
        }
    }

    /// The mesh's memory changes after `after` (a `seq`), a page at a time: the changes, and
    /// whether more follow.
    pub async fn memory_changes(&self, after: u64) -> Result<(Vec<MemoryChange>, bool), WorkspaceError> {
        let req_id = self.correlation_id();
        let frame = ClientFrame::Memories(protocol::Memories { after, req_id: Some(req_id.clone()) });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::MemoriesPage(page) => {
                Ok((page.entries.iter().map(|e| self.open_memory(e)).collect(), page.more))
            }
            ServerFrame::Error(error) => Err(refused(error.message)),
            _ => Err(ClientError::UnexpectedReply.into()),
        }
    }

    fn open_memory(&self, entry: &MemoryEntry) -> MemoryChange {
        if entry.forgotten {
            return MemoryChange::Forgotten { id: entry.id.clone(), seq: entry.seq };
        }
        let opened = self.key_of(entry.epoch).and_then(|key| {
            let address =
                Address { kind: Kind::Memory, mesh_id: self.mesh_id(), id: &entry.id, version: 1, epoch: entry.epoch };
            let sealed = Sealed { nonce: entry.nonce.clone(), ciphertext: entry.ciphertext.clone() };
            let opened = workspace::open::<MemoryBody>(&key, &address, &sealed).map_err(unreadable)?;
            self.check_writer(&opened.writer, &entry.writer)?;
            Ok(opened)
        });
        match opened {
            Ok(opened) => MemoryChange::Remembered(MemoryItem {
                id: entry.id.clone(),
                seq: entry.seq,
                text: opened.body.text,
                tags: opened.body.tags,
                writer: opened.writer,
                at: opened.at,
            }),
            Err(error) => MemoryChange::Unreadable { id: entry.id.clone(), seq: entry.seq, reason: error.to_string() },
        }
    }

    /// Forgets a memory for the whole mesh.
    pub async fn forget(&self, id: &str) -> Result<u64, WorkspaceError> {
        let req_id = self.correlation_id();
        let frame = ClientFrame::Forget(protocol::Forget { id: id.to_owned(), req_id: Some(req_id.clone()) });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::MemoryStored(stored) => Ok(stored.seq),
            ServerFrame::Error(error) if error.code == ErrorCode::NotFound => {
                Err(WorkspaceError::UnknownMemory(id.to_owned()))
            }
            ServerFrame::Error(error) => Err(refused(error.message)),
            _ => Err(ClientError::UnexpectedReply.into()),
        }
    }
}

fn unreadable(error: EntryError) -> WorkspaceError {
    WorkspaceError::Unreadable(error.to_string())
}

/// A refused write: a lost race and a moved key are told apart from the rest.
fn write_refusal(error: protocol::ErrorFrame, name: &str, expected: u64) -> WorkspaceError {
    if error.message.starts_with("version_mismatch") {
        return WorkspaceError::VersionMismatch { name: name.to_owned(), expected, current: 0 };
    }
    if error.message.starts_with("stale_epoch") {
        return WorkspaceError::StaleEpoch;
    }
    refused(error.message)
}
