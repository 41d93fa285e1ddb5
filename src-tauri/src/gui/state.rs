//! What the app knows, as plain data: the account, each mesh's connection and peers, unread
//! count, waiting device logins. [`DesktopState::status`] derives the truthful one-line state
//! the tray and the window header show, and [`TrayIcon`] which icon goes with it. No I/O.

use std::collections::BTreeMap;

use broker_core::protocol::account::PendingDevice;
use serde::Serialize;

use crate::config::{AccountEntry, MeshEntry};
use crate::mesh::{LinkState, PeerRow};

/// A sign-in that expires within this many milliseconds is "expiring".
pub const EXPIRING_WITHIN_MS: u64 = 3 * 24 * 3600 * 1000;

/// The state line: exactly one of these, in this order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    SignedOut,
    AwaitingApproval,
    Expired,
    Reconnecting,
    TokenExpiring,
    Connected,
}

/// What the app knows about this device's sign-in token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenHealth {
    Unknown,
    /// Valid until this time (Unix ms), renewed by use.
    Valid {
        expires_at_ms: u64,
    },
    /// The broker refused it (expired or revoked).
    Expired,
}

/// One joined mesh as the app tracks it.
#[derive(Debug, Clone)]
pub struct MeshStatus {
    pub entry: MeshEntry,
    pub link: LinkState,
    /// Other sessions online (this app's own session excluded).
    pub peers: Vec<PeerRow>,
}

/// The local broker as Settings shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalBrokerView {
    pub running: bool,
    pub port: Option<u16>,
    /// What this machine uses.
    pub url: Option<String>,
    /// What other machines on the LAN use, only while it is shared.
    pub lan_url: Option<String>,
    pub data_dir: String,
    /// Why it is not running, when it should be.
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct DesktopState {
    pub account: Option<AccountEntry>,
    /// A device login of this app waits for approval.
    pub awaiting_approval: bool,
    pub token: TokenHealth,
    /// By mesh id.
    pub meshes: BTreeMap<String, MeshStatus>,
    /// Received messages the person has not seen.
    pub unread: u64,
    /// Device logins that named this account and wait for a decision.
    pub pending: Vec<PendingDevice>,
    pub paused: bool,
    pub local_broker: LocalBrokerView,
}

/// Everything the header, the tray and the Meshes list show, sent to the window on each change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusView {
    pub state: ConnectionState,
    pub state_line: String,
    pub account: Option<AccountView>,
    pub meshes: Vec<MeshSummary>,
    pub unread: u64,
    pub pending_devices: Vec<PendingDevice>,
    pub paused: bool,
    pub local_broker: LocalBrokerView,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountView {
    pub name: String,
    pub broker_url: String,
    /// Signed in to this app's own local broker.
    pub local: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshSummary {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub role: String,
    pub display_name: String,
    pub broker_url: String,
    pub member_pubkey: String,
    /// `connected`, `connecting`, `reconnecting` or `failed`.
    pub connection: &'static str,
    pub connection_detail: Option<String>,
    pub online: usize,
}

/// Which tray icon shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrayIcon {
    Connected,
    /// Something waits for the person: unread messages, a device to approve, an expiring sign-in.
    Attention,
    Offline,
}

impl DesktopState {
    pub fn new() -> DesktopState {
        DesktopState {
            account: None,
            awaiting_approval: false,
            token: TokenHealth::Unknown,
            meshes: BTreeMap::new(),
            unread: 0,
            pending: Vec::new(),
            paused: false,
            local_broker: LocalBrokerView::default(),
        }
    }

    pub fn connection_state(&self, now_ms: u64) -> ConnectionState {
        if self.account.is_none() {
            return if self.awaiting_approval { ConnectionState::AwaitingApproval } else { ConnectionState::SignedOut };
        }
        match self.token {
            TokenHealth::Expired => return ConnectionState::Expired,
            _ if self.meshes.values().any(|m| matches!(m.link, LinkState::Connecting | LinkState::Reconnecting(_))) => {
                return ConnectionState::Reconnecting;
            }
            TokenHealth::Valid { expires_at_ms } if expires_at_ms.saturating_sub(now_ms) < EXPIRING_WITHIN_MS => {
                return ConnectionState::TokenExpiring;
            }
            _ => {}
        }
        ConnectionState::Connected
    }

    fn state_line(&self, state: ConnectionState, now_ms: u64) -> String {
        let account = self.account.as_ref().map(|a| a.account_name.as_str()).unwrap_or_default();
        match state {
            ConnectionState::SignedOut => "Signed out".into(),
            ConnectionState::AwaitingApproval => "Awaiting approval…".into(),
            ConnectionState::Expired => "Sign-in expired — sign in again".into(),
            ConnectionState::Reconnecting => {
                let never = self.meshes.values().any(|m| m.link == LinkState::Connecting);
                if never { "Connecting…".into() } else { "Reconnecting…".into() }
            }
            ConnectionState::TokenExpiring => {
                let left = match self.token {
                    TokenHealth::Valid { expires_at_ms } => expires_at_ms.saturating_sub(now_ms),
                    _ => 0,
                };
                let hours = left / 3_600_000;
                if hours >= 24 {
                    format!("Sign-in expires in {} days", hours / 24)
                } else {
                    format!("Sign-in expires in {} h", hours.max(1))
                }
            }
            ConnectionState::Connected => match self.meshes.len() {
                0 => format!("Connected as {account}"),
                1 => format!("Connected as {account} · 1 mesh"),
                n => format!("Connected as {account} · {n} meshes"),
            },
        }
    }

    pub fn status(&self, now_ms: u64) -> StatusView {
        let state = self.connection_state(now_ms);
        StatusView {
            state,
            state_line: self.state_line(state, now_ms),
            account: self.account.as_ref().map(|a| AccountView {
                name: a.account_name.clone(),
                broker_url: a.broker_url.clone(),
                local: self.local_broker.url.as_deref().is_some_and(|u| crate::http::same_broker(u, &a.broker_url)),
            }),
            meshes: self
                .meshes
                .values()
                .map(|m| MeshSummary {
                    id: m.entry.mesh_id.clone(),
                    slug: m.entry.slug.clone(),
                    name: m.entry.name.clone(),
                    role: m.entry.role.clone(),
                    display_name: m.entry.display_name.clone(),
                    broker_url: m.entry.broker_url.clone(),
                    member_pubkey: m.entry.member_pubkey.clone(),
                    connection: match m.link {
                        LinkState::Connected => "connected",
                        LinkState::Connecting => "connecting",
                        LinkState::Reconnecting(_) => "reconnecting",
                        LinkState::Failed(_) => "failed",
                    },
                    connection_detail: match &m.link {
                        LinkState::Reconnecting(why) | LinkState::Failed(why) => Some(why.clone()),
                        _ => None,
                    },
                    online: m.peers.len(),
                })
                .collect(),
            unread: self.unread,
            pending_devices: self.pending.clone(),
            paused: self.paused,
            local_broker: self.local_broker.clone(),
        }
    }
}

impl Default for DesktopState {
    fn default() -> Self {
        DesktopState::new()
    }
}

impl StatusView {
    pub fn tray_icon(&self) -> TrayIcon {
        match self.state {
            ConnectionState::SignedOut | ConnectionState::Expired | ConnectionState::Reconnecting => TrayIcon::Offline,
            ConnectionState::AwaitingApproval | ConnectionState::TokenExpiring => TrayIcon::Attention,
            ConnectionState::Connected if self.unread > 0 || !self.pending_devices.is_empty() => TrayIcon::Attention,
            ConnectionState::Connected => TrayIcon::Connected,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600 * 1000;

    fn entry(slug: &str) -> MeshEntry {
        MeshEntry {
            mesh_id: format!("mesh_{slug}"),
            slug: slug.into(),
            name: slug.into(),
            broker_url: "http://127.0.0.1:7900".into(),
            member_id: "mem".into(),
            member_pubkey: "ab".repeat(32),
            display_name: "alice".into(),
            role: "admin".into(),
            joined_at: 0,
            device_linked: true,
        }
    }

    fn signed_in() -> DesktopState {
        let mut state = DesktopState::new();
        state.account = Some(AccountEntry {
            broker_url: "http://127.0.0.1:7900".into(),
            account_id: "acct".into(),
            account_name: "alice".into(),
            email: None,
            device_id: "dev".into(),
            signed_in_at: 0,
        });
        state.token = TokenHealth::Valid { expires_at_ms: 100 * DAY };
        state
    }

    fn with_mesh(mut state: DesktopState, slug: &str, link: LinkState) -> DesktopState {
        state.meshes.insert(format!("mesh_{slug}"), MeshStatus { entry: entry(slug), link, peers: Vec::new() });
        state
    }

    #[test]
    fn the_state_line_tells_the_truth_in_order_of_precedence() {
        let mut state = DesktopState::new();
        assert_eq!(state.connection_state(0), ConnectionState::SignedOut);
        state.awaiting_approval = true;
        assert_eq!(state.connection_state(0), ConnectionState::AwaitingApproval);
        assert_eq!(state.status(0).tray_icon(), TrayIcon::Attention);

        let state = with_mesh(signed_in(), "acme", LinkState::Connected);
        assert_eq!(state.connection_state(0), ConnectionState::Connected);
        assert_eq!(state.status(0).state_line, "Connected as alice · 1 mesh");
        assert_eq!(state.status(0).tray_icon(), TrayIcon::Connected);

        let state = with_mesh(state, "beta", LinkState::Reconnecting("broker restarting".into()));
        assert_eq!(state.connection_state(0), ConnectionState::Reconnecting);
        assert_eq!(state.status(0).state_line, "Reconnecting…");
        assert_eq!(state.status(0).tray_icon(), TrayIcon::Offline);

        let mut expiring = with_mesh(signed_in(), "acme", LinkState::Connected);
        expiring.token = TokenHealth::Valid { expires_at_ms: 2 * DAY + 1000 };
        assert_eq!(expiring.connection_state(0), ConnectionState::TokenExpiring);
        assert_eq!(expiring.status(0).state_line, "Sign-in expires in 2 days");
        assert_eq!(expiring.connection_state(3 * DAY), ConnectionState::TokenExpiring, "past expiry, still unknown");

        let mut expired = with_mesh(signed_in(), "acme", LinkState::Reconnecting("x".into()));
        expired.token = TokenHealth::Expired;
        assert_eq!(expired.connection_state(0), ConnectionState::Expired, "expired wins over reconnecting");
    }

    #[test]
    fn unread_messages_and_waiting_devices_ask_for_attention() {
        let mut state = with_mesh(signed_in(), "acme", LinkState::Connected);
        state.unread = 2;
        let status = state.status(0);
        assert_eq!(status.unread, 2);
        assert_eq!(status.tray_icon(), TrayIcon::Attention);
        assert_eq!(status.meshes[0].connection, "connected");
    }
}
