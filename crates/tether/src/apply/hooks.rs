//! Running hooks: each is created anew (what an earlier run left is deleted first), waited
//! for until it finishes (a Job complete or failed, a Pod succeeded or failed, anything else
//! Healthy or Degraded), and deleted afterwards as its policy says. Hooks with the same
//! order run together; a failed group stops the phase. Start at [`run_phase`].

use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams, PropagationPolicy};
use serde::Serialize;
use serde_json::Value;

use super::describe;
use crate::cluster::discovery::Resolver;
use crate::health::{self, HealthStatus};
use crate::plan::hooks::Phase;
use crate::plan::{FIELD_MANAGER, HOOK_LABEL, HOOK_OF_LABEL, Hook, api_for};
use crate::render::ObjectKey;

/// What one run of a hook came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HookResult {
    pub phase: Phase,
    /// The object created (its generated name, for a `generateName` hook).
    pub key: ObjectKey,
    pub succeeded: bool,
    pub message: String,
    /// Deleted after it finished, as its delete policy says.
    pub deleted: bool,
}

impl std::fmt::Display for HookResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} hook {} {}: {}",
            self.phase,
            self.key,
            if self.succeeded {
                "succeeded"
            } else {
                "failed"
            },
            self.message
        )
    }
}

/// Runs the hooks of `phase` (`hooks` is in order), one group of equal order at a time.
/// Returns each run's result, and the first failure, which stops the phase.
pub async fn run_phase(
    client: &kube::Client,
    resolver: &Resolver,
    set_id: &str,
    hooks: &[&Hook],
    phase: Phase,
    timeout: Duration,
) -> (Vec<HookResult>, Option<String>) {
    let mut results = Vec::new();
    let mut start = 0;
    while start < hooks.len() {
        let order = hooks[start].order;
        let end = hooks[start..]
            .iter()
            .position(|h| h.order != order)
            .map_or(hooks.len(), |n| start + n);
        let group = &hooks[start..end];
        let runs = futures::future::join_all(
            (0..group.len()).map(|i| run_one(client, resolver, set_id, group[i], phase, timeout)),
        )
        .await;
        let failure = runs.iter().find(|r| !r.succeeded).map(ToString::to_string);
        results.extend(runs);
        if failure.is_some() {
            return (results, failure);
        }
        start = end;
    }
    (results, None)
}

/// What running a phase needs: the cluster, and whose hooks they are.
pub struct Runner<'a> {
    pub client: &'a kube::Client,
    pub resolver: &'a Resolver,
    pub set_id: &'a str,
    /// How long one hook may run.
    pub timeout: Duration,
}

impl Runner<'_> {
    /// Runs `hooks` (of `phase`, in order) as [`run_phase`] does, adds each run to `runs`,
    /// and returns the failure that stopped the phase.
    pub async fn run(
        &self,
        hooks: &[&Hook],
        phase: Phase,
        runs: &mut Vec<HookResult>,
    ) -> Option<String> {
        if hooks.is_empty() {
            return None;
        }
        let (results, failure) = run_phase(
            self.client,
            self.resolver,
            self.set_id,
            hooks,
            phase,
            self.timeout,
        )
        .await;
        runs.extend(results);
        failure
    }
}

async fn run_one(
    client: &kube::Client,
    resolver: &Resolver,
    set_id: &str,
    hook: &Hook,
    phase: Phase,
    timeout: Duration,
) -> HookResult {
    let mut result = HookResult {
        phase,
        key: hook.key.clone(),
        succeeded: false,
        message: String::new(),
        deleted: false,
    };
    match run(client, resolver, set_id, hook, timeout, &mut result).await {
        Ok(message) => {
            result.succeeded = true;
            result.message = message;
        }
        Err(message) => result.message = message,
    }
    result
}

async fn run(
    client: &kube::Client,
    resolver: &Resolver,
    set_id: &str,
    hook: &Hook,
    timeout: Duration,
    result: &mut HookResult,
) -> Result<String, String> {
    let api_version = hook.manifest["apiVersion"].as_str().unwrap_or_default();
    let kind = match resolver.resolve(api_version, &hook.key.kind) {
        Some(kind) => kind,
        None => {
            resolver
                .refresh()
                .await
                .map_err(|e| format!("cannot refresh API discovery: {e}"))?;
            resolver
                .resolve(api_version, &hook.key.kind)
                .ok_or_else(|| {
                    format!(
                        "the cluster does not serve kind {} in {api_version}",
                        hook.key.kind
                    )
                })?
        }
    };
    let api = api_for(client, &kind, &hook.key.namespace);
    remove_earlier_runs(&api, set_id, hook, timeout).await?;
    let object: DynamicObject = serde_json::from_value(hook.manifest.clone())
        .map_err(|e| format!("not a valid object: {e}"))?;
    let params = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    let created = api
        .create(&params, &object)
        .await
        .map_err(|e| format!("cannot create it: {}", describe(&e)))?;
    let name = created.metadata.name.clone().unwrap_or_default();
    result.key.name = name.clone();
    let outcome = wait_finished(&api, &name, &hook.key.kind, timeout).await;
    let delete = match &outcome {
        Ok(_) => hook.delete_policy.succeeded,
        Err(_) => hook.delete_policy.failed,
    };
    if delete {
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => result.deleted = true,
            Err(kube::Error::Api(status)) if status.code == 404 => result.deleted = true,
            Err(e) => {
                tracing::warn!(hook = %result.key, err = %describe(&e), "cannot delete the finished hook")
            }
        }
    }
    outcome
}

/// Deletes what earlier runs of this hook left: the object of the same name (which only
/// a hook of this set may be), or, for a `generateName` hook with BeforeHookCreation,
/// every object an earlier run generated. Waits until they are gone.
async fn remove_earlier_runs(
    api: &Api<DynamicObject>,
    set_id: &str,
    hook: &Hook,
    timeout: Duration,
) -> Result<(), String> {
    let names: Vec<String> = if hook.generate_name {
        if !hook.delete_policy.before_creation {
            return Ok(());
        }
        let selector = format!(
            "{HOOK_OF_LABEL}={set_id},{HOOK_LABEL}={}",
            crate::plan::hook_label(&hook.key)
        );
        api.list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| format!("cannot list earlier runs: {}", describe(&e)))?
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect()
    } else {
        match api.get_metadata_opt(&hook.key.name).await {
            Ok(None) => Vec::new(),
            Ok(Some(existing)) => {
                let owner = existing
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(HOOK_OF_LABEL));
                if owner.map(String::as_str) != Some(set_id) {
                    return Err(
                        "an object of this name exists and is not a hook of this application; rename the hook or delete the object".into(),
                    );
                }
                vec![hook.key.name.clone()]
            }
            Err(e) => return Err(format!("cannot read it: {}", describe(&e))),
        }
    };
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    for name in names {
        match api.delete(&name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => continue,
            Err(e) => {
                return Err(format!(
                    "cannot delete the earlier run {name}: {}",
                    describe(&e)
                ));
            }
        }
        super::wait_gone(api, &name, timeout)
            .await
            .map_err(|e| format!("the earlier run {name} is {e}"))?;
    }
    Ok(())
}

/// Waits until the hook object finished: `Ok` with how, or `Err` with why it failed.
async fn wait_finished(
    api: &Api<DynamicObject>,
    name: &str,
    kind: &str,
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(100);
    loop {
        let live = api
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read it: {}", describe(&e)))?
            .map(|o| serde_json::to_value(o).expect("objects serialize"))
            .ok_or("it was deleted before it finished")?;
        if let Some(done) = finished(kind, &live) {
            return done;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "not finished after {} s: {}",
                timeout.as_secs(),
                health::assess(Some(&live)).message
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Whether a hook object finished, and how. A Pod is done when it succeeded or failed (a
/// running Pod is not done, however healthy); a Job when complete or failed; anything else
/// once Healthy or Degraded.
fn finished(kind: &str, live: &Value) -> Option<Result<String, String>> {
    if kind == "Pod" {
        return match live.pointer("/status/phase").and_then(Value::as_str) {
            Some("Succeeded") => Some(Ok("succeeded".into())),
            Some("Failed") => Some(Err(health::assess(Some(live)).message)),
            _ => None,
        };
    }
    let health = health::assess(Some(live));
    match health.status {
        HealthStatus::Healthy => Some(Ok(health.message)),
        HealthStatus::Degraded => Some(Err(health.message)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
