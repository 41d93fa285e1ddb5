//! [`MeshError`]: the one error of mesh operations on this side (starting sessions, peer lists,
//! presence, groups, grants, sending, reading the inbox). Front ends map it once each: the CLI
//! to an exit code, the MCP bridge to a tool error, the desktop app to a `CommandError`. The
//! texts are for people and say what to do; the variants are for code.

use broker_core::client::{ClientError, WorkspaceError};

use super::LinkState;
use super::resolve::ResolveError;
use crate::inbox::InboxError;
use crate::keystore::KeyStoreError;

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// No joined mesh goes by that slug, id or name.
    #[error("no joined mesh is called {name:?}; joined meshes: {}", joined.join(", "))]
    UnknownMesh { name: String, joined: Vec<String> },
    /// The mesh's session is not connected now.
    #[error("{mesh}: not connected ({})", describe(state))]
    NotConnected { mesh: String, state: LinkState },
    /// The broker refused a request of this mesh's session, or did not confirm it.
    #[error("{mesh}: {source}")]
    Broker {
        mesh: String,
        #[source]
        source: ClientError,
    },
    /// The broker refused a message or did not confirm it (the outcome names the mesh).
    #[error("{}", send_advice(.0))]
    NotSent(#[source] ClientError),
    /// A recipient name, key, group or mesh prefix did not resolve.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The keystore holds a different key than the one this membership was made with.
    #[error("the stored member key does not match this membership; run `claudemesh leave` and join again")]
    MemberKeyMismatch,
    /// The keystore holds no key for this membership.
    #[error("no member key for mesh {mesh} in the {keystore} keystore; run `claudemesh leave {mesh}` and join again")]
    MemberKeyMissing { mesh: String, keystore: &'static str },
    #[error("keystore: {0}")]
    KeyStore(#[from] KeyStoreError),
    #[error("cannot read the inbox: {0}")]
    Inbox(#[from] InboxError),
    /// No joined mesh knows a message by that id as one this member sent.
    #[error(
        "no message {0:?} sent from this device's meshes has a status: check the id (send_message returns it); a status is kept for 7 days"
    )]
    UnknownMessage(String),
    /// No joined mesh has a scheduled message by that id (that this member may cancel).
    #[error("no scheduled message {0:?} in your meshes (it may have fired already); list_scheduled shows them")]
    UnknownSchedule(String),
    /// A shared-state or memory request failed (a lost compare-and-set race, no mesh key yet,
    /// a refusal, an entry that does not check out).
    #[error("{mesh}: {source}")]
    Workspace {
        mesh: String,
        #[source]
        source: WorkspaceError,
    },
    /// The request itself is not acceptable (an empty name, a value too large).
    #[error("{0}")]
    BadRequest(String),
    /// This device's memory index could not be opened or written.
    #[error("the memory index: {0}")]
    MemoryIndex(String),
    /// Every selected mesh failed, each for its own reason (never empty).
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Each(Vec<MeshError>),
}

impl MeshError {
    /// Several errors as one; a single error stays itself.
    pub fn each(mut errors: Vec<MeshError>) -> MeshError {
        if errors.len() == 1 { errors.remove(0) } else { MeshError::Each(errors) }
    }
}

/// Why a request to the broker failed, as far as what to do next goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerFault {
    /// Not heard: the broker is down, far, or the connection broke. Retrying may work.
    Unreachable,
    /// The broker answered no (a rejection, a revoked member, a stopped session).
    Refused,
    /// Something on this machine failed (sealing the message).
    Local,
}

impl BrokerFault {
    pub fn of(error: &ClientError) -> BrokerFault {
        match error {
            ClientError::QueueFull(_) | ClientError::ConnectionLost | ClientError::Timeout(_) => {
                BrokerFault::Unreachable
            }
            ClientError::Crypto(_) => BrokerFault::Local,
            ClientError::Rejected { .. }
            | ClientError::BadTarget(_)
            | ClientError::NoRecipient(_)
            | ClientError::Stopped(_)
            | ClientError::UnexpectedReply => BrokerFault::Refused,
        }
    }
}

/// What went wrong with a shared-state or memory request, as far as what to do next goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceFault {
    /// Another writer got there first: read again, then decide.
    Lost,
    NotFound,
    Fault(BrokerFault),
}

impl WorkspaceFault {
    pub fn of(error: &WorkspaceError) -> WorkspaceFault {
        match error {
            WorkspaceError::VersionMismatch { .. } => WorkspaceFault::Lost,
            WorkspaceError::UnknownMemory(_) => WorkspaceFault::NotFound,
            WorkspaceError::NoKey | WorkspaceError::StaleEpoch | WorkspaceError::Refused(_) => {
                WorkspaceFault::Fault(BrokerFault::Refused)
            }
            WorkspaceError::Unreadable(_) => WorkspaceFault::Fault(BrokerFault::Local),
            WorkspaceError::Client(source) => WorkspaceFault::Fault(BrokerFault::of(source)),
        }
    }
}

/// What a failed send means and what to do about it.
fn send_advice(error: &ClientError) -> String {
    match BrokerFault::of(error) {
        BrokerFault::Unreachable => format!("{error} (the broker may be unreachable; retry shortly)"),
        BrokerFault::Refused | BrokerFault::Local => error.to_string(),
    }
}

pub(super) fn describe(state: &LinkState) -> String {
    match state {
        LinkState::Connecting => "connecting".into(),
        LinkState::Connected => "connected".into(),
        LinkState::Reconnecting(reason) => format!("reconnecting ({reason})"),
        LinkState::Failed(reason) => format!("failed: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_send_failures_carry_advice_and_refusals_keep_the_brokers_words() {
        let lost = MeshError::NotSent(ClientError::ConnectionLost);
        assert!(lost.to_string().ends_with("(the broker may be unreachable; retry shortly)"), "{lost}");
        let rejected = ClientError::Rejected {
            reason: Some(broker_core::protocol::SendRejection::Blocked),
            message: "blocked: the recipient does not accept this".into(),
        };
        assert_eq!(BrokerFault::of(&rejected), BrokerFault::Refused);
        let blocked = MeshError::NotSent(rejected);
        assert_eq!(blocked.to_string(), "blocked: the recipient does not accept this");
    }

    #[test]
    fn several_failures_read_as_one_line_and_one_stays_itself() {
        let down = || MeshError::NotConnected { mesh: "acme".into(), state: LinkState::Reconnecting("refused".into()) };
        assert_eq!(down().to_string(), "acme: not connected (reconnecting (refused))");
        assert!(matches!(MeshError::each(vec![down()]), MeshError::NotConnected { .. }));
        let both = MeshError::each(vec![
            down(),
            MeshError::NotConnected { mesh: "beta".into(), state: LinkState::Failed("revoked".into()) },
        ]);
        assert_eq!(
            both.to_string(),
            "acme: not connected (reconnecting (refused)); beta: not connected (failed: revoked)"
        );
    }
}
