-- The shared workspace (workspace.rs): state entries and memories, each sealed by a member's
-- client under the mesh's key. The broker keeps ciphertext, blinded state names, versions,
-- epochs, writers and times, and never a readable byte of a name, value or memory.

-- One row per live state entry, by blinded name. Writes are compare-and-set on `version`;
-- an entry past `expires_at` is gone for readers and writers alike, and swept.
CREATE TABLE state_entries (
    mesh_id          TEXT NOT NULL,
    name             TEXT NOT NULL,
    version          INTEGER NOT NULL,
    epoch            INTEGER NOT NULL,
    nonce            TEXT NOT NULL,
    ciphertext       TEXT NOT NULL,
    -- The ciphertext's length, which the writer's byte quota counts.
    size             INTEGER NOT NULL,
    writer_member_id TEXT NOT NULL,
    writer_pubkey    TEXT NOT NULL,
    updated_at       INTEGER NOT NULL,
    expires_at       INTEGER,
    PRIMARY KEY (mesh_id, name)
) WITHOUT ROWID;
-- Cover the quota checks: a writer's live entries and their sizes, without reading rows.
CREATE INDEX state_entries_writer ON state_entries (mesh_id, writer_member_id, expires_at, size, name);
CREATE INDEX state_entries_expiry ON state_entries (expires_at) WHERE expires_at IS NOT NULL;

-- Memories, numbered per mesh in the order they were stored (`seq`), which clients sync their
-- own search index by. Forgetting one empties its content and gives it a new `seq`.
CREATE TABLE memories (
    mesh_id          TEXT NOT NULL,
    id               TEXT NOT NULL,
    seq              INTEGER NOT NULL,
    epoch            INTEGER NOT NULL,
    nonce            TEXT NOT NULL,
    ciphertext       TEXT NOT NULL,
    size             INTEGER NOT NULL,
    writer_member_id TEXT NOT NULL,
    writer_pubkey    TEXT NOT NULL,
    created_at       INTEGER NOT NULL,
    forgotten_at     INTEGER,
    PRIMARY KEY (mesh_id, id)
) WITHOUT ROWID;
CREATE UNIQUE INDEX memories_seq ON memories (mesh_id, seq);
CREATE INDEX memories_writer ON memories (mesh_id, writer_member_id, forgotten_at, size);
