//! The Application pipeline: fetch an Application's revision (with the credentials of its
//! Secret, its signature checked), render it as it says, and plan it against its
//! destination as its policy says. The agent's syncs, `tether diff`, `tether bootstrap`,
//! the JSON API and the web UI all call it, so each shows what a sync would do. Start at
//! [`plan_current`].

use std::path::PathBuf;
use std::time::Duration;

use kube::ResourceExt;
use kube::api::Api;

use crate::application::{Application, application_key};
use crate::cluster::describe;
use crate::cluster::discovery::Resolver;
use crate::plan::{PlanOptions, plan};
use crate::render::{RenderOptions, Renderer};
use crate::source::git::Revision;
use crate::source::tree::Tree;

mod source;
pub(crate) use source::{credentials, registry_credentials};
pub use source::{fetch, git_source, list_remote};

/// Why the Application pipeline stopped. Each stage's own error is kept whole as the
/// source; the text the agent writes in the Application's status is the whole chain
/// ([`String::from`]), the same words as each stage gives them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Application's spec cannot be used as written; the message names the field.
    #[error("{0}")]
    Spec(String),
    /// The Git credentials Secret cannot be read or written to files for Git.
    #[error("{0}")]
    Credentials(String),
    /// The decryption keys' Secret cannot be read or holds no usable key.
    #[error("{0}")]
    Decryption(String),
    #[error(transparent)]
    Fetch(#[from] crate::source::git::Error),
    #[error(transparent)]
    Oci(crate::source::oci::Error),
    #[error(transparent)]
    Render(#[from] crate::render::Problems),
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanErrors),
    #[error("cannot create a temporary folder")]
    TempDir(#[source] std::io::Error),
    /// The blocking task of a stage (`what`: Git, render) panicked or was cancelled.
    #[error("the {what} task failed")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl From<Error> for String {
    /// The error and its sources on one line: "what failed: why".
    fn from(error: Error) -> String {
        crate::error::chain(&error)
    }
}

/// What the pipeline needs of the process running it (the agent's flags, or a command's).
#[derive(Debug, Clone)]
pub struct AppOptions {
    /// Where Git repositories and renders are cached.
    pub cache_dir: PathBuf,
    /// Explicit kustomize and helm programs (else $TETHER_KUSTOMIZE / $TETHER_HELM, else PATH).
    pub kustomize_bin: Option<PathBuf>,
    pub helm_bin: Option<PathBuf>,
    /// API requests in flight at once while planning.
    pub concurrency: usize,
    /// Refuse Applications that name no `spec.serviceAccountName`.
    pub require_service_account: bool,
    /// The memory limit of a render whose Application sets none.
    pub render_memory: u64,
    /// The ref listings its fetches share (see [`crate::source::git::Listings`]).
    pub listings: std::sync::Arc<crate::source::git::Listings>,
    /// The API server's audit log (see [`crate::audit`]), read by each plan that names who
    /// changed a field.
    pub audit_log: Option<PathBuf>,
    /// What the agent's drift watches of the destination see (see [`crate::plan::Watched`]).
    pub watched: Option<std::sync::Arc<dyn crate::plan::Watched>>,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            cache_dir: crate::source::git::cache_root(),
            kustomize_bin: None,
            helm_bin: None,
            concurrency: 16,
            require_service_account: false,
            render_memory: crate::render::external::DEFAULT_MEMORY_BYTES,
            listings: Default::default(),
            audit_log: None,
            watched: None,
        }
    }
}

/// What a sync of the Application's ref would do now: its newest revision (from a listing
/// of the remote's refs at most `listing_max_age` old), rendered and planned. What
/// `tether diff`, the JSON API and the web UI show; `steps` gets the time of each step.
pub async fn plan_current(
    home: &kube::Client,
    target: &crate::cluster::target::Target,
    options: &AppOptions,
    app: &Application,
    listing_max_age: Duration,
    steps: &mut Steps,
) -> Result<(Revision, crate::plan::Plan), Error> {
    let (revision, tree) = fetch(home, options, app, None, listing_max_age).await?;
    steps.done("source");
    let plan = render_and_plan(home, target, options, app, &revision, tree, steps).await?;
    Ok((revision, plan))
}

/// Renders a fetched revision as the Application says and plans it against its
/// destination `target`, as the Application's ServiceAccount when it names one; `home`
/// holds the Application (and the Secrets it names). `steps` gets the time of each step.
pub async fn render_and_plan(
    home: &kube::Client,
    target: &crate::cluster::target::Target,
    options: &AppOptions,
    app: &Application,
    revision: &Revision,
    tree: Box<dyn Tree>,
    steps: &mut Steps,
) -> Result<crate::plan::Plan, Error> {
    let resolver = &target.resolver;
    let objects = render_app(home, resolver, options, app, revision, tree).await?;
    steps.done("render");
    let acting = crate::tenancy::client_for(&target.client, app, options.require_service_account)
        .map_err(Error::Spec)?;
    let plan = plan_app(&acting, resolver, options, app, objects, true).await?;
    steps.done("plan");
    Ok(plan)
}

/// How long each step of a piece of work took, in order (for a `Server-Timing` header).
#[derive(Debug)]
pub struct Steps {
    began: std::time::Instant,
    pub taken: Vec<(&'static str, Duration)>,
}

impl Steps {
    /// Starts timing now.
    pub fn new() -> Steps {
        Steps {
            began: std::time::Instant::now(),
            taken: Vec::new(),
        }
    }

    /// The step `name` ended now; the next one starts.
    pub fn done(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.taken.push((name, now - self.began));
        self.began = now;
    }

    /// The steps as a `Server-Timing` header's value: `source;dur=1.2, plan;dur=30.5` (ms).
    pub fn server_timing(&self) -> String {
        self.taken
            .iter()
            .map(|(name, took)| format!("{name};dur={:.1}", took.as_secs_f64() * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Default for Steps {
    fn default() -> Steps {
        Steps::new()
    }
}

/// Renders a fetched revision as the Application says (the agent's render, for
/// `tether bootstrap` too), its SOPS keys read with `home` (see [`decryption_keys`]).
pub async fn render_app(
    home: &kube::Client,
    resolver: &Resolver,
    options: &AppOptions,
    app: &Application,
    revision: &Revision,
    tree: Box<dyn Tree>,
) -> Result<Vec<crate::object::Object>, Error> {
    let name = app.name_any();
    let spec = &app.spec;
    let renderer = match spec.render.renderer.as_deref() {
        None | Some("") | Some("auto") => Renderer::Auto,
        Some("directory") => Renderer::Directory,
        Some("kustomize") => Renderer::Kustomize,
        Some("helm") => Renderer::Helm,
        Some(other) => {
            return Err(Error::Spec(format!(
                "spec.render.renderer {other:?} is not auto, directory, kustomize or helm"
            )));
        }
    };
    let mut render_options = RenderOptions {
        renderer,
        vars: spec.render.variables.clone(),
        namespace: spec.destination.namespace.clone(),
        app: name,
        kustomize_bin: options.kustomize_bin.clone(),
        helm_bin: options.helm_bin.clone(),
        revision: Some(revision.commit.clone()),
        cache_dir: Some(options.cache_dir.clone()),
        decryption: decryption_keys(home, app).await?,
        ..Default::default()
    };
    render_options.helm.values_files = spec.render.values_files.clone();
    render_options.jsonnet = spec.render.jsonnet.options();
    render_options.limits.memory_bytes = match &spec.render.memory_limit {
        Some(limit) => {
            let bytes = crate::render::external::parse_memory_limit(limit)
                .map_err(|e| Error::Spec(format!("spec.render.memoryLimit: {e}")))?;
            let budget = crate::render::external::memory_budget();
            if bytes > budget {
                return Err(Error::Spec(format!(
                    "spec.render.memoryLimit {limit} is above the {} that the agent's renders may take together (--render-memory-budget); lower it, or raise the budget and the agent's memory limit",
                    crate::size::show_size(budget)
                )));
            }
            bytes
        }
        None => options.render_memory,
    };
    let capabilities = resolver.capabilities();
    render_options
        .helm
        .fill_capabilities(capabilities.kube_version, capabilities.api_versions);
    let path = crate::source::tree::normalize(&spec.source.path).ok_or_else(|| {
        Error::Spec(format!(
            "spec.source.path {:?} leaves the repository",
            spec.source.path
        ))
    })?;
    tokio::task::spawn_blocking(move || {
        crate::render::render(tree.as_ref(), &path, &render_options)
    })
    .await
    .map_err(|source| Error::Task {
        what: "render",
        source,
    })?
    .map_err(Error::from)
}

/// Plans rendered objects against the cluster as the Application's policy says, with
/// `client` acting for it (see [`crate::tenancy::client_for`]); `keep_unchanged_live` for a plan
/// that is shown (see [`PlanOptions::keep_unchanged_live`]).
pub async fn plan_app(
    client: &kube::Client,
    resolver: &Resolver,
    options: &AppOptions,
    app: &Application,
    objects: Vec<crate::object::Object>,
    keep_unchanged_live: bool,
) -> Result<crate::plan::Plan, Error> {
    let mut plan_options = plan_options_for(options, app);
    plan_options.keep_unchanged_live = keep_unchanged_live;
    Ok(plan(client, resolver, objects, &plan_options).await?)
}

/// How the agent plans an Application's set: named by the Application (recorded on the
/// set's parent), and an object another owner holds fails alone (rule 13).
pub fn plan_options_for(options: &AppOptions, app: &Application) -> PlanOptions {
    let spec = &app.spec;
    let mut plan_options = PlanOptions::new(app.name_any(), spec.destination.namespace.clone());
    plan_options.concurrency = options.concurrency;
    // With selfHeal, Git is the authority: fields someone else took are taken back.
    plan_options.force_conflicts = spec.sync_policy.force_conflicts;
    plan_options.application = Some(application_key(app));
    plan_options.refuse_alone = true;
    // Checked where the sync starts (an unknown option fails it there).
    plan_options.create_namespace = spec.sync_policy.create_namespace().unwrap_or(false);
    plan_options.ignore_differences = spec.ignore_differences.clone();
    plan_options.watched = options.watched.clone();
    // Read by this plan only if it names who changed a field.
    plan_options.audit_log = options.audit_log.as_deref().and_then(|path| {
        crate::audit::AuditLog::open(path)
            .inspect_err(|err| tracing::warn!(%err, "who changed what is told without users"))
            .ok()
            .map(std::sync::Arc::new)
    });
    plan_options
}

/// What a render produced, as one value: two renders with the same digest make the same
/// plan against the same cluster (where each object came from does not count).
pub fn digest_of(objects: &[crate::object::Object]) -> [u8; 32] {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for object in objects {
        let manifest = object.manifest.to_string();
        hasher.update((manifest.len() as u64).to_le_bytes());
        hasher.update(manifest.as_bytes());
    }
    hasher.finalize().into()
}

/// The keys of the Application's `spec.decryption` (none without it): age keys in the keys
/// of its Secret ending in `.agekey`, OpenPGP secret keys in those ending in `.asc`, as Flux
/// reads them. The Secret is read for each
/// render (a key rotated in it is used at the next), in the Application's namespace.
pub async fn decryption_keys(
    home: &kube::Client,
    app: &Application,
) -> Result<crate::render::sops::Keys, Error> {
    let Some(decryption) = &app.spec.decryption else {
        return Ok(Default::default());
    };
    if decryption.provider != "sops" {
        return Err(Error::Spec(format!(
            "spec.decryption.provider {:?} is not sops (the only provider tether has)",
            decryption.provider
        )));
    }
    let Some(secret) = &decryption.secret_ref else {
        return Err(Error::Spec(
            "spec.decryption.secretRef is missing: name a Secret in the Application's namespace that holds the age keys (keys ending in .agekey)".into(),
        ));
    };
    let namespace = app.namespace().unwrap_or_default();
    let name = &secret.name;
    let label = format!("the decryption Secret {namespace}/{name} (spec.decryption.secretRef)");
    let data = secret_data(home, &namespace, name, &label)
        .await
        .map_err(Error::Decryption)?;
    let mut keys = crate::render::sops::Keys::default();
    for (key, value) in data {
        if !key.ends_with(".agekey") && !key.ends_with(".asc") {
            continue;
        }
        let value = String::from_utf8(value.0).map_err(|_| {
            Error::Decryption(format!(
                "Secret {namespace}/{name}: {key} is not text (an age key file or an armored OpenPGP key)"
            ))
        })?;
        keys.extend(
            crate::render::sops::Keys::parse(&value)
                .map_err(|e| Error::Decryption(format!("Secret {namespace}/{name}: {key}: {e}")))?,
        );
    }
    if keys.is_empty() {
        return Err(Error::Decryption(format!(
            "Secret {namespace}/{name} (spec.decryption.secretRef) holds no key: put age keys in keys ending in .agekey and armored OpenPGP secret keys in keys ending in .asc (kubectl create secret generic {name} --from-file=age.agekey=key.txt)"
        )));
    }
    Ok(keys)
}

/// The data of Secret `namespace/name`; when it cannot be read, says so of `label` ("the
/// Git credentials Secret ns/name") and why.
pub(crate) async fn secret_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    label: &str,
) -> Result<std::collections::BTreeMap<String, k8s_openapi::ByteString>, String> {
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), namespace);
    let secret = secrets
        .get(name)
        .await
        .map_err(|e| format!("cannot read {label}: {}", describe(&e)))?;
    Ok(secret.data.unwrap_or_default())
}

/// The text of key `key` of a Secret's `data`, if it has it.
pub(crate) fn secret_text(
    data: &std::collections::BTreeMap<String, k8s_openapi::ByteString>,
    key: &str,
) -> Option<String> {
    data.get(key)
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
}

/// Key `key` of Secret `namespace/name` written to `path` (readable by this process only),
/// e.g. a signing key.
pub(crate) async fn secret_file(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    key: &str,
    path: &std::path::Path,
) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let label = format!("the Secret {namespace}/{name}");
    let value = secret_data(client, namespace, name, &label)
        .await?
        .remove(key)
        .ok_or_else(|| format!("Secret {namespace}/{name} has no key {key}"))?;
    let mut bytes = value.0;
    if !bytes.ends_with(b"\n") {
        bytes.push(b'\n');
    }
    std::fs::write(path, bytes).map_err(|e| format!("cannot write {key}: {e}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn an_error_becomes_its_whole_chain_in_the_words_each_part_gives() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "no room");
        assert_eq!(
            String::from(Error::TempDir(io)),
            "cannot create a temporary folder: no room"
        );
        let spec = Error::Spec("spec.render.renderer \"x\" is not auto".into());
        assert_eq!(String::from(spec), "spec.render.renderer \"x\" is not auto");
        // A stage's error is kept whole: its text, and it is reachable as the source type.
        let fetch = Error::from(crate::source::git::Error::Timeout {
            url: "git://127.0.0.1/x".into(),
            seconds: 3,
        });
        assert!(matches!(fetch, Error::Fetch(_)));
        assert_eq!(
            String::from(fetch),
            "git://127.0.0.1/x: no answer within 3 s; check the network or raise --git-timeout"
        );
    }
}
