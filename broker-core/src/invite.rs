//! Signed invites: what an admin member hands out so someone can join a mesh.
//!
//! An invite is a JSON object signed by an admin member's key, carried as unpadded base64url in
//! a link (`<broker>/join/<token>` or `claudemesh://join/<token>`). The joining device checks the
//! signature before it generates a key or talks to the broker; the broker checks it again, and
//! takes the role only from what was signed. No I/O here.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::crypto::{CryptoError, Keypair, PublicKey};
use crate::protocol::Role;

/// The invite format version this code writes and reads.
pub const INVITE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invite {
    pub v: u32,
    pub mesh_id: String,
    pub mesh_slug: String,
    pub mesh_name: String,
    /// The broker's public base URL (`http(s)://host:port`).
    pub broker_url: String,
    pub invite_id: String,
    pub role: Role,
    pub max_uses: u32,
    /// Unix seconds.
    pub expires_at: u64,
    /// The signing admin member's key (64 hex).
    pub issuer_pubkey: String,
    /// ed25519 signature (128 hex) over [`Invite::signed_bytes`].
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InviteError {
    #[error("not an invite link or token")]
    Malformed,
    #[error("unsupported invite version {0}")]
    UnsupportedVersion(u32),
    #[error("invite signature does not verify")]
    BadSignature,
    #[error("invite expired")]
    Expired,
}

impl From<CryptoError> for InviteError {
    fn from(error: CryptoError) -> Self {
        match error {
            CryptoError::BadSignature => InviteError::BadSignature,
            _ => InviteError::Malformed,
        }
    }
}

/// The unsigned fields of an invite, as the issuer chooses them.
#[derive(Debug, Clone)]
pub struct InviteTerms {
    pub mesh_id: String,
    pub mesh_slug: String,
    pub mesh_name: String,
    pub broker_url: String,
    pub invite_id: String,
    pub role: Role,
    pub max_uses: u32,
    pub expires_at: u64,
}

impl Invite {
    /// Signs `terms` with the issuing admin member's key.
    pub fn sign(terms: InviteTerms, issuer: &Keypair) -> Invite {
        let mut invite = Invite {
            v: INVITE_VERSION,
            mesh_id: terms.mesh_id,
            mesh_slug: terms.mesh_slug,
            mesh_name: terms.mesh_name,
            broker_url: terms.broker_url,
            invite_id: terms.invite_id,
            role: terms.role,
            max_uses: terms.max_uses,
            expires_at: terms.expires_at,
            issuer_pubkey: issuer.public_hex(),
            signature: String::new(),
        };
        invite.signature = issuer.sign_hex(invite.signed_bytes().as_bytes());
        invite
    }

    /// Exactly the bytes the signature covers: every field but the signature, `|`-separated.
    pub fn signed_bytes(&self) -> String {
        format!(
            "claudemesh-invite/v{}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
            self.v,
            self.mesh_id,
            self.mesh_slug,
            self.mesh_name,
            self.broker_url,
            self.invite_id,
            self.role.as_str(),
            self.max_uses,
            self.expires_at,
            self.issuer_pubkey
        )
    }

    /// Checks the signature against the embedded issuer key and the expiry against `now_s`.
    /// The caller still has to check that the issuer is an admin of the mesh.
    pub fn verify(&self, now_s: u64) -> Result<(), InviteError> {
        if self.v != INVITE_VERSION {
            return Err(InviteError::UnsupportedVersion(self.v));
        }
        PublicKey::from_hex(&self.issuer_pubkey)?.verify_hex(self.signed_bytes().as_bytes(), &self.signature)?;
        if now_s >= self.expires_at {
            return Err(InviteError::Expired);
        }
        Ok(())
    }

    pub fn to_token(&self) -> String {
        let json = serde_json::to_vec(self).expect("invite serializes");
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    /// The shareable https-or-http link on the broker.
    pub fn link(&self) -> String {
        format!("{}/join/{}", self.broker_url.trim_end_matches('/'), self.to_token())
    }

    /// Parses a token, a `…/join/<token>` link or a `claudemesh://join/<token>` link.
    pub fn parse(link_or_token: &str) -> Result<Invite, InviteError> {
        let text = link_or_token.trim();
        let token = match text.rfind("/join/") {
            Some(index) => &text[index + "/join/".len()..],
            None => text,
        };
        let token = token.split(['?', '#']).next().unwrap_or_default().trim_end_matches('/');
        let json =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| InviteError::Malformed)?;
        serde_json::from_slice(&json).map_err(|_| InviteError::Malformed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms() -> InviteTerms {
        InviteTerms {
            mesh_id: "mesh_1".into(),
            mesh_slug: "acme".into(),
            mesh_name: "Acme".into(),
            broker_url: "http://127.0.0.1:7900".into(),
            invite_id: "inv_1".into(),
            role: Role::Member,
            max_uses: 1,
            expires_at: 2_000_000_000,
        }
    }

    #[test]
    fn signed_invite_round_trips_through_every_link_form() {
        let issuer = Keypair::generate();
        let invite = Invite::sign(terms(), &issuer);
        let token = invite.to_token();
        for text in [token.clone(), invite.link(), format!("claudemesh://join/{token}"), format!(" {token}\n")] {
            let parsed = Invite::parse(&text).expect("parses");
            assert_eq!(parsed, invite);
            parsed.verify(1_000).expect("verifies");
        }
    }

    #[test]
    fn tampered_role_fails_verification() {
        let mut invite = Invite::sign(terms(), &Keypair::generate());
        invite.role = Role::Admin;
        assert_eq!(invite.verify(1_000), Err(InviteError::BadSignature));
    }

    #[test]
    fn expired_invite_is_refused() {
        let invite = Invite::sign(terms(), &Keypair::generate());
        assert_eq!(invite.verify(2_000_000_000), Err(InviteError::Expired));
    }

    #[test]
    fn garbage_is_malformed() {
        assert_eq!(Invite::parse("https://example.com/join/!!!"), Err(InviteError::Malformed));
        assert_eq!(Invite::parse(""), Err(InviteError::Malformed));
    }
}
