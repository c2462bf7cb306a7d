//! Prune candidates: members of the set (by label, in the kinds and namespaces its parent
//! records) that are no longer desired, each planned as a [`Action::Prune`] with its diff.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{Api, DynamicObject, ListParams};

use super::classify::render_diff;
use super::hooks;
use super::prepare::stage_of;
use super::types::{Action, Change, PlanError, Skipped, cluster_error};
use crate::cluster::api_for;
use crate::cluster::discovery::{KindInfo, Resolver};
use crate::inventory::{ApplySet, PART_OF_LABEL};
use crate::object::{GroupKind, ObjectKey, Origin};

/// Members of the set (by label, in the kinds and namespaces its parent records) that are
/// no longer desired; those whose annotations keep them (`Prune=false`, Flux's `prune:
/// disabled`, …: see [`super::sync_options`]) are left in the cluster, said in the second
/// list. `deleting`: the whole set is deleted, and what keeps an object then is asked.
pub(super) async fn prune_candidates(
    client: &kube::Client,
    resolver: &Resolver,
    applyset: &ApplySet,
    desired: &BTreeMap<ObjectKey, Origin>,
    deleting: bool,
) -> Result<(Vec<Change>, Vec<Skipped>), PlanError> {
    use super::sync_options::{kept_on_delete, kept_on_prune};
    let kept_by = |value: &serde_json::Value| match deleting {
        true => kept_on_delete(value),
        false => kept_on_prune(value),
    };
    let gone = match deleting {
        true => "the set is deleted",
        false => "no longer in Git",
    };
    let selector = ListParams::default().labels(&format!("{PART_OF_LABEL}={}", applyset.id));
    let mut namespaces: BTreeSet<String> = applyset.namespaces.clone();
    namespaces.insert(applyset.namespace.clone());
    let mut prunes = Vec::new();
    let mut kept = Vec::new();
    for GroupKind { group, kind } in &applyset.group_kinds {
        let Some(info) = resolver.resolve_group_kind(group, kind) else {
            // The kind is gone (its CRD was deleted): so are its objects.
            continue;
        };
        let apis: Vec<Api<DynamicObject>> = if info.namespaced {
            namespaces
                .iter()
                .map(|ns| api_for(client, &info, ns))
                .collect()
        } else {
            vec![api_for(client, &info, "")]
        };
        for api in apis {
            let list = api
                .list(&selector)
                .await
                .map_err(|e| cluster_error(None, None, &e))?;
            for object in list {
                let value = serde_json::to_value(&object).expect("objects serialize");
                let key = ObjectKey {
                    group: group.clone(),
                    kind: kind.clone(),
                    namespace: object.metadata.namespace.clone().unwrap_or_default(),
                    name: object.metadata.name.clone().unwrap_or_default(),
                };
                if desired.contains_key(&key) {
                    continue;
                }
                match kept_by(&value) {
                    Some(why) => kept.push(Skipped {
                        key,
                        origin: Origin {
                            file: String::new(),
                            line: 0,
                            document: 0,
                            item: None,
                        },
                        why: format!("{gone}, kept in the cluster: {why}"),
                    }),
                    None => prunes.push(prune_of(key, value, &info)),
                }
            }
        }
    }
    Ok((prunes, kept))
}

/// The prune of a member no longer desired.
fn prune_of(key: ObjectKey, live: serde_json::Value, info: &KindInfo) -> Change {
    Change {
        stage: stage_of(&key, info.namespaced),
        // A wave that no longer parses prunes with wave 0.
        wave: hooks::wave_of(&live).unwrap_or(0),
        diff: render_diff(Some(&live), None, &key),
        key,
        action: Action::Prune,
        origin: None,
        conflicts: Vec::new(),
        desired: None,
        live: Some(live),
        kind: Some(info.clone()),
        takes_over_from: Vec::new(),
        reclaims: Vec::new(),
        force: false,
        recreate: None,
        ignored: Vec::new(),
    }
}
