-- The newest queue entry ever committed per member and lane (`urgent`: the `now` lane), kept by
-- the writers so that a batch finds each entry's `after` with one key lookup instead of scanning
-- the member's queue backwards past rows deleted since (other replicas' acknowledgements leave
-- many). Writers change a member's row under its mesh's advisory lock.
CREATE TABLE queue_tails (
    member_id TEXT NOT NULL,
    urgent    BOOLEAN NOT NULL,
    seq       BIGINT NOT NULL,
    PRIMARY KEY (member_id, urgent)
);
INSERT INTO queue_tails (member_id, urgent, seq)
    SELECT member_id, priority = 0, MAX(seq) FROM queue GROUP BY member_id, priority = 0;
