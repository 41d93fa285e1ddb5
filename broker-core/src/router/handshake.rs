//! `hello`: every check a session passes before it is registered, in the order
//! docs/protocol.md gives, then registration and the `peer_joined`/`peer_returned` event.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use super::state::{MeshShard, Session, SessionHandle};
use super::{Outbox, Router, StatusState, close_code, frame_text, limits};
use crate::crypto::{self, PublicKey};
use crate::names;
use crate::protocol::{
    self, Capabilities, Capability, ErrorCode, Hello, HelloAck, PeerJoined, PeerReturned, ServerFrame, Stats,
    SystemEvent,
};

/// A refused `hello`: sent as an `error` frame, then the connection closes with 1008.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal { code, message: message.into() }
    }
}

/// Signatures of accepted hellos, kept for twice the skew window, so a captured hello cannot be
/// replayed while its timestamp is still acceptable.
#[derive(Debug, Default)]
pub(super) struct ReplayGuard {
    seen: HashSet<String>,
    expiry: VecDeque<(Instant, String)>,
}

impl ReplayGuard {
    pub(super) fn first_sighting(&mut self, signature: &str, now: Instant, keep_for: std::time::Duration) -> bool {
        while let Some((expires, _)) = self.expiry.front() {
            if *expires > now {
                break;
            }
            if let Some((_, old)) = self.expiry.pop_front() {
                self.seen.remove(&old);
            }
        }
        if !self.seen.insert(signature.to_owned()) {
            return false;
        }
        self.expiry.push_back((now + keep_for, signature.to_owned()));
        true
    }
}

impl Router {
    /// Checks a `hello` and registers the session. On success the `hello_ack` is already queued
    /// on `outbox` (before any push).
    pub async fn hello(self: &Arc<Self>, hello: Hello, outbox: Outbox) -> Result<SessionHandle, Refusal> {
        let started = Instant::now();
        let result = self.accept_hello(hello, outbox).await;
        match &result {
            Ok(_) => {
                self.metrics.hello_latency(started.elapsed());
                self.metrics.connections_total.fetch_add(1, Ordering::Relaxed);
                self.metrics.connections_active.fetch_add(1, Ordering::Relaxed);
            }
            Err(refusal) => {
                tracing::info!(code = refusal.code.as_str(), "hello refused");
                self.metrics.connection_rejected(refusal.code);
            }
        }
        result
    }

    pub(super) async fn accept_hello(
        self: &Arc<Self>,
        mut hello: Hello,
        outbox: Outbox,
    ) -> Result<SessionHandle, Refusal> {
        limits::clean_hello(&mut hello).map_err(|problem| Refusal::new(ErrorCode::Malformed, problem))?;
        // A session accepted now could send nothing that would be kept: let the client retry,
        // here later or at another replica.
        if self.metrics.db_healthy.load(Ordering::Relaxed) == 0 {
            return Err(Refusal::new(
                ErrorCode::Internal,
                "the broker cannot reach its database; retry later or at another replica",
            ));
        }
        // A session key equal to the member key is no session key.
        let session_key = hello.session_pubkey.clone().filter(|k| !k.is_empty() && *k != hello.pubkey);
        if let Some(key) = &session_key
            && !PublicKey::is_valid_hex(key)
        {
            return Err(Refusal::new(
                ErrorCode::BadSessionPubkey,
                "sessionPubkey must be an ed25519 public key (64 lowercase hex characters, a canonical point not of \
                 small order)",
            ));
        }
        let shard = match self.shard(&hello.mesh_id).await {
            Ok(Some(shard)) => shard,
            Ok(None) => return Err(Refusal::new(ErrorCode::Unauthorized, "no such mesh")),
            Err(error) => {
                tracing::error!(%error, "loading a mesh failed");
                return Err(Refusal::new(ErrorCode::Internal, "the broker could not load the mesh; retry"));
            }
        };
        if self.at_capacity(&shard) {
            return Err(Refusal::new(ErrorCode::Capacity, "this mesh has reached its connection limit"));
        }
        let now_ms = protocol::now_ms();
        if now_ms.abs_diff(hello.timestamp) > self.config.hello_skew.as_millis() as u64 {
            return Err(Refusal::new(
                ErrorCode::TimestampSkew,
                format!(
                    "timestamp is more than {} s from broker time; check the clock",
                    self.config.hello_skew.as_secs()
                ),
            ));
        }
        let member_key = PublicKey::from_hex(&hello.pubkey)
            .map_err(|_| Refusal::new(ErrorCode::Malformed, "pubkey must be 64 lowercase hex characters"))?;
        if !protocol::is_signature_hex(&hello.signature) {
            return Err(Refusal::new(ErrorCode::Malformed, "signature must be 128 hex characters"));
        }
        let caps = Capabilities::from_names(&hello.capabilities);
        // Only a client that announces nothing we know may sign the v1 bytes, which leave the
        // session key and the capabilities open to change on the path.
        if caps != Capabilities::default() && !caps.has(Capability::HelloV2) {
            return Err(Refusal::new(
                ErrorCode::BadSignature,
                "a hello that announces capabilities must announce hello_v2 and sign the v2 bytes",
            ));
        }
        member_key
            .verify_hex(hello.signed_bytes().as_bytes(), &hello.signature)
            .map_err(|_| Refusal::new(ErrorCode::BadSignature, "signature does not verify"))?;
        if let Some(key) = &session_key
            && caps.has(Capability::SessionSig)
        {
            let sig = hello.session_sig.as_deref().unwrap_or_default();
            crypto::verify_session_binding(&hello.mesh_id, &member_key, key, sig).map_err(|_| {
                Refusal::new(
                    ErrorCode::BadSessionPubkey,
                    "sessionSig is not the member's signature over this session key",
                )
            })?;
            let proof =
                crypto::session_proof_bytes(&hello.mesh_id, &hello.member_id, &hello.pubkey, key, hello.timestamp);
            PublicKey::from_hex(key)
                .and_then(|session| {
                    session.verify_hex(proof.as_bytes(), hello.session_proof.as_deref().unwrap_or_default())
                })
                .map_err(|_| {
                    Refusal::new(
                        ErrorCode::BadSessionPubkey,
                        "sessionProof is not the session key's signature over this hello",
                    )
                })?;
        }
        let first_sighting = self.replay.lock().expect("replay lock").first_sighting(
            &hello.signature,
            Instant::now(),
            self.config.hello_skew * 2,
        );
        if !first_sighting {
            return Err(Refusal::new(ErrorCode::Replay, "this signed hello was already used; sign a fresh one"));
        }
        let known = shard.state.lock().expect("mesh lock").by_pubkey.contains_key(&hello.pubkey);
        if !known {
            self.learn_member(&shard, &hello.pubkey).await.map_err(|error| {
                tracing::error!(%error, "member lookup failed");
                Refusal::new(ErrorCode::Internal, "the broker could not look up the member; retry")
            })?;
        }
        let handle = self.register(&shard, hello, session_key, caps, outbox)?;
        // Starts loading the member's backlog when this is its first session.
        self.pump_member(&mut shard.state.lock().expect("mesh lock"), &handle.member_id);
        Ok(handle)
    }

    pub(super) fn at_capacity(&self, shard: &MeshShard) -> bool {
        shard.state.lock().expect("mesh lock").session_count() >= self.config.max_connections_per_mesh
    }

    pub(super) fn register(
        &self,
        shard: &Arc<MeshShard>,
        hello: Hello,
        session_key: Option<String>,
        caps: Capabilities,
        outbox: Outbox,
    ) -> Result<SessionHandle, Refusal> {
        let mut guard = shard.state.lock().expect("mesh lock");
        let state = &mut *guard;
        if state.mesh.archived_at.is_some() {
            return Err(Refusal::new(ErrorCode::Unauthorized, "this mesh is archived"));
        }
        let unauthorized = || Refusal::new(ErrorCode::Unauthorized, "this key is not an active member of the mesh");
        let member_id = state.by_pubkey.get(&hello.pubkey).cloned().ok_or_else(unauthorized)?;
        let member = state.members.get(&member_id).ok_or_else(unauthorized)?;
        if !member.record.is_active() {
            return Err(unauthorized());
        }
        if member.record.id != hello.member_id {
            return Err(Refusal::new(ErrorCode::Unauthorized, "memberId does not match the member with this key"));
        }
        if state.session_count() >= self.config.max_connections_per_mesh {
            return Err(Refusal::new(ErrorCode::Capacity, "this mesh has reached its connection limit"));
        }
        let member_sessions = state.members.get(&member_id).map_or(0, |m| m.sessions.len())
            + state.remote_sessions_of(&member_id).count();
        let replacing =
            session_key.as_ref().is_some_and(|k| state.by_routing_key.contains_key(k) || state.remote.contains_key(k));
        if member_sessions >= self.config.max_sessions_per_member && !replacing {
            return Err(Refusal::new(
                ErrorCode::Capacity,
                format!("this member already has {member_sessions} sessions open in the mesh; close one first"),
            ));
        }
        if let Some(key) = &session_key {
            // A session key belongs to one member: another member may not take it over (and
            // with it the mail addressed to it).
            let live_owner = state.by_routing_key.get(key).and_then(|id| state.sessions.get(id)).map(|s| &s.member_id);
            let departed_owner = state.departed.get(key).map(|d| &d.member_id);
            let taken = state.by_pubkey.contains_key(key)
                || live_owner.is_some_and(|owner| *owner != member_id)
                || departed_owner.is_some_and(|owner| *owner != member_id);
            if taken {
                return Err(Refusal::new(ErrorCode::BadSessionPubkey, "that session key belongs to another member"));
            }
        }
        let routing_key = session_key.clone().unwrap_or_else(|| hello.pubkey.clone());
        // The same session key again means the same process reconnected before its old
        // connection timed out: the old one is stale.
        if let Some(old) = session_key.as_ref().and_then(|k| state.by_routing_key.get(k))
            && let Some(old) = state.sessions.get(old)
        {
            old.outbox.close(close_code::NORMAL, "replaced by a newer connection of this session");
        }
        let mail_waits_here = state.departed.remove(&routing_key).is_some_and(|d| !d.released);

        let member = state.members.get(&member_id).ok_or_else(unauthorized)?;
        let (saved, member_name) = (member.saved.clone(), member.record.display_name.clone());
        let groups = match hello.groups {
            Some(groups) if !groups.is_empty() => groups,
            _ => saved.as_ref().map(|s| s.groups.clone()).unwrap_or_default(),
        };
        let display_name = state.session_name(&member_id, hello.display_name, &member_name);
        let name_skeleton = names::skeleton(&display_name);
        let member = state.members.get_mut(&member_id).ok_or_else(unauthorized)?;
        let now = Instant::now();
        let session = Session {
            id: self.next_session_id.fetch_add(1, Ordering::Relaxed),
            member_id: member_id.clone(),
            member_pubkey: hello.pubkey.clone(),
            routing_key: routing_key.clone(),
            session_sig: if caps.has(Capability::SessionSig) { hello.session_sig.clone() } else { None },
            display_name: display_name.clone(),
            name_skeleton,
            client_session_id: hello.session_id.unwrap_or_default(),
            pid: hello.pid,
            cwd: hello.cwd.unwrap_or_default(),
            hostname: hello.hostname,
            peer_type: hello.peer_type,
            channel: hello.channel,
            model: hello.model,
            groups: groups.clone(),
            summary: saved.as_ref().and_then(|s| s.summary.clone()),
            stats: Stats::default(),
            status: StatusState::new(now),
            connected_at_ms: protocol::now_ms(),
            caps,
            outbox,
            inflight: 0,
            scan_from: [0, 0],
        };
        let returning = saved.is_some() && member.sessions.is_empty();
        member.sessions.push(session.id);
        // Entries for this session may wait in the store, not held here (another process held
        // them) while the member's queue is already loaded: read it again.
        let reload = self.shared_store && member.queue.is_some() && !mail_waits_here;
        if member.queue.is_none() {
            member.queue = Some(self.new_queue());
        }

        let ack = HelloAck {
            presence_id: format!("pres_{}", session.id),
            member_display_name: display_name.clone(),
            mesh_slug: Some(state.mesh.slug.clone()),
            restored: saved.as_ref().map(|_| true),
            last_summary: saved.as_ref().and_then(|s| s.summary.clone()),
            last_seen_at: saved.as_ref().map(|s| protocol::iso8601_ms(s.last_seen_at)),
            restored_groups: saved.as_ref().map(|s| s.groups.clone()),
            restored_stats: saved.as_ref().map(|s| s.stats),
            protocol_version: hello.protocol_version.unwrap_or(1).min(protocol::PROTOCOL_VERSION),
            capabilities: caps.names(),
        };
        // Cannot fail: the outbox is new and empty.
        let _ = session.outbox.send(frame_text(&ServerFrame::HelloAck(ack)));

        let event = match (&saved, returning) {
            (Some(saved), true) => SystemEvent::PeerReturned(PeerReturned {
                name: display_name,
                pubkey: routing_key.clone(),
                member_pubkey: hello.pubkey,
                groups,
                last_seen_at: protocol::iso8601_ms(saved.last_seen_at),
                summary: saved.summary.clone(),
            }),
            _ => SystemEvent::PeerJoined(PeerJoined {
                name: display_name,
                pubkey: routing_key.clone(),
                member_pubkey: hello.pubkey,
                groups,
            }),
        };
        let handle = SessionHandle { shard: shard.clone(), session_id: session.id, member_id: member_id.clone(), caps };
        tracing::debug!(mesh = %state.mesh.id, member = %member_id, session = session.id, "session connected");
        // The same session, come here from another replica: the one there is stale.
        state.remote.remove(&routing_key);
        state.by_routing_key.insert(routing_key, session.id);
        state.hold_session_name(&member_id, &session.name_skeleton);
        let session_id = session.id;
        state.sessions.insert(session.id, session);
        if reload {
            self.reload_queue(state, &member_id);
        }
        self.broadcast_event(state, &member_id, &event);
        self.announce_session(state, session_id, Some(event));
        Ok(handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_replayed_hello_is_refused_until_it_would_be_stale_anyway() {
        let mut guard = ReplayGuard::default();
        let keep = std::time::Duration::from_secs(120);
        assert!(guard.first_sighting("sig", Instant::now(), keep));
        assert!(!guard.first_sighting("sig", Instant::now(), keep));
        tokio::time::advance(keep).await;
        assert!(guard.first_sighting("sig", Instant::now(), keep));
    }
}
