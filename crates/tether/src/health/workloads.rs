//! Health of the apps/v1 workloads (Deployment, StatefulSet, DaemonSet): judged by their rollout
//! (observedGeneration, updated and available or ready replicas).

use serde_json::Value;

use super::{Health, HealthStatus, condition, condition_is, condition_message, int, stale};

pub(super) fn deployment(obj: &Value) -> Health {
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

pub(super) fn stateful_set(obj: &Value) -> Health {
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
    // A partitioned rolling update stops at ordinal `partition`: the replicas below it keep
    // the old revision on purpose (a canary), as `kubectl rollout status` counts it.
    let partition = obj
        .pointer("/spec/updateStrategy/rollingUpdate/partition")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        .clamp(0, desired);
    let to_update = desired - partition;
    if rolling && updated < to_update {
        let message = if partition > 0 {
            format!("{updated} of {to_update} replicas updated (partition {partition})")
        } else {
            format!("{updated} of {desired} replicas updated")
        };
        return Health::new(HealthStatus::Progressing, message);
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

pub(super) fn daemon_set(obj: &Value) -> Health {
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
