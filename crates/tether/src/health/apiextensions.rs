//! Health of CustomResourceDefinitions: Established, or Degraded when their names are refused.

use serde_json::Value;

use super::{Health, HealthStatus, condition_is, condition_message};

pub(super) fn crd(obj: &Value) -> Health {
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
