//! Operator commands on a broker's data directory: create meshes, add members, sign invites.
//!
//! They open the same database a running broker serves — the data directory's SQLite file (WAL
//! lets both write), or the Postgres database of `--database-url` — and a running broker
//! notices directory changes within a second. Each mesh created here gets an
//! "operator" admin member whose secret key stays in the data directory (`operator-keys/`,
//! owner-only), so the operator can sign invites; the broker process never reads it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::crypto::{Keypair, PublicKey};
use crate::invite::{Invite, InviteTerms};
use crate::membership::{self, Admission};
use crate::protocol::account::normalize_user_code;
use crate::protocol::{self, Role};
use crate::store::{
    AccountRecord, DeviceCodeRecord, DeviceInfo, DeviceRecord, Durability, InviteRecord, MemberRecord, MeshRecord,
    NewMember, PostgresStore, SqliteStore, Store, StoreError,
};

/// The database file inside a data directory.
pub const DATABASE_FILE: &str = "broker.db";
/// Setting under which `serve` records the public URL, used by `invite create`.
pub const PUBLIC_URL_SETTING: &str = "public_url";
pub(crate) const OPERATOR_KEYS_DIR: &str = "operator-keys";
/// Display name of the admin member created for the operator.
pub const OPERATOR_NAME: &str = "operator";

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Io(String),
}

pub type OperatorResult<T> = Result<T, OperatorError>;

/// A mesh created by the operator.
#[derive(Debug, Clone)]
pub struct CreatedMesh {
    pub mesh: MeshRecord,
    pub operator: MemberRecord,
}

/// A signed invite and its stored record.
#[derive(Debug, Clone)]
pub struct IssuedInvite {
    pub invite: Invite,
    pub record: InviteRecord,
}

/// Opens a broker's store: the Postgres database `database_url` names, else the data directory's
/// SQLite file (created if needed).
pub fn open_store(
    data_dir: &Path,
    database_url: Option<&str>,
    durability: Durability,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match database_url {
        Some(url) => PostgresStore::open(url)?,
        None => SqliteStore::open(&data_dir.join(DATABASE_FILE), durability)?,
    })
}

pub struct Operator {
    data_dir: PathBuf,
    store: Arc<dyn Store>,
}

impl Operator {
    /// Opens (creating if needed) the data directory's database.
    pub fn open(data_dir: &Path) -> OperatorResult<Operator> {
        Operator::open_with(data_dir, None)
    }

    /// Opens the store a broker with these options serves; the operator's keys stay in
    /// `data_dir` either way.
    pub fn open_with(data_dir: &Path, database_url: Option<&str>) -> OperatorResult<Operator> {
        let store = open_store(data_dir, database_url, Durability::Full)?;
        Ok(Operator { data_dir: data_dir.to_owned(), store })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn mesh(&self, id_or_slug: &str) -> OperatorResult<MeshRecord> {
        self.store
            .mesh(id_or_slug)?
            .ok_or_else(|| OperatorError::NotFound(format!("no mesh with id or slug {id_or_slug:?} (see `mesh list`)")))
    }

    pub fn create_mesh(&self, name: &str, slug: Option<&str>) -> OperatorResult<CreatedMesh> {
        let operator_key = Keypair::generate();
        // The key is on disk before the member that holds it exists, so no mesh is ever left
        // with an operator member whose key was lost.
        self.write_operator_key(&operator_key)?;
        // The operator key signs the genesis of the membership log: members of an operator-made
        // mesh trust the operator to admit members (docs/security.md).
        let mesh_id = crate::ids::new_id("mesh");
        let signature =
            operator_key.sign_hex(membership::genesis_bytes(&mesh_id, &operator_key.public_hex()).as_bytes());
        let creator = NewMember {
            pubkey: operator_key.public_hex(),
            display_name: OPERATOR_NAME.to_owned(),
            admission: Some(Admission::Genesis { mesh_id, signature }),
            ..NewMember::default()
        };
        let (mesh, operator) =
            self.store.create_mesh(name, slug.unwrap_or_default(), None, &creator, protocol::now_ms())?;
        Ok(CreatedMesh { mesh, operator })
    }

    pub fn add_member(
        &self,
        mesh: &str,
        pubkey: &str,
        name: &str,
        role: Role,
    ) -> OperatorResult<(MeshRecord, MemberRecord)> {
        if !PublicKey::is_valid_hex(pubkey) {
            return Err(OperatorError::Invalid(format!(
                "--pubkey {pubkey:?} is not an ed25519 public key: expected 64 lowercase hex characters of a \
                 canonical point that is not of small order"
            )));
        }
        if name.trim().is_empty() {
            return Err(OperatorError::Invalid("--name is empty".into()));
        }
        let mesh = self.mesh(mesh)?;
        let admission = self.operator_admission(&mesh, pubkey, role)?;
        let member =
            NewMember { pubkey: pubkey.to_owned(), display_name: name.to_owned(), admission, ..NewMember::default() };
        let member = self.store.add_member(&mesh.id, &member, role, None, protocol::now_ms())?;
        Ok((mesh, member))
    }

    /// The operator key's signed admission of `pubkey`, for a mesh that keeps a membership log
    /// and whose operator key this data directory holds; otherwise the broker's word alone.
    fn operator_admission(&self, mesh: &MeshRecord, pubkey: &str, role: Role) -> OperatorResult<Option<Admission>> {
        let log = self.store.membership_log(&mesh.id, 0, i64::MAX as usize)?;
        if log.is_empty() {
            return Ok(None);
        }
        let Ok((_, key)) = self.operator_member(mesh) else { return Ok(None) };
        let after = log.len() as u64;
        let signature = key.sign_hex(membership::admission_bytes(&mesh.id, pubkey, role, after).as_bytes());
        Ok(Some(Admission::Admin { by: key.public_hex(), after, signature }))
    }

    pub fn members(&self, mesh: &str) -> OperatorResult<(MeshRecord, Vec<MemberRecord>)> {
        let mesh = self.mesh(mesh)?;
        let members = self.store.members(&mesh.id)?;
        Ok((mesh, members))
    }

    /// Signs an invite with the mesh's operator key and records it.
    pub fn create_invite(
        &self,
        mesh: &str,
        role: Role,
        max_uses: u32,
        expires_in: Duration,
        public_url: Option<&str>,
    ) -> OperatorResult<IssuedInvite> {
        if max_uses == 0 {
            return Err(OperatorError::Invalid("--max-uses must be at least 1".into()));
        }
        let mesh = self.mesh(mesh)?;
        let broker_url = match public_url {
            Some(url) => url.to_owned(),
            None => self.store.setting(PUBLIC_URL_SETTING)?.ok_or_else(|| {
                OperatorError::Invalid(
                    "no public URL known for this broker: pass --public-url, or start `serve` once so it records one"
                        .into(),
                )
            })?,
        };
        let (issuer, key) = self.operator_member(&mesh)?;
        let now_ms = protocol::now_ms();
        let terms = InviteTerms {
            mesh_id: mesh.id.clone(),
            mesh_slug: mesh.slug.clone(),
            mesh_name: mesh.name.clone(),
            broker_url: broker_url.trim_end_matches('/').to_owned(),
            invite_id: crate::ids::new_id("inv"),
            role,
            max_uses,
            expires_at: now_ms / 1000 + expires_in.as_secs().max(1),
        };
        let invite = Invite::sign(terms, &key);
        let record = InviteRecord {
            id: invite.invite_id.clone(),
            mesh_id: mesh.id.clone(),
            role,
            max_uses,
            used_count: 0,
            expires_at: invite.expires_at,
            issuer_member_id: issuer.id,
            created_at: now_ms,
            revoked_at: None,
            email: None,
        };
        self.store.create_invite(&record)?;
        Ok(IssuedInvite { invite, record })
    }

    /// Creates an account, the owner of the devices that sign in to it.
    pub fn create_account(&self, name: &str, email: Option<&str>) -> OperatorResult<AccountRecord> {
        Ok(self.store.create_account(name, email, protocol::now_ms())?)
    }

    /// Approves a waiting device login for `account` (a name or id), from the broker host.
    pub fn approve_device(&self, user_code: &str, account: &str) -> OperatorResult<DeviceCodeRecord> {
        let code = normalize_user_code(user_code).ok_or_else(|| {
            OperatorError::Invalid(format!("{user_code:?} is not a user code: 8 letters like BCDF-GHJK"))
        })?;
        let account = self.store.account(account)?.ok_or_else(|| {
            OperatorError::NotFound(format!("no account {account:?} (create it with `account create`)"))
        })?;
        let pending = self
            .store
            .device_code(&code)?
            .ok_or_else(|| OperatorError::NotFound("no device is waiting with that code".into()))?;
        if protocol::now_ms() >= pending.expires_at {
            return Err(OperatorError::Invalid("that code expired; start the sign-in again on the device".into()));
        }
        Ok(self.store.decide_device_code(&code, true, &account.id, None, protocol::now_ms())?)
    }

    /// The mesh's admin member whose secret key this data directory holds.
    fn operator_member(&self, mesh: &MeshRecord) -> OperatorResult<(MemberRecord, Keypair)> {
        for member in self.store.members(&mesh.id)? {
            if member.role != Role::Admin || !member.is_active() {
                continue;
            }
            if let Some(key) = self.read_operator_key(&member.pubkey)? {
                return Ok((member, key));
            }
        }
        Err(OperatorError::NotFound(format!(
            "this data directory holds no admin key for mesh {}; only meshes created with `mesh create` here can be invited to by the operator",
            mesh.slug
        )))
    }

    fn key_path(&self, pubkey_hex: &str) -> PathBuf {
        self.data_dir.join(OPERATOR_KEYS_DIR).join(format!("{pubkey_hex}.key"))
    }

    fn write_operator_key(&self, key: &Keypair) -> OperatorResult<()> {
        let path = self.key_path(&key.public_hex());
        write_private_file(&path, key.seed_hex().as_bytes())
            .map_err(|e| OperatorError::Io(format!("cannot write the operator key {}: {e}", path.display())))
    }

    fn read_operator_key(&self, pubkey_hex: &str) -> OperatorResult<Option<Keypair>> {
        let path = self.key_path(pubkey_hex);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let key = Keypair::from_secret_hex(text.trim())
                    .map_err(|_| OperatorError::Io(format!("{} does not hold a valid key", path.display())))?;
                if key.public_hex() != pubkey_hex {
                    return Err(OperatorError::Io(format!("{} holds the key of another member", path.display())));
                }
                Ok(Some(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(OperatorError::Io(format!("cannot read {}: {e}", path.display()))),
        }
    }
}

/// Signs a device in to `account_name` directly, without a device code: how the desktop app's
/// embedded local broker makes the person at the machine its owner. Creates the account when it
/// does not exist. Returns the bearer token (the store keeps only its hash).
pub fn sign_in_locally(
    store: &dyn Store,
    account_name: &str,
    device: &DeviceInfo,
    token_ttl: Duration,
) -> OperatorResult<(AccountRecord, DeviceRecord, String)> {
    let now = protocol::now_ms();
    let account = match store.account(account_name)? {
        Some(account) => account,
        None => store.create_account(account_name, None, now)?,
    };
    let token = crate::server::auth::new_token();
    let hash = crate::server::auth::token_hash(&token);
    let device = store.create_device(&account.id, device, &hash, now + token_ttl.as_millis() as u64, now)?;
    Ok((account, device, token))
}

/// Writes `contents` to a new file only its owner can read (directories created 0700).
pub fn write_private_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mesh_created_here_can_issue_invites_signed_by_its_operator() {
        let dir = tempfile::tempdir().expect("tempdir");
        let operator = Operator::open(dir.path()).expect("opens");
        let created = operator.create_mesh("Acme Team", None).expect("creates");
        assert_eq!(created.mesh.slug, "acme-team");
        assert_eq!(created.operator.role, Role::Admin);
        let again = operator.create_mesh("Acme Team", None).expect("creates");
        assert_eq!(again.mesh.slug, "acme-team-2");

        let issued = operator
            .create_invite("acme-team", Role::Member, 1, Duration::from_secs(3600), Some("http://127.0.0.1:1"))
            .expect("invite");
        issued.invite.verify(protocol::now_ms() / 1000).expect("signature verifies");
        assert_eq!(issued.invite.issuer_pubkey, created.operator.pubkey);

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let key = dir.path().join(OPERATOR_KEYS_DIR).join(format!("{}.key", created.operator.pubkey));
            let mode = std::fs::metadata(key).expect("key file").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }

    #[test]
    fn a_bad_pubkey_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let operator = Operator::open(dir.path()).expect("opens");
        operator.create_mesh("demo", None).expect("creates");
        let before = operator.members("demo").expect("members").1.len();
        assert!(matches!(operator.add_member("demo", "ABC", "x", Role::Member), Err(OperatorError::Invalid(_))));
        let identity = format!("01{}", "00".repeat(31));
        assert!(matches!(operator.add_member("demo", &identity, "x", Role::Member), Err(OperatorError::Invalid(_))));
        assert!(matches!(
            operator.add_member("demo", &"A".repeat(64), "x", Role::Member),
            Err(OperatorError::Invalid(_))
        ));
        assert_eq!(operator.members("demo").expect("members").1.len(), before);
    }

    #[test]
    fn a_local_sign_in_makes_a_working_token_for_a_new_or_existing_account() {
        let dir = tempfile::tempdir().expect("tempdir");
        let operator = Operator::open(dir.path()).expect("opens");
        let store = operator.store().as_ref();
        let info = DeviceInfo { hostname: "laptop".into(), ..DeviceInfo::default() };
        let (account, device, token) = sign_in_locally(store, "me", &info, Duration::from_secs(60)).expect("signs in");
        let (found, owner) =
            store.device_by_token(&crate::server::auth::token_hash(&token)).expect("reads").expect("device");
        assert_eq!((found.id, owner.id), (device.id, account.id.clone()));
        let (again, _, _) = sign_in_locally(store, "me", &info, Duration::from_secs(60)).expect("signs in again");
        assert_eq!(again.id, account.id, "the same account");
    }

    #[test]
    fn invites_need_a_public_url() {
        let dir = tempfile::tempdir().expect("tempdir");
        let operator = Operator::open(dir.path()).expect("opens");
        operator.create_mesh("demo", None).expect("creates");
        let result = operator.create_invite("demo", Role::Member, 1, Duration::from_secs(60), None);
        assert!(matches!(result, Err(OperatorError::Invalid(_))));
        operator.store().set_setting(PUBLIC_URL_SETTING, "http://example.test").expect("setting");
        let issued = operator.create_invite("demo", Role::Member, 1, Duration::from_secs(60), None).expect("invite");
        assert!(issued.invite.link().starts_with("http://example.test/join/"));
    }
}
