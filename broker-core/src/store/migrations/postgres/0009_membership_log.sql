-- The signed membership log (membership.rs): per mesh, every admission with the signatures that
-- allow it and every removal, hash-chained. Appended in the transaction that changes the
-- members; clients verify it back to the creator's key. Meshes created before it have none.
CREATE TABLE membership_log (
    mesh_id TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    at      BIGINT NOT NULL,
    prev    TEXT NOT NULL,
    change  TEXT NOT NULL,
    hash    TEXT NOT NULL,
    PRIMARY KEY (mesh_id, seq)
);
