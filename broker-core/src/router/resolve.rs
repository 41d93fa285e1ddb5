//! Target resolution: which members (and sessions) a `targetSpec` reaches from a sender, and
//! the shape checks of a sealed envelope. Pure functions over the mesh state, so they are
//! unit-tested without a socket or a store.

use std::collections::HashMap;

use super::state::{MeshState, Session, group_matches};
use crate::protocol::{self, Enc, KeyWrap, SendRejection, Target};
use crate::store::Delivery;

/// Outcome of resolving a target for one sender.
pub(super) enum Resolution {
    Deliveries(Vec<Delivery>),
    Rejected(SendRejection, String),
    /// A 64-hex key this broker has not seen yet: look it up in the store, then retry.
    UnknownKey(String),
}

/// The grant capability a send to `target` needs from each recipient.
pub(super) fn grant_cap_for(target: &Target<'_>) -> &'static str {
    match target {
        Target::Key(_) => protocol::grant_cap::DM,
        Target::Group(_) | Target::Broadcast => protocol::grant_cap::BROADCAST,
    }
}

/// Shape checks on `enc` and `keys` that need no state.
pub(super) fn check_envelope(enc: Enc, keys: &[KeyWrap]) -> Result<(), &'static str> {
    match enc {
        Enc::System => Err("clients cannot send system envelopes"),
        Enc::Box if !keys.is_empty() => Err("keys are only allowed with enc \"multi\""),
        Enc::Multi if keys.is_empty() => Err("enc \"multi\" needs one key per recipient in keys"),
        Enc::Multi
            if keys.iter().any(|k| !protocol::is_key_hex(&k.to) || k.nonce.len() > 64 || k.ciphertext.len() > 128) =>
        {
            Err("each key needs a 64-hex `to`, a base64 nonce and a base64 wrapped key")
        }
        _ => Ok(()),
    }
}

/// With `enc: "multi"`, keeps only the recipients whose key wrap the sender supplied.
pub(super) fn cover_with_keys(
    deliveries: Vec<Delivery>,
    enc: Enc,
    keys: &[KeyWrap],
    state: &MeshState,
) -> Result<(Vec<Delivery>, Vec<String>), (SendRejection, String)> {
    if enc != Enc::Multi {
        return Ok((deliveries, Vec::new()));
    }
    let wraps: HashMap<&str, &KeyWrap> = keys.iter().map(|k| (k.to.as_str(), k)).collect();
    let mut covered = Vec::with_capacity(deliveries.len());
    let mut uncovered = Vec::new();
    for mut delivery in deliveries {
        let Some(pubkey) = state.members.get(&delivery.member_id).map(|m| m.record.pubkey.clone()) else { continue };
        match wraps.get(pubkey.as_str()) {
            Some(wrap) => {
                delivery.key =
                    Some(protocol::WrappedKey { nonce: wrap.nonce.clone(), ciphertext: wrap.ciphertext.clone() });
                covered.push(delivery);
            }
            None => uncovered.push(pubkey),
        }
    }
    if covered.is_empty() {
        return Err((
            SendRejection::NoRecipient,
            format!(
                "no recipient of the target is covered by keys; resolve the target again (uncovered: {})",
                uncovered.join(",")
            ),
        ));
    }
    Ok((covered, uncovered))
}

/// Which members (and sessions) `target` reaches from `sender`. Pure over the mesh state.
pub(super) fn resolve_target(state: &MeshState, sender: &Session, target: &Target<'_>) -> Resolution {
    let own_siblings = || {
        state.members.get(&sender.member_id).is_some_and(|m| m.sessions.iter().any(|id| *id != sender.id))
            || state.remote_sessions_of(&sender.member_id).next().is_some()
    };
    let own_copy = || Delivery {
        member_id: sender.member_id.clone(),
        session_pubkey: None,
        exclude_session: Some(sender.routing_key.clone()),
        key: None,
    };
    let member_copy = |member_id: &str| Delivery {
        member_id: member_id.to_owned(),
        session_pubkey: None,
        exclude_session: None,
        key: None,
    };
    match target {
        Target::Key(key) => {
            if *key == sender.member_pubkey {
                if own_siblings() {
                    return Resolution::Deliveries(vec![own_copy()]);
                }
                return Resolution::Rejected(
                    SendRejection::NoRecipient,
                    "that is your own member key and you have no other session online".to_owned(),
                );
            }
            if *key == sender.routing_key {
                return Resolution::Rejected(SendRejection::NoRecipient, "that is your own session key".to_owned());
            }
            if let Some(member_id) = state.by_pubkey.get(*key) {
                let active = state.members.get(member_id).is_some_and(|m| m.record.is_active());
                if !active {
                    return Resolution::Rejected(
                        SendRejection::UnknownRecipient,
                        "that member is no longer in the mesh".to_owned(),
                    );
                }
                return Resolution::Deliveries(vec![member_copy(member_id)]);
            }
            // A live session, or one that left: its mail waits for it until released, then goes
            // to its member.
            let live = state
                .by_routing_key
                .get(*key)
                .and_then(|id| state.sessions.get(id))
                .map(|s| (s.member_id.clone(), false))
                .or_else(|| state.remote.get(*key).map(|r| (r.member_id.clone(), false)));
            let session_member = live.or_else(|| state.departed.get(*key).map(|d| (d.member_id.clone(), d.released)));
            match session_member {
                Some((member_id, released)) => Resolution::Deliveries(vec![Delivery {
                    member_id,
                    session_pubkey: (!released).then(|| (*key).to_owned()),
                    exclude_session: None,
                    key: None,
                }]),
                None => Resolution::UnknownKey((*key).to_owned()),
            }
        }
        Target::Group(name) => {
            let mut deliveries = Vec::new();
            for (member_id, member) in &state.members {
                if !member.record.is_active() {
                    continue;
                }
                let mut remote = state.remote_sessions_of(member_id).peekable();
                let online = !member.sessions.is_empty() || remote.peek().is_some();
                let remote_in_group = remote.any(|r| r.in_group(name));
                let local_in_group = |except: Option<u64>| {
                    member
                        .sessions
                        .iter()
                        .filter(|id| Some(**id) != except)
                        .any(|id| state.sessions.get(id).is_some_and(|s| s.in_group(name)))
                };
                if *member_id == sender.member_id {
                    if remote_in_group || local_in_group(Some(sender.id)) {
                        deliveries.push(own_copy());
                    }
                    continue;
                }
                let in_group = if online {
                    remote_in_group || local_in_group(None)
                } else {
                    member.saved.as_ref().is_some_and(|s| s.groups.iter().any(|g| group_matches(&g.name, name)))
                };
                if in_group {
                    deliveries.push(member_copy(member_id));
                }
            }
            if deliveries.is_empty() {
                return Resolution::Rejected(SendRejection::NoRecipient, format!("nobody else is in @{name}"));
            }
            Resolution::Deliveries(deliveries)
        }
        Target::Broadcast => {
            let mut deliveries: Vec<Delivery> = state
                .members
                .iter()
                .filter(|(id, m)| **id != sender.member_id && m.record.is_active())
                .map(|(id, _)| member_copy(id))
                .collect();
            if own_siblings() {
                deliveries.push(own_copy());
            }
            if deliveries.is_empty() {
                return Resolution::Rejected(SendRejection::NoRecipient, "nobody else is in this mesh".to_owned());
            }
            Resolution::Deliveries(deliveries)
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::time::Instant;

    use super::*;
    use crate::protocol::{GroupMembership, Stats};
    use crate::router::fixture::{Mesh, key};
    use crate::router::state::Departed;
    use crate::store::PeerStateRecord;

    impl Mesh {
        fn resolve(&self, sender: u64, spec: &str) -> Resolution {
            let target = Target::parse(spec).expect("a valid target");
            resolve_target(&self.state, &self.state.sessions[&sender], &target)
        }
    }

    /// (member id, pinned session key, excluded session key) of each delivery, sorted.
    fn reached(resolution: Resolution) -> Vec<(String, Option<String>, Option<String>)> {
        let Resolution::Deliveries(deliveries) = resolution else { panic!("not deliveries") };
        let mut rows: Vec<_> =
            deliveries.into_iter().map(|d| (d.member_id, d.session_pubkey, d.exclude_session)).collect();
        rows.sort();
        rows
    }

    fn rejected(resolution: Resolution) -> SendRejection {
        match resolution {
            Resolution::Rejected(reason, _) => reason,
            _ => panic!("not rejected"),
        }
    }

    #[test]
    fn group_targets_reach_subgroups_only_at_a_slash() {
        assert!(group_matches("backend", "backend"));
        assert!(group_matches("backend/db", "backend"));
        assert!(!group_matches("backends", "backend"));
        assert!(!group_matches("backend", "backend/db"));
    }

    #[test]
    fn a_member_key_reaches_the_member_and_a_session_key_only_that_session() {
        let mut mesh = Mesh::new();
        mesh.member("a");
        mesh.member("b");
        let alice = mesh.session("a", &key("1"), &[]);
        mesh.session("b", &key("2"), &[]);
        assert_eq!(reached(mesh.resolve(alice, &key("b"))), [("m-b".into(), None, None)]);
        assert_eq!(reached(mesh.resolve(alice, &key("2"))), [("m-b".into(), Some(key("2")), None)]);
        assert!(matches!(mesh.resolve(alice, &key("9")), Resolution::UnknownKey(k) if k == key("9")));
    }

    #[test]
    fn a_departed_session_key_waits_for_its_session_until_released() {
        let mut mesh = Mesh::new();
        mesh.member("a");
        mesh.member("b");
        let alice = mesh.session("a", &key("1"), &[]);
        let departed = Departed { member_id: "m-b".into(), at: Instant::now(), released: false };
        mesh.state.departed.insert(key("2"), departed);
        assert_eq!(reached(mesh.resolve(alice, &key("2"))), [("m-b".into(), Some(key("2")), None)]);
        mesh.state.departed.get_mut(&key("2")).expect("departed").released = true;
        assert_eq!(reached(mesh.resolve(alice, &key("2"))), [("m-b".into(), None, None)]);
    }

    #[test]
    fn own_keys_reach_only_the_senders_other_sessions() {
        let mut mesh = Mesh::new();
        mesh.member("a");
        let first = mesh.session("a", &key("1"), &[]);
        assert_eq!(rejected(mesh.resolve(first, &key("a"))), SendRejection::NoRecipient);
        assert_eq!(rejected(mesh.resolve(first, &key("1"))), SendRejection::NoRecipient);
        mesh.session("a", &key("3"), &[]);
        assert_eq!(reached(mesh.resolve(first, &key("a"))), [("m-a".into(), None, Some(key("1")))]);
    }

    #[test]
    fn a_member_who_left_is_refused_and_missing_from_broadcasts() {
        let mut mesh = Mesh::new();
        mesh.member("a");
        mesh.member("b").record.revoked_at = Some(1);
        mesh.member("c");
        let alice = mesh.session("a", &key("1"), &[]);
        assert_eq!(rejected(mesh.resolve(alice, &key("b"))), SendRejection::UnknownRecipient);
        assert_eq!(reached(mesh.resolve(alice, "*")), [("m-c".into(), None, None)]);
        mesh.member("c").record.banned_at = Some(1);
        assert_eq!(rejected(mesh.resolve(alice, "@all")), SendRejection::NoRecipient);
    }

    #[test]
    fn groups_reach_online_members_by_session_and_offline_ones_by_saved_groups() {
        let mut mesh = Mesh::new();
        for name in ["a", "b", "c", "d"] {
            mesh.member(name);
        }
        let alice = mesh.session("a", &key("1"), &["backend"]);
        mesh.session("a", &key("2"), &["backend/db"]);
        mesh.session("b", &key("3"), &["backend/api"]);
        mesh.session("c", &key("4"), &["frontend"]);
        mesh.member("d").saved = Some(PeerStateRecord {
            member_id: "m-d".into(),
            groups: vec![GroupMembership { name: "backend".into(), role: None }],
            summary: None,
            display_name: None,
            stats: Stats::default(),
            last_seen_at: 0,
        });
        assert_eq!(
            reached(mesh.resolve(alice, "@backend")),
            [("m-a".into(), None, Some(key("1"))), ("m-b".into(), None, None), ("m-d".into(), None, None)]
        );
        assert_eq!(rejected(mesh.resolve(alice, "@ops")), SendRejection::NoRecipient);
    }

    #[test]
    fn key_wraps_cover_recipients_and_name_the_ones_left_out() {
        let mut mesh = Mesh::new();
        mesh.member("a");
        mesh.member("b");
        mesh.member("c");
        let alice = mesh.session("a", &key("1"), &[]);
        let Resolution::Deliveries(deliveries) = mesh.resolve(alice, "*") else { panic!("deliveries") };
        let wrap = |to: &str| KeyWrap { to: key(to), nonce: "bg==".into(), ciphertext: "aw==".into() };
        let (covered, uncovered) =
            cover_with_keys(deliveries.clone(), Enc::Multi, &[wrap("b")], &mesh.state).expect("b is covered");
        assert_eq!(covered.len(), 1);
        assert_eq!(covered[0].member_id, "m-b");
        assert!(covered[0].key.is_some());
        assert_eq!(uncovered, [key("c")]);
        let none = cover_with_keys(deliveries.clone(), Enc::Multi, &[wrap("9")], &mesh.state);
        assert_eq!(none.map(|_| ()).map_err(|(reason, _)| reason), Err(SendRejection::NoRecipient));
        let (direct, _) = cover_with_keys(deliveries, Enc::Box, &[], &mesh.state).expect("no wraps needed");
        assert_eq!(direct.len(), 2);
    }

    #[test]
    fn envelope_shape_checks() {
        let wrap = KeyWrap { to: "a".repeat(64), nonce: "bm9uY2U=".into(), ciphertext: "a2V5".into() };
        assert!(check_envelope(Enc::Box, &[]).is_ok());
        assert!(check_envelope(Enc::Multi, std::slice::from_ref(&wrap)).is_ok());
        assert!(check_envelope(Enc::Box, std::slice::from_ref(&wrap)).is_err());
        assert!(check_envelope(Enc::Multi, &[]).is_err());
        assert!(check_envelope(Enc::System, &[]).is_err());
        let bad = KeyWrap { to: "nope".into(), ..wrap };
        assert!(check_envelope(Enc::Multi, &[bad]).is_err());
    }
}
