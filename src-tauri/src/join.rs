//! Joining a mesh: check the invite here, make a member key here, redeem it with `POST /join`.
//!
//! The invite's signature and expiry are verified before any key is generated or any request
//! is made, so a forged or stale link never reaches the network. The member's secret key is
//! generated on this machine and goes straight into the keystore; only its public half leaves.

use broker_core::crypto::{self, Keypair};
use broker_core::invite::{Invite, InviteError};
use serde::Deserialize;

use crate::config::{ConfigDir, MeshEntry};
use crate::keystore::{KeyStore, blocking};

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("this is not a claudemesh invite link: {0}")]
    BadInvite(InviteError),
    #[error("this invite has expired; ask the mesh admin for a new one")]
    Expired,
    #[error("already joined mesh {slug} as {name}; run `claudemesh leave {slug}` first to join again")]
    AlreadyJoined { slug: String, name: String },
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error(
        "{0}. The broker may have taken the join: run the same command again to finish it (it reuses this join's key)"
    )]
    Interrupted(crate::http::HttpError),
    #[error("the broker refused the invite ({code}): {message}")]
    Refused { code: String, message: String },
    #[error("keystore: {0}")]
    KeyStore(#[from] crate::keystore::KeyStoreError),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinResponse {
    mesh_id: String,
    member_id: String,
    role: String,
    #[serde(default)]
    already_member: bool,
}

/// What `join` did.
#[derive(Debug, Clone)]
pub struct Joined {
    pub entry: MeshEntry,
    pub already_member: bool,
}

/// Parses and verifies an invite link locally.
pub fn check_invite(link: &str, now_s: u64) -> Result<Invite, JoinError> {
    let invite = Invite::parse(link).map_err(JoinError::BadInvite)?;
    match invite.verify(now_s) {
        Ok(()) => Ok(invite),
        Err(InviteError::Expired) => Err(JoinError::Expired),
        Err(other) => Err(JoinError::BadInvite(other)),
    }
}

/// Joins the mesh `link` invites to. Blocking keystore calls run on the blocking pool. When
/// this device is signed in to the invite's broker, the member is linked to the device (and so
/// revoked with it).
pub async fn join(
    config_dir: &ConfigDir,
    keystore: std::sync::Arc<dyn KeyStore>,
    link: &str,
    display_name: &str,
) -> Result<Joined, JoinError> {
    let invite = check_invite(link, broker_core::protocol::now_ms() / 1000)?;
    let mut config = config_dir.load()?;
    if let Some(existing) = config.meshes.iter().find(|m| m.mesh_id == invite.mesh_id) {
        return Err(JoinError::AlreadyJoined { slug: existing.slug.clone(), name: existing.display_name.clone() });
    }

    // The secret is stored before the broker hears of the public key: a member whose secret
    // was lost could never connect. It is kept under this invite's name until the join is
    // settled, so a retry after a lost answer presents the same key (the broker then answers
    // `alreadyMember`) instead of a new one the used-up invite would refuse.
    let pending = pending_join_account(&invite);
    let key = {
        let (store, name) = (keystore.clone(), pending.clone());
        let kept = blocking(move || store.get(&name)).await?;
        match kept.map(|seed| Keypair::from_secret_hex(&seed)) {
            Some(Ok(key)) => key,
            _ => {
                let key = Keypair::generate();
                let (store, name, seed) = (keystore.clone(), pending.clone(), key.seed_hex());
                blocking(move || store.set(&name, &seed)).await?;
                key
            }
        }
    };
    let pubkey = key.public_hex();
    let forget_pending_key = || {
        let (store, name) = (keystore.clone(), pending.clone());
        async move {
            let _ = blocking(move || store.delete(&name)).await;
        }
    };
    let proof = key.sign_hex(crypto::join_proof_bytes(&invite.invite_id, &invite.mesh_id, &pubkey).as_bytes());
    let body = serde_json::json!({
        "invite": invite.to_token(),
        "pubkey": pubkey,
        "displayName": display_name,
        "proof": proof,
    });
    let bearer = match &config.account {
        Some(account) if crate::http::same_broker(&account.broker_url, &invite.broker_url) => {
            crate::keystore::device_token(&keystore).await.ok().flatten()
        }
        _ => None,
    };
    let sent = crate::http::request(
        hyper::Method::POST,
        &invite.broker_url,
        "/join",
        bearer.as_ref().map(|t| t.as_str()),
        Some(&body),
    )
    .await;
    let joined: JoinResponse = match sent {
        Ok((200, body)) => serde_json::from_slice(&body).map_err(|e| JoinError::Refused {
            code: "bad_response".into(),
            message: format!("unexpected answer from the broker: {e}"),
        })?,
        Ok((status, body)) => {
            forget_pending_key().await;
            let (code, message) = crate::http::error_of(status, &body);
            return Err(JoinError::Refused { code, message });
        }
        Err(error @ crate::http::HttpError::Interrupted { .. }) => return Err(JoinError::Interrupted(error)),
        Err(error) => {
            // The request never left this machine.
            forget_pending_key().await;
            return Err(error.into());
        }
    };
    check_answer(&invite, &joined)?;
    {
        let account = crate::config::key_account(&joined.mesh_id, &pubkey);
        let (store, seed) = (keystore.clone(), key.seed_hex());
        blocking(move || store.set(&account, &seed)).await?;
    }
    let entry = MeshEntry {
        mesh_id: joined.mesh_id,
        slug: invite.mesh_slug.clone(),
        name: invite.mesh_name.clone(),
        broker_url: invite.broker_url.clone(),
        member_id: joined.member_id,
        member_pubkey: pubkey,
        display_name: display_name.to_owned(),
        role: joined.role,
        joined_at: broker_core::protocol::now_ms(),
        device_linked: bearer.is_some(),
    };
    config.meshes.push(entry.clone());
    config_dir.save(&config)?;
    forget_pending_key().await;
    Ok(Joined { entry, already_member: joined.already_member })
}

/// The answer must be about the mesh and role the invite's signature covers: on the way back it
/// could have been altered (a proxy, plain http), and the config would then record a mesh and a
/// role nobody granted. (A member who joined before keeps the role it has.)
fn check_answer(invite: &Invite, joined: &JoinResponse) -> Result<(), JoinError> {
    let role_granted = joined.already_member || joined.role == invite.role.as_str();
    if joined.mesh_id == invite.mesh_id && role_granted {
        return Ok(());
    }
    Err(JoinError::Refused {
        code: "bad_response".into(),
        message: format!(
            "the broker answered for mesh {} as {}, but the invite is for mesh {} as {}",
            joined.mesh_id,
            joined.role,
            invite.mesh_id,
            invite.role.as_str()
        ),
    })
}

/// The keystore name of the member key of a join that is not settled yet.
fn pending_join_account(invite: &Invite) -> String {
    format!("pending-join:{}:{}", invite.mesh_id, invite.invite_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_core::invite::InviteTerms;
    use broker_core::protocol::Role;

    fn invite(expires_at: u64) -> Invite {
        Invite::sign(
            InviteTerms {
                mesh_id: "mesh_1".into(),
                mesh_slug: "acme".into(),
                mesh_name: "Acme".into(),
                broker_url: "http://127.0.0.1:9".into(),
                invite_id: "inv_1".into(),
                role: Role::Member,
                max_uses: 1,
                expires_at,
            },
            &Keypair::generate(),
        )
    }

    #[test]
    fn a_join_answer_must_match_what_the_invite_signed() {
        let signed = invite(2_000_000_000);
        let answer = |mesh: &str, role: &str, already_member: bool| JoinResponse {
            mesh_id: mesh.into(),
            member_id: "mem_1".into(),
            role: role.into(),
            already_member,
        };
        assert!(check_answer(&signed, &answer("mesh_1", "member", false)).is_ok());
        assert!(
            check_answer(&signed, &answer("mesh_1", "admin", true)).is_ok(),
            "an earlier membership keeps its role"
        );
        assert!(check_answer(&signed, &answer("mesh_1", "admin", false)).is_err(), "escalated on the way back");
        assert!(check_answer(&signed, &answer("mesh_2", "member", false)).is_err(), "another mesh");
    }

    #[test]
    fn invites_are_checked_locally_before_anything_else() {
        let good = invite(2_000_000_000);
        assert_eq!(check_invite(&good.link(), 1_000).expect("valid").mesh_id, "mesh_1");
        assert!(matches!(check_invite(&good.link(), 2_000_000_000), Err(JoinError::Expired)));
        let mut forged = good.clone();
        forged.role = Role::Admin;
        assert!(matches!(check_invite(&forged.link(), 1_000), Err(JoinError::BadInvite(InviteError::BadSignature))));
        assert!(matches!(check_invite("https://example.com/nope", 1_000), Err(JoinError::BadInvite(_))));
    }

    #[tokio::test]
    async fn an_unreachable_broker_leaves_no_key_and_no_mesh_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_dir = ConfigDir::at(dir.path().to_owned());
        let store = std::sync::Arc::new(crate::keystore::MemoryKeyStore::default());
        // Port 9 (discard) on loopback: nothing listens there in a test environment.
        let link = invite(2_000_000_000).link();
        let error = join(&config_dir, store.clone(), &link, "alice").await.expect_err("unreachable");
        assert!(matches!(error, JoinError::Http(crate::http::HttpError::Unreachable { .. })), "{error}");
        assert!(config_dir.load().expect("loads").meshes.is_empty());
        assert!(store.is_empty(), "the key made for this join was removed again");
        assert!(error.to_string().contains("check the address"), "{error}");
    }
}
