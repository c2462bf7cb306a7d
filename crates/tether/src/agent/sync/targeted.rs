//! A targeted drift correction: with selfHeal, on the revision applied, only the members
//! someone changed or deleted are planned and applied again (never pruned).

use std::collections::BTreeSet;

use super::apply::apply_and_record;
use super::full::applied_digests;
use super::health::assess_set;
use super::health_rules;
use super::{Settled, render_digested};
use crate::agent::{Acting, Application, Context, Failure, Outcome};
use crate::object::{Object, ObjectKey};
use crate::plan::plan;
use crate::source::git::Revision;
use crate::source::tree::Tree;

/// What a targeted drift correction did.
pub(super) enum Targeted {
    Done(Box<Outcome>),
    /// The render is not the one applied, or a drifted member is not in it: sync in full
    /// (with this render).
    Full(Vec<Object>, [u8; 32]),
}

/// Corrects only the members someone changed or deleted: renders the applied revision,
/// plans and applies just those objects (never prunes), and keeps the rest of the status.
pub(super) async fn correct_drift(
    ctx: &Context,
    at: &Acting<'_>,
    app: &Application,
    applyset_id: &str,
    (revision, tree): (Revision, Box<dyn Tree>),
    drifted: BTreeSet<ObjectKey>,
    settled: Settled<'_>,
) -> Result<Targeted, Failure> {
    let (dest, client) = (at.dest, at.client);
    let (objects, digest) = render_digested(ctx, dest, app, applyset_id, &revision, tree).await?;
    if dest.drift.applied_digest(applyset_id) != Some(digest) {
        return Ok(Targeted::Full(objects, digest));
    }
    let subset = drifted_subset(&objects, &drifted, &app.spec.destination.namespace);
    if subset.len() < drifted.len() {
        return Ok(Targeted::Full(objects, digest));
    }
    let mut plan_options = crate::app::plan_options_for(&ctx.pipeline, app);
    plan_options.partial = true;
    plan_options.watched = Some(dest.drift.watched());
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
    let corrected: Vec<ObjectKey> = planned.changes.iter().map(|c| c.key.clone()).collect();
    let (applied, written) = if planned.has_changes() {
        let what = "corrected drift at";
        let (entry, written) =
            apply_and_record(ctx, at, app, planned, &revision, true, what).await?;
        (Some(entry), written.health)
    } else {
        (None, Vec::new())
    };
    let (_, sync, apply_set) = settled;
    // The corrected objects are as the server answered their writes, or read again, with
    // those whose status changed and those not Healthy (the others still are as last read).
    if let Some(known) = dest
        .health
        .lock()
        .expect("not poisoned")
        .get_mut(applyset_id)
    {
        for key in &corrected {
            known.remove(key);
        }
        known.extend(written);
    }
    let health = assess_set(ctx, at.dest, at.client, applyset_id, &health_rules(app)).await;
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

/// The rendered objects that drifted. A rendered object names its namespace, or leaves it
/// to the destination (or is cluster-scoped, where the watch reports none).
fn drifted_subset(
    objects: &[Object],
    drifted: &BTreeSet<ObjectKey>,
    destination: &str,
) -> Vec<Object> {
    let is_drifted = |key: &ObjectKey| {
        drifted.iter().any(|d| {
            d.group == key.group
                && d.kind == key.kind
                && d.name == key.name
                && (d.namespace == key.namespace
                    || (key.namespace.is_empty()
                        && (d.namespace == destination || d.namespace.is_empty())))
        })
    };
    objects
        .iter()
        .filter(|o| is_drifted(&o.key))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::Origin;

    fn key(kind: &str, namespace: &str, name: &str) -> ObjectKey {
        ObjectKey {
            group: String::new(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn object(key: ObjectKey) -> Object {
        Object {
            key,
            origin: Origin {
                file: "web.yaml".into(),
                line: 1,
                document: 0,
                item: None,
            },
            manifest: serde_json::Value::Null,
        }
    }

    #[test]
    fn a_drifted_member_is_found_whether_its_manifest_names_its_namespace_or_not() {
        let objects = [
            object(key("ConfigMap", "shop", "named")),
            object(key("ConfigMap", "", "defaulted")),
            object(key("Namespace", "", "shop")),
            object(key("ConfigMap", "", "kept")),
        ];
        let drifted = BTreeSet::from([
            key("ConfigMap", "shop", "named"),
            // Left to the destination namespace by its manifest.
            key("ConfigMap", "shop", "defaulted"),
            // Cluster-scoped: the watch reports no namespace.
            key("Namespace", "", "shop"),
            // In another namespace than the destination: not the rendered one.
            key("ConfigMap", "other", "kept"),
        ]);
        let subset = drifted_subset(&objects, &drifted, "shop");
        let names: Vec<&str> = subset.iter().map(|o| o.key.name.as_str()).collect();
        assert_eq!(names, ["named", "defaulted", "shop"]);
        // A drifted member missing from the render makes the subset smaller than the
        // drift: the correction falls back to a full sync.
        assert!(subset.len() < drifted.len());
    }
}
