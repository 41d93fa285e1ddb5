//! Value types the frames carry: capabilities, priority and status, envelope kinds, roles,
//! groups and counters.

use serde::{Deserialize, Serialize};

/// Capabilities a client may announce in `hello.capabilities`; the broker echoes those it
/// supports. On the wire they stay strings, so a capability one side does not know is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Capability {
    /// The client proves its session key: `sessionSig` (the member key's signature delegating it)
    /// and `sessionProof` (the session key's own signature over the hello).
    SessionSig,
    /// The client acknowledges each push with a `delivered` frame; unacknowledged pushes are
    /// re-sent after a reconnect. Without it, a push counts as delivered once written.
    DeliveryAck,
    /// Pushes carry an explicit `enc` envelope kind.
    Enc,
    /// End-to-end sealed group and broadcast messages: `send.keys`, `push.key` and `resolve`.
    SealedMulticast,
    /// The sending session hears a `receipt` when a recipient member's client acknowledged one
    /// of its messages (stored it), so it can show "delivered" rather than only "queued".
    DeliveryReceipt,
    /// A refused `send` ack and an empty `resolved` carry `errorCode`, the [`SendRejection`],
    /// next to the human text.
    RefusalCode,
    /// The hello signature covers the session key and the announced capabilities
    /// (`crypto::hello_v2_signed_bytes`). A hello announcing any known capability must use it.
    HelloV2,
    /// The session hears `peer_updated` whenever another session of its mesh changes its status,
    /// summary, groups or stats (a front end that shows peers live, instead of polling).
    PeerUpdates,
    /// The session hears `state_changed` whenever a shared-state entry of its mesh is written or
    /// removed (a client filters what reaches a model by name, which the broker cannot see).
    StateUpdates,
}

impl Capability {
    /// Every capability this implementation supports, in the order `hello_ack` lists them.
    pub const ALL: [Capability; 9] = [
        Capability::SessionSig,
        Capability::DeliveryAck,
        Capability::Enc,
        Capability::SealedMulticast,
        Capability::DeliveryReceipt,
        Capability::RefusalCode,
        Capability::HelloV2,
        Capability::PeerUpdates,
        Capability::StateUpdates,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Capability::SessionSig => "session_sig",
            Capability::DeliveryAck => "delivery_ack",
            Capability::Enc => "enc",
            Capability::SealedMulticast => "sealed_multicast",
            Capability::DeliveryReceipt => "delivery_receipt",
            Capability::RefusalCode => "refusal_code",
            Capability::HelloV2 => "hello_v2",
            Capability::PeerUpdates => "peer_updates",
            Capability::StateUpdates => "state_updates",
        }
    }

    pub fn parse(name: &str) -> Option<Capability> {
        Capability::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

// `Capabilities` keeps one bit per capability in a `u16`.
const _: () = assert!(Capability::ALL.len() <= 16);

/// A set of [`Capability`]s: what a session announced, or what it negotiated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities(u16);

impl Capabilities {
    /// The known capabilities among `names`; unknown names are ignored.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Capabilities {
        names.iter().filter_map(|n| Capability::parse(n.as_ref())).collect()
    }

    pub fn has(self, capability: Capability) -> bool {
        self.0 & Self::bit(capability) != 0
    }

    /// The names, in the order of [`Capability::ALL`].
    pub fn names(self) -> Vec<String> {
        Capability::ALL.into_iter().filter(|c| self.has(*c)).map(|c| c.as_str().to_owned()).collect()
    }

    /// One bit per variant (at most sixteen), by its discriminant: `has` runs for every push.
    fn bit(capability: Capability) -> u16 {
        1 << capability as u16
    }
}

impl FromIterator<Capability> for Capabilities {
    fn from_iter<I: IntoIterator<Item = Capability>>(iter: I) -> Capabilities {
        Capabilities(iter.into_iter().fold(0, |bits, c| bits | Capabilities::bit(c)))
    }
}

/// Message priority; gates delivery by the recipient's status (see [`Priority::deliverable_to`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Now,
    #[default]
    Next,
    Low,
}

impl Priority {
    /// The priority gating table: `now` always goes out; `next` and `low` wait until the
    /// recipient is idle.
    pub fn deliverable_to(self, status: Status) -> bool {
        match status {
            Status::Idle => true,
            Status::Working | Status::Dnd => self == Priority::Now,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Now => "now",
            Priority::Next => "next",
            Priority::Low => "low",
        }
    }
}

/// A peer session's availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    #[default]
    Idle,
    Working,
    Dnd,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Idle => "idle",
            Status::Working => "working",
            Status::Dnd => "dnd",
        }
    }
}

/// Who reported a status. Higher ranks win (see `router::status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StatusSource {
    /// Inferred by the broker (the working-status TTL). The reference calls this `jsonl`.
    #[serde(alias = "jsonl")]
    Inferred,
    /// Set by the peer through `set_status`.
    #[default]
    Manual,
    /// Reported by a Claude Code hook through the session's bridge.
    Hook,
}

/// How a pushed payload is encrypted, so a receiver never guesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Enc {
    /// `crypto_box` from the sender's key to the recipient's key (the reference DM format).
    #[default]
    Box,
    /// `crypto_secretbox` under a random content key, the key `crypto_box`ed to each recipient
    /// member separately (`send.keys` / `push.key`).
    Multi,
    /// A broker event: no payload (`nonce` and `ciphertext` are empty).
    System,
}

/// Peer kind shown to others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerType {
    Ai,
    Human,
    Connector,
}

/// A member's role in a mesh. Admins may invite, kick and ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    #[default]
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// A group a session belongs to, with an optional free-form role (`lead`, `member`, `observer`…).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembership {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

/// Self-reported counters (`set_stats`), accumulated per member across sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct Stats {
    pub messages_in: u64,
    pub messages_out: u64,
    pub tool_calls: u64,
    /// Seconds the session has been up.
    pub uptime: u64,
    pub errors: u64,
}

impl Stats {
    pub fn plus(self, other: Stats) -> Stats {
        Stats {
            messages_in: self.messages_in.saturating_add(other.messages_in),
            messages_out: self.messages_out.saturating_add(other.messages_out),
            tool_calls: self.tool_calls.saturating_add(other.tool_calls),
            uptime: self.uptime.saturating_add(other.uptime),
            errors: self.errors.saturating_add(other.errors),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gating_table_matches_the_protocol() {
        let cases = [
            (Status::Idle, [true, true, true]),
            (Status::Working, [true, false, false]),
            (Status::Dnd, [true, false, false]),
        ];
        for (status, expected) in cases {
            let got = [Priority::Now, Priority::Next, Priority::Low].map(|p| p.deliverable_to(status));
            assert_eq!(got, expected, "status {status:?}");
        }
    }

    #[test]
    fn status_source_accepts_reference_jsonl() {
        let source: StatusSource = serde_json::from_str("\"jsonl\"").expect("parses");
        assert_eq!(source, StatusSource::Inferred);
        assert!(StatusSource::Hook > StatusSource::Manual && StatusSource::Manual > StatusSource::Inferred);
    }

    #[test]
    fn capabilities_ignore_unknown_names_and_list_in_order() {
        let caps = Capabilities::from_names(&["delivery_receipt", "teleport", "session_sig"]);
        assert!(caps.has(Capability::SessionSig) && caps.has(Capability::DeliveryReceipt));
        assert!(!caps.has(Capability::Enc));
        assert_eq!(caps.names(), ["session_sig", "delivery_receipt"]);
        assert_eq!(
            Capabilities::from_names(&Capabilities::from_iter(Capability::ALL).names()).names().len(),
            Capability::ALL.len()
        );
    }
}
