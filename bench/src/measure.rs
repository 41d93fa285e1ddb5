//! What a run measures: a shared clock, latency histograms, and the ledger of every message.
//!
//! Send times travel inside the sealed plaintext (see [`crate::payload`]), so the recipient
//! measures end-to-end latency against the same clock the sender read: both live in this process.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Microseconds since the first call in this process: the clock every timestamp uses.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

/// Latencies in microseconds, from 1 µs to 10 minutes at 3 significant digits.
pub struct LatencyHistogram {
    histogram: Mutex<Histogram<u64>>,
}

/// Percentiles of one histogram, in milliseconds. `None` when nothing was recorded.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p99_9: Option<f64>,
    pub max: Option<f64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram::new()
    }
}

impl LatencyHistogram {
    const HIGHEST_US: u64 = 600 * 1_000_000;

    pub fn new() -> LatencyHistogram {
        let histogram = Histogram::new_with_bounds(1, Self::HIGHEST_US, 3).expect("valid histogram bounds");
        LatencyHistogram { histogram: Mutex::new(histogram) }
    }

    pub fn record_us(&self, micros: u64) {
        let value = micros.clamp(1, Self::HIGHEST_US);
        self.histogram.lock().expect("histogram lock").record(value).expect("value within the bounds");
    }

    pub fn record(&self, elapsed: Duration) {
        self.record_us(elapsed.as_micros() as u64);
    }

    pub fn percentiles(&self) -> Percentiles {
        let histogram = self.histogram.lock().expect("histogram lock");
        if histogram.is_empty() {
            return Percentiles::default();
        }
        let ms = |micros: u64| Some(round3(micros as f64 / 1000.0));
        Percentiles {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p99_9: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// What the broker said about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SendState {
    /// Not sent yet, or the send is still waiting for its ack.
    Pending = 0,
    /// `queued: true`: the broker committed it. It must arrive, exactly once per recipient.
    Acknowledged = 1,
    /// The connection dropped (or the ack timed out) before the broker answered: it may or may
    /// not have been queued. It may arrive; it must not arrive twice.
    Unconfirmed = 2,
    /// The broker refused it (`queued: false`) or the client could not send it.
    Failed = 3,
}

impl SendState {
    fn from_u8(value: u8) -> SendState {
        match value {
            1 => SendState::Acknowledged,
            2 => SendState::Unconfirmed,
            3 => SendState::Failed,
            _ => SendState::Pending,
        }
    }
}

/// One message: its fate at the broker and how many recipients have it.
#[derive(Debug, Default)]
struct Slot {
    state: AtomicU8,
    /// Recipients the message should reach (1 for a direct message).
    expected: AtomicU32,
    /// Distinct recipients whose application received it.
    received: AtomicU32,
}

/// Every message of a run, indexed by `(sender, seq)`, and the counters derived from them.
///
/// Recipients de-duplicate at application level themselves (each keeps the ids it saw), so
/// `received` counts distinct recipients and a recipient seeing a message again is a duplicate.
pub struct Ledger {
    slots: Vec<Vec<Slot>>,
    duplicates: AtomicU64,
    /// Deliveries of `(sender, seq)` outside the ledger: never sent by this run.
    strays: AtomicU64,
    /// Messages that arrived but could not be opened or parsed.
    unreadable: AtomicU64,
    /// First-time deliveries of any message, for progress (exact counts come from [`Ledger::totals`]).
    first_deliveries: AtomicU64,
    /// Messages the broker acknowledged so far.
    acknowledged: AtomicU64,
    /// Time of the latest first-time delivery (µs on [`now_us`]).
    last_delivery_us: AtomicU64,
}

/// The ledger's final counts.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LedgerTotals {
    /// Messages the broker acknowledged (send calls that returned `queued: true`).
    pub messages_acknowledged: u64,
    /// Copies to deliver: each acknowledged message times its recipients.
    pub sent: u64,
    /// Copies of acknowledged messages that reached their recipient's application.
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Sends the broker refused, or the client could not make.
    pub send_errors: u64,
    /// Sends cut off by a dropped connection before the broker answered.
    pub unconfirmed: u64,
    /// Copies of unconfirmed sends that arrived anyway (the broker had committed them).
    pub unconfirmed_delivered: u64,
    pub strays: u64,
    pub unreadable: u64,
}

/// What a recipient learnt from recording one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receipt {
    /// The first copy at this recipient; `complete` when every recipient now has it.
    First {
        complete: bool,
    },
    Duplicate,
    Stray,
}

impl Ledger {
    /// `per_sender[i]` messages for sender `i`.
    pub fn new(per_sender: &[usize]) -> Ledger {
        Ledger {
            slots: per_sender.iter().map(|n| (0..*n).map(|_| Slot::default()).collect()).collect(),
            duplicates: AtomicU64::new(0),
            strays: AtomicU64::new(0),
            unreadable: AtomicU64::new(0),
            first_deliveries: AtomicU64::new(0),
            acknowledged: AtomicU64::new(0),
            last_delivery_us: AtomicU64::new(0),
        }
    }

    fn slot(&self, sender: u32, seq: u32) -> Option<&Slot> {
        self.slots.get(sender as usize).and_then(|s| s.get(seq as usize))
    }

    /// Called before the send: how many recipients must get it.
    pub fn expect(&self, sender: u32, seq: u32, recipients: u32) {
        if let Some(slot) = self.slot(sender, seq) {
            slot.expected.store(recipients, Ordering::Relaxed);
        }
    }

    /// Records the broker's answer to a send.
    pub fn settle(&self, sender: u32, seq: u32, state: SendState) {
        if let Some(slot) = self.slot(sender, seq) {
            slot.state.store(state as u8, Ordering::Relaxed);
            if state == SendState::Acknowledged {
                self.acknowledged.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// A recipient's application got `(sender, seq)`; `first_at_recipient` says whether this
    /// recipient had not seen it before.
    pub fn deliver(&self, sender: u32, seq: u32, first_at_recipient: bool) -> Receipt {
        let Some(slot) = self.slot(sender, seq) else {
            self.strays.fetch_add(1, Ordering::Relaxed);
            return Receipt::Stray;
        };
        if !first_at_recipient {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return Receipt::Duplicate;
        }
        let received = slot.received.fetch_add(1, Ordering::Relaxed) + 1;
        let expected = slot.expected.load(Ordering::Relaxed);
        self.first_deliveries.fetch_add(1, Ordering::Relaxed);
        self.last_delivery_us.fetch_max(now_us(), Ordering::Relaxed);
        Receipt::First { complete: received == expected }
    }

    pub fn unreadable(&self) {
        self.unreadable.fetch_add(1, Ordering::Relaxed);
    }

    /// First-time deliveries so far, of any message (for progress).
    pub fn first_deliveries(&self) -> u64 {
        self.first_deliveries.load(Ordering::Relaxed)
    }

    /// Distinct recipients that have `(sender, seq)` so far.
    pub fn received(&self, sender: u32, seq: u32) -> u32 {
        self.slot(sender, seq).map(|s| s.received.load(Ordering::Relaxed)).unwrap_or(0)
    }

    /// Messages the broker acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged.load(Ordering::Relaxed)
    }

    pub fn last_delivery_us(&self) -> u64 {
        self.last_delivery_us.load(Ordering::Relaxed)
    }

    /// Walks every slot (cheap: a few atomic loads per message). Exact once senders and
    /// recipients have stopped; while they run, a good enough view to decide when to stop.
    pub fn totals(&self) -> LedgerTotals {
        let mut totals = LedgerTotals {
            duplicates: self.duplicates.load(Ordering::Relaxed),
            strays: self.strays.load(Ordering::Relaxed),
            unreadable: self.unreadable.load(Ordering::Relaxed),
            ..LedgerTotals::default()
        };
        for slot in self.slots.iter().flatten() {
            let expected = u64::from(slot.expected.load(Ordering::Relaxed));
            let received = u64::from(slot.received.load(Ordering::Relaxed));
            match SendState::from_u8(slot.state.load(Ordering::Relaxed)) {
                SendState::Acknowledged => {
                    totals.messages_acknowledged += 1;
                    totals.sent += expected;
                    totals.delivered += received.min(expected);
                    // More distinct recipients than expected would be a routing bug: count it.
                    totals.duplicates += received.saturating_sub(expected);
                }
                SendState::Unconfirmed => {
                    totals.unconfirmed += 1;
                    totals.unconfirmed_delivered += received;
                }
                SendState::Failed => totals.send_errors += 1,
                SendState::Pending => {}
            }
        }
        totals.lost = totals.sent - totals.delivered;
        totals
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_counts_deliveries_duplicates_and_losses() {
        let ledger = Ledger::new(&[3, 1]);
        for seq in 0..3 {
            ledger.expect(0, seq, 1);
        }
        ledger.expect(1, 0, 2);
        ledger.settle(0, 0, SendState::Acknowledged);
        ledger.settle(0, 1, SendState::Acknowledged);
        ledger.settle(0, 2, SendState::Unconfirmed);
        assert_eq!(ledger.deliver(0, 0, true), Receipt::First { complete: true });
        assert_eq!(ledger.deliver(0, 0, false), Receipt::Duplicate);
        assert_eq!(ledger.deliver(0, 2, true), Receipt::First { complete: true });
        // A copy that overtakes its ack still counts once the ack comes.
        assert_eq!(ledger.deliver(1, 0, true), Receipt::First { complete: false });
        ledger.settle(1, 0, SendState::Acknowledged);
        assert_eq!(ledger.deliver(1, 0, true), Receipt::First { complete: true });
        assert_eq!(ledger.deliver(7, 0, true), Receipt::Stray);
        assert_eq!(ledger.first_deliveries(), 4);
        assert_eq!(ledger.acknowledged(), 3);

        let totals = ledger.totals();
        assert_eq!(totals.messages_acknowledged, 3);
        assert_eq!(totals.sent, 4);
        assert_eq!(totals.delivered, 3);
        assert_eq!(totals.lost, 1, "message (0, 1) never arrived");
        assert_eq!(totals.duplicates, 1);
        assert_eq!(totals.unconfirmed, 1);
        assert_eq!(totals.unconfirmed_delivered, 1);
        assert_eq!(totals.strays, 1);
    }

    #[test]
    fn percentiles_are_reported_in_milliseconds() {
        let histogram = LatencyHistogram::new();
        assert_eq!(histogram.percentiles().p50, None);
        for micros in 1..=1000 {
            histogram.record_us(micros);
        }
        let p = histogram.percentiles();
        assert_eq!(p.count, 1000);
        assert!((p.p50.expect("p50") - 0.5).abs() < 0.01);
        assert!((p.max.expect("max") - 1.0).abs() < 0.01);
    }
}
