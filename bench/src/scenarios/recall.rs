//! `recall`: the mesh's memory as a session uses it. One peer remembers `--messages` memories
//! (sentences of a fixed vocabulary, some tagged); another syncs them into a fresh index of its
//! own (the bridge's `memories.db`) and then recalls: each recall is what `recall` does in the
//! bridge — ask the broker for changes after what the index holds (one round trip), then search
//! the index (FTS5, bm25, the ten best).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use broker_core::client::MeshClient;
use broker_core::client::memory_index::MemoryIndex;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::json;

use super::{Harness, Phase, shutdown_peers};
use crate::measure::{LatencyHistogram, Ledger};
use crate::peer::Observations;
use crate::report::{RecallDetails, Report};
use crate::{Args, Scenario, progress};

/// Recalls made against the synced index.
const RECALLS: usize = 1000;
/// Remembers in flight at once.
const IN_FLIGHT: usize = 32;
const TAGS: [&str; 8] = ["infra", "decision", "process", "gotcha", "api", "release", "security", "ops"];

/// A vocabulary of 1,000 made-up words (two or three syllables), most used ones first.
fn vocabulary() -> Vec<String> {
    const SYLLABLES: [&str; 10] = ["ka", "to", "mi", "ra", "ne", "lo", "su", "pe", "di", "an"];
    (0..1000)
        .map(|n| {
            let (a, b, c) = (n % 10, (n / 10) % 10, n / 100);
            let mut word = format!("{}{}", SYLLABLES[a], SYLLABLES[b]);
            if c > 0 {
                word.push_str(SYLLABLES[c]);
            }
            word
        })
        .collect()
}

/// A word drawn with a skew towards the first ones (as in text: few words are common).
fn word<'a>(rng: &mut StdRng, words: &'a [String]) -> &'a str {
    let x: f64 = rng.r#gen();
    &words[((x * x * x) * words.len() as f64) as usize % words.len()]
}

fn sentence(rng: &mut StdRng, words: &[String]) -> String {
    let length = rng.gen_range(8..30);
    (0..length).map(|_| word(rng, words)).collect::<Vec<_>>().join(" ")
}

pub async fn recall(args: &Args, harness: Harness) -> Result<Report> {
    let identities: Vec<_> = harness.meshes[0].iter().take(2).collect();
    let total = args.messages.unwrap_or(10_000) as usize;
    let observations = Observations::new(Arc::new(Ledger::new(&[0, 0])));
    let peers = harness.connect_peers(&identities, &observations, args.connect_concurrency).await?;
    let (writer, reader) = (peers[0].client.clone(), peers[1].client.clone());
    writer.refresh_mesh_keys(None, None).await.context("the writer's keys")?;
    reader.refresh_mesh_keys(None, None).await.context("the reader's keys")?;
    let words = Arc::new(vocabulary());

    // Remember, IN_FLIGHT at a time.
    let ack = Arc::new(LatencyHistogram::new());
    let remembered_at = Instant::now();
    let bar = progress::bar(total as u64, "remembering");
    let mut rng = StdRng::seed_from_u64(7);
    let mut running = tokio::task::JoinSet::new();
    for n in 0..total {
        if running.len() >= IN_FLIGHT
            && let Some(done) = running.join_next().await
        {
            done.context("a remember task")??;
        }
        let text = sentence(&mut rng, &words);
        let tags = if n % 3 == 0 { vec![TAGS[n % TAGS.len()].to_owned()] } else { Vec::new() };
        let (client, ack) = (writer.clone(), ack.clone());
        running.spawn(async move {
            let started = Instant::now();
            client.remember(&text, tags).await.context("remember")?;
            ack.record(started.elapsed());
            anyhow::Ok(())
        });
        bar.set_position(n as u64);
    }
    while let Some(done) = running.join_next().await {
        done.context("a remember task")??;
    }
    bar.finish_and_clear();
    let remember_s = remembered_at.elapsed().as_secs_f64();

    // A fresh device: its index syncs everything.
    let dir = tempfile::tempdir().context("a directory for the index")?;
    let index = Arc::new(MemoryIndex::open(&dir.path().join("memories.db"))?);
    let mesh_id = identities[1].mesh_id.clone();
    let synced_at = Instant::now();
    sync(&reader, &index, &mesh_id).await?;
    let sync_s = synced_at.elapsed().as_secs_f64();

    let phase = Phase::start(&harness);
    let (recall_ms, search_ms) = (LatencyHistogram::new(), LatencyHistogram::new());
    let mut found = 0u64;
    let bar = progress::bar(RECALLS as u64, "recalling");
    for n in 0..RECALLS {
        let query = (0..rng.gen_range(1..=3)).map(|_| word(&mut rng, &words)).collect::<Vec<_>>().join(" ");
        let tags = if n % 4 == 0 { vec![TAGS[n % TAGS.len()].to_owned()] } else { Vec::new() };
        let started = Instant::now();
        sync(&reader, &index, &mesh_id).await?;
        let searched = Instant::now();
        let (index, mesh_id) = (index.clone(), mesh_id.clone());
        let results = tokio::task::spawn_blocking(move || index.recall(&mesh_id, &query, &tags, 10)).await??;
        search_ms.record(searched.elapsed());
        recall_ms.record(started.elapsed());
        found += results.len() as u64;
        bar.set_position(n as u64 + 1);
    }
    bar.finish_and_clear();
    let measured = phase.finish(&harness, observations.clone(), ack, None);
    shutdown_peers(peers).await;

    let params = json!({"memories": total, "recalls": RECALLS, "limit": 10});
    let mut report = harness.report(Scenario::Recall, params, measured);
    report.recall = Some(RecallDetails {
        memories: total as u64,
        remember_s: crate::measure::round3(remember_s),
        sync_s: crate::measure::round3(sync_s),
        recall_ms: recall_ms.percentiles(),
        search_ms: search_ms.percentiles(),
        results_per_recall: crate::measure::round3(found as f64 / RECALLS as f64),
    });
    Ok(report)
}

/// Applies every memory change after what the index holds, a page at a time.
async fn sync(client: &MeshClient, index: &Arc<MemoryIndex>, mesh_id: &str) -> Result<()> {
    loop {
        let after = index.synced(mesh_id)?;
        let (changes, more) = tokio::time::timeout(Duration::from_secs(30), client.memory_changes(after))
            .await
            .context("memory changes in time")??;
        if !changes.is_empty() {
            let (index, mesh_id) = (index.clone(), mesh_id.to_owned());
            tokio::task::spawn_blocking(move || index.apply(&mesh_id, &changes)).await??;
        }
        if !more {
            return Ok(());
        }
    }
}
