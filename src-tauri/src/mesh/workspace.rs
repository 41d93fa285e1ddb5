//! The shared workspace as the front ends use it: shared state (get, set with compare-and-set,
//! list, delete, watch) and memory (remember, recall from this device's index, forget), one
//! mesh at a time. Before the first request the mesh's keys are fetched if this session holds
//! none yet; a write refused because the key moved on is retried once after a refresh.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use broker_core::client::memory_index::{MemoryIndex, Recalled};
use broker_core::client::{MeshClient, StateItem, WorkspaceError};
use broker_core::protocol::{StateChanged, iso8601_ms};
use serde::Serialize;

use super::{MeshError, MeshLink, Supervisor};

/// The largest value `set_state` takes, as JSON text, and the longest memory.
pub const MAX_STATE_VALUE: usize = 64 * 1024;
pub const MAX_MEMORY_TEXT: usize = 32 * 1024;
/// At most this many memories in one recall.
pub const MAX_RECALL: usize = 100;
/// A session without the mesh's keys looks for them this often, this far apart, before it says
/// it has none.
const KEY_WAITS: usize = 8;
const KEY_WAIT: Duration = Duration::from_millis(250);

/// A shared-state entry as front ends show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StateRow {
    pub mesh: String,
    pub name: String,
    pub value: serde_json::Value,
    pub version: u64,
    /// Who wrote this version: its display name, and its member key.
    pub written_by: String,
    pub writer_key: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// A memory as front ends show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryRow {
    pub mesh: String,
    pub mesh_id: String,
    pub id: String,
    pub text: String,
    pub tags: Vec<String>,
    pub remembered_by: String,
    pub writer_key: String,
    pub at: String,
}

/// What this session follows of a mesh's shared state: name prefixes, and the names it has
/// seen under their blinded form (a removal names only that).
#[derive(Debug, Default)]
pub(super) struct StateWatch {
    prefixes: Vec<String>,
    names: HashMap<String, String>,
}

/// A change to an entry this session follows, opened.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct WatchedChange {
    pub(super) name: String,
    pub(super) version: u64,
    /// The new value; `None` for a removal.
    pub(super) value: Option<serde_json::Value>,
    /// Who made it (member key).
    pub(super) by: String,
}

impl MeshLink {
    fn workspace_error(&self, source: WorkspaceError) -> MeshError {
        MeshError::Workspace { mesh: self.entry.slug.clone(), source }
    }

    /// Remembers `name` under its blinded form, for removals of it to be recognised.
    fn learn_name(&self, name: &str) {
        if let Ok(blinded) = self.client.blind_state_name(name) {
            self.state_watch.lock().expect("watch lock").names.insert(blinded, name.to_owned());
        }
    }

    /// A `state_changed` event, opened, when it concerns a name this session follows.
    pub(super) fn watched_change(&self, change: &StateChanged) -> Option<WatchedChange> {
        // Nothing followed: not even worth opening.
        if self.state_watch.lock().expect("watch lock").prefixes.is_empty() {
            return None;
        }
        let (name, value) = match &change.entry {
            Some(entry) => match self.client.open_state(entry) {
                Ok(item) => (item.name, Some(item.value)),
                Err(error) => {
                    tracing::warn!(mesh = %self.entry.slug, %error, "a shared-state change does not open");
                    return None;
                }
            },
            None => (self.state_watch.lock().expect("watch lock").names.get(&change.name)?.clone(), None),
        };
        let mut watch = self.state_watch.lock().expect("watch lock");
        watch.names.insert(change.name.clone(), name.clone());
        watch.prefixes.iter().any(|prefix| name.starts_with(prefix.as_str())).then(|| WatchedChange {
            name,
            version: change.version,
            value,
            by: change.by.clone(),
        })
    }

    /// Member key → display name, for the mesh's members.
    async fn member_names(&self) -> HashMap<String, String> {
        let members = self.client.list_members().await.unwrap_or_default();
        members.into_iter().map(|m| (m.pubkey, m.display_name)).collect()
    }

    fn state_row(&self, item: StateItem, names: &HashMap<String, String>) -> StateRow {
        StateRow {
            mesh: self.entry.slug.clone(),
            written_by: writer_name(names, &item.writer, &self.entry.member_pubkey),
            writer_key: item.writer,
            name: item.name,
            value: item.value,
            version: item.version,
            updated_at: iso8601_ms(item.updated_at),
            expires_at: item.expires_at.map(iso8601_ms),
        }
    }
}

/// A writer's display name: `you` for this member, else its member name (or its key's start).
fn writer_name(names: &HashMap<String, String>, writer: &str, me: &str) -> String {
    if writer == me {
        return "you".to_owned();
    }
    names.get(writer).cloned().unwrap_or_else(|| format!("{}…", &writer[..writer.len().min(12)]))
}

/// The state name as typed: not empty, at most 256 bytes.
fn checked_name(name: &str) -> Result<&str, MeshError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 256 {
        let problem = "a state name is 1 to 256 bytes (for example `lock/deploy` or `board/alice`)";
        return Err(MeshError::BadRequest(problem.into()));
    }
    Ok(name)
}

impl Supervisor {
    /// The one mesh a workspace request is for: `mesh`, or the only one joined.
    async fn workspace_link(&self, mesh: Option<&str>) -> Result<Arc<MeshLink>, MeshError> {
        let link = self.single(mesh, "the shared workspace")?;
        link.require_connected()?;
        self.ensure_keys(&link).await;
        Ok(link)
    }

    /// Fetches the mesh's keys when this session holds none yet. A member that just joined
    /// waits a little for them: the members online pass keys on within a second of seeing it
    /// arrive (after checking its admission in the log).
    async fn ensure_keys(&self, link: &MeshLink) {
        for attempt in 0..KEY_WAITS {
            if link.client.holds_mesh_keys() {
                return;
            }
            if attempt > 0 {
                tokio::time::sleep(KEY_WAIT).await;
            }
            // Only a verified member waiting for its wraps is worth waiting for: a mesh without
            // a log, or a member the broker alone vouches for, never gets a key.
            if link.refresh_keys(&self.log_pins).await.keys.is_err() {
                return;
            }
        }
    }

    /// Runs `write`, and once more after refreshing the keys when the key had moved on.
    async fn write_with_fresh_keys<T, F, Fut>(&self, link: &MeshLink, write: F) -> Result<T, MeshError>
    where
        F: Fn(MeshClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, WorkspaceError>>,
    {
        match write(link.client.clone()).await {
            Err(WorkspaceError::StaleEpoch) => {
                link.refresh_keys(&self.log_pins).await;
                write(link.client.clone()).await.map_err(|e| link.workspace_error(e))
            }
            other => other.map_err(|e| link.workspace_error(e)),
        }
    }

    pub async fn get_state(&self, mesh: Option<&str>, name: &str) -> Result<Option<StateRow>, MeshError> {
        let name = checked_name(name)?;
        let link = self.workspace_link(mesh).await?;
        let Some(item) = link.client.get_state(name).await.map_err(|e| link.workspace_error(e))? else {
            return Ok(None);
        };
        link.learn_name(name);
        let names = link.member_names().await;
        Ok(Some(link.state_row(item, &names)))
    }

    /// Entries whose names start with `prefix`; entries that do not check out are left out and
    /// counted.
    pub async fn list_state(&self, mesh: Option<&str>, prefix: &str) -> Result<(Vec<StateRow>, usize), MeshError> {
        let link = self.workspace_link(mesh).await?;
        let items = link.client.list_state(prefix).await.map_err(|e| link.workspace_error(e))?;
        let names = link.member_names().await;
        let mut rows = Vec::new();
        let mut unreadable = 0;
        for item in items {
            match item {
                Ok(item) => {
                    link.learn_name(&item.name);
                    rows.push(link.state_row(item, &names));
                }
                Err(error) => {
                    tracing::warn!(mesh = %link.entry.slug, %error, "a shared-state entry does not open");
                    unreadable += 1;
                }
            }
        }
        Ok((rows, unreadable))
    }

    pub async fn set_state(
        &self,
        mesh: Option<&str>,
        name: &str,
        value: serde_json::Value,
        expected_version: Option<u64>,
        ttl: Option<Duration>,
    ) -> Result<StateRow, MeshError> {
        let name = checked_name(name)?;
        let size = value.to_string().len();
        if size > MAX_STATE_VALUE {
            let problem = format!("the value is {size} bytes of JSON; a state value is at most {MAX_STATE_VALUE}");
            return Err(MeshError::BadRequest(problem));
        }
        let link = self.workspace_link(mesh).await?;
        let item = self
            .write_with_fresh_keys(&link, |client| {
                let value = value.clone();
                async move { client.set_state(name, value, expected_version, ttl).await }
            })
            .await?;
        link.learn_name(name);
        Ok(link.state_row(item, &HashMap::new()))
    }

    /// Removes `name`; the version removed (0: there was none).
    pub async fn delete_state(
        &self,
        mesh: Option<&str>,
        name: &str,
        expected_version: Option<u64>,
    ) -> Result<(String, u64), MeshError> {
        let name = checked_name(name)?;
        let link = self.workspace_link(mesh).await?;
        let version = link.client.delete_state(name, expected_version).await.map_err(|e| link.workspace_error(e))?;
        Ok((link.entry.slug.clone(), version))
    }

    /// From now on, changes of entries under `prefix` ("" for all) reach this session like
    /// messages; returns the meshes it follows them in.
    pub async fn watch_state(&self, mesh: Option<&str>, prefix: &str) -> Result<Vec<String>, MeshError> {
        let mut slugs = Vec::new();
        for link in self.select(mesh)? {
            let mut watch = link.state_watch.lock().expect("watch lock");
            if !watch.prefixes.iter().any(|p| p == prefix) {
                watch.prefixes.push(prefix.to_owned());
            }
            slugs.push(link.entry.slug.clone());
        }
        // The names there now, so that their removals are recognised too.
        for slug in &slugs {
            let _ = self.list_state(Some(slug), prefix).await;
        }
        Ok(slugs)
    }

    /// This device's memory index (opened on first use).
    fn memory_index(&self) -> Result<Arc<MemoryIndex>, MeshError> {
        if let Some(index) = self.memory_index.get() {
            return Ok(index.clone());
        }
        let index = MemoryIndex::open(&self.memory_index_path).map_err(|e| MeshError::MemoryIndex(e.to_string()))?;
        Ok(self.memory_index.get_or_init(|| Arc::new(index)).clone())
    }

    pub async fn remember(&self, mesh: Option<&str>, text: &str, tags: Vec<String>) -> Result<MemoryRow, MeshError> {
        let text = text.trim();
        if text.is_empty() || text.len() > MAX_MEMORY_TEXT {
            let problem = format!("a memory is 1 to {MAX_MEMORY_TEXT} bytes of text");
            return Err(MeshError::BadRequest(problem));
        }
        let tags: Vec<String> = tags.iter().map(|t| t.trim().to_lowercase()).filter(|t| !t.is_empty()).collect();
        let link = self.workspace_link(mesh).await?;
        let memory = self
            .write_with_fresh_keys(&link, |client| {
                let tags = tags.clone();
                async move { client.remember(text, tags).await }
            })
            .await?;
        // Into the index now, so that a recall right after finds it.
        let _ = self.sync_memories(&link).await;
        Ok(MemoryRow {
            mesh: link.entry.slug.clone(),
            mesh_id: link.entry.mesh_id.clone(),
            id: memory.id,
            text: memory.text,
            tags: memory.tags,
            remembered_by: "you".to_owned(),
            writer_key: memory.writer,
            at: iso8601_ms(memory.at),
        })
    }

    /// Brings this device's index of the mesh's memories up to date: every change after the
    /// last one it holds, a page at a time.
    async fn sync_memories(&self, link: &MeshLink) -> Result<(), MeshError> {
        let index = self.memory_index()?;
        let mesh_id = link.entry.mesh_id.clone();
        loop {
            let after = {
                let (index, mesh_id) = (index.clone(), mesh_id.clone());
                blocking(move || index.synced(&mesh_id)).await?
            };
            let (changes, more) = link.client.memory_changes(after).await.map_err(|e| link.workspace_error(e))?;
            if changes.is_empty() {
                return Ok(());
            }
            let (index, mesh_id) = (index.clone(), mesh_id.clone());
            blocking(move || index.apply(&mesh_id, &changes)).await?;
            if !more {
                return Ok(());
            }
        }
    }

    /// The memories that best match `query` (and carry every one of `tags`), from this
    /// device's index, synced first when the broker can be reached (offline: what it has).
    pub async fn recall(
        &self,
        mesh: Option<&str>,
        query: &str,
        tags: Vec<String>,
        limit: usize,
    ) -> Result<(Vec<MemoryRow>, Option<String>), MeshError> {
        let link = self.single(mesh, "the shared workspace")?;
        let synced = async {
            link.require_connected()?;
            self.ensure_keys(&link).await;
            self.sync_memories(&link).await
        };
        let offline =
            synced.await.err().map(|error| format!("not synced just now ({error}); showing what this device has"));
        let index = self.memory_index()?;
        let (mesh_id, query) = (link.entry.mesh_id.clone(), query.to_owned());
        let tags: Vec<String> = tags.iter().map(|t| t.trim().to_lowercase()).filter(|t| !t.is_empty()).collect();
        let found: Vec<Recalled> =
            blocking(move || index.recall(&mesh_id, &query, &tags, limit.clamp(1, MAX_RECALL))).await?;
        let names = if found.is_empty() || offline.is_some() { HashMap::new() } else { link.member_names().await };
        let rows = found
            .into_iter()
            .map(|m| MemoryRow {
                mesh: link.entry.slug.clone(),
                mesh_id: link.entry.mesh_id.clone(),
                remembered_by: writer_name(&names, &m.writer, &link.entry.member_pubkey),
                writer_key: m.writer,
                id: m.id,
                text: m.text,
                tags: m.tags,
                at: iso8601_ms(m.at),
            })
            .collect();
        Ok((rows, offline))
    }

    /// Forgets a memory for the whole mesh.
    pub async fn forget(&self, mesh: Option<&str>, id: &str) -> Result<String, MeshError> {
        let link = self.workspace_link(mesh).await?;
        link.client.forget(id.trim()).await.map_err(|e| link.workspace_error(e))?;
        let _ = self.sync_memories(&link).await;
        Ok(link.entry.slug.clone())
    }
}

/// Runs index work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, broker_core::client::memory_index::IndexError> + Send + 'static,
) -> Result<T, MeshError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| MeshError::MemoryIndex(e.to_string()))?
        .map_err(|e| MeshError::MemoryIndex(e.to_string()))
}
