//! Health of every kind without a family or a rule of its own: kstatus conventions
//! (`Stalled`, `Ready`, observedGeneration; Crossplane's `Synced`) when the object has them,
//! else healthy by existing.

use serde_json::Value;

use super::{Health, HealthStatus, condition, condition_is, condition_message, stale};

/// Anything else: kstatus conventions when present (`Ready`, `Stalled`, observedGeneration),
/// else healthy by existing (ConfigMaps, Services, RBAC…).
pub(super) fn generic(obj: &Value) -> Health {
    if condition_is(obj, "Stalled", "True") {
        return Health::new(HealthStatus::Degraded, condition_message(obj, "Stalled"));
    }
    // Crossplane's claims, composites and managed resources: Synced False is a failed
    // reconcile, whatever Ready says.
    if condition_is(obj, "Synced", "False") {
        return Health::new(HealthStatus::Degraded, condition_message(obj, "Synced"));
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
