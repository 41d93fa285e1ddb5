//! Benchmark peers: real [`MeshClient`] sessions with an application loop that reads what they
//! receive, checks it against the ledger, records latencies and acknowledges in batches.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use broker_core::client::{Backoff, ClientConfig, ClientError, ClientEvent, MeshClient, SessionProfile};
use broker_core::protocol::{PeerType, Priority, SystemEvent};
use tokio::sync::{Notify, mpsc};

use crate::measure::{LatencyHistogram, Ledger, Receipt, SendState, now_us};
use crate::payload::Stamp;
use crate::setup::Identity;

/// Events an application loop handles before it acknowledges what it read, at most.
const ACK_BATCH: usize = 512;
/// Distinct error texts kept for the report.
const ERROR_KINDS: usize = 16;

/// How peers connect.
#[derive(Debug, Clone)]
pub struct PeerOptions {
    pub broker_url: String,
    pub backoff: Backoff,
    pub request_timeout: Duration,
}

/// What every peer's application loop reports into. Shared by all peers of a run.
pub struct Observations {
    pub ledger: Arc<Ledger>,
    /// Send call → the recipient's application has the decrypted message, per copy.
    pub e2e: LatencyHistogram,
    /// Send call → the last recipient has it (multi-recipient messages).
    pub complete: LatencyHistogram,
    /// Session start → `hello_ack` (first connection of each peer).
    pub hello: LatencyHistogram,
    /// Peers connected at least once.
    pub connected: AtomicU64,
    /// Connections lost (each reconnect follows one).
    pub disconnects: AtomicU64,
    pub system_events: AtomicU64,
    /// Latencies are recorded only while this is set (warm-up traffic is not measured).
    pub recording: AtomicBool,
    /// Woken once per message that reached all its recipients.
    pub completions: Notify,
    /// Set by the restart scenario to the kill time (µs); the first delivery after it is noted.
    pub resume_marker_us: AtomicU64,
    pub first_delivery_after_marker_us: AtomicU64,
    /// Refusals and send errors by text, with counts.
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Observations {
    pub fn new(ledger: Arc<Ledger>) -> Arc<Observations> {
        Arc::new(Observations {
            ledger,
            e2e: LatencyHistogram::new(),
            complete: LatencyHistogram::new(),
            hello: LatencyHistogram::new(),
            connected: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            system_events: AtomicU64::new(0),
            recording: AtomicBool::new(true),
            completions: Notify::new(),
            resume_marker_us: AtomicU64::new(0),
            first_delivery_after_marker_us: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn error(&self, text: &str) {
        let mut errors = self.errors.lock().expect("errors lock");
        // Bounded: the first ERROR_KINDS distinct texts are counted, later new ones are not.
        let kind: String = text.chars().take(160).collect();
        if errors.len() < ERROR_KINDS || errors.contains_key(&kind) {
            *errors.entry(kind).or_default() += 1;
        }
    }

    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().expect("errors lock").clone()
    }
}

/// One peer session of the benchmark.
pub struct BenchPeer {
    pub index: u32,
    pub client: MeshClient,
    pub member_pubkey: String,
    receiver: tokio::task::JoinHandle<()>,
}

impl BenchPeer {
    /// Starts the session and its application loop; it connects in the background.
    pub fn start(
        index: u32,
        identity: &Identity,
        options: &PeerOptions,
        observations: &Arc<Observations>,
    ) -> BenchPeer {
        let mut config =
            ClientConfig::new(&options.broker_url, &identity.mesh_id, &identity.member_id, identity.key.clone());
        config.profile = SessionProfile {
            display_name: Some(identity.name.clone()),
            session_id: Some(format!("bench-{index}")),
            pid: Some(std::process::id()),
            peer_type: Some(PeerType::Ai),
            channel: Some("claudemesh-bench".to_owned()),
            ..SessionProfile::default()
        };
        config.backoff = options.backoff;
        config.request_timeout = options.request_timeout;
        config.state_updates = true;
        let (client, events) = MeshClient::start(config);
        let receiver = tokio::spawn(application_loop(client.clone(), events, observations.clone(), Instant::now()));
        BenchPeer { index, member_pubkey: identity.key.public_hex(), client, receiver }
    }

    /// Closes the session cleanly and waits for its application loop to end.
    pub async fn shutdown(self) {
        self.client.shutdown().await;
        drop(self.client);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.receiver).await;
    }
}

/// Waits until `count` peers connected at least once, reporting progress through `tick`.
pub async fn wait_connected(
    observations: &Observations,
    count: u64,
    timeout: Duration,
    mut tick: impl FnMut(u64),
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let connected = observations.connected.load(Ordering::Relaxed);
        tick(connected);
        if connected >= count {
            return Ok(());
        }
        if Instant::now() > deadline {
            let errors = observations.errors();
            bail!("only {connected} of {count} peers connected within {timeout:?}; errors seen: {errors:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The consumer of one session: reads messages, records them, acknowledges in batches.
async fn application_loop(
    client: MeshClient,
    mut events: mpsc::Receiver<ClientEvent>,
    observations: Arc<Observations>,
    started: Instant,
) {
    let mut seen: HashSet<u64> = HashSet::new();
    let mut first_connection = true;
    let mut acks = Vec::with_capacity(ACK_BATCH);
    while let Some(event) = events.recv().await {
        let mut next = Some(event);
        while let Some(event) = next.take() {
            match event {
                ClientEvent::Message(message) => {
                    acks.push(message.message_id.clone());
                    let stamp = message.body.as_deref().ok().and_then(Stamp::decode);
                    record(stamp, &mut seen, &observations);
                }
                // A shared-state write of the state scenario: its value is the stamp, opened
                // (decrypted, its writer's signature checked) as any front end would.
                ClientEvent::System { event: SystemEvent::StateChanged(change), .. } => {
                    let opened = change.entry.as_ref().map(|entry| client.open_state(entry));
                    let stamp = match opened {
                        Some(Ok(item)) => item.value.as_str().and_then(|v| Stamp::decode(v.as_bytes())),
                        Some(Err(_)) | None => None,
                    };
                    record(stamp, &mut seen, &observations);
                }
                ClientEvent::Connected(_) => {
                    if first_connection {
                        first_connection = false;
                        observations.hello.record(started.elapsed());
                        observations.connected.fetch_add(1, Ordering::Relaxed);
                    }
                }
                ClientEvent::Disconnected { .. } => {
                    observations.disconnects.fetch_add(1, Ordering::Relaxed);
                }
                ClientEvent::Refused { code, message, .. } => {
                    observations.error(&format!("refused: {} {message}", code.as_str()));
                }
                ClientEvent::System { .. } => {
                    observations.system_events.fetch_add(1, Ordering::Relaxed);
                }
                ClientEvent::Error(error) => observations.error(&format!("error frame: {}", error.message)),
                // The ledger already counts deliveries on the recipients' side.
                ClientEvent::Delivered { .. } => {}
            }
            if acks.len() < ACK_BATCH {
                next = events.try_recv().ok();
            }
        }
        if !acks.is_empty() && client.acknowledge(std::mem::take(&mut acks)).await.is_err() {
            return;
        }
    }
}

/// Records one delivery (a message, or a state change) in the ledger and the latencies.
fn record(stamp: Option<Stamp>, seen: &mut HashSet<u64>, observations: &Observations) {
    let received_us = now_us();
    let Some(stamp) = stamp else {
        observations.ledger.unreadable();
        return;
    };
    let key = (u64::from(stamp.sender) << 32) | u64::from(stamp.seq);
    match observations.ledger.deliver(stamp.sender, stamp.seq, seen.insert(key)) {
        Receipt::First { complete } => {
            let latency = received_us.saturating_sub(stamp.sent_us);
            let recording = observations.recording.load(Ordering::Relaxed);
            if recording {
                observations.e2e.record_us(latency);
            }
            if complete {
                if recording {
                    observations.complete.record_us(latency);
                }
                observations.completions.notify_one();
            }
            let marker = observations.resume_marker_us.load(Ordering::Relaxed);
            if marker != 0 && received_us > marker {
                let _ = observations.first_delivery_after_marker_us.compare_exchange(
                    0,
                    received_us,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        Receipt::Duplicate | Receipt::Stray => {}
    }
}

/// What a send came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    Settled(SendState),
    /// The client's buffer for a lost connection is full: nothing was sent, retrying is safe.
    Retry,
}

/// Sends one stamped message from `sender` to `target` (a key or `*`) and records its fate.
pub async fn send_stamped(
    sender: &BenchPeer,
    target: &str,
    seq: u32,
    payload_bytes: usize,
    observations: &Observations,
    ack_latency: &LatencyHistogram,
) -> SendOutcome {
    let started = Instant::now();
    let stamp = Stamp { sender: sender.index, seq, sent_us: now_us() };
    let result = sender.client.send(target, &stamp.encode(payload_bytes), Priority::Next).await;
    let state = match result {
        Ok(_) => {
            ack_latency.record(started.elapsed());
            SendState::Acknowledged
        }
        Err(ClientError::QueueFull(_)) => return SendOutcome::Retry,
        Err(error @ (ClientError::ConnectionLost | ClientError::Timeout(_))) => {
            observations.error(&format!("send: {error}"));
            SendState::Unconfirmed
        }
        Err(error) => {
            observations.error(&format!("send: {error}"));
            SendState::Failed
        }
    };
    observations.ledger.settle(sender.index, seq, state);
    SendOutcome::Settled(state)
}

/// Keeps sending `seq` until it is settled, waiting out a full reconnect buffer.
pub async fn send_until_settled(
    sender: &BenchPeer,
    target: &str,
    seq: u32,
    payload_bytes: usize,
    observations: &Observations,
    ack_latency: &LatencyHistogram,
) -> SendState {
    loop {
        match send_stamped(sender, target, seq, payload_bytes, observations, ack_latency).await {
            SendOutcome::Settled(state) => return state,
            SendOutcome::Retry => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}
