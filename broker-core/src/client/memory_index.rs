//! This device's search index of its meshes' memories (`<config>/memories.db`): each mesh's
//! memories as the broker numbered them, opened, in SQLite with an FTS5 index, synced
//! incrementally (everything after the last `seq` it holds) and searched here, ranked by bm25,
//! offline too. The broker only ever holds them sealed; this file is the device owner's own
//! copy, owner-only, like the inbox.

use std::path::Path;
use std::sync::Mutex;

use super::MemoryChange;
use rusqlite::{Connection, params};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("memory index: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("memory index {path}: {message}")]
    Open { path: String, message: String },
}

/// Migrations by `user_version`; each runs once, in a transaction, at open.
const MIGRATIONS: &[&str] = &["CREATE TABLE memories (
        rowid INTEGER PRIMARY KEY,
        mesh_id TEXT NOT NULL,
        id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        text TEXT NOT NULL,
        tags TEXT NOT NULL,
        writer TEXT NOT NULL,
        at INTEGER NOT NULL,
        UNIQUE (mesh_id, id)
    );
    CREATE INDEX memories_newest ON memories (mesh_id, at);
    -- Tags are indexed as words too: a query finds a memory by its tags.
    CREATE VIRTUAL TABLE memories_fts USING fts5(text, tags, content = 'memories', content_rowid = 'rowid');
    CREATE TRIGGER memories_added AFTER INSERT ON memories BEGIN
        INSERT INTO memories_fts (rowid, text, tags) VALUES (new.rowid, new.text, new.tags);
    END;
    CREATE TRIGGER memories_removed AFTER DELETE ON memories BEGIN
        INSERT INTO memories_fts (memories_fts, rowid, text, tags) VALUES ('delete', old.rowid, old.text, old.tags);
    END;
    -- How far each mesh is synced: every change up to this `seq` is applied.
    CREATE TABLE synced (mesh_id TEXT PRIMARY KEY, seq INTEGER NOT NULL);"];

/// A memory found by [`MemoryIndex::recall`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Recalled {
    pub id: String,
    pub text: String,
    pub tags: Vec<String>,
    /// The member key that remembered it.
    pub writer: String,
    /// When (ms).
    pub at: u64,
}

pub struct MemoryIndex {
    conn: Mutex<Connection>,
}

impl MemoryIndex {
    pub fn open(path: &Path) -> Result<MemoryIndex, IndexError> {
        let mut conn = super::local_db::open_private(path)
            .map_err(|e| IndexError::Open { path: path.display().to_string(), message: e.to_string() })?;
        super::local_db::migrate(&mut conn, MIGRATIONS)?;
        Ok(MemoryIndex { conn: Mutex::new(conn) })
    }

    /// Every change of the mesh up to this `seq` is in the index.
    pub fn synced(&self, mesh_id: &str) -> Result<u64, IndexError> {
        let conn = self.conn.lock().expect("index lock");
        let seq = conn
            .query_row("SELECT seq FROM synced WHERE mesh_id = ?1", [mesh_id], |r| r.get::<_, i64>(0))
            .or_else(|error| if error == rusqlite::Error::QueryReturnedNoRows { Ok(0) } else { Err(error) })?;
        Ok(seq as u64)
    }

    /// Applies a page of the mesh's changes, in one transaction, and moves its sync mark past
    /// them. A memory this device cannot open is left out (and said so in the log).
    pub fn apply(&self, mesh_id: &str, changes: &[MemoryChange]) -> Result<(), IndexError> {
        let mut conn = self.conn.lock().expect("index lock");
        let tx = conn.transaction()?;
        for change in changes {
            match change {
                MemoryChange::Remembered(memory) => {
                    tx.execute("DELETE FROM memories WHERE mesh_id = ?1 AND id = ?2", params![mesh_id, memory.id])?;
                    tx.execute(
                        "INSERT INTO memories (mesh_id, id, seq, text, tags, writer, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![
                            mesh_id,
                            memory.id,
                            memory.seq as i64,
                            memory.text,
                            memory.tags.join(" "),
                            memory.writer,
                            memory.at as i64
                        ],
                    )?;
                }
                MemoryChange::Forgotten { id, .. } => {
                    tx.execute("DELETE FROM memories WHERE mesh_id = ?1 AND id = ?2", params![mesh_id, id])?;
                }
                MemoryChange::Unreadable { id, reason, .. } => {
                    tracing::warn!(mesh = mesh_id, memory = id, %reason, "a memory does not open; left out of the index");
                }
            }
        }
        if let Some(last) = changes.iter().map(MemoryChange::seq).max() {
            tx.execute(
                "INSERT INTO synced (mesh_id, seq) VALUES (?1, ?2)
                 ON CONFLICT (mesh_id) DO UPDATE SET seq = MAX(seq, excluded.seq)",
                params![mesh_id, last as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The mesh's memories that best match `query` (bm25; any of its words, each also as a
    /// prefix), carrying every one of `tags`; the newest first for an empty query.
    pub fn recall(
        &self,
        mesh_id: &str,
        query: &str,
        tags: &[String],
        limit: usize,
    ) -> Result<Vec<Recalled>, IndexError> {
        let conn = self.conn.lock().expect("index lock");
        let words = match_expression(query);
        // Tags are stored space-separated: each wanted tag must be one of them.
        let tag_filter = tags
            .iter()
            .enumerate()
            .map(|(i, _)| format!(" AND instr(' ' || m.tags || ' ', ' ' || ?{} || ' ') > 0", i + 4))
            .collect::<String>();
        // Both forms take the same numbered parameters: the empty query's `?2 = ''` holds.
        let sql = if words.is_empty() {
            format!(
                "SELECT m.id, m.text, m.tags, m.writer, m.at FROM memories m
                 WHERE m.mesh_id = ?1 AND ?2 = '' {tag_filter} ORDER BY m.at DESC, m.seq DESC LIMIT ?3"
            )
        } else {
            format!(
                "SELECT m.id, m.text, m.tags, m.writer, m.at FROM memories_fts JOIN memories m ON m.rowid = memories_fts.rowid
                 WHERE memories_fts MATCH ?2 AND m.mesh_id = ?1 {tag_filter}
                 ORDER BY bm25(memories_fts) LIMIT ?3"
            )
        };
        let mut stmt = conn.prepare_cached(&sql)?;
        let limit = limit as i64;
        let mut values: Vec<&dyn rusqlite::ToSql> = vec![&mesh_id, &words, &limit];
        values.extend(tags.iter().map(|t| t as &dyn rusqlite::ToSql));
        let rows = stmt.query_map(values.as_slice(), |row| {
            let tags: String = row.get(2)?;
            Ok(Recalled {
                id: row.get(0)?,
                text: row.get(1)?,
                tags: tags.split_whitespace().map(str::to_owned).collect(),
                writer: row.get(3)?,
                at: row.get::<_, i64>(4)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// An FTS5 expression from what a person or model typed: its words (letters and digits), each
/// quoted and matched as a prefix, any of them. Operators typed by accident cannot break it.
fn match_expression(query: &str) -> String {
    query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(|word| format!("\"{word}\"*"))
        .collect::<Vec<_>>()
        .join(" OR ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::MemoryItem;

    fn remembered(id: &str, seq: u64, text: &str, tags: &[&str]) -> MemoryChange {
        MemoryChange::Remembered(MemoryItem {
            id: id.into(),
            seq,
            text: text.into(),
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            writer: "w".into(),
            at: seq,
        })
    }

    fn ids(found: Vec<Recalled>) -> Vec<String> {
        found.into_iter().map(|m| m.id).collect()
    }

    #[test]
    fn recall_ranks_by_relevance_filters_by_tags_and_forgets() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let index = MemoryIndex::open(&dir.path().join("memories.db")).expect("opens");
        index
            .apply(
                "mesh",
                &[
                    remembered("m1", 1, "the staging database listens on port 5433", &["infra"]),
                    remembered("m2", 2, "deploys need two approvals; the database migration runs first", &["process"]),
                    remembered("m3", 3, "database database database: backups run nightly", &["infra", "backup"]),
                    remembered("m4", 4, "lunch is at noon", &[]),
                ],
            )
            .expect("applies");
        index.apply("other", &[remembered("o1", 1, "database of another mesh", &[])]).expect("applies");
        assert_eq!(index.synced("mesh").expect("reads"), 4);

        // bm25: the memory that is most about the query comes first; other meshes never.
        let found = ids(index.recall("mesh", "database", &[], 10).expect("recalls"));
        assert_eq!(found[0], "m3");
        assert_eq!(found.len(), 3);
        // Prefixes and punctuation are fine; an operator typed by accident is just a word.
        assert_eq!(ids(index.recall("mesh", "approv* AND (", &[], 10).expect("recalls")), ["m2"]);
        assert_eq!(ids(index.recall("mesh", "backups", &["infra".into()], 10).expect("recalls")), ["m3"]);
        assert_eq!(
            ids(index.recall("mesh", "database", &["infra".into(), "backup".into()], 10).expect("recalls")),
            ["m3"]
        );
        assert_eq!(ids(index.recall("mesh", "", &["infra".into()], 10).expect("recalls")), ["m3", "m1"]);
        assert_eq!(ids(index.recall("mesh", "infra", &[], 10).expect("recalls")).len(), 2, "tags are words too");
        assert_eq!(ids(index.recall("mesh", "", &[], 1).expect("recalls")), ["m4"]);

        index.apply("mesh", &[MemoryChange::Forgotten { id: "m3".into(), seq: 5 }]).expect("applies");
        assert_eq!(ids(index.recall("mesh", "database", &[], 10).expect("recalls")).len(), 2);
        assert_eq!(index.synced("mesh").expect("reads"), 5);
        // Reopened, it still holds what it synced.
        drop(index);
        let index = MemoryIndex::open(&dir.path().join("memories.db")).expect("reopens");
        assert_eq!(index.synced("mesh").expect("reads"), 5);
        assert_eq!(ids(index.recall("mesh", "approvals", &[], 10).expect("recalls")), ["m2"]);
    }
}
