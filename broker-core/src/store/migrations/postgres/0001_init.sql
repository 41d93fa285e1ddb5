-- Broker-wide settings (public URL, directory version).
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE meshes (
    id          TEXT PRIMARY KEY,
    slug        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    archived_at BIGINT
);

CREATE TABLE members (
    id           TEXT PRIMARY KEY,
    mesh_id      TEXT NOT NULL REFERENCES meshes (id),
    pubkey       TEXT NOT NULL CHECK (length(pubkey) = 64),
    display_name TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    banned_at    BIGINT,
    UNIQUE (mesh_id, pubkey)
);

CREATE TABLE invites (
    id               TEXT PRIMARY KEY,
    mesh_id          TEXT NOT NULL REFERENCES meshes (id),
    role             TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    max_uses         BIGINT NOT NULL CHECK (max_uses > 0),
    used_count       BIGINT NOT NULL DEFAULT 0,
    expires_at       BIGINT NOT NULL,
    issuer_member_id TEXT NOT NULL REFERENCES members (id),
    created_at       BIGINT NOT NULL,
    revoked_at       BIGINT
);

CREATE TABLE invite_redemptions (
    invite_id   TEXT NOT NULL REFERENCES invites (id),
    member_id   TEXT NOT NULL REFERENCES members (id),
    redeemed_at BIGINT NOT NULL,
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
    last_seen_at BIGINT NOT NULL
);
CREATE INDEX peer_state_mesh ON peer_state (mesh_id);

-- One row per recipient member of each undelivered message, clustered by recipient so that
-- loading a member's backlog is one range scan. Single-recipient messages keep their sealed
-- body inline; multi-recipient ones share a row of `bodies` and carry their own wrapped key.
CREATE TABLE queue (
    member_id       TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    message_id      TEXT NOT NULL,
    mesh_id         TEXT NOT NULL,
    session_pubkey  TEXT,
    exclude_session TEXT,
    sender_member_id TEXT NOT NULL,
    sender_member_pubkey TEXT NOT NULL,
    sender_pubkey   TEXT NOT NULL,
    sender_session_sig TEXT,
    target_spec     TEXT NOT NULL,
    priority        BIGINT NOT NULL,
    enc             TEXT NOT NULL,
    nonce           TEXT NOT NULL,
    ciphertext      TEXT,
    body_seq        BIGINT,
    key_nonce       TEXT,
    key_ciphertext  TEXT,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (member_id, seq)
);
CREATE INDEX queue_body ON queue (body_seq) WHERE body_seq IS NOT NULL;

CREATE TABLE bodies (
    seq        BIGINT PRIMARY KEY,
    nonce      TEXT NOT NULL,
    ciphertext TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Queue sequence numbers come from one sequence, so that every broker process on the database
-- draws unique, rising numbers.
CREATE SEQUENCE queue_seq;
