//! Signing this device in to an account on a broker, and what a signed-in device can do: list
//! and revoke devices, approve other devices' logins, create meshes, sign invites, enrol into
//! the account's meshes. Shared by the CLI and the desktop app.
//!
//! The device token lives in the keystore (account [`DEVICE_TOKEN`], read with
//! [`device_token`]), and next to it the device's confirmation key ([`CONFIRM_KEY`]), which
//! signs the requests the broker wants freshly confirmed; `config.json` keeps only who is signed
//! in where. Member keys for meshes
//! created or enrolled here are made on this device and stored in the keystore before the broker
//! hears their public half.

use std::sync::Arc;
use std::time::Duration;

use broker_core::client::device_login::{PollResponse, TokenPoller};
use broker_core::crypto::{Keypair, confirmation_header};
use broker_core::invite::{Invite, InviteTerms};
use broker_core::protocol::account::{
    CONFIRMATION_HEADER, CreateInviteResponse, CreateMeshResponse, DeviceCodeRequest, DeviceCodeResponse, DeviceView,
    EmailCodeRequest, EmailCodeVerify, Endorsement, EnrolResponse, LoginTokenResponse, MeshView, PendingDevice,
    TokenError, TokenResponse,
};
use broker_core::protocol::{self, Role};
use hyper::Method;
use serde::de::DeserializeOwned;
use serde_json::json;
use zeroize::Zeroizing;

use crate::config::{AccountEntry, ConfigDir, MeshEntry, key_account};
use crate::http::{self, HttpError};
use crate::keystore::{CONFIRM_KEY, DEVICE_TOKEN, KeyStore, KeyStoreError, blocking, device_token};

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("the broker refused ({code}): {message}")]
    Refused { status: u16, code: String, message: String },
    #[error("not signed in; run `claudemesh login --broker <url>` first")]
    NotSignedIn,
    #[error("this device's sign-in is no longer valid ({0}); run `claudemesh login` again")]
    SignInInvalid(String),
    #[error("unexpected answer from the broker: {0}")]
    BadAnswer(String),
    #[error("keystore: {0}")]
    KeyStore(#[from] KeyStoreError),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Invalid(String),
}

/// What this device says about itself when it signs in, with its confirmation key.
pub fn this_device(confirm_key: &Keypair) -> DeviceCodeRequest {
    DeviceCodeRequest {
        hostname: this_hostname(),
        platform: std::env::consts::OS.to_owned(),
        arch: std::env::consts::ARCH.to_owned(),
        app_version: env!("CARGO_PKG_VERSION").to_owned(),
        account: None,
        confirm_key: Some(confirm_key.public_hex()),
    }
}

pub fn this_hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

/// This device's confirmation key, made on first use and kept in the keystore until sign-out.
pub async fn confirm_key(keystore: &Arc<dyn KeyStore>) -> Result<Keypair, AccountError> {
    if let Some(key) = stored_confirm_key(keystore).await? {
        return Ok(key);
    }
    let key = Keypair::generate();
    store_key(keystore, CONFIRM_KEY, &key).await?;
    Ok(key)
}

async fn stored_confirm_key(keystore: &Arc<dyn KeyStore>) -> Result<Option<Keypair>, AccountError> {
    let store = keystore.clone();
    let Some(seed) = blocking(move || store.get(CONFIRM_KEY)).await? else { return Ok(None) };
    Keypair::from_secret_hex(&seed)
        .map(Some)
        .map_err(|_| AccountError::Invalid(format!("the keystore's {CONFIRM_KEY} is not a key; sign out and in again")))
}

fn decode<T: DeserializeOwned>(status: u16, body: &[u8]) -> Result<T, AccountError> {
    if !(200..300).contains(&status) {
        let (code, message) = http::error_of(status, body);
        if status == 401 {
            return Err(AccountError::SignInInvalid(message));
        }
        return Err(AccountError::Refused { status, code, message });
    }
    serde_json::from_slice(body).map_err(|e| AccountError::BadAnswer(e.to_string()))
}

/// Calls the broker as a signed-in device.
#[derive(Clone)]
pub struct Api {
    pub broker_url: String,
    token: Arc<Zeroizing<String>>,
    /// This device's id and confirmation key, for requests that need a fresh confirmation.
    confirmation: Option<(String, Arc<Keypair>)>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("broker_url", &self.broker_url).finish_non_exhaustive()
    }
}

impl Api {
    pub fn new(broker_url: &str, token: Zeroizing<String>) -> Api {
        Api { broker_url: broker_url.trim_end_matches('/').to_owned(), token: Arc::new(token), confirmation: None }
    }

    /// Signs requests that need a fresh confirmation as `device_id` with `key`.
    pub fn confirmed_by(self, device_id: &str, key: Keypair) -> Api {
        Api { confirmation: Some((device_id.to_owned(), Arc::new(key))), ..self }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, AccountError> {
        let (status, bytes) = http::request(method, &self.broker_url, path, Some(&self.token), body.as_ref()).await?;
        decode(status, &bytes)
    }

    pub async fn devices(&self) -> Result<Vec<DeviceView>, AccountError> {
        #[derive(serde::Deserialize)]
        struct Devices {
            devices: Vec<DeviceView>,
        }
        Ok(self.call::<Devices>(Method::GET, "/v1/devices", None).await?.devices)
    }

    /// A call the broker wants freshly confirmed (revoking another device, minting a login token,
    /// approving a device), signed with this device's confirmation key; the caller has asked the
    /// person. Without a key the broker's `confirmation_required` says what to do.
    async fn confirmed_call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, AccountError> {
        let headers: Vec<(&str, String)> = self
            .confirmation
            .iter()
            .map(|(device_id, key)| {
                let header = confirmation_header(key, method.as_str(), path, device_id, protocol::now_ms());
                (CONFIRMATION_HEADER, header)
            })
            .collect();
        let (status, bytes) =
            http::request_with_headers(method, &self.broker_url, path, Some(&self.token), &headers, body.as_ref())
                .await?;
        decode(status, &bytes)
    }

    /// Revokes a device of this account. Another device than this one needs a fresh
    /// confirmation: ask the person first.
    pub async fn revoke_device(&self, device_id: &str) -> Result<(), AccountError> {
        let path = format!("/v1/devices/{device_id}/revoke");
        self.confirmed_call::<serde_json::Value>(Method::POST, &path, None).await.map(|_| ())
    }

    /// Which device asks with `user_code`, to show before deciding.
    pub async fn pending_device(&self, user_code: &str) -> Result<PendingDevice, AccountError> {
        let code = protocol::account::normalize_user_code(user_code).ok_or_else(|| {
            AccountError::Invalid(format!(
                "{user_code:?} is not a code like BCDF-GHJK (8 letters, as the device shows it)"
            ))
        })?;
        self.call(Method::GET, &format!("/v1/device/requests/{code}"), None).await
    }

    /// Approves (with a fresh confirmation: ask the person first) or denies a device's sign-in.
    /// An approval carries this device's endorsements of the new device ([`endorsements`]).
    pub async fn decide_device(
        &self,
        user_code: &str,
        approve: bool,
        endorsements: &[Endorsement],
    ) -> Result<PendingDevice, AccountError> {
        let body = json!({"userCode": user_code, "endorsements": endorsements});
        if approve {
            self.confirmed_call(Method::POST, "/v1/device/approve", Some(body)).await
        } else {
            self.call(Method::POST, "/v1/device/deny", Some(body)).await
        }
    }

    /// Device logins waiting for approval that named this account.
    pub async fn pending_devices(&self) -> Result<Vec<PendingDevice>, AccountError> {
        #[derive(serde::Deserialize)]
        struct Pending {
            pending: Vec<PendingDevice>,
        }
        Ok(self.call::<Pending>(Method::GET, "/v1/device/pending", None).await?.pending)
    }

    /// A one-time token another device can paste into `claudemesh login` to join this account.
    /// Needs a fresh confirmation: ask the person first.
    pub async fn login_token(&self) -> Result<LoginTokenResponse, AccountError> {
        self.confirmed_call(Method::POST, "/v1/device/login-token", None).await
    }

    pub async fn meshes(&self) -> Result<Vec<MeshView>, AccountError> {
        #[derive(serde::Deserialize)]
        struct Meshes {
            meshes: Vec<MeshView>,
        }
        Ok(self.call::<Meshes>(Method::GET, "/v1/meshes", None).await?.meshes)
    }

    /// The mesh's members with their roles and whether each is online.
    #[cfg(feature = "gui")]
    pub async fn members(
        &self,
        mesh_id: &str,
    ) -> Result<Vec<broker_core::protocol::account::MemberView>, AccountError> {
        #[derive(serde::Deserialize)]
        struct Members {
            members: Vec<broker_core::protocol::account::MemberView>,
        }
        Ok(self.call::<Members>(Method::GET, &format!("/v1/meshes/{mesh_id}/members"), None).await?.members)
    }

    /// Kicks, bans or unbans another member (admins); kick and ban end its sessions at once.
    #[cfg(feature = "gui")]
    pub async fn moderate(&self, mesh_id: &str, member_id: &str, action: Moderation) -> Result<(), AccountError> {
        let path = format!("/v1/meshes/{mesh_id}/members/{member_id}/{}", action.as_str());
        self.call::<serde_json::Value>(Method::POST, &path, None).await.map(|_| ())
    }

    /// This device's member leaves the mesh at the broker (its sessions end).
    #[cfg(feature = "gui")]
    pub async fn leave_mesh(&self, mesh_id: &str) -> Result<(), AccountError> {
        self.call::<serde_json::Value>(Method::POST, &format!("/v1/meshes/{mesh_id}/leave"), None).await.map(|_| ())
    }

    async fn logout(&self) -> Result<(), AccountError> {
        self.call::<serde_json::Value>(Method::POST, "/v1/logout", None).await.map(|_| ())
    }
}

/// What an admin can do to another member (the desktop app's Members view).
#[cfg(feature = "gui")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Moderation {
    Kick,
    Ban,
    Unban,
}

#[cfg(feature = "gui")]
impl Moderation {
    pub fn as_str(self) -> &'static str {
        match self {
            Moderation::Kick => "kick",
            Moderation::Ban => "ban",
            Moderation::Unban => "unban",
        }
    }
}

/// Starts a device login on `broker_url`; naming the `account` lets its signed-in devices see
/// (and be notified of) the request.
pub async fn request_device_code(
    broker_url: &str,
    account: Option<&str>,
    confirm_key: &Keypair,
) -> Result<DeviceCodeResponse, AccountError> {
    let request = DeviceCodeRequest { account: account.map(str::to_owned), ..this_device(confirm_key) };
    let body = serde_json::to_value(request).expect("device info serializes");
    let (status, bytes) = http::request(Method::POST, broker_url, "/v1/device/code", None, Some(&body)).await?;
    decode(status, &bytes)
}

/// Asks the token endpoint once: with a device code while waiting for approval, or with a
/// pasted one-time login token. The device names its confirmation key again: the device that
/// redeems the code is the one that holds the token.
pub async fn poll_token(broker_url: &str, code: &str, confirm_key: &Keypair) -> Result<PollResponse, AccountError> {
    let mut body = serde_json::to_value(this_device(confirm_key)).expect("device info serializes");
    body["grant_type"] = json!(protocol::account::DEVICE_CODE_GRANT);
    body["device_code"] = json!(code);
    let (status, bytes) = http::request(Method::POST, broker_url, "/v1/device/token", None, Some(&body)).await?;
    if status == 200 {
        return serde_json::from_slice(&bytes)
            .map(PollResponse::Token)
            .map_err(|e| AccountError::BadAnswer(e.to_string()));
    }
    match serde_json::from_slice::<TokenError>(&bytes) {
        Ok(error) => Ok(PollResponse::Error(error)),
        Err(_) => {
            let (code, message) = http::error_of(status, &bytes);
            Err(AccountError::Refused { status, code, message })
        }
    }
}

/// Asks the broker to email a sign-in code to `email` (`POST /v1/connect/email`). The broker's
/// answer, which never says whether the address has an account.
pub async fn request_email_code(broker_url: &str, email: &str) -> Result<String, AccountError> {
    #[derive(serde::Deserialize)]
    struct Asked {
        message: String,
    }
    let body = serde_json::to_value(EmailCodeRequest { email: email.to_owned() }).expect("the request serializes");
    let (status, bytes) = http::request(Method::POST, broker_url, "/v1/connect/email", None, Some(&body)).await?;
    Ok(decode::<Asked>(status, &bytes)?.message)
}

/// Trades an emailed code for the token of a new device of the account (`POST
/// /v1/connect/verify`), described by `device` (its hostname is the name the account's Devices
/// show, its confirmation key the one it signs with).
pub async fn verify_email_code(
    broker_url: &str,
    email: &str,
    code: &str,
    device: DeviceCodeRequest,
) -> Result<TokenResponse, AccountError> {
    let request = EmailCodeVerify {
        email: email.to_owned(),
        code: code.to_owned(),
        device_name: device.hostname,
        platform: device.platform,
        arch: device.arch,
        app_version: device.app_version,
        confirm_key: device.confirm_key,
    };
    let body = serde_json::to_value(request).expect("the request serializes");
    let (status, bytes) = http::request(Method::POST, broker_url, "/v1/connect/verify", None, Some(&body)).await?;
    decode(status, &bytes)
}

/// The token endpoint of one broker, for [`broker_core::client::device_login::run_device_login`].
pub struct HttpPoller {
    pub broker_url: String,
    pub confirm_key: Keypair,
}

impl TokenPoller for HttpPoller {
    async fn poll(&self, device_code: &str) -> Result<PollResponse, String> {
        poll_token(&self.broker_url, device_code, &self.confirm_key).await.map_err(|e| e.to_string())
    }
}

/// The API of the account this device is signed in to.
pub async fn api(config_dir: &ConfigDir, keystore: &Arc<dyn KeyStore>) -> Result<(Api, AccountEntry), AccountError> {
    let account = config_dir.load()?.account.ok_or(AccountError::NotSignedIn)?;
    let token = device_token(keystore).await?.ok_or(AccountError::NotSignedIn)?;
    let api = Api::new(&account.broker_url, token);
    // An unreadable key is as good as none: the broker then says to sign in again, and signing
    // out (which goes through here) still works.
    let api = match stored_confirm_key(keystore).await {
        Ok(Some(key)) => api.confirmed_by(&account.device_id, key),
        Ok(None) => api,
        Err(error) => {
            tracing::warn!(%error, "this device's confirmation key is unusable");
            api
        }
    };
    Ok((api, account))
}

/// What signing in did.
#[derive(Debug, Clone)]
pub struct SignedIn {
    pub account: AccountEntry,
    /// Meshes of the account this device enrolled into with new member keys.
    pub enrolled: Vec<MeshEntry>,
    /// Meshes it could not enrol into, with the reason.
    pub enrol_failures: Vec<(String, String)>,
}

/// Keeps a freshly issued token and enrols this device into the account's meshes. When the
/// login named an account and the token is for another, the token is revoked and nothing kept.
pub async fn finish_sign_in(
    config_dir: &ConfigDir,
    keystore: &Arc<dyn KeyStore>,
    broker_url: &str,
    token: TokenResponse,
    expected_account: Option<&str>,
    display_name: &str,
) -> Result<SignedIn, AccountError> {
    let secret = Zeroizing::new(token.access_token.clone());
    if let Some(expected) = expected_account
        && expected != token.account.name
        && expected != token.account.id
    {
        let _ = Api::new(broker_url, secret).logout().await;
        return Err(AccountError::Invalid(format!(
            "this device was signed in to the account {:?}, not {expected:?}; the sign-in was revoked and nothing was kept",
            token.account.name
        )));
    }
    {
        let (store, secret) = (keystore.clone(), secret.clone());
        blocking(move || store.set(DEVICE_TOKEN, &secret)).await?;
    }
    let account = AccountEntry {
        broker_url: broker_url.trim_end_matches('/').to_owned(),
        account_id: token.account.id.clone(),
        account_name: token.account.name.clone(),
        email: token.account.email.clone(),
        device_id: token.device_id.clone(),
        signed_in_at: protocol::now_ms(),
    };
    let mut config = config_dir.load()?;
    config.account = Some(account.clone());
    config_dir.save(&config)?;
    let api = Api::new(broker_url, secret);
    let (enrolled, enrol_failures) = enrol_all(config_dir, keystore, &api, display_name).await?;
    Ok(SignedIn { account, enrolled, enrol_failures })
}

/// Registers a member key of this device in every mesh of the account it has none in yet.
pub async fn enrol_all(
    config_dir: &ConfigDir,
    keystore: &Arc<dyn KeyStore>,
    api: &Api,
    display_name: &str,
) -> Result<(Vec<MeshEntry>, Vec<(String, String)>), AccountError> {
    let meshes = api.meshes().await?;
    let joined: Vec<String> = config_dir.load()?.meshes.into_iter().map(|m| m.mesh_id).collect();
    let mut enrolled = Vec::new();
    let mut failures = Vec::new();
    for mesh in meshes.into_iter().filter(|m| !m.archived && !joined.contains(&m.id)) {
        match enrol(config_dir, keystore, api, &mesh, display_name).await {
            Ok(entry) => enrolled.push(entry),
            Err(error) => failures.push((mesh.slug.clone(), error.to_string())),
        }
    }
    Ok((enrolled, failures))
}

/// This device's endorsements of the device asking to sign in (of the confirmation key it
/// showed; none when it showed none), one per mesh joined here on `broker_url` whose member key
/// the keystore holds: the member keys that device enrols are then admitted verifiably in each
/// mesh's membership log. A mesh whose key cannot be read is left out (that device's key there
/// stays vouched).
pub async fn endorsements(
    config_dir: &ConfigDir,
    keystore: &Arc<dyn KeyStore>,
    broker_url: &str,
    pending: &PendingDevice,
) -> Result<Vec<Endorsement>, AccountError> {
    let mut endorsements = Vec::new();
    let Some(device_key) = pending.confirm_key.as_deref() else { return Ok(endorsements) };
    for entry in config_dir.load()?.meshes.into_iter().filter(|m| crate::http::same_broker(&m.broker_url, broker_url)) {
        let (store, name) = (keystore.clone(), entry.key_account());
        let Ok(Some(seed)) = blocking(move || store.get(&name)).await else { continue };
        let Ok(key) = Keypair::from_secret_hex(&seed) else { continue };
        let bytes = broker_core::membership::endorsement_bytes(&entry.mesh_id, device_key);
        endorsements.push(Endorsement {
            signature: key.sign_hex(bytes.as_bytes()),
            mesh_id: entry.mesh_id,
            sponsor: key.public_hex(),
        });
    }
    Ok(endorsements)
}

async fn enrol(
    config_dir: &ConfigDir,
    keystore: &Arc<dyn KeyStore>,
    api: &Api,
    mesh: &MeshView,
    display_name: &str,
) -> Result<MeshEntry, AccountError> {
    let key = Keypair::generate();
    let pubkey = key.public_hex();
    let key_name = key_account(&mesh.id, &pubkey);
    store_key(keystore, &key_name, &key).await?;
    // The confirmation key binds the new member key to this device: where the approving device
    // endorsed it, the membership log can verify the admission.
    let binding = stored_confirm_key(keystore)
        .await?
        .map(|confirm| confirm.sign_hex(broker_core::membership::device_key_bytes(&mesh.id, &pubkey).as_bytes()));
    let answer: Result<EnrolResponse, _> = api
        .call(
            Method::POST,
            &format!("/v1/meshes/{}/enrol", mesh.id),
            Some(json!({"pubkey": pubkey, "displayName": display_name, "binding": binding})),
        )
        .await;
    let enrolled = match answer {
        Ok(enrolled) => enrolled,
        Err(error) => {
            forget_key(keystore, &key_name).await;
            return Err(error);
        }
    };
    let entry = MeshEntry {
        mesh_id: mesh.id.clone(),
        slug: mesh.slug.clone(),
        name: mesh.name.clone(),
        broker_url: api.broker_url.clone(),
        member_id: enrolled.member_id,
        member_pubkey: pubkey,
        display_name: display_name.to_owned(),
        role: enrolled.role.as_str().to_owned(),
        joined_at: protocol::now_ms(),
        device_linked: true,
    };
    save_mesh(config_dir, &entry)?;
    Ok(entry)
}

async fn store_key(keystore: &Arc<dyn KeyStore>, name: &str, key: &Keypair) -> Result<(), KeyStoreError> {
    let (store, name, seed) = (keystore.clone(), name.to_owned(), key.seed_hex());
    blocking(move || store.set(&name, &seed)).await
}

async fn forget_key(keystore: &Arc<dyn KeyStore>, name: &str) {
    let (store, name) = (keystore.clone(), name.to_owned());
    if let Err(error) = blocking(move || store.delete(&name)).await {
        tracing::warn!(%error, "could not delete an unused key");
    }
}

fn save_mesh(config_dir: &ConfigDir, entry: &MeshEntry) -> Result<(), AccountError> {
    let mut config = config_dir.load()?;
    config.meshes.retain(|m| m.mesh_id != entry.mesh_id);
    config.meshes.push(entry.clone());
    config_dir.save(&config)?;
    Ok(())
}

/// What signing out did.
#[derive(Debug, Clone)]
pub struct SignedOut {
    pub account: AccountEntry,
    /// Meshes forgotten because their member key was this device's sign-in's.
    pub forgotten: Vec<String>,
}

/// Revokes this device's token at the broker (and with it the member keys it holds), then
/// forgets the token and those meshes here.
pub async fn sign_out(config_dir: &ConfigDir, keystore: &Arc<dyn KeyStore>) -> Result<SignedOut, AccountError> {
    let (api, account) = api(config_dir, keystore).await?;
    match api.logout().await {
        // Already revoked elsewhere: signing out locally is all that is left.
        Ok(()) | Err(AccountError::SignInInvalid(_)) => {}
        Err(error) => return Err(error),
    }
    let mut config = config_dir.load()?;
    let (gone, kept): (Vec<MeshEntry>, Vec<MeshEntry>) = config
        .meshes
        .into_iter()
        .partition(|m| m.device_linked && http::same_broker(&m.broker_url, &account.broker_url));
    config.meshes = kept;
    config.account = None;
    config_dir.save(&config)?;
    for entry in &gone {
        forget_key(keystore, &entry.key_account()).await;
    }
    let store = keystore.clone();
    blocking(move || store.delete(DEVICE_TOKEN)).await?;
    // The next sign-in registers a new confirmation key.
    forget_key(keystore, CONFIRM_KEY).await;
    Ok(SignedOut { account, forgotten: gone.into_iter().map(|m| m.slug).collect() })
}

/// Creates a mesh on the account's broker with a new admin member key of this device.
pub async fn create_mesh(
    config_dir: &ConfigDir,
    keystore: &Arc<dyn KeyStore>,
    api: &Api,
    name: &str,
    display_name: &str,
) -> Result<MeshEntry, AccountError> {
    if name.trim().is_empty() {
        return Err(AccountError::Invalid("the mesh needs a name".into()));
    }
    let key = Keypair::generate();
    let pubkey = key.public_hex();
    // Stored under a name that does not know the mesh id yet, then moved once it exists.
    let pending = format!("pending:{pubkey}");
    store_key(keystore, &pending, &key).await?;
    // The creator key signs the start of the mesh's membership log, for a mesh id chosen here.
    let mesh_id = broker_core::ids::new_id("mesh");
    let genesis = key.sign_hex(broker_core::membership::genesis_bytes(&mesh_id, &pubkey).as_bytes());
    let request =
        json!({"name": name, "pubkey": pubkey, "displayName": display_name, "id": mesh_id, "genesis": genesis});
    let created: Result<CreateMeshResponse, _> = api.call(Method::POST, "/v1/meshes", Some(request)).await;
    let created = match created {
        Ok(created) => created,
        Err(error) => {
            forget_key(keystore, &pending).await;
            return Err(error);
        }
    };
    store_key(keystore, &key_account(&created.id, &pubkey), &key).await?;
    forget_key(keystore, &pending).await;
    // This device made the mesh: its log must start with this key, whatever a broker says later.
    let pin = crate::mesh::members::LogPin { creator: pubkey.clone(), head: None };
    if let Err(error) = crate::mesh::members::LogPins::new(config_dir.root()).set(&created.id, &pin) {
        tracing::warn!(%error, "could not pin the new mesh's creator key");
    }
    let entry = MeshEntry {
        mesh_id: created.id,
        slug: created.slug,
        name: created.name,
        broker_url: api.broker_url.clone(),
        member_id: created.member_id,
        member_pubkey: pubkey,
        display_name: display_name.to_owned(),
        role: Role::Admin.as_str().to_owned(),
        joined_at: protocol::now_ms(),
        device_linked: true,
    };
    save_mesh(config_dir, &entry)?;
    Ok(entry)
}

/// What to put in an invite.
#[derive(Debug, Clone)]
pub struct InviteOptions {
    pub role: Role,
    pub max_uses: u32,
    pub expires_in: Duration,
    /// Email the link there (when the broker can send email).
    pub email: Option<String>,
}

/// What `GET /v1/account` says of the broker.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct BrokerIdentity {
    broker_url: String,
}

/// Signs an invite with this device's admin member key for `mesh` and registers it.
pub async fn create_invite(
    keystore: &Arc<dyn KeyStore>,
    api: &Api,
    mesh: &MeshEntry,
    options: &InviteOptions,
) -> Result<CreateInviteResponse, AccountError> {
    if mesh.role != Role::Admin.as_str() {
        return Err(AccountError::Invalid(format!(
            "only admins can invite to {}; this device is a {}",
            mesh.slug, mesh.role
        )));
    }
    if options.max_uses == 0 {
        return Err(AccountError::Invalid("an invite needs at least one use".into()));
    }
    let store = keystore.clone();
    let name = mesh.key_account();
    let seed = blocking(move || store.get(&name)).await?.ok_or_else(|| {
        AccountError::Invalid(format!("this device has no member key for {} in its keystore", mesh.slug))
    })?;
    let key = Keypair::from_secret_hex(&seed).map_err(|e| AccountError::Invalid(format!("stored member key: {e}")))?;
    // The link must name the broker as the world reaches it, which may not be the address this
    // device uses (a local broker shared on the LAN, a broker behind a proxy).
    let public: BrokerIdentity = api.call(Method::GET, "/v1/account", None).await?;
    let invite = Invite::sign(
        InviteTerms {
            mesh_id: mesh.mesh_id.clone(),
            mesh_slug: mesh.slug.clone(),
            mesh_name: mesh.name.clone(),
            broker_url: public.broker_url,
            invite_id: broker_core::ids::new_id("inv"),
            role: options.role,
            max_uses: options.max_uses,
            expires_at: protocol::now_ms() / 1000 + options.expires_in.as_secs().max(1),
        },
        &key,
    );
    let mut created: CreateInviteResponse = api
        .call(
            Method::POST,
            &format!("/v1/meshes/{}/invites", mesh.mesh_id),
            Some(json!({"invite": invite.to_token(), "email": options.email})),
        )
        .await?;
    // The link shown is the invite this device signed, whatever the answer says.
    created.link = invite.link();
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_device_describes_itself() {
        let key = Keypair::generate();
        let device = this_device(&key);
        assert_eq!(device.confirm_key, Some(key.public_hex()));
        assert!(!device.hostname.is_empty());
        assert_eq!(device.platform, std::env::consts::OS);
        assert_eq!(device.app_version, env!("CARGO_PKG_VERSION"));
    }

    #[test]
    fn broker_refusals_keep_their_code_and_401_means_sign_in_again() {
        let refused = decode::<serde_json::Value>(403, br#"{"ok":false,"error":"forbidden","message":"only admins"}"#);
        assert!(matches!(&refused, Err(AccountError::Refused { code, .. }) if code == "forbidden"));
        let expired = decode::<serde_json::Value>(401, br#"{"ok":false,"error":"token_expired","message":"sign in"}"#);
        assert!(matches!(expired, Err(AccountError::SignInInvalid(_))));
        assert!(decode::<serde_json::Value>(200, b"{}").is_ok());
    }
}
