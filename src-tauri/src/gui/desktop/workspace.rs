//! The shared workspace in the app: the Board (every joined mesh's shared state, refreshed
//! whenever a `state_changed` arrives) and Memory (search every mesh's memories, add one,
//! forget one). The person's own sessions read and write through the same supervisors as
//! everything else; values and memories are peers' content, shown as text.

use serde::Serialize;

use super::{Desktop, lock};
use crate::gui::error::{CommandError, CommandResult};
use crate::mesh::{MemoryRow, StateRow};

/// One mesh's shared state, as the Board shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BoardMesh {
    pub mesh_id: String,
    pub mesh: String,
    pub mesh_name: String,
    pub entries: Vec<StateRow>,
    /// Entries that did not open on this device.
    pub unreadable: usize,
    /// Why the mesh's state could not be read (no mesh key yet, not connected).
    pub error: Option<String>,
}

/// Memories found, and the meshes that could not be synced just now (searched offline).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecallView {
    pub memories: Vec<MemoryRow>,
    pub offline: Vec<String>,
}

/// At most this many memories per mesh in the Memory view.
const RECALL_PER_MESH: usize = 30;

impl Desktop {
    pub async fn board(&self) -> CommandResult<Vec<BoardMesh>> {
        let supervisors: Vec<_> = lock(&self.links).iter().map(|(id, s)| (id.clone(), s.clone())).collect();
        let mut meshes = Vec::new();
        for (mesh_id, supervisor) in supervisors {
            let Some(link) = supervisor.links().first().cloned() else { continue };
            let (entries, unreadable, error) = match supervisor.list_state(None, "").await {
                Ok((entries, unreadable)) => (entries, unreadable, None),
                Err(error) => (Vec::new(), 0, Some(error.to_string())),
            };
            meshes.push(BoardMesh {
                mesh_id,
                mesh: link.entry.slug.clone(),
                mesh_name: link.entry.name.clone(),
                entries,
                unreadable,
                error,
            });
        }
        meshes.sort_by(|a, b| a.mesh_name.cmp(&b.mesh_name));
        Ok(meshes)
    }

    /// Searches every mesh (or `mesh_id`'s) for `query` (newest first when empty).
    pub async fn recall(&self, query: &str, mesh_id: Option<&str>) -> CommandResult<RecallView> {
        let supervisors: Vec<_> = lock(&self.links)
            .iter()
            .filter(|(id, _)| mesh_id.is_none_or(|wanted| wanted == id.as_str()))
            .map(|(_, s)| s.clone())
            .collect();
        let mut view = RecallView { memories: Vec::new(), offline: Vec::new() };
        for supervisor in supervisors {
            let (memories, offline) =
                supervisor.recall(None, query, Vec::new(), RECALL_PER_MESH).await.map_err(CommandError::from)?;
            if offline.is_some()
                && let Some(link) = supervisor.links().first()
            {
                view.offline.push(link.entry.name.clone());
            }
            view.memories.extend(memories);
        }
        if query.trim().is_empty() {
            view.memories.sort_by(|a, b| b.at.cmp(&a.at));
        }
        Ok(view)
    }

    pub async fn remember(&self, mesh_id: &str, text: &str, tags: Vec<String>) -> CommandResult<MemoryRow> {
        let supervisor = self.supervisor_of(mesh_id)?;
        Ok(supervisor.remember(None, text, tags).await?)
    }

    pub async fn forget(&self, mesh_id: &str, id: &str) -> CommandResult<()> {
        let supervisor = self.supervisor_of(mesh_id)?;
        supervisor.forget(None, id).await?;
        Ok(())
    }

    fn supervisor_of(&self, mesh_id: &str) -> CommandResult<std::sync::Arc<crate::mesh::Supervisor>> {
        lock(&self.links)
            .get(mesh_id)
            .cloned()
            .ok_or_else(|| CommandError::not_found("that mesh is not joined on this device"))
    }
}
