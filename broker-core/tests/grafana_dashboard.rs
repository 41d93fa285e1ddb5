//! Every metric a panel of the shipped Grafana dashboard queries is one the broker exports.

use std::collections::BTreeSet;

use broker_core::metrics::Metrics;

/// Metric names (`broker_…`) referenced in a PromQL expression, histogram suffixes removed.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut start = 0;
    while let Some(offset) = expr[start..].find("broker_") {
        let begin = start + offset;
        let mut end = begin;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        names.push(expr[begin..end].to_owned());
        start = end;
    }
    names
}

#[test]
fn every_dashboard_query_uses_an_exported_metric() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../packaging/grafana/claudemesh-broker.json"))
            .expect("dashboard is JSON");
    let exported: BTreeSet<String> = Metrics::default()
        .render()
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| line.split(['{', ' ']).next().unwrap_or_default().to_owned())
        .collect();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for name in metric_names(expr) {
                assert!(
                    exported.contains(&name),
                    "panel {:?} queries {name}, which the broker does not export",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    for required in [
        "broker_connections_active",
        "broker_queue_depth",
        "broker_messages_routed_total",
        "broker_messages_rejected_total",
        "broker_messages_dropped_by_grant_total",
        "broker_connections_rejected_total",
        "broker_hello_latency_seconds_bucket",
    ] {
        let used = dashboard["panels"]
            .as_array()
            .expect("panels")
            .iter()
            .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
            .any(|t| metric_names(t["expr"].as_str().unwrap_or_default()).iter().any(|n| n == required));
        assert!(used, "no panel shows {required}");
    }
    assert!(checked >= 10, "the dashboard queries metrics ({checked})");
}

#[test]
fn metric_names_are_extracted_from_promql() {
    assert_eq!(
        metric_names("histogram_quantile(0.99, sum by (le) (rate(broker_hello_latency_seconds_bucket[5m])))"),
        ["broker_hello_latency_seconds_bucket"]
    );
    assert_eq!(metric_names("sum(broker_a) / sum(broker_b_total)"), ["broker_a", "broker_b_total"]);
}
