//! Prune candidates: members of the set (by label, in the kinds and namespaces its parent
//! records) that are no longer desired, each planned as a [`Action::Prune`] with its diff.

use std::collections::{BTreeMap, BTreeSet};

use kube::api::{Api, DynamicObject, ListParams};

use super::classify::render_diff;
use super::hooks;
use super::prepare::stage_of;
use super::types::{Action, Change, PlanError, Skipped, cluster_error};
use crate::cluster::api_for;
use crate::cluster::discovery::Resolver;
use crate::inventory::{ApplySet, PART_OF_LABEL};
use crate::object::{GroupKind, ObjectKey, Origin};

/// Members of the set (by label, in the kinds and namespaces its parent records) that are
/// no longer desired; those whose annotations keep them (`Prune=false`, Flux's `prune:
/// disabled`, …: see [`super::sync_options`]) are left in the cluster, said in the second
/// list.
pub(super) async fn prune_candidates(
    client: &kube::Client,
    resolver: &Resolver,
    applyset: &ApplySet,
    desired: &BTreeMap<ObjectKey, Origin>,
) -> Result<(Vec<Change>, Vec<Skipped>), PlanError> {
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
                if let Some(why) = super::sync_options::kept_on_prune(&value) {
                    kept.push(Skipped {
                        key,
                        origin: Origin {
                            file: String::new(),
                            line: 0,
                            document: 0,
                            item: None,
                        },
                        why: format!("no longer in Git, kept in the cluster: {why}"),
                    });
                    continue;
                }
                prunes.push(Change {
                    stage: stage_of(&key, info.namespaced),
                    // A wave that no longer parses prunes with wave 0.
                    wave: hooks::wave_of(&value).unwrap_or(0),
                    diff: render_diff(Some(&value), None, &key),
                    key,
                    action: Action::Prune,
                    origin: None,
                    conflicts: Vec::new(),
                    desired: None,
                    live: Some(value),
                    kind: Some(info.clone()),
                    takes_over_from: Vec::new(),
                    reclaims: Vec::new(),
                    force: false,
                    ignored: Vec::new(),
                });
            }
        }
    }
    Ok((prunes, kept))
}
