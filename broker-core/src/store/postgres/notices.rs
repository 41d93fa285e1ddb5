//! News between broker processes on one database, over Postgres' LISTEN/NOTIFY.
//!
//! Why NOTIFY: a notification is sent when its transaction commits and never before, in commit
//! order, to every listening connection; a writer batch that commits queue entries announces
//! them in the same transaction, so a notice never precedes its rows and costs one statement per
//! batch, not per message. What NOTIFY does not give — delivery to a process that was not
//! listening — is covered by `StoreNotice::Resync` after every reconnection: the router then
//! reloads what it holds from the tables, which stay the truth.
//!
//! The channel is `claudemesh`. A notification's payload is the sending process's origin (the
//! `claudemesh.origin` setting of each of its connections), then one notice per line,
//! tab-separated: `e MESH MEMBER JSON` (a queued entry, whole, so that the replica holding its
//! member pushes it without reading it back), `q MESH MEMBER u|n SEQ` (entries queued up to SEQ
//! in a lane, `u` the `now` lane: an entry too large to carry), `r MESH MEMBER` (released), `d`
//! (directory), `a TEXT` (an announcement, alone in its notification, to the end of the
//! payload). A line of a kind this version does not know is skipped, so an older replica keeps
//! working beside a newer one during a rolling upgrade.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Config, GenericClient};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::protocol::{Enc, Priority, WrappedKey};
use crate::store::codes::DbCode as _;
use crate::store::{
    Delivery, Envelope, NewMessage, QueueSlot, QueuedEntry, StoreNotice, StoreResult, WriteOp, WriteOutcome,
};

/// The connection setting naming the process that sent a notification.
pub(super) const ORIGIN_SETTING: &str = "claudemesh.origin";
/// Room for a notification's lines: Postgres allows 8000 bytes, the origin takes some.
const MAX_LINES_BYTES: usize = 7_600;
/// A queued entry larger than this is announced by its sequence number only (`q`), and read
/// from the store where it is needed.
const MAX_ENTRY_LINE: usize = 3_000;

/// `NOTIFY` of each of `bodies`, in order, prefixed with this connection's origin, in one
/// statement (part of the caller's transaction).
pub(super) fn notify(db: &mut impl GenericClient, bodies: &[String]) -> Result<(), postgres::Error> {
    db.execute(
        "SELECT pg_notify('claudemesh', coalesce(current_setting('claudemesh.origin', true), '?') || E'\\n' || b)
         FROM unnest($1::text[]) WITH ORDINALITY AS t(b, n) ORDER BY n",
        &[&bodies],
    )?;
    Ok(())
}

/// A queued entry as an `e` line carries it (its mesh and member are on the line). Borrowed
/// from the batch's message when written (the writer thread writes one per delivery), owned
/// when read.
#[derive(Serialize, Deserialize)]
struct WireEntry<'a> {
    seq: u64,
    after: u64,
    message_id: Cow<'a, str>,
    sender_member_id: Cow<'a, str>,
    sender_member_pubkey: Cow<'a, str>,
    sender_pubkey: Cow<'a, str>,
    sender_session_sig: Option<Cow<'a, str>>,
    target_spec: Cow<'a, str>,
    priority: i64,
    enc: Cow<'a, str>,
    nonce: Cow<'a, str>,
    ciphertext: Cow<'a, str>,
    created_at: u64,
    session_pubkey: Option<Cow<'a, str>>,
    exclude_session: Option<Cow<'a, str>>,
    key: Option<(Cow<'a, str>, Cow<'a, str>)>,
    #[serde(default)]
    tracked: bool,
}

/// The `e` line of one delivery, or its `q` line when the entry is too large to carry.
fn entry_line(message: &NewMessage, delivery: &Delivery, slot: QueueSlot) -> String {
    let env = &message.envelope;
    fn text(s: &str) -> Cow<'_, str> {
        Cow::Borrowed(s)
    }
    let wire = WireEntry {
        seq: slot.seq,
        after: slot.after,
        message_id: text(&env.message_id),
        sender_member_id: text(&env.sender_member_id),
        sender_member_pubkey: text(&env.sender_member_pubkey),
        sender_pubkey: text(&env.sender_pubkey),
        sender_session_sig: env.sender_session_sig.as_deref().map(text),
        target_spec: text(&env.target_spec),
        priority: env.priority.to_db(),
        enc: text(env.enc.to_db()),
        nonce: text(&env.nonce),
        ciphertext: text(&env.ciphertext),
        created_at: env.created_at,
        session_pubkey: delivery.session_pubkey.as_deref().map(text),
        exclude_session: delivery.exclude_session.as_deref().map(text),
        key: delivery.key.as_ref().map(|k| (text(&k.nonce), text(&k.ciphertext))),
        tracked: env.tracked,
    };
    let line = format!(
        "e\t{}\t{}\t{}",
        env.mesh_id,
        delivery.member_id,
        serde_json::to_string(&wire).expect("an entry serializes")
    );
    if line.len() <= MAX_ENTRY_LINE {
        return line;
    }
    let lane = if env.priority == Priority::Now { 'u' } else { 'n' };
    format!("q\t{}\t{}\t{lane}\t{}", env.mesh_id, delivery.member_id, slot.seq)
}

/// An `e` line's entry; `None` when it does not read as one.
fn read_entry(mesh_id: &str, member_id: &str, json: &str) -> Option<StoreNotice> {
    let wire: WireEntry = serde_json::from_str(json).ok()?;
    let owned = |s: Cow<'_, str>| s.into_owned();
    let entry = QueuedEntry {
        seq: wire.seq,
        envelope: Arc::new(Envelope {
            message_id: owned(wire.message_id),
            mesh_id: mesh_id.to_owned(),
            sender_member_id: owned(wire.sender_member_id),
            sender_member_pubkey: owned(wire.sender_member_pubkey),
            sender_pubkey: owned(wire.sender_pubkey),
            sender_session_sig: wire.sender_session_sig.map(owned),
            target_spec: owned(wire.target_spec),
            priority: Priority::from_db(&wire.priority)?,
            enc: Enc::from_db(&owned(wire.enc))?,
            nonce: owned(wire.nonce),
            ciphertext: owned(wire.ciphertext),
            created_at: wire.created_at,
            tracked: wire.tracked,
        }),
        delivery: Delivery {
            member_id: member_id.to_owned(),
            session_pubkey: wire.session_pubkey.map(owned),
            exclude_session: wire.exclude_session.map(owned),
            key: wire.key.map(|(nonce, ciphertext)| WrappedKey { nonce: owned(nonce), ciphertext: owned(ciphertext) }),
        },
    };
    Some(StoreNotice::Entry { slot: QueueSlot { seq: wire.seq, after: wire.after }, entry })
}

/// The notice lines of one committed batch, in its order: every queued entry, and every release,
/// in notifications of at most [`MAX_LINES_BYTES`].
pub(super) fn batch_bodies<'a>(
    writes: impl Iterator<Item = (&'a WriteOp, &'a StoreResult<WriteOutcome>)>,
) -> Vec<String> {
    let mut lines = Vec::new();
    for (op, outcome) in writes {
        match (op, outcome) {
            (WriteOp::Enqueue(message), Ok(WriteOutcome::Enqueued(slots))) => {
                lines.extend(message.deliveries.iter().zip(slots).map(|(d, slot)| entry_line(message, d, *slot)));
            }
            (WriteOp::ReleaseSession { mesh_id, member_id, .. }, Ok(WriteOutcome::Changed(n))) if *n > 0 => {
                lines.push(format!("r\t{mesh_id}\t{member_id}"));
            }
            _ => {}
        }
    }
    let mut bodies: Vec<String> = Vec::new();
    for line in lines {
        match bodies.last_mut() {
            Some(body) if body.len() + 1 + line.len() <= MAX_LINES_BYTES => {
                body.push('\n');
                body.push_str(&line);
            }
            _ => bodies.push(line),
        }
    }
    bodies
}

/// The notices in a notification's payload, none when `own_origin` sent it.
pub(super) fn decode(payload: &str, own_origin: &str) -> Vec<StoreNotice> {
    let Some((origin, body)) = payload.split_once('\n') else { return Vec::new() };
    if origin == own_origin {
        return Vec::new();
    }
    if let Some(text) = body.strip_prefix("a\t") {
        return vec![StoreNotice::Announcement(text.to_owned())];
    }
    body.lines()
        .flat_map(|line| -> Vec<StoreNotice> {
            if let Some(rest) = line.strip_prefix("e\t") {
                let mut fields = rest.splitn(3, '\t');
                let (Some(mesh), Some(member), Some(json)) = (fields.next(), fields.next(), fields.next()) else {
                    return Vec::new();
                };
                // An entry this version cannot read (a newer one's): both lanes read the store.
                return read_entry(mesh, member, json).map(|entry| vec![entry]).unwrap_or_else(|| {
                    [true, false]
                        .map(|urgent| StoreNotice::Queued {
                            mesh_id: mesh.to_owned(),
                            member_id: member.to_owned(),
                            urgent,
                            seq: u64::MAX,
                        })
                        .into()
                });
            }
            let fields: Vec<&str> = line.split('\t').collect();
            let notice = match fields[..] {
                ["q", mesh, member, lane @ ("u" | "n"), seq] => seq.parse().ok().map(|seq| StoreNotice::Queued {
                    mesh_id: mesh.to_owned(),
                    member_id: member.to_owned(),
                    urgent: lane == "u",
                    seq,
                }),
                ["r", mesh, member] => {
                    Some(StoreNotice::Released { mesh_id: mesh.to_owned(), member_id: member.to_owned() })
                }
                ["d"] => Some(StoreNotice::Directory),
                _ => None,
            };
            notice.into_iter().collect()
        })
        .collect()
}

/// Listens on a connection of its own until `notices` is dropped, forwarding other processes'
/// notices. Each time it starts listening it sends `Resync` first: after a lost connection,
/// what was notified meanwhile is gone; the first time, the subscriber learns from when on it
/// hears everything. Runs on a thread of its own.
pub(super) fn listen(config: Config, origin: String, notices: mpsc::UnboundedSender<StoreNotice>) {
    while !notices.is_closed() {
        let mut client =
            match super::connect(&config).and_then(|mut c| Ok(c.batch_execute("LISTEN claudemesh").map(|()| c)?)) {
                Ok(client) => client,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for other broker processes' notices; retrying");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
        if notices.send(StoreNotice::Resync).is_err() {
            return;
        }
        loop {
            let next = client.notifications().timeout_iter(Duration::from_millis(500)).next();
            match next {
                Ok(Some(notification)) => {
                    for notice in decode(notification.payload(), &origin) {
                        if notices.send(notice).is_err() {
                            return;
                        }
                    }
                }
                Ok(None) if notices.is_closed() => return,
                Ok(None) if client.is_closed() => break,
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, "lost the connection that listens for other broker processes");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn enqueue(mesh: &str, members: &[&str], priority: Priority) -> WriteOp {
        enqueue_sized(mesh, members, priority, 0)
    }

    fn enqueue_sized(mesh: &str, members: &[&str], priority: Priority, ciphertext_bytes: usize) -> WriteOp {
        WriteOp::Enqueue(NewMessage {
            envelope: Arc::new(Envelope {
                message_id: format!("m{ciphertext_bytes}"),
                mesh_id: mesh.into(),
                sender_member_id: "a".into(),
                sender_member_pubkey: String::new(),
                sender_pubkey: String::new(),
                sender_session_sig: None,
                target_spec: "*".into(),
                priority,
                enc: Enc::Multi,
                nonce: "nonce".into(),
                ciphertext: "c".repeat(ciphertext_bytes),
                created_at: 7,
                tracked: true,
            }),
            deliveries: members
                .iter()
                .map(|m| Delivery {
                    member_id: (*m).into(),
                    session_pubkey: Some("session".into()),
                    exclude_session: None,
                    key: Some(WrappedKey { nonce: "n".into(), ciphertext: format!("key for {m}") }),
                })
                .collect(),
            audit: Vec::new(),
            fire: None,
        })
    }

    fn slots(seqs: &[u64]) -> StoreResult<WriteOutcome> {
        Ok(WriteOutcome::Enqueued(seqs.iter().map(|&seq| QueueSlot { seq, after: seq - 1 }).collect()))
    }

    /// (member, seq, after) of an entry notice.
    fn entry_of(notice: &StoreNotice) -> Option<(&str, u64, u64)> {
        match notice {
            StoreNotice::Entry { slot, entry } => Some((&entry.delivery.member_id, entry.seq, slot.after)),
            _ => None,
        }
    }

    #[test]
    fn a_batch_carries_its_entries_whole_in_order() {
        let ops = [
            enqueue("mesh1", &["bob", "carol"], Priority::Next),
            enqueue("mesh1", &["dave"], Priority::Low),
            WriteOp::ReleaseSession { mesh_id: "mesh1".into(), member_id: "bob".into(), session_pubkey: "k".into() },
            enqueue_sized("mesh1", &["bob"], Priority::Now, 4_000),
        ];
        let outcomes =
            [slots(&[1, 2]), Err(crate::store::StoreError::Closed), Ok(WriteOutcome::Changed(1)), slots(&[4])];
        let bodies = batch_bodies(ops.iter().zip(&outcomes));
        let notices: Vec<StoreNotice> = bodies.iter().flat_map(|b| decode(&format!("other\n{b}"), "me")).collect();
        assert_eq!(notices.len(), 4, "a failed write is not announced: {notices:?}");
        assert_eq!(entry_of(&notices[0]), Some(("bob", 1, 0)));
        assert_eq!(entry_of(&notices[1]), Some(("carol", 2, 1)));
        assert_eq!(notices[2], StoreNotice::Released { mesh_id: "mesh1".into(), member_id: "bob".into() });
        let queued = StoreNotice::Queued { mesh_id: "mesh1".into(), member_id: "bob".into(), urgent: true, seq: 4 };
        assert_eq!(notices[3], queued, "an entry too large to carry is announced by its number");

        // The entry arrives as it was queued.
        let WriteOp::Enqueue(message) = &ops[0] else { unreachable!() };
        let StoreNotice::Entry { entry, .. } = &notices[1] else { unreachable!() };
        assert_eq!(entry.envelope, message.envelope);
        assert_eq!(entry.delivery, message.deliveries[1]);
    }

    #[test]
    fn an_entry_this_version_cannot_read_makes_both_lanes_read_the_store() {
        let notices = decode("other\ne\tmesh1\tbob\t{\"seq\": \"not a number\"}", "me");
        let lane =
            |urgent| StoreNotice::Queued { mesh_id: "mesh1".into(), member_id: "bob".into(), urgent, seq: u64::MAX };
        assert_eq!(notices, vec![lane(true), lane(false)]);
    }

    #[test]
    fn large_batches_are_split_below_the_payload_limit() {
        let members: Vec<String> = (0..2_000).map(|i| format!("mem_{i:020}")).collect();
        let refs: Vec<&str> = members.iter().map(String::as_str).collect();
        let seqs: Vec<u64> = (1..=2_000).collect();
        let bodies = batch_bodies([(&enqueue("mesh1", &refs, Priority::Next), &slots(&seqs))].into_iter());
        assert!(bodies.len() > 1);
        assert!(bodies.iter().all(|b| b.len() <= MAX_LINES_BYTES));
        let total: usize = bodies.iter().map(|b| decode(&format!("x\n{b}"), "me").len()).sum();
        assert_eq!(total, 2_000);
    }

    #[test]
    fn own_notices_and_unknown_lines_are_ignored() {
        assert!(decode("me\nd", "me").is_empty());
        assert_eq!(decode("other\nd\nz\tfrom a newer version", "me"), vec![StoreNotice::Directory]);
        assert_eq!(
            decode("other\na\t{\"x\":\"a\\tb\"}", "me"),
            vec![StoreNotice::Announcement("{\"x\":\"a\\tb\"}".into())]
        );
        assert!(decode("no origin line", "me").is_empty());
    }
}
