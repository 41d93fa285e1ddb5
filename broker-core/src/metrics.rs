//! Prometheus metrics, rendered by hand in the text exposition format (version 0.0.4).
//!
//! Every series exists from the start (counters at 0), so dashboards and alerts never see a
//! missing metric. Label values come from fixed sets: no unbounded cardinality.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::protocol::{ErrorCode, Priority, SendRejection};

/// Upper bounds (seconds) of the hello latency histogram buckets.
const HELLO_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

const CONNECTION_REJECT_REASONS: [ErrorCode; 8] = [
    ErrorCode::Malformed,
    ErrorCode::TimestampSkew,
    ErrorCode::BadSignature,
    ErrorCode::Unauthorized,
    ErrorCode::BadSessionPubkey,
    ErrorCode::Capacity,
    ErrorCode::Replay,
    ErrorCode::NoHello,
];

const MESSAGE_REJECT_REASONS: [SendRejection; 9] = [
    SendRejection::RateLimit,
    SendRejection::TooLarge,
    SendRejection::UnknownRecipient,
    SendRejection::NoRecipient,
    SendRejection::Blocked,
    SendRejection::Malformed,
    SendRejection::Unavailable,
    SendRejection::Held,
    SendRejection::ScheduleLimit,
];

/// Writes to the shared workspace, by kind.
pub const WORKSPACE_WRITES: [&str; 4] = ["state_set", "state_delete", "remember", "forget"];

/// Capabilities a grant can deny at send time.
pub const GRANT_CAPS: [&str; 2] = ["dm", "broadcast"];

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_total: AtomicU64,
    pub connections_active: AtomicU64,
    connections_rejected: [AtomicU64; 8],
    messages_routed: [AtomicU64; 3],
    messages_rejected: [AtomicU64; MESSAGE_REJECT_REASONS.len()],
    dropped_by_grant: [AtomicU64; 2],
    pub messages_delivered_total: AtomicU64,
    /// Undelivered queue entries (seeded from the store at start, then kept up to date).
    pub queue_depth: AtomicU64,
    pub db_healthy: AtomicU64,
    pub store_batches_total: AtomicU64,
    pub slow_consumers_total: AtomicU64,
    /// Member pairs the pair breaker held.
    pub pairs_held_total: AtomicU64,
    pub expired_total: AtomicU64,
    /// Occurrences of scheduled messages queued, and how many of them late.
    pub schedules_fired_total: AtomicU64,
    pub schedules_late_total: AtomicU64,
    workspace_writes: [AtomicU64; WORKSPACE_WRITES.len()],
    /// Workspace writes refused for a member's quota.
    pub workspace_quota_refusals_total: AtomicU64,
    hello_buckets: [AtomicU64; 10],
    hello_count: AtomicU64,
    hello_sum_micros: AtomicU64,
}

fn index_of<T: PartialEq>(all: &[T], value: &T) -> usize {
    all.iter().position(|v| v == value).unwrap_or(0)
}

impl Metrics {
    pub fn connection_rejected(&self, reason: ErrorCode) {
        if let Some(index) = CONNECTION_REJECT_REASONS.iter().position(|r| *r == reason) {
            self.connections_rejected[index].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn message_routed(&self, priority: Priority) {
        let index = index_of(&[Priority::Now, Priority::Next, Priority::Low], &priority);
        self.messages_routed[index].fetch_add(1, Ordering::Relaxed);
    }

    pub fn message_rejected(&self, reason: SendRejection) {
        self.messages_rejected[index_of(&MESSAGE_REJECT_REASONS, &reason)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn dropped_by_grant(&self, cap: &str) {
        self.dropped_by_grant[index_of(&GRANT_CAPS, &cap)].fetch_add(1, Ordering::Relaxed);
    }

    /// A shared-state or memory write was stored (`kind` from [`WORKSPACE_WRITES`]).
    pub fn workspace_write(&self, kind: &str) {
        self.workspace_writes[index_of(&WORKSPACE_WRITES, &kind)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn hello_latency(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in HELLO_BUCKETS.iter().zip(&self.hello_buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.hello_count.fetch_add(1, Ordering::Relaxed);
        self.hello_sum_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// The text exposition of every series.
    pub fn render(&self) -> String {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::with_capacity(4096);
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        };
        let plain = |a: &AtomicU64| vec![(String::new(), load(a))];
        family("broker_connections_total", "counter", "WebSocket sessions accepted.", &plain(&self.connections_total));
        family("broker_connections_active", "gauge", "WebSocket sessions open now.", &plain(&self.connections_active));
        family(
            "broker_connections_rejected_total",
            "counter",
            "Handshakes refused, by reason.",
            &CONNECTION_REJECT_REASONS
                .iter()
                .zip(&self.connections_rejected)
                .map(|(r, a)| (format!("{{reason=\"{}\"}}", r.as_str()), load(a)))
                .collect::<Vec<_>>(),
        );
        family(
            "broker_messages_routed_total",
            "counter",
            "Messages accepted and queued, by priority.",
            &[Priority::Now, Priority::Next, Priority::Low]
                .iter()
                .zip(&self.messages_routed)
                .map(|(p, a)| (format!("{{priority=\"{}\"}}", p.as_str()), load(a)))
                .collect::<Vec<_>>(),
        );
        family(
            "broker_messages_rejected_total",
            "counter",
            "Sends refused, by reason.",
            &MESSAGE_REJECT_REASONS
                .iter()
                .zip(&self.messages_rejected)
                .map(|(r, a)| (format!("{{reason=\"{}\"}}", r.code()), load(a)))
                .collect::<Vec<_>>(),
        );
        family(
            "broker_messages_dropped_by_grant_total",
            "counter",
            "Recipient copies dropped because the recipient's grants deny the sender, by capability.",
            &GRANT_CAPS
                .iter()
                .zip(&self.dropped_by_grant)
                .map(|(c, a)| (format!("{{cap=\"{c}\"}}"), load(a)))
                .collect::<Vec<_>>(),
        );
        family(
            "broker_messages_delivered_total",
            "counter",
            "Queue entries removed because their recipient acknowledged them.",
            &plain(&self.messages_delivered_total),
        );
        family("broker_queue_depth", "gauge", "Undelivered queue entries.", &plain(&self.queue_depth));
        family("broker_db_healthy", "gauge", "1 when the last database check succeeded.", &plain(&self.db_healthy));
        family(
            "broker_store_batches_total",
            "counter",
            "Store transactions committed.",
            &plain(&self.store_batches_total),
        );
        family(
            "broker_slow_consumers_total",
            "counter",
            "Sessions dropped because they did not read their socket.",
            &plain(&self.slow_consumers_total),
        );
        family(
            "broker_pairs_held_total",
            "counter",
            "Member pairs whose direct messages the pair breaker held (a flood or a reply loop).",
            &plain(&self.pairs_held_total),
        );
        family(
            "broker_messages_expired_total",
            "counter",
            "Undelivered queue entries dropped by the TTL sweep.",
            &plain(&self.expired_total),
        );
        family(
            "broker_schedules_fired_total",
            "counter",
            "Occurrences of scheduled messages queued.",
            &plain(&self.schedules_fired_total),
        );
        family(
            "broker_schedules_late_total",
            "counter",
            "Occurrences queued more than 10 s after their time (the broker was down or behind).",
            &plain(&self.schedules_late_total),
        );
        family(
            "broker_workspace_writes_total",
            "counter",
            "Sealed shared-state and memory writes stored, by kind.",
            &WORKSPACE_WRITES
                .iter()
                .zip(&self.workspace_writes)
                .map(|(k, a)| (format!("{{kind=\"{k}\"}}"), load(a)))
                .collect::<Vec<_>>(),
        );
        family(
            "broker_workspace_quota_refusals_total",
            "counter",
            "Shared-state and memory writes refused because the member was at its quota.",
            &plain(&self.workspace_quota_refusals_total),
        );
        let mut hello = Vec::new();
        for (bound, bucket) in HELLO_BUCKETS.iter().zip(&self.hello_buckets) {
            hello.push((format!("_bucket{{le=\"{bound}\"}}"), load(bucket)));
        }
        hello.push(("_bucket{le=\"+Inf\"}".to_owned(), load(&self.hello_count)));
        let _ = writeln!(out, "# HELP broker_hello_latency_seconds Time from receiving hello to sending hello_ack.");
        let _ = writeln!(out, "# TYPE broker_hello_latency_seconds histogram");
        for (suffix, value) in hello {
            let _ = writeln!(out, "broker_hello_latency_seconds{suffix} {value}");
        }
        let _ = writeln!(out, "broker_hello_latency_seconds_sum {}", load(&self.hello_sum_micros) as f64 / 1_000_000.0);
        let _ = writeln!(out, "broker_hello_latency_seconds_count {}", load(&self.hello_count));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_present_before_any_event_and_labels_split_lines() {
        let metrics = Metrics::default();
        let text = metrics.render();
        for name in [
            "broker_connections_total 0",
            "broker_connections_rejected_total{reason=\"replay\"} 0",
            "broker_messages_routed_total{priority=\"now\"} 0",
            "broker_messages_rejected_total{reason=\"too_large\"} 0",
            "broker_messages_dropped_by_grant_total{cap=\"dm\"} 0",
            "broker_queue_depth 0",
            "broker_hello_latency_seconds_count 0",
        ] {
            assert!(text.contains(name), "missing {name}");
        }
        metrics.message_rejected(SendRejection::RateLimit);
        metrics.message_rejected(SendRejection::RateLimit);
        metrics.hello_latency(Duration::from_millis(3));
        let text = metrics.render();
        assert!(text.contains("broker_messages_rejected_total{reason=\"rate_limit\"} 2"));
        assert!(text.contains("broker_hello_latency_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("broker_hello_latency_seconds_bucket{le=\"0.0025\"} 0"));
        // HELP and TYPE precede the samples of their family.
        let help = text.find("# HELP broker_queue_depth").expect("help");
        let sample = text.find("broker_queue_depth 0").expect("sample");
        assert!(help < sample);
    }
}
