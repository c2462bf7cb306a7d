//! Health: is a live object doing what it was asked to do? Pure: a value in, a verdict out.
//!
//! Workloads are judged by their rollout (observedGeneration, updated and available
//! replicas), Jobs by completion, Pods by readiness, PVCs by binding, CRDs by Established,
//! Namespaces by phase, custom resources by CEL rules (an Application's, the process's, and a
//! library shipped with tether: [`rules`]), anything else by a `Ready` condition when it has
//! one. Start at [`assess`], the dispatch; each family of kinds has a file of its own (`workloads`, `batch`,
//! `core`, `apiextensions`, `generic`), and `testdata/` holds one fixture per case.

use serde::Serialize;
use serde_json::Value;

mod apiextensions;
mod batch;
mod core;
mod generic;
pub mod rules;
mod workloads;

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

/// The health of a live object (`None`: it does not exist), by this process's rules
/// (`--health-rules`), the built-in kinds and the rule library.
pub fn assess(live: Option<&Value>) -> Health {
    assess_with(live, &rules::Rules::default())
}

/// The health of a live object with an Application's own rules (`spec.healthCheckExprs`)
/// first: they, then this process's rules, decide before the built-in kinds and the rule
/// library; a kind none of them knows is read by kstatus conventions.
pub fn assess_with(live: Option<&Value>, first: &rules::Rules) -> Health {
    let Some(obj) = live else {
        return Health::missing();
    };
    if obj.pointer("/metadata/deletionTimestamp").is_some() {
        return Health::new(HealthStatus::Progressing, "being deleted");
    }
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let group = api_version.split_once('/').map(|(g, _)| g).unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("");
    if let Some(rule) = rules::user_rule(first, group, kind) {
        return rules::evaluate(rule, obj);
    }
    match (group, kind) {
        ("apps", "Deployment") => workloads::deployment(obj),
        ("apps", "StatefulSet") => workloads::stateful_set(obj),
        ("apps", "DaemonSet") => workloads::daemon_set(obj),
        ("batch", "Job") => batch::job(obj),
        ("", "Pod") => core::pod(obj),
        ("", "PersistentVolumeClaim") => core::pvc(obj),
        ("", "Namespace") => core::namespace(obj),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => apiextensions::crd(obj),
        _ => match rules::library_rule(group, kind) {
            Some(rule) => rules::evaluate(rule, obj),
            None => generic::generic(obj),
        },
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

#[cfg(test)]
mod tests;
