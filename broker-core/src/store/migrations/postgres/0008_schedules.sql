-- Scheduled and recurring messages: sealed by the scheduling client for the recipients it
-- resolved then (`deliveries`, each with its wrapped key for `multi`), held as ciphertext with
-- the time of the next occurrence. Firing an occurrence queues it and moves `next_fire_at` on
-- (or deletes a one-shot) in one transaction, so each occurrence is queued exactly once.
CREATE TABLE schedules (
    id                   TEXT NOT NULL PRIMARY KEY,
    mesh_id              TEXT NOT NULL,
    sender_member_id     TEXT NOT NULL,
    sender_member_pubkey TEXT NOT NULL,
    sender_pubkey        TEXT NOT NULL,
    sender_session_sig   TEXT,
    target_spec          TEXT NOT NULL,
    priority             BIGINT NOT NULL,
    enc                  TEXT NOT NULL,
    nonce                TEXT NOT NULL,
    ciphertext           TEXT NOT NULL,
    deliveries           TEXT NOT NULL,
    cron                 TEXT,
    tz                   TEXT,
    next_fire_at         BIGINT NOT NULL,
    fired                BIGINT NOT NULL DEFAULT 0,
    created_at           BIGINT NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_fire_at);
CREATE INDEX schedules_sender ON schedules (mesh_id, sender_member_id);
