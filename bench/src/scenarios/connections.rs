//! `connections`: many sessions across many meshes connect at once (a hello storm), then stay
//! connected and idle. Reports how long the storm took, hello latency, and the broker's memory
//! per idle session.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::{Harness, Phase, shutdown_peers};
use crate::broker::http_get;
use crate::measure::{LatencyHistogram, Ledger, round3};
use crate::peer::Observations;
use crate::report::{ConnectionDetails, Report, mb};
use crate::{Args, Scenario};

pub async fn connections(args: &Args, harness: Harness) -> Result<Report> {
    let sessions = super::peers(args) as usize;
    let identities: Vec<_> = harness.meshes.iter().flatten().take(sessions).collect();
    let observations = Observations::new(Arc::new(Ledger::new(&[])));
    let before = harness.sampler.sample();

    let phase = Phase::start(&harness);
    let storm = Instant::now();
    let peers = harness.connect_peers(&identities, &observations, args.connect_concurrency).await?;
    let connect_all = storm.elapsed();

    // Idle: the broker's memory settles (join events drained, buffers shrunk).
    tokio::time::sleep(Duration::from_secs_f64(args.idle)).await;
    let idle = harness.sampler.sample();
    let broker_sessions_active = active_sessions(&harness).await;
    let measured = phase.finish(&harness, observations.clone(), Arc::new(LatencyHistogram::new()), None);
    let disconnects = observations.disconnects.load(Ordering::Relaxed);
    let join_events = observations.system_events.load(Ordering::Relaxed);
    shutdown_peers(peers).await;

    let rss_per_session_kb = match (before, idle) {
        (Some(before), Some(idle)) if sessions > 0 => {
            Some(round3(idle.rss_bytes.saturating_sub(before.rss_bytes) as f64 / 1024.0 / sessions as f64))
        }
        _ => None,
    };
    let params = json!({"sessions": sessions, "meshes": harness.meshes.len(), "per_mesh": args.per_mesh,
                        "connect_concurrency": args.connect_concurrency, "idle_s": args.idle});
    let mut report = harness.report(Scenario::Connections, params, measured);
    report.disconnects = disconnects;
    report.connections = Some(ConnectionDetails {
        sessions: sessions as u64,
        meshes: harness.meshes.len() as u64,
        connected: observations.connected.load(Ordering::Relaxed),
        connect_all_s: round3(connect_all.as_secs_f64()),
        hello_ms: observations.hello.percentiles(),
        broker_rss_before_mb: before.map(|r| mb(r.rss_bytes)),
        broker_rss_idle_mb: idle.map(|r| mb(r.rss_bytes)),
        rss_per_session_kb,
        broker_fds_idle: idle.map(|r| r.fds),
        broker_sessions_active,
        join_events,
    });
    Ok(report)
}

/// `broker_connections_active` from the broker's `/metrics`.
async fn active_sessions(harness: &Harness) -> Option<u64> {
    let (status, body) = http_get(harness.addr, "/metrics").await.ok()?;
    if status != 200 {
        return None;
    }
    body.lines()
        .find_map(|line| line.strip_prefix("broker_connections_active "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|value| value as u64)
}
