//! Measures MCP bridge to MCP bridge latency on loopback: from the instant a `tools/call
//! send_message` line is written to bridge A's stdin to the instant the matching
//! `notifications/claude/channel` line is read from bridge B's stdout. One message at a time,
//! real processes (broker, two `claudemesh mcp`), real sealing, the broker's default
//! durability (fsync per commit batch).
//!
//! `cargo run --release -p claudemesh-e2e --example mcp_latency -- [messages]`

use std::time::Duration;

use anyhow::{Result, bail};
use claudemesh_e2e::{Broker, Device, WAIT};
use hdrhistogram::Histogram;
use serde_json::json;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let messages: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(1000);
    let warmup = 50;

    let broker = Broker::start().await?;
    let (_, link) = broker.mesh_with_invite("bench", 2)?;
    let (a_dev, b_dev) = (Device::new()?, Device::new()?);
    a_dev.join(&link, "sender")?;
    b_dev.join(&link, "receiver")?;
    let mut a = a_dev.bridge().await?;
    let mut b = b_dev.bridge().await?;
    a.call_until("list_peers", json!({}), |l| claudemesh_e2e::peer_names(l).contains(&"receiver".to_owned())).await?;

    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for n in 0..warmup + messages {
        let text = format!("latency probe {n}");
        let arguments = json!({"to": "receiver", "message": text});
        let (started, reply) =
            a.request_started("tools/call", json!({"name": "send_message", "arguments": arguments})).await?;
        let Some(notification) = b.channel_message(&text, WAIT).await else { bail!("message {n} never arrived") };
        let reply = tokio::time::timeout(WAIT, reply).await??;
        if reply["result"]["isError"] == json!(true) {
            bail!("send {n} failed: {reply}");
        }
        if n >= warmup {
            histogram.record(notification.at.duration_since(started).as_micros().max(1) as u64)?;
        }
        // Keep B's inbox small and realistic: the model reads what arrived.
        if n % 100 == 99 {
            b.call("check_messages", json!({})).await?;
        }
    }
    let ms = |q: f64| Duration::from_micros(histogram.value_at_quantile(q)).as_secs_f64() * 1000.0;
    println!("messages  {messages} (after {warmup} warm-up)");
    println!("median    {:.2} ms", ms(0.5));
    println!("p90       {:.2} ms", ms(0.9));
    println!("p99       {:.2} ms", ms(0.99));
    println!("max       {:.2} ms", Duration::from_micros(histogram.max()).as_secs_f64() * 1000.0);
    println!("mean      {:.2} ms", histogram.mean() / 1000.0);
    a.close().await?;
    b.close().await?;
    Ok(())
}
