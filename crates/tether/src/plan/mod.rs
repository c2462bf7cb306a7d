//! Plan: desired objects + the cluster → what apply would do to each object, with its diff.
//!
//! Every desired object is dry-run with server-side apply (field manager `tether`), so
//! defaults, admission and removed fields show exactly as the server would make them; the
//! prediction is compared with the live object minus server-owned fields ([`diff`]).
//! Objects recorded in the ApplySet but no longer desired are planned for pruning.
//! Start at [`plan`].

pub mod diff;
pub mod fields;
pub mod hooks;
pub mod migrate;

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use serde::Serialize;
use serde_json::Value;

use crate::cluster::api_for;
use crate::cluster::discovery::{KindInfo, Resolver};
use crate::inventory::{ApplySet, PART_OF_LABEL};
use crate::object::GroupKind;
use crate::object::{Object, ObjectKey, Origin};

/// The field manager tether applies with.
pub const FIELD_MANAGER: &str = "tether";

#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// The application: names the ApplySet parent (`tether-<app>`).
    pub app: String,
    /// Default namespace for namespaced objects without one; also the parent's namespace.
    pub namespace: String,
    /// Take ownership of fields another manager owns.
    pub force_conflicts: bool,
    /// Take over objects that exist and belong to no ApplySet.
    pub adopt: bool,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Plan only the objects given, a part of the set (a targeted correction): members
    /// not given are left alone, never pruned.
    pub partial: bool,
    /// Keep an unchanged object's live state (but its managedFields) in its change, for
    /// health and for showing it (`tether status`, the agent's UI). Without it, only the
    /// object's identity and resourceVersion are kept: `plan` and `apply` read nothing
    /// more of an object they do not write, and a no-op plan of thousands then holds little.
    pub keep_unchanged_live: bool,
    /// The Application (`namespace/name`) whose set this is, when an agent plans it:
    /// recorded on the set's parent, so that a `tether apply` from elsewhere into the set
    /// is refused (see [`Plan::synced_by_other`]).
    pub application: Option<String>,
    /// An object that exists and belongs to another owner (another set, or none) is left
    /// out of the plan, in [`Plan::refused`], instead of stopping it: the agent syncs and
    /// heals the rest (DESIGN rule 13). Push mode's pre-flight keeps all-or-nothing.
    pub refuse_alone: bool,
    /// Create the namespace (`namespace`) when it does not exist and the set does not hold
    /// it (Argo CD's `CreateNamespace=true`): created, never a member, never pruned.
    pub create_namespace: bool,
    /// Where the objects come from (`<repository>#<path>`, or a folder), recorded on the
    /// set's parent by push mode.
    pub source: Option<String>,
    /// The application name was derived from the path: a set recording another source is
    /// refused, since two folders of one name would otherwise share (and prune) one set.
    pub app_defaulted: bool,
    pub progress: crate::progress::ProgressHandle,
}

impl PlanOptions {
    pub fn new(app: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            app: app.into(),
            namespace: namespace.into(),
            force_conflicts: false,
            adopt: false,
            concurrency: 16,
            partial: false,
            keep_unchanged_live: true,
            application: None,
            refuse_alone: false,
            create_namespace: false,
            source: None,
            app_defaulted: false,
            progress: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Update,
    Unchanged,
    Prune,
    Conflict,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Unchanged => "unchanged",
            Action::Prune => "prune",
            Action::Conflict => "conflict",
        })
    }
}

/// The order objects are applied in (and pruned in, reversed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Stage {
    Crds,
    Namespaces,
    ClusterScoped,
    Namespaced,
}

/// What apply would do to one object.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub key: ObjectKey,
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<Origin>,
    /// Unified YAML diff from live to predicted, Secret values redacted ("" when unchanged).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub diff: String,
    /// For conflicts: which fields, owned by which managers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<String>,
    #[serde(skip)]
    pub stage: Stage,
    /// The manifest to apply: namespace filled, ApplySet label added (none for prune).
    #[serde(skip)]
    pub desired: Option<Value>,
    #[serde(skip)]
    pub live: Option<Value>,
    /// `None` while the kind's CRD is part of this same set and not yet served.
    #[serde(skip)]
    pub kind: Option<KindInfo>,
    /// Client-side-apply managers whose fields apply will hand to tether first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub takes_over_from: Vec<String>,
    /// Its sync wave (a prune's, from the live object): within a stage, lower waves are
    /// applied first, and pruned last.
    pub wave: i64,
    /// Fields tether applied before that someone else changed since (drift): apply takes
    /// them back, as `field (from manager)`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reclaims: Vec<String>,
    /// Apply with force: every field in conflict is one tether applied before.
    #[serde(skip)]
    pub force: bool,
}

/// An object that runs at a phase of the sync instead of being a member of the set
/// (see [`hooks`]): created anew by each sync that changes something, never pruned,
/// never drift.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Hook {
    /// Its name, or its `generateName` prefix.
    pub key: ObjectKey,
    pub origin: Origin,
    pub phases: Vec<hooks::Phase>,
    /// Its order within a phase (its wave, or Helm's hook weight).
    pub order: i64,
    pub delete_policy: hooks::DeletePolicy,
    /// Named by `metadata.generateName`: each run gets a new name.
    pub generate_name: bool,
    /// The manifest to create: namespace filled, hook labels added.
    #[serde(skip)]
    pub manifest: Value,
}

impl Hook {
    /// When it runs within its phase: by order (wave or Helm weight), then Helm's kind
    /// order, then name. Hooks of one order and kind run at the same time.
    pub fn run_order(&self) -> (i64, usize, &str, &str) {
        (
            self.order,
            hooks::kind_rank(&self.key.kind),
            &self.key.kind,
            &self.key.name,
        )
    }
}

/// An object the sync leaves alone (a `Skip` hook, a Helm test hook, …), and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub key: ObjectKey,
    pub origin: Origin,
    pub why: String,
}

/// Label on every hook object: the ApplySet whose sync ran it (hooks are not members).
pub const HOOK_OF_LABEL: &str = "tether.dev/hook-of";
/// Label on every hook object: which hook of the set it is (a digest of kind and name or
/// prefix), so that the next run finds the objects earlier runs left.
pub const HOOK_LABEL: &str = "tether.dev/hook";

/// A problem that stops the plan: nothing may be written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}{}{message}", origin.as_ref().map(|o| format!("{o}: ")).unwrap_or_default(), key.as_ref().map(|k| format!("{k}: ")).unwrap_or_default())]
pub struct PlanError {
    pub key: Option<ObjectKey>,
    pub origin: Option<Origin>,
    pub message: String,
    /// The object exists and belongs to another owner (see [`PlanOptions::refuse_alone`]).
    #[serde(skip)]
    pub owned_elsewhere: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub struct PlanErrors(pub Vec<PlanError>);

impl std::fmt::Display for PlanErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} object{} cannot be applied; nothing was written:",
            if n == 1 { "" } else { "s" }
        )?;
        for error in &self.0 {
            write!(f, "\n  {error}")?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub create: usize,
    pub update: usize,
    pub unchanged: usize,
    pub prune: usize,
    pub conflict: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Plan: {} to create, {} to update, {} to prune, {} unchanged",
            self.create, self.update, self.prune, self.unchanged
        )?;
        if self.conflict > 0 {
            write!(f, ", {} in conflict", self.conflict)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub options: PlanOptions,
    /// The set as recorded by its parent now (empty when there is no parent yet).
    pub applyset: ApplySet,
    pub parent_exists: bool,
    pub changes: Vec<Change>,
    /// Hooks, by phase and order.
    pub hooks: Vec<Hook>,
    pub skipped: Vec<Skipped>,
    /// Objects left out because another owner holds them (with
    /// [`PlanOptions::refuse_alone`]; empty otherwise): each fails alone.
    pub refused: Vec<PlanError>,
    /// The namespace does not exist and is to be created first
    /// ([`PlanOptions::create_namespace`]).
    pub creates_namespace: bool,
}

impl Plan {
    /// The Application whose agent syncs this set, when this plan is not that agent's: a
    /// write here is drift that the agent puts back.
    pub fn synced_by_other(&self) -> Option<&str> {
        let recorded = self.applyset.application.as_deref()?;
        (self.options.application.as_deref() != Some(recorded)).then_some(recorded)
    }

    pub fn summary(&self) -> Summary {
        let mut summary = Summary::default();
        for change in &self.changes {
            match change.action {
                Action::Create => summary.create += 1,
                Action::Update => summary.update += 1,
                Action::Unchanged => summary.unchanged += 1,
                Action::Prune => summary.prune += 1,
                Action::Conflict => summary.conflict += 1,
            }
        }
        summary
    }

    /// Whether the cluster differs from the plan's objects: a change to make, an object
    /// left out because another owner holds it, or hooks of the last sync that did not
    /// succeed (the next sync runs them again).
    pub fn has_changes(&self) -> bool {
        !self.refused.is_empty()
            || self.creates_namespace
            || self.applyset.hooks_unfinished.is_some()
            || self.changes.iter().any(|c| c.action != Action::Unchanged)
    }

    /// Whether the plan orders objects in more than one wave.
    pub fn uses_waves(&self) -> bool {
        self.changes.iter().any(|c| c.wave != self.changes[0].wave)
    }

    pub fn desired_count(&self) -> usize {
        self.changes
            .iter()
            .filter(|c| c.action != Action::Prune)
            .count()
    }
}

/// Whether `namespace` does not exist. An account that may not read Namespaces (a tenant
/// confined to its own) counts it as existing: its writes then say otherwise.
async fn namespace_missing(client: &kube::Client, namespace: &str) -> Result<bool, PlanErrors> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    match namespaces.get_opt(namespace).await {
        Ok(found) => Ok(found.is_none()),
        Err(kube::Error::Api(status)) if status.code == 403 => Ok(false),
        Err(err) => Err(PlanErrors(vec![cluster_error(None, None, &err)])),
    }
}

fn stage_of(key: &ObjectKey, namespaced: bool) -> Stage {
    match (key.group.as_str(), key.kind.as_str()) {
        ("apiextensions.k8s.io", "CustomResourceDefinition") => Stage::Crds,
        ("", "Namespace") => Stage::Namespaces,
        _ if !namespaced => Stage::ClusterScoped,
        _ => Stage::Namespaced,
    }
}

fn api_error(err: &kube::Error) -> Option<&kube::core::Status> {
    match err {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
}

/// A desired object ready to plan: namespace filled in, ApplySet label added.
struct Prepared {
    key: ObjectKey,
    origin: Origin,
    manifest: Value,
    kind: Option<KindInfo>,
    namespaced: bool,
    wave: i64,
}

/// What every object's plan needs to know about the whole set.
struct Context<'a> {
    client: &'a kube::Client,
    applyset: &'a ApplySet,
    applyset_id: &'a str,
    creating_namespaces: &'a BTreeSet<String>,
    options: &'a PlanOptions,
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
enum Prefetched {
    /// Not listed: read it alone.
    Unknown,
    /// Its live state (`None`: it does not exist).
    Live(Option<Value>),
    /// A member that already holds what tether would write (managedFields dropped).
    Unchanged(Value),
}

/// A member that already holds, in the fields tether applied last time, exactly the values
/// it would write again: an apply cannot change it, and no dry-run is needed to know that
/// (a no-op plan of thousands of objects makes no request per object).
fn already_held(manifest: &Value, held: &Value, applyset_id: &str) -> bool {
    held["metadata"]["labels"][PART_OF_LABEL] == *applyset_id
        && migrate::client_side_managers(held).is_empty()
        && fields::already_applied(manifest, held)
}

/// Objects per LIST page: bounds what one answer holds in memory.
const LIST_PAGE: u32 = 250;

/// The metadata-only LIST that tells which desired objects exist is used while the kind
/// has at most this many objects there per absent desired object; beyond, one GET each is
/// cheaper for the server.
const NAMES_PER_GET: usize = 4;

/// Reads the live members of this set for every (kind, namespace) with many desired
/// objects, one request each. Only members are listed (by the ApplySet label), so memory
/// stays proportional to the set even when many applications share a namespace. When many
/// desired objects are not among them (a first apply), one metadata-only LIST, paged,
/// tells which of them exist instead of one GET each, unless the namespace holds many more
/// objects of that kind (see [`NAMES_PER_GET`]); an object that exists but is not a member
/// yet (to adopt, or another set's) is read alone.
async fn prefetch_live(
    client: &kube::Client,
    prepared: &[Prepared],
    applyset_id: &str,
    keep_unchanged_live: bool,
) -> Result<BTreeMap<(String, String, String), Listed>, PlanError> {
    // Each (kind, namespace) with its desired objects: name → index in `prepared`.
    type Desired = BTreeMap<String, usize>;
    let mut groups: BTreeMap<(String, String, String), (KindInfo, Desired)> = BTreeMap::new();
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
                let listed = list_group(
                    client,
                    &kind,
                    &group.2,
                    prepared,
                    &desired,
                    applyset_id,
                    keep_unchanged_live,
                )
                .await;
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
    Ok(live)
}

async fn list_group(
    client: &kube::Client,
    kind: &KindInfo,
    namespace: &str,
    prepared: &[Prepared],
    desired: &BTreeMap<String, usize>,
    applyset_id: &str,
    keep_unchanged_live: bool,
) -> Result<Listed, kube::Error> {
    let api = api_for(client, kind, namespace);
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
    let absent = desired
        .keys()
        .filter(|name| !members.contains_key(name.as_str()))
        .count();
    let mut existing = None;
    if absent > LIST_THRESHOLD {
        let mut names = BTreeSet::new();
        let mut page = ListParams::default().limit(LIST_PAGE);
        existing = loop {
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
                break None;
            }
            names.extend(answer.items.into_iter().filter_map(|o| o.metadata.name));
            match answer.metadata.continue_.filter(|token| !token.is_empty()) {
                Some(token) => page = page.continue_token(&token),
                None => break Some(names),
            }
        };
    }
    Ok(Listed {
        members,
        unchanged,
        existing,
    })
}

/// Plans `objects` against the cluster. Errors stop the plan and name every object at fault.
pub async fn plan(
    client: &kube::Client,
    resolver: &Resolver,
    objects: Vec<Object>,
    options: &PlanOptions,
) -> Result<Plan, PlanErrors> {
    let mut errors = Vec::new();
    let mut applyset = ApplySet::new(&options.app, &options.namespace);
    let parents: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &options.namespace,
        &kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()),
    );
    let parent_exists = match parents.get_opt(&applyset.parent_name()).await {
        Ok(Some(parent)) => {
            let value = serde_json::to_value(parent).expect("objects serialize");
            if let Err(why) = applyset.read_parent(&value) {
                errors.push(PlanError {
                    key: None,
                    origin: None,
                    message: format!(
                        "Secret/{} -n {} exists but cannot be tether's ApplySet parent: {why}; choose another --app",
                        applyset.parent_name(),
                        options.namespace
                    ),
                    owned_elsewhere: false,
                });
            }
            // Two Applications of one name in different namespaces, with one destination
            // namespace, would share a set: the second is refused.
            if let (Some(recorded), Some(ours)) = (&applyset.application, &options.application)
                && recorded != ours
            {
                errors.push(PlanError {
                    key: None,
                    origin: None,
                    message: format!(
                        "Secret/{} -n {} is the set of Application {recorded}; Application {ours} would take over its objects: give one of them another name or destination namespace",
                        applyset.parent_name(),
                        options.namespace
                    ),
                    owned_elsewhere: false,
                });
            }
            if options.app_defaulted
                && let (Some(recorded), Some(ours)) = (&applyset.source, &options.source)
                && recorded != ours
            {
                errors.push(PlanError {
                    key: None,
                    origin: None,
                    message: format!(
                        "the application name {app:?} comes from the folder's name, and its set (Secret/{parent} -n {namespace}) holds the objects of {recorded}, not of {ours}; name this one with --app (or pass --app {app} to take that set over)",
                        app = options.app,
                        parent = applyset.parent_name(),
                        namespace = options.namespace
                    ),
                    owned_elsewhere: false,
                });
            }
            true
        }
        Ok(None) => false,
        Err(err) => return Err(PlanErrors(vec![cluster_error(None, None, &err)])),
    };

    // CRDs in this set define kinds that may not be served yet.
    let pending_kinds: BTreeMap<(String, String), bool> = objects
        .iter()
        .filter(|o| {
            o.key.group == "apiextensions.k8s.io" && o.key.kind == "CustomResourceDefinition"
        })
        .filter_map(|o| {
            let spec = &o.manifest["spec"];
            Some((
                (
                    spec["group"].as_str()?.to_string(),
                    spec["names"]["kind"].as_str()?.to_string(),
                ),
                spec["scope"].as_str() != Some("Cluster"),
            ))
        })
        .collect();

    // A kind the cached discovery does not know may be new (a CRD installed since): look
    // again once before calling it unknown.
    let unknown = objects.iter().any(|o| {
        let api_version = o.manifest["apiVersion"].as_str().unwrap_or_default();
        resolver.resolve(api_version, &o.key.kind).is_none()
            && !pending_kinds.contains_key(&(o.key.group.clone(), o.key.kind.clone()))
    });
    if unknown && let Err(err) = resolver.refresh().await {
        return Err(PlanErrors(vec![cluster_error(None, None, &err)]));
    }

    let mut prepared = Vec::new();
    let mut hooks = Vec::new();
    let mut skipped = Vec::new();
    let mut seen: BTreeMap<ObjectKey, Origin> = BTreeMap::new();
    // Helm's install: the set's first sync, until one runs its hooks to the end.
    let install = !parent_exists
        || applyset
            .hooks_unfinished
            .as_ref()
            .is_some_and(|unfinished| unfinished.install);
    for object in objects {
        let role = match hooks::role_of(&object.manifest, install) {
            Ok(role) => role,
            Err(message) => {
                errors.push(PlanError {
                    key: Some(object.key.clone()),
                    origin: Some(object.origin.clone()),
                    message,
                    owned_elsewhere: false,
                });
                continue;
            }
        };
        let wave = match &role {
            hooks::Role::Member { wave } => *wave,
            hooks::Role::Hook { .. } => 0,
            hooks::Role::Ignored { why } => {
                skipped.push(Skipped {
                    key: object.key.clone(),
                    origin: object.origin.clone(),
                    why: why.clone(),
                });
                continue;
            }
        };
        let api_version = object.manifest["apiVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = resolver.resolve(&api_version, &object.key.kind);
        let namespaced = match &kind {
            Some(info) => info.namespaced,
            None => match pending_kinds.get(&(object.key.group.clone(), object.key.kind.clone())) {
                Some(namespaced) => *namespaced,
                None => {
                    errors.push(PlanError {
                        key: Some(object.key.clone()),
                        origin: Some(object.origin.clone()),
                        message: format!(
                            "the cluster does not serve kind {} in {api_version}; install its CRD or fix apiVersion/kind",
                            object.key.kind
                        ),
                        owned_elsewhere: false,
                    });
                    continue;
                }
            },
        };
        let mut key = object.key.clone();
        let mut manifest = object.manifest;
        let metadata = manifest["metadata"]
            .as_object_mut()
            .expect("render checked metadata");
        if namespaced {
            if key.namespace.is_empty() {
                key.namespace = options.namespace.clone();
                metadata.insert("namespace".into(), Value::String(key.namespace.clone()));
            }
        } else {
            // A cluster-scoped object is in no namespace. The application's own is dropped, as
            // kubectl drops it (charts and kustomize's `namespace:` set it everywhere); another
            // one means the writer took the kind for a namespaced one.
            if !key.namespace.is_empty() && key.namespace != options.namespace {
                errors.push(PlanError {
                    key: Some(object.key.clone()),
                    origin: Some(object.origin.clone()),
                    message: format!(
                        "{} is cluster-scoped, but metadata.namespace is {:?}; remove metadata.namespace",
                        key.kind, key.namespace
                    ),
                    owned_elsewhere: false,
                });
                continue;
            }
            key.namespace.clear();
            metadata.remove("namespace");
        }
        let labels = metadata
            .entry("labels")
            .or_insert_with(|| Value::Object(Default::default()));
        if !labels.is_object() {
            *labels = Value::Object(Default::default());
        }
        let labels = labels.as_object_mut().expect("just made an object");
        if let hooks::Role::Hook {
            phases,
            order,
            delete,
        } = role
        {
            labels.insert(HOOK_OF_LABEL.into(), Value::String(applyset.id.clone()));
            labels.insert(HOOK_LABEL.into(), Value::String(hook_label(&key)));
            hooks.push(Hook {
                generate_name: metadata.get("name").and_then(Value::as_str).is_none(),
                key,
                origin: object.origin,
                phases,
                order,
                delete_policy: delete,
                manifest,
            });
            continue;
        }
        labels.insert(PART_OF_LABEL.into(), Value::String(applyset.id.clone()));
        // Which fields tether applies, for the next plan to tell drift from a conflict.
        {
            let record = fields::record(&manifest);
            let digest = fields::content_digest(&manifest);
            let metadata = manifest["metadata"]
                .as_object_mut()
                .expect("render checked metadata");
            let annotations = metadata
                .entry("annotations")
                .or_insert_with(|| Value::Object(Default::default()));
            if !annotations.is_object() {
                *annotations = Value::Object(Default::default());
            }
            annotations
                .as_object_mut()
                .expect("just made an object")
                .extend([
                    (
                        fields::APPLIED_FIELDS_ANNOTATION.to_string(),
                        Value::String(record),
                    ),
                    (
                        fields::APPLIED_DIGEST_ANNOTATION.to_string(),
                        Value::String(digest),
                    ),
                ]);
        }
        if let Some(first) = seen.insert(key.clone(), object.origin.clone()) {
            errors.push(PlanError {
                key: Some(key.clone()),
                origin: Some(object.origin.clone()),
                message: format!(
                    "is also defined at {first} (with the default namespace filled in)"
                ),
                owned_elsewhere: false,
            });
            continue;
        }
        prepared.push(Prepared {
            key,
            origin: object.origin,
            manifest,
            kind,
            namespaced,
            wave,
        });
    }

    let mut creating_namespaces: BTreeSet<String> = prepared
        .iter()
        .filter(|p| p.key.group.is_empty() && p.key.kind == "Namespace")
        .map(|p| p.key.name.clone())
        .collect();
    let creates_namespace = options.create_namespace
        && !parent_exists
        && !creating_namespaces.contains(&options.namespace)
        && namespace_missing(client, &options.namespace).await?;
    if creates_namespace {
        creating_namespaces.insert(options.namespace.clone());
    }
    let prefetched =
        match prefetch_live(client, &prepared, &applyset.id, options.keep_unchanged_live).await {
            Ok(prefetched) => prefetched,
            Err(error) => return Err(PlanErrors(vec![error])),
        };
    let context = Context {
        client,
        applyset: &applyset,
        applyset_id: &applyset.id,
        creating_namespaces: &creating_namespaces,
        options,
    };
    options.progress.begin("planning", prepared.len());
    let mut prefetched = prefetched;
    let results: Vec<Result<Change, PlanError>> =
        futures::stream::iter(prepared.into_iter().map(|item| {
            let group = (
                item.key.group.clone(),
                item.key.kind.clone(),
                item.key.namespace.clone(),
            );
            // Settled by the LISTs, or unknown (not ours yet, or not listed), so read it.
            let live = prefetched
                .get_mut(&group)
                .map_or(Prefetched::Unknown, |listed| listed.take(&item.key.name));
            let context = &context;
            async move {
                let result = plan_one(context, item, live).await;
                context.options.progress.tick();
                result
            }
        }))
        .buffer_unordered(options.concurrency.max(1))
        .collect()
        .await;
    options.progress.finish();
    let mut changes = Vec::new();
    let mut refused = Vec::new();
    for result in results {
        match result {
            Ok(change) => changes.push(change),
            Err(error) if error.owned_elsewhere && options.refuse_alone => refused.push(error),
            Err(error) => errors.push(error),
        }
    }
    refused.sort_by(|a, b| a.key.cmp(&b.key));

    if !options.partial {
        match prune_candidates(client, resolver, &applyset, &seen).await {
            Ok(prunes) => changes.extend(prunes),
            Err(error) => errors.push(error),
        }
    }
    if !errors.is_empty() {
        errors.sort_by(|a, b| a.origin.cmp(&b.origin).then(a.key.cmp(&b.key)));
        return Err(PlanErrors(errors));
    }
    if !hooks.is_empty() {
        // A hook in a namespace this set creates cannot be dry-run before it exists.
        let checked: Vec<Hook> = hooks
            .iter()
            .filter(|h| !creating_namespaces.contains(&h.key.namespace))
            .cloned()
            .collect();
        errors.extend(dry_run_hooks(client, resolver, &checked).await);
    }
    if !errors.is_empty() {
        errors.sort_by(|a, b| a.origin.cmp(&b.origin).then(a.key.cmp(&b.key)));
        return Err(PlanErrors(errors));
    }
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

fn cluster_error(key: Option<&ObjectKey>, origin: Option<&Origin>, err: &kube::Error) -> PlanError {
    let message = match api_error(err) {
        Some(status) => status.message.clone(),
        None => crate::cluster::describe(err),
    };
    PlanError {
        key: key.cloned(),
        origin: origin.cloned(),
        message,
        owned_elsewhere: false,
    }
}

/// Plans one object, from what the LISTs told about it (or from a read of its own).
async fn plan_one(
    context: &Context<'_>,
    item: Prepared,
    prefetched: Prefetched,
) -> Result<Change, PlanError> {
    let Prepared {
        key,
        origin,
        manifest,
        kind,
        namespaced,
        wave,
    } = item;
    let stage = stage_of(&key, namespaced);
    let mut change = Change {
        key: key.clone(),
        action: Action::Create,
        origin: Some(origin.clone()),
        diff: String::new(),
        conflicts: Vec::new(),
        stage,
        desired: None,
        live: None,
        kind: kind.clone(),
        takes_over_from: Vec::new(),
        wave,
        reclaims: Vec::new(),
        force: false,
    };
    // The manifest moves into the change once planned: one copy per object, not two.
    let planned = plan_change(&mut change, &manifest, kind, prefetched, context, &origin).await;
    change.desired = Some(manifest);
    planned.map(|()| change)
}

/// The body of [`plan_one`]: fills in `change` for `manifest`.
async fn plan_change(
    change: &mut Change,
    manifest: &Value,
    kind: Option<KindInfo>,
    prefetched: Prefetched,
    context: &Context<'_>,
    origin: &Origin,
) -> Result<(), PlanError> {
    let Context {
        client,
        applyset,
        applyset_id,
        creating_namespaces,
        options,
    } = *context;
    let key = change.key.clone();
    let Some(kind) = kind else {
        // Its CRD comes with this set: nothing to ask the server yet.
        change.diff = render_diff(None, Some(manifest), &key);
        return Ok(());
    };
    let api = api_for(client, &kind, &key.namespace);
    let error = |message: String| PlanError {
        key: Some(key.clone()),
        origin: Some(origin.clone()),
        message,
        owned_elsewhere: false,
    };
    let read_live = || async {
        api.get_opt(&key.name)
            .await
            .map_err(|e| cluster_error(Some(&key), Some(origin), &e))
            .map(|o| o.map(|o| serde_json::to_value(o).expect("objects serialize")))
    };
    let mut live = match prefetched {
        Prefetched::Unchanged(held) => {
            change.action = Action::Unchanged;
            change.live = Some(held);
            return Ok(());
        }
        Prefetched::Live(live) => live,
        Prefetched::Unknown => read_live().await?,
    };
    // A member whose ApplySet label someone removed is still one (the apply puts it back).
    let mut relabel = false;
    if let Some(live) = &live {
        match live["metadata"]["labels"][PART_OF_LABEL].as_str() {
            Some(id) if id == applyset_id => {}
            Some(other) => {
                let owner = owner_of_set(client, other, &key.namespace).await;
                return Err(PlanError {
                    owned_elsewhere: true,
                    ..error(format!(
                        "belongs to {owner}; two applications cannot own one object: remove it from one of them"
                    ))
                });
            }
            None if recorded_member(live, &key, applyset) => relabel = true,
            None if !options.adopt => {
                return Err(PlanError {
                    owned_elsewhere: true,
                    ..error(
                        "exists and is not managed by tether; delete it, rename it in Git, or take it over with tether apply --adopt"
                            .into(),
                    )
                });
            }
            None => {}
        }
    }
    if relabel {
        change.reclaims.push(format!(
            "metadata.labels.{PART_OF_LABEL} (someone removed it; tether's apply entry and the set's kinds show the object is a member)"
        ));
    }
    // Read alone (a small set): the same shortcut as for a listed member.
    if let Some(held) = &live
        && already_held(manifest, held, applyset_id)
    {
        change.action = Action::Unchanged;
        change.live = live.map(|live| unchanged_live(live, options.keep_unchanged_live));
        return Ok(());
    }
    let mut params = PatchParams::apply(FIELD_MANAGER).dry_run();
    if options.force_conflicts {
        params = params.force();
    }
    let predicted = match api.patch(&key.name, &params, &Patch::Apply(manifest)).await {
        Ok(object) => serde_json::to_value(object).expect("objects serialize"),
        Err(err) => match api_error(&err) {
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
                // A field tether applied before is drift, whoever holds it now; only a
                // field it never applied is a conflict. An object applied by an older
                // tether keeps no record: as a member of this set, Git wins there too.
                let member = relabel
                    || live
                        .as_ref()
                        .is_some_and(|l| l["metadata"]["labels"][PART_OF_LABEL] == *applyset_id);
                let drift = |field: &str| {
                    member
                        && live
                            .as_ref()
                            .and_then(|l| fields::applied_before(l, field))
                            .unwrap_or(true)
                };
                let (reclaimed, foreign): (Vec<_>, Vec<_>) =
                    causes.iter().partition(|(field, _)| drift(field));
                let describe = |(field, message): &(String, String)| format!("{field}: {message}");
                change.reclaims = reclaimed.into_iter().map(describe).collect();
                // The value each side holds: what a forced apply would write.
                let forced = PatchParams::apply(FIELD_MANAGER).dry_run().force();
                let predicted = api
                    .patch(&key.name, &forced, &Patch::Apply(manifest))
                    .await
                    .map_err(|e| cluster_error(Some(&key), Some(origin), &e))?;
                let predicted = serde_json::to_value(predicted).expect("objects serialize");
                if causes.is_empty() || !foreign.is_empty() {
                    change.action = Action::Conflict;
                    change.conflicts = foreign.into_iter().map(describe).collect();
                    if change.conflicts.is_empty() {
                        change.conflicts = vec![status.message.clone()];
                    }
                    change.diff = render_diff(
                        live.as_ref().map(diff::normalize).as_ref(),
                        Some(&diff::normalize(&predicted)),
                        &key,
                    );
                    change.live = live;
                    return Ok(());
                }
                change.force = true;
                predicted
            }
            Some(status)
                if status.code == 404
                    && live.is_none()
                    && creating_namespaces.contains(&key.namespace) =>
            {
                // Its namespace is created by this same apply: the server cannot dry-run it yet.
                change.diff = render_diff(None, Some(manifest), &key);
                return Ok(());
            }
            _ => {
                let mut error = cluster_error(Some(&key), Some(origin), &err);
                if error.message.contains("illegal base64 data")
                    && let Some(field) = undecodable_secret_data(&key, manifest)
                {
                    // The server names a byte offset, not the key; the value stays unsaid.
                    error.message = format!(
                        "{field} is not base64; encode it (base64 -w0), or put the plain text under stringData instead"
                    );
                }
                return Err(error);
            }
        },
    };
    let mut before = live.as_ref().map(diff::normalize);
    let mut after = diff::normalize(&predicted);
    if before.is_some() && before.as_ref() != Some(&after) {
        // A controller may have written the object between our read and the dry-run (which
        // starts from the newest state): compare with a fresh read before calling it drift,
        // and if it moved again meanwhile, dry-run once more from that state.
        let first_version = live
            .as_ref()
            .map(|l| l["metadata"]["resourceVersion"].clone());
        live = read_live().await?;
        before = live.as_ref().map(diff::normalize);
        let moved = live
            .as_ref()
            .map(|l| l["metadata"]["resourceVersion"].clone())
            != first_version;
        if change.force {
            params = params.force();
        }
        if moved
            && before.as_ref() != Some(&after)
            && let Ok(again) = api.patch(&key.name, &params, &Patch::Apply(manifest)).await
        {
            after = diff::normalize(&serde_json::to_value(again).expect("objects serialize"));
        }
    }
    change.takes_over_from = live
        .as_ref()
        .map(migrate::client_side_managers)
        .unwrap_or_default();
    change.action = match &before {
        None => Action::Create,
        // Fields a client-side manager owns cannot be removed until tether owns them:
        // the first apply hands them over, even when the values already match.
        Some(before) if *before == after && change.takes_over_from.is_empty() => Action::Unchanged,
        Some(_) => Action::Update,
    };
    if change.action != Action::Unchanged {
        change.diff = render_diff(before.as_ref(), Some(&after), &key);
        change.live = live;
    } else {
        change.live = live.map(|live| unchanged_live(live, options.keep_unchanged_live));
    }
    Ok(())
}

/// Whether `live`, which carries no ApplySet label, is a member of `set` all the same: the
/// set's parent records its kind (and namespace), and its managedFields hold an apply by
/// tether. Someone removed the label (`kubectl label … applyset.kubernetes.io/part-of-`);
/// the object is still tether's, and the apply puts the label back.
fn recorded_member(live: &Value, key: &ObjectKey, set: &ApplySet) -> bool {
    let kind_recorded = set.group_kinds.contains(&GroupKind {
        group: key.group.clone(),
        kind: key.kind.clone(),
    });
    let namespace_recorded = key.namespace.is_empty()
        || key.namespace == set.namespace
        || set.namespaces.contains(&key.namespace);
    let applied_by_tether = live["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .any(fields::is_tethers_apply);
    kind_recorded && namespace_recorded && applied_by_tether
}

/// Who owns ApplySet `id`, in words: the Application its parent records, else the app
/// name and namespace of a `tether apply`, else the id alone (its parent cannot be read).
async fn owner_of_set(client: &kube::Client, id: &str, namespace: &str) -> String {
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
        return format!("another ApplySet ({id})");
    };
    let meta = &parent.metadata;
    if let Some(application) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(APPLICATION_ANNOTATION))
    {
        return format!("Application {application} (ApplySet {id})");
    }
    let name = meta.name.as_deref().unwrap_or_default();
    format!(
        "the set of `tether apply --app {} -n {}` (Secret/{name}, ApplySet {id})",
        name.strip_prefix("tether-").unwrap_or(name),
        meta.namespace.as_deref().unwrap_or_default()
    )
}

/// What is kept of an unchanged object's live state: without its managedFields (nothing
/// after the plan reads them for an object it does not write; the UI and diffs strip them,
/// and for a Deployment they are about a third of the object); with `keep` false, only its
/// identity and versions (see [`PlanOptions::keep_unchanged_live`]).
fn unchanged_live(mut live: Value, keep: bool) -> Value {
    if keep {
        if let Some(metadata) = live["metadata"].as_object_mut() {
            metadata.remove("managedFields");
        }
        return live;
    }
    let mut metadata = serde_json::Map::new();
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "labels",
    ] {
        if let Some(value) = live["metadata"].get_mut(field) {
            metadata.insert(field.to_string(), value.take());
        }
    }
    serde_json::json!({
        "apiVersion": live["apiVersion"].take(),
        "kind": live["kind"].take(),
        "metadata": metadata,
    })
}

/// A redacted unified diff between two normalized objects.
fn render_diff(before: Option<&Value>, after: Option<&Value>, key: &ObjectKey) -> String {
    let mut before = before.map(diff::normalize);
    let mut after = after.map(diff::normalize);
    if before
        .as_ref()
        .or(after.as_ref())
        .is_some_and(diff::is_secret)
    {
        diff::redact_secret_pair(before.as_mut(), after.as_mut());
    }
    diff::unified_diff(
        &diff::to_yaml(before.as_ref()),
        &diff::to_yaml(after.as_ref()),
        &key.to_string(),
    )
}

/// Members of the set (by label, in the kinds and namespaces its parent records) that are
/// no longer desired.
async fn prune_candidates(
    client: &kube::Client,
    resolver: &Resolver,
    applyset: &ApplySet,
    desired: &BTreeMap<ObjectKey, Origin>,
) -> Result<Vec<Change>, PlanError> {
    let selector = ListParams::default().labels(&format!("{PART_OF_LABEL}={}", applyset.id));
    let mut namespaces: BTreeSet<String> = applyset.namespaces.clone();
    namespaces.insert(applyset.namespace.clone());
    let mut prunes = Vec::new();
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
                });
            }
        }
    }
    Ok(prunes)
}

/// The value of [`HOOK_LABEL`] for a hook: short, valid as a label, the same on every run.
pub fn hook_label(key: &ObjectKey) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!(
        "{}/{}/{}/{}",
        key.group, key.kind, key.namespace, key.name
    ));
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Dry-runs the creation of every hook whose kind is served, so that an invalid hook stops
/// the sync before anything is written (a hook left by an earlier run is no error).
async fn dry_run_hooks(
    client: &kube::Client,
    resolver: &Resolver,
    hooks: &[Hook],
) -> Vec<PlanError> {
    // Indexes, not a closure over borrowed items: see `apply::apply_batch`.
    futures::stream::iter((0..hooks.len()).map(|i| dry_run_hook(client, resolver, &hooks[i])))
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
            return Some(PlanError {
                key: Some(hook.key.clone()),
                origin: Some(hook.origin.clone()),
                message: format!("not a valid object: {e}"),
                owned_elsewhere: false,
            });
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
