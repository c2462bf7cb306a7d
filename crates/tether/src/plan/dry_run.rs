//! The server's word on each object: reads it when the LISTs did not, asks who owns
//! another set's object, dry-runs its server-side apply (and the creation of every hook),
//! and hands the answers to the pure [`super::classify`]. Start at [`plan_objects`].

use std::collections::BTreeSet;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::Value;

use super::classify::{
    self, DryRun, Outcome, Ownership, Sides, Verdict, already_held, unchanged_live,
};
use super::live::{Prefetch, Prefetched, owner_of_set};
use super::prepare::{Prepared, stage_of};
use super::types::{
    Change, FIELD_MANAGER, Hook, PlanError, PlanErrorKind, PlanOptions, api_error, cluster_error,
};
use crate::cluster::api_for;
use crate::cluster::discovery::{KindInfo, Resolver};
use crate::cluster::window::in_flight;
use crate::inventory::ApplySet;
use crate::object::{ObjectKey, Origin};

/// What every object's plan needs to know about the whole set.
pub(super) struct SetScope<'a> {
    pub client: &'a kube::Client,
    pub applyset: &'a ApplySet,
    pub creating_namespaces: &'a BTreeSet<String>,
    pub options: &'a PlanOptions,
}

/// What the objects' plans came to: the changes, the objects another owner holds (with
/// [`PlanOptions::refuse_alone`]) and the errors, each in the order they were planned.
pub(super) struct Planned {
    pub changes: Vec<Change>,
    pub refused: Vec<PlanError>,
    pub errors: Vec<PlanError>,
}

/// Plans every member, [`PlanOptions::concurrency`] (or its window) at a time, from what
/// the LISTs told.
pub(super) async fn plan_objects(
    context: &SetScope<'_>,
    members: Vec<Prepared>,
    prefetched: &mut Prefetch,
) -> Planned {
    let options = context.options;
    options.progress.begin("planning", members.len());
    let results: Vec<Result<Change, PlanError>> =
        futures::stream::iter(members.into_iter().map(|item| {
            // Settled by the LISTs, or unknown (not ours yet, or not listed), so read it.
            let live = prefetched.take(&item.key);
            async move {
                let result = match &context.options.window {
                    Some(window) => window.run(plan_one(context, item, live)).await,
                    None => plan_one(context, item, live).await,
                };
                context.options.progress.tick();
                result
            }
        }))
        .buffer_unordered(in_flight(options.concurrency, &options.window))
        .collect()
        .await;
    options.progress.finish();
    let mut planned = Planned {
        changes: Vec::new(),
        refused: Vec::new(),
        errors: Vec::new(),
    };
    for result in results {
        match result {
            Ok(change) => planned.changes.push(change),
            Err(error) if error.owned_elsewhere() && options.refuse_alone => {
                planned.refused.push(error)
            }
            Err(error) => planned.errors.push(error),
        }
    }
    planned.refused.sort_by(|a, b| a.key.cmp(&b.key));
    planned
}

/// Plans one object, from what the LISTs told about it (or from a read of its own).
async fn plan_one(
    context: &SetScope<'_>,
    item: Prepared,
    prefetched: Prefetched,
) -> Result<Change, PlanError> {
    let Prepared {
        key,
        origin,
        mut manifest,
        kind,
        namespaced,
        wave,
    } = item;
    // Fields left to someone else are applied with the values the cluster holds (named by
    // a pointer, or written by a listed manager): the live object is read for them.
    let rules = &context.options.ignore_differences;
    let named = super::ignore::applies_to(rules, &key);
    let prefetched = match (prefetched, &kind) {
        (Prefetched::Unknown, Some(info)) if named => {
            let api = api_for(context.client, info, &key.namespace);
            Prefetched::Live(read_live(&api, &key, &origin).await?)
        }
        (other, _) => other,
    };
    let mut ignored = Vec::new();
    if named && let Prefetched::Live(Some(live)) = &prefetched {
        ignored = super::ignore::respect(&mut manifest, &key, Some(live), rules);
    }
    let outcome = plan_change(context, &key, &origin, &manifest, kind.clone(), prefetched).await?;
    // The manifest moves into the change once planned: one copy per object, not two.
    Ok(Change {
        stage: stage_of(&key, namespaced),
        key,
        action: outcome.action,
        origin: Some(origin),
        diff: outcome.diff,
        conflicts: outcome.conflicts,
        desired: Some(manifest),
        live: outcome.live,
        kind,
        takes_over_from: outcome.takes_over_from,
        wave,
        reclaims: outcome.reclaims,
        force: outcome.force,
        recreate: outcome.recreate,
        ignored,
    })
}

/// The body of [`plan_one`]: read, ownership, dry-run, a fresh read, then the comparison.
async fn plan_change(
    context: &SetScope<'_>,
    key: &ObjectKey,
    origin: &Origin,
    manifest: &Value,
    kind: Option<KindInfo>,
    prefetched: Prefetched,
) -> Result<Outcome, PlanError> {
    let SetScope {
        client,
        applyset,
        creating_namespaces,
        options,
    } = *context;
    let Some(kind) = kind else {
        // Its CRD comes with this set: nothing to ask the server yet.
        return Ok(Outcome::create_unchecked(key, manifest));
    };
    let api = api_for(client, &kind, &key.namespace);
    let live = match prefetched {
        Prefetched::Unchanged(held) => return Ok(Outcome::unchanged(Some(held))),
        Prefetched::Live(live) => live,
        Prefetched::Unknown => read_live(&api, key, origin).await?,
    };
    let relabel = ours(context, key, origin, live.as_ref()).await?;
    // Read alone (a small set): the same shortcut as for a listed member.
    if let Some(held) = &live
        && already_held(manifest, held, &applyset.id)
    {
        let kept = live.map(|live| unchanged_live(live, options.keep_unchanged_live));
        return Ok(Outcome::unchanged(kept));
    }
    // Argo CD's Replace=true takes every field Git sets, whoever holds it.
    let replace = super::sync_options::replaces(manifest);
    let mut params = PatchParams::apply(FIELD_MANAGER).dry_run();
    if options.force_conflicts || replace {
        params = params.force();
    }
    let pending = live.is_none() && creating_namespaces.contains(&key.namespace);
    let recreate = super::sync_options::recreate_when_refused(manifest);
    let answer = dry_run_apply(
        &api,
        key,
        origin,
        manifest,
        &params,
        pending,
        recreate.clone(),
    )
    .await?;
    let read = (key, manifest, live, relabel);
    let prediction = match read_answer(context, &kind, read, answer) {
        Verdict::Settled(outcome) => return Ok(outcome),
        Verdict::Predicted(prediction) => prediction,
    };
    if prediction.force {
        params = params.force();
    }
    let sides = recheck(
        &api,
        key,
        origin,
        manifest,
        &params,
        prediction.live,
        &prediction.predicted,
    )
    .await?;
    let mut outcome = Outcome {
        force: prediction.force || replace,
        reclaims: prediction.reclaims,
        ..classify::compare(key, sides, options.keep_unchanged_live)
    };
    // Replace=true with Force=true: any change deletes it and creates it anew.
    if replace && outcome.action == super::types::Action::Update {
        outcome.recreate = recreate.map(|why| format!("Replace=true with {why}"));
    }
    Ok(outcome)
}

/// Whether the live object may be planned as a member: `Ok(true)` when it is one whose
/// ApplySet label someone removed (still one: the apply puts it back).
async fn ours(
    context: &SetScope<'_>,
    key: &ObjectKey,
    origin: &Origin,
    live: Option<&Value>,
) -> Result<bool, PlanError> {
    let (applyset, adopt) = (context.applyset, context.options.adopt);
    match classify::ownership(live, key, applyset, adopt) {
        Ownership::Ours => Ok(false),
        Ownership::Relabel => Ok(true),
        Ownership::OtherSet(set) => {
            let owner = owner_of_set(context.client, &set, &key.namespace).await;
            Err(owned_by_another_set(key, origin, set, owner))
        }
        Ownership::Unmanaged => Err(unmanaged(key, origin)),
    }
}

/// What the dry-run's answer means ([`classify::read_answer`]), who changed each field
/// named from the audit log when the plan has one.
fn read_answer(
    context: &SetScope<'_>,
    kind: &KindInfo,
    (key, manifest, live, relabel): (&ObjectKey, &Value, Option<Value>, bool),
    answer: DryRun,
) -> Verdict {
    let who = |manager: &str, subresource: Option<&str>, time: Option<&str>| {
        let object = crate::audit::ObjectRef {
            resource: &kind.resource.plural,
            namespace: &key.namespace,
            name: &key.name,
            subresource,
        };
        context
            .options
            .audit_log
            .as_ref()?
            .who(&object, manager, time)
    };
    let set = &context.applyset.id;
    classify::read_answer(key, manifest, live, relabel, set, answer, &who)
}

/// The object `key` as the cluster holds it now (`None`: it does not exist).
async fn read_live(
    api: &Api<DynamicObject>,
    key: &ObjectKey,
    origin: &Origin,
) -> Result<Option<Value>, PlanError> {
    api.get_opt(&key.name)
        .await
        .map_err(|e| cluster_error(Some(key), Some(origin), &e))
        .map(|o| o.map(|o| serde_json::to_value(o).expect("objects serialize")))
}

/// The error for an object another ApplySet holds.
fn owned_by_another_set(
    key: &ObjectKey,
    origin: &Origin,
    set: String,
    owner: super::types::SetOwner,
) -> PlanError {
    let message = format!(
        "belongs to {}; two applications cannot own one object: remove it from one of them",
        owner.describe(&set)
    );
    PlanError {
        kind: PlanErrorKind::OwnedByAnotherSet { set, owner },
        ..PlanError::of_object(key, origin, message)
    }
}

/// The error for an object that exists and belongs to no ApplySet.
fn unmanaged(key: &ObjectKey, origin: &Origin) -> PlanError {
    PlanError {
        kind: PlanErrorKind::Unmanaged,
        ..PlanError::of_object(
            key,
            origin,
            "exists and is not managed by tether; delete it, rename it in Git, or take it over with tether apply --adopt"
                .into(),
        )
    }
}

/// Dry-runs the server-side apply of `manifest` with `params`, and on a conflict the forced
/// apply too (the value each side holds: what a forced apply would write). `pending`: the
/// object does not exist and its namespace is created by this same apply.
async fn dry_run_apply(
    api: &Api<DynamicObject>,
    key: &ObjectKey,
    origin: &Origin,
    manifest: &Value,
    params: &PatchParams,
    pending: bool,
    recreate: Option<String>,
) -> Result<DryRun, PlanError> {
    let err = match api.patch(&key.name, params, &Patch::Apply(manifest)).await {
        Ok(object) => {
            return Ok(DryRun::Applied(
                serde_json::to_value(object).expect("objects serialize"),
            ));
        }
        Err(err) => err,
    };
    match api_error(&err) {
        Some(status) if status.code == 409 && status.reason == "Conflict" => {
            let causes: Vec<(String, String)> = status
                .details
                .as_ref()
                .map(|d| {
                    d.causes
                        .iter()
                        .map(|c| (c.field.clone(), c.message.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let forced = PatchParams::apply(FIELD_MANAGER).dry_run().force();
            let predicted = api
                .patch(&key.name, &forced, &Patch::Apply(manifest))
                .await
                .map_err(|e| cluster_error(Some(key), Some(origin), &e))?;
            Ok(DryRun::Conflict {
                causes,
                message: status.message.clone(),
                forced: serde_json::to_value(predicted).expect("objects serialize"),
            })
        }
        // Its namespace is created by this same apply: the server cannot dry-run it yet.
        Some(status) if status.code == 404 && pending => Ok(DryRun::NamespacePending),
        // Refused in place for an immutable field, and to be recreated when that happens
        // (any other refusal, an invalid value, stays an error: recreating would not help).
        Some(status)
            if status.code == 422
                && status.message.contains("field is immutable")
                && recreate.is_some() =>
        {
            Ok(DryRun::Refused {
                message: status.message.clone(),
                why: recreate.unwrap_or_default(),
            })
        }
        _ => {
            let mut error = cluster_error(Some(key), Some(origin), &err);
            if error.message.contains("illegal base64 data")
                && let Some(field) = undecodable_secret_data(key, manifest)
            {
                // The server names a byte offset, not the key; the value stays unsaid.
                error.message = format!(
                    "{field} is not base64; encode it (base64 -w0), or put the plain text under stringData instead"
                );
            }
            Err(error)
        }
    }
}

/// A controller may have written the object between our read and the dry-run (which
/// starts from the newest state): compare with a fresh read before calling it drift, and
/// if it moved again meanwhile, dry-run once more from that state.
async fn recheck(
    api: &Api<DynamicObject>,
    key: &ObjectKey,
    origin: &Origin,
    manifest: &Value,
    params: &PatchParams,
    live: Option<Value>,
    predicted: &Value,
) -> Result<Sides, PlanError> {
    let sides = Sides::new(live, predicted);
    if !sides.differ() {
        return Ok(sides);
    }
    let version = |live: &Option<Value>| {
        live.as_ref()
            .map(|l| l["metadata"]["resourceVersion"].clone())
    };
    let first_version = version(&sides.live);
    let live = read_live(api, key, origin).await?;
    let moved = version(&live) != first_version;
    let mut sides = Sides {
        before: live.as_ref().map(super::diff::normalize),
        live,
        after: sides.after,
    };
    if moved
        && sides.before.as_ref() != Some(&sides.after)
        && let Ok(again) = api.patch(&key.name, params, &Patch::Apply(manifest)).await
    {
        let again = serde_json::to_value(again).expect("objects serialize");
        sides.after = super::diff::normalize(&again);
    }
    Ok(sides)
}

/// The first `data` key of a Secret whose value is not base64 (as the API server decodes
/// it: padded, line breaks ignored).
fn undecodable_secret_data(key: &ObjectKey, manifest: &Value) -> Option<String> {
    use base64::Engine;
    if !(key.group.is_empty() && key.kind == "Secret") {
        return None;
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
    );
    manifest["data"]
        .as_object()?
        .iter()
        .find_map(|(name, value)| {
            let text: String = value
                .as_str()
                .unwrap_or_default()
                .chars()
                .filter(|c| !matches!(c, '\r' | '\n'))
                .collect();
            engine.decode(text).is_err().then(|| format!("data.{name}"))
        })
}

/// Dry-runs the creation of every hook whose kind is served, so that an invalid hook stops
/// the sync before anything is written (a hook left by an earlier run is no error). A hook
/// in a namespace this set creates (`creating_namespaces`) cannot be dry-run before it exists.
pub(super) async fn dry_run_hooks(
    client: &kube::Client,
    resolver: &Resolver,
    hooks: &[Hook],
    creating_namespaces: &BTreeSet<String>,
) -> Vec<PlanError> {
    let hooks: Vec<&Hook> = hooks
        .iter()
        .filter(|h| !creating_namespaces.contains(&h.key.namespace))
        .collect();
    // Indexes, not a closure over borrowed items: see `apply::execute::apply_batch`.
    futures::stream::iter((0..hooks.len()).map(|i| dry_run_hook(client, resolver, hooks[i])))
        .buffer_unordered(8)
        .filter_map(|error| async move { error })
        .collect()
        .await
}

async fn dry_run_hook(
    client: &kube::Client,
    resolver: &Resolver,
    hook: &Hook,
) -> Option<PlanError> {
    let api_version = hook.manifest["apiVersion"].as_str().unwrap_or_default();
    let kind = resolver.resolve(api_version, &hook.key.kind)?;
    let api = api_for(client, &kind, &hook.key.namespace);
    let object: DynamicObject = match serde_json::from_value(hook.manifest.clone()) {
        Ok(object) => object,
        Err(e) => {
            return Some(PlanError::of_object(
                &hook.key,
                &hook.origin,
                format!("not a valid object: {e}"),
            ));
        }
    };
    let params = kube::api::PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    match api.create(&params, &object).await {
        Ok(_) => None,
        Err(kube::Error::Api(status)) if status.code == 409 => None,
        Err(e) => Some(cluster_error(Some(&hook.key), Some(&hook.origin), &e)),
    }
}
