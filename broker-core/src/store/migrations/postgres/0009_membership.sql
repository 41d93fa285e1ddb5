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

-- Endorsements of a new device's confirmation key by a member of its account, made when that
-- member's device approved the sign-in; the device's enrolments cite them.
CREATE TABLE endorsements (
    mesh_id    TEXT NOT NULL,
    device_key TEXT NOT NULL,
    sponsor    TEXT NOT NULL,
    signature  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (mesh_id, device_key)
);

-- Mesh content keys (meshkey.rs): each epoch's record, signed by the member that made its key,
-- and each member's copy of an epoch key, sealed to it by another member. Epoch n + 1 is only
-- accepted while n is the newest.
CREATE TABLE mesh_epochs (
    mesh_id    TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    record     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (mesh_id, epoch)
);
CREATE TABLE epoch_wraps (
    mesh_id    TEXT NOT NULL,
    epoch      BIGINT NOT NULL,
    recipient  TEXT NOT NULL,
    wrapper    TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    ciphertext TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (mesh_id, recipient, epoch)
);
