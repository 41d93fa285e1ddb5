//! The desktop app's own settings (`<config>/desktop.json`, owner-only): the local broker,
//! notifications, start at login. No secrets: those are in the keystore.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::{ConfigDir, ConfigError, write_private_atomic};

/// The port the local broker asks for first (the one `claudemesh-broker` uses by default).
pub const DEFAULT_LOCAL_PORT: u16 = 7900;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DesktopSettings {
    pub local_broker: LocalBrokerSettings,
    pub notifications: NotificationSettings,
    pub start_at_login: bool,
    /// The remote broker last signed in to (pre-filled in the sign-in view).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalBrokerSettings {
    /// Run the embedded broker while the app runs.
    pub enabled: bool,
    pub port: u16,
    /// Where its SQLite store lives; `<config>/local-broker` when unset.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Listen on every interface (0.0.0.0) so other machines on the LAN can join; loopback only
    /// otherwise.
    pub share_on_lan: bool,
}

impl Default for LocalBrokerSettings {
    fn default() -> Self {
        LocalBrokerSettings { enabled: false, port: DEFAULT_LOCAL_PORT, data_dir: None, share_on_lan: false }
    }
}

impl LocalBrokerSettings {
    pub fn data_dir(&self, config_dir: &ConfigDir) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| config_dir.root().join("local-broker"))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NotificationSettings {
    /// Quiet mode ("Pause notifications"): nothing is shown.
    pub paused: bool,
    /// Per mesh id; a mesh absent here has the defaults.
    pub meshes: BTreeMap<String, MeshNotifications>,
}

impl NotificationSettings {
    pub fn for_mesh(&self, mesh_id: &str) -> MeshNotifications {
        self.meshes.get(mesh_id).copied().unwrap_or_default()
    }
}

/// Which events of one mesh notify: joins on, leaves and messages off, by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MeshNotifications {
    pub joins: bool,
    pub leaves: bool,
    pub messages: bool,
}

impl Default for MeshNotifications {
    fn default() -> Self {
        MeshNotifications { joins: true, leaves: false, messages: false }
    }
}

fn settings_file(config_dir: &ConfigDir) -> PathBuf {
    config_dir.root().join("desktop.json")
}

pub fn load(config_dir: &ConfigDir) -> Result<DesktopSettings, ConfigError> {
    let path = settings_file(config_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ConfigError::Parse { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DesktopSettings::default()),
        Err(source) => Err(ConfigError::Io { path, source }),
    }
}

pub fn save(config_dir: &ConfigDir, settings: &DesktopSettings) -> Result<(), ConfigError> {
    config_dir.ensure()?;
    let mut text = serde_json::to_vec_pretty(settings).expect("settings serialize");
    text.push(b'\n');
    write_private_atomic(&settings_file(config_dir), &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_notify_joins_only_and_survive_a_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_dir = ConfigDir::at(dir.path().to_owned());
        let mut settings = load(&config_dir).expect("defaults");
        assert_eq!(
            settings.notifications.for_mesh("mesh_x"),
            MeshNotifications { joins: true, leaves: false, messages: false }
        );
        assert!(!settings.local_broker.share_on_lan, "loopback only unless asked");
        settings.notifications.meshes.insert("mesh_x".into(), MeshNotifications { joins: false, ..Default::default() });
        settings.local_broker.enabled = true;
        save(&config_dir, &settings).expect("saves");
        assert_eq!(load(&config_dir).expect("loads"), settings);
        assert_eq!(settings.local_broker.data_dir(&config_dir), dir.path().join("local-broker"));
    }
}
