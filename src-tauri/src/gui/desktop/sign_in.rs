//! Signing this device in and out: the device login (a code approved on another device), a
//! one-time login token, "just this computer" (the embedded broker with this person as its
//! owner), and the account API every signed-in call goes through, which notices a refused
//! token.

use std::sync::Arc;

use broker_core::client::device_login::{LoginOutcome, PollResponse, run_device_login};
use broker_core::protocol::now_ms;
use serde::Serialize;
use zeroize::Zeroizing;

use super::{Desktop, Output, UiEvent, lock, parse_iso8601_ms, qr_svg};
use crate::account::{self, Api};
use crate::config::MeshEntry;
use crate::gui::error::{CommandError, CommandResult, ErrorKind};
use crate::gui::state::{StatusView, TokenHealth};

/// Where a device login of this app stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignInPhase {
    Waiting,
    Approved,
    Denied,
    Expired,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignInView {
    pub phase: SignInPhase,
    pub broker_url: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: String,
    /// The QR code of the complete verification URI, as an SVG document.
    pub qr_svg: String,
    /// Unix milliseconds.
    pub expires_at: u64,
    pub message: Option<String>,
}

/// `host:port` or `http://host:port/` → `http://host:port`.
fn normalize_broker_url(url: &str) -> CommandResult<String> {
    let url = url.trim().trim_end_matches('/');
    if url.is_empty() {
        return Err(CommandError::invalid("enter the broker's address, for example http://mesh.example.com:7900"));
    }
    if url.contains("://") { Ok(url.to_owned()) } else { Ok(format!("http://{url}")) }
}

impl Desktop {
    pub(super) async fn api(&self) -> CommandResult<Api> {
        let (api, _) = account::api(&self.config_dir, &self.keystore).await?;
        Ok(api)
    }

    /// The account API when `mesh` lives on the account's broker.
    pub(super) async fn api_for(&self, mesh: &MeshEntry) -> CommandResult<Option<Api>> {
        let api = self.api().await?;
        Ok(crate::http::same_broker(&api.broker_url, &mesh.broker_url).then_some(api))
    }

    /// Records that the broker refused this device's token.
    fn on_account_error(&self, error: &CommandError) {
        if error.kind == ErrorKind::SignInInvalid {
            let changed = {
                let mut state = lock(&self.state);
                std::mem::replace(&mut state.token, TokenHealth::Expired) != TokenHealth::Expired
            };
            if changed {
                self.emit_status();
            }
        }
    }

    pub(super) async fn checked<T>(&self, result: CommandResult<T>) -> CommandResult<T> {
        if let Err(error) = &result {
            self.on_account_error(error);
        }
        result
    }

    /// Learns this device's token expiry from its device list (401: expired or revoked).
    pub(super) async fn check_token(&self) {
        if lock(&self.state).account.is_none() {
            return;
        }
        let devices = match self.api().await {
            Ok(api) => api.devices().await.map_err(CommandError::from),
            Err(error) => Err(error),
        };
        if let Ok(devices) = self.checked(devices).await
            && let Some(current) = devices.iter().find(|d| d.current)
            && let Some(expires_at_ms) = parse_iso8601_ms(&current.expires_at)
        {
            lock(&self.state).token = TokenHealth::Valid { expires_at_ms };
            self.emit_status();
        }
    }

    /// "Just this computer": start the embedded broker, make the person its owner, create a
    /// personal mesh. Returns the new status.
    pub async fn setup_local(
        &self,
        account_name: Option<String>,
        display_name: Option<String>,
    ) -> CommandResult<StatusView> {
        if lock(&self.state).account.is_some() {
            return Err(CommandError::invalid("this device is already signed in; sign out first"));
        }
        self.save_settings(|s| s.local_broker.enabled = true)?;
        let url = self.start_local_broker(true).await?;
        let account_name = account_name.filter(|n| !n.trim().is_empty()).unwrap_or_else(default_account_name);
        let display_name = crate::config::display_name_or_default(display_name);
        let token = {
            let local = self.local.lock().await;
            let broker = local.as_ref().ok_or_else(|| CommandError::new(ErrorKind::LocalBroker, "stopped"))?;
            let confirm_key = account::confirm_key(&self.keystore).await?;
            broker
                .sign_in_owner(account_name.trim(), &confirm_key)
                .await
                .map_err(|e| CommandError::new(ErrorKind::LocalBroker, e.to_string()))?
        };
        let secret = Zeroizing::new(token.access_token.clone());
        let signed_in =
            account::finish_sign_in(&self.config_dir, &self.keystore, &url, token, None, &display_name).await?;
        self.after_sign_in(signed_in.account, signed_in.enrolled).await;
        let api = Api::new(&url, secret);
        if lock(&self.state).meshes.values().all(|m| !crate::http::same_broker(&m.entry.broker_url, &url)) {
            let entry = account::create_mesh(&self.config_dir, &self.keystore, &api, "Personal", &display_name).await?;
            self.connect(entry).await;
        }
        Ok(self.status())
    }

    async fn after_sign_in(&self, account: crate::config::AccountEntry, enrolled: Vec<MeshEntry>) {
        {
            let mut state = lock(&self.state);
            state.account = Some(account);
            state.awaiting_approval = false;
            state.token = TokenHealth::Unknown;
        }
        for entry in enrolled {
            self.connect(entry).await;
        }
        self.emit_status();
        self.check_token().await;
    }

    /// Starts a device login on `broker_url`; the returned view shows the code to approve.
    pub async fn start_sign_in(
        self: &Arc<Self>,
        broker_url: String,
        account_name: Option<String>,
        display_name: Option<String>,
    ) -> CommandResult<SignInView> {
        if lock(&self.state).account.is_some() {
            return Err(CommandError::invalid("this device is already signed in; sign out first"));
        }
        let broker_url = normalize_broker_url(&broker_url)?;
        let account_name = account_name.map(|a| a.trim().to_owned()).filter(|a| !a.is_empty());
        let confirm_key = account::confirm_key(&self.keystore).await?;
        let code = account::request_device_code(&broker_url, account_name.as_deref(), &confirm_key).await?;
        let view = SignInView {
            phase: SignInPhase::Waiting,
            broker_url: broker_url.clone(),
            user_code: code.user_code.clone(),
            verification_uri: code.verification_uri.clone(),
            verification_uri_complete: code.verification_uri_complete.clone(),
            qr_svg: qr_svg(&code.verification_uri_complete),
            expires_at: now_ms() + code.expires_in * 1000,
            message: None,
        };
        self.save_settings(|s| s.broker_url = Some(broker_url.clone()))?;
        lock(&self.state).awaiting_approval = true;
        self.emit_status();
        let desktop = self.clone();
        let shown = view.clone();
        let task = tokio::spawn(async move {
            let poller = account::HttpPoller { broker_url: broker_url.clone(), confirm_key };
            let outcome = run_device_login(&code, &poller, |_| {}).await;
            let (phase, message) = match outcome {
                LoginOutcome::SignedIn(token) => {
                    let name = crate::config::display_name_or_default(display_name);
                    let expected = account_name.as_deref();
                    match account::finish_sign_in(
                        &desktop.config_dir,
                        &desktop.keystore,
                        &broker_url,
                        token,
                        expected,
                        &name,
                    )
                    .await
                    {
                        Ok(signed_in) => {
                            desktop.after_sign_in(signed_in.account, signed_in.enrolled).await;
                            (SignInPhase::Approved, None)
                        }
                        Err(error) => (SignInPhase::Failed, Some(error.to_string())),
                    }
                }
                LoginOutcome::Denied => {
                    (SignInPhase::Denied, Some("the sign-in was denied on the approving device".into()))
                }
                LoginOutcome::Expired => (SignInPhase::Expired, Some("nobody approved the code in time".into())),
                LoginOutcome::Failed(reason) => (SignInPhase::Failed, Some(reason)),
            };
            desktop.finish_sign_in_view(phase, message);
        });
        *lock(&self.sign_in) = (Some(task.abort_handle()), Some(shown));
        Ok(view)
    }

    fn finish_sign_in_view(&self, phase: SignInPhase, message: Option<String>) {
        let view = {
            let mut sign_in = lock(&self.sign_in);
            sign_in.0 = None;
            sign_in.1.as_mut().map(|view| {
                view.phase = phase;
                view.message = message;
                view.clone()
            })
        };
        lock(&self.state).awaiting_approval = false;
        if let Some(view) = view {
            self.send(Output::Ui(UiEvent::SignIn(view)));
        }
        self.emit_status();
    }

    pub fn cancel_sign_in(&self) {
        let task = {
            let mut sign_in = lock(&self.sign_in);
            sign_in.1 = None;
            sign_in.0.take()
        };
        if let Some(task) = task {
            task.abort();
        }
        lock(&self.state).awaiting_approval = false;
        self.emit_status();
    }

    /// Signs in with a one-time login token made on a signed-in device.
    pub async fn sign_in_with_token(
        &self,
        broker_url: String,
        login_token: String,
        display_name: Option<String>,
    ) -> CommandResult<StatusView> {
        if lock(&self.state).account.is_some() {
            return Err(CommandError::invalid("this device is already signed in; sign out first"));
        }
        let broker_url = normalize_broker_url(&broker_url)?;
        let login_token = Zeroizing::new(login_token.trim().to_owned());
        if login_token.is_empty() {
            return Err(CommandError::invalid("paste the login token made on a signed-in device"));
        }
        let confirm_key = account::confirm_key(&self.keystore).await?;
        let token = match account::poll_token(&broker_url, &login_token, &confirm_key).await? {
            PollResponse::Token(token) => token,
            PollResponse::Error(error) => {
                return Err(CommandError::new(
                    ErrorKind::Refused,
                    format!("the broker refused the token ({}): {}", error.error, error.error_description),
                ));
            }
        };
        let name = crate::config::display_name_or_default(display_name);
        let signed_in =
            account::finish_sign_in(&self.config_dir, &self.keystore, &broker_url, token, None, &name).await?;
        self.save_settings(|s| s.broker_url = Some(broker_url.clone()))?;
        self.after_sign_in(signed_in.account, signed_in.enrolled).await;
        Ok(self.status())
    }

    pub async fn sign_out(&self) -> CommandResult<StatusView> {
        let out = account::sign_out(&self.config_dir, &self.keystore).await?;
        let forgotten: Vec<String> = {
            let state = lock(&self.state);
            state
                .meshes
                .values()
                .filter(|m| out.forgotten.contains(&m.entry.slug))
                .map(|m| m.entry.mesh_id.clone())
                .collect()
        };
        for mesh_id in forgotten {
            self.disconnect(&mesh_id).await;
        }
        {
            let mut state = lock(&self.state);
            state.account = None;
            state.token = TokenHealth::Unknown;
            state.pending.clear();
        }
        lock(&self.sign_in).1 = None;
        self.emit_status();
        Ok(self.status())
    }
}

pub(super) fn default_account_name() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .ok()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "me".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_get_a_scheme_and_lose_a_trailing_slash() {
        assert_eq!(normalize_broker_url(" mesh.example.com:7900/ ").expect("ok"), "http://mesh.example.com:7900");
        assert_eq!(normalize_broker_url("http://10.0.0.2:7900").expect("ok"), "http://10.0.0.2:7900");
        assert!(normalize_broker_url("  ").is_err());
    }
}
