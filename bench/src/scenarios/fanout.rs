//! `fanout`: broadcasts (`*`) in one mesh, one at a time, each timed until its last recipient
//! holds it. A few peers take turns sending; each first sends one unmeasured warm-up broadcast
//! (its first seal computes a box key per recipient, once per process, like any long-lived
//! session would have done long before).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::{Harness, Phase, shutdown_peers};
use crate::measure::{LatencyHistogram, Ledger, SendState};
use crate::peer::{BenchPeer, Observations, send_until_settled};
use crate::report::{FanoutDetails, Report};
use crate::{Args, Scenario, progress};

/// How long one broadcast (or state change) may take to reach everyone before the run moves on
/// (it then counts as lost copies).
const BROADCAST_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn fanout(args: &Args, harness: Harness) -> Result<Report> {
    let identities: Vec<_> = harness.meshes[0].iter().collect();
    let count = identities.len();
    let broadcasts = args.messages.unwrap_or(200);
    let senders = (args.senders as usize).min(count);
    let recipients = (count - 1) as u32;
    // Slot 0 of each sender is its warm-up broadcast.
    let per_sender = 1 + (broadcasts as usize).div_ceil(senders);
    let ledger = Arc::new(Ledger::new(&vec![per_sender; count]));
    let observations = Observations::new(ledger.clone());
    let peers = harness.connect_peers(&identities, &observations, args.connect_concurrency).await?;
    let ack = Arc::new(LatencyHistogram::new());

    observations.recording.store(false, Ordering::Relaxed);
    let warm_up_acks = LatencyHistogram::new();
    for peer in peers.iter().take(senders) {
        broadcast(&peers, peer.index as usize, 0, recipients, args, &observations, &warm_up_acks).await;
    }
    observations.recording.store(true, Ordering::Relaxed);

    let phase = Phase::start(&harness);
    let bar = progress::bar(u64::from(broadcasts), "fanout");
    for n in 0..broadcasts {
        let sender = n as usize % senders;
        let seq = 1 + n / senders as u32;
        broadcast(&peers, sender, seq, recipients, args, &observations, &ack).await;
        bar.set_position(u64::from(n) + 1);
    }
    bar.finish_and_clear();
    // Listen a little longer for late duplicates.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let end = ledger.last_delivery_us();
    let measured = phase.finish(&harness, observations.clone(), ack, Some(end));
    shutdown_peers(peers).await;

    let params = json!({"peers": count, "broadcasts": broadcasts, "senders": senders,
                        "payload_bytes": args.payload_bytes});
    let mut report = harness.report(Scenario::Fanout, params, measured);
    report.fanout = Some(FanoutDetails {
        broadcasts: u64::from(broadcasts),
        recipients_per_broadcast: u64::from(recipients),
        complete_ms: observations.complete.percentiles(),
    });
    Ok(report)
}

/// Sends one broadcast and waits until every recipient has it (or the timeout passed).
async fn broadcast(
    peers: &[BenchPeer],
    sender: usize,
    seq: u32,
    recipients: u32,
    args: &Args,
    observations: &Observations,
    ack: &LatencyHistogram,
) {
    let ledger = &observations.ledger;
    ledger.expect(sender as u32, seq, recipients);
    if send_until_settled(&peers[sender], "*", seq, args.payload_bytes, observations, ack).await
        != SendState::Acknowledged
    {
        return;
    }
    wait_complete(observations, sender as u32, seq, recipients, "a broadcast").await;
}

/// Waits until `recipients` have message `seq` of `sender` (or the timeout passed: then the
/// missing copies count as lost, and `what` names it in the error).
pub(super) async fn wait_complete(observations: &Observations, sender: u32, seq: u32, recipients: u32, what: &str) {
    let deadline = Instant::now() + BROADCAST_TIMEOUT;
    while observations.ledger.received(sender, seq) < recipients {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, observations.completions.notified()).await.is_err() {
            observations
                .error(&format!("{what} did not reach all {recipients} recipients within {BROADCAST_TIMEOUT:?}"));
            return;
        }
    }
}
