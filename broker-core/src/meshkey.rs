//! Mesh content keys: one symmetric key per epoch, made by a member's client, announced in an
//! epoch record that commits to it and is signed by that member, and handed to each entitled
//! member as an authenticated wrap (`crypto_box` from the wrapping member's key to the
//! recipient's: the recipient knows which member the key came from).
//!
//! Which keys a member gets follows the mesh's key history setting in the log: every epoch's
//! (`all`, the default), or only those made after its admission (`from_admission`, where an
//! admission starts a new epoch like a removal does). The names key that blinds shared-state
//! names comes from epoch 1's key; a member without epoch 1 gets it wrapped on its own, as
//! "epoch 0" ([`NAMES_EPOCH`]), from a verified member.
//!
//! The broker stores records and wraps and accepts epoch `n + 1` only while `n` is the newest
//! (compare-and-set). A client accepts a key only when a wrap from a verified member opens to
//! it and a record signed by a member verified at the log position the record names commits to
//! it: the broker can neither make up a key nor hand one to a member it invented. No I/O.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{self, BoxKey, CryptoError, Keypair, PublicKey};
use crate::membership::{Head, KeyHistory, Roster, Verifier};

/// The wraps of "epoch 0" carry the mesh's names key (`workspace::names_key` of epoch 1's key)
/// to members that do not get epoch 1. No record commits to it: it is accepted from any member
/// the log verified, and it only blinds names.
pub const NAMES_EPOCH: u64 = 0;

/// A content key.
pub type EpochKey = [u8; 32];

/// What an epoch's record commits to: SHA-256 (hex) of
/// `claudemesh-epoch-key/v1|<meshId>|<epoch>|` followed by the key's 32 bytes.
pub fn commitment(mesh_id: &str, epoch: u64, key: &EpochKey) -> String {
    let mut hash = Sha256::new();
    hash.update(format!("claudemesh-epoch-key/v1|{mesh_id}|{epoch}|").as_bytes());
    hash.update(key);
    hex::encode(hash.finalize())
}

/// The announcement of epoch `epoch`: who made its key, the key's commitment, and the
/// membership log's head when it was made (removals before it are excluded from the key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EpochRecord {
    pub epoch: u64,
    /// The member key that made the key and signed the record.
    pub by: String,
    pub commitment: String,
    pub log_seq: u64,
    pub log_hash: String,
    pub signature: String,
}

impl EpochRecord {
    pub fn signed_bytes(&self, mesh_id: &str) -> String {
        format!("claudemesh-epoch/v1|{mesh_id}|{}|{}|{}|{}", self.epoch, self.commitment, self.log_seq, self.log_hash)
    }

    /// The record of `key` as epoch `epoch`, made by `member` with the log at `head`.
    pub fn sign(mesh_id: &str, epoch: u64, key: &EpochKey, head: &Head, member: &Keypair) -> EpochRecord {
        let mut record = EpochRecord {
            epoch,
            by: member.public_hex(),
            commitment: commitment(mesh_id, epoch, key),
            log_seq: head.seq,
            log_hash: head.hash.clone(),
            signature: String::new(),
        };
        record.signature = member.sign_hex(record.signed_bytes(mesh_id).as_bytes());
        record
    }
}

/// One epoch's key sealed from one member to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Wrap {
    pub epoch: u64,
    /// The recipient's member key.
    pub recipient: String,
    /// The wrapping member's key.
    pub wrapper: String,
    pub nonce: String,
    pub ciphertext: String,
}

impl Wrap {
    /// `key` sealed from `wrapper` to `recipient` (both member keys).
    pub fn seal(epoch: u64, key: &EpochKey, wrapper: &Keypair, recipient: &PublicKey) -> Wrap {
        let (nonce, ciphertext) = BoxKey::new(wrapper, recipient).seal(key);
        Wrap { epoch, recipient: recipient.to_hex(), wrapper: wrapper.public_hex(), nonce, ciphertext }
    }

    /// Opens a wrap addressed to `me`: the key, as its wrapper sealed it.
    pub fn open(&self, me: &Keypair) -> Result<EpochKey, CryptoError> {
        let wrapper = PublicKey::from_hex(&self.wrapper)?;
        let key = BoxKey::new(me, &wrapper).open(&self.nonce, &self.ciphertext)?;
        key.try_into().map_err(|_| CryptoError::DecryptionFailed)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EpochError {
    #[error("epoch {epoch}: {problem}")]
    Invalid { epoch: u64, problem: String },
}

fn invalid(epoch: u64, problem: impl Into<String>) -> EpochError {
    EpochError::Invalid { epoch, problem: problem.into() }
}

/// Checks a mesh's epoch records against its verified membership log: numbered 1, 2, … each
/// signed by a member verified at the log position it names, which must be in the log as the
/// verifier read it (so no record can hide a removal the log holds).
pub fn verify_records(mesh_id: &str, records: &[EpochRecord], log: &Verifier) -> Result<(), EpochError> {
    for (index, record) in records.iter().enumerate() {
        let epoch = index as u64 + 1;
        if record.epoch != epoch {
            return Err(invalid(record.epoch, "epochs are not numbered 1, 2, 3, …"));
        }
        if log.hash_at(record.log_seq) != Some(record.log_hash.as_str()) {
            return Err(invalid(epoch, "names a log head this log does not hold"));
        }
        if !log.was_verified_member(&record.by, record.log_seq) {
            return Err(invalid(epoch, "made by a key that was not a verified member then"));
        }
        crypto::verify_signed(&record.by, record.signed_bytes(mesh_id).as_bytes(), &record.signature)
            .map_err(|_| invalid(epoch, "the record's signature does not verify"))?;
    }
    Ok(())
}

/// A key from `wrap`, accepted only when a member the log verified sealed it and it is the key
/// `record` commits to.
pub fn accept(
    mesh_id: &str,
    wrap: &Wrap,
    record: &EpochRecord,
    roster: &Roster,
    me: &Keypair,
) -> Result<EpochKey, EpochError> {
    let verified_ever =
        roster.members.get(&wrap.wrapper).is_some_and(|m| m.standing == crate::membership::Standing::Verified);
    if !verified_ever {
        return Err(invalid(wrap.epoch, "wrapped by a key the log never verified"));
    }
    let key = wrap.open(me).map_err(|_| invalid(wrap.epoch, "the wrap does not open"))?;
    if commitment(mesh_id, record.epoch, &key) != record.commitment {
        return Err(invalid(wrap.epoch, "the key is not the one its epoch record commits to"));
    }
    Ok(key)
}

/// Whether `record`'s key must not protect what is written from now on: the log removed a member
/// after it was made, or admitted one while the key history is `from_admission`.
pub fn outdated(record: &EpochRecord, log: &Verifier) -> bool {
    let from_admission = log.roster().is_ok_and(|roster| roster.key_history == KeyHistory::FromAdmission);
    log.last_removal() > record.log_seq || (from_admission && log.last_admission() > record.log_seq)
}

/// Whether `member` is entitled to `record`'s key under the mesh's key history: always with
/// `all`; with `from_admission`, only to keys made since its current admission.
pub fn entitled(record: &EpochRecord, log: &Verifier, member: &str) -> bool {
    match log.roster().map(|roster| roster.key_history) {
        Ok(KeyHistory::FromAdmission) => log.admitted_at(member).is_some_and(|at| record.log_seq >= at),
        _ => true,
    }
}

/// A names key from `wrap` (epoch 0), accepted only when a member the log verified sealed it.
pub fn accept_names_key(wrap: &Wrap, roster: &Roster, me: &Keypair) -> Result<EpochKey, EpochError> {
    let verified_ever =
        roster.members.get(&wrap.wrapper).is_some_and(|m| m.standing == crate::membership::Standing::Verified);
    if !verified_ever {
        return Err(invalid(NAMES_EPOCH, "the names key was wrapped by a key the log never verified"));
    }
    wrap.open(me).map_err(|_| invalid(NAMES_EPOCH, "the names key's wrap does not open"))
}

/// A fresh key.
pub fn new_key() -> EpochKey {
    crypto::random_bytes::<32>()
}

#[cfg(test)]
mod tests;
