//! Meshes: creating one on the account's broker, joining with an invite, leaving, signing
//! invites, the member list, blocking a member and moderation.

use std::collections::HashSet;
use std::time::Duration;

use broker_core::protocol::Role;
use serde::Serialize;

use super::{Desktop, blocking, lock, qr_svg};
use crate::account::{self, InviteOptions, Moderation};
use crate::gui::error::{CommandError, CommandResult, ErrorKind};
use crate::gui::state::StatusView;
use crate::mesh::members::{Admission, LogStatus, MeshMembers};

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InviteView {
    pub link: String,
    /// The same invite for the desktop app (`claudemesh://join/…`).
    pub app_link: String,
    pub qr_svg: String,
    pub expires_at: String,
    pub max_uses: u32,
    pub role: Role,
    pub emailed: bool,
    pub email_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRow {
    pub id: Option<String>,
    pub pubkey: String,
    pub display_name: String,
    pub role: Option<Role>,
    pub joined_at: Option<String>,
    pub online: bool,
    pub banned: bool,
    /// Held by this account (this device or another of its devices).
    pub mine: bool,
    /// This member's grants block that one (`[]`).
    pub blocked: bool,
    /// How its admission checks out in the mesh's signed membership log (absent when the mesh's
    /// session is down or the member is not active).
    pub admission: Option<Admission>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MembersView {
    pub members: Vec<MemberRow>,
    /// This device may kick and ban (an admin, with the account on the mesh's broker).
    pub can_moderate: bool,
    /// Why the list shows only who is online, or that the mesh's membership log does not verify.
    pub note: Option<String>,
}

impl Desktop {
    pub async fn create_mesh(&self, name: String) -> CommandResult<StatusView> {
        let api = self.api().await;
        let api = self.checked(api).await?;
        let display_name = self.display_name_for_new_mesh();
        let created = account::create_mesh(&self.config_dir, &self.keystore, &api, name.trim(), &display_name).await;
        let entry = self.checked(created.map_err(CommandError::from)).await?;
        self.connect(entry).await;
        Ok(self.status())
    }

    fn display_name_for_new_mesh(&self) -> String {
        // The name this person already uses elsewhere, so peers recognise them.
        lock(&self.state)
            .meshes
            .values()
            .next()
            .map(|m| m.entry.display_name.clone())
            .unwrap_or_else(crate::config::default_display_name)
    }

    pub async fn create_invite(
        &self,
        mesh_id: &str,
        role: Role,
        max_uses: u32,
        expires_in_hours: u64,
        email: Option<String>,
    ) -> CommandResult<InviteView> {
        let mut entry = self.mesh_entry(mesh_id)?;
        let api = self.api_for(&entry).await?.ok_or_else(|| {
            CommandError::invalid(
                "invites are made with the account of the mesh's broker; this mesh is on another broker",
            )
        })?;
        // When the local broker is shared on the LAN, invites tell other machines its LAN address.
        // One lock: a guard in an `if let` scrutinee lives through the whole `if`, so locking the
        // state again in the same condition would deadlock.
        let lan_url = {
            let state = lock(&self.state);
            let local = &state.local_broker;
            let on_local = local.url.as_deref().is_some_and(|u| crate::http::same_broker(u, &entry.broker_url));
            local.lan_url.clone().filter(|_| on_local)
        };
        if let Some(lan_url) = lan_url {
            entry.broker_url = lan_url;
        }
        let options = InviteOptions {
            role,
            max_uses: max_uses.max(1),
            expires_in: Duration::from_secs(expires_in_hours.clamp(1, 24 * 30) * 3600),
            email: email.map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()),
        };
        let created = account::create_invite(&self.keystore, &api, &entry, &options).await;
        let created = self.checked(created.map_err(CommandError::from)).await?;
        let app_link = broker_core::invite::Invite::parse(&created.link)
            .map(|invite| format!("claudemesh://join/{}", invite.to_token()))
            .unwrap_or_else(|_| created.link.clone());
        Ok(InviteView {
            qr_svg: qr_svg(&created.link),
            link: created.link,
            app_link,
            expires_at: created.invite.expires_at,
            max_uses: created.invite.max_uses,
            role: created.invite.role,
            emailed: created.emailed,
            email_error: created.email_error,
        })
    }

    pub async fn join_mesh(&self, link: String, display_name: Option<String>) -> CommandResult<StatusView> {
        let name = display_name.filter(|n| !n.trim().is_empty()).unwrap_or_else(|| self.display_name_for_new_mesh());
        let joined = crate::join::join(&self.config_dir, self.keystore.clone(), link.trim(), name.trim()).await?;
        self.connect(joined.entry).await;
        Ok(self.status())
    }

    /// Leaves a mesh: at the broker when this device's member is linked to the account there,
    /// then here (the session ends, the member key is deleted).
    pub async fn leave_mesh(&self, mesh_id: &str) -> CommandResult<StatusView> {
        let entry = self.mesh_entry(mesh_id)?;
        if entry.device_linked
            && let Ok(Some(api)) = self.api_for(&entry).await
        {
            match api.leave_mesh(mesh_id).await {
                Ok(()) | Err(account::AccountError::Refused { status: 404, .. }) => {}
                Err(error) => return Err(error.into()),
            }
        }
        self.disconnect(mesh_id).await;
        let config_dir = self.config_dir.clone();
        let (keystore, key, id) = (self.keystore.clone(), entry.key_account(), entry.mesh_id.clone());
        blocking(move || {
            let mut config = config_dir.load()?;
            config.meshes.retain(|m| m.mesh_id != id);
            config_dir.save(&config)?;
            keystore.delete(&key)?;
            Ok(())
        })
        .await?;
        Ok(self.status())
    }

    /// Members with roles and this member's block list. On the account's broker the full list
    /// (and moderation for admins); elsewhere who is online.
    pub async fn members(&self, mesh_id: &str) -> CommandResult<MembersView> {
        let entry = self.mesh_entry(mesh_id)?;
        let grants = self.session(mesh_id)?.grants().await.unwrap_or_default();
        let blocked = |pubkey: &str| grants.get(pubkey).is_some_and(|caps| caps.is_empty());
        let api = match self.api_for(&entry).await {
            Ok(api) => api,
            Err(error) if error.kind == ErrorKind::NotSignedIn => None,
            Err(error) => return Err(error),
        };
        let checked = self.checked_members(mesh_id).await;
        let admission = |pubkey: &str| {
            checked.as_ref().and_then(|c| c.members.iter().find(|m| m.pubkey == pubkey)).map(|m| m.admission)
        };
        let log_note = match checked.as_ref().map(|c| &c.log) {
            Some(LogStatus::Failed { error }) => Some(format!(
                "The mesh's membership log does not verify ({error}): the broker may have added, hidden or \
                 rewritten members. Do not trust this list until that is explained."
            )),
            _ => None,
        };
        if let Some(api) = api {
            let members = api.members(mesh_id).await.map_err(CommandError::from);
            let members = self.checked(members).await?;
            return Ok(MembersView {
                members: members
                    .into_iter()
                    .filter(|m| m.active || m.banned)
                    .map(|m| MemberRow {
                        blocked: blocked(&m.pubkey),
                        admission: admission(&m.pubkey),
                        id: Some(m.id),
                        pubkey: m.pubkey,
                        display_name: m.display_name,
                        role: Some(m.role),
                        joined_at: Some(m.joined_at),
                        online: m.online,
                        banned: m.banned,
                        mine: m.mine,
                    })
                    .collect(),
                can_moderate: entry.role == Role::Admin.as_str(),
                note: log_note,
            });
        }
        let peers = lock(&self.state).meshes.get(mesh_id).map(|m| m.peers.clone()).unwrap_or_default();
        let mut seen = HashSet::new();
        Ok(MembersView {
            members: peers
                .into_iter()
                .filter(|p| seen.insert(p.member_pubkey.clone()))
                .map(|p| MemberRow {
                    blocked: blocked(&p.member_pubkey),
                    admission: admission(&p.member_pubkey),
                    id: None,
                    mine: p.same_member,
                    pubkey: p.member_pubkey,
                    display_name: p.name,
                    role: None,
                    joined_at: None,
                    online: true,
                    banned: false,
                })
                .collect(),
            can_moderate: false,
            note: log_note.or(Some(
                "This mesh is on a broker this device is not signed in to: only members online now are listed.".into(),
            )),
        })
    }

    /// The mesh's members as this device checks them against the signed membership log; `None`
    /// when its session cannot ask now (the list still shows, without admissions).
    async fn checked_members(&self, mesh_id: &str) -> Option<MeshMembers> {
        let supervisor = self.supervisor(mesh_id).ok()?;
        match supervisor.members(None).await {
            Ok(meshes) => meshes.into_iter().next(),
            Err(error) => {
                tracing::debug!(%error, "could not check the membership log");
                None
            }
        }
    }

    /// Blocks a member (it may do nothing to this member) or gives it the mesh defaults again.
    pub async fn set_blocked(&self, mesh_id: &str, member_pubkey: &str, blocked: bool) -> CommandResult<()> {
        if !broker_core::protocol::is_key_hex(member_pubkey) {
            return Err(CommandError::invalid("not a member key"));
        }
        let caps = blocked.then(Vec::new);
        self.session(mesh_id)?.set_grants([(member_pubkey.to_owned(), caps)].into()).await?;
        Ok(())
    }

    pub async fn moderate(&self, mesh_id: &str, member_id: &str, action: Moderation) -> CommandResult<()> {
        let entry = self.mesh_entry(mesh_id)?;
        let api = self.api_for(&entry).await?.ok_or_else(|| CommandError::invalid("this mesh is on another broker"))?;
        let result = api.moderate(mesh_id, member_id, action).await.map_err(CommandError::from);
        self.checked(result).await
    }
}
