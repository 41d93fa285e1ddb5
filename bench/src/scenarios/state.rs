//! `state`: shared-state writes in one mesh, one at a time, each timed from the writer's
//! `set_state` call until every other session of the mesh opened the `state_changed` event it
//! caused (decrypted and checked its writer's signature). A few peers take turns writing their
//! own entry (`board/<peer>`) at the version they hold (one compare-and-set round trip); each
//! first writes once unmeasured.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Result, bail};
use serde_json::json;

use super::fanout::wait_complete;
use super::{Harness, Phase, shutdown_peers};
use crate::measure::{LatencyHistogram, Ledger, SendState, now_us};
use crate::payload::Stamp;
use crate::peer::{BenchPeer, Observations};
use crate::report::{Report, StateDetails};
use crate::{Args, Scenario, progress};

pub async fn state(args: &Args, harness: Harness) -> Result<Report> {
    let identities: Vec<_> = harness.meshes[0].iter().collect();
    let count = identities.len();
    let writes = args.messages.unwrap_or(500);
    let writers = (args.senders as usize).min(count);
    let followers = (count - 1) as u32;
    // Slot 0 of each writer is its warm-up write.
    let per_writer = 1 + (writes as usize).div_ceil(writers);
    let ledger = Arc::new(Ledger::new(&vec![per_writer; count]));
    let observations = Observations::new(ledger.clone());
    let peers = harness.connect_peers(&identities, &observations, args.connect_concurrency).await?;
    let keys_started = Instant::now();
    share_keys(&peers).await?;
    let keys_s = keys_started.elapsed().as_secs_f64();
    let ack = Arc::new(LatencyHistogram::new());
    let mut versions = vec![0u64; writers];

    observations.recording.store(false, Ordering::Relaxed);
    let warm_up = LatencyHistogram::new();
    for writer in 0..writers {
        write(&peers[writer], &mut versions[writer], 0, followers, args, &observations, &warm_up).await;
    }
    observations.recording.store(true, Ordering::Relaxed);

    let phase = Phase::start(&harness);
    let bar = progress::bar(u64::from(writes), "state");
    for n in 0..writes {
        let writer = n as usize % writers;
        let seq = 1 + n / writers as u32;
        write(&peers[writer], &mut versions[writer], seq, followers, args, &observations, &ack).await;
        bar.set_position(u64::from(n) + 1);
    }
    bar.finish_and_clear();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let end = ledger.last_delivery_us();
    let measured = phase.finish(&harness, observations.clone(), ack, Some(end));
    shutdown_peers(peers).await;

    let params = json!({"peers": count, "writes": writes, "writers": writers, "payload_bytes": args.payload_bytes});
    let mut report = harness.report(Scenario::State, params, measured);
    report.state = Some(StateDetails {
        writes: u64::from(writes),
        followers: u64::from(followers),
        complete_ms: observations.complete.percentiles(),
        keys_s: crate::measure::round3(keys_s),
    });
    Ok(report)
}

/// The first peer makes the mesh's first key for every member (the operator admitted them all,
/// so the log verifies each); the others open their copies.
async fn share_keys(peers: &[BenchPeer]) -> Result<()> {
    peers[0].client.refresh_mesh_keys(None, None).await?;
    let mut opening = tokio::task::JoinSet::new();
    for peer in &peers[1..] {
        let client = peer.client.clone();
        opening.spawn(async move { client.refresh_mesh_keys(None, None).await.map(|_| ()) });
    }
    while let Some(opened) = opening.join_next().await {
        if let Err(error) = opened? {
            bail!("a peer could not open the mesh's key: {error}");
        }
    }
    if let Some(peer) = peers.iter().find(|p| !p.client.holds_mesh_keys()) {
        bail!("peer {} holds no mesh key", peer.index);
    }
    Ok(())
}

/// Writes `board/<writer>` at the version the writer holds and waits until every follower
/// opened the change (or the timeout passed).
async fn write(
    writer: &BenchPeer,
    version: &mut u64,
    seq: u32,
    followers: u32,
    args: &Args,
    observations: &Observations,
    ack: &LatencyHistogram,
) {
    let ledger = &observations.ledger;
    ledger.expect(writer.index, seq, followers);
    let stamp = Stamp { sender: writer.index, seq, sent_us: now_us() };
    let value = serde_json::Value::String(String::from_utf8_lossy(&stamp.encode(args.payload_bytes)).into_owned());
    let started = Instant::now();
    let name = format!("board/{}", writer.index);
    let state = match writer.client.set_state(&name, value, Some(*version), None).await {
        Ok(item) => {
            ack.record(started.elapsed());
            *version = item.version;
            SendState::Acknowledged
        }
        Err(error) => {
            observations.error(&format!("set_state: {error}"));
            SendState::Failed
        }
    };
    ledger.settle(writer.index, seq, state);
    if state == SendState::Acknowledged {
        wait_complete(observations, writer.index, seq, followers, "a state change").await;
    }
}
