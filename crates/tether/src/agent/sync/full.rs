//! A full sync: every object of the render planned against the cluster (its kinds watched
//! first), applied when the policy allows, and what the cluster now holds recorded for the
//! drift watches; the backstop's report of drift the watches missed.

use std::collections::HashMap;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use super::apply::{Written, apply_and_record};
use super::health::assess_set;
use super::health_rules;
use crate::agent::clusters::Connected;
use crate::agent::{
    Acting, Application, Context, Desired, Failure, Outcome, WATCH_LIST_TIMEOUT, sync_requested,
};
use crate::app::plan_options_for;
use crate::application::{ApplySetReference, SyncState, SyncStatus};
use crate::cluster::discovery::{KindInfo, Resolver};
use crate::health::HealthStatus;
use crate::health::rules::Rules;
use crate::object::{Object, ObjectKey};
use crate::plan::{Action as PlanAction, Plan};
use crate::source::git::Revision;
use crate::windows::Gate;

/// Plans every object of the render against the cluster and applies when the policy
/// allows; records for the drift watch what the cluster now holds. With `check_watches`,
/// differences are drift the watches missed, and are reported as such.
pub(super) async fn full_sync(
    ctx: &Context,
    at: &Acting<'_>,
    app: &Application,
    applyset_id: &str,
    revision: Revision,
    (objects, digest): (Vec<Object>, [u8; 32]),
    check_watches: bool,
) -> Result<Outcome, Failure> {
    let (dest, client) = (at.dest, at.client);
    let policy = &app.spec.sync_policy;
    let owner = ObjectRef::from_obj(app);
    let mut planned = watch_and_plan(ctx, at, app, applyset_id, &owner, objects).await?;
    // Each member's health as the plan read it (kept for those not written after).
    let mut known = health_of_planned(&planned, &health_rules(app));
    // Objects another owner holds fail alone; the rest is synced (rule 13).
    let refused = std::mem::take(&mut planned.refused);
    if check_watches {
        ctx.metrics.drift_verifications.inc();
        report_missed(ctx, dest, app, applyset_id, &planned);
    }
    let mut sync = planned_sync(&planned, &revision);
    let apply_set = apply_set_of(&planned);
    let kinds = planned.changes.iter().filter_map(|c| c.kind.clone());
    dest.drift
        .register(owner.clone(), &planned.applyset.id, kinds);
    // Kinds whose CRD comes with this set are served only once it is applied.
    let unserved: Vec<(ObjectKey, serde_json::Value)> = planned
        .changes
        .iter()
        .filter(|c| c.kind.is_none())
        .filter_map(|c| Some((c.key.clone(), c.desired.clone()?)))
        .collect();
    let (new_revision, allowed) = may_apply(app, &revision, at.gate);
    let (mut desired, mut versions) = members(&planned);
    let mut applied = None;
    if planned.has_changes() && allowed {
        // What is written is as the server answers the write (else it is read again).
        let unchanged: std::collections::HashSet<&ObjectKey> = unchanged_in(&planned).collect();
        known.retain(|key, _| unchanged.contains(key));
        let (entry, written) =
            apply_planned(ctx, at, app, planned, &revision, !new_revision).await?;
        applied = Some(entry);
        versions = written.versions;
        known.extend(written.health);
        sync = applied_sync(sync, policy.prune);
    }
    if !unserved.is_empty() {
        serve_unserved(dest, &mut desired, &unserved);
        let kinds = desired.iter().filter_map(|(_, kind)| kind.clone());
        dest.drift.register(owner, applyset_id, kinds);
    }
    if !refused.is_empty() {
        sync.status = SyncState::OutOfSync.into();
    }
    record_held(dest, applyset_id, digest, &sync, (versions, desired), known);
    let health = assess_set(ctx, dest, client, applyset_id, &health_rules(app)).await;
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

/// Applies a plan, after telling the drift watch what it prunes and deletes to create anew.
async fn apply_planned(
    ctx: &Context,
    at: &Acting<'_>,
    app: &Application,
    planned: Plan,
    revision: &Revision,
    drift: bool,
) -> Result<(crate::application::HistoryEntry, Written), Failure> {
    let id = planned.applyset.id.clone();
    if app.spec.sync_policy.prune {
        at.dest.drift.expect_pruned(&id, pruned(&planned));
    }
    // Deleted to be created anew (Force=true): its deletion is tether's too.
    let recreated = planned.changes.iter().filter(|c| c.recreate.is_some());
    at.dest
        .drift
        .expect_pruned(&id, recreated.map(|c| c.key.clone()));
    apply_and_record(ctx, at, app, planned, revision, drift, "applied").await
}

/// The members the plan leaves as they are.
fn unchanged_in(planned: &Plan) -> impl Iterator<Item = &ObjectKey> {
    planned
        .changes
        .iter()
        .filter(|c| c.action == PlanAction::Unchanged)
        .map(|c| &c.key)
}

/// Watches every kind of the render before planning it (from then on no write to a member
/// goes unseen, and this sync counts as watched from its start), plans it, and tells the
/// drift watch what this agent is about to apply, before it writes (rule 12).
async fn watch_and_plan(
    ctx: &Context,
    at: &Acting<'_>,
    app: &Application,
    applyset_id: &str,
    owner: &ObjectRef<Application>,
    objects: Vec<Object>,
) -> Result<Plan, Failure> {
    let (dest, client) = (at.dest, at.client);
    let resolver = &dest.target.resolver;
    let kinds = kinds_of(resolver, objects.iter().map(|o| (&o.manifest, &o.key.kind)));
    dest.drift
        .watch_before_sync(owner.clone(), applyset_id, kinds, WATCH_LIST_TIMEOUT)
        .await;
    // Unchanged objects are kept whole: their health is read from them.
    let mut options = plan_options_for(&ctx.pipeline, app);
    options.watched = Some(dest.drift.watched());
    let planned = crate::plan::plan(client, resolver, objects, &options)
        .await
        .map_err(|e| dest.target.context(crate::app::Error::from(e).into()))?;
    dest.drift
        .expect_applied(applyset_id, applied_digests(&planned), true);
    Ok(planned)
}

/// Whether `revision` is new (not the one last applied), and whether the policy lets this
/// sync apply it: a new revision is applied when automated, and drift on the same revision
/// with selfHeal; anything, when someone asks for a sync (`tether sync`, the UI's Sync
/// button), as a manual sync does in Argo CD.
fn may_apply(app: &Application, revision: &Revision, gate: &Gate) -> (bool, bool) {
    let policy = &app.spec.sync_policy;
    let last_applied = app.status.as_ref();
    let last_applied = last_applied.and_then(|s| s.last_applied_revision.as_deref());
    let new_revision = last_applied != Some(revision.commit.as_str());
    // While a sync window blocks: a sync asked for by hand only when it says manualSync,
    // the revision already applied again (hand edits put back) only when it says selfHeal,
    // a new revision never.
    let asked = sync_requested(app) && (gate.open || gate.manual_sync);
    let automated = policy.automated
        && if new_revision {
            gate.open
        } else {
            policy.self_heal && (gate.open || gate.self_heal)
        };
    (new_revision, asked || automated)
}

/// The status's reference to the set's ApplySet parent.
fn apply_set_of(planned: &Plan) -> ApplySetReference {
    ApplySetReference {
        kind: "Secret".into(),
        name: planned.applyset.parent_name(),
        namespace: planned.applyset.namespace.clone(),
        id: planned.applyset.id.clone(),
    }
}

/// The sync status a plan shows: OutOfSync when it has changes, with its counts.
fn planned_sync(planned: &Plan, revision: &Revision) -> SyncStatus {
    let summary = planned.summary();
    SyncStatus {
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
    }
}

/// The sync status once the plan is applied: Synced, and the counts say what differs now
/// (what was done is in the history).
fn applied_sync(sync: SyncStatus, prune: bool) -> SyncStatus {
    SyncStatus {
        status: SyncState::Synced.into(),
        create: 0,
        update: 0,
        prune: if prune { 0 } else { sync.prune },
        unchanged: sync.create + sync.update + sync.unchanged,
        ..sync
    }
}

/// The set's desired members (with their kinds, when served), and each unchanged member's
/// resourceVersion, for the drift watch.
fn members(planned: &Plan) -> (Vec<Desired>, Vec<(ObjectKey, String)>) {
    let desired = planned
        .changes
        .iter()
        .filter(|c| c.action != PlanAction::Prune)
        .map(|c| (c.key.clone(), c.kind.clone()))
        .collect();
    let versions = planned
        .changes
        .iter()
        .filter(|c| c.action == PlanAction::Unchanged)
        .filter_map(|c| {
            let version = c.live.as_ref()?["metadata"]["resourceVersion"].as_str()?;
            Some((c.key.clone(), version.to_string()))
        })
        .collect();
    (desired, versions)
}

/// The members the plan prunes.
fn pruned(planned: &Plan) -> impl Iterator<Item = ObjectKey> + '_ {
    planned
        .changes
        .iter()
        .filter(|c| c.action == PlanAction::Prune)
        .map(|c| c.key.clone())
}

/// The kinds of members that were not served before the apply (their CRD came with it),
/// as the cluster serves them now.
fn serve_unserved(
    dest: &Connected,
    desired: &mut [Desired],
    unserved: &[(ObjectKey, serde_json::Value)],
) {
    for (key, kind) in desired.iter_mut().filter(|(_, kind)| kind.is_none()) {
        *kind = unserved
            .iter()
            .find(|(unserved, _)| unserved == key)
            .and_then(|(key, manifest)| {
                kinds_of(&dest.target.resolver, [(manifest, &key.kind)]).pop()
            });
    }
}

/// Records for the drift watch and the health reads what the cluster holds after a full
/// sync: the render's digest once Synced (a later revision that renders the same needs no
/// plan), each member's resourceVersion, and the desired set, with the health of its
/// members as the plan read them or the apply's answers told (`known`; a member missing
/// from it, or not Healthy, is read again).
fn record_held(
    dest: &Connected,
    applyset_id: &str,
    digest: [u8; 32],
    sync: &SyncStatus,
    (mut versions, desired): (Vec<(ObjectKey, String)>, Vec<Desired>),
    known: HashMap<ObjectKey, HealthStatus>,
) {
    if sync.status == SyncState::Synced {
        dest.drift.set_applied_digest(applyset_id, digest);
    }
    if sync.status != SyncState::Synced || versions.len() != desired.len() {
        versions.clear();
    }
    dest.drift.finish_full_sync(applyset_id, versions);
    // A new desired set: its health as just read or written (remembered per object).
    dest.health
        .lock()
        .expect("not poisoned")
        .insert(applyset_id.to_string(), known);
    dest.desired
        .lock()
        .expect("not poisoned")
        .insert(applyset_id.to_string(), desired);
}

/// The health of each member the plan read (all but those to prune, and those of kinds not
/// served yet), by `rules`.
fn health_of_planned(planned: &Plan, rules: &Rules) -> HashMap<ObjectKey, HealthStatus> {
    planned
        .changes
        .iter()
        .filter(|c| c.action != PlanAction::Prune && c.kind.is_some())
        .map(|c| {
            let health = crate::health::assess_with(c.live.as_ref(), rules).status;
            (c.key.clone(), health)
        })
        .collect()
}

/// Each desired member's applied digest, as the plan will write it.
pub(super) fn applied_digests(planned: &Plan) -> impl Iterator<Item = (ObjectKey, String)> + '_ {
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
) -> Vec<KindInfo> {
    let mut kinds: Vec<KindInfo> = Vec::new();
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
    dest: &Connected,
    app: &Application,
    applyset_id: &str,
    planned: &Plan,
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
