//! Prune candidates: members of the set (by label, in the kinds and namespaces its parent
//! records) that are no longer desired, each planned as a [`Action::Prune`] with its diff.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;

use super::classify::render_diff;
use super::hooks;
use super::live::{Group, LISTED_PER_GET};
use super::prepare::stage_of;
use super::types::{Action, Change, PlanError, PlanOptions, Skipped, Watched, cluster_error};
use crate::cluster::api_for;
use crate::cluster::discovery::{KindInfo, Resolver};
use crate::inventory::{ApplySet, PART_OF_LABEL};
use crate::object::{GroupKind, ObjectKey, Origin};

/// What is known of the set's members before their LIST: where the plan listed them
/// (the rest of them, not desired), and what a watch of the cluster sees.
struct Known<'a> {
    listed: BTreeMap<Group, Vec<Value>>,
    watched: Option<&'a dyn Watched>,
}

/// Members of the set (by label, in the kinds and namespaces its parent records) that are
/// no longer desired; those whose annotations keep them (`Prune=false`, Flux's `prune:
/// disabled`, …: see [`super::sync_options`]) are left in the cluster, said in the second
/// list. Deleting the whole set (`options.deleting`), what keeps an object then is asked.
/// Where the members are known, none is listed: those the plan `listed` (the rest of them
/// by (group, kind, namespace)), or those `options.watched` names, each read alone
/// (usually none: a removal from Git is rare).
pub(super) async fn prune_candidates(
    client: &kube::Client,
    resolver: &Resolver,
    applyset: &ApplySet,
    desired: &BTreeMap<ObjectKey, Origin>,
    listed: BTreeMap<Group, Vec<Value>>,
    options: &PlanOptions,
) -> Result<(Vec<Change>, Vec<Skipped>), PlanError> {
    use super::sync_options::{kept_on_delete, kept_on_prune};
    let deleting = options.deleting;
    let mut known = Known {
        listed,
        watched: options.watched.as_deref(),
    };
    let kept_by = |value: &Value| match deleting {
        true => kept_on_delete(value),
        false => kept_on_prune(value),
    };
    let gone = match deleting {
        true => "the set is deleted",
        false => "no longer in Git",
    };
    let mut namespaces: BTreeSet<String> = applyset.namespaces.clone();
    namespaces.insert(applyset.namespace.clone());
    let mut prunes = Vec::new();
    let mut kept = Vec::new();
    for GroupKind { group, kind } in &applyset.group_kinds {
        let Some(info) = resolver.resolve_group_kind(group, kind) else {
            // The kind is gone (its CRD was deleted): so are its objects.
            continue;
        };
        let places: Vec<&str> = match info.namespaced {
            true => namespaces.iter().map(String::as_str).collect(),
            false => vec![""],
        };
        for namespace in places {
            let there = (group.clone(), kind.clone(), namespace.to_string());
            let members = members_there(client, &info, applyset, desired, &there, &mut known)
                .await
                .map_err(|e| cluster_error(None, None, &e))?;
            for value in members {
                let key = key_of(
                    &there,
                    value["metadata"]["name"].as_str().unwrap_or_default(),
                );
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

/// The set's members of one kind in one namespace ("" for a cluster-scoped kind) that may
/// not be desired: the plan's listing of them, else those the watch names that are not
/// desired (each read alone; one that is gone or left the set is none), else a LIST by the
/// set's label.
async fn members_there(
    client: &kube::Client,
    info: &KindInfo,
    applyset: &ApplySet,
    desired: &BTreeMap<ObjectKey, Origin>,
    there: &Group,
    known: &mut Known<'_>,
) -> Result<Vec<Value>, kube::Error> {
    if let Some(listed) = known.listed.remove(there) {
        return Ok(listed);
    }
    let (group, kind, namespace) = there;
    let api: Api<DynamicObject> = api_for(client, info, namespace);
    // The members the watch names that are not desired, when reading each alone costs the
    // API server less than a LIST scanning the kind's objects there.
    let candidates = known.watched.and_then(|watched| {
        let names = watched.members(&applyset.id, group, kind, namespace)?;
        let candidates: Vec<String> = names
            .into_iter()
            .filter(|name| !desired.contains_key(&key_of(there, name)))
            .collect();
        let crowd = watched.crowd(group, kind, namespace);
        read_alone(candidates.len(), crowd).then_some(candidates)
    });
    let Some(names) = candidates else {
        let selector = ListParams::default().labels(&format!("{PART_OF_LABEL}={}", applyset.id));
        let list = api.list(&selector).await?;
        return Ok(list.items.iter().map(to_value).collect());
    };
    let mut members = Vec::new();
    for name in names {
        if let Some(object) = api.get_opt(&name).await?
            && object.labels().get(PART_OF_LABEL) == Some(&applyset.id)
        {
            members.push(to_value(&object));
        }
    }
    Ok(members)
}

/// Whether `candidates` GETs cost the API server less than one LIST that scans `crowd`
/// objects (one GET costs about what scanning [`LISTED_PER_GET`] does); one GET is never
/// more than the LIST.
fn read_alone(candidates: usize, crowd: usize) -> bool {
    candidates <= (crowd / LISTED_PER_GET).max(1)
}

fn key_of((group, kind, namespace): &Group, name: &str) -> ObjectKey {
    ObjectKey {
        group: group.clone(),
        kind: kind.clone(),
        namespace: namespace.clone(),
        name: name.to_string(),
    }
}

fn to_value(object: &DynamicObject) -> Value {
    serde_json::to_value(object).expect("objects serialize")
}

/// The prune of a member no longer desired.
fn prune_of(key: ObjectKey, live: Value, info: &KindInfo) -> Change {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_candidates_are_read_alone_and_many_in_a_small_namespace_are_listed() {
        assert!(read_alone(0, 3), "nothing to read");
        assert!(read_alone(1, 3), "one GET instead of one LIST");
        assert!(
            !read_alone(2, 3),
            "one LIST of 3 objects instead of two GETs"
        );
        assert!(
            read_alone(50, 100_000),
            "50 GETs against scanning 100,000 objects"
        );
        assert!(!read_alone(51, 100_000));
    }
}
