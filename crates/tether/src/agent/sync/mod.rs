//! One sync of one Application, the ways that change nothing first: an idle poll, a
//! correction of just the objects that drifted, a revision that renders what was applied;
//! else a full sync (render, plan, apply, health) with the drift watches set up before it.
//! [`decide`](super::decide) chooses the way; start at [`sync`].

mod apply;
mod full;
mod health;
mod targeted;

use std::time::{Duration, Instant};

use kube::ResourceExt;

use super::clusters::Connected;
use super::decide::{self, Decision, LISTING_MAX_AGE};
use super::reconcile::confined;
use super::{Acting, Application, Context, Failure, Outcome, sync_requested};
use crate::app::{digest_of, fetch, git_source, list_remote, render_app};
use crate::application::{
    ApplicationStatus, ApplySetReference, SyncState, SyncStatus, health_from,
};
use crate::duration::parse_duration;
use crate::health::HealthStatus;
use crate::object::Object;
use crate::source::git::Revision;
use crate::source::recording::Recording;
use crate::source::tree::Tree;
use crate::tenancy;
use full::full_sync;
use health::assess_set;
use targeted::{Targeted, correct_drift};

/// What the last full sync left in the status: the status, its sync state and its set.
type Settled<'a> = (&'a ApplicationStatus, &'a SyncStatus, &'a ApplySetReference);

/// Resolve, render, plan and (when the policy allows) apply; an `Err` is a message for
/// the status, saying what failed.
pub(super) async fn sync(
    ctx: &Context,
    app: &Application,
    gate: &crate::windows::Gate,
) -> Result<Outcome, Failure> {
    let name = app.name_any();
    let spec = &app.spec;
    spec.check()?;
    confined(&ctx.options, app)?;
    let destination = ctx.clusters.for_app(app).await?;
    let dest = &destination;
    // The client that plans, applies and reads health for this Application throughout the
    // sync (its ServiceAccount's, when it names one); refused here, before anything is
    // fetched, when it names none and the agent requires one.
    let client = tenancy::client_for(
        &dest.target.client,
        app,
        ctx.options.require_service_account,
    )?;
    let at = &Acting {
        dest,
        client: &client,
        gate,
    };
    let fetch_started = Instant::now();
    let applyset_id = crate::inventory::ApplySet::new(&name, &spec.destination.namespace).id;
    let decision = decide::decide(&facts(ctx, at, app, &applyset_id));
    // What the last full sync left, for the ways that change nothing.
    let settled = app
        .status
        .as_ref()
        .and_then(|s| Some((s, s.sync.as_ref()?, s.apply_set.as_ref()?)))
        .filter(|_| decision.settled);
    if decision.idle_poll
        && let Some(settled) = settled
        && let Some(outcome) = idle_poll(ctx, at, app, &applyset_id, settled, &decision).await
    {
        return Ok(outcome);
    }
    let pin = decision.pin.as_deref();
    let (revision, tree) = fetch(
        &ctx.client,
        &ctx.pipeline,
        app,
        pin,
        decision.listing_max_age,
    )
    .await?;
    // A failure from here on is the failure of this revision: the status names it.
    let attempted = revision.commit.clone();
    ctx.metrics
        .git_fetch_seconds
        .observe(fetch_started.elapsed().as_secs_f64());
    let at_revision = (revision, tree);
    let result = sync_revision(ctx, at, app, &applyset_id, &decision, settled, at_revision).await;
    result.map_err(|mut failure| {
        failure.revision.get_or_insert(attempted);
        failure
    })
}

/// An idle poll: the listing of the remote's refs (shared, a few seconds old at most, or
/// taken now) shows the commit already applied. No commit is fetched or read then.
/// `None`: it does not (or the remote cannot be listed: the fetch then says why).
async fn idle_poll(
    ctx: &Context,
    at: &Acting<'_>,
    app: &Application,
    applyset_id: &str,
    settled: Settled<'_>,
    decision: &Decision,
) -> Option<Outcome> {
    let (status, _, _) = settled;
    let status_changed = at.dest.drift.may_skip(applyset_id)?;
    let applied = status.revision_info.as_ref()?;
    // The shared listing, else a new one (polls of one repository wait for one listing);
    // any failure is the fetch's to report.
    let listed = list_remote(&ctx.client, &ctx.pipeline, app, decision.listing_max_age)
        .await
        .ok()
        .flatten()?;
    if listed.commit != applied.commit {
        return None;
    }
    let revision = Revision {
        summary: applied.message.clone(),
        author: applied.author.clone(),
        ..listed
    };
    Some(unchanged_outcome(ctx, at, app, applyset_id, settled, status_changed, revision).await)
}

/// The sync of a fetched revision: a correction of just what drifted, or nothing when it
/// renders what was applied, else a full sync.
async fn sync_revision(
    ctx: &Context,
    at: &Acting<'_>,
    app: &Application,
    applyset_id: &str,
    decision: &Decision,
    settled: Option<Settled<'_>>,
    (revision, tree): (Revision, Box<dyn Tree>),
) -> Result<Outcome, Failure> {
    let dest = at.dest;
    let mut tree = Some(tree);
    let mut rendered = None;
    // The watches reported drift that this sync took on (not for the backstop to count).
    let mut reported_drift = false;
    // Drift with selfHeal, on the revision applied: correct just the objects that drifted.
    if decision.correct_drift
        && let Some(settled) = settled
        && let Some(drifted) = dest.drift.take_drifted(applyset_id)
    {
        let tree = tree.take().expect("the tree is rendered once");
        let at_revision = (revision.clone(), tree);
        match correct_drift(ctx, at, app, applyset_id, at_revision, drifted, settled).await {
            Ok(Targeted::Done(outcome)) => return Ok(*outcome),
            Ok(Targeted::Full(objects, digest)) => {
                rendered = Some((objects, digest));
                reported_drift = true;
            }
            Err(message) => {
                dest.drift.require_full_sync(applyset_id);
                return Err(message);
            }
        }
    }
    if rendered.is_none()
        && decision.stop_if_same_render
        && let Some(settled) = settled
        && let Some(status_changed) = dest.drift.may_skip(applyset_id)
    {
        let (same, render) =
            renders_the_same(ctx, at, app, applyset_id, settled, &revision, &mut tree).await?;
        rendered = render;
        if same {
            return Ok(unchanged_outcome(
                ctx,
                at,
                app,
                applyset_id,
                settled,
                status_changed,
                revision,
            )
            .await);
        }
    }
    let applied_digest = dest.drift.applied_digest(applyset_id);
    let vouched = dest.drift.begin_full_sync(applyset_id);
    let rendered = match rendered {
        Some(rendered) => rendered,
        None => {
            let tree = tree.take().expect("the tree is rendered once");
            render_digested(ctx, dest, app, applyset_id, &revision, tree).await?
        }
    };
    // The watches vouched that nothing changed, and the cluster holds this very render:
    // whatever this plan finds different, they missed.
    let check_watches = vouched && !reported_drift && applied_digest == Some(rendered.1);
    full_sync(ctx, at, app, applyset_id, revision, rendered, check_watches).await
}

/// Whether `revision` makes what the cluster holds: it is the revision applied, or it
/// renders exactly what was applied (then its render, which the full sync uses otherwise).
async fn renders_the_same(
    ctx: &Context,
    at: &Acting<'_>,
    app: &Application,
    applyset_id: &str,
    (status, _, _): Settled<'_>,
    revision: &Revision,
    tree: &mut Option<Box<dyn Tree>>,
) -> Result<(bool, Option<(Vec<Object>, [u8; 32])>), String> {
    if status.last_applied_revision.as_deref() == Some(revision.commit.as_str()) {
        return Ok((true, None));
    }
    let tree = tree.take().expect("the tree is rendered once");
    if reads_the_same(at.dest, app, applyset_id, tree.as_ref()) {
        ctx.metrics.renders_skipped.inc();
        return Ok((true, None));
    }
    let (objects, digest) = render_digested(ctx, at.dest, app, applyset_id, revision, tree).await?;
    let same = at.dest.drift.applied_digest(applyset_id) == Some(digest);
    Ok((same, Some((objects, digest))))
}

/// Whether `tree` holds, at every path the render of what was applied read, what that
/// render read: then it renders the same. Not asked of an Application that decrypts (its
/// keys come from a Secret, outside the tree).
fn reads_the_same(dest: &Connected, app: &Application, applyset_id: &str, tree: &dyn Tree) -> bool {
    if app.spec.decryption.is_some() {
        return false;
    }
    let applied = dest.drift.applied_digest(applyset_id);
    let inputs = dest.render_inputs.lock().expect("not poisoned");
    inputs
        .get(applyset_id)
        .is_some_and(|(digest, inputs)| Some(*digest) == applied && inputs.same_in(tree))
}

/// What the status and the drift watches say before a sync of set `applyset_id`.
fn facts(ctx: &Context, at: &Acting<'_>, app: &Application, applyset_id: &str) -> decide::Facts {
    let dest = at.dest;
    let status = app.status.as_ref();
    let policy = &app.spec.sync_policy;
    let spec_observed = status.is_some_and(|s| s.observed_generation == app.metadata.generation);
    let drifted = dest.drift.is_drifted(applyset_id);
    decide::Facts {
        sync_requested: sync_requested(app),
        spec_observed,
        synced: status.is_some_and(|s| {
            s.apply_set.is_some()
                && s.sync
                    .as_ref()
                    .is_some_and(|sync| sync.status == SyncState::Synced)
        }),
        last_applied: status.and_then(|s| s.last_applied_revision.clone()),
        described: status.and_then(|s| Some(s.revision_info.as_ref()?.commit.clone())),
        drifted,
        // Asked only when it matters (a hand edit waiting to be put back).
        change_announced: drifted
            && git_source(&ctx.pipeline, app, Duration::ZERO)
                .is_ok_and(|source| source.change_announced()),
        may_skip: dest.drift.may_skip(applyset_id),
        verification_due: ctx
            .options
            .verify_interval
            .is_some_and(|period| dest.drift.verification_due(applyset_id, period)),
        automated: policy.automated,
        // A sync window that blocks puts hand edits back only when it says selfHeal.
        self_heal: policy.self_heal && (at.gate.open || at.gate.self_heal),
        interval: parse_duration(&policy.interval).unwrap_or(LISTING_MAX_AGE),
    }
}

/// The outcome of a sync that changes nothing: the settled status carried over to
/// `revision`, with health read again only when the watches saw a member's status change.
async fn unchanged_outcome(
    ctx: &Context,
    at: &Acting<'_>,
    app: &Application,
    applyset_id: &str,
    settled: Settled<'_>,
    status_changed: bool,
    revision: Revision,
) -> Outcome {
    let dest = at.dest;
    let (status, sync, apply_set) = settled;
    // Read again when a member's status changed, and while not Healthy (a rollout in
    // progress: only the objects not Healthy are read).
    let healthy = status.health.as_deref().map(health_from) == Some(HealthStatus::Healthy);
    let health = if status_changed || !healthy {
        assess_set(ctx, at.dest, at.client, applyset_id, &health_rules(app)).await
    } else {
        status
            .health
            .as_deref()
            .map_or(HealthStatus::Unknown, health_from)
    };
    let mut sync = sync.clone();
    sync.revision = revision.commit.clone();
    Outcome {
        revision,
        sync,
        health,
        applied: None,
        apply_set: apply_set.clone(),
        destination: dest.clone(),
    }
}

/// The Application's health rules (checked valid before the sync: none when they are not).
pub(super) fn health_rules(app: &Application) -> crate::health::rules::Rules {
    app.spec.health_rules().unwrap_or_default()
}

/// Renders as [`render_app`] does, with the render's [`digest_of`]; remembers for set
/// `applyset_id` what the render read of the tree (see [`reads_the_same`]).
async fn render_digested(
    ctx: &Context,
    dest: &Connected,
    app: &Application,
    applyset_id: &str,
    revision: &Revision,
    tree: Box<dyn Tree>,
) -> Result<(Vec<Object>, [u8; 32]), String> {
    let (tree, recorded) = Recording::new(tree);
    let objects = render_app(
        &ctx.client,
        &dest.target.resolver,
        &ctx.pipeline,
        app,
        revision,
        Box::new(tree),
    )
    .await;
    let mut inputs = dest.render_inputs.lock().expect("not poisoned");
    let objects = match objects {
        Ok(objects) => objects,
        Err(err) => {
            inputs.remove(applyset_id);
            return Err(err.into());
        }
    };
    let digest = digest_of(&objects);
    match recorded.take() {
        Some(read) => inputs.insert(applyset_id.to_string(), (digest, read)),
        None => inputs.remove(applyset_id),
    };
    Ok((objects, digest))
}
