//! Running hooks as Helm runs them: hooks of one order (wave or Helm weight) run in Helm's
//! kind order, those of one order and kind at the same time. Each is created anew (what an
//! earlier run left is deleted first) and watched until it finishes (a Job complete or
//! failed, a Pod succeeded or failed, anything else Healthy or Degraded), so a Job that
//! Kubernetes deletes the moment it completes is still seen completing. A failed hook is
//! deleted at once when its policy says so; hooks whose policy deletes them on success are
//! deleted only once every hook of the phase succeeded (or, as Helm does, when one fails).
//! Start at [`Runner::run`].

use std::ops::ControlFlow;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, PostParams, PropagationPolicy, WatchEvent,
    WatchParams,
};
use serde::Serialize;
use serde_json::Value;

use crate::cluster::api_for;
use crate::cluster::describe;
use crate::cluster::discovery::Resolver;
use crate::health::{self, HealthStatus};
use crate::object::ObjectKey;
use crate::plan::hooks::Phase;
use crate::plan::{FIELD_MANAGER, HOOK_LABEL, HOOK_OF_LABEL, Hook};
use crate::progress::ProgressHandle;

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

/// What running a phase needs: the cluster, and whose hooks they are.
pub struct Runner<'a> {
    pub client: &'a kube::Client,
    pub resolver: &'a Resolver,
    pub set_id: &'a str,
    /// How long one hook may run.
    pub timeout: Duration,
    pub progress: &'a ProgressHandle,
}

/// A hook that succeeded and is to be deleted once its phase succeeded.
struct Finished {
    /// Its place in the phase's results.
    result: usize,
    api: Api<DynamicObject>,
    name: String,
}

impl Runner<'_> {
    /// Runs `hooks` (of `phase`, in run order), adds each run to `runs`, and returns the
    /// failure that stopped the phase. Sync hooks run within the "applying" progress; the
    /// other phases report their own.
    pub async fn run(
        &self,
        hooks: &[&Hook],
        phase: Phase,
        runs: &mut Vec<HookResult>,
    ) -> Option<String> {
        if hooks.is_empty() {
            return None;
        }
        if phase != Phase::Sync {
            self.progress.begin(&format!("{phase} hooks"), hooks.len());
        }
        let mut results = Vec::new();
        let mut finished = Vec::new();
        let mut failure = None;
        for group in hooks.chunk_by(|a, b| {
            a.run_order().0 == b.run_order().0 && a.run_order().2 == b.run_order().2
        }) {
            // Indexes, not `iter().map(|hook| …)`: see `execute::apply_batch`.
            let runs =
                futures::future::join_all((0..group.len()).map(|i| self.run_one(group[i], phase)))
                    .await;
            for (result, delete_later) in runs {
                if phase != Phase::Sync {
                    self.progress.tick();
                }
                if let Some((api, name)) = delete_later {
                    finished.push(Finished {
                        result: results.len(),
                        api,
                        name,
                    });
                }
                if failure.is_none() && !result.succeeded {
                    failure = Some(result.to_string());
                }
                results.push(result);
            }
            if failure.is_some() {
                break;
            }
        }
        // At the end of the phase (or when one failed, as Helm 3.19 does), in reverse order.
        for done in finished.iter().rev() {
            results[done.result].deleted =
                delete(&done.api, &done.name, &results[done.result].key).await;
        }
        if phase != Phase::Sync {
            self.progress.finish();
        }
        runs.extend(results);
        failure
    }

    /// Runs one hook; returns what it came to, and where it is when it is to be deleted
    /// at the end of the phase.
    async fn run_one(
        &self,
        hook: &Hook,
        phase: Phase,
    ) -> (HookResult, Option<(Api<DynamicObject>, String)>) {
        let mut result = HookResult {
            phase,
            key: hook.key.clone(),
            succeeded: false,
            message: String::new(),
            deleted: false,
        };
        let (outcome, created) = self.create_and_watch(hook, &mut result).await;
        let mut later = None;
        match outcome {
            Ok(message) => {
                result.succeeded = true;
                result.message = message;
                if hook.delete_policy.succeeded
                    && let Some(created) = created
                {
                    later = Some(created);
                }
            }
            Err(message) => {
                result.message = message;
                if hook.delete_policy.failed
                    && let Some((api, name)) = created
                {
                    result.deleted = delete(&api, &name, &result.key).await;
                }
            }
        }
        (result, later)
    }

    /// Creates the hook and watches it until it finished; returns how, and where the
    /// object is (once created).
    async fn create_and_watch(
        &self,
        hook: &Hook,
        result: &mut HookResult,
    ) -> (Result<String, String>, Option<(Api<DynamicObject>, String)>) {
        let api_version = hook.manifest["apiVersion"].as_str().unwrap_or_default();
        let kind = match self.resolver.resolve(api_version, &hook.key.kind) {
            Some(kind) => kind,
            None => {
                if let Err(e) = self.resolver.refresh().await {
                    return (Err(format!("cannot refresh API discovery: {e}")), None);
                }
                match self.resolver.resolve(api_version, &hook.key.kind) {
                    Some(kind) => kind,
                    None => {
                        return (
                            Err(format!(
                                "the cluster does not serve kind {} in {api_version}",
                                hook.key.kind
                            )),
                            None,
                        );
                    }
                }
            }
        };
        let api = api_for(self.client, &kind, &hook.key.namespace);
        if let Err(why) = remove_earlier_runs(&api, self.set_id, hook, self.timeout).await {
            return (Err(why), None);
        }
        let object: DynamicObject = match serde_json::from_value(hook.manifest.clone()) {
            Ok(object) => object,
            Err(e) => return (Err(format!("not a valid object: {e}")), None),
        };
        let params = PostParams {
            dry_run: false,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        let created = match api.create(&params, &object).await {
            Ok(created) => created,
            Err(e) => return (Err(format!("cannot create it: {}", describe(&e))), None),
        };
        let name = created.metadata.name.clone().unwrap_or_default();
        result.key.name = name.clone();
        let about = Created {
            name: name.clone(),
            uid: created.metadata.uid.clone().unwrap_or_default(),
            at: created.metadata.creation_timestamp.as_ref().map(|t| t.0),
        };
        let shown = result.key.to_string();
        let mut outcome =
            watch_until_finished(&api, created, &hook.key.kind, self.timeout, &|message| {
                self.progress.note(&format!("{shown}: {message}"))
            })
            .await;
        if let Err(why) = &mut outcome {
            let warnings =
                warning_events(self.client, &hook.key.namespace, &hook.key.kind, &about).await;
            if !warnings.is_empty() {
                why.push_str("; warnings: ");
                why.push_str(&warnings.join("; "));
            }
        }
        (outcome, Some((api, name)))
    }
}

/// Deletes a finished hook (in the background: a Job's Pods go with it); whether it is gone.
async fn delete(api: &Api<DynamicObject>, name: &str, key: &ObjectKey) -> bool {
    let params = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => true,
        Err(kube::Error::Api(status)) if status.code == 404 => true,
        Err(e) => {
            tracing::warn!(hook = %key, err = %describe(&e), "cannot delete the finished hook");
            false
        }
    }
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
        super::prune::wait_gone(api, &name, timeout)
            .await
            .map_err(|e| format!("the earlier run {name} is {e}"))?;
    }
    Ok(())
}

/// Watches the hook object from its creation until it finished: `Ok` with how, or `Err`
/// with why it failed. A watch (not polling) sees every change, so a Job that Kubernetes
/// deletes as soon as it completes (`ttlSecondsAfterFinished: 0`) is seen completing: its
/// last state comes with the deletion. `note` hears the object's state as it changes.
async fn watch_until_finished(
    api: &Api<DynamicObject>,
    created: DynamicObject,
    kind: &str,
    timeout: Duration,
    note: &(dyn Fn(&str) + Sync),
) -> Result<String, String> {
    let mut watch = Watch {
        api,
        name: created.metadata.name.clone().unwrap_or_default(),
        kind,
        deadline: tokio::time::Instant::now() + timeout,
        timeout,
        note,
        version: created
            .metadata
            .resource_version
            .clone()
            .unwrap_or_default(),
        last: serde_json::to_value(created).expect("objects serialize"),
    };
    // Bounded: each watch lasts until the deadline at most (or the server's own limit).
    loop {
        if let Some(done) = finished(kind, &watch.last) {
            return done;
        }
        let left = watch
            .deadline
            .saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return Err(watch.timed_out());
        }
        let params = WatchParams::default()
            .fields(&format!("metadata.name={}", watch.name))
            .timeout(left.as_secs().clamp(1, 290) as u32);
        let events = api
            .watch(&params, &watch.version)
            .await
            .map_err(|e| format!("cannot watch it: {}", describe(&e)))?;
        if let ControlFlow::Break(done) = watch.follow(events.boxed()).await? {
            return Ok(done);
        }
    }
}

/// One hook object being watched: where, until when, and what was last seen of it.
struct Watch<'a> {
    api: &'a Api<DynamicObject>,
    name: String,
    kind: &'a str,
    deadline: tokio::time::Instant,
    timeout: Duration,
    note: &'a (dyn Fn(&str) + Sync),
    /// The resourceVersion to watch from.
    version: String,
    last: Value,
}

impl Watch<'_> {
    fn timed_out(&self) -> String {
        format!(
            "not finished after {} s: {}",
            self.timeout.as_secs(),
            health::assess(Some(&self.last)).message
        )
    }

    /// Follows one watch: `Break` with how the hook succeeded, `Err` with why it failed,
    /// `Continue` when the watch ended before it finished (watch again from `version`).
    async fn follow(
        &mut self,
        mut events: BoxStream<'_, Result<WatchEvent<DynamicObject>, kube::Error>>,
    ) -> Result<ControlFlow<String>, String> {
        loop {
            let event = match tokio::time::timeout_at(self.deadline, events.try_next()).await {
                Err(_) => return Err(self.timed_out()),
                Ok(Err(e)) => {
                    tracing::debug!(err = %e, "a hook's watch ended; watching again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return Ok(ControlFlow::Continue(()));
                }
                // The server ended the watch: watch again from the last version seen (a
                // pause, so that a server ending every watch at once is not asked in a loop).
                Ok(Ok(None)) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    return Ok(ControlFlow::Continue(()));
                }
                Ok(Ok(Some(event))) => event,
            };
            match event {
                WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                    self.version = object.metadata.resource_version.clone().unwrap_or_default();
                    self.last = serde_json::to_value(object).expect("objects serialize");
                    if let Some(done) = finished(self.kind, &self.last) {
                        return done.map(ControlFlow::Break);
                    }
                    (self.note)(&health::assess(Some(&self.last)).message);
                }
                WatchEvent::Deleted(object) => {
                    let gone = serde_json::to_value(object).expect("objects serialize");
                    let done = finished(self.kind, &gone).unwrap_or_else(|| {
                        Err(format!(
                            "it was deleted before it finished (last seen: {})",
                            health::assess(Some(&gone)).message
                        ))
                    });
                    return done.map(ControlFlow::Break);
                }
                WatchEvent::Bookmark(bookmark) => self.version = bookmark.metadata.resource_version,
                // The version is too old (compacted): read the object again, watch from it.
                WatchEvent::Error(status) if status.code == 410 => {
                    let live = self
                        .api
                        .get_opt(&self.name)
                        .await
                        .map_err(|e| format!("cannot read it: {}", describe(&e)))?
                        .ok_or(
                            "it was deleted while its watch was interrupted; whether it finished is unknown",
                        )?;
                    self.version = live.metadata.resource_version.clone().unwrap_or_default();
                    self.last = serde_json::to_value(live).expect("objects serialize");
                    return Ok(ControlFlow::Continue(()));
                }
                WatchEvent::Error(status) => {
                    return Err(format!("cannot watch it: {}", status.message));
                }
            }
        }
    }
}

/// The hook object this run created.
struct Created {
    name: String,
    uid: String,
    at: Option<k8s_openapi::jiff::Timestamp>,
}

/// Whether a Pod's name is one the Job controller gives the Pods of Job `job`:
/// `<job>-<5 characters>`, or `<job>-<index>-<5 characters>` for an indexed Job.
fn pod_of_job(pod: &str, job: &str) -> bool {
    let Some(rest) = pod.strip_prefix(job).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let suffix = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_alphanumeric());
    match rest.split_once('-') {
        None => suffix(rest),
        Some((index, random)) => index.bytes().all(|b| b.is_ascii_digit()) && suffix(random),
    }
}

/// The last distinct warning Events about this run of a hook and, for a Job, about its
/// Pods (`serviceaccount "x" not found`, a Pod that cannot be scheduled, …): at most five,
/// none older than the run.
async fn warning_events(
    client: &kube::Client,
    namespace: &str,
    kind: &str,
    run: &Created,
) -> Vec<String> {
    let events: Api<k8s_openapi::api::core::v1::Event> = if namespace.is_empty() {
        Api::all(client.clone())
    } else {
        Api::namespaced(client.clone(), namespace)
    };
    let listed = match events
        .list(&ListParams::default().fields("type=Warning"))
        .await
    {
        Ok(listed) => listed.items,
        Err(e) => {
            tracing::debug!(err = %describe(&e), "cannot list the hook's events");
            return Vec::new();
        }
    };
    let when = |event: &k8s_openapi::api::core::v1::Event| {
        event
            .last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(event.event_time.as_ref().map(|t| t.0))
    };
    let about = |event: &k8s_openapi::api::core::v1::Event| {
        let object = &event.involved_object;
        let object_name = object.name.as_deref().unwrap_or_default();
        let object_kind = object.kind.as_deref().unwrap_or_default();
        let recent = match (when(event), run.at) {
            (Some(seen), Some(created)) => seen >= created,
            _ => true,
        };
        recent
            && ((object_kind == kind && object.uid.as_deref() == Some(run.uid.as_str()))
                || (kind == "Job" && object_kind == "Pod" && pod_of_job(object_name, &run.name)))
    };
    let mut relevant: Vec<&k8s_openapi::api::core::v1::Event> =
        listed.iter().filter(|e| about(e)).collect();
    relevant.sort_by_key(|e| when(e));
    let mut said: Vec<String> = Vec::new();
    for event in relevant.iter().rev() {
        let text = format!(
            "{}/{} {}: {}",
            event.involved_object.kind.as_deref().unwrap_or_default(),
            event.involved_object.name.as_deref().unwrap_or_default(),
            event.reason.as_deref().unwrap_or_default(),
            event.message.as_deref().unwrap_or_default().trim()
        );
        if !said.contains(&text) {
            said.push(text);
        }
        if said.len() == 5 {
            break;
        }
    }
    said.reverse();
    said
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
mod tests;
