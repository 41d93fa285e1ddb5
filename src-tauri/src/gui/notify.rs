//! Which native notifications to show, and showing them.
//!
//! [`NotificationPolicy`] is pure: it turns events into [`Toast`]s, respecting per-mesh
//! settings and quiet mode, coalescing join storms per mesh, and never repeating a token
//! warning. [`show`] hands a toast to the platform through `notify-rust`; a toast with a `key`
//! replaces the platform notification shown earlier for that key (one "5 peers joined acme",
//! not five stacked notifications).

use std::collections::{HashMap, HashSet};

use broker_core::protocol::account::PendingDevice;
use serde::Serialize;
use tokio::time::Instant;

use super::settings::NotificationSettings;
use super::state::ConnectionState;
use crate::joins::JoinStorms;

/// A view of the window, for notifications and tray entries that open it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum View {
    Welcome,
    SignIn,
    Meshes,
    Peers,
    Messages,
    Devices,
    Approve,
    Settings,
}

/// Where clicking a notification leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Navigate {
    pub view: View,
    /// A mesh id, a conversation key or a user code, depending on the view.
    pub param: Option<String>,
}

/// One notification to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Toast {
    /// Notifications with the same key replace each other.
    pub key: String,
    pub summary: String,
    pub body: String,
    pub open: Option<Navigate>,
}

/// A mesh as notifications name it.
#[derive(Debug, Clone, Copy)]
pub struct MeshLabel<'a> {
    pub id: &'a str,
    pub name: &'a str,
}

#[derive(Debug, Default)]
pub struct NotificationPolicy {
    storms: JoinStorms,
    /// The last token state a notification was shown for.
    token_warned: Option<ConnectionState>,
    /// Device-login user codes already announced.
    announced_devices: HashSet<String>,
}

impl NotificationPolicy {
    /// A peer joined (or returned). The first join of a quiet mesh shows at once; further joins
    /// within [`crate::joins::JOIN_QUIET`] are summed up by [`NotificationPolicy::flush`].
    pub fn peer_joined(
        &mut self,
        settings: &NotificationSettings,
        mesh: MeshLabel<'_>,
        name: &str,
        own_member: bool,
        now: Instant,
    ) -> Option<Toast> {
        if own_member || settings.paused || !settings.for_mesh(mesh.id).joins {
            return None;
        }
        self.storms.join(mesh.id, mesh.name, name, now).then(|| Toast {
            key: format!("joins:{}", mesh.id),
            summary: format!("{name} joined {}", mesh.name),
            body: "A new peer is online in the mesh.".into(),
            open: Some(Navigate { view: View::Peers, param: Some(mesh.id.to_owned()) }),
        })
    }

    /// Ends the storms whose quiet period is over; a storm with more than its first join is
    /// summed up in one toast that replaces the first.
    pub fn flush(&mut self, settings: &NotificationSettings, now: Instant) -> Vec<Toast> {
        self.storms
            .end(now)
            .into_iter()
            .filter(|storm| storm.names.len() >= 2 && !settings.paused)
            .map(|storm| Toast {
                key: format!("joins:{}", storm.mesh_id),
                summary: format!("{} peers joined {}", storm.names.len(), storm.mesh_name),
                body: storm.names_line(),
                open: Some(Navigate { view: View::Peers, param: Some(storm.mesh_id) }),
            })
            .collect()
    }

    /// When [`NotificationPolicy::flush`] has work next.
    pub fn next_flush(&self) -> Option<Instant> {
        self.storms.next_end()
    }

    /// The broker held messages between this member and a peer (a flood or a reply loop):
    /// the person should know whatever the mesh's message setting, unless notifications are
    /// paused. Opens the conversation with that peer, where the release button is.
    pub fn pair_held(
        &mut self,
        settings: &NotificationSettings,
        mesh: MeshLabel<'_>,
        detail: &str,
        conversation: &str,
    ) -> Option<Toast> {
        if settings.paused {
            return None;
        }
        Some(Toast {
            key: format!("held:{conversation}"),
            summary: format!("Messages held in {}", mesh.name),
            body: format!("{detail}. Open the conversation to release them."),
            open: Some(Navigate { view: View::Messages, param: Some(conversation.to_owned()) }),
        })
    }

    pub fn peer_left(
        &mut self,
        settings: &NotificationSettings,
        mesh: MeshLabel<'_>,
        name: &str,
        own_member: bool,
    ) -> Option<Toast> {
        if own_member || settings.paused || !settings.for_mesh(mesh.id).leaves {
            return None;
        }
        Some(Toast {
            key: format!("leaves:{}", mesh.id),
            summary: format!("{name} left {}", mesh.name),
            body: "The peer went offline.".into(),
            open: Some(Navigate { view: View::Peers, param: Some(mesh.id.to_owned()) }),
        })
    }

    pub fn message(
        &mut self,
        settings: &NotificationSettings,
        mesh: MeshLabel<'_>,
        from: &str,
        text: &str,
        conversation: &str,
    ) -> Option<Toast> {
        if settings.paused || !settings.for_mesh(mesh.id).messages {
            return None;
        }
        let mut body: String = text.chars().take(140).collect();
        if text.chars().count() > 140 {
            body.push('…');
        }
        Some(Toast {
            key: format!("message:{conversation}"),
            summary: format!("{from} in {}", mesh.name),
            body,
            open: Some(Navigate { view: View::Messages, param: Some(conversation.to_owned()) }),
        })
    }

    /// A scheduled message (a reminder) reached this person: one they or their sessions
    /// scheduled (`from` none), or a peer's. Shown unless notifications are paused: someone
    /// asked for it to interrupt at that time, whatever the message setting says.
    pub fn reminder(
        &mut self,
        settings: &NotificationSettings,
        mesh: MeshLabel<'_>,
        from: Option<&str>,
        text: &str,
        conversation: &str,
    ) -> Option<Toast> {
        if settings.paused {
            return None;
        }
        let summary = match from {
            Some(from) => format!("Reminder from {from} in {}", mesh.name),
            None => format!("Reminder in {}", mesh.name),
        };
        let mut body: String = text.chars().take(140).collect();
        if text.chars().count() > 140 {
            body.push('…');
        }
        Some(Toast {
            key: format!("reminder:{conversation}"),
            summary,
            body,
            open: Some(Navigate { view: View::Messages, param: Some(conversation.to_owned()) }),
        })
    }

    /// Device logins waiting for this account: one toast per request, the first time it is seen.
    /// The listing carries no user code (the approver types the one the device shows), so a
    /// request is known by its device and time, and the toast opens an empty Approve view.
    pub fn pending_devices(&mut self, settings: &NotificationSettings, pending: &[PendingDevice]) -> Vec<Toast> {
        let mut toasts = Vec::new();
        for request in pending {
            let id = request_id(request);
            if !self.announced_devices.insert(id.clone()) || settings.paused {
                continue;
            }
            toasts.push(Toast {
                key: format!("device:{id}"),
                summary: format!("{} wants to sign in to your account", request.hostname),
                body: format!(
                    "{} {} from {}. If this is you, approve it in claudemesh with the code that device shows.",
                    request.platform, request.arch, request.ip
                ),
                open: Some(Navigate { view: View::Approve, param: None }),
            });
        }
        toasts
    }

    /// A toast when the sign-in starts expiring or has expired; once per state, and the
    /// expired one replaces the expiring one.
    pub fn token(&mut self, settings: &NotificationSettings, state: ConnectionState, line: &str) -> Option<Toast> {
        let relevant = matches!(state, ConnectionState::TokenExpiring | ConnectionState::Expired);
        if !relevant {
            if state == ConnectionState::Connected {
                self.token_warned = None;
            }
            return None;
        }
        if self.token_warned == Some(state) || settings.paused {
            return None;
        }
        self.token_warned = Some(state);
        Some(Toast {
            key: "token".into(),
            summary: line.to_owned(),
            body: if state == ConnectionState::Expired {
                "This device's sign-in no longer works. Open claudemesh to sign in again.".into()
            } else {
                "Use claudemesh (or sign in again) before it expires.".into()
            },
            open: Some(Navigate { view: View::SignIn, param: None }),
        })
    }
}

/// Shows toasts through the platform's notification service. Remembers the platform id shown
/// for each key so that a later toast with the same key replaces it.
#[derive(Default)]
pub struct Notifier {
    shown: std::sync::Mutex<HashMap<String, u32>>,
}

impl Notifier {
    /// Shows `toast` (blocking: a D-Bus round trip on Linux; call it off the async runtime).
    /// `on_click` runs when the person clicks it, where the platform reports that.
    pub fn show(&self, toast: &Toast, on_click: impl FnOnce() + Send + 'static) -> Result<(), String> {
        let mut notification = notify_rust::Notification::new();
        notification.appname("claudemesh").summary(&toast.summary).body(&toast.body).icon("claudemesh");
        #[cfg(all(unix, not(target_os = "macos")))]
        {
            notification.action("default", "Open");
            if let Some(previous) = self.shown.lock().expect("notifier lock").get(&toast.key) {
                notification.id(*previous);
            }
        }
        let handle = notification.show().map_err(|e| e.to_string())?;
        #[cfg(all(unix, not(target_os = "macos")))]
        {
            self.shown.lock().expect("notifier lock").insert(toast.key.clone(), handle.id());
            if toast.open.is_some() {
                // Waits for the click or the close on its own thread; ends with the notification.
                std::thread::spawn(move || {
                    handle.wait_for_action(|action| {
                        if action == "default" {
                            on_click();
                        }
                    });
                });
            }
        }
        #[cfg(not(all(unix, not(target_os = "macos"))))]
        {
            let _ = (handle, on_click);
        }
        Ok(())
    }
}

/// What tells two device-login requests apart in the account's pending list.
pub fn request_id(request: &PendingDevice) -> String {
    format!("{}|{}|{}", request.hostname, request.ip, request.requested_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gui::settings::MeshNotifications;
    use crate::joins::JOIN_QUIET;
    use std::time::Duration;

    const ACME: MeshLabel<'static> = MeshLabel { id: "mesh_acme", name: "acme" };

    #[tokio::test(start_paused = true)]
    async fn a_join_storm_is_one_immediate_toast_then_one_summary() {
        let settings = NotificationSettings::default();
        let mut policy = NotificationPolicy::default();
        let start = Instant::now();
        let first = policy.peer_joined(&settings, ACME, "alice", false, start).expect("first join shows at once");
        assert_eq!(first.summary, "alice joined acme");
        for (i, name) in ["bob", "carol", "dave", "erin"].iter().enumerate() {
            let at = start + Duration::from_millis(200 * (i as u64 + 1));
            assert_eq!(policy.peer_joined(&settings, ACME, name, false, at), None, "{name} is part of the storm");
        }
        assert!(policy.flush(&settings, start + Duration::from_millis(900)).is_empty(), "still storming");
        let due = policy.next_flush().expect("a storm is open");
        let summary = policy.flush(&settings, due);
        assert_eq!(summary.len(), 1);
        assert_eq!(summary[0].summary, "5 peers joined acme");
        assert_eq!(summary[0].body, "alice, bob, carol and 2 more");
        assert_eq!(summary[0].key, first.key, "the summary replaces the first toast");
        assert!(policy.next_flush().is_none());

        // After the storm, a lone join shows at once again, and alone it needs no summary.
        let later = due + Duration::from_secs(10);
        assert!(policy.peer_joined(&settings, ACME, "frank", false, later).is_some());
        assert!(policy.flush(&settings, later + JOIN_QUIET).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn own_sessions_quiet_mode_and_mesh_settings_silence_joins() {
        let mut settings = NotificationSettings::default();
        let mut policy = NotificationPolicy::default();
        let now = Instant::now();
        assert_eq!(policy.peer_joined(&settings, ACME, "me", true, now), None, "never for my own sessions");
        settings.meshes.insert(ACME.id.into(), MeshNotifications { joins: false, ..MeshNotifications::default() });
        assert_eq!(policy.peer_joined(&settings, ACME, "bob", false, now), None, "joins off for this mesh");
        let other = MeshLabel { id: "mesh_beta", name: "beta" };
        assert!(policy.peer_joined(&settings, other, "bob", false, now).is_some(), "other meshes keep defaults");
        settings.paused = true;
        let third = MeshLabel { id: "mesh_gamma", name: "gamma" };
        assert_eq!(policy.peer_joined(&settings, third, "bob", false, now), None, "quiet mode");

        let defaults = NotificationSettings::default();
        assert_eq!(policy.peer_left(&defaults, ACME, "bob", false), None, "leaves are off by default");
        assert_eq!(policy.message(&defaults, ACME, "bob", "hi", "peer:x"), None, "messages are off by default");
        let held =
            policy.pair_held(&defaults, ACME, "bob sent alice too much", "peer:x").expect("held pairs always notify");
        assert_eq!(held.open.and_then(|n| n.param).as_deref(), Some("peer:x"));
        let paused = NotificationSettings { paused: true, ..defaults.clone() };
        assert_eq!(policy.pair_held(&paused, ACME, "bob sent alice too much", "peer:x"), None);
    }

    #[test]
    fn a_reminder_says_whose_it_is_and_shows_unless_paused() {
        let mut settings = NotificationSettings::default();
        let mut policy = NotificationPolicy::default();
        assert_eq!(policy.message(&settings, ACME, "bob", "hi", "conv"), None, "messages are off by default");
        let own = policy.reminder(&settings, ACME, None, "stand-up", "conv").expect("reminders are not");
        assert_eq!((own.summary.as_str(), own.body.as_str()), ("Reminder in acme", "stand-up"));
        let from_bob = policy.reminder(&settings, ACME, Some("bob"), "release", "conv").expect("shown");
        assert_eq!(from_bob.summary, "Reminder from bob in acme");
        settings.paused = true;
        assert_eq!(policy.reminder(&settings, ACME, None, "stand-up", "conv"), None, "quiet mode");
    }

    #[test]
    fn token_warnings_show_once_per_state_and_device_requests_once_each() {
        let settings = NotificationSettings::default();
        let mut policy = NotificationPolicy::default();
        let expiring = policy.token(&settings, ConnectionState::TokenExpiring, "Sign-in expires in 2 days");
        assert!(expiring.is_some());
        assert_eq!(policy.token(&settings, ConnectionState::TokenExpiring, "Sign-in expires in 1 days"), None);
        assert_eq!(policy.token(&settings, ConnectionState::Reconnecting, "Reconnecting…"), None);
        let expired = policy.token(&settings, ConnectionState::Expired, "Sign-in expired").expect("expired shows");
        assert_eq!(expired.key, expiring.expect("shown").key, "replaces, not stacks");

        let request = PendingDevice {
            user_code: String::new(),
            hostname: "build-box".into(),
            platform: "linux".into(),
            arch: "x86_64".into(),
            app_version: "0.1.0".into(),
            ip: "10.0.0.7".into(),
            requested_at: "2026-11-28T10:00:00.000Z".into(),
            expires_at: String::new(),
            status: "pending".into(),
            confirm_key: None,
        };
        let toasts = policy.pending_devices(&settings, std::slice::from_ref(&request));
        assert_eq!(toasts.len(), 1);
        assert_eq!(
            toasts[0].open,
            Some(Navigate { view: View::Approve, param: None }),
            "the code is typed, not carried"
        );
        assert!(policy.pending_devices(&settings, std::slice::from_ref(&request)).is_empty(), "announced once");
        let later = PendingDevice { requested_at: "2026-11-28T10:01:00.000Z".into(), ..request };
        assert_eq!(policy.pending_devices(&settings, &[later]).len(), 1, "a second request from the same host is new");
    }
}
