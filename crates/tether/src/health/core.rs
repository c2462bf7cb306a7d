//! Health of core/v1 kinds with a lifecycle: Pods by phase and readiness, PersistentVolumeClaims by
//! binding, Namespaces by phase. (Other core kinds, Services and ConfigMaps, are [`super::generic`].)

use serde_json::Value;

use super::{Health, HealthStatus, condition_is};

pub(super) fn pod(obj: &Value) -> Health {
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

pub(super) fn pvc(obj: &Value) -> Health {
    match obj.pointer("/status/phase").and_then(Value::as_str) {
        Some("Bound") => Health::new(HealthStatus::Healthy, "bound"),
        Some("Lost") => Health::new(HealthStatus::Degraded, "the bound volume is lost"),
        other => Health::new(
            HealthStatus::Progressing,
            other.unwrap_or("Pending").to_string(),
        ),
    }
}

pub(super) fn namespace(obj: &Value) -> Health {
    match obj.pointer("/status/phase").and_then(Value::as_str) {
        Some("Terminating") => Health::new(HealthStatus::Progressing, "terminating"),
        _ => Health::new(HealthStatus::Healthy, "active"),
    }
}
