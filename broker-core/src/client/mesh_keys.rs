//! The mesh's content keys as one client keeps them: fetched, checked against the verified
//! membership log, opened, and passed on. A refresh (on connecting, when a peer arrives or
//! leaves, or when asked) does what an online member's client owes the mesh: it makes the first
//! epoch, starts a new one when the log removed a member since the newest was made, and wraps
//! the keys it holds for verified members that have none. Members the broker only vouches for,
//! or invented, never get a wrap from it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use super::{ClientError, Correlation, MeshClient};
use crate::membership::KeyHistory;
use crate::membership::{Head, LogError, Roster, Verifier};
use crate::meshkey::{self, EpochError, EpochKey, EpochRecord, NAMES_EPOCH, Wrap};
use crate::protocol::{self, ClientFrame, ErrorCode, ServerFrame};

/// What a client keeps between refreshes.
#[derive(Default)]
pub(super) struct EpochKeys {
    /// Epoch → key, for the epochs this member could open or made.
    keys: Mutex<BTreeMap<u64, Zeroizing<EpochKey>>>,
    /// The membership log verified so far: a refresh fetches only the entries after it.
    log: Mutex<Option<Arc<Verifier>>>,
}

impl EpochKeys {
    /// The newest epoch held, and its key: what this client writes under.
    pub(super) fn newest(&self) -> Option<(u64, Zeroizing<EpochKey>)> {
        let keys = self.keys.lock().expect("epoch keys lock");
        keys.range(1..).next_back().map(|(epoch, key)| (*epoch, key.clone()))
    }

    /// The mesh's names key: from epoch 1's key, or as it was handed over on its own.
    pub(super) fn names_key(&self, mesh_id: &str) -> Option<Zeroizing<[u8; 32]>> {
        let keys = self.keys.lock().expect("epoch keys lock");
        match keys.get(&1) {
            Some(first) => Some(crate::workspace::names_key(mesh_id, first)),
            None => keys.get(&NAMES_EPOCH).map(|names| Zeroizing::new(**names)),
        }
    }
}

/// What a refresh found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshKeyStatus {
    /// The verified log's creator and head (a caller pins them).
    pub creator: String,
    pub head: Head,
    /// The mesh's newest epoch, and whether this member holds its key.
    pub epoch: Option<u64>,
    pub holds_newest: bool,
    /// An epoch this refresh made (the first, or one after a removal).
    pub made: Option<u64>,
    /// Members this refresh wrapped keys for.
    pub wrapped_for: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum MeshKeyError {
    #[error("the mesh has no membership log, so it cannot have mesh keys")]
    NoLog,
    #[error("the membership log does not verify: {0}")]
    Log(LogError),
    #[error(
        "this member's own admission is not verified in the log (the broker alone vouches for it): no member hands it a mesh key"
    )]
    NotVerified,
    #[error("the mesh's epoch records do not verify: {0}")]
    Epochs(#[from] EpochError),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Tries a refresh this often when another client keeps winning the race for an epoch.
const RACES: usize = 3;

impl MeshClient {
    /// The key of `epoch`, when this member holds it.
    pub fn mesh_key(&self, epoch: u64) -> Option<EpochKey> {
        self.shared.epoch_keys.keys.lock().expect("epoch keys lock").get(&epoch).map(|key| **key)
    }

    /// Whether this member can use the shared workspace: it holds the names key and a key to
    /// write under.
    pub fn holds_mesh_keys(&self) -> bool {
        self.shared.epoch_keys.names_key(self.mesh_id()).is_some() && self.shared.epoch_keys.newest().is_some()
    }

    /// Brings this member's mesh keys up to date (see the module docs). `pinned_creator` and
    /// `pinned_head` are what the caller verified before; the status carries the new ones.
    pub async fn refresh_mesh_keys(
        &self,
        pinned_creator: Option<&str>,
        pinned_head: Option<&Head>,
    ) -> Result<MeshKeyStatus, MeshKeyError> {
        let mesh_id = self.mesh_id().to_owned();
        let me = self.shared.keys.member.clone();
        for _ in 0..RACES {
            let log = self.verified_log(pinned_creator, pinned_head).await?;
            let roster = log.roster().map_err(|_| MeshKeyError::NoLog)?;
            if !roster.is_verified_member(&me.public_hex()) {
                return Err(MeshKeyError::NotVerified);
            }
            let keys = self.mesh_keys_now().await?;
            meshkey::verify_records(&mesh_id, &keys.epochs, &log)?;
            self.open_wraps(&mesh_id, &keys.wraps, &keys.epochs, roster);
            let mut status = MeshKeyStatus {
                creator: roster.creator.clone(),
                head: roster.head.clone(),
                epoch: keys.epochs.last().map(|r| r.epoch),
                holds_newest: false,
                made: None,
                wrapped_for: Vec::new(),
            };
            let newest = keys.epochs.last();
            // A member holding none of the keys yet leaves a later epoch to one that does: it
            // could not pass the earlier keys (or the names key) on to anyone.
            let can_make = newest.is_none() || self.shared.epoch_keys.names_key(&mesh_id).is_some();
            if can_make && newest.is_none_or(|record| meshkey::outdated(record, &log)) {
                let epoch = newest.map_or(1, |record| record.epoch + 1);
                match self.make_epoch(&mesh_id, epoch, roster).await? {
                    true => {
                        status.epoch = Some(epoch);
                        status.made = Some(epoch);
                    }
                    // Another client made it first: read everything again.
                    false => continue,
                }
            } else if can_make {
                status.wrapped_for = self.wrap_for_newcomers(&keys.unwrapped, &keys.epochs, &log).await?;
            }
            status.holds_newest = status.epoch.is_some_and(|epoch| self.mesh_key(epoch).is_some());
            return Ok(status);
        }
        Err(MeshKeyError::Client(ClientError::Rejected {
            reason: None,
            message: "other clients kept changing the mesh's keys; try again".into(),
        }))
    }

    /// The membership log verified up to its newest entry: the entries after what this client
    /// verified before, or the whole log checked against the pins the first time.
    async fn verified_log(
        &self,
        pinned_creator: Option<&str>,
        pinned_head: Option<&Head>,
    ) -> Result<Arc<Verifier>, MeshKeyError> {
        let cached = self.shared.epoch_keys.log.lock().expect("log lock").take();
        let fresh = cached.is_none();
        // Taken as it is unless another refresh still holds it (then that one keeps its copy).
        let mut log = cached
            .map(|log| Arc::try_unwrap(log).unwrap_or_else(|shared| (*shared).clone()))
            .unwrap_or_else(|| Verifier::new(self.mesh_id(), pinned_creator));
        let entries = self.membership_log(log.len()).await?;
        log.extend(&entries).map_err(MeshKeyError::Log)?;
        if log.is_empty() {
            return Err(MeshKeyError::NoLog);
        }
        if let Some(head) = pinned_head.filter(|_| fresh) {
            log.check_head(head).map_err(MeshKeyError::Log)?;
        }
        let log = Arc::new(log);
        *self.shared.epoch_keys.log.lock().expect("log lock") = Some(log.clone());
        Ok(log)
    }

    /// Sets the mesh's key history (this member must be an admin): signed for the log as this
    /// client verifies it now, retried when the log moved in between.
    pub async fn set_key_history(&self, mode: KeyHistory) -> Result<u64, MeshKeyError> {
        for _ in 0..RACES {
            let log = self.verified_log(None, None).await?;
            let after = log.len();
            let bytes = crate::membership::key_history_bytes(self.mesh_id(), mode, after);
            let signature = self.shared.keys.member.sign_hex(bytes.as_bytes());
            let req_id = self.correlation_id();
            let frame = ClientFrame::SetKeyHistory(protocol::SetKeyHistory {
                mode,
                after,
                signature,
                req_id: Some(req_id.clone()),
            });
            match self.exchange(frame, Correlation::Request(req_id)).await? {
                ServerFrame::KeyHistorySet(set) => return Ok(set.seq),
                ServerFrame::Error(error) if error.code == ErrorCode::Conflict => continue,
                ServerFrame::Error(error) => {
                    return Err(ClientError::Rejected { reason: None, message: error.message }.into());
                }
                _ => return Err(ClientError::UnexpectedReply.into()),
            }
        }
        Err(MeshKeyError::Client(ClientError::Rejected {
            reason: None,
            message: "the membership log kept changing; try again".into(),
        }))
    }

    /// The membership the log this client verified last describes (by a refresh, which keeps
    /// it even when this member itself is only vouched for); `None` before one verified it.
    pub fn verified_roster(&self) -> Option<Roster> {
        let log = self.shared.epoch_keys.log.lock().expect("log lock");
        log.as_ref().and_then(|log| log.roster().ok().cloned())
    }

    async fn mesh_keys_now(&self) -> Result<protocol::MeshKeysResult, ClientError> {
        let req_id = self.correlation_id();
        let frame = ClientFrame::MeshKeys(protocol::MeshKeys { req_id: Some(req_id.clone()) });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::MeshKeysResult(result) => Ok(result),
            _ => Err(ClientError::UnexpectedReply),
        }
    }

    /// Keeps the keys of the wraps that check out; a wrap that does not is logged and left.
    fn open_wraps(&self, mesh_id: &str, wraps: &[Wrap], records: &[EpochRecord], roster: &Roster) {
        let me = &self.shared.keys.member;
        let mut held = self.shared.epoch_keys.keys.lock().expect("epoch keys lock");
        for wrap in wraps {
            if wrap.epoch == NAMES_EPOCH {
                match meshkey::accept_names_key(wrap, roster, me) {
                    Ok(key) => {
                        held.insert(NAMES_EPOCH, Zeroizing::new(key));
                    }
                    Err(error) => tracing::warn!(%error, "a wrapped names key was refused"),
                }
                continue;
            }
            let Some(record) = wrap.epoch.checked_sub(1).and_then(|i| records.get(i as usize)) else { continue };
            match meshkey::accept(mesh_id, wrap, record, roster, me) {
                Ok(key) => {
                    held.insert(wrap.epoch, Zeroizing::new(key));
                }
                Err(error) => tracing::warn!(%error, "a wrapped mesh key was refused"),
            }
        }
    }

    /// Makes epoch `epoch` with a fresh key wrapped for every verified active member; `false`
    /// when another client made that epoch first.
    async fn make_epoch(&self, mesh_id: &str, epoch: u64, roster: &Roster) -> Result<bool, ClientError> {
        let me = &self.shared.keys.member;
        let key = Zeroizing::new(meshkey::new_key());
        let record = EpochRecord::sign(mesh_id, epoch, &key, &roster.head, me);
        let recipients: Vec<crate::crypto::PublicKey> =
            entitled(roster).filter_map(|member| crate::crypto::PublicKey::from_hex(member).ok()).collect();
        let mut wraps: Vec<Wrap> = recipients.iter().map(|recipient| Wrap::seal(epoch, &key, me, recipient)).collect();
        // Members admitted since the last epoch get no earlier key under `from_admission`: the
        // names key goes with this one.
        if roster.key_history == KeyHistory::FromAdmission
            && epoch > 1
            && let Some(names) = self.shared.epoch_keys.names_key(mesh_id)
        {
            wraps.extend(recipients.iter().map(|recipient| Wrap::seal(NAMES_EPOCH, &names, me, recipient)));
        }
        // One frame holds `MAX_WRAPS`; a larger mesh gets the rest right after.
        let rest = wraps.split_off(wraps.len().min(protocol::MAX_WRAPS));
        let req_id = self.correlation_id();
        let frame = ClientFrame::NewEpoch(protocol::NewEpoch { record, wraps, req_id: Some(req_id.clone()) });
        match self.exchange(frame, Correlation::Request(req_id)).await? {
            ServerFrame::KeysStored(_) => {
                self.shared.epoch_keys.keys.lock().expect("epoch keys lock").insert(epoch, key);
            }
            ServerFrame::Error(error) if error.code == ErrorCode::Conflict => return Ok(false),
            ServerFrame::Error(error) => return Err(ClientError::Rejected { reason: None, message: error.message }),
            _ => return Err(ClientError::UnexpectedReply),
        }
        self.store_wraps(rest).await?;
        Ok(true)
    }

    /// Stores wraps of existing epochs, a frame's worth at a time.
    async fn store_wraps(&self, wraps: Vec<Wrap>) -> Result<(), ClientError> {
        for chunk in wraps.chunks(protocol::MAX_WRAPS) {
            let req_id = self.correlation_id();
            let frame =
                ClientFrame::AddWraps(protocol::AddWraps { wraps: chunk.to_vec(), req_id: Some(req_id.clone()) });
            match self.exchange(frame, Correlation::Request(req_id)).await? {
                ServerFrame::KeysStored(_) => {}
                ServerFrame::Error(error) => {
                    return Err(ClientError::Rejected { reason: None, message: error.message });
                }
                _ => return Err(ClientError::UnexpectedReply),
            }
        }
        Ok(())
    }

    /// Wraps the keys this member holds for the verified members among `unwrapped` (the broker's
    /// list of active members without the newest epoch's key), each as the key history entitles
    /// it: with `all`, every key (new members read the history); with `from_admission`, the keys
    /// made since its admission, and the names key.
    async fn wrap_for_newcomers(
        &self,
        unwrapped: &[String],
        records: &[EpochRecord],
        log: &Verifier,
    ) -> Result<Vec<String>, ClientError> {
        let Ok(roster) = log.roster() else { return Ok(Vec::new()) };
        let me = &self.shared.keys.member;
        let held: Vec<(u64, Zeroizing<EpochKey>)> = self
            .shared
            .epoch_keys
            .keys
            .lock()
            .expect("epoch keys lock")
            .range(1..)
            .map(|(e, k)| (*e, k.clone()))
            .collect();
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let names = self.shared.epoch_keys.names_key(self.mesh_id());
        let from_admission = roster.key_history == KeyHistory::FromAdmission;
        let newcomers: Vec<String> = unwrapped.iter().filter(|m| roster.is_verified_member(m)).cloned().collect();
        let mut wraps = Vec::new();
        for member in &newcomers {
            let Ok(recipient) = crate::crypto::PublicKey::from_hex(member) else { continue };
            let mine = held.iter().filter(|(epoch, _)| {
                records.get(*epoch as usize - 1).is_some_and(|record| meshkey::entitled(record, log, member))
            });
            wraps.extend(mine.map(|(epoch, key)| Wrap::seal(*epoch, key, me, &recipient)));
            // Without epoch 1 (ours, or theirs under `from_admission`) the names key goes alone.
            let first_held = held.first().is_some_and(|(epoch, _)| *epoch == 1);
            if (from_admission || !first_held)
                && let Some(names) = &names
            {
                wraps.push(Wrap::seal(NAMES_EPOCH, names, me, &recipient));
            }
        }
        if wraps.is_empty() {
            return Ok(Vec::new());
        }
        self.store_wraps(wraps).await?;
        Ok(newcomers)
    }
}

/// The members a new epoch's key goes to: every active member whose admission verifies.
fn entitled(roster: &Roster) -> impl Iterator<Item = &String> {
    roster.members.keys().filter(|member| roster.is_verified_member(member))
}
