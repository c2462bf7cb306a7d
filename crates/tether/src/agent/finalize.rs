//! Deleting an Application. While its `spec.deletionPolicy` deletes what it applied, it
//! carries tether's finalizer ([`FINALIZER`]), so that its deletion waits for an agent: the
//! set is rendered at the revision last applied for its PreDelete and PostDelete hooks, and
//! deleted as `apply` deletes a set (PreDelete hooks, members in reverse stages and waves,
//! PostDelete hooks, what hooks left, the parent); then the finalizer is removed and the
//! Application goes. A policy that keeps the objects (Orphan) carries no finalizer, so the
//! Application goes at once, with or without an agent. Start at [`finalize`].

use std::sync::Arc;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;

use super::reconcile::write_status;
use super::report::publish;
use super::{Context, Error, jitter, now_rfc3339, status};
use crate::app::{fetch, plan_options_for, render_app};
use crate::application::{
    Application, ConditionStatus, ConditionType, DeletionPolicy, Reason, application_key,
};
use crate::apply::{ApplyOptions, apply};
use crate::cluster::describe;
use crate::plan::Action as PlanAction;

/// The finalizer that makes an Application's deletion wait until its objects are deleted
/// (Argo CD's is `resources-finalizer.argocd.argoproj.io`, Flux's `finalizers.fluxcd.io`).
pub const FINALIZER: &str = "tether.dev/delete-objects";

/// Deletes the objects without rendering the revision for its deletion hooks (none run):
/// for a repository or revision that cannot be had any more.
pub const WITHOUT_HOOKS_ANNOTATION: &str = "tether.dev/delete-without-hooks";

/// What deleting `app` does to its objects, MirrorPrune resolved.
fn policy_of(app: &Application) -> DeletionPolicy {
    app.spec
        .deletion_policy
        .resolved(app.spec.sync_policy.prune)
}

pub fn has_finalizer(app: &Application) -> bool {
    app.finalizers().iter().any(|f| f == FINALIZER)
}

/// `app`'s finalizers but tether's.
pub fn others(app: &Application) -> Vec<String> {
    app.finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .cloned()
        .collect()
}

/// Writes `app`'s finalizers, if it has not changed since it was read (a merge patch with
/// its resourceVersion).
pub async fn patch_finalizers(
    client: &kube::Client,
    app: &Application,
    finalizers: Vec<String>,
) -> Result<Application, kube::Error> {
    let api: Api<Application> =
        Api::namespaced(client.clone(), &app.namespace().unwrap_or_default());
    let patch = json!({
        "metadata": {"resourceVersion": app.resource_version(), "finalizers": finalizers}
    });
    api.patch(
        &app.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
}

/// Gives `app` the finalizer when its deletion is to delete its objects, and takes it away
/// when not (Orphan); the Application as written (one request, when that changes).
pub(super) async fn keep_finalizer(
    ctx: &Context,
    app: Arc<Application>,
) -> Result<Arc<Application>, Error> {
    let wanted = policy_of(&app) != DeletionPolicy::Orphan;
    if wanted == has_finalizer(&app) {
        return Ok(app);
    }
    let mut finalizers = others(&app);
    if wanted {
        finalizers.push(FINALIZER.into());
    }
    Ok(Arc::new(set_finalizers(ctx, &app, finalizers).await?))
}

/// Writes `app`'s finalizers, if it has not changed since it was read.
async fn set_finalizers(
    ctx: &Context,
    app: &Application,
    finalizers: Vec<String>,
) -> Result<Application, Error> {
    match patch_finalizers(&ctx.client, app, finalizers).await {
        Ok(written) => {
            if let Some(version) = written.resource_version() {
                ctx.memory.with(&application_key(app), |remembered| {
                    remembered.seen_version = Some(version)
                });
            }
            Ok(written)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            Err(Error::StaleStatus(app.name_any()))
        }
        Err(e) => Err(Error::Status(app.name_any(), describe(&e))),
    }
}

/// An Application being deleted: its objects are deleted (or kept) as its policy says, then
/// its finalizer is removed. A deletion that fails keeps the finalizer, says why in the
/// status and an Event, and is tried again after a backoff.
pub(super) async fn finalize(ctx: &Context, app: &Application) -> Result<Action, Error> {
    if !has_finalizer(app) {
        // Someone else's finalizer holds it; nothing of tether's is left to do.
        return Ok(Action::await_change());
    }
    let outcome = match policy_of(app) {
        _ if super::reconcile::confined(&ctx.options, app).is_err() => Ok(
            "this agent may not act outside its namespace: the objects are left as they are".into(),
        ),
        DeletionPolicy::Orphan => {
            Ok("spec.deletionPolicy is Orphan: its objects are kept in the cluster".into())
        }
        _ if app.spec.suspend => Ok(
            "spec.suspend is true: its objects are kept in the cluster (as Flux does for a suspended Kustomization)"
                .into(),
        ),
        DeletionPolicy::Delete | DeletionPolicy::WaitForTermination | DeletionPolicy::MirrorPrune => {
            delete_objects(ctx, app).await
        }
    };
    match outcome {
        Ok(message) => {
            publish(ctx, app, EventType::Normal, "Deleted", message).await;
            set_finalizers(ctx, app, others(app)).await?;
            ctx.forget_set(app);
            Ok(Action::await_change())
        }
        Err(message) => deletion_failed(ctx, app, message).await,
    }
}

/// Says why the deletion failed (status and Event) and when it is tried again.
async fn deletion_failed(
    ctx: &Context,
    app: &Application,
    message: String,
) -> Result<Action, Error> {
    let message = format!(
        "{message}; tried again after a backoff. To delete the Application and keep its objects: set spec.deletionPolicy: Orphan"
    );
    publish(
        ctx,
        app,
        EventType::Warning,
        "DeletionFailed",
        message.clone(),
    )
    .await;
    let mut status = app.status.clone().unwrap_or_default();
    status.failures = status.failures.saturating_add(1);
    let failures = status.failures;
    status::set_condition(
        &mut status,
        app,
        ConditionType::Ready,
        ConditionStatus::False,
        Reason::DeletionFailed,
        &message,
        &now_rfc3339(),
    );
    write_status(ctx, app, status).await?;
    Ok(Action::requeue(
        jitter(status::failure_backoff(app, failures)).max(Duration::from_secs(1)),
    ))
}

/// Deletes what `app` applied: renders its last applied revision for its deletion hooks,
/// plans every member for deletion and deletes the set. A sentence of what it did.
async fn delete_objects(ctx: &Context, app: &Application) -> Result<String, String> {
    let destination = ctx.clusters.for_app(app).await?;
    let client = crate::tenancy::client_for(
        &destination.target.client,
        app,
        ctx.options.require_service_account,
    )?;
    let resolver = &destination.target.resolver;
    let hooks = deletion_hooks(ctx, app, resolver).await?;
    let mut plan_options = plan_options_for(&ctx.pipeline, app);
    plan_options.deleting = true;
    let planned = crate::plan::plan(&client, resolver, hooks, &plan_options)
        .await
        .map_err(|e| destination.target.context(e.to_string()))?;
    let kept = kept_count(&planned);
    let prunes = planned
        .changes
        .iter()
        .filter(|c| c.action == PlanAction::Prune)
        .map(|c| c.key.clone());
    destination
        .drift
        .expect_pruned(&planned.applyset.id, prunes);
    let options = ApplyOptions {
        prune: true,
        allow_empty: true,
        concurrency: ctx.options.concurrency,
        delete_set: true,
        // Each wave gone with what it owns (a Deployment's Pods) before the next.
        foreground: true,
        health_rules: super::sync::health_rules(app),
        ..Default::default()
    };
    let report = apply(&client, resolver, planned, &options)
        .await
        .map_err(|e| destination.target.context(e.to_string()))?;
    for hook in report.hooks.iter().filter(|h| !h.succeeded) {
        publish(ctx, app, EventType::Warning, "HookFailed", hook.to_string()).await;
    }
    said(&report, kept).map_err(|message| destination.target.context(message))
}

/// The hooks of the revision last applied (none when nothing was): the members to delete
/// are whatever the set's inventory holds.
async fn deletion_hooks(
    ctx: &Context,
    app: &Application,
    resolver: &crate::cluster::discovery::Resolver,
) -> Result<Vec<crate::object::Object>, String> {
    let Some(commit) = app
        .status
        .as_ref()
        .and_then(|s| s.last_applied_revision.as_deref())
    else {
        return Ok(Vec::new());
    };
    // The way out when the revision cannot be had any more (a repository gone).
    if app
        .annotations()
        .get(WITHOUT_HOOKS_ANNOTATION)
        .map(String::as_str)
        == Some("true")
    {
        return Ok(Vec::new());
    }
    let failed = |what: &str, e: crate::app::Error| {
        format!(
            "cannot {what} revision {commit} for its deletion hooks: {}; to delete the objects without hooks, annotate the Application {WITHOUT_HOOKS_ANNOTATION}=true",
            String::from(e)
        )
    };
    let pin = Some(commit);
    let (revision, tree) = fetch(&ctx.client, &ctx.pipeline, app, pin, Duration::ZERO)
        .await
        .map_err(|e| failed("fetch", e))?;
    let objects = render_app(&ctx.client, resolver, &ctx.pipeline, app, &revision, tree)
        .await
        .map_err(|e| failed("render", e))?;
    Ok(objects
        .into_iter()
        .filter(|o| crate::object::is_hook(&o.manifest))
        .collect())
}

/// The members a deletion keeps (`Delete=false`, …), not the hooks it skips.
pub fn kept_count(plan: &crate::plan::Plan) -> usize {
    plan.skipped
        .iter()
        .filter(|s| s.why.contains("kept in the cluster"))
        .count()
}

/// What a deletion did, in a sentence, or why it failed.
fn said(report: &crate::apply::ApplyReport, kept: usize) -> Result<String, String> {
    let failed: Vec<String> = report
        .results
        .iter()
        .filter_map(|r| Some(format!("{}: {}", r.key, r.error.as_ref()?)))
        .collect();
    if let Some(first) = failed.first() {
        let count = failed.len();
        return Err(format!(
            "{count} object(s) could not be deleted, e.g. {first}"
        ));
    }
    if let Some(hook) = report.hooks.iter().find(|h| !h.succeeded) {
        return Err(hook.to_string());
    }
    Ok(format!(
        "deleted its {} object(s) ({kept} kept by their annotations), {} deletion hook(s) ran",
        report.pruned,
        report.hooks.len()
    ))
}
