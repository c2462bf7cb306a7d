//! What an apply did, object by object, and the one answer to "did the sync succeed?"
//! ([`ApplyReport::into_result`]) that every caller uses.

use serde::Serialize;

use super::hooks;
use crate::health::Health;
use crate::object::ObjectKey;
use crate::plan::Action;

#[derive(Debug, Clone, Serialize)]
pub struct ObjectResult {
    pub key: ObjectKey,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
    /// The object's resourceVersion once tether's write (or plan, when unchanged) saw it.
    #[serde(skip)]
    pub resource_version: Option<String>,
    /// The object's health in the server's answer to tether's write, by the apply's health
    /// rules, when [`super::ApplyOptions::health_of_written`] asks (none for a prune, a
    /// failed write, or an unchanged object): the agent's health after a sync starts from
    /// it instead of reading each object again.
    #[serde(skip)]
    pub written_health: Option<crate::health::HealthStatus>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ApplyReport {
    pub results: Vec<ObjectResult>,
    /// Requests that changed the cluster (applies, deletes, parent updates).
    pub writes: usize,
    pub pruned: usize,
    /// Set when `--wait` ran out of time or something became Degraded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<String>,
    /// Each hook run, in the order they ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<hooks::HookResult>,
    /// Why the sync stopped, when a hook failed or a wave did not become Healthy (failed
    /// objects are in `results`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl ApplyReport {
    pub fn failed(&self) -> Vec<&ObjectResult> {
        self.results.iter().filter(|r| r.error.is_some()).collect()
    }

    /// The one answer to "did the sync succeed?": the report, or why not (a hook or a wave
    /// stopped it, objects failed, or what was applied did not become healthy).
    pub fn into_result(self) -> Result<Self, SyncFailure> {
        match self.failure() {
            Some(failure) => Err(failure),
            None => Ok(self),
        }
    }

    /// Why the sync did not succeed, if it did not.
    pub fn failure(&self) -> Option<SyncFailure> {
        if let Some(failure) = &self.failure {
            return Some(SyncFailure::Stopped(failure.clone()));
        }
        let failed: Vec<(Action, String)> = self
            .failed()
            .iter()
            .map(|r| {
                let why = format!("{}: {}", r.key, r.error.as_deref().unwrap_or_default());
                (r.action, why)
            })
            .collect();
        if !failed.is_empty() {
            return Some(SyncFailure::Objects { failed });
        }
        self.unhealthy.clone().map(SyncFailure::Unhealthy)
    }

    /// Why the sync failed, if it did: a hook or a wave, or the objects that failed (not
    /// health, which the agent reports on its own).
    pub fn failure_message(&self) -> Option<String> {
        match self.failure()? {
            SyncFailure::Stopped(why) => Some(why),
            objects @ SyncFailure::Objects { .. } => Some(objects.to_string()),
            SyncFailure::Unhealthy(_) => None,
        }
    }
}

/// Why a sync did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncFailure {
    /// A hook failed or a wave did not become healthy: the sync stopped there.
    #[error("the sync stopped: {0}")]
    Stopped(String),
    /// Objects failed to apply (what was tried, and `object: why`, each); the others were
    /// applied, later stages and pruning skipped.
    #[error("{} object(s) failed to apply, e.g. {}", failed.len(), failed.first().map_or("", |(_, why)| why.as_str()))]
    Objects { failed: Vec<(Action, String)> },
    /// Everything was applied, but did not become healthy within the wait.
    #[error("applied, but not healthy: {0}")]
    Unhealthy(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, error: Option<&str>) -> ObjectResult {
        ObjectResult {
            key: ObjectKey {
                group: String::new(),
                kind: "ConfigMap".into(),
                namespace: "shop".into(),
                name: name.into(),
            },
            action: Action::Update,
            error: error.map(str::to_string),
            health: None,
            resource_version: None,
            written_health: None,
        }
    }

    #[test]
    fn a_report_says_first_why_the_sync_stopped_then_which_objects_failed_then_health() {
        let ok = ApplyReport {
            results: vec![result("a", None)],
            ..Default::default()
        };
        assert!(ok.clone().into_result().is_ok());
        assert_eq!(ok.failure_message(), None);

        let failed = ApplyReport {
            results: vec![
                result("a", None),
                result("b", Some("denied")),
                result("c", Some("gone")),
            ],
            unhealthy: Some("Deployment/web: 0/1".into()),
            ..Default::default()
        };
        let failure = failed.clone().into_result().expect_err("objects failed");
        assert_eq!(
            failure.to_string(),
            "2 object(s) failed to apply, e.g. ConfigMap/b -n shop: denied"
        );
        assert_eq!(failed.failure_message(), Some(failure.to_string()));

        let stopped = ApplyReport {
            failure: Some("hook Job/migrate failed".into()),
            ..failed.clone()
        };
        assert_eq!(
            stopped.clone().into_result().expect_err("stopped"),
            SyncFailure::Stopped("hook Job/migrate failed".into())
        );
        // The agent's message is the reason itself.
        assert_eq!(
            stopped.failure_message().as_deref(),
            Some("hook Job/migrate failed")
        );

        let unhealthy = ApplyReport {
            results: vec![result("a", None)],
            unhealthy: Some("Deployment/web: 0/1".into()),
            ..Default::default()
        };
        assert_eq!(
            unhealthy
                .clone()
                .into_result()
                .expect_err("unhealthy")
                .to_string(),
            "applied, but not healthy: Deployment/web: 0/1"
        );
        // Health is the agent's to report on its own, not a failed sync.
        assert_eq!(unhealthy.failure_message(), None);
    }
}
