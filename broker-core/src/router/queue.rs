//! A connected member's window onto its durable queue.
//!
//! The store holds every undelivered entry; memory holds a bounded window of them per member and
//! per priority lane (`now` apart from `next`/`low`), so a member that falls behind costs bounded
//! memory, and messages held while it is busy never keep `now` messages out. Entries arrive in
//! commit order (the writer assigns sequence numbers at commit), which gives each lane one
//! invariant: every stored entry of the lane with `seq <= loaded_upto` is in memory or already
//! acknowledged. When a lane's window is full (by count or by bytes) it is *spilled*: newer
//! entries stay in the store only, and are loaded in pages once the window drains.
//!
//! With several broker processes on one database, entries also arrive that this process did not
//! commit. Each committed entry says which entry of its lane came before it (`QueueSlot::after`):
//! when that one is newer than `loaded_upto`, another process committed it and its notice has
//! not arrived yet, so the lane reads from the store instead of skipping it. An entry this
//! process does not hold (`keep` false: it is for a session connected elsewhere) still counts as
//! loaded.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::protocol::{Priority, WrappedKey};
use crate::store::{Envelope, QueueSlot, QueuedEntry};

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

    /// What it costs in memory, roughly: its payload.
    fn bytes(&self) -> usize {
        self.envelope.ciphertext.len() + self.envelope.nonce.len() + 256
    }
}

/// Which of the two per-priority lanes an entry sits in: `now` entries bypass the status gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Urgent,
    Normal,
}

impl Lane {
    pub const BOTH: [Lane; 2] = [Lane::Urgent, Lane::Normal];

    pub fn of(priority: Priority) -> Lane {
        if priority == Priority::Now { Lane::Urgent } else { Lane::Normal }
    }

    pub fn index(self) -> usize {
        match self {
            Lane::Urgent => 0,
            Lane::Normal => 1,
        }
    }
}

/// How much one lane's window may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowLimits {
    pub entries: usize,
    pub bytes: usize,
}

#[derive(Debug)]
struct LaneWindow {
    entries: BTreeMap<u64, Entry>,
    bytes: usize,
    /// Every stored entry of this lane up to this sequence number is in memory or acknowledged.
    loaded_upto: u64,
    /// Entries past `loaded_upto` may exist in the store only.
    spilled: bool,
    loading: bool,
    /// Entries committed while a load was reading (with whether to keep each); merged when it
    /// finishes.
    arrived_while_loading: Vec<(QueueSlot, Entry, bool)>,
    /// More arrived during the load than the window holds, or another process committed
    /// entries the load may not have seen: stay spilled.
    arrivals_overflowed: bool,
}

impl LaneWindow {
    fn new_spilled() -> LaneWindow {
        LaneWindow {
            entries: BTreeMap::new(),
            bytes: 0,
            loaded_upto: 0,
            spilled: true,
            loading: false,
            arrived_while_loading: Vec::new(),
            arrivals_overflowed: false,
        }
    }

    fn is_full(&self, limits: WindowLimits) -> bool {
        self.entries.len() >= limits.entries || self.bytes >= limits.bytes
    }

    fn insert(&mut self, seq: u64, entry: Entry) {
        self.bytes += entry.bytes();
        self.entries.insert(seq, entry);
        self.loaded_upto = self.loaded_upto.max(seq);
    }

    fn remove(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.entries.remove(&seq)?;
        self.bytes = self.bytes.saturating_sub(entry.bytes());
        Some(entry)
    }
}

#[derive(Debug)]
pub struct MemberQueue {
    lanes: [LaneWindow; 2],
    /// Message id → where its entry is, to find it from a client's acknowledgement.
    by_message: HashMap<String, (Lane, u64)>,
    limits: WindowLimits,
    /// Distinguishes this queue from an earlier one of the same member (dropped when its last
    /// session left), so a load started for that one is not applied to this one.
    generation: u64,
}

/// A page to fetch from the store: a lane's entries after `after_seq`, at most `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadRequest {
    pub lane: Lane,
    pub after_seq: u64,
    pub limit: usize,
    pub generation: u64,
}

impl MemberQueue {
    /// A queue for a member that just came online: everything may be in the store.
    pub fn new_spilled(limits: WindowLimits, generation: u64) -> MemberQueue {
        MemberQueue {
            lanes: [LaneWindow::new_spilled(), LaneWindow::new_spilled()],
            by_message: HashMap::new(),
            limits: WindowLimits { entries: limits.entries.max(2), bytes: limits.bytes.max(1) },
            generation,
        }
    }

    pub fn len(&self) -> usize {
        self.lanes.iter().map(|l| l.entries.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn lane_mut(&mut self, lane: Lane) -> &mut BTreeMap<u64, Entry> {
        &mut self.lanes[lane.index()].entries
    }

    fn insert(&mut self, lane: Lane, seq: u64, entry: Entry) {
        self.by_message.insert(entry.envelope.message_id.clone(), (lane, seq));
        self.lanes[lane.index()].insert(seq, entry);
    }

    /// A newly committed entry; `keep`: whether this process holds it at all. Returns whether it
    /// is now in memory (and may be pushed).
    pub fn offer(&mut self, slot: QueueSlot, entry: Entry, keep: bool) -> bool {
        let lane = Lane::of(entry.envelope.priority);
        let limits = self.limits;
        let window = &mut self.lanes[lane.index()];
        if slot.seq <= window.loaded_upto {
            // Already loaded from the store by a read that saw this commit.
            return false;
        }
        if window.loading {
            if window.arrived_while_loading.len() < limits.entries {
                window.arrived_while_loading.push((slot, entry, keep));
            } else {
                window.arrivals_overflowed = true;
            }
            return false;
        }
        // `after` beyond what is loaded: another process committed an entry in between.
        if window.spilled || slot.after > window.loaded_upto || window.is_full(limits) {
            window.spilled = true;
            return false;
        }
        if !keep {
            window.loaded_upto = slot.seq;
            return false;
        }
        self.insert(lane, slot.seq, entry);
        true
    }

    /// Another process committed entries of `lane` up to `seq`. Returns whether the lane must
    /// read them from the store.
    pub fn wake(&mut self, lane: Lane, seq: u64) -> bool {
        let window = &mut self.lanes[lane.index()];
        if seq <= window.loaded_upto {
            return false;
        }
        if window.loading {
            window.arrivals_overflowed = true;
        } else {
            window.spilled = true;
        }
        true
    }

    /// Pages to load, for each lane whose window has drained enough while the store holds more.
    pub fn start_loads(&mut self) -> Vec<LoadRequest> {
        let limits = self.limits;
        let generation = self.generation;
        Lane::BOTH
            .into_iter()
            .filter_map(|lane| {
                let window = &mut self.lanes[lane.index()];
                let drained = window.entries.len() <= limits.entries / 2 && window.bytes <= limits.bytes / 2;
                if !window.spilled || window.loading || !drained {
                    return None;
                }
                window.loading = true;
                window.arrivals_overflowed = false;
                Some(LoadRequest {
                    lane,
                    after_seq: window.loaded_upto,
                    limit: limits.entries - window.entries.len(),
                    generation,
                })
            })
            .collect()
    }

    /// Merges a finished load (`None` when it failed; it will be retried); `keep` tells which
    /// entries this process holds.
    pub fn finish_load(&mut self, request: LoadRequest, rows: Option<Vec<QueuedEntry>>, keep: impl Fn(&Entry) -> bool) {
        if request.generation != self.generation {
            return;
        }
        let limits = self.limits;
        let window = &mut self.lanes[request.lane.index()];
        window.loading = false;
        let arrivals = std::mem::take(&mut window.arrived_while_loading);
        let Some(rows) = rows else { return };
        let mut complete = rows.len() < request.limit;
        for row in rows {
            if self.lanes[request.lane.index()].is_full(limits) {
                // The byte budget ran out before the page did: the rest stays in the store.
                complete = false;
                break;
            }
            let (seq, entry) = Entry::from_queued(row);
            let window = &mut self.lanes[request.lane.index()];
            if seq <= window.loaded_upto {
                continue;
            }
            if keep(&entry) {
                self.insert(request.lane, seq, entry);
            } else {
                window.loaded_upto = seq;
            }
        }
        let window = &mut self.lanes[request.lane.index()];
        if complete && !window.arrivals_overflowed {
            window.spilled = false;
            for (slot, entry, keep) in arrivals {
                self.offer(slot, entry, keep);
            }
        }
    }

    /// Removes the entry for `message_id`, if this member still has it.
    pub fn remove(&mut self, message_id: &str) -> Option<(u64, Entry)> {
        let (lane, seq) = self.by_message.remove(message_id)?;
        self.lanes[lane.index()].remove(seq).map(|entry| (seq, entry))
    }

    /// Session-only entries for `session_key` become member-wide.
    pub fn release_session(&mut self, session_key: &str) -> bool {
        let mut changed = false;
        for window in &mut self.lanes {
            for entry in window.entries.values_mut() {
                if entry.session.as_deref() == Some(session_key) {
                    entry.session = None;
                    changed = true;
                }
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

    const ROOMY: usize = 1 << 30;

    fn limits(entries: usize) -> WindowLimits {
        WindowLimits { entries, bytes: ROOMY }
    }

    fn envelope(id: &str, priority: Priority, size: usize) -> Arc<Envelope> {
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
            ciphertext: "x".repeat(size),
            created_at: 0,
            tracked: false,
        })
    }

    fn entry_with(id: &str, priority: Priority) -> Entry {
        Entry { envelope: envelope(id, priority, 0), session: None, exclude: None, key: None, pushed_to: vec![] }
    }

    fn entry(id: &str) -> Entry {
        entry_with(id, Priority::Next)
    }

    fn stored(seq: u64) -> QueuedEntry {
        stored_with(seq, Priority::Next, 0)
    }

    fn stored_with(seq: u64, priority: Priority, size: usize) -> QueuedEntry {
        QueuedEntry {
            seq,
            envelope: envelope(&format!("m{seq}"), priority, size),
            delivery: Delivery { member_id: "mem_b".into(), session_pubkey: None, exclude_session: None, key: None },
        }
    }

    fn slot(seq: u64) -> QueueSlot {
        QueueSlot { seq, after: 0 }
    }

    /// Loads nothing into both lanes: the member is caught up.
    fn caught_up(queue: &mut MemberQueue) {
        for request in queue.start_loads() {
            queue.finish_load(request, Some(vec![]), |_| true);
        }
    }

    #[test]
    fn a_new_member_loads_its_backlog_then_takes_live_entries() {
        let mut queue = MemberQueue::new_spilled(limits(4), 1);
        assert!(!queue.offer(slot(5), entry("m5"), true), "spilled until the first load");
        let requests = queue.start_loads();
        assert_eq!(requests.len(), 2, "one page per lane");
        let normal = requests.iter().copied().find(|r| r.lane == Lane::Normal).expect("normal lane");
        assert_eq!(normal, LoadRequest { lane: Lane::Normal, after_seq: 0, limit: 4, generation: 1 });
        // m6 commits while the load reads; the load saw up to m5.
        assert!(!queue.offer(slot(6), entry("m6"), true));
        for request in requests {
            let rows = if request.lane == Lane::Normal { vec![stored(3), stored(5)] } else { vec![] };
            queue.finish_load(request, Some(rows), |_| true);
        }
        assert_eq!(queue.len(), 3);
        assert!(queue.offer(slot(7), entry("m7"), true));
        assert!(queue.remove("m6").is_some());
        assert!(queue.remove("m6").is_none());
    }

    #[test]
    fn a_full_window_spills_and_refills_from_the_store() {
        let mut queue = MemberQueue::new_spilled(limits(2), 1);
        caught_up(&mut queue);
        assert!(queue.offer(slot(1), entry("m1"), true));
        assert!(queue.offer(slot(2), entry("m2"), true));
        assert!(!queue.offer(slot(3), entry("m3"), true), "window full: stays in the store");
        assert!(queue.start_loads().is_empty(), "no load while the window is still full");
        queue.remove("m1");
        queue.remove("m2");
        let [request] = queue.start_loads()[..] else { panic!("one lane spilled") };
        assert_eq!((request.lane, request.after_seq), (Lane::Normal, 2));
        queue.finish_load(request, Some(vec![stored(3)]), |_| true);
        assert_eq!(queue.len(), 1);
        assert!(queue.offer(slot(4), entry("m4"), true), "caught up: live again");
    }

    #[test]
    fn held_messages_never_keep_urgent_ones_out() {
        let mut queue = MemberQueue::new_spilled(limits(2), 1);
        caught_up(&mut queue);
        // The recipient is busy: its next/low messages pile up and fill their lane…
        assert!(queue.offer(slot(1), entry("m1"), true));
        assert!(queue.offer(slot(2), entry("m2"), true));
        assert!(!queue.offer(slot(3), entry("m3"), true));
        // …and a `now` message still gets into memory, to be pushed at once.
        assert!(queue.offer(slot(4), entry_with("m4", Priority::Now), true));
    }

    #[test]
    fn the_window_is_bounded_by_bytes_too() {
        let mut queue = MemberQueue::new_spilled(WindowLimits { entries: 100, bytes: 3 * 1024 }, 1);
        let requests = queue.start_loads();
        for request in requests {
            let rows = if request.lane == Lane::Normal {
                (1..=10).map(|seq| stored_with(seq, Priority::Next, 1024)).collect()
            } else {
                vec![]
            };
            queue.finish_load(request, Some(rows), |_| true);
        }
        assert!(queue.len() < 10, "a page of large messages stops at the byte budget ({})", queue.len());
        assert!(!queue.offer(slot(11), entry("m11"), true), "still spilled: the rest is in the store");
    }

    #[test]
    fn a_load_that_sees_a_commit_does_not_duplicate_it() {
        let mut queue = MemberQueue::new_spilled(limits(8), 1);
        for request in queue.start_loads() {
            let rows = if request.lane == Lane::Normal { vec![stored(9)] } else { vec![] };
            // The read saw seq 9 committed; its completion is routed after the load finished.
            queue.finish_load(request, Some(rows), |_| true);
        }
        assert!(!queue.offer(slot(9), entry("m9"), true));
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn a_load_for_an_earlier_queue_is_ignored() {
        let mut old = MemberQueue::new_spilled(limits(8), 1);
        let stale = old.start_loads()[1];
        let mut queue = MemberQueue::new_spilled(limits(8), 2);
        let current = queue.start_loads()[1];
        queue.finish_load(stale, Some(vec![stored(1)]), |_| true);
        assert!(queue.is_empty());
        queue.finish_load(current, Some(vec![stored(1)]), |_| true);
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn an_entry_committed_elsewhere_in_between_is_read_from_the_store() {
        let mut queue = MemberQueue::new_spilled(limits(8), 1);
        caught_up(&mut queue);
        assert!(queue.offer(slot(1), entry("m1"), true));
        // Another process committed m2; its notice is late, and m3 (ours) names it as before.
        assert!(!queue.offer(QueueSlot { seq: 3, after: 2 }, entry("m3"), true), "a gap: not pushed ahead of m2");
        let [request] = queue.start_loads()[..] else { panic!("the lane reads the store") };
        assert_eq!(request.after_seq, 1);
        queue.finish_load(request, Some(vec![stored(2), stored(3)]), |_| true);
        assert_eq!(queue.len(), 3);
        assert!(!queue.wake(Lane::Normal, 3), "the late notice of m2 is nothing new");
        assert!(queue.offer(QueueSlot { seq: 4, after: 3 }, entry("m4"), true));
    }

    #[test]
    fn a_notice_of_entries_committed_elsewhere_reads_them() {
        let mut queue = MemberQueue::new_spilled(limits(8), 1);
        caught_up(&mut queue);
        assert!(queue.wake(Lane::Urgent, 5));
        let [request] = queue.start_loads()[..] else { panic!("the urgent lane reads the store") };
        assert_eq!((request.lane, request.after_seq), (Lane::Urgent, 0));
        // Another notice while the load reads: read again once it is done.
        assert!(queue.wake(Lane::Urgent, 6));
        let rows = vec![stored_with(5, Priority::Now, 0)];
        queue.finish_load(request, Some(rows), |_| true);
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.start_loads().len(), 1, "still spilled after a notice during the load");
    }

    #[test]
    fn entries_held_elsewhere_count_as_loaded() {
        let mut queue = MemberQueue::new_spilled(limits(8), 1);
        for request in queue.start_loads() {
            let rows = if request.lane == Lane::Normal { vec![stored(1), stored(2)] } else { vec![] };
            queue.finish_load(request, Some(rows), |entry| entry.envelope.message_id != "m1");
        }
        assert_eq!(queue.len(), 1);
        assert!(!queue.offer(slot(3), entry("m3"), false));
        assert!(queue.offer(QueueSlot { seq: 4, after: 3 }, entry("m4"), true), "m3 left no gap");
        assert!(queue.start_loads().is_empty());
    }

    #[test]
    fn a_failed_load_is_retried() {
        let mut queue = MemberQueue::new_spilled(limits(8), 1);
        for request in queue.start_loads() {
            queue.finish_load(request, None, |_| true);
        }
        assert_eq!(queue.start_loads().len(), 2);
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
