//! The config directory (`~/.claudemesh`, or `CLAUDEMESH_CONFIG_DIR`) and `config.json`, the
//! list of joined meshes. No secrets live here: member secret keys are in the [`crate::keystore`].
//!
//! Every file this module writes is owner-only (0600, directories 0700) and replaced atomically
//! (write a temporary file, fsync, rename), so a crash never leaves a half-written config.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Overrides the config directory.
pub const CONFIG_DIR_ENV: &str = "CLAUDEMESH_CONFIG_DIR";
/// Version of `config.json` this code writes.
pub const CONFIG_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot find the home directory; set {CONFIG_DIR_ENV} to a directory for claudemesh's files")]
    NoHome,
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a valid claudemesh config ({source}); fix or remove it")]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("{path} was written by a newer claudemesh (config version {version}); upgrade claudemesh")]
    TooNew { path: PathBuf, version: u32 },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ConfigError + '_ {
    move |source| ConfigError::Io { path: path.to_owned(), source }
}

/// Where claudemesh keeps its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigDir {
    root: PathBuf,
}

impl ConfigDir {
    /// `$CLAUDEMESH_CONFIG_DIR`, else `~/.claudemesh`.
    pub fn from_env() -> Result<ConfigDir, ConfigError> {
        if let Some(dir) = std::env::var_os(CONFIG_DIR_ENV).filter(|d| !d.is_empty()) {
            return Ok(ConfigDir::at(PathBuf::from(dir)));
        }
        Ok(ConfigDir::at(ConfigDir::default_root().ok_or(ConfigError::NoHome)?))
    }

    /// `~/.claudemesh`, when there is a home directory.
    pub fn default_root() -> Option<PathBuf> {
        std::env::home_dir().filter(|h| !h.as_os_str().is_empty()).map(|home| home.join(".claudemesh"))
    }

    pub fn at(root: PathBuf) -> ConfigDir {
        ConfigDir { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.json")
    }

    pub fn inbox_file(&self) -> PathBuf {
        self.root.join("inbox.db")
    }

    /// Secret keys of the file keystore.
    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// Bridge sockets and session locks (runtime state, safe to delete when no bridge runs).
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("run")
    }

    /// Creates `path` (and parents) owner-only.
    pub fn ensure_private_dir(path: &Path) -> Result<(), ConfigError> {
        std::fs::create_dir_all(path).map_err(io_error(path))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io_error(path))?;
        }
        Ok(())
    }

    pub fn ensure(&self) -> Result<(), ConfigError> {
        ConfigDir::ensure_private_dir(&self.root)
    }

    pub fn load(&self) -> Result<Config, ConfigError> {
        let path = self.config_file();
        let text = match std::fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        let config: Config =
            serde_json::from_slice(&text).map_err(|source| ConfigError::Parse { path: path.clone(), source })?;
        if config.version > CONFIG_VERSION {
            return Err(ConfigError::TooNew { path, version: config.version });
        }
        Ok(config)
    }

    pub fn save(&self, config: &Config) -> Result<(), ConfigError> {
        self.ensure()?;
        let mut text = serde_json::to_vec_pretty(config).expect("config serializes");
        text.push(b'\n');
        write_private_atomic(&self.config_file(), &text)
    }
}

/// Writes `contents` to `path` owner-only, atomically: a crash leaves either the old file or
/// the new one. The parent directory must exist.
pub fn write_private_atomic(path: &Path, contents: &[u8]) -> Result<(), ConfigError> {
    let parent = path.parent().unwrap_or_else(|| Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        // The rename is durable once the directory entry is.
        if let Ok(dir) = std::fs::File::open(parent) {
            let _ = dir.sync_all();
        }
        Ok(())
    };
    write().map_err(|source| {
        let _ = std::fs::remove_file(&temporary);
        ConfigError::Io { path: path.to_owned(), source }
    })
}

/// `config.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    pub version: u32,
    #[serde(default)]
    pub meshes: Vec<MeshEntry>,
    /// The account this device is signed in to (`claudemesh login`); its token is in the keystore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<AccountEntry>,
}

impl Default for Config {
    fn default() -> Self {
        Config { version: CONFIG_VERSION, meshes: Vec::new(), account: None }
    }
}

/// The signed-in account (no secrets: the device token is in the keystore).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountEntry {
    /// The broker's base URL (`http(s)://host:port`).
    pub broker_url: String,
    pub account_id: String,
    pub account_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub device_id: String,
    /// Unix milliseconds.
    pub signed_in_at: u64,
}

/// One joined mesh. The member's secret key is in the keystore under [`MeshEntry::key_account`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshEntry {
    pub mesh_id: String,
    pub slug: String,
    pub name: String,
    /// The broker's base URL (`http(s)://host:port`).
    pub broker_url: String,
    pub member_id: String,
    /// This device's member key for the mesh (64 hex).
    pub member_pubkey: String,
    pub display_name: String,
    pub role: String,
    /// Unix milliseconds.
    pub joined_at: u64,
    /// The broker links this member to this device's sign-in (enrolled, or joined while signed
    /// in): signing out or revoking the device removes it.
    #[serde(default)]
    pub device_linked: bool,
}

impl MeshEntry {
    /// The keystore account holding this membership's secret key.
    pub fn key_account(&self) -> String {
        key_account(&self.mesh_id, &self.member_pubkey)
    }
}

pub fn key_account(mesh_id: &str, member_pubkey: &str) -> String {
    format!("member:{mesh_id}:{member_pubkey}")
}

impl Config {
    /// The mesh named by slug, id or name (case-insensitive).
    pub fn find(&self, name: &str) -> Option<&MeshEntry> {
        let name = name.trim();
        self.meshes.iter().find(|m| m.slug == name || m.mesh_id == name).or_else(|| {
            self.meshes.iter().find(|m| m.slug.eq_ignore_ascii_case(name) || m.name.eq_ignore_ascii_case(name))
        })
    }
}

/// The display name when the person gave none: `user@host`.
pub fn default_display_name() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("USERNAME")).unwrap_or_default();
    let host = gethostname::gethostname().to_string_lossy().split('.').next().unwrap_or_default().to_owned();
    match (user.is_empty(), host.is_empty()) {
        (false, false) => format!("{user}@{host}"),
        (false, true) => user,
        (true, false) => host,
        (true, true) => "peer".into(),
    }
}

/// `name` unless it is missing or blank, else [`default_display_name`].
pub fn display_name_or_default(name: Option<String>) -> String {
    name.filter(|n| !n.trim().is_empty()).unwrap_or_else(default_display_name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(slug: &str) -> MeshEntry {
        MeshEntry {
            mesh_id: format!("mesh_{slug}"),
            slug: slug.into(),
            name: slug.to_uppercase(),
            broker_url: "http://127.0.0.1:7900".into(),
            member_id: "mem_1".into(),
            member_pubkey: "ab".repeat(32),
            display_name: "alice".into(),
            role: "member".into(),
            joined_at: 1,
            device_linked: false,
        }
    }

    #[test]
    fn missing_config_is_empty_and_saved_config_round_trips_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_dir = ConfigDir::at(dir.path().join("nested/claudemesh"));
        assert_eq!(config_dir.load().expect("loads"), Config::default());

        let config = Config { version: CONFIG_VERSION, meshes: vec![entry("acme"), entry("beta")], account: None };
        config_dir.save(&config).expect("saves");
        assert_eq!(config_dir.load().expect("loads"), config);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
            assert_eq!(mode(&config_dir.config_file()), 0o600);
            assert_eq!(mode(config_dir.root()), 0o700);
        }
        let leftovers: Vec<_> = std::fs::read_dir(config_dir.root())
            .expect("lists")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary files left behind");
    }

    #[test]
    fn a_config_from_a_newer_version_or_garbage_is_refused_with_advice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_dir = ConfigDir::at(dir.path().to_owned());
        std::fs::write(config_dir.config_file(), br#"{"version": 99, "meshes": []}"#).expect("writes");
        let error = config_dir.load().expect_err("too new");
        assert!(error.to_string().contains("upgrade claudemesh"), "{error}");
        std::fs::write(config_dir.config_file(), b"{not json").expect("writes");
        let error = config_dir.load().expect_err("garbage");
        assert!(error.to_string().contains("fix or remove it"), "{error}");
    }

    #[test]
    fn meshes_are_found_by_slug_id_or_name() {
        let config = Config { version: CONFIG_VERSION, meshes: vec![entry("acme"), entry("beta")], account: None };
        assert_eq!(config.find("beta").map(|m| m.slug.as_str()), Some("beta"));
        assert_eq!(config.find("mesh_acme").map(|m| m.slug.as_str()), Some("acme"));
        assert_eq!(config.find("ACME").map(|m| m.slug.as_str()), Some("acme"));
        assert!(config.find("gamma").is_none());
    }
}
