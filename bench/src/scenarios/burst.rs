//! `burst` and `restart`: every peer sends its messages to random peers as fast as the broker
//! acknowledges them, keeping `--inflight` sends open at once. `restart` kills the broker with
//! SIGKILL once a share of the messages was acknowledged, restarts it on the same port and data
//! directory, and checks that every acknowledged message still arrives exactly once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::json;

use super::{Harness, Phase, drain, shutdown_peers};
use crate::measure::{LatencyHistogram, Ledger, now_us, round3};
use crate::peer::{BenchPeer, Observations, send_until_settled};
use crate::report::{Report, RestartDetails};
use crate::{Args, Scenario, progress};

pub async fn burst(args: &Args, harness: Harness) -> Result<Report> {
    let messages = args.messages.unwrap_or(1000);
    run(args, harness, Scenario::Burst, messages).await
}

pub async fn restart(args: &Args, harness: Harness) -> Result<Report> {
    let messages = args.messages.unwrap_or(2000);
    run(args, harness, Scenario::Restart, messages).await
}

async fn run(args: &Args, mut harness: Harness, scenario: Scenario, messages: u32) -> Result<Report> {
    let identities: Vec<_> = harness.meshes[0].iter().collect();
    let count = identities.len();
    let ledger = Arc::new(Ledger::new(&vec![messages as usize; count]));
    let observations = Observations::new(ledger.clone());
    let peers = Arc::new(harness.connect_peers(&identities, &observations, args.connect_concurrency).await?);
    let ack = Arc::new(LatencyHistogram::new());

    let phase = Phase::start(&harness);
    let total = count as u64 * u64::from(messages);
    let bar = progress::bar(total, scenario.name());
    let targets = harness.targets;
    let senders = spawn_senders(&peers, targets, messages, args.inflight, args.payload_bytes, &observations, &ack);
    let restart = match scenario {
        Scenario::Restart => {
            let kill_at = ((total as f64 * args.kill_after).ceil() as u64).max(1);
            Some(kill_and_restart(&mut harness, &observations, kill_at, &senders).await?)
        }
        _ => None,
    };
    drain(&ledger, senders, Duration::from_secs_f64(args.drain_timeout), &bar).await;
    let end = ledger.last_delivery_us();
    let measured = phase.finish(&harness, observations.clone(), ack, Some(end));

    let peers = Arc::try_unwrap(peers).map_err(|_| anyhow::anyhow!("a sender still holds the peers"))?;
    shutdown_peers(peers).await;
    let mut params = json!({"peers": count, "messages": messages, "inflight": args.inflight,
                            "payload_bytes": args.payload_bytes});
    if restart.is_some() {
        params["kill_after"] = json!(args.kill_after);
        params["reconnect_initial_ms"] = json!(args.reconnect_initial_ms);
        params["reconnect_max_ms"] = json!(args.reconnect_max_ms);
    }
    let mut report = harness.report(scenario, params, measured);
    report.restart = restart;
    Ok(report)
}

/// `inflight` sending tasks per peer, sharing that peer's sequence numbers.
fn spawn_senders(
    peers: &Arc<Vec<BenchPeer>>,
    targets: super::Targets,
    messages: u32,
    inflight: u32,
    payload_bytes: usize,
    observations: &Arc<Observations>,
    ack: &Arc<LatencyHistogram>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for sender in 0..peers.len() {
        let next_seq = Arc::new(AtomicU32::new(0));
        for _ in 0..inflight.min(messages) {
            let (peers, observations, ack, next_seq) =
                (peers.clone(), observations.clone(), ack.clone(), next_seq.clone());
            tasks.push(tokio::spawn(async move {
                let me = &peers[sender];
                loop {
                    let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                    if seq >= messages {
                        return;
                    }
                    let target = &peers[targets.pick(sender, peers.len())].member_pubkey;
                    observations.ledger.expect(me.index, seq, 1);
                    send_until_settled(me, target, seq, payload_bytes, &observations, &ack).await;
                }
            }));
        }
    }
    tasks
}

/// Waits until `kill_at` messages were acknowledged, kills the broker with SIGKILL, restarts it
/// on the same port and data directory, and notes when it is ready.
async fn kill_and_restart(
    harness: &mut Harness,
    observations: &Observations,
    kill_at: u64,
    senders: &[tokio::task::JoinHandle<()>],
) -> Result<RestartDetails> {
    let broker = harness.broker.as_mut().context("the restart scenario needs a broker this tool started")?;
    while observations.ledger.acknowledged() < kill_at {
        if senders.iter().all(|s| s.is_finished()) {
            bail!(
                "every send was settled before {kill_at} were acknowledged ({} were): nothing to kill the broker during",
                observations.ledger.acknowledged()
            );
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let acknowledged_before_kill = observations.ledger.acknowledged();
    harness.sampler.switch_process(None);
    broker.kill()?;
    let killed = Instant::now();
    broker.spawn()?;
    let ready = broker.wait_ready().await?;
    let ready_us = now_us();
    observations.resume_marker_us.store(ready_us, Ordering::Relaxed);
    harness.sampler.switch_process(broker.pid());
    let downtime = ready.duration_since(killed);

    // Delivery resumes once the sessions reconnected and the backlog is pushed again.
    let resume_deadline = Instant::now() + Duration::from_secs(60);
    while observations.first_delivery_after_marker_us.load(Ordering::Relaxed) == 0 && Instant::now() < resume_deadline {
        if senders.iter().all(|s| s.is_finished()) && observations.ledger.totals().lost == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let first = observations.first_delivery_after_marker_us.load(Ordering::Relaxed);
    Ok(RestartDetails {
        acknowledged_before_kill,
        downtime_ms: round3(downtime.as_secs_f64() * 1000.0),
        resume_after_ready_ms: (first > ready_us).then(|| round3((first - ready_us) as f64 / 1000.0)),
    })
}
