-- Broker-wide settings (public URL, directory version).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE meshes (
    id          TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    archived_at INTEGER
);

CREATE TABLE members (
    id           TEXT PRIMARY KEY,
    mesh_id      TEXT NOT NULL REFERENCES meshes (id),
    pubkey       TEXT NOT NULL CHECK (length(pubkey) = 64),
    display_name TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    banned_at    INTEGER,
    UNIQUE (mesh_id, pubkey)
);

CREATE TABLE invites (
    id               TEXT PRIMARY KEY,
    mesh_id          TEXT NOT NULL REFERENCES meshes (id),
    role             TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    max_uses         INTEGER NOT NULL CHECK (max_uses > 0),
    used_count       INTEGER NOT NULL DEFAULT 0,
    expires_at       INTEGER NOT NULL,
    issuer_member_id TEXT NOT NULL REFERENCES members (id),
    created_at       INTEGER NOT NULL,
    revoked_at       INTEGER
);

CREATE TABLE invite_redemptions (
    invite_id   TEXT NOT NULL REFERENCES invites (id),
    member_id   TEXT NOT NULL REFERENCES members (id),
    redeemed_at INTEGER NOT NULL,
    PRIMARY KEY (invite_id, member_id)
);

-- What a member's last session left behind (groups, summary, name, cumulative stats).
CREATE TABLE peer_state (
    member_id    TEXT PRIMARY KEY REFERENCES members (id),
    mesh_id      TEXT NOT NULL,
    groups       TEXT NOT NULL,
    summary      TEXT,
    display_name TEXT,
    stats        TEXT NOT NULL,
    last_seen_at INTEGER NOT NULL
);
CREATE INDEX peer_state_mesh ON peer_state (mesh_id);

-- One row per recipient member of each undelivered message, clustered by recipient so that
-- loading a member's backlog is one range scan. Single-recipient messages keep their sealed
-- body inline; multi-recipient ones share a row of `bodies` and carry their own wrapped key.
CREATE TABLE queue (
    member_id       TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    message_id      TEXT NOT NULL,
    mesh_id         TEXT NOT NULL,
    session_pubkey  TEXT,
    exclude_session TEXT,
    sender_member_id TEXT NOT NULL,
    sender_member_pubkey TEXT NOT NULL,
    sender_pubkey   TEXT NOT NULL,
    sender_session_sig TEXT,
    target_spec     TEXT NOT NULL,
    priority        INTEGER NOT NULL,
    enc             TEXT NOT NULL,
    nonce           TEXT NOT NULL,
    ciphertext      TEXT,
    body_seq        INTEGER,
    key_nonce       TEXT,
    key_ciphertext  TEXT,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (member_id, seq)
) WITHOUT ROWID;
CREATE INDEX queue_body ON queue (body_seq) WHERE body_seq IS NOT NULL;

CREATE TABLE bodies (
    seq        INTEGER PRIMARY KEY,
    nonce      TEXT NOT NULL,
    ciphertext TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
