//! A session's status and who reported it.
//!
//! Rules: sources rank hook > manual > inferred. A report from a lower-ranked source does not
//! override a fresh report from a higher-ranked one (a model saying "idle" mid-turn does not beat
//! the hook that saw the turn start). DND is the peer's own explicit choice: a manual DND always
//! applies, and only the peer itself (source manual) clears it. `working` decays to `idle` after a
//! TTL, so a session whose "turn ended" hook was lost does not hold its messages forever.

use std::time::Duration;

use tokio::time::Instant;

use crate::protocol::{Status, StatusSource};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusState {
    pub status: Status,
    pub source: StatusSource,
    pub updated_at: Instant,
}

impl StatusState {
    pub fn new(now: Instant) -> StatusState {
        StatusState { status: Status::Idle, source: StatusSource::Inferred, updated_at: now }
    }

    /// Applies a report; returns whether the status value changed.
    pub fn report(&mut self, status: Status, source: StatusSource, now: Instant, fresh_window: Duration) -> bool {
        if self.status == Status::Dnd && status != Status::Dnd && source != StatusSource::Manual {
            return false;
        }
        let fresh = now.saturating_duration_since(self.updated_at) < fresh_window;
        let explicit_dnd = status == Status::Dnd && source == StatusSource::Manual;
        if source < self.source && fresh && status != self.status && !explicit_dnd {
            return false;
        }
        let changed = self.status != status;
        if changed || source >= self.source || !fresh {
            self.status = status;
            self.source = source;
            self.updated_at = now;
        }
        changed
    }

    /// Decays `working` to `idle` once it is older than `ttl`; returns whether it did.
    pub fn decay(&mut self, now: Instant, ttl: Duration) -> bool {
        if self.status == Status::Working && now.saturating_duration_since(self.updated_at) >= ttl {
            self.status = Status::Idle;
            self.source = StatusSource::Inferred;
            self.updated_at = now;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Duration = Duration::from_secs(30);
    const TTL: Duration = Duration::from_secs(60);

    fn check(steps: &[(Status, StatusSource, u64)], expected: Status) {
        let start = Instant::now();
        let mut state = StatusState::new(start);
        for (status, source, at) in steps {
            state.report(*status, *source, start + Duration::from_secs(*at), FRESH);
        }
        assert_eq!(state.status, expected, "after {steps:?}");
    }

    #[test]
    fn ranking_and_freshness() {
        use Status::*;
        use StatusSource::*;
        check(&[(Working, Hook, 0)], Working);
        // A manual report does not override a fresh hook report…
        check(&[(Working, Hook, 0), (Idle, Manual, 10)], Working);
        // …but does once the hook report is stale.
        check(&[(Working, Hook, 0), (Idle, Manual, 31)], Idle);
        // Inferred never beats a fresh manual report.
        check(&[(Working, Manual, 0), (Idle, Inferred, 5)], Working);
        // Hook beats manual at once.
        check(&[(Working, Manual, 0), (Idle, Hook, 1)], Idle);
    }

    #[test]
    fn dnd_is_cleared_only_by_the_peer_itself() {
        use Status::*;
        use StatusSource::*;
        check(&[(Dnd, Manual, 0), (Idle, Hook, 1)], Dnd);
        check(&[(Dnd, Manual, 0), (Working, Hook, 100)], Dnd);
        check(&[(Dnd, Manual, 0), (Idle, Inferred, 100)], Dnd);
        check(&[(Dnd, Manual, 0), (Idle, Manual, 1)], Idle);
        // The peer's own DND applies even right after a hook report.
        check(&[(Idle, Hook, 0), (Dnd, Manual, 1)], Dnd);
    }

    #[tokio::test(start_paused = true)]
    async fn working_decays_to_idle_after_the_ttl_but_dnd_does_not() {
        let start = Instant::now();
        let mut state = StatusState::new(start);
        state.report(Status::Working, StatusSource::Hook, start, FRESH);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(!state.decay(Instant::now(), TTL));
        assert_eq!(state.status, Status::Working);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(state.decay(Instant::now(), TTL));
        assert_eq!((state.status, state.source), (Status::Idle, StatusSource::Inferred));

        state.report(Status::Dnd, StatusSource::Manual, Instant::now(), FRESH);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(!state.decay(Instant::now(), TTL));
        assert_eq!(state.status, Status::Dnd);
    }
}
