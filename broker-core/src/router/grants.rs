//! Per-peer capabilities: what each member lets each other member do to it.
//!
//! A member with no grant entry for a peer gives it the mesh defaults (every capability); an
//! entry lists exactly what is allowed (`[]` blocks, `all` allows everything).

use std::collections::HashMap;

use crate::protocol::{self, GrantMap, grant_cap};
use crate::store::GrantRecord;

#[derive(Debug, Default, Clone)]
pub struct Grants {
    /// Member id → (peer member key → allowed capabilities).
    by_member: HashMap<String, HashMap<String, Vec<String>>>,
}

impl Grants {
    pub fn from_records(records: impl IntoIterator<Item = GrantRecord>) -> Grants {
        let mut grants = Grants::default();
        for record in records {
            grants.by_member.entry(record.member_id).or_default().insert(record.peer_pubkey, record.caps);
        }
        grants
    }

    /// Does `member_id` allow the member with key `peer_pubkey` to use `cap` on it?
    pub fn allows(&self, member_id: &str, peer_pubkey: &str, cap: &str) -> bool {
        match self.by_member.get(member_id).and_then(|peers| peers.get(peer_pubkey)) {
            None => true,
            Some(caps) => caps.iter().any(|c| c == cap || c == grant_cap::ALL),
        }
    }

    /// Replaces `member_id`'s grants.
    pub fn replace(&mut self, member_id: &str, records: &[GrantRecord]) {
        let peers = records.iter().map(|r| (r.peer_pubkey.clone(), r.caps.clone())).collect();
        self.by_member.insert(member_id.to_owned(), peers);
    }

    /// `member_id`'s explicit grants.
    pub fn of(&self, member_id: &str) -> std::collections::BTreeMap<String, Vec<String>> {
        self.by_member
            .get(member_id)
            .map(|peers| peers.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}

/// One grant change: a peer's member key and its capabilities (`None`: back to the defaults).
pub type GrantChange = (String, Option<Vec<String>>);

/// Checks grant changes from a client (over the WebSocket or the account API): 64-hex keys and
/// known capability names only, and no more changes than a member may hold grants.
pub fn validate_grants(grants: GrantMap) -> Result<Vec<GrantChange>, String> {
    if grants.len() > protocol::MAX_GRANTS {
        return Err(format!("at most {} grant changes at once", protocol::MAX_GRANTS));
    }
    grants
        .into_iter()
        .map(|(peer, caps)| {
            if !protocol::is_key_hex(&peer) {
                return Err("grant keys must be 64-hex member keys".to_owned());
            }
            if let Some(unknown) = caps.iter().flatten().find(|c| !grant_cap::KNOWN.contains(&c.as_str())) {
                return Err(format!("unknown capability {unknown:?}: use {}", grant_cap::KNOWN.join(", ")));
            }
            Ok((peer, caps))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(member: &str, peer: &str, caps: &[&str]) -> GrantRecord {
        GrantRecord {
            member_id: member.into(),
            peer_pubkey: peer.into(),
            caps: caps.iter().map(|c| (*c).to_owned()).collect(),
        }
    }

    #[test]
    fn default_explicit_blocked_and_reset() {
        let mut grants = Grants::from_records([grant("bob", "alice", &["broadcast"]), grant("bob", "eve", &[])]);
        // No entry: the defaults allow both.
        assert!(grants.allows("bob", "carol", grant_cap::DM));
        assert!(grants.allows("bob", "carol", grant_cap::BROADCAST));
        // Explicit: only what is listed.
        assert!(!grants.allows("bob", "alice", grant_cap::DM));
        assert!(grants.allows("bob", "alice", grant_cap::BROADCAST));
        // Blocked.
        assert!(!grants.allows("bob", "eve", grant_cap::DM));
        assert!(!grants.allows("bob", "eve", grant_cap::BROADCAST));
        // Another member's grants do not apply to bob.
        assert!(grants.allows("carol", "eve", grant_cap::DM));
        // Reset: the entry is gone, defaults again.
        grants.replace("bob", &[grant("bob", "alice", &["broadcast"])]);
        assert!(grants.allows("bob", "eve", grant_cap::DM));
        // `all` allows everything.
        grants.replace("bob", &[grant("bob", "alice", &["all"])]);
        assert!(grants.allows("bob", "alice", grant_cap::DM));
    }

    #[test]
    fn grant_changes_need_member_keys_and_known_capabilities() {
        let change = |peer: &str, caps: Option<&[&str]>| {
            GrantMap::from([(peer.to_owned(), caps.map(|c| c.iter().map(|c| (*c).to_owned()).collect()))])
        };
        let key = "a".repeat(64);
        assert_eq!(validate_grants(change(&key, Some(&["dm", "broadcast"]))).expect("valid").len(), 1);
        assert!(validate_grants(change(&key, None)).is_ok(), "null resets to the defaults");
        assert!(validate_grants(change(&key, Some(&["teleport"]))).is_err());
        assert!(validate_grants(change("alice", Some(&["dm"]))).is_err());
    }
}
