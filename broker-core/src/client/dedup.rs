//! A bounded set of recently seen message ids, with when each was last seen.

use std::collections::{HashMap, VecDeque};

use tokio::time::Instant;

#[derive(Debug)]
pub struct RecentIds {
    seen_at: HashMap<String, Instant>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentIds {
    pub fn new(capacity: usize) -> RecentIds {
        RecentIds { seen_at: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// Records `id` as seen now; returns false if it was already there. The oldest id is
    /// forgotten once the set is full.
    pub fn insert(&mut self, id: &str) -> bool {
        if let Some(at) = self.seen_at.get_mut(id) {
            *at = Instant::now();
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen_at.remove(&oldest);
        }
        self.seen_at.insert(id.to_owned(), Instant::now());
        self.order.push_back(id.to_owned());
        true
    }

    pub fn contains(&self, id: &str) -> bool {
        self.seen_at.contains_key(id)
    }

    /// When `id` was last recorded.
    pub fn seen_at(&self, id: &str) -> Option<Instant> {
        self.seen_at.get(id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_seen_and_old_ids_are_forgotten() {
        let mut ids = RecentIds::new(2);
        assert!(ids.insert("a"));
        assert!(!ids.insert("a"));
        assert!(ids.insert("b"));
        assert!(ids.insert("c"));
        assert!(!ids.contains("a"), "evicted");
        assert!(ids.contains("b") && ids.contains("c"));
        assert!(ids.seen_at("b").is_some() && ids.seen_at("a").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn seeing_an_id_again_refreshes_when_it_was_seen() {
        let mut ids = RecentIds::new(4);
        ids.insert("a");
        let first = ids.seen_at("a").expect("seen");
        tokio::time::advance(std::time::Duration::from_secs(60)).await;
        assert!(!ids.insert("a"));
        assert_eq!(ids.seen_at("a").expect("seen").duration_since(first).as_secs(), 60);
    }
}
