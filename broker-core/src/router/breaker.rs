//! The pair breaker: the broker holds direct messages between two members when one floods the
//! other (a per-sender-per-recipient budget far below the member's own send limit) or when the
//! two keep answering each other quickly (a reply loop between sessions). Holding is refusing
//! with `held`, so the sender knows at once and nothing is lost silently; both members' sessions
//! hear `pair_held`, and only a person releases the pair (`release_pair`, sent by the CLI or
//! the desktop app, never offered to a model as a tool).
//!
//! Nothing here trusts what a client says about itself: every member, human or not, is counted
//! the same.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::TokenBucket;
use crate::config::PairLimits;

/// Why a pair is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HoldReason {
    /// The sender used up its budget toward this recipient.
    Budget,
    /// The two answered each other `loop_turns` times in a row; both directions are held.
    Loop,
}

impl HoldReason {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            HoldReason::Budget => "budget",
            HoldReason::Loop => "loop",
        }
    }
}

/// What the breaker says of one direct message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Pass,
    /// The pair was already held.
    Held(HoldReason),
    /// This message tripped the breaker (refused too); the sessions must be told.
    Tripped(HoldReason),
}

/// The last direct message between two members (in either direction).
#[derive(Debug)]
struct Exchange {
    last_from: String,
    at: Instant,
    /// Consecutive changes of direction, each within the loop gap.
    turns: u32,
}

/// Entries kept before idle ones are forgotten.
const PRUNE_ABOVE: usize = 10_000;

#[derive(Debug)]
pub(super) struct PairBreaker {
    limits: PairLimits,
    /// (sender member, recipient member) → budget.
    budgets: HashMap<(String, String), TokenBucket>,
    /// The two member ids in order → their last exchange.
    exchanges: HashMap<(String, String), Exchange>,
    /// (sender member, recipient member) → why its messages are held.
    held: HashMap<(String, String), HoldReason>,
}

fn unordered(a: &str, b: &str) -> (String, String) {
    if a <= b { (a.to_owned(), b.to_owned()) } else { (b.to_owned(), a.to_owned()) }
}

impl PairBreaker {
    pub(super) fn new(limits: PairLimits) -> PairBreaker {
        PairBreaker { limits, budgets: HashMap::new(), exchanges: HashMap::new(), held: HashMap::new() }
    }

    pub(super) fn limits(&self) -> PairLimits {
        self.limits
    }

    pub(super) fn set_limits(&mut self, limits: PairLimits) {
        self.limits = limits;
    }

    /// Counts a direct message from member `from` to member `to`.
    pub(super) fn check(&mut self, from: &str, to: &str, now: Instant) -> Verdict {
        if let Some(reason) = self.held.get(&(from.to_owned(), to.to_owned())) {
            return Verdict::Held(*reason);
        }
        self.prune(now);
        let gap = self.limits.loop_gap();
        let exchange = self.exchanges.entry(unordered(from, to)).or_insert_with(|| Exchange {
            last_from: from.to_owned(),
            at: now,
            turns: 0,
        });
        let quick = now.saturating_duration_since(exchange.at) <= gap;
        if !quick {
            exchange.turns = 0;
        } else if exchange.last_from != from {
            exchange.turns += 1;
        }
        exchange.last_from = from.to_owned();
        exchange.at = now;
        if exchange.turns >= self.limits.loop_turns {
            exchange.turns = 0;
            self.held.insert((from.to_owned(), to.to_owned()), HoldReason::Loop);
            self.held.insert((to.to_owned(), from.to_owned()), HoldReason::Loop);
            return Verdict::Tripped(HoldReason::Loop);
        }
        let rate = self.limits.rate();
        let bucket =
            self.budgets.entry((from.to_owned(), to.to_owned())).or_insert_with(|| TokenBucket::full(rate, now));
        if !bucket.try_take(rate, now) {
            self.held.insert((from.to_owned(), to.to_owned()), HoldReason::Budget);
            return Verdict::Tripped(HoldReason::Budget);
        }
        Verdict::Pass
    }

    /// Releases whatever is held between `a` and `b` (both directions) and starts their
    /// budgets and loop count afresh. Returns whether anything was held.
    pub(super) fn release(&mut self, a: &str, b: &str) -> bool {
        let mut released = false;
        for pair in [(a.to_owned(), b.to_owned()), (b.to_owned(), a.to_owned())] {
            released |= self.held.remove(&pair).is_some();
            self.budgets.remove(&pair);
        }
        self.exchanges.remove(&unordered(a, b));
        released
    }

    /// Forgets budgets that are full again and exchanges too old to continue a loop, once
    /// there are many: memory stays bounded however many pairs talk.
    fn prune(&mut self, now: Instant) {
        let rate = self.limits.rate();
        if self.budgets.len() > PRUNE_ABOVE {
            self.budgets.retain(|_, bucket| bucket.retry_after_full(rate, now) > Duration::ZERO);
        }
        if self.exchanges.len() > PRUNE_ABOVE {
            let gap = self.limits.loop_gap();
            self.exchanges.retain(|_, exchange| now.saturating_duration_since(exchange.at) <= gap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PairLimits = PairLimits { burst: 5, per_minute: 2, loop_turns: 6, loop_gap_seconds: 20 };

    #[tokio::test(start_paused = true)]
    async fn a_flood_to_one_peer_trips_the_budget_and_stays_held_until_released() {
        let mut breaker = PairBreaker::new(LIMITS);
        for n in 0..5 {
            assert_eq!(breaker.check("a", "b", Instant::now()), Verdict::Pass, "message {n}");
        }
        assert_eq!(breaker.check("a", "b", Instant::now()), Verdict::Tripped(HoldReason::Budget));
        // Other pairs, and the other direction, are untouched.
        assert_eq!(breaker.check("a", "c", Instant::now()), Verdict::Pass);
        assert_eq!(breaker.check("b", "a", Instant::now()), Verdict::Pass);
        // Waiting does not release it: a person does.
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(breaker.check("a", "b", Instant::now()), Verdict::Held(HoldReason::Budget));
        assert!(breaker.release("b", "a"));
        assert!(!breaker.release("a", "b"), "nothing left to release");
        assert_eq!(breaker.check("a", "b", Instant::now()), Verdict::Pass);
    }

    #[tokio::test(start_paused = true)]
    async fn quick_answers_back_and_forth_trip_the_loop_breaker_for_both_directions() {
        let limits = PairLimits { burst: 1000, per_minute: 1000, ..LIMITS };
        let mut breaker = PairBreaker::new(limits);
        let mut verdict = Verdict::Pass;
        for turn in 0..7 {
            let (from, to) = if turn % 2 == 0 { ("a", "b") } else { ("b", "a") };
            tokio::time::advance(Duration::from_secs(5)).await;
            verdict = breaker.check(from, to, Instant::now());
            if verdict != Verdict::Pass {
                break;
            }
        }
        assert_eq!(verdict, Verdict::Tripped(HoldReason::Loop));
        assert_eq!(breaker.check("a", "b", Instant::now()), Verdict::Held(HoldReason::Loop));
        assert_eq!(breaker.check("b", "a", Instant::now()), Verdict::Held(HoldReason::Loop));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_conversation_is_no_loop() {
        let limits = PairLimits { burst: 1000, per_minute: 1000, ..LIMITS };
        let mut breaker = PairBreaker::new(limits);
        for turn in 0..50 {
            let (from, to) = if turn % 2 == 0 { ("a", "b") } else { ("b", "a") };
            // Every fifth answer takes a while: a person or a model thinking.
            let pause = if turn % 5 == 4 { 60 } else { 5 };
            tokio::time::advance(Duration::from_secs(pause)).await;
            assert_eq!(breaker.check(from, to, Instant::now()), Verdict::Pass, "turn {turn}");
        }
    }
}
