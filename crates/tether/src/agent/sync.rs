//! One sync of one Application, the ways that change nothing first: an idle poll, a
//! correction of just the objects that drifted, a revision that renders what was applied;
//! else a full sync (render, plan, apply, health) with the drift watches set up before it.
//! [`decide`](super::decide) chooses the way; start at [`sync`].

use super::*;
use application::{RunResult, SyncState, health_from};

/// Resolve, render, plan and (when the policy allows) apply; an `Err` is a message for
/// the status, saying what failed.
pub(super) async fn sync(ctx: &Context, app: &Application) -> Result<Outcome, Failure> {
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
    let client = &client;
    let at = &Acting { dest, client };
    let fetch_started = std::time::Instant::now();
    let applyset_id = crate::inventory::ApplySet::new(&name, &spec.destination.namespace).id;
    let decision = decide::decide(&facts(ctx, dest, app, &applyset_id));
    let (pin, listing_max_age) = (decision.pin.clone(), decision.listing_max_age);
    // What the last full sync left, for the ways that change nothing.
    let settled = app
        .status
        .as_ref()
        .and_then(|s| Some((s, s.sync.as_ref()?, s.apply_set.as_ref()?)))
        .filter(|_| decision.settled);
    // An idle poll: the shared listing of the remote's refs (a few seconds old at most)
    // shows the commit already applied. Nor is the Git cache opened then.
    if decision.idle_poll
        && let Some((status, sync, apply_set)) = settled
        && let Some(status_changed) = dest.drift.may_skip(&applyset_id)
        && let Some(applied) = status.revision_info.as_ref()
        && let Some(listed) = git_source(&ctx.pipeline, app, listing_max_age)
            .ok()
            .and_then(|source| source.recently_listed())
        && listed.commit == applied.commit
    {
        let revision = Revision {
            summary: applied.message.clone(),
            author: applied.author.clone(),
            ..listed
        };
        let settled = (status, sync, apply_set);
        return Ok(
            unchanged_outcome(ctx, at, &applyset_id, settled, status_changed, revision).await,
        );
    }
    let (revision, tree) = fetch(
        &ctx.client,
        &ctx.pipeline,
        app,
        pin.as_deref(),
        listing_max_age,
    )
    .await?;
    // A failure from here on is the failure of this revision: the status names it.
    let attempted = revision.commit.clone();
    let result: Result<Outcome, Failure> = async {
        let mut tree = Some(tree);
        ctx.metrics
            .git_fetch_seconds
            .observe(fetch_started.elapsed().as_secs_f64());

        let mut rendered = None;
        // The watches reported drift that this sync took on (not for the backstop to count).
        let mut reported_drift = false;
        // Drift with selfHeal, on the revision applied: correct just the objects that drifted.
        if decision.correct_drift
            && let Some(settled) = settled
            && let Some(drifted) = dest.drift.take_drifted(&applyset_id)
        {
            let tree = tree.take().expect("the tree is rendered once");
            match correct_drift(
                ctx,
                at,
                app,
                &applyset_id,
                (revision.clone(), tree),
                drifted,
                settled,
            )
            .await
            {
                Ok(Targeted::Done(outcome)) => return Ok(*outcome),
                Ok(Targeted::Full(objects, digest)) => {
                    rendered = Some((objects, digest));
                    reported_drift = true;
                }
                Err(message) => {
                    dest.drift.require_full_sync(&applyset_id);
                    return Err(message);
                }
            }
        }
        if rendered.is_none()
            && decision.stop_if_same_render
            && let Some((status, sync, apply_set)) = settled
            && let Some(status_changed) = dest.drift.may_skip(&applyset_id)
        {
            let same_revision =
                status.last_applied_revision.as_deref() == Some(revision.commit.as_str());
            let same_output = if same_revision {
                true
            } else {
                let tree = tree.take().expect("the tree is rendered once");
                let (objects, digest) = render_digested(ctx, dest, app, &revision, tree).await?;
                rendered = Some((objects, digest));
                dest.drift.applied_digest(&applyset_id) == Some(digest)
            };
            if same_output {
                let settled = (status, sync, apply_set);
                return Ok(unchanged_outcome(
                    ctx,
                    at,
                    &applyset_id,
                    settled,
                    status_changed,
                    revision,
                )
                .await);
            }
        }
        let applied_digest = dest.drift.applied_digest(&applyset_id);
        let vouched = dest.drift.begin_full_sync(&applyset_id);
        let rendered = match rendered {
            Some(rendered) => rendered,
            None => {
                let tree = tree.take().expect("the tree is rendered once");
                render_digested(ctx, dest, app, &revision, tree).await?
            }
        };
        // The watches vouched that nothing changed, and the cluster holds this very render:
        // whatever this plan finds different, they missed.
        let check_watches = vouched && !reported_drift && applied_digest == Some(rendered.1);
        full_sync(
            ctx,
            at,
            app,
            &applyset_id,
            revision,
            rendered,
            check_watches,
        )
        .await
    }
    .await;
    result.map_err(|mut failure| {
        failure.revision.get_or_insert(attempted);
        failure
    })
}

/// What the status and the drift watches say before a sync of set `applyset_id`.
pub(super) fn facts(
    ctx: &Context,
    dest: &Destination,
    app: &Application,
    applyset_id: &str,
) -> decide::Facts {
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
        self_heal: policy.self_heal,
        interval: parse_duration(&policy.interval).unwrap_or(LISTING_MAX_AGE),
    }
}

/// The outcome of a sync that changes nothing: the settled status carried over to
/// `revision`, with health read again only when the watches saw a member's status change.
pub(super) async fn unchanged_outcome(
    ctx: &Context,
    at: &Acting<'_>,
    applyset_id: &str,
    settled: (&ApplicationStatus, &SyncStatus, &ApplySetReference),
    status_changed: bool,
    revision: Revision,
) -> Outcome {
    let dest = at.dest;
    let (status, sync, apply_set) = settled;
    // Read again when a member's status changed, and while not Healthy (a rollout in
    // progress: only the objects not Healthy are read).
    let healthy = status.health.as_deref().map(health_from) == Some(HealthStatus::Healthy);
    let health = if status_changed || !healthy {
        assess_set(ctx, at.dest, at.client, applyset_id).await
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

/// Plans every object of the render against the cluster and applies when the policy
/// allows; records for the drift watch what the cluster now holds. With `check_watches`,
/// differences are drift the watches missed, and are reported as such.
pub(super) async fn full_sync(
    ctx: &Context,
    at: &Acting<'_>,
    app: &Application,
    applyset_id: &str,
    revision: Revision,
    (objects, digest): (Vec<crate::object::Object>, [u8; 32]),
    check_watches: bool,
) -> Result<Outcome, Failure> {
    let (dest, client) = (at.dest, at.client);
    let policy = &app.spec.sync_policy;
    let owner = kube::runtime::reflector::ObjectRef::from_obj(app);
    // Watch every kind of the render before planning it: from then on no write to a
    // member goes unseen, and this sync counts as watched from its start.
    let kinds = kinds_of(
        &dest.target.resolver,
        objects.iter().map(|o| (&o.manifest, &o.key.kind)),
    );
    dest.drift
        .watch_before_sync(owner.clone(), applyset_id, kinds, WATCH_LIST_TIMEOUT)
        .await;
    let planned = plan_app(
        client,
        &dest.target.resolver,
        &ctx.pipeline,
        app,
        objects,
        false,
    )
    .await
    .map_err(|m| dest.target.context(m))?;
    let mut planned = planned;
    // What this agent is about to apply, known before it writes (rule 12).
    dest.drift
        .expect_applied(applyset_id, applied_digests(&planned), true);
    // Objects another owner holds fail alone; the rest is synced (rule 13).
    let refused = std::mem::take(&mut planned.refused);
    if check_watches {
        ctx.metrics.drift_verifications.inc();
        report_missed(ctx, dest, app, applyset_id, &planned);
    }
    let summary = planned.summary();
    let apply_set = ApplySetReference {
        kind: "Secret".into(),
        name: planned.applyset.parent_name(),
        namespace: planned.applyset.namespace.clone(),
        id: planned.applyset.id.clone(),
    };
    dest.drift.register(
        owner.clone(),
        &planned.applyset.id,
        planned.changes.iter().filter_map(|c| c.kind.clone()),
    );
    // Kinds whose CRD comes with this set are served only once it is applied.
    let unserved: Vec<(crate::object::ObjectKey, serde_json::Value)> = planned
        .changes
        .iter()
        .filter(|c| c.kind.is_none())
        .filter_map(|c| Some((c.key.clone(), c.desired.clone()?)))
        .collect();
    let new_revision = app
        .status
        .as_ref()
        .and_then(|s| s.last_applied_revision.as_deref())
        != Some(revision.commit.as_str());
    // A new revision is applied when automated, and drift on the same revision with
    // selfHeal; anything, when someone asks for a sync (`tether sync`, the UI's Sync
    // button), as a manual sync does in Argo CD.
    let allowed = sync_requested(app) || (policy.automated && (new_revision || policy.self_heal));
    let mut sync = SyncStatus {
        status: if planned.has_changes() {
            SyncState::OutOfSync
        } else {
            SyncState::Synced
        }
        .into(),
        revision: revision.commit.clone(),
        create: summary.create as u32,
        update: summary.update as u32,
        prune: summary.prune as u32,
        unchanged: summary.unchanged as u32,
    };
    let mut applied = None;
    let mut desired: Vec<_> = planned
        .changes
        .iter()
        .filter(|c| c.action != PlanAction::Prune)
        .map(|c| (c.key.clone(), c.kind.clone()))
        .collect();
    // Each member's resourceVersion after this sync, for the drift watch.
    let mut versions: Vec<(crate::object::ObjectKey, String)> = planned
        .changes
        .iter()
        .filter(|c| c.action == PlanAction::Unchanged)
        .filter_map(|c| {
            let version = c.live.as_ref()?["metadata"]["resourceVersion"].as_str()?;
            Some((c.key.clone(), version.to_string()))
        })
        .collect();
    if planned.has_changes() && allowed {
        if policy.prune {
            dest.drift.expect_pruned(
                applyset_id,
                planned
                    .changes
                    .iter()
                    .filter(|c| c.action == PlanAction::Prune)
                    .map(|c| c.key.clone()),
            );
        }
        let (entry, written) =
            apply_and_record(ctx, at, app, planned, &revision, !new_revision, "applied").await?;
        applied = Some(entry);
        versions = written;
        // The counts say what differs now (what was done is in the history).
        sync = SyncStatus {
            status: SyncState::Synced.into(),
            create: 0,
            update: 0,
            prune: if policy.prune { 0 } else { sync.prune },
            unchanged: sync.create + sync.update + sync.unchanged,
            ..sync
        };
    }
    if !unserved.is_empty() {
        for (key, kind) in desired.iter_mut().filter(|(_, kind)| kind.is_none()) {
            *kind = unserved
                .iter()
                .find(|(unserved, _)| unserved == key)
                .and_then(|(key, manifest)| {
                    kinds_of(&dest.target.resolver, [(manifest, &key.kind)]).pop()
                });
        }
        dest.drift.register(
            owner,
            applyset_id,
            desired.iter().filter_map(|(_, kind)| kind.clone()),
        );
    }
    if !refused.is_empty() {
        sync.status = SyncState::OutOfSync.into();
    }
    if sync.status == SyncState::Synced {
        // The cluster now holds this render: a later revision that renders the same needs
        // no plan.
        dest.drift.set_applied_digest(applyset_id, digest);
    }
    if sync.status != SyncState::Synced || versions.len() != desired.len() {
        versions.clear();
    }
    dest.drift.finish_full_sync(applyset_id, versions);
    // A new desired set: its health is read in full (and remembered per object).
    dest.health
        .lock()
        .expect("not poisoned")
        .remove(applyset_id);
    dest.desired
        .lock()
        .expect("not poisoned")
        .insert(applyset_id.to_string(), desired);
    let health = assess_set(ctx, dest, client, applyset_id).await;
    if !refused.is_empty() {
        return Err(Failure {
            message: dest.target.context(refused_message(&refused, &sync)),
            entry: applied,
            revision: None,
            out_of_sync: true,
        });
    }
    Ok(Outcome {
        revision,
        sync,
        health,
        applied,
        apply_set,

        destination: dest.clone(),
    })
}

/// Each desired member's applied digest, as the plan will write it.
pub(super) fn applied_digests(
    planned: &crate::plan::Plan,
) -> impl Iterator<Item = (crate::object::ObjectKey, String)> + '_ {
    planned
        .changes
        .iter()
        .filter(|c| c.action != PlanAction::Prune)
        .filter_map(|c| {
            let digest = crate::plan::fields::carried_digest(c.desired.as_ref()?)?;
            Some((c.key.clone(), digest.to_string()))
        })
}

/// The status message of a sync whose objects held by another owner were left out: each
/// one, where it came from, why, and what to do.
pub(super) fn refused_message(refused: &[crate::plan::PlanError], sync: &SyncStatus) -> String {
    let synced = sync.create + sync.update + sync.unchanged;
    let mut message = format!(
        "{} object(s) cannot be synced (the other {synced} are synced and healed):",
        refused.len()
    );
    for error in refused {
        message.push_str(&format!("\n  {error}"));
    }
    message
}

/// The kinds of these manifests that the cluster serves, each once.
pub(super) fn kinds_of<'a>(
    resolver: &Resolver,
    manifests: impl IntoIterator<Item = (&'a serde_json::Value, &'a String)>,
) -> Vec<crate::cluster::discovery::KindInfo> {
    let mut kinds: Vec<crate::cluster::discovery::KindInfo> = Vec::new();
    for (manifest, kind) in manifests {
        let api_version = manifest["apiVersion"].as_str().unwrap_or_default();
        if let Some(info) = resolver.resolve(api_version, kind)
            && !kinds.iter().any(|k| {
                k.resource.group == info.resource.group && k.resource.kind == info.resource.kind
            })
        {
            kinds.push(info);
        }
    }
    kinds
}

/// The backstop's finding: members that differ from a render the cluster held while the
/// watches vouched that nothing changed. Each one whose differing state the watch saw
/// without reporting it is logged with the managers that wrote it and counted in
/// `tether_drift_missed_total`; a non-zero count is a bug to report. (A state the watch
/// has not reached yet may still be reported by it, and is not counted.)
pub(super) fn report_missed(
    ctx: &Context,
    dest: &Destination,
    app: &Application,
    applyset_id: &str,
    planned: &crate::plan::Plan,
) {
    for change in &planned.changes {
        let differs = match change.action {
            PlanAction::Update => !change.diff.is_empty(),
            PlanAction::Conflict => true,
            _ => false,
        };
        let Some(live) = change.live.as_ref().filter(|_| differs) else {
            continue;
        };
        let Some(version) = live["metadata"]["resourceVersion"].as_str() else {
            continue;
        };
        if !dest.drift.saw_unreported(applyset_id, &change.key, version) {
            continue;
        }
        let managers: Vec<String> = live["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| {
                let text = |field: &str| entry[field].as_str().unwrap_or("-").to_string();
                let subresource = entry["subresource"]
                    .as_str()
                    .map(|s| format!(" /{s}"))
                    .unwrap_or_default();
                format!(
                    "{} {}{subresource} at {}",
                    text("manager"),
                    text("operation"),
                    text("time")
                )
            })
            .collect();
        tracing::warn!(
            application = %format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any()),
            object = %change.key,
            managers = %managers.join(", "),
            "the full plan found drift that the watches missed; it is corrected like any other, but please report it as a bug"
        );
        ctx.metrics.drift_missed.inc();
    }
}

/// Applies a plan as the Application's policy says, counts what it did in the metrics, and
/// returns the history entry (`what` starts its message: "applied", "corrected drift at").
pub(super) async fn apply_and_record(
    ctx: &Context,
    at: &Acting<'_>,
    app: &Application,
    planned: crate::plan::Plan,
    revision: &Revision,
    drift: bool,
    what: &str,
) -> Result<(HistoryEntry, Vec<(crate::object::ObjectKey, String)>), Failure> {
    let (dest, client) = (at.dest, at.client);
    let policy = &app.spec.sync_policy;
    let options = ApplyOptions {
        prune: policy.prune && !planned.options.partial,
        force_conflicts: policy.force_conflicts,
        concurrency: ctx.options.concurrency,
        // Putting back the revision already applied is not a new deployment.
        run_hooks: !drift,
        ..Default::default()
    };
    // The plan had changes: whatever stopped the apply (a conflict, a parent that cannot be
    // written), the cluster differs from the revision.
    let report = apply(client, &dest.target.resolver, planned, &options)
        .await
        .map_err(|e| Failure {
            message: dest.target.context(e.to_string()),
            entry: None,
            revision: None,
            out_of_sync: true,
        })?;
    for hook in report.hooks.iter().filter(|h| !h.succeeded) {
        publish(ctx, app, EventType::Warning, "HookFailed", hook.to_string()).await;
    }
    let hooks: Vec<HookRecord> = report.hooks.iter().map(HookRecord::from).collect();
    if let Some(message) = report.failure_message().map(|m| dest.target.context(m)) {
        // A failed sync is history too when it ran hooks: which ran, and how they ended.
        let entry = (!hooks.is_empty()).then(|| HistoryEntry {
            revision: revision.commit.clone(),
            time: now_rfc3339(),
            result: RunResult::Failed.into(),
            created: 0,
            updated: 0,
            pruned: 0,
            message: Some(message.clone()),
            hooks: hooks.clone(),
        });
        return Err(Failure {
            message,
            entry,
            revision: None,
            out_of_sync: true,
        });
    }
    let count =
        |action: PlanAction| report.results.iter().filter(|r| r.action == action).count() as u32;
    for (action, label) in [
        (PlanAction::Create, "create"),
        (PlanAction::Update, "update"),
        (PlanAction::Prune, "prune"),
    ] {
        ctx.metrics
            .applied
            .get_or_create(&server::ActionLabels {
                action: label.into(),
            })
            .inc_by(count(action) as u64);
    }
    if drift {
        // The same revision again, with changes: someone changed the cluster by hand.
        ctx.metrics.drift_corrections.inc();
    }
    let versions = report
        .results
        .iter()
        .filter(|r| r.action != PlanAction::Prune)
        .filter_map(|r| Some((r.key.clone(), r.resource_version.clone()?)))
        .collect();
    let entry = HistoryEntry {
        revision: revision.commit.clone(),
        time: now_rfc3339(),
        result: RunResult::Succeeded.into(),
        created: count(PlanAction::Create),
        updated: count(PlanAction::Update),
        pruned: count(PlanAction::Prune),
        message: Some(format!(
            "{what} {}: {} created, {} updated, {} pruned",
            &revision.commit[..12.min(revision.commit.len())],
            count(PlanAction::Create),
            count(PlanAction::Update),
            count(PlanAction::Prune)
        )),
        hooks,
    };
    Ok((entry, versions))
}

/// What a targeted drift correction did.
pub(super) enum Targeted {
    Done(Box<Outcome>),
    /// The render is not the one applied, or a drifted member is not in it: sync in full
    /// (with this render).
    Full(Vec<crate::object::Object>, [u8; 32]),
}

/// Corrects only the members someone changed or deleted: renders the applied revision,
/// plans and applies just those objects (never prunes), and keeps the rest of the status.
pub(super) async fn correct_drift(
    ctx: &Context,
    at: &Acting<'_>,
    app: &Application,
    applyset_id: &str,
    (revision, tree): (Revision, crate::source::git::CommitTree),
    drifted: std::collections::BTreeSet<crate::object::ObjectKey>,
    settled: (&ApplicationStatus, &SyncStatus, &ApplySetReference),
) -> Result<Targeted, Failure> {
    let (dest, client) = (at.dest, at.client);
    let (objects, digest) = render_digested(ctx, dest, app, &revision, tree).await?;
    if dest.drift.applied_digest(applyset_id) != Some(digest) {
        return Ok(Targeted::Full(objects, digest));
    }
    let destination = &app.spec.destination.namespace;
    // A rendered object names its namespace, or leaves it to the destination (or is
    // cluster-scoped, where the watch reports none).
    let is_drifted = |key: &crate::object::ObjectKey| {
        drifted.iter().any(|d| {
            d.group == key.group
                && d.kind == key.kind
                && d.name == key.name
                && (d.namespace == key.namespace
                    || (key.namespace.is_empty()
                        && (d.namespace == *destination || d.namespace.is_empty())))
        })
    };
    let subset: Vec<crate::object::Object> = objects
        .iter()
        .filter(|o| is_drifted(&o.key))
        .cloned()
        .collect();
    if subset.len() < drifted.len() {
        return Ok(Targeted::Full(objects, digest));
    }
    let mut plan_options = crate::app::plan_options_for(&ctx.pipeline, app);
    plan_options.partial = true;
    // Health is read afresh after the correction: an unchanged object's state is not kept.
    plan_options.keep_unchanged_live = false;
    let planned = plan(client, &dest.target.resolver, subset, &plan_options)
        .await
        .map_err(|e| dest.target.context(e.to_string()))?;
    if !planned.refused.is_empty() {
        // A member another owner took: the full sync reports it, and syncs the rest.
        return Ok(Targeted::Full(objects, digest));
    }
    dest.drift
        .expect_applied(applyset_id, applied_digests(&planned), false);
    let corrected: Vec<_> = planned
        .changes
        .iter()
        .map(|c| (c.key.clone(), c.kind.clone()))
        .collect();
    let applied = if planned.has_changes() {
        Some(
            apply_and_record(ctx, at, app, planned, &revision, true, "corrected drift at")
                .await?
                .0,
        )
    } else {
        None
    };
    let (_, sync, apply_set) = settled;
    // The corrected objects are read again, with those whose status changed and those not
    // Healthy (the others still are as last read).
    if let Some(known) = dest
        .health
        .lock()
        .expect("not poisoned")
        .get_mut(applyset_id)
    {
        for (key, _) in &corrected {
            known.remove(key);
        }
    }
    let health = assess_set(ctx, at.dest, at.client, applyset_id).await;
    let mut sync = sync.clone();
    sync.revision = revision.commit.clone();
    Ok(Targeted::Done(Box::new(Outcome {
        revision,
        sync,
        health,
        applied,
        apply_set: apply_set.clone(),

        destination: dest.clone(),
    })))
}

/// The health of set `id` (its objects as its last full sync desired them), reading again
/// only what may have changed: the members whose status the watches saw change, and those
/// not Healthy at the last read (a rollout in progress); everything when nothing was read
/// before or too many changed. Tells the drift watch that status changes so far are
/// accounted for.
pub(super) async fn assess_set(
    ctx: &Context,
    dest: &Destination,
    client: &kube::Client,
    id: &str,
) -> HealthStatus {
    let changed = dest.drift.take_status_changes(id);
    let desired = dest
        .desired
        .lock()
        .expect("not poisoned")
        .get(id)
        .cloned()
        .unwrap_or_default();
    let known = dest.health.lock().expect("not poisoned").get(id).cloned();
    let to_read: Vec<Desired> = match (&changed, &known) {
        (Some(changed), Some(known)) => desired
            .iter()
            .filter(|(key, _)| {
                changed.contains(key) || known.get(key).is_none_or(|h| *h != HealthStatus::Healthy)
            })
            .cloned()
            .collect(),
        _ => desired.clone(),
    };
    let read = assess_each(ctx, client, &to_read).await;
    let mut all = dest.health.lock().expect("not poisoned");
    let each = all.entry(id.to_string()).or_default();
    each.extend(read);
    each.retain(|key, _| desired.iter().any(|(k, _)| k == key));
    HealthStatus::worst(
        desired
            .iter()
            .map(|(key, _)| each.get(key).copied().unwrap_or(HealthStatus::Unknown)),
    )
}

/// Renders as [`render_app`] does, with the render's [`digest_of`].
pub(super) async fn render_digested(
    ctx: &Context,
    dest: &Destination,
    app: &Application,
    revision: &Revision,
    tree: crate::source::git::CommitTree,
) -> Result<(Vec<crate::object::Object>, [u8; 32]), String> {
    let objects = render_app(&dest.target.resolver, &ctx.pipeline, app, revision, tree).await?;
    let digest = digest_of(&objects);
    Ok((objects, digest))
}

/// Each desired object's health, read with `client` (one GET each).
pub(super) async fn assess_each(
    ctx: &Context,
    client: &kube::Client,
    desired: &[Desired],
) -> Vec<(crate::object::ObjectKey, HealthStatus)> {
    futures::stream::iter((0..desired.len()).map(|i| async move {
        let (key, kind) = &desired[i];
        let Some(kind) = kind.clone() else {
            return (key.clone(), HealthStatus::Unknown);
        };
        let live = crate::cluster::api_for(client, &kind, &key.namespace)
            .get_opt(&key.name)
            .await
            .ok()
            .flatten()
            .map(|o| serde_json::to_value(o).expect("objects serialize"));
        (key.clone(), health::assess(live.as_ref()).status)
    }))
    .buffer_unordered(ctx.options.concurrency.max(1))
    .collect::<Vec<_>>()
    .await
}
