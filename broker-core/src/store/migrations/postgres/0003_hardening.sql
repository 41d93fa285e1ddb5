-- Every key a member used in a mesh, member keys and session keys, kept after the member left
-- or was removed: a key that was one member's is never another's (taking over a key would take
-- over the mail addressed to it).
CREATE TABLE mesh_keys (
    mesh_id       TEXT NOT NULL,
    pubkey        TEXT NOT NULL,
    member_id     TEXT NOT NULL,
    kind          TEXT NOT NULL,
    first_seen_at BIGINT NOT NULL,
    PRIMARY KEY (mesh_id, pubkey)
);

INSERT INTO mesh_keys (mesh_id, pubkey, member_id, kind, first_seen_at)
    SELECT mesh_id, pubkey, id, 'member', created_at FROM members
    ON CONFLICT DO NOTHING;

-- The device whose approval (or login token) signed this one in: revoking that device soon after
-- also revokes what it let in.
ALTER TABLE devices ADD COLUMN approved_by TEXT;
