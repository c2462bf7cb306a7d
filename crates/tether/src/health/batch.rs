//! Health of batch/v1 Jobs: judged by their Complete and Failed conditions.

use serde_json::Value;

use super::{Health, HealthStatus, condition_is, condition_message, int};

pub(super) fn job(obj: &Value) -> Health {
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
