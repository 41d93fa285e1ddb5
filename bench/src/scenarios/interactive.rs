//! `interactive`: each peer sends at a steady rate to random peers, the way sessions talk while
//! people work. Each send runs on its own task, so a slow ack never delays the schedule.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use rand::Rng as _;
use serde_json::json;

use super::{Harness, Phase, drain, shutdown_peers};
use crate::measure::{LatencyHistogram, Ledger};
use crate::peer::{Observations, send_until_settled};
use crate::report::Report;
use crate::{Args, Scenario, progress};

pub async fn interactive(args: &Args, harness: Harness) -> Result<Report> {
    let identities: Vec<_> = harness.meshes[0].iter().collect();
    let count = identities.len();
    let per_peer = args.messages.unwrap_or_else(|| (args.rate * args.duration).ceil().max(1.0) as u32);
    let interval = Duration::from_secs_f64(1.0 / args.rate);
    let ledger = Arc::new(Ledger::new(&vec![per_peer as usize; count]));
    let observations = Observations::new(ledger.clone());
    let peers = Arc::new(harness.connect_peers(&identities, &observations, args.connect_concurrency).await?);
    let ack = Arc::new(LatencyHistogram::new());

    let phase = Phase::start(&harness);
    let bar = progress::bar(count as u64 * u64::from(per_peer), "interactive");
    let targets = harness.targets;
    let mut schedules = Vec::with_capacity(count);
    for sender in 0..count {
        let (peers, observations, ack) = (peers.clone(), observations.clone(), ack.clone());
        let payload_bytes = args.payload_bytes;
        schedules.push(tokio::spawn(async move {
            // A random phase, so the peers do not all send in the same millisecond.
            let offset = interval.mul_f64(rand::thread_rng().r#gen::<f64>());
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, interval);
            let mut sends = Vec::with_capacity(per_peer as usize);
            for seq in 0..per_peer {
                tick.tick().await;
                let (peers, observations, ack) = (peers.clone(), observations.clone(), ack.clone());
                sends.push(tokio::spawn(async move {
                    let me = &peers[sender];
                    let target = &peers[targets.pick(sender, peers.len())].member_pubkey;
                    observations.ledger.expect(me.index, seq, 1);
                    send_until_settled(me, target, seq, payload_bytes, &observations, &ack).await;
                }));
            }
            for send in sends {
                let _ = send.await;
            }
        }));
    }
    drain(&ledger, schedules, Duration::from_secs_f64(args.drain_timeout), &bar).await;
    let end = ledger.last_delivery_us();
    let measured = phase.finish(&harness, observations.clone(), ack, Some(end));
    let peers = Arc::try_unwrap(peers).map_err(|_| anyhow::anyhow!("a sender still holds the peers"))?;
    shutdown_peers(peers).await;
    let params = json!({"peers": count, "messages_per_peer": per_peer, "rate_per_peer": args.rate,
                        "payload_bytes": args.payload_bytes});
    Ok(harness.report(Scenario::Interactive, params, measured))
}
