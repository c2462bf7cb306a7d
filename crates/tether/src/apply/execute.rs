//! Running an apply's steps: the state of one apply ([`Run`]: its report, how it went so
//! far, the first error), the parent's namespace, server-side apply in batches (with the
//! take-over of client-side fields), and the wait for new CRDs and their kinds.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::Value;

use super::parent::Parent;
use super::schedule::{self, FirstNamespace, Outcome};
use super::{ApplyOptions, ApplyReport, Error, ObjectResult, hooks};
use crate::cluster::discovery::Resolver;
use crate::cluster::{api_for, describe};
use crate::plan::hooks::Phase;
use crate::plan::{Action, Change, FIELD_MANAGER, Hook, Plan};

/// One apply under way: what it needs, what it did, and how it went so far.
pub(super) struct Run<'a> {
    pub client: &'a kube::Client,
    pub resolver: &'a Resolver,
    pub plan: &'a Plan,
    pub options: &'a ApplyOptions,
    pub report: ApplyReport,
    /// What the parent Secret records now.
    pub parent: Parent,
    /// A PreSync hook failed or an error stopped the sync.
    pub stopped: bool,
    pub applied_all: bool,
    pub pruned_all: bool,
    /// The first error; the apply returns it once the SyncFail hooks ran.
    pub error: Option<Error>,
    /// Copies of the pending changes whose kinds their CRDs (in this set) define: resolved
    /// once those are established.
    unresolved: BTreeMap<usize, Change>,
}

impl<'a> Run<'a> {
    pub fn new(
        client: &'a kube::Client,
        resolver: &'a Resolver,
        plan: &'a Plan,
        options: &'a ApplyOptions,
    ) -> Self {
        let unresolved = (0..plan.changes.len())
            .filter(|&i| {
                let change = &plan.changes[i];
                matches!(
                    change.action,
                    Action::Create | Action::Update | Action::Conflict
                ) && change.kind.is_none()
            })
            .map(|i| (i, plan.changes[i].clone()))
            .collect();
        Self {
            client,
            resolver,
            plan,
            options,
            report: ApplyReport::default(),
            parent: Parent {
                recorded: plan.applyset.clone(),
                exists: plan.parent_exists,
            },
            stopped: false,
            applied_all: true,
            pruned_all: true,
            error: None,
            unresolved,
        }
    }

    pub fn outcome(&self) -> Outcome {
        Outcome {
            stopped: self.stopped,
            applied_all: self.applied_all,
            pruned_all: self.pruned_all,
            failure: self.report.failure.is_some(),
        }
    }

    /// Stops the sync on `error` (the first one is what the apply returns).
    pub fn stop(&mut self, error: Error) {
        self.error.get_or_insert(error);
        self.stopped = true;
    }

    pub fn finish(self) -> Result<ApplyReport, Error> {
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.report),
        }
    }

    /// The change to apply: with its kind resolved, once its CRD is established.
    fn change(&self, i: usize) -> &Change {
        self.unresolved.get(&i).unwrap_or(&self.plan.changes[i])
    }

    /// Runs `hooks` of `phase`: a failed PreSync (PreDelete) hook stops the sync (the
    /// deletion), a failed Sync hook the stages; a PostSync (PostDelete) hook's failure is
    /// the sync's (the deletion's).
    pub async fn hooks(&mut self, phase: Phase, hooks: &[usize]) {
        let plan = self.plan;
        let hooks: Vec<&Hook> = hooks.iter().map(|&h| &plan.hooks[h]).collect();
        let runner = hooks::Runner {
            client: self.client,
            resolver: self.resolver,
            set_id: &plan.applyset.id,
            timeout: self.options.hook_timeout,
            progress: &self.options.progress,
        };
        let failure = runner.run(&hooks, phase, &mut self.report.hooks).await;
        match phase {
            Phase::PreSync | Phase::PreDelete if failure.is_some() => {
                self.report.failure = failure;
                self.stopped = true;
            }
            Phase::Sync if failure.is_some() => {
                self.report.failure = failure;
                self.applied_all = false;
            }
            Phase::PostSync | Phase::PostDelete => self.report.failure = failure,
            _ => {}
        }
    }

    /// When the set has no parent yet, makes sure the parent's namespace exists: creates
    /// it, or applies the set's own Namespace first. `Continue` with the change applied
    /// first, if any; `Break` when that failed (the report says why).
    pub async fn first_namespace(&mut self) -> Result<ControlFlow<(), Option<usize>>, Error> {
        let plan = self.plan;
        if plan.parent_exists {
            return Ok(ControlFlow::Continue(None));
        }
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
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
        match schedule::first_namespace(plan, missing)? {
            FirstNamespace::Ready => Ok(ControlFlow::Continue(None)),
            FirstNamespace::Create => {
                create_namespace(self.client, &plan.options.namespace, &mut self.report).await?;
                Ok(ControlFlow::Continue(None))
            }
            FirstNamespace::Apply(i) => {
                let results = apply_batch(self.client, &[&plan.changes[i]], self.options).await;
                if self.record_applied(results) {
                    Ok(ControlFlow::Continue(Some(i)))
                } else {
                    Ok(ControlFlow::Break(()))
                }
            }
        }
    }

    /// Applies one wave of a stage; a failure stops the stages.
    pub async fn apply(&mut self, changes: &[usize]) {
        let batch: Vec<&Change> = changes.iter().map(|&i| self.change(i)).collect();
        let results = apply_batch(self.client, &batch, self.options).await;
        if !self.record_applied(results) {
            self.applied_all = false;
        }
    }

    /// Adds what was applied to the report; whether all of it was.
    fn record_applied(&mut self, results: Vec<ObjectResult>) -> bool {
        let failed = results.iter().any(|r| r.error.is_some());
        self.report.writes += results.iter().filter(|r| r.error.is_none()).count();
        self.report.results.extend(results);
        !failed
    }

    /// Waits until the CRDs just applied are established and their kinds served, and
    /// resolves the kinds of the pending objects.
    pub async fn settle_crds(&mut self, crds: &[usize]) {
        // A copy (a few CRDs): discovery resolves the pending objects' kinds.
        let crds: Vec<Change> = crds.iter().map(|&i| self.change(i).clone()).collect();
        let timeout = self.options.settle_timeout;
        let settled = match wait_for_crds(self.client, &crds, timeout).await {
            Ok(()) => discover_new_kinds(self.resolver, &crds, &mut self.unresolved, timeout).await,
            Err(e) => Err(e),
        };
        if let Err(e) = settled {
            self.stop(e);
        }
    }

    /// Reports the unchanged objects, which get no request.
    pub fn record_unchanged(&mut self, changes: &[usize]) {
        for &i in changes {
            let change = &self.plan.changes[i];
            self.report.results.push(ObjectResult {
                key: change.key.clone(),
                action: Action::Unchanged,
                error: None,
                health: None,
                resource_version: change
                    .live
                    .as_ref()
                    .and_then(|l| l["metadata"]["resourceVersion"].as_str())
                    .map(str::to_string),
                written_health: None,
            });
        }
    }
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

async fn apply_batch(
    client: &kube::Client,
    batch: &[&Change],
    options: &ApplyOptions,
) -> Vec<ObjectResult> {
    // Indexes, not `iter().map(|change| …)`: a closure over a borrowed item makes the
    // future's Send-ness unprovable for the agent's controller (rust-lang/rust#102211).
    let in_flight = crate::cluster::window::in_flight(options.concurrency, &options.window);
    futures::stream::iter((0..batch.len()).map(|i| async move {
        match &options.window {
            Some(window) => window.run(apply_one(client, batch[i], options)).await,
            None => apply_one(client, batch[i], options).await,
        }
    }))
    .buffer_unordered(in_flight)
    .collect()
    .await
}

async fn apply_one(client: &kube::Client, change: &Change, options: &ApplyOptions) -> ObjectResult {
    let (mut resource_version, mut written_health) = (None, None);
    let error = match (&change.kind, &change.desired) {
        (Some(kind), Some(manifest)) => {
            let api = api_for(client, kind, &change.key.namespace);
            let mut params = PatchParams::apply(FIELD_MANAGER);
            // Forced: the user said so, or every field in conflict is drift (tether applied
            // it before; see `plan::fields`).
            if options.force_conflicts || change.force {
                params = params.force();
            }
            let prepared = match &change.recreate {
                Some(_) => delete_to_recreate(&api, change, options).await,
                None => take_over_client_side_fields(&api, change).await,
            };
            match prepared {
                Err(e) => Some(e),
                Ok(()) => match api
                    .patch(&change.key.name, &params, &Patch::Apply(manifest))
                    .await
                {
                    Ok(written) => {
                        resource_version = written.metadata.resource_version.clone();
                        if options.health_of_written {
                            let written = serde_json::to_value(written).expect("objects serialize");
                            let health =
                                crate::health::assess_with(Some(&written), &options.health_rules);
                            written_health = Some(health.status);
                        }
                        None
                    }
                    Err(e) if change.recreate.is_some() => Some(restore(&api, change, &e).await),
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
        written_health,
    }
}

/// Deletes an object that is to be created anew (`Force=true`: the server refuses to
/// update it in place), and waits until it and what it owns are gone.
async fn delete_to_recreate(
    api: &Api<DynamicObject>,
    change: &Change,
    options: &ApplyOptions,
) -> Result<(), String> {
    let params = kube::api::DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Foreground),
        ..Default::default()
    };
    match api.delete(&change.key.name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
        Err(e) => {
            return Err(format!(
                "cannot delete it to create it anew: {}",
                describe(&e)
            ));
        }
    }
    super::prune::wait_gone(api, &change.key.name, options.settle_timeout)
        .await
        .map_err(|e| format!("deleted to be created anew, but {e}"))
}

/// The object deleted to be created anew could not be created: the object as it was is
/// created again (without what the server owns); why, and whether that worked.
async fn restore(api: &Api<DynamicObject>, change: &Change, error: &kube::Error) -> String {
    let failed = format!(
        "deleted to be created anew, but the create failed: {}",
        describe(error)
    );
    let Some(mut live) = change.live.clone() else {
        return failed;
    };
    if let Some(metadata) = live["metadata"].as_object_mut() {
        for field in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "managedFields",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            metadata.remove(field);
        }
    }
    if let Some(object) = live.as_object_mut() {
        object.remove("status");
    }
    let restored = serde_json::from_value::<DynamicObject>(live)
        .map_err(|e| e.to_string())
        .map(|object| async move { api.create(&kube::api::PostParams::default(), &object).await });
    match restored {
        Ok(create) => match create.await {
            Ok(_) => format!("{failed}; the object as it was is created again"),
            Err(e) => format!(
                "{failed}; creating it again as it was failed too: {}",
                describe(&e)
            ),
        },
        Err(e) => format!("{failed}; it cannot be created again as it was: {e}"),
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

/// Discovers again until every kind that the just-established CRDs of `batch` define is
/// served, and resolves the pending objects of those kinds. Discovery can lag behind a
/// CRD's `Established` condition by a few refreshes, so one is not enough: it looks
/// again with a growing pause (50 ms doubling, at most 2 s) until `timeout`.
async fn discover_new_kinds(
    resolver: &Resolver,
    batch: &[Change],
    pending: &mut BTreeMap<usize, Change>,
    timeout: Duration,
) -> Result<(), Error> {
    let started = Instant::now();
    use backon::BackoffBuilder;
    let mut pauses =
        crate::duration::doubling(Duration::from_millis(50), Duration::from_secs(2)).build();
    loop {
        resolver
            .refresh()
            .await
            .map_err(|e| Error::Discovery(e.to_string()))?;
        for change in pending.values_mut().filter(|c| c.kind.is_none()) {
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
                .values()
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
        tokio::time::sleep(pauses.next().unwrap_or(Duration::from_secs(2))).await;
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
