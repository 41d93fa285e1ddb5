//! `claudemesh state get|set|list|delete|watch`, `claudemesh remember`, `claudemesh recall` and
//! `claudemesh forget`: the mesh's shared state and memory from a terminal or a script.
//! A lost compare-and-set exits 6, an absent entry or memory 3.

use std::time::Duration;

use serde_json::json;

use super::{CliResult, Exit, Failure, connect, mesh_failure, print_json, require_connected};
use crate::config::ConfigDir;
use crate::inbox::MessageKind;
use crate::mesh::{MemoryRow, StateRow, Supervisor};

/// Connects to `mesh` (or every joined mesh), runs `work`, and shuts the sessions down.
async fn with_supervisor<T>(
    mesh: Option<&str>,
    work: impl AsyncFnOnce(&Supervisor) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let config_dir = ConfigDir::from_env()?;
    let (supervisor, _incoming) = connect(&config_dir, mesh).await?;
    let result = match require_connected(&supervisor) {
        Ok(()) => work(&supervisor).await,
        Err(failure) => Err(failure),
    };
    supervisor.shutdown().await;
    result
}

/// A value as typed: JSON when it parses as JSON, else the text itself.
fn value_of(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

fn print_row(row: &StateRow) {
    let expires = row.expires_at.as_ref().map(|at| format!(", expires {at}")).unwrap_or_default();
    println!(
        "{}\t{}\t(version {}, by {} at {}{expires})",
        row.name, row.value, row.version, row.written_by, row.updated_at
    );
}

pub async fn get(name: String, mesh: Option<String>, json_output: bool) -> CliResult {
    let entry =
        with_supervisor(mesh.as_deref(), async |s| s.get_state(mesh.as_deref(), &name).await.map_err(mesh_failure))
            .await?;
    match (entry, json_output) {
        (Some(row), true) => print_json(json!({ "entry": row })),
        (Some(row), false) => print_row(&row),
        (None, true) => {
            print_json(json!({ "entry": null }));
            return Err(Failure::new(Exit::NotFound, format!("no shared state named {:?}", name.trim())));
        }
        (None, false) => return Err(Failure::new(Exit::NotFound, format!("no shared state named {:?}", name.trim()))),
    }
    Ok(())
}

pub async fn set(
    name: String,
    value: String,
    expected_version: Option<u64>,
    ttl: Option<Duration>,
    mesh: Option<String>,
    json_output: bool,
) -> CliResult {
    let value = value_of(&value);
    let row = with_supervisor(mesh.as_deref(), async |s| {
        s.set_state(mesh.as_deref(), &name, value, expected_version, ttl).await.map_err(mesh_failure)
    })
    .await?;
    if json_output {
        print_json(json!({ "entry": row }));
    } else {
        println!("{} = {} (version {})", row.name, row.value, row.version);
    }
    Ok(())
}

pub async fn list(prefix: Option<String>, mesh: Option<String>, json_output: bool) -> CliResult {
    let prefix = prefix.unwrap_or_default();
    let (rows, unreadable) =
        with_supervisor(mesh.as_deref(), async |s| s.list_state(mesh.as_deref(), &prefix).await.map_err(mesh_failure))
            .await?;
    if json_output {
        print_json(json!({ "entries": rows, "unreadable": unreadable }));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no shared state{}", if prefix.is_empty() { String::new() } else { format!(" under {prefix:?}") });
    }
    rows.iter().for_each(print_row);
    if unreadable > 0 {
        eprintln!("{unreadable} entr{} could not be opened here", if unreadable == 1 { "y" } else { "ies" });
    }
    Ok(())
}

pub async fn delete(name: String, expected_version: Option<u64>, mesh: Option<String>, json_output: bool) -> CliResult {
    let (slug, version) = with_supervisor(mesh.as_deref(), async |s| {
        s.delete_state(mesh.as_deref(), &name, expected_version).await.map_err(mesh_failure)
    })
    .await?;
    if json_output {
        print_json(json!({ "mesh": slug, "name": name.trim(), "deletedVersion": version }));
    } else if version == 0 {
        println!("{} had no shared state named {:?}", slug, name.trim());
    } else {
        println!("deleted {} (version {version}) in {slug}", name.trim());
    }
    Ok(())
}

/// Prints the entries under `prefix`, then every change to them until Ctrl-C.
pub async fn watch(prefix: Option<String>, mesh: Option<String>, json_output: bool) -> CliResult {
    let prefix = prefix.unwrap_or_default();
    let config_dir = ConfigDir::from_env()?;
    let (supervisor, mut incoming) = connect(&config_dir, mesh.as_deref()).await?;
    let started = async {
        require_connected(&supervisor)?;
        supervisor.watch_state(mesh.as_deref(), &prefix).await.map_err(mesh_failure)?;
        supervisor.list_state(mesh.as_deref(), &prefix).await.map_err(mesh_failure)
    };
    let (rows, _) = match started.await {
        Ok(listed) => listed,
        Err(failure) => {
            supervisor.shutdown().await;
            return Err(failure);
        }
    };
    for row in &rows {
        if json_output {
            print_json(json!({ "entry": row }));
        } else {
            print_row(row);
        }
    }
    if !json_output {
        eprintln!(
            "watching shared state{}; Ctrl-C to stop",
            if prefix.is_empty() { String::new() } else { format!(" under {prefix:?}") }
        );
    }
    loop {
        tokio::select! {
            message = incoming.recv() => match message {
                Some(m) if m.kind == MessageKind::State => {
                    if json_output {
                        print_json(json!({ "change": m.text, "name": m.target, "by": m.from, "mesh": m.mesh_slug, "at": m.sent_at }));
                    } else {
                        println!("[{}] {} {}: {}", m.sent_at, m.mesh_slug, m.from, m.text.as_deref().unwrap_or_default());
                    }
                    // Shown here: not left unread for `claudemesh inbox`.
                    let _ = supervisor.inbox().mark_read(&m.id, broker_core::protocol::now_ms());
                }
                Some(_) => {}
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    supervisor.shutdown().await;
    Ok(())
}

fn print_memory(row: &MemoryRow) {
    let tags = if row.tags.is_empty() { String::new() } else { format!(" [{}]", row.tags.join(", ")) };
    println!("{}\t{} ({} at {}){tags}", row.id, row.text, row.remembered_by, row.at);
}

pub async fn remember(text: String, tags: Vec<String>, mesh: Option<String>, json_output: bool) -> CliResult {
    let row = with_supervisor(mesh.as_deref(), async |s| {
        s.remember(mesh.as_deref(), &text, tags).await.map_err(mesh_failure)
    })
    .await?;
    if json_output {
        print_json(json!({ "memory": row }));
    } else {
        println!("remembered {} in {}", row.id, row.mesh);
    }
    Ok(())
}

pub async fn recall(
    query: String,
    tags: Vec<String>,
    limit: usize,
    mesh: Option<String>,
    json_output: bool,
) -> CliResult {
    // Recall works offline: it searches what this device synced when no broker answers.
    let config_dir = ConfigDir::from_env()?;
    let (supervisor, _incoming) = connect(&config_dir, mesh.as_deref()).await?;
    let result = supervisor.recall(mesh.as_deref(), &query, tags, limit).await.map_err(mesh_failure);
    supervisor.shutdown().await;
    let (rows, offline) = result?;
    if json_output {
        print_json(json!({ "memories": rows, "offline": offline }));
        return Ok(());
    }
    if let Some(offline) = offline {
        eprintln!("{offline}");
    }
    if rows.is_empty() {
        println!("nothing remembered matches");
    }
    rows.iter().for_each(print_memory);
    Ok(())
}

pub async fn forget(id: String, mesh: Option<String>, json_output: bool) -> CliResult {
    let slug =
        with_supervisor(mesh.as_deref(), async |s| s.forget(mesh.as_deref(), &id).await.map_err(mesh_failure)).await?;
    if json_output {
        print_json(json!({ "forgotten": id.trim(), "mesh": slug }));
    } else {
        println!("forgot {} in {slug}", id.trim());
    }
    Ok(())
}
