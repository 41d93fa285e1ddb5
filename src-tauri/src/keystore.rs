//! Where member secret keys and this device's sign-in token live.
//!
//! [`KeyStore`] has three implementations: [`OsKeychain`] (the platform's keychain through the
//! `keyring` crate: Keychain Services, Credential Manager, Secret Service), [`FileKeyStore`]
//! (one owner-only file per key under `<config>/keys/`, for headless machines without a
//! keychain service) and [`MemoryKeyStore`] (unit tests). [`open`] picks one:
//!
//! - `CLAUDEMESH_KEYSTORE=file` — the file store, silently.
//! - `CLAUDEMESH_KEYSTORE=keychain` — the OS keychain, or an error when there is none.
//! - unset (or `auto`) — the OS keychain when it answers; otherwise the file store, with one
//!   warning on stderr per process. Keys stored in files while no keychain answered stay
//!   readable after a keychain appears (reads fall back to the file store).
//!
//! Keychain calls block (D-Bus round trips on Linux): call them off the async runtime
//! ([`blocking`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use zeroize::Zeroizing;

use crate::config::{ConfigDir, write_private_atomic};

pub const KEYSTORE_ENV: &str = "CLAUDEMESH_KEYSTORE";
/// The keystore account holding this device's bearer token for the account API.
pub const DEVICE_TOKEN: &str = "device-token";
/// The keystore account holding this device's confirmation key (ed25519 seed, hex): it signs
/// requests the broker wants freshly confirmed (revoking another device, minting a login token,
/// approving a device).
pub const CONFIRM_KEY: &str = "device-confirm-key";
/// The service name entries of the default config directory are filed under in the OS keychain.
pub const KEYCHAIN_SERVICE: &str = "claudemesh";

/// The keychain service for a config directory: [`KEYCHAIN_SERVICE`] for `~/.claudemesh`, and
/// `claudemesh-<hash of the path>` for any other (`CLAUDEMESH_CONFIG_DIR`), so two profiles on
/// one machine never overwrite each other's device token.
pub fn keychain_service(config_dir: &ConfigDir) -> String {
    if ConfigDir::default_root().as_deref() == Some(config_dir.root()) {
        return KEYCHAIN_SERVICE.to_owned();
    }
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(config_dir.root().as_os_str().as_encoded_bytes());
    format!("{KEYCHAIN_SERVICE}-{}", hex::encode(&digest[..6]))
}

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("the OS keychain is not available ({0}); set {KEYSTORE_ENV}=file to keep keys in owner-only files")]
    KeychainUnavailable(String),
    #[error("the OS keychain failed: {0}")]
    Keychain(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("unknown {KEYSTORE_ENV} value {0:?}: use file, keychain or auto")]
    UnknownChoice(String),
    #[error("invalid keystore account name {0:?}")]
    BadAccount(String),
}

/// Which store holds the keys, as shown by `claudemesh status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStoreKind {
    Keychain,
    File,
    #[cfg(test)]
    Memory,
}

impl KeyStoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStoreKind::Keychain => "keychain",
            KeyStoreKind::File => "file",
            #[cfg(test)]
            KeyStoreKind::Memory => "memory",
        }
    }
}

/// A store of secrets (hex member seeds), by account name.
pub trait KeyStore: Send + Sync {
    fn kind(&self) -> KeyStoreKind;
    fn get(&self, account: &str) -> Result<Option<Zeroizing<String>>, KeyStoreError>;
    fn set(&self, account: &str, secret: &str) -> Result<(), KeyStoreError>;
    /// Removes the secret; absent is fine.
    fn delete(&self, account: &str) -> Result<(), KeyStoreError>;
}

/// Runs keystore calls on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KeyStoreError> + Send + 'static,
) -> Result<T, KeyStoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(KeyStoreError::Keychain(format!("keystore task failed: {e}"))))
}

/// This device's token, if it is signed in.
pub async fn device_token(keystore: &Arc<dyn KeyStore>) -> Result<Option<Zeroizing<String>>, KeyStoreError> {
    let store = keystore.clone();
    blocking(move || store.get(DEVICE_TOKEN)).await
}

/// How the user asked to choose the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    Auto,
    File,
    Keychain,
}

impl Choice {
    pub fn from_env() -> Result<Choice, KeyStoreError> {
        match std::env::var(KEYSTORE_ENV).unwrap_or_default().trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Choice::Auto),
            "file" => Ok(Choice::File),
            "keychain" | "os" => Ok(Choice::Keychain),
            other => Err(KeyStoreError::UnknownChoice(other.to_owned())),
        }
    }
}

/// One warning per process, however often a store is opened.
static WARNED_NO_KEYCHAIN: AtomicBool = AtomicBool::new(false);

/// Opens the store `CLAUDEMESH_KEYSTORE` asks for (see the module docs). Blocks.
pub fn open(config_dir: &ConfigDir) -> Result<Box<dyn KeyStore>, KeyStoreError> {
    let files = FileKeyStore::new(config_dir.keys_dir());
    let service = keychain_service(config_dir);
    match Choice::from_env()? {
        Choice::File => Ok(Box::new(files)),
        Choice::Keychain => {
            let keychain = OsKeychain::probe(&service)?;
            Ok(Box::new(keychain))
        }
        Choice::Auto => match OsKeychain::probe(&service) {
            Ok(keychain) => Ok(Box::new(KeychainWithFileFallback { keychain, files })),
            Err(error) => {
                let reason = match &error {
                    KeyStoreError::KeychainUnavailable(reason) => reason.clone(),
                    other => other.to_string(),
                };
                if !WARNED_NO_KEYCHAIN.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "claudemesh: warning: no OS keychain is available ({reason}); member keys are kept in owner-only files in {}. Set {KEYSTORE_ENV}=file to choose this explicitly.",
                        config_dir.keys_dir().display()
                    );
                }
                Ok(Box::new(files))
            }
        },
    }
}

/// The platform keychain through `keyring` (v4, backed by `keyring-core` stores).
pub struct OsKeychain {
    /// Entries are filed under this service name (see [`keychain_service`]).
    service: String,
}

impl OsKeychain {
    /// Checks that a keychain service answers (a lookup of an entry that need not exist).
    pub fn probe(service: &str) -> Result<OsKeychain, KeyStoreError> {
        if let Err(error) = keyring::Entry::store_status() {
            return Err(KeyStoreError::KeychainUnavailable(error.to_string()));
        }
        let entry =
            keyring::Entry::new(service, "probe").map_err(|e| KeyStoreError::KeychainUnavailable(e.to_string()))?;
        match entry.get_password() {
            Ok(_) | Err(keyring::Error::NoEntry) => Ok(OsKeychain { service: service.to_owned() }),
            Err(error) => Err(KeyStoreError::KeychainUnavailable(error.to_string())),
        }
    }

    fn entry(&self, account: &str) -> Result<keyring::Entry, KeyStoreError> {
        keyring::Entry::new(&self.service, account).map_err(|e| KeyStoreError::Keychain(e.to_string()))
    }
}

impl KeyStore for OsKeychain {
    fn kind(&self) -> KeyStoreKind {
        KeyStoreKind::Keychain
    }

    fn get(&self, account: &str) -> Result<Option<Zeroizing<String>>, KeyStoreError> {
        match self.entry(account)?.get_password() {
            Ok(secret) => Ok(Some(Zeroizing::new(secret))),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(error) => Err(KeyStoreError::Keychain(error.to_string())),
        }
    }

    fn set(&self, account: &str, secret: &str) -> Result<(), KeyStoreError> {
        self.entry(account)?.set_password(secret).map_err(|e| KeyStoreError::Keychain(e.to_string()))
    }

    fn delete(&self, account: &str) -> Result<(), KeyStoreError> {
        match self.entry(account)?.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(error) => Err(KeyStoreError::Keychain(error.to_string())),
        }
    }
}

/// The keychain for new keys; files written while no keychain answered are still read.
struct KeychainWithFileFallback {
    keychain: OsKeychain,
    files: FileKeyStore,
}

impl KeyStore for KeychainWithFileFallback {
    fn kind(&self) -> KeyStoreKind {
        KeyStoreKind::Keychain
    }

    fn get(&self, account: &str) -> Result<Option<Zeroizing<String>>, KeyStoreError> {
        match self.keychain.get(account)? {
            Some(secret) => Ok(Some(secret)),
            None => self.files.get(account),
        }
    }

    fn set(&self, account: &str, secret: &str) -> Result<(), KeyStoreError> {
        self.keychain.set(account, secret)
    }

    fn delete(&self, account: &str) -> Result<(), KeyStoreError> {
        self.keychain.delete(account)?;
        self.files.delete(account)
    }
}

/// One owner-only file per secret in an owner-only directory.
pub struct FileKeyStore {
    dir: PathBuf,
}

impl FileKeyStore {
    pub fn new(dir: PathBuf) -> FileKeyStore {
        FileKeyStore { dir }
    }

    fn path(&self, account: &str) -> Result<PathBuf, KeyStoreError> {
        // Account names are ours (`member:<mesh id>:<hex>`); anything that could leave the
        // directory is refused rather than escaped.
        if account.is_empty()
            || !account.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '-' | '.'))
            || account.starts_with('.')
        {
            return Err(KeyStoreError::BadAccount(account.to_owned()));
        }
        Ok(self.dir.join(format!("{}.key", account.replace(':', "_"))))
    }
}

impl KeyStore for FileKeyStore {
    fn kind(&self) -> KeyStoreKind {
        KeyStoreKind::File
    }

    fn get(&self, account: &str) -> Result<Option<Zeroizing<String>>, KeyStoreError> {
        let path = self.path(account)?;
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(Zeroizing::new(text.trim().to_owned()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(KeyStoreError::Io { path, source }),
        }
    }

    fn set(&self, account: &str, secret: &str) -> Result<(), KeyStoreError> {
        let path = self.path(account)?;
        ConfigDir::ensure_private_dir(&self.dir)
            .map_err(|e| KeyStoreError::Io { path: self.dir.clone(), source: std::io::Error::other(e.to_string()) })?;
        write_private_atomic(&path, secret.as_bytes())
            .map_err(|e| KeyStoreError::Io { path: path.clone(), source: std::io::Error::other(e.to_string()) })
    }

    fn delete(&self, account: &str) -> Result<(), KeyStoreError> {
        let path = self.path(account)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(KeyStoreError::Io { path, source }),
        }
    }
}

/// Secrets in process memory, for unit tests.
#[cfg(test)]
#[derive(Default)]
pub struct MemoryKeyStore {
    secrets: std::sync::Mutex<std::collections::HashMap<String, Zeroizing<String>>>,
}

#[cfg(test)]
impl MemoryKeyStore {
    pub fn len(&self) -> usize {
        self.secrets.lock().expect("memory keystore lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
impl KeyStore for MemoryKeyStore {
    fn kind(&self) -> KeyStoreKind {
        KeyStoreKind::Memory
    }

    fn get(&self, account: &str) -> Result<Option<Zeroizing<String>>, KeyStoreError> {
        Ok(self.secrets.lock().expect("memory keystore lock").get(account).cloned())
    }

    fn set(&self, account: &str, secret: &str) -> Result<(), KeyStoreError> {
        self.secrets
            .lock()
            .expect("memory keystore lock")
            .insert(account.to_owned(), Zeroizing::new(secret.to_owned()));
        Ok(())
    }

    fn delete(&self, account: &str) -> Result<(), KeyStoreError> {
        self.secrets.lock().expect("memory keystore lock").remove(account);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract every store keeps.
    fn check_contract(store: &dyn KeyStore) {
        let account = "member:mesh_1:abcd";
        assert!(store.get(account).expect("get").is_none(), "absent at first");
        store.set(account, "seed-one").expect("set");
        assert_eq!(store.get(account).expect("get").as_deref().map(String::as_str), Some("seed-one"));
        store.set(account, "seed-two").expect("overwrite");
        assert_eq!(store.get(account).expect("get").as_deref().map(String::as_str), Some("seed-two"));
        assert!(store.get("member:mesh_2:abcd").expect("get").is_none(), "accounts are separate");
        store.delete(account).expect("delete");
        assert!(store.get(account).expect("get").is_none(), "gone after delete");
        store.delete(account).expect("deleting an absent secret is fine");
    }

    #[test]
    fn memory_store_keeps_the_contract() {
        check_contract(&MemoryKeyStore::default());
    }

    #[test]
    fn file_store_keeps_the_contract_with_owner_only_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileKeyStore::new(dir.path().join("keys"));
        check_contract(&store);
        store.set("member:mesh_1:ff", "secret").expect("set");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = |p: &std::path::Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
            assert_eq!(mode(&dir.path().join("keys")), 0o700);
            assert_eq!(mode(&dir.path().join("keys/member_mesh_1_ff.key")), 0o600);
        }
    }

    #[test]
    fn each_config_directory_but_the_default_has_its_own_keychain_service() {
        let a = ConfigDir::at(PathBuf::from("/tmp/profile-a"));
        let b = ConfigDir::at(PathBuf::from("/tmp/profile-b"));
        assert_ne!(keychain_service(&a), keychain_service(&b));
        assert_eq!(keychain_service(&a), keychain_service(&ConfigDir::at(PathBuf::from("/tmp/profile-a"))));
        assert!(keychain_service(&a).starts_with("claudemesh-"));
        if let Some(default) = ConfigDir::default_root() {
            assert_eq!(keychain_service(&ConfigDir::at(default)), KEYCHAIN_SERVICE);
        }
    }

    #[test]
    fn file_store_refuses_account_names_that_could_escape_its_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = FileKeyStore::new(dir.path().join("keys"));
        for account in ["../escape", "a/b", "", ".hidden", "x\0y"] {
            assert!(matches!(store.set(account, "s"), Err(KeyStoreError::BadAccount(_))), "{account:?}");
        }
    }
}
