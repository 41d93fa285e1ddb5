//! Every scenario at a small size, through the real `claudemesh-bench` binary against a real
//! `claudemesh-broker` process. These check what the benchmark reports and the delivery
//! guarantees it verifies; they assert no timing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_claudemesh-bench");

/// The broker binary next to the bench binary. `cargo test -p claudemesh-bench` builds only
/// this package's binaries, so build the broker (another package's binary) when it is missing.
fn broker_bin() -> &'static Path {
    static BROKER: OnceLock<PathBuf> = OnceLock::new();
    BROKER.get_or_init(|| {
        let beside = Path::new(BENCH).with_file_name(format!("claudemesh-broker{}", std::env::consts::EXE_SUFFIX));
        if !beside.is_file() {
            let mut build = Command::new(env!("CARGO"));
            build.args(["build", "-p", "broker-core", "--bin", "claudemesh-broker"]);
            if !cfg!(debug_assertions) {
                build.arg("--release");
            }
            let status = build.current_dir(env!("CARGO_MANIFEST_DIR")).status().expect("cargo runs");
            assert!(status.success(), "building claudemesh-broker failed");
        }
        assert!(beside.is_file(), "claudemesh-broker expected at {}", beside.display());
        beside
    })
}

fn bench(args: &[&str]) -> Output {
    bench_with_env(args, &[])
}

fn bench_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(BENCH)
        .args(args)
        .arg("--broker-bin")
        .arg(broker_bin())
        .envs(env.iter().copied())
        .output()
        .expect("the bench runs")
}

/// Runs a scenario with `--json` and returns its report, after checking what every report
/// must hold.
fn report(args: &[&str]) -> Value {
    report_with_env(args, &[])
}

fn report_with_env(args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let output = bench_with_env(&all, env);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{args:?} failed ({}):\n{stderr}", output.status);
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    assert_eq!(stdout.lines().count(), 1, "one JSON object on one line, got:\n{stdout}");
    let report: Value = serde_json::from_str(&stdout).expect("stdout is JSON");
    for field in ["sent", "delivered", "duplicates", "lost", "throughput_msgs_per_s", "broker_rss_max_mb", "wall_s"] {
        assert!(report[field].is_number(), "{field} is a number in {report}");
    }
    for field in ["p50", "p90", "p99", "p99_9", "max", "count"] {
        assert!(report["e2e_ms"].get(field).is_some(), "e2e_ms.{field} present");
        assert!(report["ack_ms"].get(field).is_some(), "ack_ms.{field} present");
    }
    assert!(report["broker_rss_max_mb"].as_f64().expect("rss") > 0.0, "the broker's memory was sampled");
    assert!(stderr.contains("delivered"), "the summary table goes to stderr with --json");
    report
}

/// The delivery invariants of a run where nothing was cut off.
fn assert_all_delivered(report: &Value, expected_copies: u64) {
    assert_eq!(report["sent"], expected_copies, "{report}");
    assert_eq!(report["delivered"], report["sent"], "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["send_errors"], 0, "{report}");
    assert_eq!(report["strays"], 0, "{report}");
    assert_eq!(report["unreadable"], 0, "{report}");
    assert_eq!(report["delivered_fraction"], 1.0, "{report}");
    assert!(report["e2e_ms"]["p50"].is_number() && report["e2e_ms"]["p99"].is_number(), "{report}");
    assert!(report["e2e_ms"]["max"].is_number() && report["ack_ms"]["p99"].is_number(), "{report}");
    assert!(report["throughput_msgs_per_s"].as_f64().expect("throughput") > 0.0, "{report}");
}

#[test]
fn burst_delivers_every_message_exactly_once() {
    let report = report(&["burst", "--peers", "6", "--messages", "100", "--inflight", "8"]);
    assert_eq!(report["scenario"], "burst");
    assert_eq!(report["broker"], "started");
    assert_all_delivered(&report, 600);
    assert_eq!(report["messages_acknowledged"], 600);
    assert_eq!(report["e2e_ms"]["count"], 600);
    assert_eq!(report["ack_ms"]["count"], 600);
    assert!(report["broker_fds_max"].as_u64().expect("fds") >= 6, "one socket per session at least");
    for side in ["broker", "broker_writer", "bench"] {
        assert!(report["cpu_us_per_delivery"][side].is_number(), "CPU per delivery of the {side}: {report}");
    }
}

#[test]
fn interactive_sends_at_a_steady_rate_and_delivers_everything() {
    let report = report(&["interactive", "--peers", "4", "--rate", "20", "--duration", "1"]);
    assert_eq!(report["params"]["messages_per_peer"], 20);
    assert_all_delivered(&report, 80);
}

#[test]
fn fanout_broadcasts_reach_every_other_peer() {
    let report = report(&["fanout", "--peers", "12", "--messages", "6", "--senders", "3"]);
    // 6 measured broadcasts and 3 warm-ups, each to the 11 other peers.
    assert_all_delivered(&report, 9 * 11);
    assert_eq!(report["e2e_ms"]["count"], 6 * 11, "warm-ups are not measured");
    let fanout = &report["fanout"];
    assert_eq!(fanout["recipients_per_broadcast"], 11);
    assert_eq!(fanout["complete_ms"]["count"], 6, "one completion per measured broadcast");
    assert!(fanout["complete_ms"]["p99"].is_number());
}

#[test]
fn connections_hold_every_session_across_meshes() {
    let report = report(&["connections", "--peers", "150", "--per-mesh", "50", "--idle", "0.5"]);
    let details = &report["connections"];
    assert_eq!(details["sessions"], 150);
    assert_eq!(details["meshes"], 3);
    assert_eq!(details["connected"], 150);
    assert_eq!(details["broker_sessions_active"], 150, "the broker's own count agrees");
    assert_eq!(details["hello_ms"]["count"], 150);
    // Every session hears of every later one in its mesh: one event per pair.
    assert_eq!(details["join_events"], 3 * (50 * 49 / 2));
    assert!(details["rss_per_session_kb"].is_number());
    assert!(details["broker_fds_idle"].as_u64().expect("fds") >= 150);
    assert_eq!(report["disconnects"], 0);
    assert_eq!(report["sent"], 0);
    assert_eq!(report["e2e_ms"]["p50"], Value::Null, "no messages, no latency");
}

#[test]
fn restart_loses_no_acknowledged_message_and_duplicates_none() {
    let report = report(&[
        "restart",
        "--peers",
        "4",
        "--messages",
        "300",
        "--inflight",
        "8",
        "--reconnect-initial-ms",
        "50",
        "--reconnect-max-ms",
        "250",
    ]);
    let acknowledged = report["messages_acknowledged"].as_u64().expect("acknowledged");
    let restart = &report["restart"];
    let before_kill = restart["acknowledged_before_kill"].as_u64().expect("before kill");
    assert!(before_kill >= 360, "killed at 30% of 1200: {restart}");
    assert!(acknowledged > before_kill, "sending went on after the restart: {report}");
    assert_eq!(report["delivered"], report["sent"], "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert_eq!(report["strays"], 0, "{report}");
    // Every message is accounted for: acknowledged, or cut off by the kill (never refused).
    let unconfirmed = report["unconfirmed"].as_u64().expect("unconfirmed");
    assert_eq!(acknowledged + unconfirmed, 1200, "{report}");
    assert!(report["unconfirmed_delivered"].as_u64().expect("unconfirmed delivered") <= unconfirmed);
    assert!(restart["downtime_ms"].as_f64().expect("downtime") > 0.0);
    assert!(restart["resume_after_ready_ms"].is_number(), "delivery resumed: {restart}");
}

/// A broker this test starts itself, the way an operator would run one.
struct RunningBroker {
    child: std::process::Child,
    port: u16,
    data_dir: tempfile::TempDir,
}

impl RunningBroker {
    fn start() -> RunningBroker {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("binds").local_addr().expect("addr").port();
        let child = Command::new(broker_bin())
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .env("RATE_LIMIT_BURST", "100000")
            .env("RATE_LIMIT_PER_MINUTE", "6000000")
            .env("PAIR_BURST", "100000")
            .env("PAIR_PER_MINUTE", "6000000")
            .env("PAIR_LOOP_TURNS", "100000")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the broker starts");
        let broker = RunningBroker { child, port, data_dir };
        for _ in 0..400 {
            if broker.ready() {
                return broker;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("the broker never became ready");
    }

    fn ready(&self) -> bool {
        use std::io::{Read as _, Write as _};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let request = "GET /health/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        let mut response = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut response).is_ok()
            && response.starts_with("HTTP/1.1 200")
    }
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn burst_against_a_running_broker_given_by_url() {
    let broker = RunningBroker::start();
    let url = format!("http://127.0.0.1:{}", broker.port);
    let pid = broker.child.id().to_string();
    let data_dir = broker.data_dir.path().to_str().expect("utf-8 path").to_owned();
    // The data directory comes the way claudemesh-broker itself takes it: CLAUDEMESH_DATA_DIR.
    let report = report_with_env(
        &["burst", "--peers", "4", "--messages", "50", "--url", &url, "--broker-pid", &pid],
        &[("CLAUDEMESH_DATA_DIR", &data_dir)],
    );
    assert_eq!(report["broker"], "url");
    assert_eq!(report["durability"], Value::Null, "unknown for a broker this tool did not start");
    assert_all_delivered(&report, 200);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let output = bench(&["burst", "--peers", "1"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--peers must be at least 2"));

    let output = bench(&["restart", "--kill-after", "1.5"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--kill-after must be a fraction"));

    let output = bench(&["restart", "--url", "http://127.0.0.1:9", "--data-dir", "/nonexistent"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs a broker this tool starts"));

    let output = bench(&["stampede"]);
    assert_eq!(output.status.code(), Some(2), "clap's usage error");
    let output = Command::new(BENCH)
        .args(["burst", "--url", "http://127.0.0.1:9"])
        .env("CLAUDEMESH_DATA_DIR", "/nonexistent/claudemesh-broker")
        .output()
        .expect("runs");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no broker database in /nonexistent"));
}

#[test]
fn help_lists_the_scenarios_and_the_json_interface() {
    let output = Command::new(BENCH).arg("--help").output().expect("runs");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for word in ["burst", "interactive", "fanout", "connections", "restart", "--peers", "--messages", "--url", "--json"]
    {
        assert!(help.contains(word), "--help mentions {word}");
    }
}
