//! The result of a run: one JSON object for scripts, a table for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::measure::{LedgerTotals, Percentiles, round3};

/// Everything a run reports. Field names are the stable interface for scripts.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    /// The run's parameters (peers, messages, rates…), as used.
    pub params: serde_json::Value,
    /// `started` (this tool started the broker) or `url`.
    pub broker: &'static str,
    pub durability: Option<String>,
    #[serde(flatten)]
    pub totals: LedgerTotals,
    /// delivered / sent (1 when nothing was sent).
    pub delivered_fraction: f64,
    /// First-time deliveries per second over the measured phase (`e2e_ms.count / wall_s`).
    pub throughput_msgs_per_s: f64,
    /// Send call → the recipient's application holds the decrypted message (per copy).
    pub e2e_ms: Percentiles,
    /// Send call → the broker's `queued: true` ack.
    pub ack_ms: Percentiles,
    pub broker_rss_max_mb: Option<f64>,
    pub broker_rss_end_mb: Option<f64>,
    pub broker_fds_max: Option<u64>,
    /// Broker CPU time (user + system) during the measured phase, summed over restarts.
    pub broker_cpu_s: Option<f64>,
    /// The part of it spent on the broker's store writer thread (commits and their
    /// completions), which cannot spread over cores.
    pub broker_writer_cpu_s: Option<f64>,
    /// This load generator's own CPU time over the same span (it shares the machine).
    pub bench_cpu_s: f64,
    /// The database server's CPU time over the same span (`--postgres`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_cpu_s: Option<f64>,
    /// CPU time per delivered copy, in µs: what each side costs (`None` without deliveries).
    pub cpu_us_per_delivery: CpuPerDelivery,
    /// The measured phase: first send → last delivery (connections: the storm and the idle time).
    pub wall_s: f64,
    /// Creating meshes and members, starting the broker, connecting the peers.
    pub setup_s: f64,
    /// Connections lost and reconnect attempts that failed, over all peers.
    pub disconnects: u64,
    /// Errors seen, by text, with counts.
    pub errors: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout: Option<FanoutDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connections: Option<ConnectionDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedules: Option<ScheduleDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<StateDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recall: Option<RecallDetails>,
}

/// The state scenario (`e2e_ms`: a write's call → one follower opened the change).
#[derive(Debug, Clone, Serialize)]
pub struct StateDetails {
    pub writes: u64,
    /// Sessions that follow the mesh's state besides the writer.
    pub followers: u64,
    /// A write's call → the last follower opened the change.
    pub complete_ms: Percentiles,
    /// The first peer making the mesh's key and every other opening its copy.
    pub keys_s: f64,
}

/// The recall scenario (`ack_ms`: a remember's call → stored).
#[derive(Debug, Clone, Serialize)]
pub struct RecallDetails {
    pub memories: u64,
    pub remember_s: f64,
    /// A fresh index syncing every memory (pages of 256, each opened and indexed).
    pub sync_s: f64,
    /// One recall: changes since the index's mark (a round trip), then the search.
    pub recall_ms: Percentiles,
    /// The search alone.
    pub search_ms: Percentiles,
    pub results_per_recall: f64,
}

/// The schedules scenario: memory while every schedule is pending (`e2e_ms` is lateness).
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleDetails {
    pub schedules: u64,
    /// Making every schedule (each acknowledged after its commit).
    pub scheduling_s: f64,
    pub broker_rss_before_mb: Option<f64>,
    /// Once every schedule was made, before the first fell due.
    pub broker_rss_pending_mb: Option<f64>,
    pub rss_per_schedule_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CpuPerDelivery {
    pub broker: Option<f64>,
    pub broker_writer: Option<f64>,
    /// The database server (`--postgres`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<f64>,
    pub bench: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutDetails {
    pub broadcasts: u64,
    pub recipients_per_broadcast: u64,
    /// Send call → the last recipient holds the message.
    pub complete_ms: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnectionDetails {
    pub sessions: u64,
    pub meshes: u64,
    /// Sessions that connected (each at least once).
    pub connected: u64,
    /// First session started → last `hello_ack`.
    pub connect_all_s: f64,
    /// Session start → `hello_ack`, per session. Up to `params.connect_concurrency` sessions
    /// handshake at once, so this includes queueing behind the others at the broker.
    pub hello_ms: Percentiles,
    pub broker_rss_before_mb: Option<f64>,
    pub broker_rss_idle_mb: Option<f64>,
    /// (idle RSS − RSS before the storm) / sessions.
    pub rss_per_session_kb: Option<f64>,
    pub broker_fds_idle: Option<u64>,
    /// Sessions the broker reports open (`/metrics`) while idle.
    pub broker_sessions_active: Option<u64>,
    /// Presence events (`peer_joined`) the sessions received by the end of the idle time: one
    /// per pair of sessions in a mesh when every session is connected.
    pub join_events: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RestartDetails {
    /// Messages acknowledged when the broker was killed.
    pub acknowledged_before_kill: u64,
    /// `kill -9` → the new process answers `/health/ready`.
    pub downtime_ms: f64,
    /// The new process is ready → the first message reaches an application.
    pub resume_after_ready_ms: Option<f64>,
}

pub fn mb(bytes: u64) -> f64 {
    round3(bytes as f64 / (1024.0 * 1024.0))
}

fn ms(value: Option<f64>) -> String {
    value.map(|v| format!("{v:.3}")).unwrap_or_else(|| "-".to_owned())
}

fn percentiles_row(p: &Percentiles) -> String {
    format!(
        "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
        ms(p.p50),
        ms(p.p90),
        ms(p.p99),
        ms(p.p99_9),
        ms(p.max),
        p.count
    )
}

impl Report {
    /// A two-column summary for people.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            ("scenario".into(), format!("{} ({} broker)", self.scenario, self.broker)),
            ("params".into(), self.params.to_string()),
        ];
        let t = &self.totals;
        rows.push(("sent (copies)".into(), format!("{} ({} messages acknowledged)", t.sent, t.messages_acknowledged)));
        rows.push((
            "delivered".into(),
            format!(
                "{} ({:.4}%), lost {}, duplicates {}",
                t.delivered,
                self.delivered_fraction * 100.0,
                t.lost,
                t.duplicates
            ),
        ));
        if t.send_errors + t.unconfirmed + t.strays + t.unreadable > 0 {
            rows.push((
                "not acknowledged".into(),
                format!(
                    "errors {}, unconfirmed {} (of which delivered {}), strays {}, unreadable {}",
                    t.send_errors, t.unconfirmed, t.unconfirmed_delivered, t.strays, t.unreadable
                ),
            ));
        }
        rows.push(("throughput".into(), format!("{:.0} msg/s end to end", self.throughput_msgs_per_s)));
        rows.push(("e2e ms".into(), percentiles_row(&self.e2e_ms)));
        rows.push(("ack ms".into(), percentiles_row(&self.ack_ms)));
        if let Some(fanout) = &self.fanout {
            rows.push((
                "broadcast complete ms".into(),
                format!(
                    "{} — {} recipients each",
                    percentiles_row(&fanout.complete_ms),
                    fanout.recipients_per_broadcast
                ),
            ));
        }
        if let Some(s) = &self.state {
            rows.push((
                "state change complete ms".into(),
                format!(
                    "{} — {} followers each; keys shared in {:.3} s",
                    percentiles_row(&s.complete_ms),
                    s.followers,
                    s.keys_s
                ),
            ));
        }
        if let Some(r) = &self.recall {
            rows.push((
                "memories".into(),
                format!(
                    "{} remembered in {:.3} s; a fresh index synced them in {:.3} s",
                    r.memories, r.remember_s, r.sync_s
                ),
            ));
            rows.push((
                "recall ms".into(),
                format!("{} — {} results each", percentiles_row(&r.recall_ms), r.results_per_recall),
            ));
            rows.push(("search ms".into(), percentiles_row(&r.search_ms)));
        }
        if let Some(c) = &self.connections {
            rows.push((
                "sessions".into(),
                format!("{} of {} connected across {} meshes", c.connected, c.sessions, c.meshes),
            ));
            rows.push(("connect all".into(), format!("{:.3} s", c.connect_all_s)));
            rows.push(("hello ms".into(), percentiles_row(&c.hello_ms)));
            rows.push((
                "memory".into(),
                format!(
                    "before {} MB, idle {} MB, {} KB per session",
                    ms(c.broker_rss_before_mb),
                    ms(c.broker_rss_idle_mb),
                    ms(c.rss_per_session_kb)
                ),
            ));
        }
        if let Some(s) = &self.schedules {
            rows.push((
                "schedules".into(),
                format!(
                    "{} made in {:.3} s; broker memory before {} MB, all pending {} MB ({} bytes each); e2e ms = late",
                    s.schedules,
                    s.scheduling_s,
                    ms(s.broker_rss_before_mb),
                    ms(s.broker_rss_pending_mb),
                    s.rss_per_schedule_bytes.map_or_else(|| "-".to_owned(), |b| b.to_string())
                ),
            ));
        }
        if let Some(r) = &self.restart {
            rows.push((
                "restart".into(),
                format!(
                    "killed after {} acks; down {:.1} ms; delivery resumed {} ms after ready",
                    r.acknowledged_before_kill,
                    r.downtime_ms,
                    ms(r.resume_after_ready_ms)
                ),
            ));
        }
        rows.push((
            "broker".into(),
            format!(
                "RSS max {} MB (end {} MB), fds max {}, CPU {} s",
                ms(self.broker_rss_max_mb),
                ms(self.broker_rss_end_mb),
                self.broker_fds_max.map(|f| f.to_string()).unwrap_or_else(|| "-".into()),
                ms(self.broker_cpu_s)
            ),
        ));
        let per = &self.cpu_us_per_delivery;
        if per.bench.is_some() {
            rows.push((
                "CPU per delivery".into(),
                format!(
                    "broker {} µs (writer thread {} µs), load generator {} µs",
                    ms(per.broker),
                    ms(per.broker_writer),
                    ms(per.bench)
                ),
            ));
        }
        if let Some(database) = per.database {
            rows.push(("database".into(), format!("CPU {} s, {database} µs per delivery", ms(self.database_cpu_s))));
        }
        rows.push(("load generator CPU".into(), format!("{:.3} s", self.bench_cpu_s)));
        rows.push(("wall".into(), format!("{:.3} s measured, {:.3} s setup", self.wall_s, self.setup_s)));
        rows.push(("disconnects".into(), self.disconnects.to_string()));
        for (text, count) in &self.errors {
            rows.push(("error".into(), format!("{count} × {text}")));
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (key, value) in rows {
            let _ = writeln!(out, "{key:>width$}  {value}");
        }
        out
    }

    /// Whether the run kept the delivery guarantees: every acknowledged copy arrived, none
    /// twice, and unconfirmed sends arrived at most once.
    pub fn delivery_violations(&self) -> Vec<String> {
        let t = &self.totals;
        let mut problems = Vec::new();
        if t.lost > 0 {
            problems.push(format!("{} acknowledged copies never reached their recipient", t.lost));
        }
        if t.duplicates > 0 {
            problems.push(format!("{} copies reached an application twice", t.duplicates));
        }
        if t.strays > 0 {
            problems.push(format!("{} messages arrived that this run never sent", t.strays));
        }
        if t.unreadable > 0 {
            problems.push(format!("{} messages could not be opened or read", t.unreadable));
        }
        problems
    }
}
