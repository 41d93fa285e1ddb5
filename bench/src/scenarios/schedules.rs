//! `schedules`: many scheduled messages pending at once, then falling due over a window. What
//! they cost the broker's memory while pending, and how late each occurrence reaches its
//! recipient: `e2e_ms` here is receipt − due time (the stamp carries the due time).
//!
//! Peer 0 receives; the others schedule, in turn, one-time messages whose due times are spread
//! evenly over `--duration` seconds starting `LEAD` after the run starts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use broker_core::client::When;
use broker_core::protocol::Priority;
use serde_json::json;

use super::{Harness, Phase, drain, shutdown_peers};
use crate::measure::{LatencyHistogram, Ledger, SendState, now_us};
use crate::payload::Stamp;
use crate::peer::Observations;
use crate::report::{self, Report, ScheduleDetails};
use crate::{Args, Scenario, progress};

/// Time for every schedule to be made before the first one falls due.
const LEAD: Duration = Duration::from_secs(20);

pub async fn schedules(args: &Args, harness: Harness) -> Result<Report> {
    let identities: Vec<_> = harness.meshes[0].iter().collect();
    let count = identities.len();
    let total = args.messages.unwrap_or(10_000) as u64;
    let schedulers = (count - 1) as u64;
    let per_scheduler = total.div_ceil(schedulers);
    let ledger = Arc::new(Ledger::new(&vec![per_scheduler as usize; count]));
    let observations = Observations::new(ledger.clone());
    let peers = Arc::new(harness.connect_peers(&identities, &observations, args.connect_concurrency).await?);
    let ack = Arc::new(LatencyHistogram::new());
    let before = harness.sampler.sample();

    let phase = Phase::start(&harness);
    let window_us = (args.duration * 1e6) as u64;
    let first_due_us = now_us() + LEAD.as_micros() as u64;
    let receiver = peers[0].member_pubkey.clone();
    let made = Instant::now();
    let bar = progress::bar(total, "scheduling");
    let mut makers = Vec::with_capacity(schedulers as usize);
    for scheduler in 1..=schedulers as usize {
        let (peers, observations, ack, receiver) = (peers.clone(), observations.clone(), ack.clone(), receiver.clone());
        let payload_bytes = args.payload_bytes;
        makers.push(tokio::spawn(async move {
            let me = &peers[scheduler];
            for seq in 0..per_scheduler {
                let n = seq * schedulers + scheduler as u64 - 1;
                if n >= total {
                    break;
                }
                let due_us = first_due_us + n * window_us / total;
                // The broker fires by the wall clock; the stamp keeps the due time on ours.
                let due_ms = broker_core::protocol::now_ms() + due_us.saturating_sub(now_us()) / 1000;
                let stamp = Stamp { sender: me.index, seq: seq as u32, sent_us: due_us };
                observations.ledger.expect(me.index, seq as u32, 1);
                let started = Instant::now();
                let when = When::At(due_ms);
                let state = match me.client.schedule(&receiver, &stamp.encode(payload_bytes), Priority::Now, when).await
                {
                    Ok(_) => {
                        ack.record(started.elapsed());
                        SendState::Acknowledged
                    }
                    Err(error) => {
                        observations.error(&format!("schedule: {error}"));
                        SendState::Failed
                    }
                };
                observations.ledger.settle(me.index, seq as u32, state);
            }
        }));
    }
    while makers.iter().any(|m| !m.is_finished()) {
        bar.set_position(ledger.acknowledged());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bar.finish_and_clear();
    let scheduling_s = made.elapsed().as_secs_f64();
    // Every schedule is pending now (unless making them outlasted the lead).
    let pending = harness.sampler.sample();
    let bar = progress::bar(total, "firing");
    let wait = LEAD + Duration::from_secs_f64(args.duration + args.drain_timeout);
    drain(&ledger, makers, wait, &bar).await;
    let end = ledger.last_delivery_us();
    let measured = phase.finish(&harness, observations.clone(), ack, Some(end));
    let peers = Arc::try_unwrap(peers).map_err(|_| anyhow::anyhow!("a scheduler still holds the peers"))?;
    shutdown_peers(peers).await;

    let params = json!({"schedules": total, "schedulers": schedulers, "window_s": args.duration,
                        "lead_s": LEAD.as_secs(), "payload_bytes": args.payload_bytes});
    let mut report = harness.report(Scenario::Schedules, params, measured);
    let (before, pending) = (before.map(|r| r.rss_bytes), pending.map(|r| r.rss_bytes));
    report.schedules = Some(ScheduleDetails {
        schedules: total,
        scheduling_s: crate::measure::round3(scheduling_s),
        broker_rss_before_mb: before.map(report::mb),
        broker_rss_pending_mb: pending.map(report::mb),
        rss_per_schedule_bytes: before
            .zip(pending)
            .map(|(before, pending)| pending.saturating_sub(before) / total.max(1)),
    });
    Ok(report)
}
