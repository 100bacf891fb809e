//! deploy/prometheus/ and deploy/grafana/: every metric they name is one
//! synthd serves, the rules pass `promtool check rules`, and each alert
//! fires on the series of its unit test (`promtool test rules`).

use std::path::Path;
use std::process::Command;

const ALERTS: &str = "deploy/prometheus/synthd-alerts.yml";
const ALERT_TESTS: &str = "deploy/prometheus/synthd-alerts.test.yml";
const DASHBOARD: &str = "deploy/grafana/synthd-dashboard.json";

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)).unwrap()
}

/// The `synthd_…` metric names in a text, a histogram's series reduced to its family.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("synthd_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| f.ends_with("_seconds")))
            .unwrap_or(name);
        names.push(family.to_string());
        rest = &tail[end..];
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_metric_the_rules_and_dashboard_name_is_served() {
    let alerts = metric_names(&read(ALERTS));
    let dashboard = metric_names(&read(DASHBOARD));
    for name in alerts.iter().chain(&dashboard) {
        assert!(
            synthd::metrics::FAMILIES.contains(&name.as_str()),
            "{name} is not a metric synthd serves"
        );
    }
    // The rules cover what the issue asks to alert on.
    for needed in [
        "synthd_quarantines_total",
        "synthd_intake_paused",
        "synthd_oldest_waiting_study_seconds",
        "synthd_unclean_start",
    ] {
        assert!(alerts.iter().any(|n| n == needed), "no alert uses {needed}");
    }
    assert!(dashboard.len() >= 15, "the dashboard uses only {dashboard:?}");
}

#[test]
fn the_dashboard_is_grafana_json_with_a_query_per_panel() {
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(!panels.is_empty());
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(
            targets
                .iter()
                .all(|t| t["expr"].as_str().is_some_and(|e| e.contains("synthd_"))),
            "panel {} has a target without a synthd query",
            panel["title"]
        );
    }
}

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus"))
        .output()
        .expect("promtool (Debian's prometheus package) is installed by scripts/setup.sh");
    assert!(
        output.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let file = |path: &str| Path::new(path).file_name().unwrap().to_str().unwrap().to_string();
    promtool(&["check", "rules", &file(ALERTS)]);
    promtool(&["test", "rules", &file(ALERT_TESTS)]);
}
