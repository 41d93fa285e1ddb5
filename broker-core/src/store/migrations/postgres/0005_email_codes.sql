-- Sign-in codes sent by email (`POST /v1/connect/email`): six digits, stored only as a hash,
-- one live code per address, a few attempts each; redeeming one signs in a new device.
CREATE TABLE email_codes (
    id         TEXT PRIMARY KEY,
    email      TEXT NOT NULL,
    account_id TEXT NOT NULL REFERENCES accounts (id),
    code_hash  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    attempts   BIGINT NOT NULL DEFAULT 0,
    ended_at   BIGINT
);
CREATE INDEX email_codes_email ON email_codes (email);
