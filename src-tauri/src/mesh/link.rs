//! [`MeshLink`]: one joined mesh and its live session — the client, what this session last
//! asked the broker to show, a short-lived cache of the peer list — and the session locks that
//! tell other processes sharing the inbox which sessions are alive.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use broker_core::client::{ClientError, MeshClient, PeerListing};
use broker_core::protocol::{GrantMap, GroupMembership, PeerInfo, Status};
use tokio::sync::watch;
use tokio::time::Instant;

use super::resolve::{MeshView, PeerView};
use super::{LinkState, MeshError};
use crate::config::{ConfigDir, MeshEntry};
use crate::inbox::StoredMessage;

/// Unknown senders trigger at most one peer-list refresh per mesh this often.
const NAME_REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// What this session last asked the broker to show, for `whoami`.
#[derive(Debug, Clone, Default)]
pub(super) struct Presence {
    pub(super) display_name: String,
    pub(super) status: Status,
    pub(super) summary: Option<String>,
    pub(super) groups: Vec<GroupMembership>,
}

#[derive(Debug, Default)]
pub(super) struct PeerCache {
    fetched: Option<(Instant, PeerListing)>,
    last_name_refresh: Option<Instant>,
}

/// One joined mesh and its live session.
pub struct MeshLink {
    pub entry: MeshEntry,
    /// Only the supervisor talks to the broker: every request's error becomes a [`MeshError`].
    pub(super) client: MeshClient,
    /// Written by the link's event task, read by anyone waiting for the connection.
    pub(super) state: watch::Sender<LinkState>,
    pub(super) presence: Mutex<Presence>,
    pub(super) peers: Mutex<PeerCache>,
    /// The channel this session announced (`claude-code`, `cli`, `desktop`), recorded with each
    /// message it stores.
    pub(super) channel: String,
    /// One refresh of the mesh's keys at a time (`members::MeshLink::refresh_keys`), and
    /// whether one is asked for and not started yet (`receive::spawn_key_refresh`).
    pub(super) key_refresh: tokio::sync::Mutex<()>,
    pub(super) key_refresh_wanted: std::sync::atomic::AtomicBool,
    /// The shared-state names this session follows (`watch_state`).
    pub(super) state_watch: Mutex<super::workspace::StateWatch>,
    /// Held for the session's lifetime (see the module docs); released when the link drops.
    pub(super) _session_lock: Option<std::fs::File>,
}

impl MeshLink {
    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    pub fn session_pubkey(&self) -> String {
        self.client.session_pubkey()
    }

    /// The mesh's peer list, from the cache when younger than `max_age`.
    pub async fn peers(&self, max_age: Duration) -> Result<Vec<PeerInfo>, ClientError> {
        if let Some((at, listing)) = &self.peers.lock().expect("peer cache lock").fetched
            && at.elapsed() <= max_age
        {
            return Ok(listing.peers.clone());
        }
        let listing = self.client.list_peers().await?;
        let peers = listing.peers.clone();
        self.peers.lock().expect("peer cache lock").fetched = Some((Instant::now(), listing));
        Ok(peers)
    }

    /// Connected sessions the last peer list left out (see `PeerListing::omitted`).
    pub fn peers_left_out(&self) -> usize {
        self.peers.lock().expect("peer cache lock").fetched.as_ref().map_or(0, |(_, listing)| listing.omitted)
    }

    pub(super) fn invalidate_peers(&self) {
        self.peers.lock().expect("peer cache lock").fetched = None;
    }

    fn cached_name(&self, pubkey: &str) -> Option<String> {
        let cache = self.peers.lock().expect("peer cache lock");
        let peers = &cache.fetched.as_ref()?.1.peers;
        peers
            .iter()
            .find(|p| p.pubkey == pubkey)
            .or_else(|| peers.iter().find(|p| p.member_pubkey == pubkey))
            .map(|p| p.display_name.clone())
    }

    /// The display name behind a sender key: from the cache, else after one (throttled)
    /// refresh of the peer list or a lookup of its member, else `peer-<first 8 hex>`.
    pub(super) async fn name_of(&self, sender: &str, sender_member: Option<&str>) -> String {
        let lookup =
            |link: &MeshLink| link.cached_name(sender).or_else(|| sender_member.and_then(|m| link.cached_name(m)));
        if let Some(name) = lookup(self) {
            return name;
        }
        let refresh = {
            let mut cache = self.peers.lock().expect("peer cache lock");
            let due = cache.last_name_refresh.is_none_or(|at| at.elapsed() >= NAME_REFRESH_INTERVAL);
            if due {
                cache.last_name_refresh = Some(Instant::now());
            }
            due
        };
        if refresh {
            if self.peers(Duration::ZERO).await.is_ok()
                && let Some(name) = lookup(self)
            {
                return name;
            }
            // A sender that already went offline (a one-shot CLI send): the broker still knows
            // its member's name.
            if let Some(member) = sender_member
                && let Ok(recipients) = self.client.resolve(member).await
                && let [one] = recipients.as_slice()
            {
                return one.display_name.clone();
            }
        }
        format!("peer-{}", sender.get(..8).unwrap_or(sender))
    }

    pub(super) fn view(&self, peers: Vec<PeerInfo>) -> MeshView {
        MeshView {
            mesh_id: self.entry.mesh_id.clone(),
            slug: self.entry.slug.clone(),
            own_session: self.session_pubkey(),
            peers: peers
                .into_iter()
                .map(|p| PeerView { display_name: p.display_name, pubkey: p.pubkey, member_pubkey: p.member_pubkey })
                .collect(),
            offline: Vec::new(),
        }
    }

    /// This session's request failed at the broker (or never reached it).
    pub(super) fn broker_error(&self, source: ClientError) -> MeshError {
        MeshError::Broker { mesh: self.entry.slug.clone(), source }
    }

    /// Fails unless the session is connected now.
    pub fn require_connected(&self) -> Result<(), MeshError> {
        match self.state() {
            LinkState::Connected => Ok(()),
            state => Err(MeshError::NotConnected { mesh: self.entry.slug.clone(), state }),
        }
    }

    /// This member's explicit grants (member key → capabilities; `[]` blocks).
    pub async fn grants(&self) -> Result<BTreeMap<String, Vec<String>>, MeshError> {
        self.client.grants().await.map_err(|e| self.broker_error(e))
    }

    /// Changes grants (`None` gives a member the mesh defaults again); returns them all.
    pub async fn set_grants(&self, grants: GrantMap) -> Result<BTreeMap<String, Vec<String>>, MeshError> {
        self.client.set_grants(grants).await.map_err(|e| self.broker_error(e))
    }

    /// Ends this member's membership at the broker (its key is refused from then on).
    pub async fn leave_mesh(&self) -> Result<(), MeshError> {
        self.require_connected()?;
        self.client.leave_mesh().await.map(|_| ()).map_err(|e| self.broker_error(e))
    }
}

/// A message addressed to another live session's key is that session's; everything else
/// (member-, group- and broadcast-addressed mail, or mail of a session that is gone) may be read
/// by any session of this device.
pub(super) fn visible_to(message: &StoredMessage, mine: &HashSet<String>, run_dir: &Path) -> bool {
    if mine.contains(&message.receiving_session) {
        return true;
    }
    if message.target.as_deref() != Some(message.receiving_session.as_str()) {
        return true;
    }
    !session_alive(run_dir, &message.receiving_session)
}

fn session_lock_path(run_dir: &Path, session_pubkey: &str) -> PathBuf {
    run_dir.join(format!("session-{}.lock", session_pubkey.get(..16).unwrap_or(session_pubkey)))
}

/// Takes the session's liveness lock (best effort: without it, a shared inbox just treats the
/// session as gone).
pub(super) fn lock_session(run_dir: &Path, session_pubkey: &str) -> Option<std::fs::File> {
    ConfigDir::ensure_private_dir(run_dir).ok()?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(session_lock_path(run_dir, session_pubkey))
        .ok()?;
    file.try_lock().ok()?;
    Some(file)
}

fn session_alive(run_dir: &Path, session_pubkey: &str) -> bool {
    let path = session_lock_path(run_dir, session_pubkey);
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else { return false };
    match file.try_lock() {
        Ok(()) => {
            // Nobody holds it: the session ended. Tidy up.
            let _ = std::fs::remove_file(&path);
            false
        }
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbox::MessageKind;

    fn message(target: Option<&str>, receiving: &str) -> StoredMessage {
        StoredMessage {
            id: "m".into(),
            mesh_id: "mesh".into(),
            mesh_slug: "acme".into(),
            from: "alice".into(),
            from_pubkey: "a".repeat(64),
            from_member_pubkey: None,
            verified: true,
            priority: "next".into(),
            target: target.map(str::to_owned),
            kind: MessageKind::of_target(target),
            text: Some("hi".into()),
            error: None,
            sent_at: String::new(),
            received_at: 0,
            receiving_session: receiving.into(),
            read: false,
        }
    }

    #[test]
    fn session_addressed_mail_of_a_live_session_is_hidden_from_other_sessions_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let (live, gone, me) = ("1".repeat(64), "2".repeat(64), "3".repeat(64));
        let _lock = lock_session(&run, &live).expect("locks");
        let mine: HashSet<String> = [me.clone()].into();

        assert!(!visible_to(&message(Some(&live), &live), &mine, &run), "a live session's own mail");
        assert!(visible_to(&message(Some(&gone), &gone), &mine, &run), "a gone session's mail is anyone's");
        assert!(visible_to(&message(Some("@dev"), &live), &mine, &run), "group mail is the member's");
        assert!(visible_to(&message(Some(&me), &me), &mine, &run), "mine");
        assert!(session_alive(&run, &live));
        drop(_lock);
        assert!(!session_alive(&run, &live), "the lock is released with the session");
    }
}
