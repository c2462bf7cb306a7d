//! The one screen of pull mode: a reconcile of one Application goes through the shard
//! gate, reads the Application fresh (one being deleted goes to [`super::finalize`]),
//! checks suspend and dependencies, syncs
//! ([`super::sync`]), writes the status [`super::status`] decides, tells what it says, and
//! says when to look again. Start at [`reconcile`].

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::report::{notify, publish, report_late_failure, set_commit_status};
use super::slots::Permit;
use super::sync::sync;
use super::{
    AgentOptions, Context, Error, Failure, MIN_REQUEUE, Outcome, STATUS_MANAGER, commit_status,
    jitter, now_rfc3339, shard, status, sync_requested,
};
use crate::application::{
    self, Application, ApplicationStatus, ConditionStatus, ConditionType, SyncState,
    application_key,
};
use crate::cluster::describe;
use crate::duration::parse_duration;

/// One reconcile of one Application: resolve, render, plan, apply when allowed, record.
pub(super) async fn reconcile(
    cached: Arc<Application>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let _admitted = match admit(&ctx, &cached).await {
        Ok(Some(admitted)) => admitted,
        Ok(None) => return Ok(Action::await_change()),
        Err(action) => return Ok(action),
    };
    // The namespaces' SyncWindows are read first (a moment after the agent starts).
    if !super::windows::ready(&ctx) {
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let started = std::time::Instant::now();
    let Some(app) = read_fresh(&ctx, &cached).await? else {
        return Ok(Action::await_change());
    };
    if app.meta().deletion_timestamp.is_some() {
        return super::finalize::finalize(&ctx, &app).await;
    }
    // An Application this agent may not act on gets no finalizer of its (its sync fails).
    let app = match confined(&ctx.options, &app) {
        Ok(()) => super::finalize::keep_finalizer(&ctx, app).await?,
        Err(_) => app,
    };
    report_late_failure(&ctx, &app).await;
    take_refresh(&ctx, &app);
    let mut interval =
        parse_duration(&app.spec.sync_policy.interval).unwrap_or(Duration::from_secs(60));
    // Image updates are scanned when it is reconciled: at least as often as they ask.
    if let Some(scan) = super::images::interval(&app) {
        interval = interval.min(scan);
    }
    let status = app.status.clone().unwrap_or_default();
    if app.spec.suspend {
        let status = status::suspended(&app, status, &now_rfc3339());
        write_status(&ctx, &app, status).await?;
        return Ok(Action::requeue(interval));
    }
    if let Some(waiting) = unready_dependency(&ctx, &app).await {
        let status = status::waiting_for(&app, status, &waiting, &now_rfc3339());
        write_status(&ctx, &app, status).await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let mut status = status;
    let gate = match windows_gate(&ctx, &app, &mut status, &mut interval) {
        Ok(gate) => gate,
        Err(message) => {
            ctx.count_reconcile(&app, "failed", started);
            return record_failure(&ctx, &app, status, message.into(), interval).await;
        }
    };
    super::images::update_images(&ctx, &app).await;
    match sync(&ctx, &app, &gate).await {
        Ok(outcome) => {
            let result = if outcome.applied.is_some() {
                "applied"
            } else {
                "unchanged"
            };
            ctx.count_reconcile(&app, result, started);
            record_success(&ctx, &app, status, outcome, interval).await
        }
        Err(failure) => {
            ctx.count_reconcile(&app, "failed", started);
            record_failure(&ctx, &app, status, failure, interval).await
        }
    }
}

/// A slot among `--concurrency` (the urgent first, then the polls, in order), taken first:
/// a reconcile that waits for its turn holds up no shard's handover; then, sharded, the
/// Application's shard, kept while the reconcile runs. `Ok(None)`: the agent stops, or
/// another agent holds the shard; `Err(action)`: the shard's state is stale, look again.
async fn admit(
    ctx: &Context,
    cached: &Application,
) -> Result<Option<(Permit, Option<shard::ShardGuard>)>, Action> {
    let Some(slot) = ctx.slots.acquire_for(&application_key(cached)).await else {
        return Ok(None);
    };
    let in_shard = match &ctx.shards {
        Some(shards) => match shards.begin(&application_key(cached)) {
            shard::Begin::Act(guard) => Some(guard),
            // Reconciled again when this agent takes the shard.
            shard::Begin::NotHeld => return Ok(None),
            shard::Begin::Stale => return Err(Action::requeue(shards.options().renew_every)),
        },
        None => None,
    };
    Ok(Some((slot, in_shard)))
}

/// What the Application's sync windows let run now, written into `status`; while they
/// block, `interval` is cut to when they open. A window that cannot be read fails the
/// reconcile, naming it.
fn windows_gate(
    ctx: &Context,
    app: &Application,
    status: &mut ApplicationStatus,
    interval: &mut Duration,
) -> Result<crate::windows::Gate, String> {
    let gate = super::windows::gate_for(ctx, app)?;
    if let Some(opens) = gate.next_open {
        let until = opens.duration_since(jiff::Timestamp::now());
        let until = Duration::try_from(until).unwrap_or_default();
        *interval = (*interval).min(until + Duration::from_secs(1));
    }
    // A window just opened (its time came, or it was changed or deleted): what waited is
    // looked for in Git anew, not in a listing from before.
    let was_closed = status.sync_window.as_ref().is_some_and(|w| !w.open);
    if was_closed && gate.open {
        ctx.pipeline.listings.forget(&app.spec.source.repo_url);
    }
    status.sync_window = super::windows::status_of(&gate);
    Ok(gate)
}

/// The Application as this agent last wrote it, or newer; `None` when it is gone.
///
/// The cache may not hold this agent's last status write yet: unless it holds the newest
/// version this agent has seen, the Application itself is read (one request, none per
/// object), so the status built from it starts from the newest one and its write does not
/// conflict. (A write by someone else that the cache has not shown yet makes the status
/// write fail on its resourceVersion, and the reconcile runs again.)
pub(super) async fn read_fresh(
    ctx: &Context,
    cached: &Application,
) -> Result<Option<Arc<Application>>, Error> {
    let api: Api<Application> =
        Api::namespaced(ctx.client.clone(), &cached.namespace().unwrap_or_default());
    let key = application_key(cached);
    let fresh = cached.resource_version().is_some()
        && ctx
            .memory
            .with(&key, |remembered| remembered.seen_version.clone())
            == cached.resource_version();
    let read = if fresh {
        Ok(Some(cached.clone()))
    } else {
        api.get_opt(&cached.name_any()).await
    };
    match read {
        Ok(Some(app)) => {
            if let Some(version) = app.resource_version() {
                ctx.memory
                    .with(&key, |remembered| remembered.seen_version = Some(version));
            }
            Ok(Some(Arc::new(app)))
        }
        Ok(None) => {
            // Deleted: a failure it could not report has no one left to tell.
            ctx.forget(&key);
            Ok(None)
        }
        Err(e) => Err(Error::Status(cached.name_any(), describe(&e))),
    }
}

/// Another agent received a push for this Application (its refresh annotation changed):
/// the listing of its repository's refs is read anew.
pub(super) fn take_refresh(ctx: &Context, app: &Application) {
    let Some(refresh) = app.annotations().get(application::REFRESH_ANNOTATION) else {
        return;
    };
    let new = ctx.memory.with(&application_key(app), |remembered| {
        let new = remembered.refresh.as_ref() != Some(refresh);
        remembered.refresh = Some(refresh.clone());
        new
    });
    if new {
        ctx.pipeline.listings.forget(&app.spec.source.repo_url);
    }
}

/// Writes the status of a sync that went through, tells what it says to tell, and says
/// when to look again.
pub(super) async fn record_success(
    ctx: &Context,
    app: &Application,
    status: ApplicationStatus,
    outcome: Outcome,
    interval: Duration,
) -> Result<Action, Error> {
    let set_id = outcome.apply_set.id.clone();
    let revision = outcome.revision.commit.clone();
    let health = outcome.health;
    let destination = outcome.destination;
    if let Some(entry) = &outcome.applied {
        let message = entry.message.clone().unwrap_or_default();
        publish(ctx, app, EventType::Normal, "Synced", message).await;
    }
    let after = status::on_success(
        app,
        status,
        status::Succeeded {
            revision: outcome.revision,
            sync: outcome.sync,
            health,
            applied: outcome.applied,
            apply_set: outcome.apply_set,
            drifted_meanwhile: destination.drift.is_drifted(&set_id),
        },
        sync_requested(app),
        &now_rfc3339(),
    );
    let sync_state = after.status.sync.as_ref().map(|s| s.status.clone());
    ctx.record_state(
        app,
        sync_state.as_deref().unwrap_or(SyncState::Unknown.as_str()),
        &health.to_string(),
    );
    let synced = after.synced;
    write_status(ctx, app, after.status).await?;
    // Told once the status that records them is written (a failed write retries the
    // reconcile, which would tell them again).
    for (event, message) in after.notices {
        notify(ctx, app, event, Some(&revision), message);
    }
    if synced {
        let summary = after.summary;
        set_commit_status(ctx, app, &revision, commit_status::State::Success, || {
            format!("Synced, {health}: {summary}")
        });
    }
    // Settled: a member's status change reads health at once from now on.
    destination.drift.follow_health(&set_id, synced);
    let mut next = jitter(interval);
    if let Some(backoff) = ctx.progress_backoff(app, health) {
        next = next.min(backoff);
    }
    if let Some(period) = ctx.options.verify_interval {
        let verify = destination.drift.until_verification(&set_id, period);
        next = next.min(verify.max(MIN_REQUEUE));
    }
    Ok(Action::requeue(next))
}

/// Writes the status of a failed sync, tells the first failure of a streak, and says when
/// to retry.
pub(super) async fn record_failure(
    ctx: &Context,
    app: &Application,
    status: ApplicationStatus,
    failure: Failure,
    interval: Duration,
) -> Result<Action, Error> {
    let message = failure.message;
    let revision_failed = failure.revision.clone();
    let after = status::on_failure(
        app,
        status,
        status::Failed {
            message: message.clone(),
            entry: failure.entry,
            revision: failure.revision,
            out_of_sync: failure.out_of_sync,
        },
        &now_rfc3339(),
    );
    let sync_state = after.status.sync.as_ref().map(|s| s.status.clone());
    let health = after.status.health.clone();
    ctx.record_state(
        app,
        sync_state.as_deref().unwrap_or(SyncState::Unknown.as_str()),
        health.as_deref().unwrap_or("Unknown"),
    );
    let (status, stalled, tell) = (after.status, after.stalled, after.tell);
    let published = publish(ctx, app, EventType::Warning, "SyncFailed", message.clone()).await;
    let failures = status.failures;
    let written = write_status(ctx, app, status).await;
    if let (Ok(()), Some(revision)) = (&written, revision_failed.as_deref()) {
        set_commit_status(ctx, app, revision, commit_status::State::Failure, || {
            format!("Sync failed: {message}")
        });
    }
    if let (Some((revision, message)), Ok(())) = (tell, &written) {
        let event = super::notify::Event::SyncFailed;
        notify(ctx, app, event, revision.as_deref(), message);
    }
    if !published || matches!(written, Err(Error::Status(..))) {
        let late = (now_rfc3339(), message);
        ctx.memory.with(&application_key(app), |remembered| {
            remembered.late_failure = Some(late)
        });
    }
    written?;
    let wait = if stalled {
        interval
    } else {
        jitter(status::failure_backoff(app, failures))
    };
    Ok(Action::requeue(wait))
}

/// A namespaced agent applies only to its own namespace of its own cluster: `Err` says
/// why this Application asks for more.
pub(super) fn confined(options: &AgentOptions, app: &Application) -> Result<(), String> {
    let (true, Some(namespace)) = (options.namespaced, options.namespace.as_deref()) else {
        return Ok(());
    };
    let destination = &app.spec.destination;
    if destination.namespace != namespace {
        return Err(format!(
            "this agent is confined to namespace {namespace} (--namespaced): \
             spec.destination.namespace {:?} must be {namespace:?}",
            destination.namespace
        ));
    }
    if destination.cluster_name().is_some() {
        return Err(format!(
            "this agent is confined to namespace {namespace} of its own cluster (--namespaced): \
             spec.destination.cluster must be unset"
        ));
    }
    Ok(())
}

/// The first dependency that is not Ready, if any.
pub(super) async fn unready_dependency(ctx: &Context, app: &Application) -> Option<String> {
    let namespace = app.namespace().unwrap_or_default();
    let apps: Api<Application> = Api::namespaced(ctx.client.clone(), &namespace);
    for dependency in &app.spec.depends_on {
        // One being deleted is not Ready.
        let ready = apps
            .get_opt(&dependency.name)
            .await
            .ok()
            .flatten()
            .filter(|d| d.metadata.deletion_timestamp.is_none())
            .and_then(|d| d.status)
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == ConditionType::Ready && c.status == ConditionStatus::True)
            });
        if !ready {
            return Some(dependency.name.clone());
        }
    }
    None
}

pub(super) async fn write_status(
    ctx: &Context,
    app: &Application,
    status: ApplicationStatus,
) -> Result<(), Error> {
    if app.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<Application> =
        Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
    // The status is computed from the Application as this reconcile saw it: the
    // resourceVersion makes the write fail if it changed since (no lost history entry).
    let patch = json!({
        "apiVersion": Application::api_version(&()),
        "kind": "Application",
        "metadata": {"name": app.name_any(), "resourceVersion": app.resource_version()},
        "status": status
    });
    match api
        .patch_status(
            &app.name_any(),
            &PatchParams::apply(STATUS_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(written) => {
            if let Some(version) = written.resource_version() {
                ctx.memory.with(&application_key(app), |remembered| {
                    remembered.seen_version = Some(version)
                });
            }
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            Err(Error::StaleStatus(app.name_any()))
        }
        Err(e) => Err(Error::Status(app.name_any(), describe(&e))),
    }
}
