//! News between broker processes on one database, over Postgres' LISTEN/NOTIFY.
//!
//! Why NOTIFY: a notification is sent when its transaction commits and never before, in commit
//! order, to every listening connection; a writer batch that commits queue entries announces
//! them in the same transaction, so a notice never precedes its rows and costs one statement per
//! batch, not per message. What NOTIFY does not give — delivery to a process that was not
//! listening — is covered by `StoreNotice::Resync` after every reconnection: the router then
//! reloads what it holds from the tables, which stay the truth.
//!
//! The channel is `claudemesh`. A notification's payload is the sending process's origin (the `claudemesh.origin` setting of
//! each of its connections), then one notice per line, tab-separated:
//! `q MESH MEMBER u|n SEQ` (queued; `u`: the `now` lane), `r MESH MEMBER` (released),
//! `d` (directory), `a TEXT` (an announcement, alone in its notification, to the end of the
//! payload). A line of a kind this version does not know is skipped, so an older replica keeps
//! working beside a newer one during a rolling upgrade.

use std::collections::BTreeMap;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use postgres::{Config, GenericClient};
use tokio::sync::mpsc;

use crate::protocol::Priority;
use crate::store::{StoreNotice, StoreResult, WriteOp, WriteOutcome};

/// The connection setting naming the process that sent a notification.
pub(super) const ORIGIN_SETTING: &str = "claudemesh.origin";
/// Room for a notification's lines: Postgres allows 8000 bytes, the origin takes some.
const MAX_LINES_BYTES: usize = 7_600;

/// `NOTIFY` of `body`, prefixed with this connection's origin (part of the caller's transaction).
pub(super) fn notify(db: &mut impl GenericClient, body: &str) -> Result<(), postgres::Error> {
    db.execute(
        "SELECT pg_notify('claudemesh', coalesce(current_setting('claudemesh.origin', true), '?') || E'\\n' || $1)",
        &[&body],
    )?;
    Ok(())
}

/// The notice lines of one committed batch: the newest sequence number per member and lane, and
/// every release, in notifications of at most [`MAX_LINES_BYTES`].
pub(super) fn batch_bodies<'a>(
    writes: impl Iterator<Item = (&'a WriteOp, &'a StoreResult<WriteOutcome>)>,
) -> Vec<String> {
    let mut newest: BTreeMap<(&str, &str, bool), u64> = BTreeMap::new();
    let mut lines = Vec::new();
    for (op, outcome) in writes {
        match (op, outcome) {
            (WriteOp::Enqueue(message), Ok(WriteOutcome::Enqueued(slots))) => {
                let urgent = message.envelope.priority == Priority::Now;
                for (delivery, slot) in message.deliveries.iter().zip(slots) {
                    let key = (message.envelope.mesh_id.as_str(), delivery.member_id.as_str(), urgent);
                    let seq = newest.entry(key).or_default();
                    *seq = (*seq).max(slot.seq);
                }
            }
            (WriteOp::ReleaseSession { mesh_id, member_id, .. }, Ok(WriteOutcome::Changed(n))) if *n > 0 => {
                lines.push(format!("r\t{mesh_id}\t{member_id}"));
            }
            _ => {}
        }
    }
    lines.extend(newest.into_iter().map(|((mesh, member, urgent), seq)| {
        format!("q\t{mesh}\t{member}\t{}\t{seq}", if urgent { 'u' } else { 'n' })
    }));
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
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            match fields[..] {
                ["q", mesh, member, lane @ ("u" | "n"), seq] => Some(StoreNotice::Queued {
                    mesh_id: mesh.to_owned(),
                    member_id: member.to_owned(),
                    urgent: lane == "u",
                    seq: seq.parse().ok()?,
                }),
                ["r", mesh, member] => {
                    Some(StoreNotice::Released { mesh_id: mesh.to_owned(), member_id: member.to_owned() })
                }
                ["d"] => Some(StoreNotice::Directory),
                _ => None,
            }
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
    use crate::protocol::Enc;
    use crate::store::{Delivery, Envelope, NewMessage, QueueSlot};

    fn enqueue(mesh: &str, members: &[&str], priority: Priority) -> WriteOp {
        WriteOp::Enqueue(NewMessage {
            envelope: Arc::new(Envelope {
                message_id: "m".into(),
                mesh_id: mesh.into(),
                sender_member_id: "a".into(),
                sender_member_pubkey: String::new(),
                sender_pubkey: String::new(),
                sender_session_sig: None,
                target_spec: "*".into(),
                priority,
                enc: Enc::Multi,
                nonce: String::new(),
                ciphertext: String::new(),
                created_at: 0,
            }),
            deliveries: members
                .iter()
                .map(|m| Delivery { member_id: (*m).into(), session_pubkey: None, exclude_session: None, key: None })
                .collect(),
            audit: Vec::new(),
        })
    }

    fn slots(seqs: &[u64]) -> StoreResult<WriteOutcome> {
        Ok(WriteOutcome::Enqueued(seqs.iter().map(|&seq| QueueSlot { seq, after: 0 }).collect()))
    }

    #[test]
    fn a_batch_names_each_member_lane_once_with_its_newest_entry() {
        let ops = [
            enqueue("mesh1", &["bob", "carol"], Priority::Next),
            enqueue("mesh1", &["bob"], Priority::Next),
            enqueue("mesh1", &["bob"], Priority::Now),
            enqueue("mesh1", &["dave"], Priority::Low),
            WriteOp::ReleaseSession { mesh_id: "mesh1".into(), member_id: "bob".into(), session_pubkey: "k".into() },
        ];
        let outcomes = [
            slots(&[1, 2]),
            slots(&[3]),
            slots(&[4]),
            Err(crate::store::StoreError::Closed),
            Ok(WriteOutcome::Changed(1)),
        ];
        let bodies = batch_bodies(ops.iter().zip(&outcomes));
        assert_eq!(bodies.len(), 1);
        let notices = decode(&format!("other\n{}", bodies[0]), "me");
        let queued = |member: &str, urgent, seq| StoreNotice::Queued {
            mesh_id: "mesh1".into(),
            member_id: member.into(),
            urgent,
            seq,
        };
        assert_eq!(
            notices,
            vec![
                StoreNotice::Released { mesh_id: "mesh1".into(), member_id: "bob".into() },
                queued("bob", false, 3),
                queued("bob", true, 4),
                queued("carol", false, 2),
            ],
            "a failed write is not announced"
        );
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
