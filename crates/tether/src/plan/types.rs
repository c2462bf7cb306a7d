//! The plan's values: its options, what it says about each object ([`Change`], [`Hook`],
//! [`Skipped`]), its errors, and the [`Plan`] itself with its summary. Made by
//! [`super::plan`]; read by `apply`, the CLI and the agent.

use serde::Serialize;
use serde_json::Value;

use super::hooks;
use crate::cluster::discovery::KindInfo;
use crate::inventory::ApplySet;
use crate::object::{ObjectKey, Origin};

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
    /// Fields left to someone else (Argo CD's `ignoreDifferences`): taken out of what is
    /// applied, never drift (see [`super::ignore`]).
    pub ignore_differences: Vec<super::ignore::IgnoreRule>,
    /// The whole set is deleted (its Application is): given only hooks, every member is
    /// planned for pruning but those kept on deletion (`Delete=false`, see
    /// [`super::sync_options::kept_on_delete`]).
    pub deleting: bool,
    /// The API server's audit log: who changed a field (user, user agent) beside its
    /// manager, in drift and conflicts.
    pub audit_log: Option<std::sync::Arc<crate::audit::AuditLog>>,
    pub progress: crate::progress::ProgressHandle,
    /// What someone watching the cluster's labelled objects knows (the agent's drift
    /// watches): how many each kind has in a namespace, where they far outnumber the set's
    /// own its members are read one by one instead of listed; and which are the set's,
    /// its prune candidates without a LIST (see [`Watched`]).
    pub watched: Option<std::sync::Arc<dyn Watched>>,
    /// Requests in flight as a window that grows with the round trip (push mode; see
    /// [`crate::cluster::window`]), shared with the apply; else [`Self::concurrency`].
    pub window: Option<std::sync::Arc<crate::cluster::window::Window>>,
}

/// What a watch of the cluster's labelled objects (the agent's drift watches) tells a plan,
/// so that it need not ask the API server.
pub trait Watched: Send + Sync {
    /// How many objects labelled as members of some ApplySet (any set's) the cluster holds
    /// of a kind in a namespace. A LIST by the set's label still makes the API server scan
    /// every object of the kind there (0.5 µs each: 27-36 ms for 60,000 ConfigMaps on the
    /// local cluster against 1.1 ms for one GET, measured 2026-12-07), so a small set among
    /// many (10,000 Applications in one namespace) reads its members alone.
    fn crowd(&self, group: &str, kind: &str, namespace: &str) -> usize;

    /// The names of set `id`'s members of a kind in a namespace as the watch sees them;
    /// `None` when it cannot tell all of them (the kind is not watched, or is being listed
    /// again, or the set's last writes are not all seen yet).
    fn members(&self, id: &str, group: &str, kind: &str, namespace: &str) -> Option<Vec<String>>;
}

impl std::fmt::Debug for dyn Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watched")
    }
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
            ignore_differences: Vec::new(),
            deleting: false,
            audit_log: None,
            progress: Default::default(),
            watched: None,
            window: None,
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
    /// Apply with force: every field in conflict is one tether applied before (or
    /// `Replace=true` takes every field Git sets).
    #[serde(skip)]
    pub force: bool,
    /// Deleted and created anew instead of updated, and why (`Force=true` when the server
    /// refuses the update, `Replace=true,Force=true` on any change).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recreate: Option<String>,
    /// Fields an ignore rule left out of what is applied (pointers, and who writes them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
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
    /// What kind of problem it is, for a caller that acts on one (the message tells the user).
    #[serde(skip)]
    pub kind: PlanErrorKind,
}

/// What kind of problem a [`PlanError`] is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum PlanErrorKind {
    /// Anything else: invalid input, or an answer of the cluster.
    #[default]
    Other,
    /// The object exists and is a member of another ApplySet (`set`, its id), which `owner` holds.
    OwnedByAnotherSet { set: String, owner: SetOwner },
    /// The object exists and belongs to no ApplySet (`tether apply --adopt` takes it over).
    Unmanaged,
}

/// Who holds an ApplySet, as its parent records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetOwner {
    /// The Application (`namespace/name`) whose agent syncs it.
    Application(String),
    /// `tether apply --app <app> -n <namespace>`, whose parent is Secret `parent`.
    Apply {
        app: String,
        namespace: String,
        parent: String,
    },
    /// Unknown: its parent cannot be read.
    Unknown,
}

impl SetOwner {
    /// The owner of ApplySet `set`, in words.
    pub fn describe(&self, set: &str) -> String {
        match self {
            SetOwner::Application(application) => {
                format!("Application {application} (ApplySet {set})")
            }
            SetOwner::Apply {
                app,
                namespace,
                parent,
            } => format!(
                "the set of `tether apply --app {app} -n {namespace}` (Secret/{parent}, ApplySet {set})"
            ),
            SetOwner::Unknown => format!("another ApplySet ({set})"),
        }
    }
}

impl PlanError {
    /// A problem with the set as a whole.
    pub(crate) fn of_set(message: String) -> Self {
        Self {
            key: None,
            origin: None,
            message,
            kind: PlanErrorKind::Other,
        }
    }

    /// A problem with the object `key`, defined at `origin`.
    pub(crate) fn of_object(key: &ObjectKey, origin: &Origin, message: String) -> Self {
        Self {
            key: Some(key.clone()),
            origin: Some(origin.clone()),
            message,
            kind: PlanErrorKind::Other,
        }
    }

    /// The object exists and belongs to another owner, another set or none (see
    /// [`PlanOptions::refuse_alone`]).
    pub fn owned_elsewhere(&self) -> bool {
        self.kind != PlanErrorKind::Other
    }
}

/// A failed request, as a plan error about `key` (or the set).
pub(super) fn cluster_error(
    key: Option<&ObjectKey>,
    origin: Option<&Origin>,
    err: &kube::Error,
) -> PlanError {
    let message = match api_error(err) {
        Some(status) => status.message.clone(),
        None => crate::cluster::describe(err),
    };
    PlanError {
        key: key.cloned(),
        origin: origin.cloned(),
        message,
        kind: PlanErrorKind::Other,
    }
}

/// The server's answer, when the request reached it.
pub(super) fn api_error(err: &kube::Error) -> Option<&kube::core::Status> {
    match err {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
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
