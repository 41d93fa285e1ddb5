//! A writer batch's queue rows, written several per statement: the batch draws all its sequence
//! numbers and reads the newest entry of each recipient lane (`queue_tails`) in one statement,
//! places every enqueued message in memory (assigning sequence numbers in the batch's order and
//! each entry's `after`), and at the end inserts the bodies in one statement and the queue rows,
//! with the lanes' new newest entries, in another.
//! A message then costs the database a few array elements instead of two or three statements.

use std::collections::{BTreeSet, HashMap};

use postgres::{GenericClient, Statement};

use crate::protocol::Priority;
use crate::store::codes::DbCode as _;
use crate::store::{NewMessage, QueueSlot, WriteOp};

/// The statements of [`BatchRows`], prepared once per connection.
pub(super) struct RowStatements {
    begin: Statement,
    bodies: Statement,
    queue: Statement,
}

impl RowStatements {
    pub(super) fn prepare(client: &mut postgres::Client) -> Result<RowStatements, postgres::Error> {
        Ok(RowStatements {
            // One round trip: the batch's sequence numbers, and its lanes' newest entries.
            begin: client.prepare(
                "WITH lanes AS MATERIALIZED (
                     SELECT t.member_id, t.urgent, t.seq
                     FROM unnest($2::text[], $3::bool[]) AS l(member_id, urgent)
                     JOIN queue_tails t ON t.member_id = l.member_id AND t.urgent = l.urgent)
                 SELECT ARRAY(SELECT nextval('queue_seq') FROM generate_series(1, $1::bigint)),
                        ARRAY(SELECT member_id FROM lanes), ARRAY(SELECT urgent FROM lanes),
                        ARRAY(SELECT seq FROM lanes)",
            )?,
            bodies: client.prepare(
                "INSERT INTO bodies (seq, nonce, ciphertext, created_at)
                 SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[])",
            )?,
            // One round trip: the lanes' new newest entries, and the rows.
            queue: client.prepare(
                "WITH tails AS (
                     INSERT INTO queue_tails (member_id, urgent, seq)
                     SELECT * FROM unnest($20::text[], $21::bool[], $22::bigint[])
                     ON CONFLICT (member_id, urgent) DO UPDATE SET seq = excluded.seq)
                 INSERT INTO queue (member_id, seq, message_id, mesh_id, session_pubkey, exclude_session,
                        sender_member_id, sender_member_pubkey, sender_pubkey, sender_session_sig, target_spec,
                        priority, enc, nonce, ciphertext, body_seq, key_nonce, key_ciphertext, created_at, tracked)
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                        $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::bigint[], $13::text[],
                        $14::text[], $15::text[], $16::bigint[], $17::text[], $18::text[], $19::bigint[],
                        $23::bigint[])",
            )?,
        })
    }
}

/// One recipient's queue row, waiting for the batch's insert.
struct QueueRow<'a> {
    message: &'a NewMessage,
    delivery: usize,
    seq: i64,
    body_seq: Option<i64>,
}

/// The queue rows of one transaction (a writer batch, or one write after its batch failed).
pub(super) struct BatchRows<'a> {
    /// Sequence numbers drawn for the batch, rising, handed out in the batch's order.
    seqs: std::vec::IntoIter<i64>,
    /// The newest entry of each recipient lane, `(member, urgent)`: stored, or placed in this batch.
    tails: HashMap<(String, bool), u64>,
    /// Lanes whose tail this batch moved, to save with its rows.
    moved: BTreeSet<(String, bool)>,
    bodies: Vec<(i64, &'a NewMessage)>,
    queue: Vec<QueueRow<'a>>,
}

impl<'a> BatchRows<'a> {
    /// Draws the sequence numbers of every message in `ops` and reads their recipients' lanes'
    /// newest entries. Call it once the batch holds its scopes' locks: a mesh's queue then moves
    /// only with this transaction.
    pub(super) fn prepare(
        db: &mut impl GenericClient,
        statements: &RowStatements,
        ops: impl Iterator<Item = &'a WriteOp>,
    ) -> Result<BatchRows<'a>, postgres::Error> {
        let messages: Vec<&NewMessage> = ops
            .filter_map(|op| match op {
                WriteOp::Enqueue(message) => Some(message),
                _ => None,
            })
            .collect();
        let needed: i64 = messages.iter().map(|m| m.deliveries.len() as i64 + i64::from(m.deliveries.len() > 1)).sum();
        let mut rows = BatchRows {
            seqs: Vec::new().into_iter(),
            tails: HashMap::new(),
            moved: BTreeSet::new(),
            bodies: Vec::new(),
            queue: Vec::new(),
        };
        if needed == 0 {
            return Ok(rows);
        }
        // The lanes the batch writes to.
        let lanes: BTreeSet<(&str, bool)> = messages
            .iter()
            .flat_map(|m| {
                let urgent = m.envelope.priority == Priority::Now;
                m.deliveries.iter().map(move |d| (d.member_id.as_str(), urgent))
            })
            .collect();
        let (members, urgent): (Vec<&str>, Vec<bool>) = lanes.into_iter().unzip();
        let drawn = db.query_one(&statements.begin, &[&needed, &members, &urgent])?;
        let mut seqs: Vec<i64> = drawn.try_get(0)?;
        seqs.sort_unstable();
        rows.seqs = seqs.into_iter();
        let (tail_members, tail_urgent, tail_seqs): (Vec<String>, Vec<bool>, Vec<i64>) =
            (drawn.try_get(1)?, drawn.try_get(2)?, drawn.try_get(3)?);
        for ((member, urgent), seq) in tail_members.into_iter().zip(tail_urgent).zip(tail_seqs) {
            rows.tails.insert((member, urgent), seq as u64);
        }
        Ok(rows)
    }

    /// Places `message`: a sequence number per delivery (and one for a shared body), each after
    /// the newest entry of its lane.
    pub(super) fn place(&mut self, message: &'a NewMessage) -> Vec<QueueSlot> {
        let mut next = || self.seqs.next().expect("the batch drew a sequence number for every row");
        let body_seq = (message.deliveries.len() > 1).then(&mut next);
        let urgent = message.envelope.priority == Priority::Now;
        let mut slots = Vec::with_capacity(message.deliveries.len());
        let mut placed = Vec::with_capacity(message.deliveries.len());
        for (delivery, to) in message.deliveries.iter().enumerate() {
            let seq = next();
            placed.push(QueueRow { message, delivery, seq, body_seq });
            let lane = (to.member_id.clone(), urgent);
            let tail = self.tails.entry(lane.clone()).or_default();
            slots.push(QueueSlot { seq: seq as u64, after: *tail });
            *tail = seq as u64;
            self.moved.insert(lane);
        }
        if let Some(body_seq) = body_seq {
            self.bodies.push((body_seq, message));
        }
        self.queue.extend(placed);
        slots
    }

    /// Inserts the placed bodies and rows.
    pub(super) fn flush(
        &mut self,
        db: &mut impl GenericClient,
        statements: &RowStatements,
    ) -> Result<(), postgres::Error> {
        if !self.bodies.is_empty() {
            let seq: Vec<i64> = self.bodies.iter().map(|(seq, _)| *seq).collect();
            let nonce: Vec<&str> = self.bodies.iter().map(|(_, m)| m.envelope.nonce.as_str()).collect();
            let ciphertext: Vec<&str> = self.bodies.iter().map(|(_, m)| m.envelope.ciphertext.as_str()).collect();
            let created_at: Vec<i64> = self.bodies.iter().map(|(_, m)| m.envelope.created_at as i64).collect();
            db.execute(&statements.bodies, &[&seq, &nonce, &ciphertext, &created_at])?;
            self.bodies.clear();
        }
        if self.queue.is_empty() {
            return Ok(());
        }
        let moved = std::mem::take(&mut self.moved);
        let tail_members: Vec<&str> = moved.iter().map(|(member, _)| member.as_str()).collect();
        let tail_urgent: Vec<bool> = moved.iter().map(|(_, urgent)| *urgent).collect();
        let tail_seqs: Vec<i64> = moved.iter().map(|lane| self.tails[lane] as i64).collect();
        let rows = &self.queue;
        let text = |f: &dyn Fn(&QueueRow<'a>) -> &'a str| rows.iter().map(f).collect::<Vec<&str>>();
        let optional = |f: &dyn Fn(&QueueRow<'a>) -> Option<&'a str>| rows.iter().map(f).collect::<Vec<Option<&str>>>();
        let delivery = |r: &QueueRow<'a>| &r.message.deliveries[r.delivery];
        let shared = |r: &QueueRow<'a>| r.body_seq.is_some();
        db.execute(
            &statements.queue,
            &[
                &text(&|r| delivery(r).member_id.as_str()),
                &rows.iter().map(|r| r.seq).collect::<Vec<i64>>(),
                &text(&|r| r.message.envelope.message_id.as_str()),
                &text(&|r| r.message.envelope.mesh_id.as_str()),
                &optional(&|r| delivery(r).session_pubkey.as_deref()),
                &optional(&|r| delivery(r).exclude_session.as_deref()),
                &text(&|r| r.message.envelope.sender_member_id.as_str()),
                &text(&|r| r.message.envelope.sender_member_pubkey.as_str()),
                &text(&|r| r.message.envelope.sender_pubkey.as_str()),
                &optional(&|r| r.message.envelope.sender_session_sig.as_deref()),
                &text(&|r| r.message.envelope.target_spec.as_str()),
                &rows.iter().map(|r| r.message.envelope.priority.to_db()).collect::<Vec<i64>>(),
                &text(&|r| r.message.envelope.enc.to_db()),
                // A shared body keeps the nonce and ciphertext once, in `bodies`.
                &text(&|r| if shared(r) { "" } else { r.message.envelope.nonce.as_str() }),
                &optional(&|r| (!shared(r)).then_some(r.message.envelope.ciphertext.as_str())),
                &rows.iter().map(|r| r.body_seq).collect::<Vec<Option<i64>>>(),
                &optional(&|r| delivery(r).key.as_ref().map(|k| k.nonce.as_str())),
                &optional(&|r| delivery(r).key.as_ref().map(|k| k.ciphertext.as_str())),
                &rows.iter().map(|r| r.message.envelope.created_at as i64).collect::<Vec<i64>>(),
                &tail_members,
                &tail_urgent,
                &tail_seqs,
                &rows.iter().map(|r| i64::from(r.message.envelope.tracked)).collect::<Vec<i64>>(),
            ],
        )?;
        self.queue.clear();
        Ok(())
    }
}
