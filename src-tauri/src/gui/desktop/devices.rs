//! The account's devices: listing and revoking them, and approving or denying another device's
//! login by its code.

use broker_core::protocol::account::{DeviceView, PendingDevice};

use super::{Desktop, lock};
use crate::account;
use crate::gui::error::{CommandError, CommandResult};
use crate::gui::notify::request_id;

impl Desktop {
    pub async fn devices(&self) -> CommandResult<Vec<DeviceView>> {
        let api = self.api().await;
        let api = self.checked(api).await?;
        let devices = api.devices().await.map_err(CommandError::from);
        self.checked(devices).await
    }

    pub async fn revoke_device(&self, device_id: &str) -> CommandResult<Vec<DeviceView>> {
        let api = self.checked(self.api().await).await?;
        let revoked = api.revoke_device(device_id).await.map_err(CommandError::from);
        self.checked(revoked).await?;
        self.devices().await
    }

    pub async fn lookup_device(&self, user_code: &str) -> CommandResult<PendingDevice> {
        let api = self.checked(self.api().await).await?;
        let found = api.pending_device(user_code).await.map_err(CommandError::from);
        self.checked(found).await
    }

    pub async fn decide_device(&self, user_code: &str, approve: bool) -> CommandResult<PendingDevice> {
        let api = self.checked(self.api().await).await?;
        let pending = self.checked(api.pending_device(user_code).await.map_err(CommandError::from)).await?;
        if pending.status != "pending" {
            return Err(CommandError::invalid(format!("that sign-in is already {}", pending.status)));
        }
        // Endorsing the device in this device's meshes lets its member keys be admitted
        // verifiably (docs/security.md, "The membership log").
        let endorsements = if approve {
            let found = account::endorsements(&self.config_dir, &self.keystore, &api.broker_url, &pending).await;
            self.checked(found.map_err(CommandError::from)).await?
        } else {
            Vec::new()
        };
        let decided = api.decide_device(&pending.user_code, approve, &endorsements).await.map_err(CommandError::from);
        let decided = self.checked(decided).await?;
        let decided_id = request_id(&decided);
        lock(&self.state).pending.retain(|p| request_id(p) != decided_id);
        self.emit_status();
        Ok(decided)
    }
}
