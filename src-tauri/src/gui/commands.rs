//! The window's commands: thin wrappers that take the [`Desktop`] from Tauri's state and call
//! it. Arguments arrive camelCase from JavaScript; every error is a [`CommandError`].

use std::sync::Arc;

use broker_core::protocol::Role;
use broker_core::protocol::account::{DeviceView, PendingDevice};
use tauri::{AppHandle, Runtime, State};

use super::conversations::{ConversationSummary, ThreadMessage};
use super::desktop::{
    BoardMesh, ClaudeIntegration, Desktop, InviteView, LocalBrokerChange, MembersView, RecallView, SignInView, Snapshot,
};
use super::error::CommandResult;
use super::settings::{DesktopSettings, MeshNotifications};
use super::state::StatusView;
use crate::account::Moderation;
use crate::mesh::MemoryRow;
use crate::mesh::scheduled::ScheduledRow;

type Core<'a> = State<'a, Arc<Desktop>>;

#[tauri::command]
pub fn snapshot(desktop: Core<'_>) -> Snapshot {
    desktop.snapshot()
}

#[tauri::command]
pub async fn setup_local(
    desktop: Core<'_>,
    account_name: Option<String>,
    display_name: Option<String>,
) -> CommandResult<StatusView> {
    desktop.setup_local(account_name, display_name).await
}

#[tauri::command]
pub async fn start_sign_in(
    desktop: Core<'_>,
    broker_url: String,
    account_name: Option<String>,
    display_name: Option<String>,
) -> CommandResult<SignInView> {
    desktop.inner().start_sign_in(broker_url, account_name, display_name).await
}

#[tauri::command]
pub fn cancel_sign_in(desktop: Core<'_>) {
    desktop.cancel_sign_in();
}

#[tauri::command]
pub async fn sign_in_with_token(
    desktop: Core<'_>,
    broker_url: String,
    login_token: String,
    display_name: Option<String>,
) -> CommandResult<StatusView> {
    desktop.sign_in_with_token(broker_url, login_token, display_name).await
}

#[tauri::command]
pub async fn sign_out(desktop: Core<'_>) -> CommandResult<StatusView> {
    desktop.sign_out().await
}

#[tauri::command]
pub async fn create_mesh(desktop: Core<'_>, name: String) -> CommandResult<StatusView> {
    desktop.create_mesh(name).await
}

#[tauri::command]
pub async fn create_invite(
    desktop: Core<'_>,
    mesh_id: String,
    role: Role,
    max_uses: u32,
    expires_in_hours: u64,
    email: Option<String>,
) -> CommandResult<InviteView> {
    desktop.create_invite(&mesh_id, role, max_uses, expires_in_hours, email).await
}

#[tauri::command]
pub async fn join_mesh(desktop: Core<'_>, link: String, display_name: Option<String>) -> CommandResult<StatusView> {
    desktop.join_mesh(link, display_name).await
}

#[tauri::command]
pub async fn leave_mesh(desktop: Core<'_>, mesh_id: String) -> CommandResult<StatusView> {
    desktop.leave_mesh(&mesh_id).await
}

#[tauri::command]
pub async fn members(desktop: Core<'_>, mesh_id: String) -> CommandResult<MembersView> {
    desktop.members(&mesh_id).await
}

#[tauri::command]
pub async fn scheduled(desktop: Core<'_>) -> CommandResult<Vec<ScheduledRow>> {
    desktop.scheduled().await
}

#[tauri::command]
pub async fn board(desktop: Core<'_>) -> CommandResult<Vec<BoardMesh>> {
    desktop.board().await
}

#[tauri::command]
pub async fn recall(desktop: Core<'_>, query: String, mesh_id: Option<String>) -> CommandResult<RecallView> {
    desktop.recall(&query, mesh_id.as_deref()).await
}

#[tauri::command]
pub async fn remember(desktop: Core<'_>, mesh_id: String, text: String, tags: Vec<String>) -> CommandResult<MemoryRow> {
    desktop.remember(&mesh_id, &text, tags).await
}

#[tauri::command]
pub async fn forget(desktop: Core<'_>, mesh_id: String, id: String) -> CommandResult<()> {
    desktop.forget(&mesh_id, &id).await
}

#[tauri::command]
pub async fn cancel_scheduled(desktop: Core<'_>, schedule_id: String) -> CommandResult<Vec<ScheduledRow>> {
    desktop.cancel_scheduled(&schedule_id).await
}

#[tauri::command]
pub async fn set_blocked(
    desktop: Core<'_>,
    mesh_id: String,
    member_pubkey: String,
    blocked: bool,
) -> CommandResult<()> {
    desktop.set_blocked(&mesh_id, &member_pubkey, blocked).await
}

#[tauri::command]
pub async fn moderate(desktop: Core<'_>, mesh_id: String, member_id: String, action: Moderation) -> CommandResult<()> {
    desktop.moderate(&mesh_id, &member_id, action).await
}

#[tauri::command]
pub async fn conversations(desktop: Core<'_>) -> CommandResult<Vec<ConversationSummary>> {
    desktop.conversations().await
}

#[tauri::command]
pub async fn conversation(desktop: Core<'_>, key: String) -> CommandResult<Vec<ThreadMessage>> {
    desktop.conversation(&key).await
}

#[tauri::command]
pub async fn send_message(
    desktop: Core<'_>,
    conversation: String,
    label: String,
    text: String,
) -> CommandResult<ThreadMessage> {
    desktop.send_message(&conversation, &label, &text).await
}

#[tauri::command]
pub async fn release_pair(desktop: Core<'_>, conversation: String) -> CommandResult<bool> {
    desktop.release_pair(&conversation).await
}

#[tauri::command]
pub async fn devices(desktop: Core<'_>) -> CommandResult<Vec<DeviceView>> {
    desktop.devices().await
}

#[tauri::command]
pub async fn revoke_device(desktop: Core<'_>, device_id: String) -> CommandResult<Vec<DeviceView>> {
    desktop.revoke_device(&device_id).await
}

#[tauri::command]
pub async fn lookup_device(desktop: Core<'_>, user_code: String) -> CommandResult<PendingDevice> {
    desktop.lookup_device(&user_code).await
}

#[tauri::command]
pub async fn decide_device(desktop: Core<'_>, user_code: String, approve: bool) -> CommandResult<PendingDevice> {
    desktop.decide_device(&user_code, approve).await
}

#[tauri::command]
pub fn settings(desktop: Core<'_>) -> DesktopSettings {
    desktop.settings()
}

#[tauri::command]
pub fn set_paused(desktop: Core<'_>, paused: bool) -> CommandResult<DesktopSettings> {
    desktop.set_paused(paused)
}

#[tauri::command]
pub fn set_mesh_notifications(
    desktop: Core<'_>,
    mesh_id: String,
    choice: MeshNotifications,
) -> CommandResult<DesktopSettings> {
    desktop.set_mesh_notifications(&mesh_id, choice)
}

#[tauri::command]
pub fn set_start_at_login(desktop: Core<'_>, enabled: bool) -> CommandResult<DesktopSettings> {
    desktop.set_start_at_login(enabled)
}

#[tauri::command]
pub async fn configure_local_broker(desktop: Core<'_>, change: LocalBrokerChange) -> CommandResult<StatusView> {
    desktop.configure_local_broker(change).await
}

#[tauri::command]
pub async fn local_broker_running(desktop: Core<'_>, run: bool) -> CommandResult<StatusView> {
    desktop.local_broker_running(run).await
}

#[tauri::command]
pub fn claude_integration(desktop: Core<'_>) -> CommandResult<ClaudeIntegration> {
    desktop.claude_integration(Vec::new())
}

#[tauri::command]
pub fn register_claude(desktop: Core<'_>, register: bool) -> CommandResult<ClaudeIntegration> {
    desktop.register_claude(register)
}

#[tauri::command]
pub fn open_link(desktop: Core<'_>, url: String) -> CommandResult<()> {
    desktop.open_link(&url)
}

/// Quit from the window: the same clean shutdown as the tray's Quit.
#[tauri::command]
pub async fn quit<R: Runtime>(app: AppHandle<R>, desktop: Core<'_>) -> CommandResult<()> {
    super::quit(app, desktop.inner().clone()).await;
    Ok(())
}
