//! The desktop tray app (Tauri v2), started by `claudemesh` with no subcommand.
//!
//! The core ([`desktop::Desktop`]) knows nothing of Tauri; this module wires it in:
//! [`build_app`] registers the commands and keeps the app alive when its window closes (generic
//! over the runtime, so `tauri::test::mock_builder()` drives it in tests), and [`run`] adds
//! what needs a real desktop — the tray, native notifications, the single-instance socket —
//! and forwards the core's outputs to the window (one event type, [`UI_EVENT`]).
//!
//! Layout:
//! - `desktop` — the core: connections, local broker, sign-in, notifications policy, commands'
//!   logic (one struct, its methods in one file per area).
//! - `commands` — thin `#[tauri::command]` wrappers.
//! - `state` — what the app knows as plain data; the truthful state line.
//! - `conversations` — grouping received and sent messages into conversations.
//! - `notify` — which notifications to show (coalescing, settings) and showing them.
//! - `tray` — the tray menu (derived from the status) and its ids.
//! - `local_broker` — the embedded broker.
//! - `settings` — `desktop.json`.
//! - `links` — `claudemesh://` links; `instance` — the one running app receives them.
//! - `autostart` — start at login.
//! - `error` — the serializable command error.

mod autostart;
mod commands;
mod conversations;
mod desktop;
mod error;
mod instance;
mod links;
mod local_broker;
mod notify;
mod settings;
mod state;
mod tray;

use std::sync::Arc;
use std::time::Instant;

use tauri::{AppHandle, Emitter as _, Manager as _, RunEvent, Runtime};
use tokio::sync::mpsc;

use crate::config::ConfigDir;
use desktop::{Desktop, Output, UiEvent};

pub use links::SCHEME as LINK_SCHEME;

/// The name of the one event the window listens to.
pub const UI_EVENT: &str = "ui-event";
const MAIN_WINDOW: &str = "main";

/// How the app was started.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Stay in the tray (start at login).
    pub minimized: bool,
    /// A `claudemesh://` link to open.
    pub link: Option<String>,
}

/// Registers the commands and the window behaviour: closing the window destroys it (with its
/// WebKit process and memory) while the app lives on in the tray; Open builds it again.
pub fn build_app<R: Runtime>(builder: tauri::Builder<R>, desktop: Arc<Desktop>) -> tauri::Builder<R> {
    builder.manage(desktop).invoke_handler(tauri::generate_handler![
        commands::snapshot,
        commands::setup_local,
        commands::start_sign_in,
        commands::cancel_sign_in,
        commands::sign_in_with_token,
        commands::sign_out,
        commands::create_mesh,
        commands::create_invite,
        commands::join_mesh,
        commands::leave_mesh,
        commands::members,
        commands::scheduled,
        commands::cancel_scheduled,
        commands::board,
        commands::recall,
        commands::remember,
        commands::forget,
        commands::set_blocked,
        commands::moderate,
        commands::conversations,
        commands::conversation,
        commands::send_message,
        commands::release_pair,
        commands::devices,
        commands::revoke_device,
        commands::lookup_device,
        commands::decide_device,
        commands::settings,
        commands::set_paused,
        commands::set_mesh_notifications,
        commands::set_start_at_login,
        commands::configure_local_broker,
        commands::local_broker_running,
        commands::claude_integration,
        commands::register_claude,
        commands::open_link,
        commands::quit,
    ])
}

pub fn show_window<R: Runtime>(app: &AppHandle<R>) {
    let window = match app.get_webview_window(MAIN_WINDOW) {
        Some(window) => window,
        None => match build_window(app) {
            Ok(window) => window,
            Err(error) => {
                tracing::warn!(%error, "cannot open the window");
                return;
            }
        },
    };
    let _ = window.show();
    let _ = window.unminimize();
    let _ = window.set_focus();
}

/// The main window as `tauri.conf.json` describes it (created on demand, not at start).
fn build_window<R: Runtime>(app: &AppHandle<R>) -> tauri::Result<tauri::WebviewWindow<R>> {
    let config = app.config().app.windows.iter().find(|w| w.label == MAIN_WINDOW).cloned().unwrap_or_default();
    tauri::WebviewWindowBuilder::from_config(app, &config)?.build()
}

/// Quit: close every session and stop the local broker, then end the process.
pub async fn quit<R: Runtime>(app: AppHandle<R>, desktop: Arc<Desktop>) {
    desktop.shutdown().await;
    app.exit(0);
}

/// Runs the app until Quit. `started` is when the process started (for the startup log line).
pub fn run(launch: Launch, started: Instant) -> std::process::ExitCode {
    let failed = |message: String| {
        eprintln!("claudemesh: cannot start the desktop app: {message}");
        std::process::ExitCode::FAILURE
    };
    let config_dir = match ConfigDir::from_env() {
        Ok(dir) => dir,
        Err(error) => return failed(error.to_string()),
    };
    // One app per config directory: a second start hands its link to the first and ends.
    let listener = match instance::claim(&config_dir.run_dir(), launch.link.as_deref()) {
        Ok(instance::Claim::Primary(listener)) => listener,
        Ok(instance::Claim::Forwarded) => return std::process::ExitCode::SUCCESS,
        Err(error) => return failed(error),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return failed(error.to_string()),
    };
    tauri::async_runtime::set(runtime.handle().clone());
    let keystore = match crate::keystore::open(&config_dir) {
        Ok(keystore) => Arc::from(keystore),
        Err(error) => return failed(error.to_string()),
    };
    let (desktop, channels, outputs) = match Desktop::open(config_dir, keystore) {
        Ok(opened) => opened,
        Err(error) => return failed(error.to_string()),
    };
    let context: tauri::Context<tauri::Wry> = tauri::generate_context!();
    let core = desktop.clone();
    let app = build_app(tauri::Builder::default(), desktop.clone())
        .setup(move |app| {
            let handle = app.handle().clone();
            tray::create(&handle, &core.status())?;
            tracing::info!(elapsed_ms = started.elapsed().as_millis() as u64, "tray ready");
            tauri::async_runtime::spawn(shell(handle.clone(), core.clone(), outputs));
            let starting = core.clone();
            let link = launch.link.clone();
            tauri::async_runtime::spawn(async move {
                starting.start(channels).await;
                if let Some(link) = link
                    && let Err(error) = starting.open_link(&link)
                {
                    tracing::warn!(%error, "could not open the link");
                }
            });
            tauri::async_runtime::spawn(instance::serve(listener, handle.clone(), core.clone()));
            if !launch.minimized {
                show_window(&handle);
            }
            Ok(())
        })
        .build(context);
    let app = match app {
        Ok(app) => app,
        Err(error) => return failed(error.to_string()),
    };
    app.run(|_, event| {
        // The last window closing must not end a tray app; Quit exits with a code.
        if let RunEvent::ExitRequested { code: None, api, .. } = event {
            api.prevent_exit();
        }
    });
    drop(runtime);
    std::process::ExitCode::SUCCESS
}

/// Forwards the core's outputs: events to the window (and the tray), toasts to the platform.
async fn shell<R: Runtime>(app: AppHandle<R>, desktop: Arc<Desktop>, mut outputs: mpsc::UnboundedReceiver<Output>) {
    let notifier = Arc::new(notify::Notifier::default());
    while let Some(output) = outputs.recv().await {
        match output {
            Output::Ui(event) => {
                match &event {
                    UiEvent::Status(status) => tray::update(&app, status),
                    UiEvent::Navigate(_) => show_window(&app),
                    _ => {}
                }
                if let Err(error) = app.emit(UI_EVENT, event) {
                    tracing::warn!(%error, "could not send an event to the window");
                }
            }
            Output::Toast(toast) => {
                let (notifier, desktop) = (notifier.clone(), desktop.clone());
                tokio::task::spawn_blocking(move || {
                    let open = toast.open.clone();
                    let shown = notifier.show(&toast, move || {
                        if let Some(open) = open {
                            desktop.navigate(open.view, open.param);
                        }
                    });
                    if let Err(error) = shown {
                        tracing::warn!(%error, summary = %toast.summary, "could not show a notification");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keystore::{KeyStore, MemoryKeyStore};
    use serde_json::{Value, json};
    use tauri::ipc::{CallbackFn, InvokeBody};
    use tauri::test::{INVOKE_KEY, get_ipc_response, mock_builder, mock_context, noop_assets};
    use tauri::webview::InvokeRequest;

    fn invoke(
        webview: &tauri::WebviewWindow<tauri::test::MockRuntime>,
        cmd: &str,
        args: Value,
    ) -> Result<Value, Value> {
        get_ipc_response(
            webview,
            InvokeRequest {
                cmd: cmd.into(),
                callback: CallbackFn(0),
                error: CallbackFn(1),
                url: "tauri://localhost".parse().expect("url"),
                body: InvokeBody::Json(args),
                headers: Default::default(),
                invoke_key: INVOKE_KEY.to_string(),
            },
        )
        .map(|body| body.deserialize::<Value>().expect("json reply"))
    }

    fn snapshot_of(webview: &tauri::WebviewWindow<tauri::test::MockRuntime>) -> Value {
        invoke(webview, "snapshot", json!({})).expect("snapshot")
    }

    /// The wiring of `build_app` with the mock runtime: commands reach the core, results and
    /// errors come back serialized, and closing the window does not end the app.
    #[test]
    fn commands_drive_the_core_and_errors_carry_a_kind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keystore: Arc<dyn KeyStore> = Arc::new(MemoryKeyStore::default());
        let (desktop, channels, mut outputs) =
            Desktop::open(ConfigDir::at(dir.path().join("claudemesh")), keystore.clone()).expect("opens");
        let app = build_app(mock_builder(), desktop.clone()).build(mock_context(noop_assets())).expect("builds");
        let webview = tauri::WebviewWindowBuilder::new(&app, MAIN_WINDOW, Default::default()).build().expect("window");
        tauri::async_runtime::block_on(desktop.start(channels));

        let snapshot = invoke(&webview, "snapshot", json!({})).expect("snapshot");
        assert_eq!(snapshot["status"]["state"], "signed_out");
        assert_eq!(snapshot["settings"]["notifications"]["paused"], false);

        let error = invoke(&webview, "create_mesh", json!({"name": "acme"})).expect_err("needs an account");
        assert_eq!(error["kind"], "not_signed_in", "{error}");
        let error = invoke(&webview, "open_link", json!({"url": "https://example.com"})).expect_err("not ours");
        assert_eq!(error["kind"], "invalid");

        // "Just this computer": a local broker, the person its owner, a personal mesh.
        let status = invoke(&webview, "setup_local", json!({"accountName": "alice", "displayName": "alice"}))
            .expect("sets up locally");
        assert_eq!(status["account"]["name"], "alice");
        assert_eq!(status["account"]["local"], true, "{status}");
        assert_eq!(status["meshes"][0]["name"], "Personal");
        assert_eq!(status["localBroker"]["running"], true);
        assert!(
            keystore.get(crate::keystore::DEVICE_TOKEN).expect("keystore").is_some(),
            "the token is in the keystore"
        );
        let config = std::fs::read_to_string(dir.path().join("claudemesh/config.json")).expect("config");
        assert!(config.contains("\"accountName\": \"alice\""), "{config}");
        assert!(!config.contains("cmt_"), "no token in config.json");

        let status = invoke(&webview, "create_mesh", json!({"name": "acme"})).expect("creates");
        let acme =
            status["meshes"].as_array().expect("meshes").iter().find(|m| m["name"] == "acme").expect("acme").clone();
        let invite = invoke(
            &webview,
            "create_invite",
            json!({"meshId": acme["id"], "role": "member", "maxUses": 2, "expiresInHours": 24, "email": null}),
        )
        .expect("invites");
        assert!(invite["link"].as_str().is_some_and(|l| l.contains("/join/")), "{invite}");
        assert!(invite["appLink"].as_str().is_some_and(|l| l.starts_with("claudemesh://join/")), "{invite}");
        assert!(invite["qrSvg"].as_str().is_some_and(|s| s.contains("<svg")), "a QR code comes along");

        // Nothing the window receives carries the device token: no command result, no event.
        let token = keystore.get(crate::keystore::DEVICE_TOKEN).expect("keystore").expect("token");
        for result in [&status, &invite, &snapshot_of(&webview)] {
            assert!(!result.to_string().contains(token.as_str()), "the token leaked into a command result");
        }
        let mut seen = 0;
        while let Ok(output) = outputs.try_recv() {
            if let Output::Ui(event) = output {
                let text = serde_json::to_string(&event).expect("serializes");
                assert!(!text.contains(token.as_str()), "the token leaked into a window event");
                seen += 1;
            }
        }
        assert!(seen > 0, "status events went out");

        tauri::async_runtime::block_on(desktop.shutdown());
    }
}
