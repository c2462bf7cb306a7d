//! The Application's spec: one source, how to render it, one destination and a sync
//! policy (the `applications.tether.dev/v1alpha1` custom resource is derived here).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::ApplicationStatus;

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
    /// Decrypt SOPS-encrypted files of the source (Flux's field: `{provider: sops,
    /// secretRef: {name}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decryption: Option<Decryption>,
    /// Fields left to someone else (Argo CD's `ignoreDifferences`: group, kind, name,
    /// namespace, jsonPointers, managedFieldsManagers): not applied, never drift.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_differences: Vec<crate::plan::ignore::IgnoreRule>,
    /// Health rules (CEL) for kinds of this Application, before the agent's and the library's
    /// (Flux's `healthCheckExprs`: apiVersion, kind, current, inProgress, failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_check_exprs: Vec<crate::health::rules::HealthCheckExpr>,
    /// Scan registries for newer image tags and commit them to the source's Git branch (as
    /// Flux's ImagePolicy and ImageUpdateAutomation); the sync then applies the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_updates: Option<ImageUpdates>,
    /// When automated syncs may run (Argo CD's sync windows): allow and deny windows, with
    /// those of the namespace's `SyncWindow` resources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sync_windows: Vec<super::Window>,
    /// What deleting the Application does to its objects (Flux's field and names).
    #[serde(default, skip_serializing_if = "DeletionPolicy::is_default")]
    pub deletion_policy: DeletionPolicy,
}

/// What deleting an Application does to the objects it applied.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema, Default)]
pub enum DeletionPolicy {
    /// Deleted (PreDelete hooks first, then stages and waves in reverse, each gone with
    /// what it owns before the next, then PostDelete hooks); the Application goes once
    /// they are.
    #[default]
    Delete,
    /// The same as Delete: tether always waits until the objects are gone.
    WaitForTermination,
    /// Kept in the cluster with the set's record; no hooks run.
    Orphan,
    /// Delete when `spec.syncPolicy.prune` is true, else Orphan.
    MirrorPrune,
}

impl DeletionPolicy {
    pub fn is_default(&self) -> bool {
        *self == DeletionPolicy::Delete
    }

    /// The policy that applies with pruning on or off (MirrorPrune resolved).
    pub fn resolved(self, prune: bool) -> DeletionPolicy {
        match self {
            DeletionPolicy::MirrorPrune if prune => DeletionPolicy::Delete,
            DeletionPolicy::MirrorPrune => DeletionPolicy::Orphan,
            other => other,
        }
    }
}

/// Image automation of an Application.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageUpdates {
    /// Which tag of which image each policy picks.
    pub policies: Vec<ImagePolicy>,
    /// The folder whose files are updated (default: spec.source.path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// How often the registries are scanned (default 1m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    #[serde(default)]
    pub git: ImageUpdateGit,
}

/// How updates are committed and pushed (Flux's ImageUpdateAutomation `git` field names).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageUpdateGit {
    #[serde(default)]
    pub commit: ImageUpdateCommit,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<ImageUpdatePush>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImageUpdateCommit {
    /// Default: tether <tether@localhost>.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<CommitAuthor>,
    /// A Secret in the Application's namespace whose `git.asc` (an armored OpenPGP secret
    /// key without a passphrase, Flux's key name) or `sshPrivateKey` signs the commits (both
    /// kinds `spec.source.verifyKeys` accepts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<SigningKey>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
pub struct CommitAuthor {
    pub name: String,
    pub email: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SigningKey {
    pub secret_ref: LocalObjectReference,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
pub struct ImageUpdatePush {
    /// The branch pushed to (default: the branch of spec.source.ref).
    pub branch: String,
}

/// Which tag of an image is the one to run (Flux's ImagePolicy field names).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImagePolicy {
    /// Its name in markers: `# {"$imagepolicy": "<namespace>:<name>"}`.
    pub name: String,
    /// The image repository, as in a Pod (`registry.example/team/web`, no tag).
    pub image: String,
    pub policy: TagPolicy,
    /// Only tags matching `pattern` count; `extract` (`$1`, `$name`) is what is ordered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_tags: Option<FilterTags>,
    /// Write `image:tag@sha256:…` (and a kustomization's `digest`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pin_digest: bool,
    /// Registry credentials: `.dockerconfigjson` or `username`/`password`; `caFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    #[serde(
        default,
        rename = "plainHTTP",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub plain_http: bool,
}

/// Exactly one of semver, numerical or alphabetical.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
pub struct TagPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semver: Option<SemverPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerical: Option<OrderPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alphabetical: Option<OrderPolicy>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
pub struct SemverPolicy {
    pub range: String,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
pub struct OrderPolicy {
    /// asc (default: the highest wins) or desc (the lowest wins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
pub struct FilterTags {
    pub pattern: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract: Option<String>,
}

/// How the agent decrypts the source's SOPS-encrypted files.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Decryption {
    /// sops (the only one).
    pub provider: String,
    /// A Secret in the Application's namespace whose keys ending in `.agekey` hold age secret
    /// keys (`AGE-SECRET-KEY-1…`, as age-keygen writes them) and those ending in `.asc`
    /// armored OpenPGP secret keys (as Flux reads them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
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
    /// A Git URL: https://, http://, git://, ssh://, file:// or git@host:path; or an OCI
    /// repository, oci://host[:port]/path (a Helm chart or a manifests artifact, as `flux
    /// push artifact` and `tether push artifact` make).
    #[serde(rename = "repoURL")]
    pub repo_url: String,
    #[serde(default)]
    pub r#ref: GitRef,
    /// The folder inside the repository ("" or "." for the root).
    #[serde(default)]
    pub path: String,
    /// A Secret in the Application's namespace with `username` and `password` (HTTPS), or
    /// `sshPrivateKey` and `knownHosts` (SSH), and optionally `caFile` (PEM). For oci://:
    /// `.dockerconfigjson` (a kubernetes.io/dockerconfigjson Secret) or `username` and
    /// `password`, and optionally `caFile` or `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<LocalObjectReference>,
    /// oci:// only: talk plain HTTP to the registry (else HTTPS).
    #[serde(
        default,
        rename = "plainHTTP",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub plain_http: bool,
    /// Require the revision to be signed by one of these public keys (OpenSSH lines or
    /// armored OpenPGP blocks).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub verify_keys: Vec<String>,
    /// How long one Git operation (connect, list refs, fetch) may wait for the server before
    /// it fails (e.g. 60s, the default; as Flux's GitRepository `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// Exactly one of branch, tag, commit, semver or digest; none means the default branch
/// (for oci://, the tag `latest`).
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
    /// oci:// only: an artifact's digest (sha256:…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

impl GitRef {
    /// The `--ref` text this stands for.
    pub fn as_ref_text(&self) -> Result<String, String> {
        let given: Vec<String> = [
            self.branch.as_ref().map(|b| format!("branch:{b}")),
            self.tag.as_ref().map(|t| format!("tag:{t}")),
            self.commit.as_ref().map(|c| format!("commit:{c}")),
            self.semver.as_ref().map(|s| format!("semver:{s}")),
            self.digest.as_ref().map(|d| format!("digest:{d}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        match given.len() {
            0 => Ok(String::new()),
            1 => Ok(given.into_iter().next().expect("one element")),
            _ => Err(
                "spec.source.ref sets more than one of branch, tag, commit, semver and digest"
                    .into(),
            ),
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
