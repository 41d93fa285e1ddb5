//! The one error type the window sees: a stable `kind` the UI can branch on and a sentence for
//! the person. Every command returns it; library errors are mapped here and nowhere else.

use serde::Serialize;

use crate::account::AccountError;
use crate::http::HttpError;
use crate::mesh::{BrokerFault, LinkState, MeshError};

/// What went wrong, as the UI branches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The input was not acceptable (an empty name, a malformed code or link).
    Invalid,
    /// This needs a signed-in account.
    NotSignedIn,
    /// The sign-in expired or was revoked: sign in again.
    SignInInvalid,
    /// The broker could not be reached.
    Unreachable,
    /// The broker answered no (its code is in the message).
    Refused,
    /// Something this names does not exist.
    NotFound,
    /// Another writer changed it first (a shared-state entry moved past the version expected).
    Conflict,
    /// The local broker could not start (port in use, data directory not writable).
    LocalBroker,
    /// The keychain, the config or the inbox failed.
    Storage,
}

/// A failed command, serialized as `{kind, message}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    pub kind: ErrorKind,
    pub message: String,
}

impl CommandError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CommandError {
        CommandError { kind, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> CommandError {
        CommandError::new(ErrorKind::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> CommandError {
        CommandError::new(ErrorKind::NotFound, message)
    }
}

pub type CommandResult<T> = Result<T, CommandError>;

impl From<AccountError> for CommandError {
    fn from(error: AccountError) -> Self {
        let kind = match &error {
            AccountError::Http(error) => http_kind(error),
            AccountError::Invalid(_) => ErrorKind::Invalid,
            AccountError::Refused { status: 404, .. } => ErrorKind::NotFound,
            AccountError::Refused { .. } | AccountError::BadAnswer(_) => ErrorKind::Refused,
            AccountError::NotSignedIn => ErrorKind::NotSignedIn,
            AccountError::SignInInvalid(_) => ErrorKind::SignInInvalid,
            AccountError::KeyStore(_) | AccountError::Config(_) => ErrorKind::Storage,
        };
        CommandError::new(kind, error.to_string())
    }
}

fn http_kind(error: &HttpError) -> ErrorKind {
    match error {
        HttpError::Unreachable { .. } | HttpError::Interrupted { .. } | HttpError::Tls(_) => ErrorKind::Unreachable,
        HttpError::UnsupportedUrl(_) | HttpError::InsecureBearer(_) => ErrorKind::Invalid,
    }
}

impl From<crate::join::JoinError> for CommandError {
    fn from(error: crate::join::JoinError) -> Self {
        use crate::join::JoinError;
        let kind = match &error {
            JoinError::BadInvite(_) | JoinError::Expired | JoinError::AlreadyJoined { .. } => ErrorKind::Invalid,
            JoinError::Http(error) => http_kind(error),
            // The message says to join again: the same key is presented then.
            JoinError::Interrupted(_) => ErrorKind::Unreachable,
            JoinError::Refused { .. } => ErrorKind::Refused,
            JoinError::KeyStore(_) | JoinError::Config(_) => ErrorKind::Storage,
        };
        // The CLI's advice ("run `claudemesh leave …`") reads oddly in a window; keep the facts.
        CommandError::new(kind, error.to_string())
    }
}

impl From<MeshError> for CommandError {
    fn from(error: MeshError) -> Self {
        CommandError::new(mesh_kind(&error), error.to_string())
    }
}

fn mesh_kind(error: &MeshError) -> ErrorKind {
    use crate::mesh::resolve::ResolveError;
    match error {
        MeshError::UnknownMesh { .. } | MeshError::UnknownMessage(_) | MeshError::UnknownSchedule(_) => {
            ErrorKind::NotFound
        }
        MeshError::BadRequest(_) => ErrorKind::Invalid,
        MeshError::NotConnected { state: LinkState::Failed(_), .. } => ErrorKind::Refused,
        MeshError::NotConnected { .. } => ErrorKind::Unreachable,
        MeshError::Broker { source, .. } | MeshError::NotSent(source) => match BrokerFault::of(source) {
            BrokerFault::Unreachable => ErrorKind::Unreachable,
            BrokerFault::Refused => ErrorKind::Refused,
            BrokerFault::Local => ErrorKind::Storage,
        },
        MeshError::Resolve(
            ResolveError::NotFound { .. } | ResolveError::UnknownMesh { .. } | ResolveError::NoMeshes,
        ) => ErrorKind::NotFound,
        MeshError::Resolve(_) => ErrorKind::Invalid,
        MeshError::MemberKeyMismatch
        | MeshError::MemberKeyMissing { .. }
        | MeshError::KeyStore(_)
        | MeshError::Inbox(_)
        | MeshError::MemoryIndex(_) => ErrorKind::Storage,
        MeshError::Workspace { source, .. } => match crate::mesh::WorkspaceFault::of(source) {
            crate::mesh::WorkspaceFault::Lost => ErrorKind::Conflict,
            crate::mesh::WorkspaceFault::NotFound => ErrorKind::NotFound,
            crate::mesh::WorkspaceFault::Fault(BrokerFault::Unreachable) => ErrorKind::Unreachable,
            crate::mesh::WorkspaceFault::Fault(BrokerFault::Refused) => ErrorKind::Refused,
            crate::mesh::WorkspaceFault::Fault(BrokerFault::Local) => ErrorKind::Storage,
        },
        MeshError::Each(errors) => errors.first().map_or(ErrorKind::Storage, mesh_kind),
    }
}

impl From<crate::config::ConfigError> for CommandError {
    fn from(error: crate::config::ConfigError) -> Self {
        CommandError::new(ErrorKind::Storage, error.to_string())
    }
}

impl From<crate::inbox::InboxError> for CommandError {
    fn from(error: crate::inbox::InboxError) -> Self {
        CommandError::new(ErrorKind::Storage, error.to_string())
    }
}

impl From<crate::keystore::KeyStoreError> for CommandError {
    fn from(error: crate::keystore::KeyStoreError) -> Self {
        CommandError::new(ErrorKind::Storage, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_serialize_with_a_kind_the_ui_can_branch_on() {
        let error: CommandError = AccountError::NotSignedIn.into();
        let json = serde_json::to_value(&error).expect("serializes");
        assert_eq!(json["kind"], "not_signed_in");
        assert!(json["message"].as_str().is_some_and(|m| m.contains("not signed in")));
        let refused: CommandError =
            AccountError::Refused { status: 403, code: "forbidden".into(), message: "only admins".into() }.into();
        assert_eq!(refused.kind, ErrorKind::Refused);
        let gone: CommandError =
            AccountError::Refused { status: 404, code: "not_found".into(), message: "no such mesh".into() }.into();
        assert_eq!(gone.kind, ErrorKind::NotFound);
    }

    #[test]
    fn mesh_errors_reach_the_window_with_a_kind() {
        use broker_core::client::ClientError;

        use crate::mesh::resolve::ResolveError;

        let not_connected = |state| MeshError::NotConnected { mesh: "acme".into(), state };
        let cases = [
            (MeshError::UnknownMesh { name: "beta".into(), joined: vec![] }, ErrorKind::NotFound),
            (MeshError::Resolve(ResolveError::NotFound { target: "bob".into(), known: vec![] }), ErrorKind::NotFound),
            (MeshError::Resolve(ResolveError::Empty), ErrorKind::Invalid),
            (not_connected(LinkState::Reconnecting("refused".into())), ErrorKind::Unreachable),
            (not_connected(LinkState::Failed("revoked".into())), ErrorKind::Refused),
            (MeshError::Broker { mesh: "acme".into(), source: ClientError::ConnectionLost }, ErrorKind::Unreachable),
            (
                MeshError::Broker {
                    mesh: "acme".into(),
                    source: ClientError::Rejected { reason: None, message: "forbidden: admins only".into() },
                },
                ErrorKind::Refused,
            ),
            (MeshError::NotSent(ClientError::Timeout(std::time::Duration::from_secs(5))), ErrorKind::Unreachable),
            (MeshError::MemberKeyMismatch, ErrorKind::Storage),
            (MeshError::Each(vec![not_connected(LinkState::Connecting)]), ErrorKind::Unreachable),
        ];
        for (error, kind) in cases {
            let text = error.to_string();
            let error = CommandError::from(error);
            assert_eq!(error.kind, kind, "{text}");
            assert_eq!(error.message, text, "the window reads the same sentence");
        }
    }
}
