//! Several broker processes (replicas) on one database: what the others did reaches this one as
//! store notices (`StoreNotice`), and each is applied here — entries another replica queued for a
//! member connected here are read from the store and pushed, directory changes take effect at
//! once (revocations cut sessions on every replica), and after a gap in the notices everything
//! held is read again.

use std::sync::{Arc, Weak};

use tokio::sync::mpsc;

use super::{Lane, Router};
use crate::store::StoreNotice;

/// Applies notices until the router is gone or the store stops giving them.
pub(super) async fn follow(router: Weak<Router>, mut notices: mpsc::UnboundedReceiver<StoreNotice>) {
    while let Some(notice) = notices.recv().await {
        let Some(router) = router.upgrade() else { return };
        router.apply_notice(notice).await;
    }
}

impl Router {
    async fn apply_notice(self: &Arc<Self>, notice: StoreNotice) {
        match notice {
            StoreNotice::Queued { mesh_id, member_id, urgent, seq } => {
                let Some(shard) = self.loaded_shard(&mesh_id) else { return };
                let mut state = shard.state.lock().expect("mesh lock");
                let lane = if urgent { Lane::Urgent } else { Lane::Normal };
                let woken = state
                    .members
                    .get_mut(&member_id)
                    .and_then(|m| m.queue.as_mut())
                    .is_some_and(|queue| queue.wake(lane, seq));
                if woken {
                    self.pump_member(&mut state, &member_id);
                }
            }
            StoreNotice::Released { mesh_id, member_id } => {
                if let Some(shard) = self.loaded_shard(&mesh_id) {
                    self.reload_queue(&mut shard.state.lock().expect("mesh lock"), &member_id);
                }
            }
            StoreNotice::Directory => self.directory_changed().await,
            StoreNotice::Announcement(_) => {}
            StoreNotice::Resync => {
                tracing::info!("reading every connected member's queue again after a gap in other replicas' notices");
                for shard in self.shards() {
                    let mut state = shard.state.lock().expect("mesh lock");
                    let members: Vec<String> =
                        state.members.iter().filter(|(_, m)| m.queue.is_some()).map(|(id, _)| id.clone()).collect();
                    for member_id in members {
                        self.reload_queue(&mut state, &member_id);
                    }
                }
                self.directory_changed().await;
            }
        }
    }

    /// Another process changed the directory: apply it now rather than at the next poll.
    async fn directory_changed(&self) {
        if let Err(error) = self.refresh_directory().await {
            tracing::warn!(%error, "reloading the directory after another replica changed it failed");
        }
    }

    /// The shard of `mesh_id` if this process has it loaded (only then can a session here care).
    fn loaded_shard(&self, mesh_id: &str) -> Option<Arc<super::MeshShard>> {
        self.meshes.lock().expect("meshes lock").get(mesh_id).cloned()
    }
}
