//! Plan: desired objects + the cluster → what apply would do to each object, with its diff.
//!
//! Every desired object is dry-run with server-side apply (field manager `tether`), so
//! defaults, admission and removed fields show exactly as the server would make them; the
//! prediction is compared with the live object minus server-owned fields ([`diff`]).
//! Objects recorded in the ApplySet but no longer desired are planned for pruning.
//! Start at [`plan`]: `prepare` (pure) → `live` (LISTs) → `dry_run` per object, read by
//! the pure `classify` → `prune` → the hooks' dry-runs. The values are in `types`.

mod classify;
pub mod diff;
mod dry_run;
pub mod fields;
pub mod hooks;
pub mod ignore;
mod live;
pub mod migrate;
mod prepare;
mod prune;
pub mod sync_options;
mod types;

pub use prepare::hook_label;
pub use types::*;

use std::collections::BTreeSet;

use crate::cluster::discovery::Resolver;
use crate::object::Object;
use dry_run::{Planned, SetScope};
use prepare::{Placement, Preparation};

/// Plans `objects` against the cluster. Errors stop the plan and name every object at fault.
pub async fn plan(
    client: &kube::Client,
    resolver: &Resolver,
    objects: Vec<Object>,
    options: &PlanOptions,
) -> Result<Plan, PlanErrors> {
    let (applyset, parent_exists, mut errors) = live::read_set(client, options).await?;
    let resolve = |api_version: &str, kind: &str| resolver.resolve(api_version, kind);
    let pending_kinds = prepare::pending_kinds(&objects);
    // A kind the cached discovery does not know may be new (a CRD installed since): look
    // again once before calling it unknown.
    if prepare::any_unknown(&objects, &pending_kinds, resolve)
        && let Err(err) = resolver.refresh().await
    {
        return Err(PlanErrors(vec![cluster_error(None, None, &err)]));
    }
    let placement = Placement::new(&applyset, parent_exists, &options.namespace);
    let Preparation {
        members,
        mut hooks,
        mut skipped,
        errors: invalid,
        desired,
    } = prepare::prepare(objects, resolve, &pending_kinds, &placement);
    errors.extend(invalid);

    let (creating_namespaces, creates_namespace) =
        namespaces_to_create(client, options, parent_exists, &members).await?;
    let mut prefetched = live::prefetch_live(client, &members, &applyset, options)
        .await
        .map_err(|error| PlanErrors(vec![error]))?;
    let context = SetScope {
        client,
        applyset: &applyset,
        creating_namespaces: &creating_namespaces,
        options,
    };
    let Planned {
        mut changes,
        refused,
        errors: failed,
    } = dry_run::plan_objects(&context, members, &mut prefetched).await;
    errors.extend(failed);

    if !options.partial {
        let listed = prefetched.leftover();
        match prune::prune_candidates(client, resolver, &applyset, &desired, listed, options).await
        {
            Ok((prunes, kept)) => {
                changes.extend(prunes);
                skipped.extend(kept);
            }
            Err(error) => errors.push(error),
        }
    }
    stop_at(errors)?;
    // Deleting, the hooks are run as they come (their namespace may be gone already).
    if !options.deleting {
        stop_at(dry_run::dry_run_hooks(client, resolver, &hooks, &creating_namespaces).await)?;
    }

    sync_options::apply_ssa_modes(&mut changes, &mut skipped);
    changes.sort_by(|a, b| (a.stage, a.wave, &a.key).cmp(&(b.stage, b.wave, &b.key)));
    hooks.sort_by(|a, b| {
        (&a.phases, a.run_order(), &a.key).cmp(&(&b.phases, b.run_order(), &b.key))
    });
    Ok(Plan {
        options: options.clone(),
        applyset,
        parent_exists,
        changes,
        hooks,
        skipped,
        refused,
        creates_namespace,
    })
}

/// The namespaces this sync creates (the set's Namespace objects, and with
/// [`PlanOptions::create_namespace`] the application's own when it does not exist), and
/// whether it creates the application's own.
async fn namespaces_to_create(
    client: &kube::Client,
    options: &PlanOptions,
    parent_exists: bool,
    members: &[prepare::Prepared],
) -> Result<(BTreeSet<String>, bool), PlanErrors> {
    let mut creating_namespaces = prepare::namespaces_created(members);
    let creates_namespace = options.create_namespace
        && !parent_exists
        && !creating_namespaces.contains(&options.namespace)
        && live::namespace_missing(client, &options.namespace).await?;
    if creates_namespace {
        creating_namespaces.insert(options.namespace.clone());
    }
    Ok((creating_namespaces, creates_namespace))
}

/// Stops the plan when there are errors, sorted by where they are defined.
fn stop_at(mut errors: Vec<PlanError>) -> Result<(), PlanErrors> {
    if errors.is_empty() {
        return Ok(());
    }
    errors.sort_by(|a, b| a.origin.cmp(&b.origin).then(a.key.cmp(&b.key)));
    Err(PlanErrors(errors))
}
