//! The desktop's handling of its embedded broker ([`LocalBroker`]): starting and stopping it,
//! applying the person's settings (port, data directory, LAN sharing), and moving the account
//! and meshes along when its port changes.

use std::path::PathBuf;

use super::{Desktop, blocking, lock};
use crate::gui::error::{CommandError, CommandResult, ErrorKind};
use crate::gui::local_broker::{self, LocalBroker};
use crate::gui::state::{LocalBrokerView, StatusView};

/// Local-broker settings as the person edits them.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalBrokerChange {
    pub enabled: bool,
    pub port: u16,
    pub data_dir: Option<String>,
    pub share_on_lan: bool,
}

impl Desktop {
    pub(super) async fn start_local_broker(&self, first_run: bool) -> CommandResult<String> {
        let mut local = self.local.lock().await;
        if let Some(running) = local.as_ref() {
            return Ok(running.url());
        }
        let wanted = lock(&self.settings).local_broker.clone();
        let data_dir = wanted.data_dir(&self.config_dir);
        let started = LocalBroker::start(&data_dir, wanted.port, wanted.share_on_lan, first_run).await;
        let view = match &started {
            Ok(broker) => LocalBrokerView {
                running: true,
                port: Some(broker.port()),
                url: Some(broker.url()),
                lan_url: broker.lan_url(),
                data_dir: broker.data_dir().display().to_string(),
                error: None,
            },
            Err(error) => LocalBrokerView {
                running: false,
                port: Some(wanted.port),
                url: None,
                lan_url: None,
                data_dir: data_dir.display().to_string(),
                error: Some(error.to_string()),
            },
        };
        lock(&self.state).local_broker = view;
        self.emit_status();
        let broker = started.map_err(|e| CommandError::new(ErrorKind::LocalBroker, e.to_string()))?;
        if broker.port() != wanted.port {
            let port = broker.port();
            self.save_settings(|s| s.local_broker.port = port)?;
        }
        let url = broker.url();
        *local = Some(broker);
        Ok(url)
    }

    pub(super) async fn stop_local_broker(&self) {
        let stopped = self.local.lock().await.take();
        if let Some(broker) = stopped {
            broker.stop().await;
        }
        let mut state = lock(&self.state);
        state.local_broker.running = false;
        state.local_broker.url = None;
        state.local_broker.lan_url = None;
        state.local_broker.error = None;
        drop(state);
        self.emit_status();
    }

    /// Applies local-broker settings, restarting it when something it listens with changed.
    pub async fn configure_local_broker(&self, change: LocalBrokerChange) -> CommandResult<StatusView> {
        let before = lock(&self.settings).local_broker.clone();
        let data_dir = change.data_dir.map(|d| d.trim().to_owned()).filter(|d| !d.is_empty()).map(PathBuf::from);
        if change.port == 0 {
            return Err(CommandError::invalid("choose a port between 1 and 65535"));
        }
        let after = self.save_settings(|s| {
            s.local_broker.enabled = change.enabled;
            s.local_broker.port = change.port;
            s.local_broker.data_dir = data_dir;
            s.local_broker.share_on_lan = change.share_on_lan;
        })?;
        let after = after.local_broker;
        let running = self.local.lock().await.is_some();
        let listening_changed = before.port != after.port
            || before.share_on_lan != after.share_on_lan
            || before.data_dir(&self.config_dir) != after.data_dir(&self.config_dir);
        if running && (!after.enabled || listening_changed) {
            self.stop_local_broker().await;
        }
        if after.enabled {
            self.start_local_broker(false).await?;
        }
        if before.port != after.port {
            self.relocate_local_meshes(&local_broker::local_url(before.port), &local_broker::local_url(after.port))
                .await?;
        }
        Ok(self.status())
    }

    /// The local broker moved to another port: the account and the meshes that pointed at the
    /// old address point at the new one, and their sessions reconnect there.
    async fn relocate_local_meshes(&self, old_url: &str, new_url: &str) -> CommandResult<()> {
        let config_dir = self.config_dir.clone();
        let (old, new) = (old_url.to_owned(), new_url.to_owned());
        let moved = blocking(move || {
            let mut config = config_dir.load()?;
            if let Some(account) = config.account.as_mut()
                && crate::http::same_broker(&account.broker_url, &old)
            {
                account.broker_url = new.clone();
            }
            let mut moved = Vec::new();
            for mesh in config.meshes.iter_mut().filter(|m| crate::http::same_broker(&m.broker_url, &old)) {
                mesh.broker_url = new.clone();
                moved.push(mesh.clone());
            }
            config_dir.save(&config)?;
            Ok((config.account, moved))
        })
        .await?;
        let (account, meshes) = moved;
        lock(&self.state).account = account;
        for entry in meshes {
            self.connect(entry).await;
        }
        self.emit_status();
        Ok(())
    }

    pub async fn local_broker_running(&self, run: bool) -> CommandResult<StatusView> {
        if run {
            self.start_local_broker(false).await?;
        } else {
            self.stop_local_broker().await;
        }
        Ok(self.status())
    }
}
