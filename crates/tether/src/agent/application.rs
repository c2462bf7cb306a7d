//! The `Application` custom resource (`applications.tether.dev/v1alpha1`): one source, how
//! to render it, one destination and a sync policy; its status is the agent's record.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// Several printcolumns each name `type_`: not a duplicate, though clippy reads it as one.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[kube(
    group = "tether.dev",
    version = "v1alpha1",
    kind = "Application",
    namespaced,
    status = "ApplicationStatus",
    shortname = "app",
    category = "tether",
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".status.lastAppliedRevision"
    ),
    printcolumn(name = "Sync", type_ = "string", json_path = ".status.sync.status"),
    printcolumn(name = "Health", type_ = "string", json_path = ".status.health"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSpec {
    pub source: Source,
    #[serde(default)]
    pub render: RenderSpec,
    pub destination: Destination,
    #[serde(default)]
    pub sync_policy: SyncPolicy,
    /// Stop reconciling (nothing is changed) until set back to false.
    #[serde(default)]
    pub suspend: bool,
    /// Applications (in the same namespace) that must be Ready before this one is applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
    /// A ServiceAccount in the Application's namespace: its objects are planned, applied,
    /// pruned and checked as that account (impersonation), so the API server lets it write
    /// only what the account's RBAC allows. Without it, the agent's own identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    /// Set the outcome of each sync as a status of the synced commit on the Git host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_status: Option<CommitStatusSpec>,
}

/// Where and how the agent reports a sync's outcome on the synced commit.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct CommitStatusSpec {
    /// github, gitlab or gitea.
    pub provider: String,
    /// A Secret in the Application's namespace whose key `token` is an API token allowed to
    /// set commit statuses (GitHub: "Commit statuses" write; GitLab: api scope; Gitea:
    /// write:repository).
    pub secret_ref: LocalObjectReference,
    /// The API's base URL. Default, from the repository's host: https://api.github.com
    /// (https://<host>/api/v3 for GitHub Enterprise), https://<host>/api/v4 for GitLab,
    /// https://<host>/api/v1 for Gitea (http:// when the repository URL is http://).
    #[serde(default, rename = "apiURL", skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// The repository on the host (owner/name; GitLab: group/…/name). Default: the path of
    /// the repository URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// The status's name on the host. Default: tether/<namespace>/<name>.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// A Git URL: https://, http://, git://, ssh://, file:// or git@host:path.
    #[serde(rename = "repoURL")]
    pub repo_url: String,
    #[serde(default)]
    pub r#ref: GitRef,
    /// The folder inside the repository ("" or "." for the root).
    #[serde(default)]
    pub path: String,
    /// A Secret in the Application's namespace with `username` and `password` (HTTPS), or
    /// `sshPrivateKey` and `knownHosts` (SSH), and optionally `caFile` (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// Require the revision to be signed by one of these public keys (OpenSSH lines or
    /// armored OpenPGP blocks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_keys: Vec<String>,
    /// How long one Git operation (connect, list refs, fetch) may wait for the server before
    /// it fails (e.g. 60s, the default; as Flux's GitRepository `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// Exactly one of branch, tag, commit or semver; none means the default branch.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct GitRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
}

impl GitRef {
    /// The `--ref` text this stands for.
    pub fn as_ref_text(&self) -> Result<String, String> {
        let given: Vec<String> = [
            self.branch.as_ref().map(|b| format!("branch:{b}")),
            self.tag.as_ref().map(|t| format!("tag:{t}")),
            self.commit.as_ref().map(|c| format!("commit:{c}")),
            self.semver.as_ref().map(|s| format!("semver:{s}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        match given.len() {
            0 => Ok(String::new()),
            1 => Ok(given.into_iter().next().expect("one element")),
            _ => Err("spec.source.ref sets more than one of branch, tag, commit and semver".into()),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
pub struct LocalObjectReference {
    pub name: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RenderSpec {
    /// auto (default), directory, kustomize or helm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renderer: Option<String>,
    /// Helm values files (repository paths), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values_files: Vec<String>,
    /// Variables for `${VAR}` substitution; substitution is on when this is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variables: Option<std::collections::BTreeMap<String, String>>,
    /// Options of `.jsonnet` files (Argo CD's `directory.jsonnet`).
    #[serde(default, skip_serializing_if = "JsonnetSpec::is_empty")]
    pub jsonnet: JsonnetSpec,
    /// The most memory one render may take (helm, kustomize or Jsonnet, with the programs
    /// it starts), as a quantity like `512Mi`; past it the render is stopped. Default: the
    /// agent's `--render-memory`; at most its `--render-memory-budget`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<String>,
}

/// Argo CD's `spec.source.directory.jsonnet`, with its field names.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct JsonnetSpec {
    /// `std.extVar(name)`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ext_vars: Vec<JsonnetVar>,
    /// Top-level arguments of a file whose value is a function.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tlas: Vec<JsonnetVar>,
    /// Repository folders searched for imports (`-J`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub libs: Vec<String>,
}

impl JsonnetSpec {
    fn is_empty(&self) -> bool {
        self.ext_vars.is_empty() && self.tlas.is_empty() && self.libs.is_empty()
    }

    /// The render's options.
    pub fn options(&self) -> crate::render::jsonnet::JsonnetOptions {
        use crate::render::jsonnet::Argument;
        let arguments = |vars: &[JsonnetVar]| {
            vars.iter()
                .map(|v| {
                    let value = if v.code {
                        Argument::Code(v.value.clone())
                    } else {
                        Argument::Str(v.value.clone())
                    };
                    (v.name.clone(), value)
                })
                .collect()
        };
        crate::render::jsonnet::JsonnetOptions {
            ext_vars: arguments(&self.ext_vars),
            tlas: arguments(&self.tlas),
            libs: self.libs.clone(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct JsonnetVar {
    pub name: String,
    pub value: String,
    /// `value` is Jsonnet code, not a string.
    #[serde(default)]
    pub code: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
pub struct Destination {
    /// Default namespace for objects without one; also where the ApplySet parent lives.
    pub namespace: String,
    /// Another cluster to apply to: the name of a Secret in the Application's namespace
    /// with a `kubeconfig` key, or `server`, `token` and optionally `ca.crt`. Unset: the
    /// agent's own cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

impl Destination {
    /// The cluster Secret's name, unless the destination is the agent's own cluster.
    pub fn cluster_name(&self) -> Option<&str> {
        self.cluster.as_deref().filter(|name| !name.is_empty())
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncPolicy {
    /// Apply new revisions by itself; otherwise only report OutOfSync.
    #[serde(default = "yes")]
    pub automated: bool,
    /// Delete objects that left Git.
    #[serde(default = "yes")]
    pub prune: bool,
    /// Put back changes made by hand.
    #[serde(default = "yes")]
    pub self_heal: bool,
    /// Also take fields that tether never applied and another manager owns (a conflict);
    /// fields tether applied before and someone changed are taken back regardless.
    #[serde(default)]
    pub force_conflicts: bool,
    /// How often to look at Git (e.g. 1m, 30s).
    #[serde(default = "default_interval")]
    pub interval: String,
    #[serde(default)]
    pub retry: Retry,
    /// Argo CD's sync options that tether understands: `CreateNamespace=true` creates the
    /// destination namespace when it does not exist (never pruned). Others are refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_options: Vec<String>,
}

impl SyncPolicy {
    /// Whether `CreateNamespace=true` is set; an option tether does not know is an error
    /// (ignoring `Prune=false` would prune what its author meant to keep).
    pub fn create_namespace(&self) -> Result<bool, String> {
        let mut create = false;
        for option in &self.sync_options {
            match option.replace(' ', "").as_str() {
                "CreateNamespace=true" => create = true,
                "CreateNamespace=false" => create = false,
                other => {
                    return Err(format!(
                        "spec.syncPolicy.syncOptions: tether does not know {other:?}; it knows CreateNamespace=true"
                    ));
                }
            }
        }
        Ok(create)
    }
}

impl Default for SyncPolicy {
    fn default() -> Self {
        Self {
            automated: true,
            prune: true,
            self_heal: true,
            force_conflicts: false,
            interval: default_interval(),
            retry: Retry::default(),
            sync_options: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_interval() -> String {
    "1m".into()
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
pub struct Retry {
    /// Failed attempts before the Application is Stalled.
    #[serde(default = "default_retry_limit")]
    pub limit: u32,
    /// The first wait after a failure; doubled each time (with jitter), capped at 5 minutes.
    #[serde(default = "default_backoff")]
    pub backoff: String,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            limit: default_retry_limit(),
            backoff: default_backoff(),
        }
    }
}

fn default_retry_limit() -> u32 {
    5
}

fn default_backoff() -> String {
    "5s".into()
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
pub struct Dependency {
    pub name: String,
}

/// The agent's record, kstatus style.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
    /// Healthy, Progressing, Degraded, Missing or Unknown: the least healthy object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// The last syncs, newest first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_set: Option<ApplySetReference>,
    /// Consecutive failed attempts (reset by a success).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// The last `tether.dev/sync-requested` annotation value acted on (`tether sync`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_request: Option<String>,
    /// The last applied revision as Git describes it (for people: the UI, `tether get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_info: Option<RevisionInfo>,
}

/// Every sync state an Application is shown in: each Application is in exactly one.
pub const SYNC_STATES: [&str; 4] = ["Synced", "OutOfSync", "Unknown", "Failed"];
/// Every health state an Application is shown in: each Application is in exactly one.
pub const HEALTH_STATES: [&str; 5] = ["Healthy", "Progressing", "Degraded", "Missing", "Unknown"];

/// What is known of an Application's objects now, beside its status.
pub enum Objects {
    /// Only the status (the list of Applications).
    NotPlanned,
    /// A plan of its current revision could not be made.
    Unplanned,
    /// A plan was made: how many objects differ from Git (or failed).
    Planned { differing: usize },
}

/// The sync state shown for an Application, one of [`SYNC_STATES`], for every face (the
/// list, its counts, an Application's page, the JSON API): with a current plan, derived
/// from its objects' states (any object differing makes it OutOfSync, no plan Unknown);
/// else Failed when its last sync failed, and otherwise its status.
pub fn sync_state(status: Option<&ApplicationStatus>, objects: Objects) -> &'static str {
    let failed = status.is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == "Failed")
    });
    let recorded = match status
        .and_then(|s| s.sync.as_ref())
        .map(|s| s.status.as_str())
    {
        Some("Synced") => "Synced",
        Some("OutOfSync") => "OutOfSync",
        _ => "Unknown",
    };
    match objects {
        Objects::Unplanned => "Unknown",
        Objects::Planned { differing } if differing > 0 => "OutOfSync",
        Objects::Planned { .. } if failed => "Failed",
        Objects::Planned { .. } => "Synced",
        Objects::NotPlanned if failed => "Failed",
        Objects::NotPlanned => recorded,
    }
}

/// The health shown for an Application, one of [`HEALTH_STATES`].
pub fn health_state(status: Option<&ApplicationStatus>) -> &'static str {
    let health = status
        .and_then(|s| s.health.as_deref())
        .unwrap_or("Unknown");
    HEALTH_STATES
        .into_iter()
        .find(|h| *h == health)
        .unwrap_or("Unknown")
}

/// `tether sync` sets this annotation (to a timestamp) to ask for a full sync now.
pub const SYNC_REQUEST_ANNOTATION: &str = "tether.dev/sync-requested";
/// Set by a sharded agent that received a webhook for an Application of another agent's
/// shard: the owner sees the change, lists the remote's refs afresh and reconciles.
pub const REFRESH_ANNOTATION: &str = "tether.dev/refresh-requested";
/// `tether rollback` records the ref it replaced here, for `tether resume`.
pub const ROLLED_BACK_FROM_ANNOTATION: &str = "tether.dev/rolled-back-from";

/// The operators' actions on an Application, as merge patches: the CLI (`tether sync`,
/// `suspend`, `resume`, `rollback`) and the web UI send the same ones.
pub mod actions {
    use kube::ResourceExt;
    use serde_json::{Value, json};

    use super::{Application, ROLLED_BACK_FROM_ANNOTATION, SYNC_REQUEST_ANNOTATION};

    /// Ask the agent to sync now (with the ref's newest commit), even if nothing changed.
    pub fn sync() -> Value {
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        json!({"metadata": {"annotations": {SYNC_REQUEST_ANNOTATION: now}}})
    }

    /// Suspend, or resume (after a rollback: follow the ref it replaced again).
    pub fn suspend(app: &Application, suspend: bool) -> Result<Value, String> {
        let mut patch = json!({"spec": {"suspend": suspend}});
        if !suspend && let Some(previous) = app.annotations().get(ROLLED_BACK_FROM_ANNOTATION) {
            let previous: Value = serde_json::from_str(previous).map_err(|e| {
                format!("the {ROLLED_BACK_FROM_ANNOTATION} annotation is not JSON: {e}")
            })?;
            let mut reference =
                json!({"branch": null, "tag": null, "commit": null, "semver": null});
            if let (Some(target), Some(fields)) = (reference.as_object_mut(), previous.as_object())
            {
                for (key, value) in fields {
                    target.insert(key.clone(), value.clone());
                }
            }
            patch["spec"]["source"] = json!({"ref": reference});
            patch["metadata"] = json!({"annotations": {ROLLED_BACK_FROM_ANNOTATION: null}});
        }
        Ok(patch)
    }

    /// Pin the Application to `commit` (a full or abbreviated commit id); the first
    /// rollback records the ref to return to on resume.
    pub fn rollback(app: &Application, commit: &str) -> Result<Value, String> {
        if !crate::source::reference::is_commit_id(commit) {
            return Err(format!(
                "{commit:?} is not a commit id; pick one from the history"
            ));
        }
        let current = serde_json::to_string(&app.spec.source.r#ref).map_err(|e| e.to_string())?;
        let mut patch = json!({
            "spec": {"source": {"ref": {"branch": null, "tag": null, "semver": null, "commit": commit}}}
        });
        if !app.annotations().contains_key(ROLLED_BACK_FROM_ANNOTATION) {
            patch["metadata"] = json!({"annotations": {ROLLED_BACK_FROM_ANNOTATION: current}});
        }
        Ok(patch)
    }
}

impl ApplicationSpec {
    /// What the CRD's schema cannot say: checked before every sync, so that a malformed
    /// spec is a condition naming the field (`Ready=False`), not a default used in silence.
    pub fn check(&self) -> Result<(), String> {
        use crate::duration::parse_duration;
        if self.source.repo_url.trim().is_empty() {
            return Err("spec.source.repoURL is empty; name the Git repository".into());
        }
        self.sync_policy.create_namespace()?;
        let reference = self.source.r#ref.as_ref_text()?;
        crate::source::reference::RefSpec::parse(&reference).map_err(
            |crate::source::reference::RefError::Invalid { reason, .. }| {
                format!("spec.source.ref {reference:?}: {reason}")
            },
        )?;
        if crate::source::tree::normalize(&self.source.path).is_none() {
            return Err(format!(
                "spec.source.path {:?} leaves the repository; give a folder inside it",
                self.source.path
            ));
        }
        if let Some(renderer) = self.render.renderer.as_deref()
            && !["", "auto", "directory", "kustomize", "helm"].contains(&renderer)
        {
            return Err(format!(
                "spec.render.renderer {renderer:?} is not auto, directory, kustomize or helm"
            ));
        }
        if let Some(lib) = self
            .render
            .jsonnet
            .libs
            .iter()
            .find(|l| crate::source::tree::normalize(l).is_none())
        {
            return Err(format!(
                "spec.render.jsonnet.libs: {lib:?} leaves the repository; give a folder inside it"
            ));
        }
        if let Some(file) = self
            .render
            .values_files
            .iter()
            .find(|f| crate::render::snapshot::inside("", f).is_none())
        {
            return Err(format!(
                "spec.render.valuesFiles: {file:?} leaves the repository; give a path inside it"
            ));
        }
        let namespace = &self.destination.namespace;
        let label = namespace.len() <= 63
            && namespace.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && namespace.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !label {
            return Err(format!(
                "spec.destination.namespace {namespace:?} is not a namespace name (lower-case letters, digits and '-', at most 63)"
            ));
        }
        match parse_duration(&self.sync_policy.interval) {
            Ok(interval) if interval.is_zero() => {
                return Err("spec.syncPolicy.interval is 0; give one like 1m".into());
            }
            Ok(_) => {}
            Err(e) => return Err(format!("spec.syncPolicy.interval: {e}")),
        }
        parse_duration(&self.sync_policy.retry.backoff)
            .map_err(|e| format!("spec.syncPolicy.retry.backoff: {e}"))?;
        if let Some(status) = &self.commit_status {
            // The request itself says what else is wrong (no host, no repository).
            let probe = crate::agent::commit_status::Status {
                commit: String::new(),
                state: crate::agent::commit_status::State::Success,
                description: String::new(),
                context: String::new(),
            };
            crate::agent::commit_status::request_for(status, &self.source.repo_url, &probe)?;
        }
        Ok(())
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// Synced or OutOfSync.
    pub status: String,
    pub revision: String,
    pub create: u32,
    pub update: u32,
    pub prune: u32,
    pub unchanged: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub revision: String,
    pub time: String,
    /// Succeeded or Failed.
    pub result: String,
    pub created: u32,
    pub updated: u32,
    pub pruned: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The hooks this sync ran, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookRecord>,
}

/// A revision as Git describes it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RevisionInfo {
    pub commit: String,
    /// The ref it came from (refs/heads/main), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The first line of the commit message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

impl From<&crate::source::git::Revision> for RevisionInfo {
    fn from(revision: &crate::source::git::Revision) -> Self {
        Self {
            commit: revision.commit.clone(),
            reference: revision.from_ref.clone(),
            message: revision.summary.clone(),
            author: revision.author.clone(),
        }
    }
}

/// One hook run, as history keeps it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HookRecord {
    /// PreSync, Sync, PostSync or SyncFail.
    pub phase: String,
    /// `Kind/name` (the generated name for a generateName hook).
    pub object: String,
    /// Succeeded or Failed.
    pub result: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl From<&crate::apply::hooks::HookResult> for HookRecord {
    fn from(run: &crate::apply::hooks::HookResult) -> Self {
        Self {
            phase: run.phase.to_string(),
            object: format!("{}/{}", run.key.kind, run.key.name),
            result: if run.succeeded { "Succeeded" } else { "Failed" }.into(),
            message: run.message.clone(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApplySetReference {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub id: String,
}

/// `namespace/name`: how the agent keys its memory of an Application and its shard.
pub fn application_key(app: &Application) -> String {
    use kube::ResourceExt;
    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_application_is_in_exactly_one_sync_and_one_health_state() {
        let condition = |status: &str, reason: &str| Condition {
            type_: "Ready".into(),
            status: status.into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: String::new(),
            observed_generation: None,
        };
        let with = |sync: Option<&str>, ready: Option<Condition>, health: Option<&str>| {
            ApplicationStatus {
                sync: sync.map(|s| SyncStatus {
                    status: s.into(),
                    ..Default::default()
                }),
                conditions: ready.into_iter().collect(),
                health: health.map(str::to_string),
                ..Default::default()
            }
        };
        let synced = with(
            Some("Synced"),
            Some(condition("True", "Succeeded")),
            Some("Healthy"),
        );
        // A sync that failed after an earlier success: its status still holds "Synced".
        let failed = with(
            Some("Synced"),
            Some(condition("False", "Failed")),
            Some("Healthy"),
        );
        let never = with(None, None, None);
        let odd = with(Some("Weird"), None, Some("Exploded"));
        assert_eq!(sync_state(Some(&synced), Objects::NotPlanned), "Synced");
        assert_eq!(sync_state(Some(&failed), Objects::NotPlanned), "Failed");
        assert_eq!(sync_state(Some(&never), Objects::NotPlanned), "Unknown");
        assert_eq!(sync_state(None, Objects::NotPlanned), "Unknown");
        assert_eq!(sync_state(Some(&odd), Objects::NotPlanned), "Unknown");
        assert_eq!(health_state(Some(&odd)), "Unknown");
        assert_eq!(health_state(None), "Unknown");
        // With a plan, the objects decide: one differing is OutOfSync whatever the status
        // says; no plan is Unknown (never "0 objects differ").
        assert_eq!(
            sync_state(Some(&synced), Objects::Planned { differing: 1 }),
            "OutOfSync"
        );
        assert_eq!(sync_state(Some(&synced), Objects::Unplanned), "Unknown");
        assert_eq!(
            sync_state(Some(&synced), Objects::Planned { differing: 0 }),
            "Synced"
        );
        assert_eq!(
            sync_state(Some(&failed), Objects::Planned { differing: 0 }),
            "Failed"
        );
        for status in [&synced, &failed, &never, &odd] {
            assert!(SYNC_STATES.contains(&sync_state(Some(status), Objects::NotPlanned)));
            assert!(HEALTH_STATES.contains(&health_state(Some(status))));
        }
    }

    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn the_documented_shape_parses() {
        let yaml = r#"
apiVersion: tether.dev/v1alpha1
kind: Application
metadata: {name: guestbook, namespace: tether-system}
spec:
  source:
    repoURL: https://git.example.com/team/deploy.git
    ref: {branch: main}
    path: apps/guestbook
    secretRef: {name: git-creds}
  render: {}
  destination: {namespace: guestbook}
  syncPolicy:
    automated: true
    prune: true
    selfHeal: true
    interval: 1m
    retry: {limit: 5, backoff: 5s}
  dependsOn: [{name: infra}]
"#;
        let app: Application = serde_saphyr::from_str(yaml).expect("the contract's example parses");
        assert_eq!(
            app.spec.source.repo_url,
            "https://git.example.com/team/deploy.git"
        );
        assert_eq!(
            app.spec.source.r#ref.as_ref_text().expect("one ref"),
            "branch:main"
        );
        assert_eq!(app.spec.depends_on[0].name, "infra");
        assert_eq!(app.spec.sync_policy.retry.limit, 5);
    }

    #[test]
    fn the_crd_has_printer_columns_and_a_status_subresource() {
        let crd = Application::crd();
        let version = &crd.spec.versions[0];
        let columns: Vec<&str> = version
            .additional_printer_columns
            .as_ref()
            .expect("columns")
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Revision", "Sync", "Health", "Ready", "Age"]);
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["app".to_string()][..])
        );
    }

    #[test]
    fn a_malformed_spec_names_the_field() {
        let good: Application = serde_saphyr::from_str(
            "apiVersion: tether.dev/v1alpha1\nkind: Application\nmetadata: {name: a}\n\
             spec: {source: {repoURL: https://git.example.com/x.git}, destination: {namespace: web}}\n",
        )
        .expect("parses");
        good.spec.check().expect("a good spec");
        let broken = |change: fn(&mut ApplicationSpec)| {
            let mut spec = good.spec.clone();
            change(&mut spec);
            spec.check().expect_err("a malformed spec")
        };
        assert!(
            broken(|s| s.sync_policy.interval = "soon".into())
                .starts_with("spec.syncPolicy.interval:")
        );
        assert!(
            broken(|s| s.sync_policy.interval = "0s".into())
                .starts_with("spec.syncPolicy.interval is 0")
        );
        assert!(
            broken(|s| s.sync_policy.retry.backoff = "5d".into())
                .starts_with("spec.syncPolicy.retry.backoff:")
        );
        assert!(
            broken(|s| s.destination.namespace = "Web".into())
                .starts_with("spec.destination.namespace")
        );
        assert!(broken(|s| s.source.path = "../x".into()).starts_with("spec.source.path"));
        assert!(
            broken(|s| s.source.r#ref.semver = Some(">=1.x.y".into()))
                .starts_with("spec.source.ref")
        );
        assert!(
            broken(|s| s.render.values_files = vec!["/etc/passwd".into()])
                .starts_with("spec.render.valuesFiles")
        );
        assert!(
            broken(|s| s.render.renderer = Some("jsonnet".into()))
                .starts_with("spec.render.renderer")
        );
    }

    #[test]
    fn two_refs_at_once_are_refused() {
        let git_ref = GitRef {
            branch: Some("main".into()),
            tag: Some("v1".into()),
            ..Default::default()
        };
        assert!(git_ref.as_ref_text().is_err());
    }
}
