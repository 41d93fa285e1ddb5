//! JSON bodies of the account HTTP API: device login (RFC 8628 shapes, snake_case as the RFC
//! writes them), devices, meshes, invites and grants (camelCase like the rest of the protocol).
//! Serde types and user-code helpers only; no I/O.

use serde::{Deserialize, Serialize};

use super::Role;

/// The 20 consonants user codes are made of: no vowels (no words), no look-alikes.
pub const USER_CODE_ALPHABET: &[u8; 20] = b"BCDFGHJKLMNPQRSTVWXZ";
pub const USER_CODE_LEN: usize = 8;

/// A random user code, 8 letters of [`USER_CODE_ALPHABET`] (stored without the dash).
pub fn new_user_code() -> String {
    let mut code = String::with_capacity(USER_CODE_LEN);
    while code.len() < USER_CODE_LEN {
        for byte in crate::crypto::random_bytes::<16>() {
            // 240 = 12 × 20: rejecting the rest keeps every letter equally likely.
            if byte < 240 && code.len() < USER_CODE_LEN {
                code.push(USER_CODE_ALPHABET[usize::from(byte % 20)] as char);
            }
        }
    }
    code
}

/// Accepts any case and any punctuation or spacing (`bcdf-ghjk`, `BCDF GHJK`); `None` unless
/// exactly 8 letters of the alphabet remain.
pub fn normalize_user_code(input: &str) -> Option<String> {
    let code: String = input.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect();
    (code.len() == USER_CODE_LEN && code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b))).then_some(code)
}

/// `BCDFGHJK` → `BCDF-GHJK`.
pub fn format_user_code(code: &str) -> String {
    if code.len() == USER_CODE_LEN { format!("{}-{}", &code[..4], &code[4..]) } else { code.to_owned() }
}

/// The header a request that needs a fresh confirmation carries: `<timestampMs>.<signature hex>`,
/// made with [`crate::crypto::confirmation_header`].
pub const CONFIRMATION_HEADER: &str = "claudemesh-confirmation";

/// `POST /v1/device/code`: what the device says about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceCodeRequest {
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub platform: String,
    #[serde(default)]
    pub arch: String,
    #[serde(default, alias = "appVersion")]
    pub app_version: String,
    /// Ours: the account (name) the device wants to join; its signed-in devices then see the
    /// request in `GET /v1/device/pending` (and can notify). Approving still takes a decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Ours: the public half (hex) of the device's confirmation key, an ed25519 key the device
    /// keeps next to its token; requests that need a fresh confirmation are signed with it. A
    /// token poll that names one overrides the code request's.
    #[serde(default, alias = "confirmKey", skip_serializing_if = "Option::is_none")]
    pub confirm_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceCodeResponse {
    pub device_code: String,
    /// Shown as `XXXX-XXXX`.
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: String,
    /// The same for the desktop app: `claudemesh://device?code=XXXX-XXXX`.
    pub verification_uri_app: String,
    pub expires_in: u64,
    pub interval: u64,
}

/// `POST /v1/device/token` (form-encoded as in the RFC, or JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TokenRequest {
    #[serde(default)]
    pub grant_type: Option<String>,
    /// The device code, or a pasted one-time login token.
    pub device_code: String,
    /// Ours: who is redeeming, recorded for a login token (a device code keeps what the device
    /// said when it asked).
    #[serde(flatten)]
    pub device: DeviceCodeRequest,
}

/// The grant type RFC 8628 defines; requests may omit it.
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccountInfo {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub device_id: String,
    pub account: AccountInfo,
}

/// Errors of the token endpoint, as the RFC names them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenError {
    pub error: String,
    pub error_description: String,
}

pub mod token_error {
    pub const AUTHORIZATION_PENDING: &str = "authorization_pending";
    pub const SLOW_DOWN: &str = "slow_down";
    pub const ACCESS_DENIED: &str = "access_denied";
    pub const EXPIRED_TOKEN: &str = "expired_token";
    pub const INVALID_GRANT: &str = "invalid_grant";
    pub const UNSUPPORTED_GRANT_TYPE: &str = "unsupported_grant_type";
    pub const INVALID_REQUEST: &str = "invalid_request";
}

/// `POST /v1/device/login-token`: a one-time token another device can paste to sign in to the
/// caller's account (for SSH sessions where nobody can approve a code).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginTokenResponse {
    pub login_token: String,
    pub expires_in: u64,
}

/// A device login waiting for approval, as an approver sees it before deciding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingDevice {
    /// Empty in `GET /v1/device/pending`: the approver types the code the new device shows, so a
    /// request made in someone else's name cannot be approved with one click.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user_code: String,
    pub hostname: String,
    pub platform: String,
    pub arch: String,
    pub app_version: String,
    pub ip: String,
    pub requested_at: String,
    pub expires_at: String,
    /// `pending`, `approved`, `denied` or `consumed`.
    pub status: String,
    /// The confirmation key the device showed when it asked: an approver endorses it in the
    /// meshes it is in (`DeviceDecision::endorsements`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_key: Option<String>,
}

/// `POST /v1/device/approve` and `/deny`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceDecision {
    #[serde(alias = "user_code")]
    pub user_code: String,
    /// With an approval: the approver's members' endorsements of the device's confirmation key,
    /// one per mesh, so that the member keys it enrols are admitted verifiably.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endorsements: Vec<Endorsement>,
}

/// A member's signature (`membership::endorsement_bytes`) over a device's confirmation key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endorsement {
    pub mesh_id: String,
    /// The endorsing member's key (held by the approving device).
    pub sponsor: String,
    pub signature: String,
}

/// A signed-in device of the account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceView {
    pub id: String,
    pub hostname: String,
    pub platform: String,
    pub arch: String,
    pub app_version: String,
    pub ip: String,
    pub created_at: String,
    pub last_seen_at: String,
    pub expires_at: String,
    pub revoked: bool,
    /// The device making this request.
    pub current: bool,
}

/// `POST /v1/connect/email`: send a sign-in code to this address.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailCodeRequest {
    pub email: String,
}

/// `POST /v1/connect/verify`: the emailed code, and the device it signs in.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EmailCodeVerify {
    pub email: String,
    pub code: String,
    /// Shown in the account's devices (for example "Telegram: Alice's chat").
    pub device_name: String,
    #[serde(default)]
    pub platform: String,
    #[serde(default)]
    pub arch: String,
    #[serde(default)]
    pub app_version: String,
    /// The device's confirmation key, as at device login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirm_key: Option<String>,
}

/// `POST /v1/signup` (open sign-up only).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignupRequest {
    pub name: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(flatten)]
    pub device: DeviceCodeRequest,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshView {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub role: Role,
    pub member_count: u64,
    /// Members with at least one connected session.
    pub online_count: u64,
    pub archived: bool,
    pub owner: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMeshRequest {
    pub name: String,
    #[serde(default)]
    pub slug: Option<String>,
    /// The creating device's new member key (64 hex).
    pub pubkey: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// The mesh id the creator chose (`mesh_` and 16 base32 characters), with `genesis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The creator key's signature over `membership::genesis_bytes(id, pubkey)`: the start of
    /// the mesh's membership log. Without it the mesh keeps no log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub genesis: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateMeshResponse {
    pub id: String,
    pub slug: String,
    pub name: String,
    pub member_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenameMeshRequest {
    pub name: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberView {
    pub id: String,
    pub pubkey: String,
    pub display_name: String,
    pub role: Role,
    pub joined_at: String,
    pub active: bool,
    pub banned: bool,
    pub online: bool,
    /// Another device of the caller's account holds it.
    pub mine: bool,
}

/// `POST /v1/meshes/{id}/enrol`: this device registers its own member key in a mesh its account
/// is already in.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrolRequest {
    pub pubkey: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// The device's confirmation key's signature over `membership::device_key_bytes` for this
    /// key: with the approver's endorsement, the admission is verifiable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrolResponse {
    pub mesh_id: String,
    pub member_id: String,
    pub role: Role,
    pub already_member: bool,
}

/// `POST /v1/meshes/{id}/invites`: an invite the device signed with an admin member key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateInviteRequest {
    /// The signed invite token (or a link containing it).
    pub invite: String,
    /// Email it there, when the broker can send email.
    #[serde(default)]
    pub email: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InviteView {
    pub id: String,
    pub role: Role,
    pub max_uses: u32,
    pub used_count: u32,
    pub expires_at: String,
    pub created_at: String,
    pub revoked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateInviteResponse {
    pub invite: InviteView,
    pub link: String,
    /// Whether the email went out. False when no address was given or SMTP is not configured.
    pub emailed: bool,
    /// Why it did not, when an address was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantsRequest {
    pub grants: super::GrantMap,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_codes_use_the_consonant_alphabet_and_normalize_loosely() {
        for _ in 0..100 {
            let code = new_user_code();
            assert_eq!(code.len(), 8);
            assert!(code.bytes().all(|b| USER_CODE_ALPHABET.contains(&b)), "{code}");
            assert_eq!(normalize_user_code(&format_user_code(&code).to_lowercase()), Some(code.clone()));
        }
        assert_eq!(normalize_user_code(" bcdf ghjk "), Some("BCDFGHJK".into()));
        assert_eq!(normalize_user_code("BCDF-GHJ"), None, "too short");
        assert_eq!(normalize_user_code("BCDF-GHJA"), None, "a vowel is not in the alphabet");
        assert_eq!(format_user_code("BCDFGHJK"), "BCDF-GHJK");
    }
}
