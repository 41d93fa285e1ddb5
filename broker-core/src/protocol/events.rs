//! Broker events: a `push` with `subtype: "system"`, typed on both ends.

use serde::{Deserialize, Serialize};

use super::{GroupMembership, PeerInfo, StateChanged};

/// A broker event: a `push` with `subtype: "system"`, its name in `event` and its data in
/// `eventData`. The wire keeps the reference protocol's shapes; this type is how both ends
/// build and read them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "eventData", rename_all = "snake_case")]
pub enum SystemEvent {
    /// A member's first session came online (it has no saved peer state).
    PeerJoined(PeerJoined),
    /// A member with saved peer state came back online.
    PeerReturned(PeerReturned),
    /// A session went away.
    PeerLeft(PeerLeft),
    /// Ours: the broker holds messages between two members (a runaway exchange); sent to the
    /// sessions of both.
    PairHeld(PairHold),
    /// Ours: a person released a held pair.
    PairReleased(PairHold),
    /// Ours, with `peer_updates`: a session changed its status, summary, groups or stats; the
    /// data is its whole `peers_list` entry.
    PeerUpdated(PeerInfo),
    /// Ours, with `state_updates`: a shared-state entry was written or removed.
    StateChanged(StateChanged),
}

/// The `push.subtype` of broker events.
pub const SYSTEM_SUBTYPE: &str = "system";

impl SystemEvent {
    /// The `event` name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            SystemEvent::PeerJoined(_) => "peer_joined",
            SystemEvent::PeerReturned(_) => "peer_returned",
            SystemEvent::PeerLeft(_) => "peer_left",
            SystemEvent::PairHeld(_) => "pair_held",
            SystemEvent::PairReleased(_) => "pair_released",
            SystemEvent::PeerUpdated(_) => "peer_updated",
            SystemEvent::StateChanged(_) => "state_changed",
        }
    }

    /// The `eventData` object on the wire.
    pub fn data(&self) -> serde_json::Value {
        let data = match self {
            SystemEvent::PeerJoined(data) => serde_json::to_value(data),
            SystemEvent::PeerReturned(data) => serde_json::to_value(data),
            SystemEvent::PeerLeft(data) => serde_json::to_value(data),
            SystemEvent::PairHeld(data) | SystemEvent::PairReleased(data) => serde_json::to_value(data),
            SystemEvent::PeerUpdated(data) => serde_json::to_value(data),
            SystemEvent::StateChanged(data) => serde_json::to_value(data),
        };
        data.expect("event data serializes")
    }

    /// Reads a system push's `event` and `eventData`; an error for an event this build does not
    /// know or data of the wrong shape.
    pub fn parse(event: &str, data: serde_json::Value) -> Result<SystemEvent, serde_json::Error> {
        serde_json::from_value(serde_json::json!({ "event": event, "eventData": data }))
    }

    /// The peer a presence event is about: its display name, routing key and member key.
    pub fn peer(&self) -> Option<(&str, &str, &str)> {
        match self {
            SystemEvent::PeerJoined(p) => Some((&p.name, &p.pubkey, &p.member_pubkey)),
            SystemEvent::PeerReturned(p) => Some((&p.name, &p.pubkey, &p.member_pubkey)),
            SystemEvent::PeerLeft(p) => Some((&p.name, &p.pubkey, &p.member_pubkey)),
            SystemEvent::PeerUpdated(p) => Some((&p.display_name, &p.pubkey, &p.member_pubkey)),
            SystemEvent::PairHeld(_) | SystemEvent::PairReleased(_) | SystemEvent::StateChanged(_) => None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerJoined {
    pub name: String,
    /// The session's routing key (its session key, else its member key).
    pub pubkey: String,
    /// Ours: the member key, so a client can tell its own other sessions.
    #[serde(default)]
    pub member_pubkey: String,
    #[serde(default)]
    pub groups: Vec<GroupMembership>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerReturned {
    pub name: String,
    pub pubkey: String,
    #[serde(default)]
    pub member_pubkey: String,
    #[serde(default)]
    pub groups: Vec<GroupMembership>,
    pub last_seen_at: String,
    #[serde(default)]
    pub summary: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerLeft {
    pub name: String,
    pub pubkey: String,
    #[serde(default)]
    pub member_pubkey: String,
}

/// Two members whose messages the broker holds (or released): who sent too much to whom, and
/// why, in words a person and a model can act on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PairHold {
    pub from_name: String,
    pub from_member_pubkey: String,
    pub to_name: String,
    pub to_member_pubkey: String,
    /// `budget` (too many direct messages from one to the other) or `loop` (the two kept
    /// answering each other quickly), both directions held for a loop.
    pub reason: String,
    pub detail: String,
}

impl PairHold {
    /// The member key of the pair's other member, seen from `member_pubkey`'s side.
    pub fn other_than(&self, member_pubkey: &str) -> &str {
        if self.from_member_pubkey == member_pubkey { &self.to_member_pubkey } else { &self.from_member_pubkey }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_events_keep_the_reference_shapes() {
        let joined = SystemEvent::PeerJoined(PeerJoined {
            name: "alice".into(),
            pubkey: "k".into(),
            member_pubkey: "m".into(),
            groups: vec![],
        });
        assert_eq!(joined.name(), "peer_joined");
        assert_eq!(
            joined.data(),
            serde_json::json!({"name": "alice", "pubkey": "k", "memberPubkey": "m", "groups": []})
        );
        let returned = SystemEvent::parse(
            "peer_returned",
            serde_json::json!({"name": "bob", "pubkey": "k", "groups": [], "lastSeenAt": "t", "summary": null}),
        )
        .expect("a reference client's peer_returned parses");
        assert_eq!(returned.peer(), Some(("bob", "k", "")));
        assert_eq!(SystemEvent::parse(returned.name(), returned.data()).expect("round trip"), returned);
        assert!(SystemEvent::parse("peer_danced", serde_json::json!({})).is_err());
        let hold = PairHold { from_member_pubkey: "a".into(), to_member_pubkey: "b".into(), ..PairHold::default() };
        assert_eq!((hold.other_than("a"), hold.other_than("b")), ("b", "a"));
        assert!(SystemEvent::parse("peer_left", serde_json::json!({"name": 5})).is_err());
    }
}
