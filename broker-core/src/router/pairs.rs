//! The pair breaker at work (see `breaker`): the check a direct message passes in `send`, what
//! the two members hear when it trips, and `release_pair`.

use serde_json::json;
use tokio::time::Instant;

use super::Router;
use super::breaker::{HoldReason, Verdict};
use super::state::{MeshState, SessionHandle, display_name_of};
use crate::protocol::{self, ErrorCode, PairHold, ServerFrame, SystemEvent};
use crate::store::{AuditEvent, WriteOp};

/// What the refused sender (and, through it, a model) is told to do about a hold.
const RELEASE_HINT: &str = "a person releases it with `claudemesh release <peer>` or in the claudemesh app";

impl Router {
    /// Counts a direct message from the session's member to `recipient`. `Err` carries why the
    /// pair is held; a message that trips the breaker tells both members' sessions.
    pub(super) fn check_pair(&self, session: &SessionHandle, recipient: &str) -> Result<(), String> {
        let mut state = session.shard.state.lock().expect("mesh lock");
        let sender = session.member_id.as_str();
        let verdict = state.breaker.check(sender, recipient, Instant::now());
        let reason = match verdict {
            Verdict::Pass => return Ok(()),
            Verdict::Held(reason) | Verdict::Tripped(reason) => reason,
        };
        let hold = held(&state, sender, recipient, reason);
        if matches!(verdict, Verdict::Tripped(_)) {
            tracing::warn!(mesh = %state.mesh.id, from = %sender, to = %recipient, reason = reason.as_str(), "pair held");
            self.metrics.pairs_held_total.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let event = SystemEvent::PairHeld(hold.clone());
            self.push_event(&state, &event, |s| s.member_id == sender || s.member_id == recipient);
            self.store.submit(WriteOp::Audit(vec![pair_audit(&state, "pair_held", Some(sender), &hold)]), None);
        }
        Err(format!("{}; {RELEASE_HINT}", hold.detail))
    }

    /// `release_pair`: a person lets the member's messages with `peer` flow again.
    pub(in crate::router) fn release_pair(&self, session: &SessionHandle, release: protocol::ReleasePair) {
        let mut state = session.shard.state.lock().expect("mesh lock");
        let peer = state
            .by_pubkey
            .get(&release.peer)
            .or_else(|| {
                let id = state.by_routing_key.get(&release.peer)?;
                state.sessions.get(id).map(|s| &s.member_id)
            })
            .cloned();
        let Some(peer) = peer else {
            drop(state);
            return self.reply_error(
                session,
                ErrorCode::Malformed,
                "peer must be the member key or a session key of a member of this mesh",
                release.req_id,
            );
        };
        let me = session.member_id.clone();
        let released = state.breaker.release(&me, &peer);
        if released {
            let hold = PairHold { detail: "released by a person".to_owned(), ..parties(&state, &me, &peer) };
            let event = SystemEvent::PairReleased(hold.clone());
            self.push_event(&state, &event, |s| s.member_id == me || s.member_id == peer);
            self.store.submit(WriteOp::Audit(vec![pair_audit(&state, "pair_released", Some(&me), &hold)]), None);
        }
        drop(state);
        self.reply(session, ServerFrame::Released(protocol::Released { released, req_id: release.req_id }));
    }
}

/// The two members of a pair, with no reason or detail yet.
fn parties(state: &MeshState, from: &str, to: &str) -> PairHold {
    let member = |id: &str| {
        state.members.get(id).map_or_else(
            || (id.to_owned(), String::new()),
            |entry| (display_name_of(state, entry), entry.record.pubkey.clone()),
        )
    };
    let ((from_name, from_member_pubkey), (to_name, to_member_pubkey)) = (member(from), member(to));
    PairHold { from_name, from_member_pubkey, to_name, to_member_pubkey, ..PairHold::default() }
}

/// The pair held for `reason`, in words a person and a model can act on.
fn held(state: &MeshState, from: &str, to: &str, reason: HoldReason) -> PairHold {
    let hold = parties(state, from, to);
    let (from_name, to_name, limits) = (&hold.from_name, &hold.to_name, state.breaker.limits());
    let detail = match reason {
        HoldReason::Budget => format!(
            "{from_name} sent {to_name} more direct messages than a session needs (over {} at once, then {} a \
             minute), so the broker holds them",
            limits.burst, limits.per_minute
        ),
        HoldReason::Loop => format!(
            "{from_name} and {to_name} answered each other {} times in a row, each within {} s, which looks like \
             a loop between sessions, so the broker holds their messages both ways",
            limits.loop_turns, limits.loop_gap_seconds
        ),
    };
    PairHold { reason: reason.as_str().to_owned(), detail, ..hold }
}

fn pair_audit(state: &MeshState, event_type: &str, actor: Option<&str>, hold: &PairHold) -> AuditEvent {
    AuditEvent {
        scope: state.mesh.id.clone(),
        event_type: event_type.to_owned(),
        actor: actor.map(str::to_owned),
        payload: json!({"from": hold.from_member_pubkey, "to": hold.to_member_pubkey, "reason": hold.reason}),
    }
}
