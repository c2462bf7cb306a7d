//! Unit tests of the pure parts of running hooks.

use super::*;
use serde_json::json;

#[test]
fn a_jobs_pods_are_told_from_another_jobs() {
    assert!(pod_of_job("db-x7k2p", "db"));
    assert!(pod_of_job("db-3-x7k2p", "db"));
    assert!(!pod_of_job("db-migrate-x7k2p", "db"));
    assert!(!pod_of_job("dbx-x7k2p", "db"));
}

#[test]
fn a_hook_is_done_when_its_job_or_pod_finished() {
    let job = |condition: &str| json!({"apiVersion": "batch/v1", "kind": "Job", "status": {"conditions": [{"type": condition, "status": "True", "message": "deadline"}]}});
    assert!(matches!(finished("Job", &job("Complete")), Some(Ok(_))));
    assert!(matches!(finished("Job", &job("Failed")), Some(Err(_))));
    assert_eq!(
        finished(
            "Job",
            &json!({"apiVersion": "batch/v1", "kind": "Job", "status": {}})
        ),
        None
    );
    let pod = |phase: &str| json!({"apiVersion": "v1", "kind": "Pod", "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True"}]}});
    assert_eq!(
        finished("Pod", &pod("Running")),
        None,
        "running is not done"
    );
    assert!(matches!(finished("Pod", &pod("Succeeded")), Some(Ok(_))));
    assert!(matches!(finished("Pod", &pod("Failed")), Some(Err(_))));
    assert!(matches!(
        finished(
            "ConfigMap",
            &json!({"apiVersion": "v1", "kind": "ConfigMap"})
        ),
        Some(Ok(_))
    ));
}
