//! Unit tests of [`assess`]: a few built in code, and every fixture of `testdata/` (one YAML file
//! per case: `expect: {status, message}` and the `live` object, status included).

use super::*;
use serde_json::json;

fn status(obj: Value) -> HealthStatus {
    assess(Some(&obj)).status
}

fn deploy(
    generation: i64,
    observed: i64,
    replicas: i64,
    updated: i64,
    available: i64,
    total: i64,
) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "generation": generation},
        "spec": {"replicas": replicas},
        "status": {"observedGeneration": observed, "updatedReplicas": updated,
                   "availableReplicas": available, "replicas": total}
    })
}

#[test]
fn the_worst_status_wins() {
    use HealthStatus::*;
    assert_eq!(
        HealthStatus::worst([Healthy, Progressing, Unknown]),
        Progressing
    );
    assert_eq!(HealthStatus::worst([Missing, Degraded, Healthy]), Degraded);
    assert_eq!(HealthStatus::worst([]), Healthy);
}

#[test]
fn deployments_are_healthy_only_when_rolled_out() {
    assert_eq!(status(deploy(2, 2, 2, 2, 2, 2)), HealthStatus::Healthy);
    assert_eq!(
        status(deploy(3, 2, 2, 2, 2, 2)),
        HealthStatus::Progressing,
        "stale generation"
    );
    assert_eq!(
        status(deploy(2, 2, 3, 2, 2, 2)),
        HealthStatus::Progressing,
        "scaling up"
    );
    assert_eq!(
        status(deploy(2, 2, 2, 2, 1, 2)),
        HealthStatus::Progressing,
        "not available"
    );
    assert_eq!(
        status(deploy(2, 2, 2, 2, 2, 3)),
        HealthStatus::Progressing,
        "old pod left"
    );
    let mut stuck = deploy(2, 2, 2, 1, 1, 2);
    stuck["status"]["conditions"] = json!([{"type": "Progressing", "status": "False",
            "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet web-1 has timed out"}]);
    let health = assess(Some(&stuck));
    assert_eq!(health.status, HealthStatus::Degraded);
    assert!(health.message.contains("timed out"));
}

#[test]
fn jobs_pods_pvcs_crds_and_namespaces() {
    let job = |t: &str| {
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {},
            "status": {"conditions": [{"type": t, "status": "True", "message": "BackoffLimitExceeded"}]}})
    };
    assert_eq!(status(job("Complete")), HealthStatus::Healthy);
    assert_eq!(status(job("Failed")), HealthStatus::Degraded);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
    assert_eq!(status(pod), HealthStatus::Healthy);
    let pvc = json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {}, "status": {"phase": "Pending"}});
    assert_eq!(status(pvc), HealthStatus::Progressing);
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {},
            "status": {"conditions": [{"type": "Established", "status": "True"}]}});
    assert_eq!(status(crd), HealthStatus::Healthy);
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {}, "status": {"phase": "Terminating"}});
    assert_eq!(status(ns), HealthStatus::Progressing);
    assert_eq!(assess(None).status, HealthStatus::Missing);
}

#[test]
fn generic_objects_follow_ready_and_observed_generation() {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
    assert_eq!(status(cm), HealthStatus::Healthy);
    let cr = |ready: &str, generation: i64, seen: i64| {
        json!({"apiVersion": "example.dev/v1", "kind": "Db",
            "metadata": {"generation": generation},
            "status": {"observedGeneration": seen, "conditions": [{"type": "Ready", "status": ready, "message": "disk full"}]}})
    };
    assert_eq!(status(cr("True", 1, 1)), HealthStatus::Healthy);
    assert_eq!(status(cr("True", 2, 1)), HealthStatus::Progressing);
    assert_eq!(status(cr("False", 1, 1)), HealthStatus::Degraded);
    assert_eq!(status(cr("Unknown", 1, 1)), HealthStatus::Progressing);
}

/// One fixture of `testdata/`: a live object (`null`: not in the cluster) and the verdict
/// `assess` gives it today, the status and the exact message.
#[derive(serde::Deserialize)]
struct Fixture {
    expect: Expected,
    live: Option<Value>,
}

#[derive(serde::Deserialize)]
struct Expected {
    status: String,
    message: String,
}

#[test]
fn every_fixture_in_testdata_gets_its_expected_health() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/health/testdata");
    let mut failures = Vec::new();
    let mut judged: Vec<(String, HealthStatus)> = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the testdata folder is readable") {
        let path = entry.expect("a folder entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("a fixture is readable");
        let fixture: Fixture = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("{name} is not a fixture: {e}"));
        let health = assess(fixture.live.as_ref());
        if health.status.to_string() != fixture.expect.status
            || health.message != fixture.expect.message
        {
            failures.push(format!(
                "{name}: expected {} {:?}, got {} {:?}",
                fixture.expect.status, fixture.expect.message, health.status, health.message
            ));
        }
        let kind = fixture
            .live
            .as_ref()
            .map_or("", |v| v["kind"].as_str().unwrap_or(""));
        judged.push((kind.to_string(), health.status));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every kind with a family of its own has a healthy fixture and one that is not.
    for kind in [
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "Job",
        "Pod",
        "PersistentVolumeClaim",
        "Namespace",
        "CustomResourceDefinition",
        "Database",
    ] {
        let statuses: Vec<_> = judged
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, s)| *s)
            .collect();
        assert!(
            statuses.contains(&HealthStatus::Healthy)
                && statuses.iter().any(|s| *s != HealthStatus::Healthy),
            "{kind} needs a healthy fixture and one that is not, has {statuses:?}"
        );
    }
    assert!(judged.iter().any(|(_, s)| *s == HealthStatus::Missing));
    // So has every kind of the rule library.
    for kind in rules::library().kinds() {
        let statuses: Vec<_> = judged
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, s)| *s)
            .collect();
        assert!(
            statuses.contains(&HealthStatus::Healthy)
                && statuses.iter().any(|s| *s != HealthStatus::Healthy),
            "library kind {kind} needs a healthy fixture and one that is not, has {statuses:?}"
        );
    }
}

#[test]
fn an_applications_rules_come_before_the_library_and_bad_ones_are_refused() {
    use rules::{HealthCheckExpr, Rules};
    let certificate = json!({
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": {"name": "web", "generation": 1},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "renewals": 3}
    });
    assert_eq!(assess(Some(&certificate)).status, HealthStatus::Healthy);
    let own = Rules::compile(
        &[HealthCheckExpr {
            api_version: "cert-manager.io/v1".into(),
            kind: "Certificate".into(),
            current: "status.renewals < 3".into(),
            failed: Some("status.renewals >= 3".into()),
            in_progress: None,
        }],
        "spec.healthCheckExprs",
    )
    .unwrap();
    let health = assess_with(Some(&certificate), &own);
    assert_eq!(health.status, HealthStatus::Degraded);
    assert_eq!(
        health.message,
        "spec.healthCheckExprs rule for Certificate: failed"
    );
    // A rule for a kind nothing else knows; a field that is not there yet is progress.
    let widget = |status: Value| json!({"apiVersion": "example.dev/v2", "kind": "Widget", "metadata": {"name": "w"}, "status": status});
    let rules = Rules::compile(
        &[HealthCheckExpr {
            api_version: "example.dev/v1".into(),
            kind: "Widget".into(),
            current: "status.state == 'on'".into(),
            ..Default::default()
        }],
        "--health-rules rules.yaml",
    )
    .unwrap();
    assert_eq!(
        assess_with(Some(&widget(json!({"state": "on"}))), &rules).status,
        HealthStatus::Healthy
    );
    let pending = assess_with(Some(&widget(json!({}))), &rules);
    assert_eq!(pending.status, HealthStatus::Progressing);
    assert!(
        pending.message.contains("current cannot be evaluated yet"),
        "{}",
        pending.message
    );
    // Bad rules name where they are.
    let bad = Rules::compile(
        &[HealthCheckExpr {
            api_version: "example.dev/v1".into(),
            kind: "Widget".into(),
            current: "status.state ==".into(),
            ..Default::default()
        }],
        "spec.healthCheckExprs",
    )
    .map(|_| ())
    .unwrap_err();
    assert!(
        bad.starts_with(
            "spec.healthCheckExprs[0] (example.dev/v1 Widget): current: not a CEL expression"
        ),
        "{bad}"
    );
    let missing = Rules::compile(&[HealthCheckExpr::default()], "x")
        .map(|_| ())
        .unwrap_err();
    assert!(
        missing.contains("apiVersion, kind and current are required"),
        "{missing}"
    );
}
