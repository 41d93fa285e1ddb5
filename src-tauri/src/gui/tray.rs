//! The tray icon and its menu. [`menu_entries`] derives the menu from the status (pure, tested);
//! [`TrayMenuId`] is the one type menu ids are made from and parsed back into.

use std::sync::{Arc, Mutex};

use tauri::image::Image;
use tauri::menu::{CheckMenuItem, Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::{TrayIcon as TauriTray, TrayIconBuilder};
use tauri::{AppHandle, Manager as _, Runtime};

use super::desktop::Desktop;
use super::notify::View;
use super::state::{ConnectionState, StatusView, TrayIcon};

const TRAY_ID: &str = "claudemesh";
const ICON_CONNECTED: &[u8] = include_bytes!("../../../icons/tray-connected.png");
const ICON_ATTENTION: &[u8] = include_bytes!("../../../icons/tray-attention.png");
const ICON_OFFLINE: &[u8] = include_bytes!("../../../icons/tray-offline.png");

/// Every tray menu entry that does something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrayMenuId {
    /// The state line (disabled; shown for information).
    State,
    /// A mesh: opens its peers.
    Mesh(String),
    Unread,
    ApproveDevice,
    Open,
    PauseNotifications,
    Quit,
}

impl TrayMenuId {
    pub fn to_id(&self) -> String {
        match self {
            TrayMenuId::State => "state".into(),
            TrayMenuId::Mesh(id) => format!("mesh:{id}"),
            TrayMenuId::Unread => "unread".into(),
            TrayMenuId::ApproveDevice => "approve".into(),
            TrayMenuId::Open => "open".into(),
            TrayMenuId::PauseNotifications => "pause".into(),
            TrayMenuId::Quit => "quit".into(),
        }
    }

    pub fn parse(id: &str) -> Option<TrayMenuId> {
        Some(match id {
            "state" => TrayMenuId::State,
            "unread" => TrayMenuId::Unread,
            "approve" => TrayMenuId::ApproveDevice,
            "open" => TrayMenuId::Open,
            "pause" => TrayMenuId::PauseNotifications,
            "quit" => TrayMenuId::Quit,
            other => TrayMenuId::Mesh(other.strip_prefix("mesh:")?.to_owned()),
        })
    }
}

/// One line of the tray menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MenuEntry {
    Item { id: TrayMenuId, label: String, enabled: bool },
    Check { id: TrayMenuId, label: String, checked: bool },
    Separator,
}

/// The menu for a status: the state line, meshes with online counts, unread, Approve a
/// device…, Open, Pause notifications, Quit.
pub fn menu_entries(status: &StatusView) -> Vec<MenuEntry> {
    let item = |id: TrayMenuId, label: String, enabled: bool| MenuEntry::Item { id, label, enabled };
    let mut entries = vec![item(TrayMenuId::State, status.state_line.clone(), false), MenuEntry::Separator];
    for mesh in &status.meshes {
        let online = match mesh.connection {
            "connected" => format!("{} online", mesh.online),
            other => other.to_owned(),
        };
        entries.push(item(TrayMenuId::Mesh(mesh.id.clone()), format!("{} — {online}", mesh.name), true));
    }
    if !status.meshes.is_empty() {
        entries.push(MenuEntry::Separator);
    }
    let unread = match status.unread {
        0 => "No unread messages".to_owned(),
        1 => "1 unread message".to_owned(),
        n => format!("{n} unread messages"),
    };
    entries.push(item(TrayMenuId::Unread, unread, status.account.is_some()));
    let approve = match status.pending_devices.len() {
        0 => "Approve a device…".to_owned(),
        n => format!("Approve a device… ({n} waiting)"),
    };
    let signed_in = !matches!(status.state, ConnectionState::SignedOut | ConnectionState::AwaitingApproval);
    entries.push(item(TrayMenuId::ApproveDevice, approve, signed_in));
    entries.push(MenuEntry::Separator);
    entries.push(item(TrayMenuId::Open, "Open claudemesh".into(), true));
    entries.push(MenuEntry::Check {
        id: TrayMenuId::PauseNotifications,
        label: "Pause notifications".into(),
        checked: status.paused,
    });
    entries.push(MenuEntry::Separator);
    entries.push(item(TrayMenuId::Quit, "Quit claudemesh".into(), true));
    entries
}

fn icon_bytes(icon: TrayIcon) -> &'static [u8] {
    match icon {
        TrayIcon::Connected => ICON_CONNECTED,
        TrayIcon::Attention => ICON_ATTENTION,
        TrayIcon::Offline => ICON_OFFLINE,
    }
}

/// What the tray shows now, so updates that change nothing touch nothing.
#[derive(Default)]
pub struct TrayShown {
    entries: Mutex<Vec<MenuEntry>>,
    icon: Mutex<Option<TrayIcon>>,
}

fn build_menu<R: Runtime>(app: &AppHandle<R>, entries: &[MenuEntry]) -> tauri::Result<Menu<R>> {
    let menu = Menu::new(app)?;
    for entry in entries {
        match entry {
            MenuEntry::Item { id, label, enabled } => {
                menu.append(&MenuItem::with_id(app, id.to_id(), label, *enabled, None::<&str>)?)?
            }
            MenuEntry::Check { id, label, checked } => {
                menu.append(&CheckMenuItem::with_id(app, id.to_id(), label, true, *checked, None::<&str>)?)?
            }
            MenuEntry::Separator => menu.append(&PredefinedMenuItem::separator(app)?)?,
        }
    }
    Ok(menu)
}

/// Creates the tray icon with its menu.
pub fn create<R: Runtime>(app: &AppHandle<R>, status: &StatusView) -> tauri::Result<TauriTray<R>> {
    let entries = menu_entries(status);
    let icon = status.tray_icon();
    let tray = TrayIconBuilder::with_id(TRAY_ID)
        .icon(Image::from_bytes(icon_bytes(icon))?)
        .tooltip(format!("claudemesh — {}", status.state_line))
        .menu(&build_menu(app, &entries)?)
        .show_menu_on_left_click(true)
        .on_menu_event(|app, event| on_menu(app, event.id().as_ref()))
        .build(app)?;
    let shown = TrayShown::default();
    *shown.entries.lock().expect("tray lock") = entries;
    *shown.icon.lock().expect("tray lock") = Some(icon);
    app.manage(shown);
    Ok(tray)
}

/// Brings the tray up to date with `status`.
pub fn update<R: Runtime>(app: &AppHandle<R>, status: &StatusView) {
    let (Some(tray), Some(shown)) = (app.tray_by_id(TRAY_ID), app.try_state::<TrayShown>()) else { return };
    let entries = menu_entries(status);
    let menu_changed = *shown.entries.lock().expect("tray lock") != entries;
    if menu_changed {
        match build_menu(app, &entries) {
            Ok(menu) => {
                if let Err(error) = tray.set_menu(Some(menu)) {
                    tracing::warn!(%error, "could not update the tray menu");
                }
                let _ = tray.set_tooltip(Some(format!("claudemesh — {}", status.state_line)));
                *shown.entries.lock().expect("tray lock") = entries;
            }
            Err(error) => tracing::warn!(%error, "could not build the tray menu"),
        }
    }
    let icon = status.tray_icon();
    let mut current = shown.icon.lock().expect("tray lock");
    if *current != Some(icon)
        && let Ok(image) = Image::from_bytes(icon_bytes(icon))
        && tray.set_icon(Some(image)).is_ok()
    {
        *current = Some(icon);
    }
}

fn on_menu<R: Runtime>(app: &AppHandle<R>, id: &str) {
    let Some(id) = TrayMenuId::parse(id) else { return };
    let Some(desktop) = app.try_state::<Arc<Desktop>>().map(|d| d.inner().clone()) else { return };
    match id {
        TrayMenuId::State => {}
        TrayMenuId::Mesh(mesh_id) => desktop.navigate(View::Peers, Some(mesh_id)),
        TrayMenuId::Unread => desktop.navigate(View::Messages, None),
        TrayMenuId::ApproveDevice => desktop.navigate(View::Approve, None),
        TrayMenuId::Open => super::show_window(app),
        TrayMenuId::PauseNotifications => {
            let paused = desktop.settings().notifications.paused;
            if let Err(error) = desktop.set_paused(!paused) {
                tracing::warn!(%error, "could not change the notification setting");
            }
        }
        TrayMenuId::Quit => {
            let app = app.clone();
            tauri::async_runtime::spawn(async move { super::quit(app, desktop).await });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gui::state::{AccountView, LocalBrokerView, MeshSummary};

    fn status() -> StatusView {
        StatusView {
            state: ConnectionState::Connected,
            state_line: "Connected as alice · 1 mesh".into(),
            account: Some(AccountView { name: "alice".into(), broker_url: "http://b".into(), local: true }),
            meshes: vec![MeshSummary {
                id: "mesh_1".into(),
                slug: "acme".into(),
                name: "acme".into(),
                role: "admin".into(),
                display_name: "alice".into(),
                broker_url: "http://b".into(),
                member_pubkey: "ab".repeat(32),
                connection: "connected",
                connection_detail: None,
                online: 4,
            }],
            unread: 3,
            pending_devices: Vec::new(),
            paused: true,
            local_broker: LocalBrokerView::default(),
        }
    }

    #[test]
    fn the_menu_has_the_state_meshes_unread_approve_open_pause_and_quit() {
        let entries = menu_entries(&status());
        let labels: Vec<String> = entries
            .iter()
            .filter_map(|e| match e {
                MenuEntry::Item { label, .. } | MenuEntry::Check { label, .. } => Some(label.clone()),
                MenuEntry::Separator => None,
            })
            .collect();
        assert_eq!(
            labels,
            [
                "Connected as alice · 1 mesh",
                "acme — 4 online",
                "3 unread messages",
                "Approve a device…",
                "Open claudemesh",
                "Pause notifications",
                "Quit claudemesh"
            ]
        );
        assert!(matches!(&entries[0], MenuEntry::Item { enabled: false, .. }), "the state line is information");
        assert!(entries.contains(&MenuEntry::Check {
            id: TrayMenuId::PauseNotifications,
            label: "Pause notifications".into(),
            checked: true
        }));
    }

    #[test]
    fn menu_ids_round_trip() {
        for id in [
            TrayMenuId::State,
            TrayMenuId::Mesh("mesh_x:y".into()),
            TrayMenuId::Unread,
            TrayMenuId::ApproveDevice,
            TrayMenuId::Open,
            TrayMenuId::PauseNotifications,
            TrayMenuId::Quit,
        ] {
            assert_eq!(TrayMenuId::parse(&id.to_id()), Some(id));
        }
        assert_eq!(TrayMenuId::parse("nonsense"), None);
    }
}
