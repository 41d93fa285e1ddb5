-- Delivery status of the messages whose sender asked for it (`send.track`): one row per
-- recipient member, written with the queue entry, stamped when the recipient's client stored it
-- (its acknowledgement) and when one of its sessions read it (`mark_read`). Only the sender
-- member reads them (`message_status`); they expire with the queue's TTL.
CREATE TABLE receipts (
    mesh_id          TEXT NOT NULL,
    sender_member_id TEXT NOT NULL,
    message_id       TEXT NOT NULL,
    member_id        TEXT NOT NULL,
    queued_at        INTEGER NOT NULL,
    delivered_at     INTEGER,
    read_at          INTEGER,
    PRIMARY KEY (mesh_id, sender_member_id, message_id, member_id)
) WITHOUT ROWID;
CREATE INDEX receipts_recipient ON receipts (mesh_id, member_id, message_id);
CREATE INDEX receipts_queued_at ON receipts (queued_at);
-- 1 when the entry's message has receipts rows to stamp at its acknowledgement.
ALTER TABLE queue ADD COLUMN tracked INTEGER NOT NULL DEFAULT 0;
