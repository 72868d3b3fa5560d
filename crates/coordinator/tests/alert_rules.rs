//! `deploy/prometheus/alerts.yml` against a running coordinator: the file
//! parses as Prometheus rule groups, it has the two alerts the operations
//! section promises, and every metric its expressions name is one that
//! `GET /api/metrics` of a real coordinator exports (a renamed metric
//! would otherwise leave an alert that never fires).

mod edges_support;

use std::collections::{BTreeMap, BTreeSet};

use edges_support::InProcess;
use serde::Deserialize;

/// The rules file, read at run time: `deploy/` stays out of the image's
/// build context (`.dockerignore`), so no crate may `include_str!` it.
fn rules() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/prometheus/alerts.yml");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Prometheus's rule file format (the parts we check; unknown keys refused).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<Group>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for", default)]
    for_: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// The `dtm_…` identifiers of a PromQL expression (metric names; our
/// label names never start with `dtm_`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word && expr[i..].starts_with("dtm_") {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(expr.len(), |n| i + n);
            names.insert(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Every sample name the exposition can contain: gauges by name, counters
/// with `_total`, histograms with `_bucket`, `_count`, `_sum` — from the
/// `# TYPE` lines, so that a family without samples yet counts too.
fn exported(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_count", "_sum"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

#[test]
fn the_rule_file_parses_and_has_both_alerts() {
    let file: RuleFile = serde_yaml_ng::from_str(&rules()).expect("Prometheus rule file");
    let rules: Vec<&Rule> = file.groups.iter().flat_map(|g| &g.rules).collect();
    assert!(file.groups.iter().all(|g| !g.name.is_empty()));
    let names: Vec<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    for wanted in ["DtmBranchRetriedPastLimit", "DtmTransactionNotFinal"] {
        assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
    }
    for rule in &rules {
        assert!(!metric_names(&rule.expr).is_empty(), "{} names no metric", rule.alert);
        assert!(rule.labels.contains_key("severity"), "{} has no severity", rule.alert);
        assert!(rule.annotations.contains_key("summary"), "{} has no summary", rule.alert);
        if let Some(duration) = &rule.for_ {
            assert!(duration.ends_with('m') || duration.ends_with('s'), "{}: for {duration}", rule.alert);
        }
    }
    let not_final = rules.iter().find(|r| r.alert == "DtmTransactionNotFinal").unwrap();
    assert!(not_final.expr.contains("> 600"), "not final after 10 minutes: {}", not_final.expr);
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metric_names(r#"sum by (op) (increase(dtm_branch_retries_total{outcome="error"}[5m])) > max(dtm_x)"#),
        ["dtm_branch_retries_total", "dtm_x"].into_iter().map(String::from).collect()
    );
}

#[tokio::test]
async fn every_metric_the_rules_name_is_exported_by_a_running_coordinator() {
    let coordinator = InProcess::sqlite(|config| {
        config.alert_web_hook = "http://127.0.0.1:9/alerts".into();
    })
    .await;
    let exposition = reqwest::get(format!("{}/api/metrics", coordinator.http))
        .await
        .expect("scrape")
        .error_for_status()
        .expect("200")
        .text()
        .await
        .expect("body");
    let exported = exported(&exposition);
    // The store's gauges carry values from the first scrape on.
    assert!(exposition.contains(r#"dtm_transactions_unfinished{status="submitted"} 0"#), "{exposition}");
    assert!(exposition.contains("dtm_transaction_oldest_unfinished_age_seconds 0"), "{exposition}");

    let file: RuleFile = serde_yaml_ng::from_str(&rules()).expect("Prometheus rule file");
    let mut named = BTreeSet::new();
    for rule in file.groups.iter().flat_map(|g| &g.rules) {
        named.extend(metric_names(&rule.expr));
        for text in rule.annotations.values() {
            named.extend(metric_names(text));
        }
    }
    let missing: Vec<&String> = named.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "the rules name metrics the coordinator does not export: {missing:?}\n{exposition}"
    );
    coordinator.stop().await.expect("clean stop");
}
