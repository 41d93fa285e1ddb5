-- Accounts and their signed-in devices. A device's bearer token is stored only as a hash.
CREATE TABLE accounts (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    email      TEXT,
    created_at BIGINT NOT NULL
);

CREATE TABLE devices (
    id           TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL REFERENCES accounts (id),
    token_hash   TEXT NOT NULL UNIQUE,
    hostname     TEXT NOT NULL,
    platform     TEXT NOT NULL,
    arch         TEXT NOT NULL,
    app_version  TEXT NOT NULL,
    ip           TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);
CREATE INDEX devices_account ON devices (account_id);

-- Pending device logins (RFC 8628). The device code is stored only as a hash; the token is
-- minted when the approved device polls, so no token is ever at rest.
CREATE TABLE device_codes (
    device_code_hash TEXT PRIMARY KEY,
    user_code        TEXT NOT NULL UNIQUE,
    hostname         TEXT NOT NULL,
    platform         TEXT NOT NULL,
    arch             TEXT NOT NULL,
    app_version      TEXT NOT NULL,
    ip               TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    interval_ms      BIGINT NOT NULL,
    last_poll_at     BIGINT,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'consumed')),
    -- `device_code`: a device asked and someone approved it; `login_token`: a signed-in device
    -- made a one-time token for another device to paste (approved from the start).
    kind             TEXT NOT NULL DEFAULT 'device_code' CHECK (kind IN ('device_code', 'login_token')),
    account_id       TEXT REFERENCES accounts (id),
    decided_by       TEXT,
    decided_at       BIGINT,
    attempts         BIGINT NOT NULL DEFAULT 0,
    -- The account the device says it wants to join (name or id), so that account's signed-in
    -- devices can list the request; approval still needs an explicit decision.
    account_hint     TEXT
);
CREATE INDEX device_codes_hint ON device_codes (account_hint) WHERE account_hint IS NOT NULL;

ALTER TABLE meshes ADD COLUMN owner_account_id TEXT REFERENCES accounts (id);
ALTER TABLE members ADD COLUMN account_id TEXT REFERENCES accounts (id);
ALTER TABLE members ADD COLUMN device_id TEXT REFERENCES devices (id);
CREATE INDEX members_account ON members (account_id);
CREATE INDEX members_device ON members (device_id);
ALTER TABLE invites ADD COLUMN email TEXT;

-- Per-peer capabilities: what `member_id` lets the member with `peer_pubkey` do to it.
-- No row: the mesh defaults. `[]`: blocked.
CREATE TABLE grants (
    member_id   TEXT NOT NULL REFERENCES members (id),
    peer_pubkey TEXT NOT NULL,
    caps        TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (member_id, peer_pubkey)
);

-- Append-only, hash-chained per scope (a mesh id, or `account:<id>` for account events).
CREATE TABLE audit_log (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mesh_id    TEXT NOT NULL,
    event_type TEXT NOT NULL,
    actor      TEXT,
    payload    TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX audit_log_mesh ON audit_log (mesh_id, id);
