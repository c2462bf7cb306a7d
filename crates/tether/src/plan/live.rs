//! What the cluster holds of the set before the plan: its parent (the ApplySet as
//! recorded), whether the namespace exists, the live members read with one LIST per kind
//! and namespace ([`prefetch_live`]), and who owns another set's object ([`owner_of_set`]).

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams};
use serde_json::Value;

use super::classify::{already_held, unchanged_live};
use super::prepare::Prepared;
use super::types::{PlanError, PlanErrors, PlanOptions, SetOwner, cluster_error};
use crate::cluster::api_for;
use crate::cluster::discovery::KindInfo;
use crate::inventory::{ApplySet, PART_OF_LABEL};
use crate::object::ObjectKey;

/// Reads the set's parent: the set as recorded (a new one when there is no parent yet),
/// whether the parent exists, and what about it stops the plan.
pub(super) async fn read_set(
    client: &kube::Client,
    options: &PlanOptions,
) -> Result<(ApplySet, bool, Vec<PlanError>), PlanErrors> {
    let mut applyset = ApplySet::new(&options.app, &options.namespace);
    let parents: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &options.namespace,
        &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()),
    );
    match parents.get_opt(&applyset.parent_name()).await {
        Ok(Some(parent)) => {
            let value = serde_json::to_value(parent).expect("objects serialize");
            let read = applyset.read_parent(&value);
            let errors = parent_errors(&applyset, read, options);
            Ok((applyset, true, errors))
        }
        Ok(None) => Ok((applyset, false, Vec::new())),
        Err(err) => Err(PlanErrors(vec![cluster_error(None, None, &err)])),
    }
}

/// What about an existing parent stops the plan: it is no ApplySet parent, or another
/// Application's, or (for a name derived from a folder) another folder's.
fn parent_errors(
    applyset: &ApplySet,
    read: Result<(), String>,
    options: &PlanOptions,
) -> Vec<PlanError> {
    let mut errors = Vec::new();
    if let Err(why) = read {
        errors.push(PlanError::of_set(format!(
            "Secret/{} -n {} exists but cannot be tether's ApplySet parent: {why}; choose another --app",
            applyset.parent_name(),
            options.namespace
        )));
    }
    // Two Applications of one name in different namespaces, with one destination
    // namespace, would share a set: the second is refused.
    if let (Some(recorded), Some(ours)) = (&applyset.application, &options.application)
        && recorded != ours
    {
        errors.push(PlanError::of_set(format!(
            "Secret/{} -n {} is the set of Application {recorded}; Application {ours} would take over its objects: give one of them another name or destination namespace",
            applyset.parent_name(),
            options.namespace
        )));
    }
    if options.app_defaulted
        && let (Some(recorded), Some(ours)) = (&applyset.source, &options.source)
        && recorded != ours
    {
        errors.push(PlanError::of_set(format!(
            "the application name {app:?} comes from the folder's name, and its set (Secret/{parent} -n {namespace}) holds the objects of {recorded}, not of {ours}; name this one with --app (or pass --app {app} to take that set over)",
            app = options.app,
            parent = applyset.parent_name(),
            namespace = options.namespace
        )));
    }
    errors
}

/// Whether `namespace` does not exist. An account that may not read Namespaces (a tenant
/// confined to its own) counts it as existing: its writes then say otherwise.
pub(super) async fn namespace_missing(
    client: &kube::Client,
    namespace: &str,
) -> Result<bool, PlanErrors> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    match namespaces.get_opt(namespace).await {
        Ok(found) => Ok(found.is_none()),
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(false),
        Err(err) => Err(PlanErrors(vec![cluster_error(None, None, &err)])),
    }
}

/// Objects of one kind in one namespace are read with one LIST instead of one GET each,
/// when the set has more than this many of them.
const LIST_THRESHOLD: usize = 4;

/// What one LIST per (kind, namespace) told about the set's objects there.
#[derive(Default)]
struct Listed {
    /// The live members (by the ApplySet label), by name.
    members: BTreeMap<String, Value>,
    /// Members that already hold what tether would write (see [`already_held`]), decided
    /// page by page as they were listed; their managedFields are not kept.
    unchanged: BTreeSet<String>,
    /// When many desired objects were not members: the names of every object of that kind
    /// there, from a metadata-only LIST. A desired name absent from it does not exist.
    existing: Option<BTreeSet<String>>,
    /// The members were listed: those not taken are every other member there.
    members_listed: bool,
}

impl Listed {
    /// What the LISTs settle about the object named `name`: unchanged, its live state (or
    /// that it does not exist), or nothing (it exists but is not a member yet, or its kind
    /// was not listed there): then it is read alone. A member is handed over, not copied:
    /// each is asked for once.
    fn take(&mut self, name: &str) -> Prefetched {
        if let Some(member) = self.members.remove(name) {
            return if self.unchanged.contains(name) {
                Prefetched::Unchanged(member)
            } else {
                Prefetched::Live(Some(member))
            };
        }
        match &self.existing {
            Some(existing) if !existing.contains(name) => Prefetched::Live(None),
            _ => Prefetched::Unknown,
        }
    }
}

/// What the LISTs told about one desired object.
pub(super) enum Prefetched {
    /// Not listed: read it alone.
    Unknown,
    /// Its live state (`None`: it does not exist).
    Live(Option<Value>),
    /// A member that already holds what tether would write (managedFields dropped).
    Unchanged(Value),
}

/// A (group, kind, namespace) of the set.
pub(super) type Group = (String, String, String);

/// What the LISTs told, by (group, kind, namespace).
pub(super) struct Prefetch(BTreeMap<Group, Listed>);

impl Prefetch {
    /// What the LISTs settle about the object `key` (see [`Listed::take`]); a kind not
    /// listed in its namespace is read alone.
    pub(super) fn take(&mut self, key: &ObjectKey) -> Prefetched {
        let group = (key.group.clone(), key.kind.clone(), key.namespace.clone());
        self.0
            .get_mut(&group)
            .map_or(Prefetched::Unknown, |listed| listed.take(&key.name))
    }

    /// The members listed and not taken, where the members were listed: by (group, kind,
    /// namespace), every member there that is not desired (the prune candidates).
    pub(super) fn leftover(self) -> BTreeMap<Group, Vec<Value>> {
        self.0
            .into_iter()
            .filter(|(_, listed)| listed.members_listed)
            .map(|(group, listed)| (group, listed.members.into_values().collect()))
            .collect()
    }
}

/// Objects per LIST page: bounds what one answer holds in memory.
const LIST_PAGE: u32 = 250;

/// The metadata-only LIST that tells which desired objects exist is used while the kind
/// has at most this many objects there per absent desired object; beyond, one GET each is
/// cheaper for the server.
const NAMES_PER_GET: usize = 4;

/// Reads the live members of this set for every (kind, namespace) with many desired
/// objects, one request each. Only members are listed (by the ApplySet label), so memory
/// stays proportional to the set even when many applications share a namespace; and only
/// where the parent records members (a kind and namespace it does not record holds none:
/// the parent is widened before a member is created). When many desired objects are not
/// among them (a first apply), one metadata-only LIST, paged, tells which of them exist
/// instead of one GET each, unless the namespace holds many more objects of that kind (see
/// [`NAMES_PER_GET`]); an object that exists but is not a member yet (to adopt, or another
/// set's) is read alone. Where `options.watched` says the kind's labelled objects there far
/// outnumber the set's (see [`LISTED_PER_GET`]), nothing is listed: each is read alone.
pub(super) async fn prefetch_live(
    client: &kube::Client,
    prepared: &[Prepared],
    applyset: &ApplySet,
    options: &PlanOptions,
) -> Result<Prefetch, PlanError> {
    // Each (kind, namespace) with its desired objects: name → index in `prepared`.
    type Desired = BTreeMap<String, usize>;
    let mut groups: BTreeMap<Group, (KindInfo, Desired)> = BTreeMap::new();
    for (index, item) in prepared.iter().enumerate() {
        if let Some(kind) = &item.kind {
            groups
                .entry((
                    item.key.group.clone(),
                    item.key.kind.clone(),
                    item.key.namespace.clone(),
                ))
                .or_insert_with(|| (kind.clone(), BTreeMap::new()))
                .1
                .insert(item.key.name.clone(), index);
        }
    }
    let lists = futures::stream::iter(
        groups
            .into_iter()
            .filter(|(_, (_, desired))| desired.len() > LIST_THRESHOLD)
            .map(|(group, (kind, desired))| async move {
                let reads = Reads::of(&group, &kind, desired.len(), applyset, options);
                let set = (applyset.id.as_str(), reads);
                let listed = list_group(client, &kind, &group.2, prepared, &desired, set).await;
                (group, listed)
            }),
    )
    .buffer_unordered(4)
    .collect::<Vec<_>>()
    .await;
    let mut live = BTreeMap::new();
    for (group, listed) in lists {
        live.insert(group, listed.map_err(|e| cluster_error(None, None, &e))?);
    }
    Ok(Prefetch(live))
}

/// A set's members of a kind in a namespace are listed while the labelled objects of
/// that kind there number at most this many per desired object; beyond, one GET each
/// costs the API server less than scanning them all: a GET costs about what scanning
/// 2,000 objects does (1.1 ms against 0.45-0.6 µs an object, measured on the local
/// cluster; see [`super::Watched::crowd`]). At 1,000 the agent's restart with 1,000 Applications of
/// 10 objects in one namespace sent 13,031 requests, at 2,000 4,041 (both in 7.2 s).
pub(super) const LISTED_PER_GET: usize = 2000;

/// Which LISTs one (kind, namespace) of the set is worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reads {
    /// The set's members there, by its label.
    members: bool,
    /// The names of every object of the kind there, to tell which desired ones exist.
    names: bool,
    /// Keep an unchanged member's live state (see [`PlanOptions::keep_unchanged_live`]).
    keep_unchanged_live: bool,
}

impl Reads {
    /// What to list for `desired` objects of `group`: members only where the parent
    /// records the kind and namespace, nothing where the crowd there is far larger.
    fn of(
        group: &Group,
        kind: &KindInfo,
        desired: usize,
        applyset: &ApplySet,
        options: &PlanOptions,
    ) -> Self {
        let (g, k, namespace) = group;
        let crowd = options
            .watched
            .as_ref()
            .map_or(0, |watched| watched.crowd(g, k, namespace));
        let there = if kind.namespaced {
            namespace.as_str()
        } else {
            ""
        };
        let recorded = applyset.records(g, k, there);
        Self {
            members: recorded && crowd <= desired * LISTED_PER_GET,
            names: crowd <= desired * NAMES_PER_GET,
            keep_unchanged_live: options.keep_unchanged_live,
        }
    }
}

/// Lists the set's members of one kind in one namespace and, when many desired objects
/// are not among them, the names of every object of that kind there (as `reads` allows).
async fn list_group(
    client: &kube::Client,
    kind: &KindInfo,
    namespace: &str,
    prepared: &[Prepared],
    desired: &BTreeMap<String, usize>,
    (applyset_id, reads): (&str, Reads),
) -> Result<Listed, kube::Error> {
    let api = api_for(client, kind, namespace);
    let (members, unchanged) = match reads.members {
        true => {
            let keep = reads.keep_unchanged_live;
            list_members(&api, kind, prepared, desired, applyset_id, keep).await?
        }
        false => Default::default(),
    };
    let absent = desired
        .keys()
        .filter(|name| !members.contains_key(name.as_str()))
        .count();
    let mut existing = None;
    if reads.names && absent > LIST_THRESHOLD {
        existing = list_names(&api, absent).await?;
    }
    Ok(Listed {
        members,
        unchanged,
        existing,
        members_listed: reads.members,
    })
}

/// The live members (by the ApplySet label) of one kind in one namespace, by name, and
/// those of them that already hold what tether would write.
async fn list_members(
    api: &Api<DynamicObject>,
    kind: &KindInfo,
    prepared: &[Prepared],
    desired: &BTreeMap<String, usize>,
    applyset_id: &str,
    keep_unchanged_live: bool,
) -> Result<(BTreeMap<String, Value>, BTreeSet<String>), kube::Error> {
    // Paged: one page's answer at a time is held beside the objects kept.
    let mut page = ListParams::default()
        .labels(&format!("{PART_OF_LABEL}={applyset_id}"))
        .limit(LIST_PAGE);
    let mut members: BTreeMap<String, Value> = BTreeMap::new();
    let mut unchanged = BTreeSet::new();
    loop {
        let list = api.list(&page).await?;
        let next = list.metadata.continue_.clone().filter(|t| !t.is_empty());
        for mut object in list {
            let Some(name) = object.metadata.name.clone() else {
                continue;
            };
            // Items of a list carry no apiVersion and kind; a GET's object does. Without
            // them every listed object would look changed and be read again.
            object.types = Some(kube::core::TypeMeta {
                api_version: kind.resource.api_version.clone(),
                kind: kind.resource.kind.clone(),
            });
            let mut live = serde_json::to_value(object).expect("objects serialize");
            // Decided now, while this page is held: an unchanged member keeps no
            // managedFields, so a no-op plan never holds every member's whole.
            if let Some(&index) = desired.get(&name)
                && already_held(&prepared[index].manifest, &live, applyset_id)
            {
                live = unchanged_live(live, keep_unchanged_live);
                unchanged.insert(name.clone());
            }
            members.insert(name, live);
        }
        match next {
            Some(token) => page = page.continue_token(&token),
            None => break,
        }
    }
    Ok((members, unchanged))
}

/// The names of every object of the kind in the namespace, from a metadata-only LIST,
/// paged; `None` when there are many more of them than the `absent` desired objects.
async fn list_names(
    api: &Api<DynamicObject>,
    absent: usize,
) -> Result<Option<BTreeSet<String>>, kube::Error> {
    let mut names = BTreeSet::new();
    let mut page = ListParams::default().limit(LIST_PAGE);
    loop {
        let answer = api.list_metadata(&page).await?;
        // A namespace shared with far more objects of this kind than the set creates
        // (many applications in one namespace): its pages would cost more than a GET of
        // each absent object, so those are read alone after all.
        let total = answer.items.len() as u64
            + answer
                .metadata
                .remaining_item_count
                .map_or(0, |n| n.max(0) as u64);
        let unknown_size = answer.metadata.remaining_item_count.is_none()
            && answer
                .metadata
                .continue_
                .as_ref()
                .is_some_and(|t| !t.is_empty());
        if unknown_size || total > (absent * NAMES_PER_GET) as u64 {
            return Ok(None);
        }
        names.extend(answer.items.into_iter().filter_map(|o| o.metadata.name));
        match answer.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => page = page.continue_token(&token),
            None => return Ok(Some(names)),
        }
    }
}

/// Who owns ApplySet `id`: the Application its parent records, else the app name and
/// namespace of a `tether apply`, else unknown (its parent cannot be read).
pub(super) async fn owner_of_set(client: &kube::Client, id: &str, namespace: &str) -> SetOwner {
    use crate::inventory::{APPLICATION_ANNOTATION, ID_LABEL};
    let params = ListParams::default().labels(&format!("{ID_LABEL}={id}"));
    let secrets = |api: Api<k8s_openapi::api::core::v1::Secret>| {
        let params = params.clone();
        async move { api.list(&params).await.ok().map(|l| l.items) }
    };
    // Across namespaces when allowed; else where the object is (a tenant's rights).
    let found = match secrets(Api::all(client.clone())).await {
        Some(found) => Some(found),
        None => secrets(Api::namespaced(client.clone(), namespace)).await,
    };
    let Some(parent) = found.into_iter().flatten().next() else {
        return SetOwner::Unknown;
    };
    let meta = &parent.metadata;
    if let Some(application) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(APPLICATION_ANNOTATION))
    {
        return SetOwner::Application(application.clone());
    }
    let name = meta.name.as_deref().unwrap_or_default();
    SetOwner::Apply {
        app: name.strip_prefix("tether-").unwrap_or(name).to_string(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        parent: name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::GroupKind;

    fn kind(namespaced: bool) -> KindInfo {
        let gvk = kube::api::GroupVersionKind::gvk("", "v1", "ConfigMap");
        KindInfo {
            resource: kube::api::ApiResource::from_gvk(&gvk),
            namespaced,
        }
    }

    fn group(namespace: &str) -> Group {
        (String::new(), "ConfigMap".into(), namespace.into())
    }

    /// Plan options whose crowd says `crowd` labelled ConfigMaps everywhere.
    fn options(crowd: Option<usize>) -> PlanOptions {
        let mut options = PlanOptions::new("web", "shop");
        options.watched = crowd.map(|n| std::sync::Arc::new(Crowd(n)) as _);
        options
    }

    /// `n` labelled objects of every kind everywhere; no members known.
    struct Crowd(usize);

    impl crate::plan::Watched for Crowd {
        fn crowd(&self, _: &str, _: &str, _: &str) -> usize {
            self.0
        }

        fn members(&self, _: &str, _: &str, _: &str, _: &str) -> Option<Vec<String>> {
            None
        }
    }

    #[test]
    fn members_are_listed_only_where_the_parent_records_them() {
        let new = ApplySet::new("web", "shop");
        let reads = Reads::of(&group("shop"), &kind(true), 10, &new, &options(None));
        assert!(
            !reads.members,
            "a set without a parent has no member to list"
        );
        assert!(reads.names, "which desired objects exist is still listed");
        let mut recorded = ApplySet::new("web", "shop");
        recorded.group_kinds.insert(GroupKind::parse("ConfigMap"));
        recorded.namespaces.insert("extra".into());
        for namespace in ["shop", "extra"] {
            let reads = Reads::of(
                &group(namespace),
                &kind(true),
                10,
                &recorded,
                &options(None),
            );
            assert!(reads.members, "recorded in {namespace}");
        }
        let reads = Reads::of(
            &group("elsewhere"),
            &kind(true),
            10,
            &recorded,
            &options(None),
        );
        assert!(!reads.members, "a namespace the parent does not record");
        let mut other = ApplySet::new("web", "shop");
        other.group_kinds.insert(GroupKind::parse("Secret"));
        let reads = Reads::of(&group("shop"), &kind(true), 10, &other, &options(None));
        assert!(!reads.members, "a kind the parent does not record");
    }

    #[test]
    fn a_crowded_namespace_is_read_object_by_object() {
        let mut set = ApplySet::new("web", "shop");
        set.group_kinds.insert(GroupKind::parse("ConfigMap"));
        let reads = |crowd| Reads::of(&group("shop"), &kind(true), 10, &set, &options(crowd));
        assert_eq!((reads(None).members, reads(None).names), (true, true));
        let at = reads(Some(10 * LISTED_PER_GET));
        assert!(at.members, "at the bound, a LIST still costs less");
        assert!(
            !at.names,
            "but far more objects than absent ones are not listed by name"
        );
        let beyond = reads(Some(10 * LISTED_PER_GET + 1));
        assert_eq!((beyond.members, beyond.names), (false, false));
        let names = reads(Some(10 * NAMES_PER_GET));
        assert_eq!((names.members, names.names), (true, true));
    }
}
