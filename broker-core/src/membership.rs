//! The signed membership log: who was admitted to a mesh, on whose signature, and who left.
//!
//! The broker keeps the directory of member keys, and a client seals to the keys it is given;
//! a broker that added a key of its own would be sealed to. The log lets a client check the
//! directory instead of trusting it. Each mesh's log starts with a genesis entry signed by the
//! creator's member key (which the client pins the first time it verifies the log) and each
//! later admission carries the signatures that allow it:
//!
//! - `invited`: an admin-signed invite plus the joiner's own proof binding its key to it (the
//!   same `claudemesh-join/v1` proof `POST /join` checks);
//! - `admitted` with a signature: an admin's member key over [`admission_bytes`], which names
//!   the log position the admin saw, so the statement cannot be replayed after a removal;
//! - `endorsed`: an account's new device, endorsed by a member of that account when it approved
//!   the device's sign-in (the member's key over the device's confirmation key), and the
//!   device's confirmation key over its new member key;
//! - `admitted` without a signature (a device signed in by emailed code or login token, an
//!   unban): the broker's word only. Such a member is [`Standing::Vouched`]: shown, never
//!   counted as verified.
//!
//! The log also carries the mesh's key history setting (`keyHistory`, signed by an admin): what
//! a member admitted later may read of what was written before it came.
//!
//! Removals (`removed`: leave, kick, ban, revocation) need no signature: they only take away,
//! and a broker can always refuse a member service. Entries are hash-chained (each hash covers
//! the previous one), so a client that remembered a head sees a rewritten or shortened log.
//! No I/O here: the stores append entries, clients verify them.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::{self, canonical_json};
use crate::invite::Invite;
use crate::protocol::Role;

/// The `prev` of a log's first entry.
pub const LOG_START: &str = "start";

/// What the mesh creator signs when it creates the mesh.
pub fn genesis_bytes(mesh_id: &str, creator_pubkey: &str) -> String {
    format!("claudemesh-membership/v1|genesis|{mesh_id}|{creator_pubkey}")
}

/// What an admin signs to admit `member_pubkey` with `role`, having seen the log up to `after`
/// entries. A statement made before the member's last removal does not admit it again.
pub fn admission_bytes(mesh_id: &str, member_pubkey: &str, role: Role, after: u64) -> String {
    format!("claudemesh-membership/v1|admit|{mesh_id}|{member_pubkey}|{}|{after}", role.as_str())
}

/// What a member signs, with its own member key, when the device it approves may bring this
/// account's keys into the mesh: the new device's confirmation key (the one it showed when it
/// asked to sign in).
pub fn endorsement_bytes(mesh_id: &str, device_key: &str) -> String {
    format!("claudemesh-membership/v1|endorse|{mesh_id}|{device_key}")
}

/// What an endorsed device signs with its confirmation key to make `member_pubkey` its member
/// key in the mesh.
pub fn device_key_bytes(mesh_id: &str, member_pubkey: &str) -> String {
    format!("claudemesh-membership/v1|device-key|{mesh_id}|{member_pubkey}")
}

/// What an admin signs to set the mesh's key history to `mode`, having seen the log up to
/// `after` entries.
pub fn key_history_bytes(mesh_id: &str, mode: KeyHistory, after: u64) -> String {
    format!("claudemesh-membership/v1|key-history|{mesh_id}|{}|{after}", mode.as_str())
}

/// Which of the mesh's content keys a member admitted later gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyHistory {
    /// Every epoch's key: it reads what was written before it came (the default).
    #[default]
    All,
    /// Only keys made after its admission (an admission starts a new epoch): what was written
    /// before it came stays closed to it.
    FromAdmission,
}

impl KeyHistory {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyHistory::All => "all",
            KeyHistory::FromAdmission => "from_admission",
        }
    }
}

/// Why a member left the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RemovalReason {
    Leave,
    Kick,
    Ban,
    /// The device holding the key was revoked.
    Revoked,
}

/// How an `admitted` member came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdmittedVia {
    /// An admin's signed admission (`member add`, an admin's enrolment).
    Admin,
    /// A signed-in device of an account already in the mesh registered its own key.
    Enrolment,
    /// An invite redeemed without the proof kept (not written by this broker's `POST /join`).
    Invite,
    /// An admin lifted a ban.
    Unban,
}

/// One change of membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Change {
    Genesis {
        creator: String,
        /// The creator's signature over [`genesis_bytes`].
        signature: String,
    },
    Invited {
        member: String,
        role: Role,
        /// The invite token as signed by its issuer.
        invite: String,
        /// The joining key's signature over `crypto::join_proof_bytes`.
        proof: String,
    },
    Admitted {
        member: String,
        role: Role,
        via: AdmittedVia,
        /// The admitting admin's member key and its signature over [`admission_bytes`]; absent
        /// when only the broker vouches for the member.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        by: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<String>,
    },
    /// A new device of a member's account, endorsed by that member when it approved the
    /// device's sign-in.
    Endorsed {
        member: String,
        role: Role,
        /// The endorsing member's key and its signature over [`endorsement_bytes`].
        sponsor: String,
        endorsement: String,
        /// The new device's confirmation key and its signature over [`device_key_bytes`].
        device: String,
        binding: String,
    },
    Removed {
        member: String,
        reason: RemovalReason,
    },
    /// An admin set the mesh's key history (its signature over [`key_history_bytes`]).
    KeyHistory {
        mode: KeyHistory,
        by: String,
        after: u64,
        signature: String,
    },
}

/// The signed proof of an admission, as the one admitting hands it to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The mesh's creator: its signature over [`genesis_bytes`] for the mesh id it chose.
    Genesis { mesh_id: String, signature: String },
    /// An invite redeemed with the joiner's proof.
    Invite { token: String, proof: String },
    /// An admin's signature over [`admission_bytes`].
    Admin { by: String, after: u64, signature: String },
    /// A member's endorsement of the device that holds the key, and that device's binding.
    Endorsed { sponsor: String, endorsement: String, device: String, binding: String },
}

/// One entry of a mesh's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// 1 for the first entry, then one more each.
    pub seq: u64,
    /// When the broker appended it (ms).
    pub at: u64,
    /// The previous entry's `hash` ([`LOG_START`] for the first).
    pub prev: String,
    pub change: Change,
    /// [`entry_hash`] of the fields above.
    pub hash: String,
}

impl LogEntry {
    /// The entry following `prev_hash` at position `seq`.
    pub fn new(seq: u64, at: u64, prev: &str, change: Change) -> LogEntry {
        let hash = entry_hash(prev, seq, at, &change);
        LogEntry { seq, at, prev: prev.to_owned(), change, hash }
    }
}

/// SHA-256 (hex) of `prev|seq|at|canonical JSON of the change`.
pub fn entry_hash(prev: &str, seq: u64, at: u64, change: &Change) -> String {
    let change = serde_json::to_value(change).expect("a change serializes");
    let text = format!("{prev}|{seq}|{at}|{}", canonical_json(&change));
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Where a member stands in a verified log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Standing {
    /// Its admission carries the signatures that allow it, back to the creator.
    Verified,
    /// Only the broker says it was admitted (an enrolment or unban no admin signed).
    Vouched,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RosterMember {
    pub role: Role,
    pub standing: Standing,
    pub active: bool,
    /// The entry that last admitted or removed it.
    pub changed_at: u64,
    /// Why it left, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<RemovalReason>,
}

/// The last entry a client verified: a later log must still hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

/// The membership a verified log describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    pub creator: String,
    pub members: BTreeMap<String, RosterMember>,
    pub head: Head,
    /// The mesh's key history setting, as the last admin to set it signed it.
    pub key_history: KeyHistory,
}

impl Roster {
    /// Whether `pubkey` is an active member with a verified admission: the members a client
    /// may hand a mesh key.
    pub fn is_verified_member(&self, pubkey: &str) -> bool {
        self.members.get(pubkey).is_some_and(|m| m.active && m.standing == Standing::Verified)
    }

    fn is_admin(&self, pubkey: &str) -> bool {
        self.is_verified_member(pubkey) && self.members.get(pubkey).is_some_and(|m| m.role == Role::Admin)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("the mesh has no membership log (it was created before there was one)")]
    Absent,
    #[error("entry {seq}: {problem}")]
    Invalid { seq: u64, problem: String },
    #[error("the log starts with creator {found}, not the creator {pinned} this device pinned")]
    CreatorChanged { pinned: String, found: String },
    #[error("the log no longer holds entry {seq} as this device saw it: it was rewritten or cut")]
    Rewritten { seq: u64 },
}

fn invalid(seq: u64, problem: impl Into<String>) -> LogError {
    LogError::Invalid { seq, problem: problem.into() }
}

fn check_signature(seq: u64, signer: &str, bytes: &str, signature: &str, what: &str) -> Result<(), LogError> {
    crypto::verify_signed(signer, bytes.as_bytes(), signature)
        .map_err(|_| invalid(seq, format!("{what} does not verify")))
}

/// Checks a mesh's whole log and returns the membership it describes. `pinned_creator` is the
/// creator key this client saw before (none the first time); `pinned_head` the last entry it
/// verified, which must still be there unchanged.
pub fn verify(
    mesh_id: &str,
    pinned_creator: Option<&str>,
    pinned_head: Option<&Head>,
    entries: &[LogEntry],
) -> Result<Roster, LogError> {
    let mut verifier = Verifier::new(mesh_id, pinned_creator);
    verifier.extend(entries)?;
    if let Some(head) = pinned_head {
        verifier.check_head(head)?;
    }
    verifier.roster().cloned()
}

/// A log verified so far, ready to take the entries that follow (a client fetches only those),
/// and what was true at each earlier position (for epoch records, which name one).
#[derive(Debug, Clone)]
pub struct Verifier {
    mesh_id: String,
    pinned_creator: Option<String>,
    roster: Option<Roster>,
    used: Used,
    /// Each entry's hash, by position (`hashes[seq - 1]`).
    hashes: Vec<String>,
    /// Per member key, the log positions it was an active verified member: `[from, to)`.
    verified_spans: HashMap<String, Vec<(u64, Option<u64>)>>,
    last_removal: u64,
    last_admission: u64,
}

impl Verifier {
    pub fn new(mesh_id: &str, pinned_creator: Option<&str>) -> Verifier {
        Verifier {
            mesh_id: mesh_id.to_owned(),
            pinned_creator: pinned_creator.map(str::to_owned),
            roster: None,
            used: Used::default(),
            hashes: Vec::new(),
            verified_spans: HashMap::new(),
            last_removal: 0,
            last_admission: 0,
        }
    }

    /// How many entries it verified.
    pub fn len(&self) -> u64 {
        self.hashes.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Verifies `entries`, which must continue the log where it stopped. After an error the
    /// verifier is spent: drop it (the log it was reading cannot be trusted).
    pub fn extend(&mut self, entries: &[LogEntry]) -> Result<(), LogError> {
        for entry in entries {
            self.push(entry)?;
        }
        Ok(())
    }

    fn push(&mut self, entry: &LogEntry) -> Result<(), LogError> {
        let seq = self.len() + 1;
        let prev = self.hashes.last().map_or(LOG_START, String::as_str);
        if entry.seq != seq || entry.prev != prev || entry.hash != entry_hash(prev, seq, entry.at, &entry.change) {
            return Err(invalid(seq, "the hash chain is broken (an entry was changed, removed or moved)"));
        }
        let roster = match (&mut self.roster, &entry.change) {
            (None, Change::Genesis { creator, signature }) => {
                if let Some(pinned) = self.pinned_creator.as_ref().filter(|pinned| *pinned != creator) {
                    return Err(LogError::CreatorChanged { pinned: pinned.clone(), found: creator.clone() });
                }
                let bytes = genesis_bytes(&self.mesh_id, creator);
                check_signature(seq, creator, &bytes, signature, "the creator's signature")?;
                let head = Head { seq: 0, hash: String::new() };
                let members = BTreeMap::new();
                self.roster.insert(Roster { creator: creator.clone(), members, head, key_history: KeyHistory::All })
            }
            (None, _) => return Err(invalid(seq, "the log does not start with the mesh's genesis")),
            (Some(roster), _) => roster,
        };
        let member = entry.change.member();
        let before = roster.is_verified_member(member);
        apply(&self.mesh_id, roster, entry, &mut self.used)?;
        let after = roster.is_verified_member(member);
        let spans = self.verified_spans.entry(member.to_owned()).or_default();
        match (before, after) {
            (false, true) => {
                spans.push((seq, None));
                self.last_admission = seq;
            }
            (true, false) => {
                if let Some(open) = spans.last_mut() {
                    open.1 = Some(seq);
                }
            }
            _ => {}
        }
        if matches!(entry.change, Change::Removed { .. }) {
            self.last_removal = seq;
        }
        roster.head = Head { seq, hash: entry.hash.clone() };
        self.hashes.push(entry.hash.clone());
        Ok(())
    }

    /// The membership the verified entries describe.
    pub fn roster(&self) -> Result<&Roster, LogError> {
        self.roster.as_ref().ok_or(LogError::Absent)
    }

    /// A head this device saw before must be in the log, unchanged.
    pub fn check_head(&self, head: &Head) -> Result<(), LogError> {
        match head.seq.checked_sub(1).and_then(|index| self.hashes.get(index as usize)) {
            Some(hash) if *hash == head.hash => Ok(()),
            _ if head.seq == 0 => Ok(()),
            _ => Err(LogError::Rewritten { seq: head.seq }),
        }
    }

    /// The hash of entry `seq`.
    pub fn hash_at(&self, seq: u64) -> Option<&str> {
        seq.checked_sub(1).and_then(|index| self.hashes.get(index as usize)).map(String::as_str)
    }

    /// Whether `pubkey` was an active verified member once the log held `seq` entries.
    pub fn was_verified_member(&self, pubkey: &str, seq: u64) -> bool {
        self.verified_spans
            .get(pubkey)
            .is_some_and(|spans| spans.iter().any(|(from, to)| *from <= seq && to.is_none_or(|to| to > seq)))
    }

    /// The position of the last removal (0: none).
    pub fn last_removal(&self) -> u64 {
        self.last_removal
    }

    /// The position of the last admission of a verified member (0: none).
    pub fn last_admission(&self) -> u64 {
        self.last_admission
    }

    /// Where `pubkey`'s current verified membership began, when it is a verified member now.
    pub fn admitted_at(&self, pubkey: &str) -> Option<u64> {
        let (from, to) = self.verified_spans.get(pubkey)?.last()?;
        to.is_none().then_some(*from)
    }
}

impl Change {
    /// The member key the change is about.
    pub fn member(&self) -> &str {
        match self {
            Change::Genesis { creator, .. } => creator,
            Change::Invited { member, .. }
            | Change::Admitted { member, .. }
            | Change::Endorsed { member, .. }
            | Change::Removed { member, .. } => member,
            Change::KeyHistory { by, .. } => by,
        }
    }
}

fn apply(mesh_id: &str, roster: &mut Roster, entry: &LogEntry, used: &mut Used) -> Result<(), LogError> {
    let seq = entry.seq;
    let admit = |roster: &mut Roster, member: &str, role: Role, standing: Standing| -> Result<(), LogError> {
        if roster.members.get(member).is_some_and(|m| m.active) {
            return Err(invalid(seq, "admits a member that is already in the mesh"));
        }
        let member = member.to_owned();
        roster.members.insert(member, RosterMember { role, standing, active: true, changed_at: seq, removed: None });
        Ok(())
    };
    match &entry.change {
        Change::Genesis { creator, .. } => {
            if seq != 1 {
                return Err(invalid(seq, "a second genesis"));
            }
            admit(roster, creator, Role::Admin, Standing::Verified)
        }
        Change::Invited { member, role, invite, proof } => {
            let invite = Invite::parse(invite).map_err(|_| invalid(seq, "the invite is not readable"))?;
            if invite.mesh_id != mesh_id || invite.role != *role {
                return Err(invalid(seq, "the invite is for another mesh or role"));
            }
            invite.verify(entry.at / 1000).map_err(|e| invalid(seq, format!("the invite: {e}")))?;
            if !roster.is_admin(&invite.issuer_pubkey) {
                return Err(invalid(seq, "the invite's issuer is not an admin of the mesh"));
            }
            let bytes = crypto::join_proof_bytes(&invite.invite_id, mesh_id, member);
            check_signature(seq, member, &bytes, proof, "the joiner's proof")?;
            if roster.members.contains_key(member) || !used.statements.insert(bytes) {
                return Err(invalid(seq, "an invite admits a key only once, and never a key that left"));
            }
            let redeemed = used.invites.entry(invite.invite_id.clone()).or_default();
            *redeemed += 1;
            if *redeemed > invite.max_uses {
                return Err(invalid(seq, "the invite was used more often than it allows"));
            }
            admit(roster, member, *role, Standing::Verified)
        }
        Change::Admitted { member, role, by: Some(by), after: Some(after), signature: Some(signature), .. } => {
            if *after >= seq {
                return Err(invalid(seq, "an admission signed for a later log position"));
            }
            if !roster.is_admin(by) {
                return Err(invalid(seq, "admitted by a key that is not an admin of the mesh"));
            }
            let bytes = admission_bytes(mesh_id, member, *role, *after);
            check_signature(seq, by, &bytes, signature, "the admin's admission")?;
            // Signed before the member's last removal: a replay, not a new admission.
            if roster.members.get(member).is_some_and(|m| !m.active && m.changed_at > *after) {
                return Err(invalid(seq, "an admission signed before the member last left"));
            }
            if !used.statements.insert(bytes) {
                return Err(invalid(seq, "an admission statement used twice"));
            }
            admit(roster, member, *role, Standing::Verified)
        }
        Change::Admitted { by: Some(_), .. } | Change::Admitted { signature: Some(_), .. } => {
            Err(invalid(seq, "a signed admission needs its admin, log position and signature"))
        }
        Change::Admitted { member, role, .. } => admit(roster, member, *role, Standing::Vouched),
        Change::Endorsed { member, role, sponsor, endorsement, device, binding } => {
            let Some(sponsor_role) =
                roster.members.get(sponsor).filter(|_| roster.is_verified_member(sponsor)).map(|m| m.role)
            else {
                return Err(invalid(seq, "endorsed by a key that is not a verified member"));
            };
            if *role == Role::Admin && sponsor_role != Role::Admin {
                return Err(invalid(seq, "a member endorsed a device as an admin"));
            }
            check_signature(
                seq,
                sponsor,
                &endorsement_bytes(mesh_id, device),
                endorsement,
                "the sponsor's endorsement",
            )?;
            let bytes = device_key_bytes(mesh_id, member);
            check_signature(seq, device, &bytes, binding, "the device's binding of its member key")?;
            if roster.members.contains_key(member) || !used.statements.insert(bytes) {
                return Err(invalid(seq, "an endorsed key is admitted once, and never a key that left"));
            }
            admit(roster, member, *role, Standing::Verified)
        }
        Change::Removed { member, reason } => {
            let Some(current) = roster.members.get_mut(member) else {
                return Err(invalid(seq, "removes a key that was never admitted"));
            };
            current.active = false;
            current.removed = Some(*reason);
            // A later admission must be signed after this entry.
            current.changed_at = seq;
            Ok(())
        }
        Change::KeyHistory { mode, by, after, signature } => {
            if *after >= seq {
                return Err(invalid(seq, "a key history setting signed for a later log position"));
            }
            if !roster.is_admin(by) {
                return Err(invalid(seq, "the key history was set by a key that is not an admin of the mesh"));
            }
            let bytes = key_history_bytes(mesh_id, *mode, *after);
            check_signature(seq, by, &bytes, signature, "the admin's key history setting")?;
            if !used.statements.insert(bytes) {
                return Err(invalid(seq, "a key history statement used twice"));
            }
            roster.key_history = *mode;
            Ok(())
        }
    }
}

/// Statements already spent, and how often each invite was redeemed.
#[derive(Debug, Clone, Default)]
struct Used {
    statements: HashSet<String>,
    invites: HashMap<String, u32>,
}

#[cfg(test)]
mod tests;
