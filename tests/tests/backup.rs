//! Backups made while the broker serves, and restoring one (real broker processes and bridges):
//! every message the broker acknowledged before the backup began is delivered after the
//! restore, exactly once; what came after the backup is not in it; a directory a broker serves
//! cannot be restored over.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use claudemesh_e2e::{Broker, Device, WAIT, message_texts};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_made_while_serving_restores_every_acknowledged_message_once() -> Result<()> {
    let mut broker = Broker::start().await?;
    let (_, link) = broker.mesh_with_invite("backup", 2)?;
    let (alice_dev, bob_dev) = (Device::new()?, Device::new()?);
    alice_dev.join(&link, "alice")?;
    let bob_key = bob_dev.join(&link, "bob")?["memberPubkey"].as_str().context("bob's key")?.to_owned();
    let mut alice = alice_dev.bridge().await?;
    // Bob is offline: what alice sends him (by member key) waits in the broker's queue.
    for i in 0..20 {
        alice.call("send_message", json!({"to": bob_key, "message": format!("before {i}")})).await?;
    }

    // The backup runs while alice goes on sending: the broker serves throughout.
    let backups = tempfile::tempdir()?;
    let target = backups.path().join("nightly");
    let mut backing_up = broker.operator_command();
    backing_up.args(["backup", "--json", "--to"]).arg(&target);
    let backup = tokio::task::spawn_blocking(move || backing_up.output());
    for i in 0..10 {
        alice.call("send_message", json!({"to": bob_key, "message": format!("during {i}")})).await?;
    }
    let output = backup.await??;
    ensure!(output.status.success(), "backup failed: {}", String::from_utf8_lossy(&output.stderr));
    let made: Value = serde_json::from_slice(&output.stdout)?;
    let manifest = &made["manifest"];
    ensure!(manifest["format"] == "claudemesh-broker-backup/1", "{made}");
    ensure!(manifest["queuedDeliveries"].as_u64().is_some_and(|n| n >= 20), "{made}");
    ensure!(manifest["operatorKeys"] == 1 && manifest["meshes"] == 1, "{made}");
    for i in 0..5 {
        alice.call("send_message", json!({"to": bob_key, "message": format!("after {i}")})).await?;
    }

    // A directory a broker serves is not restored over.
    let refused = broker.operator_command().args(["restore", "--from"]).arg(&target).output()?;
    ensure!(!refused.status.success(), "restored under a serving broker");
    ensure!(
        String::from_utf8_lossy(&refused.stderr).contains("serving"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Stopped, the directory takes the backup; the database it replaced is kept.
    broker.kill().await?;
    let output = broker.operator_command().args(["restore", "--json", "--from"]).arg(&target).output()?;
    ensure!(output.status.success(), "restore failed: {}", String::from_utf8_lossy(&output.stderr));
    let restored: Value = serde_json::from_slice(&output.stdout)?;
    let replaced = restored["replaced"].as_str().context("the replaced database")?;
    ensure!(std::path::Path::new(replaced).is_file(), "{restored}");
    broker.restart().await?;

    // Bob gets every message acknowledged before the backup began, once, and none sent after it.
    let mut bob = bob_dev.bridge().await?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.keys().filter(|text| text.starts_with("before")).count() < 20 {
        ensure!(tokio::time::Instant::now() < deadline, "after the restore bob got only {seen:?}");
        for text in message_texts(&bob.call("check_messages", json!({})).await?) {
            *seen.entry(text).or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for text in message_texts(&bob.call("check_messages", json!({})).await?) {
        *seen.entry(text).or_default() += 1;
    }
    ensure!(seen.values().all(|&n| n == 1), "delivered twice: {seen:?}");
    ensure!(!seen.keys().any(|text| text.starts_with("after")), "sent after the backup: {seen:?}");
    Ok(())
}
