//! The mesh's members as this device checks them: the broker's list, and the signed membership
//! log verified here back to the creator key this device pinned the first time it looked.
//!
//! The pin (`membership/<mesh id>.json` in the config directory: creator key and the last
//! verified entry) makes a later log that starts elsewhere, or no longer holds what was seen,
//! an error instead of a new truth.

use std::path::{Path, PathBuf};

use broker_core::client::{MeshKeyError, MeshKeyStatus};
use broker_core::membership::{Head, KeyHistory, LogError, Roster, Standing};
use broker_core::protocol::Role;
use serde::{Deserialize, Serialize};

use super::{MeshError, MeshLink, Supervisor};
use crate::config::write_private_atomic;

/// What this device pinned of a mesh's log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPin {
    pub creator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<Head>,
}

/// Where pins live: one file per mesh under `<config dir>/membership/`.
#[derive(Debug, Clone)]
pub struct LogPins {
    dir: PathBuf,
}

impl LogPins {
    pub fn new(config_root: &Path) -> LogPins {
        LogPins { dir: config_root.join("membership") }
    }

    fn path(&self, mesh_id: &str) -> PathBuf {
        self.dir.join(format!("{mesh_id}.json"))
    }

    pub fn get(&self, mesh_id: &str) -> Option<LogPin> {
        let text = std::fs::read(self.path(mesh_id)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Keeps `pin` unless a head already pinned is further along (another process of this
    /// device verified more meanwhile).
    pub fn set(&self, mesh_id: &str, pin: &LogPin) -> std::io::Result<()> {
        if self.get(mesh_id).and_then(|p| p.head).is_some_and(|h| pin.head.as_ref().is_none_or(|new| h.seq > new.seq)) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        let json = serde_json::to_vec_pretty(pin).expect("a pin serializes");
        write_private_atomic(&self.path(mesh_id), &json).map_err(std::io::Error::other)
    }
}

/// How a member came to be in the mesh, as this device can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Admission {
    /// Its admission is signed back to the creator (the creator itself, an invite, an admin, a
    /// member endorsing its new device).
    Verified,
    /// Only the broker says so (a device signed in without an endorsement, an unban).
    Vouched,
    /// The broker lists it as a member, but the log never admitted it.
    Missing,
    /// The mesh keeps no membership log (created before there was one).
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRow {
    pub name: String,
    pub pubkey: String,
    pub role: Role,
    pub online: bool,
    pub admission: Admission,
    /// This device's own member.
    pub me: bool,
}

/// One mesh's members and what its log said.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshMembers {
    pub mesh: String,
    /// `verified` (with the creator and the number of entries), `absent`, or the reason the log
    /// failed to verify.
    pub log: LogStatus,
    /// This member's mesh content key (refreshed now).
    pub keys: KeysView,
    /// What a member admitted later may read of earlier content, as the verified log says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_history: Option<KeyHistory>,
    pub members: Vec<MemberRow>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum KeysView {
    /// This member holds the newest epoch's key.
    Held { epoch: u64 },
    /// The newest epoch's key was not passed on to this member yet (a member online with it
    /// does so after checking this member's admission).
    Waiting { epoch: u64 },
    /// Why this member has no mesh key.
    Unavailable { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum LogStatus {
    Verified { creator: String, entries: u64 },
    Absent,
    Failed { error: String },
}

impl Supervisor {
    /// Each selected mesh's active members, each with how its admission checks out in the
    /// mesh's membership log (verified now against this device's pin, which it then moves on),
    /// and this member's mesh key (refreshed at the same time, on the same verified log).
    pub async fn members(&self, mesh: Option<&str>) -> Result<Vec<MeshMembers>, MeshError> {
        let mut out = Vec::new();
        for link in self.select(mesh)? {
            link.require_connected()?;
            let listed = link.client.list_members().await.map_err(|e| link.broker_error(e))?;
            let pinned = self.log_pins.get(&link.entry.mesh_id).is_some();
            let (keys, roster) = match link.refresh_keys(&self.log_pins).await {
                KeyRefresh { keys: Err(MeshKeyError::Client(error)), roster: None } => {
                    return Err(link.broker_error(error));
                }
                KeyRefresh { keys, roster } => (keys, roster),
            };
            let log = match (&roster, &keys) {
                (Some(roster), _) => LogStatus::Verified { creator: roster.creator.clone(), entries: roster.head.seq },
                // A mesh this device saw with a log cannot lose it.
                (None, Err(MeshKeyError::NoLog)) if !pinned => LogStatus::Absent,
                (None, Err(MeshKeyError::NoLog)) => LogStatus::Failed { error: LogError::Absent.to_string() },
                (None, Err(MeshKeyError::Log(error))) => LogStatus::Failed { error: error.to_string() },
                (None, _) => LogStatus::Failed { error: "the membership log could not be read".into() },
            };
            let keys = match keys {
                Ok(MeshKeyStatus { epoch: Some(epoch), holds_newest: true, .. }) => KeysView::Held { epoch },
                Ok(MeshKeyStatus { epoch: Some(epoch), .. }) => KeysView::Waiting { epoch },
                Ok(_) => KeysView::Unavailable { reason: "no epoch yet".into() },
                Err(error) => KeysView::Unavailable { reason: error.to_string() },
            };
            let members = listed
                .into_iter()
                .map(|m| MemberRow {
                    admission: admission_of(roster.as_ref(), &m.pubkey),
                    me: m.pubkey == link.entry.member_pubkey,
                    name: m.display_name,
                    pubkey: m.pubkey,
                    role: m.role,
                    online: m.online,
                })
                .collect();
            let key_history = roster.as_ref().map(|roster| roster.key_history);
            out.push(MeshMembers { mesh: link.entry.slug.clone(), log, keys, key_history, members });
        }
        Ok(out)
    }

    /// Sets the mesh's key history: this member's signed statement (it must be an admin) goes
    /// into the membership log; the next key refresh anywhere follows it. Returns the mesh.
    pub async fn set_key_history(&self, mesh: Option<&str>, mode: KeyHistory) -> Result<String, MeshError> {
        let link = self.single(mesh, "the key history")?;
        link.require_connected()?;
        link.client.set_key_history(mode).await.map_err(|error| match error {
            MeshKeyError::Client(error) => link.broker_error(error),
            other => MeshError::BadRequest(format!("{}: {other}", link.entry.slug)),
        })?;
        link.refresh_keys(&self.log_pins).await;
        Ok(link.entry.slug.clone())
    }
}

/// A refresh of the mesh's keys, and the membership of the log it verified.
pub(super) struct KeyRefresh {
    pub(super) keys: Result<MeshKeyStatus, MeshKeyError>,
    /// `None` when no log verified (the mesh has none, or `keys` says why).
    pub(super) roster: Option<Roster>,
}

impl MeshLink {
    /// Brings this member's mesh keys up to date against the log's pin, and moves the pin on
    /// whenever the log verified (also when this member, only vouched for, gets no key).
    pub(super) async fn refresh_keys(&self, pins: &LogPins) -> KeyRefresh {
        let _one_at_a_time = self.key_refresh.lock().await;
        let pin = pins.get(&self.entry.mesh_id);
        let keys = self
            .client
            .refresh_mesh_keys(pin.as_ref().map(|p| p.creator.as_str()), pin.as_ref().and_then(|p| p.head.as_ref()))
            .await;
        // Read under the lock: the log this refresh verified, not a later one's.
        let roster = self.client.verified_roster();
        if let Some(roster) = &roster {
            let pin = LogPin { creator: roster.creator.clone(), head: Some(roster.head.clone()) };
            if let Err(error) = pins.set(&self.entry.mesh_id, &pin) {
                tracing::warn!(%error, mesh = %self.entry.slug, "could not keep the membership log's pin");
            }
        }
        KeyRefresh { keys, roster }
    }
}

fn admission_of(roster: Option<&Roster>, pubkey: &str) -> Admission {
    match roster.map(|roster| roster.members.get(pubkey)) {
        Some(Some(member)) if member.active && member.standing == Standing::Verified => Admission::Verified,
        Some(Some(member)) if member.active => Admission::Vouched,
        Some(_) => Admission::Missing,
        // No verified log: no member can be told (the log's state says why).
        None => Admission::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_only_moves_forward() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pins = LogPins::new(dir.path());
        assert_eq!(pins.get("mesh_a"), None);
        let at = |seq: u64| LogPin { creator: "c".into(), head: Some(Head { seq, hash: format!("h{seq}") }) };
        pins.set("mesh_a", &at(3)).expect("keeps the pin");
        pins.set("mesh_a", &at(2)).expect("keeps the pin");
        assert_eq!(pins.get("mesh_a"), Some(at(3)), "a stale process does not move it back");
        pins.set("mesh_a", &at(5)).expect("keeps the pin");
        assert_eq!(pins.get("mesh_a"), Some(at(5)));
        assert_eq!(pins.get("mesh_b"), None);
    }
}
