//! A connected member's window onto its durable queue.
//!
//! The store holds every undelivered entry; memory holds at most `capacity` of them per member,
//! so a member that falls behind costs bounded memory. Entries arrive in commit order (the
//! writer assigns sequence numbers at commit), which gives one invariant: every stored entry
//! with `seq <= loaded_upto` is in memory or already acknowledged. When the window is full the
//! queue is *spilled*: newer entries stay in the store only, and are loaded in pages once the
//! window drains.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::protocol::{Priority, WrappedKey};
use crate::store::{Envelope, QueuedEntry};

/// One undelivered message for this member.
#[derive(Debug, Clone)]
pub struct Entry {
    pub envelope: Arc<Envelope>,
    /// Only this session may receive it.
    pub session: Option<String>,
    /// Every session but this one may receive it.
    pub exclude: Option<String>,
    pub key: Option<WrappedKey>,
    /// Sessions it was pushed to and that have not acknowledged it yet.
    pub pushed_to: Vec<u64>,
}

impl Entry {
    pub fn from_queued(queued: QueuedEntry) -> (u64, Entry) {
        let entry = Entry {
            envelope: queued.envelope,
            session: queued.delivery.session_pubkey,
            exclude: queued.delivery.exclude_session,
            key: queued.delivery.key,
            pushed_to: Vec::new(),
        };
        (queued.seq, entry)
    }

    /// May this entry go to the session with key `session_key`?
    pub fn eligible_for(&self, session_key: &str) -> bool {
        self.session.as_deref().is_none_or(|target| target == session_key)
            && self.exclude.as_deref() != Some(session_key)
    }
}

/// Which of the two per-priority lanes an entry sits in: `now` entries bypass the status gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Urgent,
    Normal,
}

impl Lane {
    pub fn of(priority: Priority) -> Lane {
        if priority == Priority::Now { Lane::Urgent } else { Lane::Normal }
    }
}

#[derive(Debug)]
pub struct MemberQueue {
    urgent: BTreeMap<u64, Entry>,
    normal: BTreeMap<u64, Entry>,
    /// Message id → sequence number, to find an entry from a client's acknowledgement.
    by_message: HashMap<String, u64>,
    capacity: usize,
    /// Every stored entry with a sequence number up to this one is in memory or acknowledged.
    loaded_upto: u64,
    /// Entries past `loaded_upto` may exist in the store only.
    spilled: bool,
    loading: bool,
    /// Entries committed while a load was reading; merged when it finishes.
    arrived_while_loading: Vec<(u64, Entry)>,
    /// More arrived during the load than the window holds: stay spilled.
    arrivals_overflowed: bool,
    /// Distinguishes this queue from an earlier one of the same member (dropped when its last
    /// session left), so a load started for that one is not applied to this one.
    generation: u64,
}

/// A page to fetch from the store: entries after `after_seq`, at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadRequest {
    pub after_seq: u64,
    pub limit: usize,
    pub generation: u64,
}

impl MemberQueue {
    /// A queue for a member that just came online: everything may be in the store.
    pub fn new_spilled(capacity: usize, generation: u64) -> MemberQueue {
        MemberQueue {
            urgent: BTreeMap::new(),
            normal: BTreeMap::new(),
            by_message: HashMap::new(),
            capacity: capacity.max(2),
            loaded_upto: 0,
            spilled: true,
            loading: false,
            arrived_while_loading: Vec::new(),
            arrivals_overflowed: false,
            generation,
        }
    }

    pub fn len(&self) -> usize {
        self.urgent.len() + self.normal.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn lane(&self, lane: Lane) -> &BTreeMap<u64, Entry> {
        match lane {
            Lane::Urgent => &self.urgent,
            Lane::Normal => &self.normal,
        }
    }

    pub fn lane_mut(&mut self, lane: Lane) -> &mut BTreeMap<u64, Entry> {
        match lane {
            Lane::Urgent => &mut self.urgent,
            Lane::Normal => &mut self.normal,
        }
    }

    fn insert(&mut self, seq: u64, entry: Entry) {
        self.by_message.insert(entry.envelope.message_id.clone(), seq);
        let lane = Lane::of(entry.envelope.priority);
        self.lane_mut(lane).insert(seq, entry);
        self.loaded_upto = self.loaded_upto.max(seq);
    }

    /// A newly committed entry. Returns whether it is now in memory (and may be pushed).
    pub fn offer(&mut self, seq: u64, entry: Entry) -> bool {
        if seq <= self.loaded_upto {
            // Already loaded from the store by a read that saw this commit.
            return false;
        }
        if self.loading {
            if self.arrived_while_loading.len() < self.capacity {
                self.arrived_while_loading.push((seq, entry));
            } else {
                self.arrivals_overflowed = true;
            }
            return false;
        }
        if self.spilled || self.len() >= self.capacity {
            self.spilled = true;
            return false;
        }
        self.insert(seq, entry);
        true
    }

    /// A page to load when the window has drained enough and the store holds more.
    pub fn start_load(&mut self) -> Option<LoadRequest> {
        if !self.spilled || self.loading || self.len() > self.capacity / 2 {
            return None;
        }
        self.loading = true;
        self.arrivals_overflowed = false;
        Some(LoadRequest {
            after_seq: self.loaded_upto,
            limit: self.capacity - self.len(),
            generation: self.generation,
        })
    }

    /// Merges a finished load (`None` when it failed; it will be retried).
    pub fn finish_load(&mut self, request: LoadRequest, rows: Option<Vec<QueuedEntry>>) {
        if request.generation != self.generation {
            return;
        }
        self.loading = false;
        let arrivals = std::mem::take(&mut self.arrived_while_loading);
        let Some(rows) = rows else { return };
        let complete = rows.len() < request.limit;
        for row in rows {
            let (seq, entry) = Entry::from_queued(row);
            if seq > self.loaded_upto {
                self.insert(seq, entry);
            }
        }
        if complete && !self.arrivals_overflowed {
            self.spilled = false;
            for (seq, entry) in arrivals {
                if seq > self.loaded_upto {
                    self.insert(seq, entry);
                }
            }
        }
    }

    /// Removes the entry for `message_id`, if this member still has it.
    pub fn remove(&mut self, message_id: &str) -> Option<(u64, Entry)> {
        let seq = self.by_message.remove(message_id)?;
        self.urgent.remove(&seq).or_else(|| self.normal.remove(&seq)).map(|entry| (seq, entry))
    }

    /// Session-only entries for `session_key` become member-wide.
    pub fn release_session(&mut self, session_key: &str) -> bool {
        let mut changed = false;
        for entry in self.urgent.values_mut().chain(self.normal.values_mut()) {
            if entry.session.as_deref() == Some(session_key) {
                entry.session = None;
                changed = true;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Enc;
    use crate::store::Delivery;

    fn envelope(id: &str, priority: Priority) -> Arc<Envelope> {
        Arc::new(Envelope {
            message_id: id.into(),
            mesh_id: "mesh".into(),
            sender_member_id: "mem_a".into(),
            sender_member_pubkey: "a".repeat(64),
            sender_pubkey: "a".repeat(64),
            sender_session_sig: None,
            target_spec: "b".repeat(64),
            priority,
            enc: Enc::Box,
            nonce: String::new(),
            ciphertext: String::new(),
            created_at: 0,
        })
    }

    fn entry(id: &str) -> Entry {
        Entry { envelope: envelope(id, Priority::Next), session: None, exclude: None, key: None, pushed_to: vec![] }
    }

    fn stored(seq: u64) -> QueuedEntry {
        QueuedEntry {
            seq,
            envelope: envelope(&format!("m{seq}"), Priority::Next),
            delivery: Delivery { member_id: "mem_b".into(), session_pubkey: None, exclude_session: None, key: None },
        }
    }

    #[test]
    fn a_new_member_loads_its_backlog_then_takes_live_entries() {
        let mut queue = MemberQueue::new_spilled(4, 1);
        assert!(!queue.offer(5, entry("m5")), "spilled until the first load");
        let request = queue.start_load().expect("loads");
        assert_eq!(request, LoadRequest { after_seq: 0, limit: 4, generation: 1 });
        // m6 commits while the load reads; the load saw up to m5.
        assert!(!queue.offer(6, entry("m6")));
        queue.finish_load(request, Some(vec![stored(3), stored(5)]));
        assert_eq!(queue.len(), 3);
        assert!(queue.offer(7, entry("m7")));
        assert!(queue.remove("m6").is_some());
        assert!(queue.remove("m6").is_none());
    }

    #[test]
    fn a_full_window_spills_and_refills_from_the_store() {
        let mut queue = MemberQueue::new_spilled(2, 1);
        let request = queue.start_load().expect("loads");
        queue.finish_load(request, Some(vec![]));
        assert!(queue.offer(1, entry("m1")));
        assert!(queue.offer(2, entry("m2")));
        assert!(!queue.offer(3, entry("m3")), "window full: stays in the store");
        assert!(queue.start_load().is_none(), "no load while the window is still full");
        queue.remove("m1");
        queue.remove("m2");
        let request = queue.start_load().expect("drained: load the rest");
        assert_eq!(request.after_seq, 2);
        queue.finish_load(request, Some(vec![stored(3)]));
        assert_eq!(queue.len(), 1);
        assert!(queue.offer(4, entry("m4")), "caught up: live again");
    }

    #[test]
    fn a_load_that_sees_a_commit_does_not_duplicate_it() {
        let mut queue = MemberQueue::new_spilled(8, 1);
        let request = queue.start_load().expect("loads");
        // The read saw seq 9 committed; its completion is routed after the load finished.
        queue.finish_load(request, Some(vec![stored(9)]));
        assert!(!queue.offer(9, entry("m9")));
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn a_load_for_an_earlier_queue_is_ignored() {
        let mut old = MemberQueue::new_spilled(8, 1);
        let stale = old.start_load().expect("loads");
        let mut queue = MemberQueue::new_spilled(8, 2);
        let current = queue.start_load().expect("loads");
        queue.finish_load(stale, Some(vec![stored(1)]));
        assert!(queue.is_empty());
        queue.finish_load(current, Some(vec![stored(1)]));
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn a_failed_load_is_retried() {
        let mut queue = MemberQueue::new_spilled(8, 1);
        let request = queue.start_load().expect("loads");
        queue.finish_load(request, None);
        assert!(queue.start_load().is_some());
    }

    #[test]
    fn session_targets_and_exclusions() {
        let mut only = entry("m1");
        only.session = Some("s1".into());
        assert!(only.eligible_for("s1") && !only.eligible_for("s2"));
        let mut except = entry("m2");
        except.exclude = Some("s1".into());
        assert!(!except.eligible_for("s1") && except.eligible_for("s2"));
    }
}
