//! Health: is a live object doing what it was asked to do? Pure: a value in, a verdict out.
//!
//! Workloads are judged by their rollout (observedGeneration, updated and available
//! replicas), Jobs by completion, Pods by readiness, PVCs by binding, CRDs by Established,
//! Namespaces by phase, anything else by a `Ready` condition when it has one. Start at
//! [`assess`].

use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum HealthStatus {
    Healthy,
    Progressing,
    Degraded,
    Missing,
    Unknown,
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HealthStatus::Healthy => "Healthy",
            HealthStatus::Progressing => "Progressing",
            HealthStatus::Degraded => "Degraded",
            HealthStatus::Missing => "Missing",
            HealthStatus::Unknown => "Unknown",
        })
    }
}

impl HealthStatus {
    /// The least healthy of `statuses` (Healthy when there are none): how healthy an
    /// application is. Degraded beats Missing beats Progressing beats Unknown.
    pub fn worst(statuses: impl IntoIterator<Item = HealthStatus>) -> HealthStatus {
        let severity = |s: &HealthStatus| match s {
            HealthStatus::Healthy => 0,
            HealthStatus::Unknown => 1,
            HealthStatus::Progressing => 2,
            HealthStatus::Missing => 3,
            HealthStatus::Degraded => 4,
        };
        statuses
            .into_iter()
            .max_by_key(severity)
            .unwrap_or(HealthStatus::Healthy)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    pub status: HealthStatus,
    pub message: String,
}

impl Health {
    pub fn new(status: HealthStatus, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn missing() -> Self {
        Self::new(HealthStatus::Missing, "not found in the cluster")
    }
}

/// The health of a live object (`None`: it does not exist).
pub fn assess(live: Option<&Value>) -> Health {
    let Some(obj) = live else {
        return Health::missing();
    };
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return Health::new(HealthStatus::Progressing, "being deleted");
    }
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
    match (group, obj["kind"].as_str().unwrap_or("")) {
        ("apps", "Deployment") => deployment(obj),
        ("apps", "StatefulSet") => stateful_set(obj),
        ("apps", "DaemonSet") => daemon_set(obj),
        ("batch", "Job") => job(obj),
        ("", "Pod") => pod(obj),
        ("", "PersistentVolumeClaim") => pvc(obj),
        ("", "Namespace") => namespace(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(obj),
        _ => generic(obj),
    }
}

fn int(obj: &Value, pointer: &str) -> i64 {
    obj.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn condition_is(obj: &Value, kind: &str, status: &str) -> bool {
    condition(obj, kind).is_some_and(|c| c["status"] == status)
}

fn condition_message(obj: &Value, kind: &str) -> String {
    condition(obj, kind)
        .and_then(|c| c["message"].as_str().or(c["reason"].as_str()))
        .unwrap_or("")
        .to_string()
}

/// The controller has not seen the latest spec yet.
fn stale(obj: &Value) -> Option<Health> {
    let generation = int(obj, "/metadata/generation");
    let observed = int(obj, "/status/observedGeneration");
    (generation > 0 && observed < generation).then(|| {
        Health::new(
            HealthStatus::Progressing,
            format!(
                "waiting for the controller to observe generation {generation} (seen {observed})"
            ),
        )
    })
}

fn deployment(obj: &Value) -> Health {
    if let Some(h) = stale(obj) {
        return h;
    }
    if condition_is(obj, "Progressing", "False")
        || condition(obj, "Progressing").is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded")
    {
        return Health::new(
            HealthStatus::Degraded,
            condition_message(obj, "Progressing"),
        );
    }
    let desired = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let updated = int(obj, "/status/updatedReplicas");
    let available = int(obj, "/status/availableReplicas");
    let total = int(obj, "/status/replicas");
    if updated < desired {
        return Health::new(
            HealthStatus::Progressing,
            format!("{updated} of {desired} replicas updated"),
        );
    }
    if total > updated {
        return Health::new(
            HealthStatus::Progressing,
            format!("{} old replicas pending termination", total - updated),
        );
    }
    if available < updated {
        return Health::new(
            HealthStatus::Progressing,
            format!("{available} of {updated} updated replicas available"),
        );
    }
    Health::new(
        HealthStatus::Healthy,
        format!("{available}/{desired} replicas available"),
    )
}

fn stateful_set(obj: &Value) -> Health {
    if let Some(h) = stale(obj) {
        return h;
    }
    let desired = obj
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let ready = int(obj, "/status/readyReplicas");
    let updated = int(obj, "/status/updatedReplicas");
    let rolling = obj
        .pointer("/spec/updateStrategy/type")
        .and_then(Value::as_str)
        != Some("OnDelete");
    if rolling && updated < desired {
        return Health::new(
            HealthStatus::Progressing,
            format!("{updated} of {desired} replicas updated"),
        );
    }
    if ready < desired {
        return Health::new(
            HealthStatus::Progressing,
            format!("{ready} of {desired} replicas ready"),
        );
    }
    Health::new(
        HealthStatus::Healthy,
        format!("{ready}/{desired} replicas ready"),
    )
}

fn daemon_set(obj: &Value) -> Health {
    if let Some(h) = stale(obj) {
        return h;
    }
    let desired = int(obj, "/status/desiredNumberScheduled");
    let updated = int(obj, "/status/updatedNumberScheduled");
    let available = int(obj, "/status/numberAvailable");
    if updated < desired {
        return Health::new(
            HealthStatus::Progressing,
            format!("{updated} of {desired} pods updated"),
        );
    }
    if available < desired {
        return Health::new(
            HealthStatus::Progressing,
            format!("{available} of {desired} pods available"),
        );
    }
    Health::new(
        HealthStatus::Healthy,
        format!("{available}/{desired} pods available"),
    )
}

fn job(obj: &Value) -> Health {
    if condition_is(obj, "Failed", "True") {
        return Health::new(HealthStatus::Degraded, condition_message(obj, "Failed"));
    }
    if condition_is(obj, "Complete", "True") {
        return Health::new(HealthStatus::Healthy, "complete");
    }
    Health::new(
        HealthStatus::Progressing,
        format!("{} active", int(obj, "/status/active")),
    )
}

fn pod(obj: &Value) -> Health {
    match obj.pointer("/status/phase").and_then(Value::as_str) {
        Some("Succeeded") => Health::new(HealthStatus::Healthy, "succeeded"),
        Some("Failed") => Health::new(
            HealthStatus::Degraded,
            obj.pointer("/status/message")
                .and_then(Value::as_str)
                .unwrap_or("failed"),
        ),
        Some("Running") if condition_is(obj, "Ready", "True") => {
            Health::new(HealthStatus::Healthy, "running and ready")
        }
        Some(phase) => Health::new(HealthStatus::Progressing, format!("{phase}, not ready")),
        None => Health::new(HealthStatus::Progressing, "not scheduled yet"),
    }
}

fn pvc(obj: &Value) -> Health {
    match obj.pointer("/status/phase").and_then(Value::as_str) {
        Some("Bound") => Health::new(HealthStatus::Healthy, "bound"),
        Some("Lost") => Health::new(HealthStatus::Degraded, "the bound volume is lost"),
        other => Health::new(
            HealthStatus::Progressing,
            other.unwrap_or("Pending").to_string(),
        ),
    }
}

fn namespace(obj: &Value) -> Health {
    match obj.pointer("/status/phase").and_then(Value::as_str) {
        Some("Terminating") => Health::new(HealthStatus::Progressing, "terminating"),
        _ => Health::new(HealthStatus::Healthy, "active"),
    }
}

fn crd(obj: &Value) -> Health {
    if condition_is(obj, "NamesAccepted", "False") {
        return Health::new(
            HealthStatus::Degraded,
            condition_message(obj, "NamesAccepted"),
        );
    }
    if condition_is(obj, "Established", "True") {
        return Health::new(HealthStatus::Healthy, "established");
    }
    Health::new(HealthStatus::Progressing, "not established yet")
}

/// Anything else: kstatus conventions when present (`Ready`, `Stalled`, observedGeneration),
/// else healthy by existing (ConfigMaps, Services, RBAC…).
fn generic(obj: &Value) -> Health {
    if condition_is(obj, "Stalled", "True") {
        return Health::new(HealthStatus::Degraded, condition_message(obj, "Stalled"));
    }
    if obj.pointer("/status/observedGeneration").is_some()
        && let Some(h) = stale(obj)
    {
        return h;
    }
    match condition(obj, "Ready").and_then(|c| c["status"].as_str()) {
        Some("True") => Health::new(HealthStatus::Healthy, "ready"),
        Some("False") => Health::new(HealthStatus::Degraded, condition_message(obj, "Ready")),
        Some(_) => Health::new(HealthStatus::Progressing, condition_message(obj, "Ready")),
        None => Health::new(HealthStatus::Healthy, "exists"),
    }
}

#[cfg(test)]
mod tests {
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
}
