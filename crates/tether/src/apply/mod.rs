//! Apply: carry out a [`Plan`] — widen the ApplySet, server-side apply stage by stage,
//! prune what is no longer desired, narrow the ApplySet, and optionally wait for health.
//!
//! These rules hold here: nothing is written if the plan has errors or
//! conflicts (unless forced); the inventory grows before objects are created and shrinks
//! only after they are deleted; pruning happens only after every apply succeeded, in
//! reverse order; an unchanged object gets no request at all. Start at [`apply`].

pub mod hooks;
mod report;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};
use serde_json::Value;

use crate::cluster::discovery::Resolver;
use crate::cluster::{api_for, describe};
use crate::health::{self, Health, HealthStatus};
use crate::object::GroupKind;
use crate::object::ObjectKey;
use crate::plan::hooks::Phase;
use crate::plan::{Action, Change, FIELD_MANAGER, Hook, Plan, Stage};
pub use report::{ApplyReport, ObjectResult, SyncFailure};

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Delete members that are no longer desired.
    pub prune: bool,
    /// Allow a render with no objects to prune everything.
    pub allow_empty: bool,
    /// Take ownership of fields other managers own.
    pub force_conflicts: bool,
    pub concurrency: usize,
    /// Wait for every desired object to be healthy, up to this long.
    pub wait: Option<Duration>,
    /// How long to wait for CRDs to be established and pruned objects to be gone.
    pub settle_timeout: Duration,
    /// Run the plan's hooks (when it changes something). Off for a drift correction,
    /// which puts back the revision already applied.
    pub run_hooks: bool,
    /// How long one hook may run, and one sync wave may take to become Healthy.
    pub hook_timeout: Duration,
    pub progress: crate::progress::ProgressHandle,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            prune: true,
            allow_empty: false,
            force_conflicts: false,
            concurrency: 16,
            wait: None,
            settle_timeout: Duration::from_secs(120),
            run_hooks: true,
            hook_timeout: Duration::from_secs(300),
            progress: Default::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the render is empty but the ApplySet holds {members} object(s): refusing to prune \
         everything; pass --allow-empty if that is what you want"
    )]
    EmptyRender { members: usize },
    #[error(
        "{count} object(s) have fields that tether never applied and another manager owns; nothing was written:\n{details}\nresolve the conflict in Git, or take the fields: --force-conflicts (the agent: spec.syncPolicy.forceConflicts: true)"
    )]
    Conflicts { count: usize, details: String },
    #[error("cannot create namespace {name} (CreateNamespace): {reason}")]
    Namespace { name: String, reason: String },
    #[error("cannot update the ApplySet parent Secret/{name}: {reason}")]
    Parent { name: String, reason: String },
    #[error("CRD {name} was not established within {seconds} s")]
    CrdNotEstablished { name: String, seconds: u64 },
    #[error("cannot refresh API discovery: {0}")]
    Discovery(String),
    #[error(
        "CRD {name} is established, but the API server still does not serve its kind after {seconds:.1} s of discovery; check the API server's log, then apply again"
    )]
    KindNotServed { name: String, seconds: f64 },
}

/// Carries out `plan`. Per-object failures are in the report; an `Err` means nothing (or
/// nothing more) could be done safely.
pub async fn apply(
    client: &kube::Client,
    resolver: &Resolver,
    plan: Plan,
    options: &ApplyOptions,
) -> Result<ApplyReport, Error> {
    let mut report = ApplyReport::default();
    let prunes = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Prune)
        .count();
    if plan.desired_count() == 0 && prunes > 0 && options.prune && !options.allow_empty {
        return Err(Error::EmptyRender { members: prunes });
    }
    let conflicts: Vec<&Change> = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Conflict)
        .collect();
    if !conflicts.is_empty() && !options.force_conflicts {
        let details = conflicts
            .iter()
            .map(|c| format!("  {}: {}", c.key, c.conflicts.join("; ")))
            .collect::<Vec<_>>()
            .join("\n");
        return Err(Error::Conflicts {
            count: conflicts.len(),
            details,
        });
    }

    // 1. Widen the inventory before anything is created (crash safety).
    let desired: Vec<&Change> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Prune)
        .collect();
    let desired_kinds: BTreeSet<GroupKind> = desired
        .iter()
        .map(|c| GroupKind {
            group: c.key.group.clone(),
            kind: c.key.kind.clone(),
        })
        .collect();
    // Namespaces beyond the parent's own (the ApplySet's "additional namespaces").
    let desired_namespaces: BTreeSet<String> = desired
        .iter()
        .filter(|c| !c.key.namespace.is_empty() && c.key.namespace != plan.options.namespace)
        .map(|c| c.key.namespace.clone())
        .collect();
    let mut widened = plan.applyset.clone();
    if plan.options.application.is_some() {
        widened.application = plan.options.application.clone();
    }
    if plan.options.source.is_some() {
        widened.source = plan.options.source.clone();
    }
    widened.group_kinds.extend(desired_kinds.iter().cloned());
    widened
        .namespaces
        .extend(desired_namespaces.iter().cloned());
    let mut pending: Vec<Change> = plan
        .changes
        .iter()
        .filter(|c| matches!(c.action, Action::Create | Action::Update | Action::Conflict))
        .cloned()
        .collect();
    // The parent lives in the application's namespace: when this set creates that
    // namespace, it is created first, then the parent, then everything else.
    if !plan.parent_exists {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let missing = match namespaces.get_opt(&plan.options.namespace).await {
            Ok(found) => found.is_none(),
            // An account that may write only its own namespace (a tenant) may not read the
            // Namespace object: go on, and a missing namespace is the parent write's error.
            Err(kube::Error::Api(status)) if status.code == 403 => false,
            Err(e) => {
                return Err(Error::Parent {
                    name: plan.applyset.parent_name(),
                    reason: describe(&e),
                });
            }
        };
        let in_set = pending.iter().any(|c| {
            c.key.group.is_empty()
                && c.key.kind == "Namespace"
                && c.key.name == plan.options.namespace
        });
        if missing && plan.creates_namespace && !in_set {
            create_namespace(client, &plan.options.namespace, &mut report).await?;
        } else if missing {
            let position = pending
                .iter()
                .position(|c| c.key.group.is_empty() && c.key.kind == "Namespace" && c.key.name == plan.options.namespace)
                .ok_or_else(|| Error::Parent {
                    name: plan.applyset.parent_name(),
                    reason: format!(
                        "namespace {} does not exist and is not part of this application; create it or pick another with -n",
                        plan.options.namespace
                    ),
                })?;
            let namespace = pending.remove(position);
            let results = apply_batch(client, &[&namespace], options).await;
            let failed = results.iter().any(|r| r.error.is_some());
            report.writes += results.iter().filter(|r| r.error.is_none()).count();
            report.results.extend(results);
            if failed {
                return Ok(report);
            }
        }
    }
    // Hooks run with a sync that changes something (a no-op runs none).
    let run_hooks = options.run_hooks && plan.has_changes();
    let hooks_of = |phase: Phase| -> Vec<&Hook> {
        if !run_hooks {
            return Vec::new();
        }
        let mut hooks: Vec<&Hook> = plan
            .hooks
            .iter()
            .filter(|h| h.phases.contains(&phase))
            .collect();
        hooks.sort_by(|a, b| (a.run_order(), &a.key).cmp(&(b.run_order(), &b.key)));
        hooks
    };
    let runner = hooks::Runner {
        client,
        resolver,
        set_id: &plan.applyset.id,
        timeout: options.hook_timeout,
        progress: &options.progress,
    };

    // 2. PreSync hooks, before any member is written: a failure stops the sync.
    let pre_sync = hooks_of(Phase::PreSync);
    if !pre_sync.is_empty() {
        let failure = runner
            .run(&pre_sync, Phase::PreSync, &mut report.hooks)
            .await;
        if failure.is_some() {
            report.failure = failure;
            runner
                .run(
                    &hooks_of(Phase::SyncFail),
                    Phase::SyncFail,
                    &mut report.hooks,
                )
                .await;
            let mut parent = Parent {
                recorded: plan.applyset.clone(),
                exists: plan.parent_exists,
            };
            let why = report.failure_message();
            parent.record_hooks(client, &plan, why, &mut report).await?;
            return Ok(report);
        }
    }

    // Steps 3 to 6; an error there (the parent cannot be written, a CRD is not served)
    // still runs the SyncFail hooks below.
    let mut all_ok = true;
    let mut pruned_all = true;
    let mut parent = Parent {
        recorded: plan.applyset.clone(),
        exists: plan.parent_exists,
    };
    let members: Result<(), Error> = async {
        parent.record(client, &widened, &mut report).await?;

        // 3. Apply stage by stage, and within a stage wave by wave; later stages wait for
        //    earlier ones, and a wave waits until the waves before it are Healthy. Sync hooks
        //    run with the namespaced objects of their wave.
        if !pending.is_empty() {
            options.progress.begin("applying", pending.len());
        }
        let sync_hooks = hooks_of(Phase::Sync);
        'stages: for stage in [
            Stage::Crds,
            Stage::Namespaces,
            Stage::ClusterScoped,
            Stage::Namespaced,
        ] {
            let mut waves: BTreeSet<i64> = pending
                .iter()
                .filter(|c| c.stage == stage)
                .map(|c| c.wave)
                .collect();
            if stage == Stage::Namespaced {
                waves.extend(sync_hooks.iter().map(|h| h.order));
            }
            let last_wave = waves.last().copied();
            for wave in waves {
                let batch: Vec<&Change> = pending
                    .iter()
                    .filter(|c| c.stage == stage && c.wave == wave)
                    .collect();
                if !batch.is_empty() {
                    let results = apply_batch(client, &batch, options).await;
                    let wave_ok = results.iter().all(|r| r.error.is_none());
                    report.writes += results.iter().filter(|r| r.error.is_none()).count();
                    report.results.extend(results);
                    if !wave_ok {
                        all_ok = false;
                        break 'stages;
                    }
                    if stage == Stage::Crds {
                        // A copy (a few CRDs): discovery resolves the pending objects' kinds.
                        let crds: Vec<Change> = batch.iter().map(|c| (*c).clone()).collect();
                        wait_for_crds(client, &crds, options.settle_timeout).await?;
                        discover_new_kinds(resolver, &crds, &mut pending, options.settle_timeout)
                            .await?;
                    }
                }
                let in_wave: Vec<&Hook> = sync_hooks
                    .iter()
                    .copied()
                    .filter(|h| stage == Stage::Namespaced && h.order == wave)
                    .collect();
                if !in_wave.is_empty() {
                    let failure = runner.run(&in_wave, Phase::Sync, &mut report.hooks).await;
                    if failure.is_some() {
                        report.failure = failure;
                        all_ok = false;
                        break 'stages;
                    }
                }
                if Some(wave) != last_wave {
                    let members: Vec<&Change> = plan
                        .changes
                        .iter()
                        .filter(|c| c.stage == stage && c.wave == wave && c.action != Action::Prune)
                        .collect();
                    if let Err(why) = wait_until_healthy(
                        client,
                        resolver,
                        &members,
                        options.hook_timeout,
                        WAVE_PAUSE,
                        &options.progress,
                    )
                    .await
                    .1
                    {
                        report.failure =
                            Some(format!("sync wave {wave} did not become Healthy: {why}"));
                        all_ok = false;
                        break 'stages;
                    }
                }
            }
        }
        if !pending.is_empty() {
            options.progress.finish();
        }
        for change in plan
            .changes
            .iter()
            .filter(|c| c.action == Action::Unchanged)
        {
            report.results.push(ObjectResult {
                key: change.key.clone(),
                action: Action::Unchanged,
                error: None,
                health: None,
                resource_version: change
                    .live
                    .as_ref()
                    .and_then(|l| l["metadata"]["resourceVersion"].as_str())
                    .map(str::to_string),
            });
        }

        // 4. Prune only after every apply succeeded, in reverse stage order, and within a
        //    stage from the highest wave down.
        if all_ok && options.prune {
            let prune_changes: Vec<&Change> = plan
                .changes
                .iter()
                .filter(|c| c.action == Action::Prune)
                .collect();
            if !prune_changes.is_empty() {
                options.progress.begin("pruning", prune_changes.len());
            }
            'prune: for stage in [
                Stage::Namespaced,
                Stage::ClusterScoped,
                Stage::Namespaces,
                Stage::Crds,
            ] {
                let waves: BTreeSet<i64> = prune_changes
                    .iter()
                    .filter(|c| c.stage == stage)
                    .map(|c| c.wave)
                    .collect();
                for wave in waves.into_iter().rev() {
                    let batch: Vec<&Change> = prune_changes
                        .iter()
                        .copied()
                        .filter(|c| c.stage == stage && c.wave == wave)
                        .collect();
                    let results = prune_batch(client, &batch, options).await;
                    for result in &results {
                        if result.error.is_none() {
                            report.pruned += 1;
                            report.writes += 1;
                        } else {
                            pruned_all = false;
                        }
                    }
                    report.results.extend(results);
                    if !pruned_all {
                        break 'prune;
                    }
                }
            }
            if !prune_changes.is_empty() {
                options.progress.finish();
            }
            // 5. Narrow the inventory only after the deletes are done.
            if pruned_all {
                let mut narrowed = widened.clone();
                narrowed.group_kinds = desired_kinds;
                narrowed.namespaces = desired_namespaces;
                parent.record(client, &narrowed, &mut report).await?;
            }
        }

        // 6. PostSync hooks, once every object is Healthy.
        let post_sync = hooks_of(Phase::PostSync);
        if all_ok && pruned_all && !post_sync.is_empty() {
            let members: Vec<&Change> = plan
                .changes
                .iter()
                .filter(|c| c.action != Action::Prune)
                .collect();
            match wait_until_healthy(
                client,
                resolver,
                &members,
                options.hook_timeout,
                WAVE_PAUSE,
                &options.progress,
            )
            .await
            .1
            {
                Ok(()) => {
                    let failure = runner
                        .run(&post_sync, Phase::PostSync, &mut report.hooks)
                        .await;
                    report.failure = failure;
                }
                Err(why) => {
                    report.failure = Some(format!("PostSync hooks not run: {why}"));
                }
            }
        }
        Ok(())
    }
    .await;
    // 7. SyncFail hooks, when anything above failed.
    if members.is_err() || report.failure.is_some() || !all_ok || !pruned_all {
        let sync_fail = hooks_of(Phase::SyncFail);
        if !sync_fail.is_empty() {
            runner
                .run(&sync_fail, Phase::SyncFail, &mut report.hooks)
                .await;
        }
    }
    if run_hooks {
        // Recorded even when the sync stopped on an error: its hooks did not all run.
        let why = match &members {
            Err(e) => Some(e.to_string()),
            Ok(()) => report.failure_message(),
        };
        let recorded = parent.record_hooks(client, &plan, why, &mut report).await;
        members?;
        recorded?;
    } else {
        members?;
    }

    if all_ok && let Some(timeout) = options.wait {
        let desired = plan
            .changes
            .iter()
            .filter(|c| c.action != Action::Prune)
            .count();
        options.progress.begin("waiting for health", desired);
        wait_healthy(
            client,
            resolver,
            &plan,
            &mut report,
            timeout,
            &options.progress,
        )
        .await;
        options.progress.finish();
    }
    Ok(report)
}

/// Creates the destination namespace that the set does not hold (`CreateNamespace=true`):
/// labelled as tether's doing, but not a member, so never pruned.
async fn create_namespace(
    client: &kube::Client,
    name: &str,
    report: &mut ApplyReport,
) -> Result<(), Error> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let namespace = k8s_openapi::api::core::v1::Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                [(
                    "app.kubernetes.io/managed-by".to_string(),
                    "tether".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        ..Default::default()
    };
    let params = kube::api::PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    match namespaces.create(&params, &namespace).await {
        Ok(_) => report.writes += 1,
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => {
            return Err(Error::Namespace {
                name: name.to_string(),
                reason: describe(&e),
            });
        }
    }
    Ok(())
}

/// What the parent Secret records now; written only when that changes (never on a no-op).
struct Parent {
    recorded: crate::inventory::ApplySet,
    exists: bool,
}

impl Parent {
    async fn record(
        &mut self,
        client: &kube::Client,
        set: &crate::inventory::ApplySet,
        report: &mut ApplyReport,
    ) -> Result<(), Error> {
        if self.exists
            && set.group_kinds == self.recorded.group_kinds
            && set.namespaces == self.recorded.namespaces
            && set.application == self.recorded.application
            && set.hooks_unfinished == self.recorded.hooks_unfinished
            && set.source == self.recorded.source
        {
            return Ok(());
        }
        let api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(client.clone(), &set.namespace);
        let manifest = set.parent_manifest();
        api.patch(
            &set.parent_name(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&manifest),
        )
        .await
        .map_err(|e| Error::Parent {
            name: set.parent_name(),
            reason: describe(&e),
        })?;
        report.writes += 1;
        self.recorded = set.clone();
        self.exists = true;
        Ok(())
    }

    /// Records whether the hooks of this sync (which ran them) all succeeded: until a sync
    /// runs them to the end, the set is not in sync and the next sync runs them again. A
    /// set without a parent yet needs no record: its next sync creates everything anyway.
    async fn record_hooks(
        &mut self,
        client: &kube::Client,
        plan: &Plan,
        why: Option<String>,
        report: &mut ApplyReport,
    ) -> Result<(), Error> {
        if !self.exists {
            return Ok(());
        }
        let due = plan
            .hooks
            .iter()
            .any(|h| h.phases.iter().any(|p| *p != Phase::SyncFail));
        let mut set = self.recorded.clone();
        set.hooks_unfinished = match why {
            Some(why) if due => Some(crate::inventory::UnfinishedHooks::new(
                !plan.parent_exists
                    || plan
                        .applyset
                        .hooks_unfinished
                        .as_ref()
                        .is_some_and(|u| u.install),
                &why,
            )),
            _ => None,
        };
        self.record(client, &set, report).await
    }
}

async fn apply_batch(
    client: &kube::Client,
    batch: &[&Change],
    options: &ApplyOptions,
) -> Vec<ObjectResult> {
    // Indexes, not `iter().map(|change| …)`: a closure over a borrowed item makes the
    // future's Send-ness unprovable for the agent's controller (rust-lang/rust#102211).
    futures::stream::iter((0..batch.len()).map(|i| apply_one(client, batch[i], options)))
        .buffer_unordered(options.concurrency.max(1))
        .collect()
        .await
}

async fn apply_one(client: &kube::Client, change: &Change, options: &ApplyOptions) -> ObjectResult {
    let mut resource_version = None;
    let error = match (&change.kind, &change.desired) {
        (Some(kind), Some(manifest)) => {
            let api = api_for(client, kind, &change.key.namespace);
            let mut params = PatchParams::apply(FIELD_MANAGER);
            // Forced: the user said so, or every field in conflict is drift (tether applied
            // it before; see `plan::fields`).
            if options.force_conflicts || change.force {
                params = params.force();
            }
            match take_over_client_side_fields(&api, change).await {
                Err(e) => Some(e),
                Ok(()) => match api
                    .patch(&change.key.name, &params, &Patch::Apply(manifest))
                    .await
                {
                    Ok(written) => {
                        resource_version = written.metadata.resource_version;
                        None
                    }
                    Err(e) => Some(describe(&e)),
                },
            }
        }
        (None, _) => Some("its kind is still not served after its CRD was established".to_string()),
        (_, None) => Some("nothing to apply".to_string()),
    };
    options.progress.tick();
    ObjectResult {
        key: change.key.clone(),
        action: if change.action == Action::Conflict {
            Action::Update
        } else {
            change.action
        },
        error,
        health: None,
        resource_version,
    }
}

/// Hands fields owned by client-side apply to tether (see [`crate::plan::migrate`]), with
/// the resourceVersion as a precondition so a concurrent change is not overwritten.
async fn take_over_client_side_fields(
    api: &Api<DynamicObject>,
    change: &Change,
) -> Result<(), String> {
    let Some(live) = change
        .live
        .as_ref()
        .filter(|_| !change.takes_over_from.is_empty())
    else {
        return Ok(());
    };
    let managed = live["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut operations = vec![
        serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": live["metadata"]["resourceVersion"]}),
        serde_json::json!({"op": "replace", "path": "/metadata/managedFields", "value": crate::plan::migrate::take_over(&managed)}),
    ];
    if live["metadata"]["annotations"][crate::plan::migrate::LAST_APPLIED_ANNOTATION].is_string() {
        operations.push(serde_json::json!({
            "op": "remove",
            "path": "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration"
        }));
    }
    let patch: json_patch::Patch =
        serde_json::from_value(Value::Array(operations)).map_err(|e| e.to_string())?;
    api.patch(
        &change.key.name,
        &PatchParams::default(),
        &Patch::<()>::Json(patch),
    )
    .await
    .map(|_| ())
    .map_err(|e| {
        format!(
            "cannot take over fields from {}: {}",
            change.takes_over_from.join(", "),
            describe(&e)
        )
    })
}

async fn prune_batch(
    client: &kube::Client,
    batch: &[&Change],
    options: &ApplyOptions,
) -> Vec<ObjectResult> {
    futures::stream::iter((0..batch.len()).map(|i| async move {
        let change = batch[i];
        let kind = change.kind.as_ref().expect("prune candidates are resolved");
        let api = api_for(client, kind, &change.key.namespace);
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        let error = match api.delete(&change.key.name, &params).await {
            Ok(_) => wait_gone(&api, &change.key.name, options.settle_timeout)
                .await
                .err(),
            Err(kube::Error::Api(status)) if status.code == 404 => None,
            Err(e) => Some(describe(&e)),
        };
        options.progress.tick();
        ObjectResult {
            key: change.key.clone(),
            action: Action::Prune,
            error,
            health: None,
            resource_version: None,
        }
    }))
    .buffer_unordered(options.concurrency.max(1))
    .collect()
    .await
}

async fn wait_gone(api: &Api<DynamicObject>, name: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match api.get_opt(name).await {
            Ok(None) => return Ok(()),
            Ok(Some(_)) if Instant::now() > deadline => {
                return Err(format!(
                    "still present {} s after deletion (finalizers?)",
                    timeout.as_secs()
                ));
            }
            Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => return Err(describe(&e)),
        }
    }
}

/// Discovers again until every kind that the just-established CRDs of `batch` define is
/// served, and resolves the pending objects of those kinds. Discovery can lag behind a
/// CRD's `Established` condition by a few refreshes, so one is not enough: it looks
/// again with a growing pause (50 ms doubling, at most 2 s) until `timeout`.
async fn discover_new_kinds(
    resolver: &Resolver,
    batch: &[Change],
    pending: &mut [Change],
    timeout: Duration,
) -> Result<(), Error> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        resolver
            .refresh()
            .await
            .map_err(|e| Error::Discovery(e.to_string()))?;
        for change in pending.iter_mut().filter(|c| c.kind.is_none()) {
            let api_version = change
                .desired
                .as_ref()
                .and_then(|d| d["apiVersion"].as_str())
                .unwrap_or_default()
                .to_string();
            change.kind = resolver.resolve(&api_version, &change.key.kind);
        }
        // The first CRD of this batch whose objects are still unresolved, if any.
        let unserved = batch.iter().find(|crd| {
            let spec = crd.desired.as_ref().map(|d| &d["spec"]);
            let group = spec.and_then(|s| s["group"].as_str()).unwrap_or_default();
            let kind = spec
                .and_then(|s| s["names"]["kind"].as_str())
                .unwrap_or_default();
            pending
                .iter()
                .any(|c| c.kind.is_none() && c.key.group == group && c.key.kind == kind)
        });
        let Some(crd) = unserved else {
            return Ok(());
        };
        if started.elapsed() >= timeout {
            return Err(Error::KindNotServed {
                name: crd.key.name.clone(),
                seconds: started.elapsed().as_secs_f64(),
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

async fn wait_for_crds(
    client: &kube::Client,
    batch: &[Change],
    timeout: Duration,
) -> Result<(), Error> {
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    for change in batch {
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            &change.key.name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        match tokio::time::timeout(timeout, established).await {
            Ok(Ok(_)) => {}
            _ => {
                return Err(Error::CrdNotEstablished {
                    name: change.key.name.clone(),
                    seconds: timeout.as_secs(),
                });
            }
        }
    }
    Ok(())
}

/// The health of each of `changes`, read from the cluster now.
async fn check_health(
    client: &kube::Client,
    resolver: &Resolver,
    changes: &[&Change],
) -> Vec<(ObjectKey, Health)> {
    futures::stream::iter((0..changes.len()).map(|i| async move {
        let change = changes[i];
        let api_version = change
            .desired
            .as_ref()
            .and_then(|d| d["apiVersion"].as_str())
            .unwrap_or_default();
        let Some(kind) = change
            .kind
            .clone()
            .or_else(|| resolver.resolve(api_version, &change.key.kind))
        else {
            return (change.key.clone(), Health::missing());
        };
        let live: Option<Value> = api_for(client, &kind, &change.key.namespace)
            .get_opt(&change.key.name)
            .await
            .ok()
            .flatten()
            .map(|o| serde_json::to_value(o).expect("objects serialize"));
        (change.key.clone(), health::assess(live.as_ref()))
    }))
    .buffer_unordered(16)
    .collect()
    .await
}

/// The first pause between health checks of a wave or before PostSync hooks: short, for a
/// wave is often Healthy at once.
const WAVE_PAUSE: Duration = Duration::from_millis(100);

/// Waits until every one of `changes` is Healthy, checking again after `first_pause`
/// (doubling up to 1 s). Returns the last health of each, and `Err` saying which is
/// Degraded, or which are not Healthy when `timeout` ran out.
async fn wait_until_healthy(
    client: &kube::Client,
    resolver: &Resolver,
    changes: &[&Change],
    timeout: Duration,
    first_pause: Duration,
    progress: &crate::progress::ProgressHandle,
) -> (Vec<(ObjectKey, Health)>, Result<(), String>) {
    let deadline = Instant::now() + timeout;
    let mut pause = first_pause;
    loop {
        let checks = check_health(client, resolver, changes).await;
        if let Some((key, h)) = checks
            .iter()
            .find(|(_, h)| h.status == HealthStatus::Degraded)
        {
            let why = format!("{key} is Degraded: {}", h.message);
            return (checks, Err(why));
        }
        let not_healthy: Vec<&(ObjectKey, Health)> = checks
            .iter()
            .filter(|(_, h)| h.status != HealthStatus::Healthy)
            .collect();
        let Some((key, h)) = not_healthy.first() else {
            return (checks, Ok(()));
        };
        if Instant::now() > deadline {
            let why = format!(
                "{} object(s) not healthy after {} s, e.g. {key}: {} ({})",
                not_healthy.len(),
                timeout.as_secs(),
                h.status,
                h.message
            );
            return (checks, Err(why));
        }
        progress.note(&format!(
            "{}/{} healthy; e.g. {key}: {} ({})",
            checks.len() - not_healthy.len(),
            checks.len(),
            h.status,
            h.message
        ));
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1)).max(first_pause);
    }
}

/// `--wait`: every desired object Healthy (checked every second), one Degraded, or time
/// ran out; each object's last health goes into the report.
async fn wait_healthy(
    client: &kube::Client,
    resolver: &Resolver,
    plan: &Plan,
    report: &mut ApplyReport,
    timeout: Duration,
    progress: &crate::progress::ProgressHandle,
) {
    let desired: Vec<&Change> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Prune)
        .collect();
    let (checks, healthy) = wait_until_healthy(
        client,
        resolver,
        &desired,
        timeout,
        Duration::from_secs(1),
        progress,
    )
    .await;
    for (key, health) in &checks {
        if let Some(result) = report.results.iter_mut().find(|r| &r.key == key) {
            result.health = Some(health.clone());
        }
    }
    report.unhealthy = healthy.err();
}
