//! `tether render`: print the desired objects of a Git revision (or a local folder).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use super::GlobalArgs;
pub use crate::duration::parse_duration;
use crate::object::Object;
use crate::output::OutputFormat;
use crate::render::{RenderOptions, Renderer, render};
use crate::source::git::{GitAuth, GitSource, Revision};
use crate::source::reference::RefSpec;
use crate::source::signature::SignaturePolicy;
use crate::source::tree::{DirTree, Tree, normalize};

/// Where the manifests come from: shared by `render` and, later, `plan` and `apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Git repository: https://, http://, git://, ssh://, file://, git@host:path, or a local
    /// path. Without it, --path is a folder on disk.
    #[arg(long, value_name = "URL")]
    pub repo: Option<String>,

    /// Branch, tag, commit id (full or abbreviated) or semver range over tags (">=1.2.0 <2").
    /// Prefix with branch:, tag:, commit: or semver: to say which. Default: the remote's HEAD.
    #[arg(long = "ref", value_name = "REF", default_value = "")]
    pub reference: String,

    /// Folder inside the repository (or on disk) that holds the manifests.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub path: String,

    /// HTTPS user name (default: git).
    #[arg(long, value_name = "NAME", env = "TETHER_GIT_USER")]
    pub git_user: Option<String>,

    /// File holding the HTTPS password or token (first line).
    #[arg(long, value_name = "FILE", conflicts_with = "git_password_env")]
    pub git_password_file: Option<PathBuf>,

    /// Name of an environment variable holding the HTTPS password or token.
    #[arg(long, value_name = "VAR")]
    pub git_password_env: Option<String>,

    /// SSH private key for ssh:// and git@host:path URLs.
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,

    /// known_hosts file for SSH host key checks (default: ~/.ssh/known_hosts). Always strict.
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,

    /// Extra CA certificates (PEM) to trust for HTTPS Git servers.
    #[arg(long, value_name = "FILE")]
    pub git_ca_file: Option<PathBuf>,

    /// Network timeout for Git operations (e.g. 30s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub git_timeout: Duration,

    /// Require the revision to be signed by one of the keys in FILE (OpenSSH public keys or
    /// an armored OpenPGP key); repeat for more files.
    #[arg(long = "verify-signature", value_name = "FILE")]
    pub verify_signature: Vec<PathBuf>,

    /// Cache folder for Git repositories (default: ~/.cache/tether/git).
    #[arg(long, value_name = "DIR", env = "TETHER_GIT_CACHE")]
    pub git_cache: Option<PathBuf>,
}

/// How the folder becomes objects: shared by `render`, `plan`, `apply` and `status`.
#[derive(Debug, Clone, clap::Args)]
pub struct RendererArgs {
    /// auto detects Kustomize (kustomization.yaml) and Helm (Chart.yaml), else plain files.
    #[arg(long, value_enum, default_value_t)]
    pub renderer: Renderer,

    /// A variable for ${VAR} substitution after rendering; repeatable. Substitution is on
    /// only when --var or --vars-file is given.
    #[arg(long = "var", value_name = "KEY=VALUE")]
    pub vars: Vec<String>,

    /// A file of KEY=VALUE lines for ${VAR} substitution; repeatable (later files win).
    #[arg(long, value_name = "FILE")]
    pub vars_file: Vec<PathBuf>,

    /// Let kustomizations use remote bases (URLs).
    #[arg(long)]
    pub kustomize_allow_remote: bool,

    /// Let kustomizations render helmCharts (off by default: a chart runs templates, and
    /// one from a repository is downloaded). Charts come from the repository only, unless
    /// their repository is allowed with --kustomize-helm-repo.
    #[arg(long)]
    pub kustomize_enable_helm: bool,

    /// A chart repository that helmCharts[].repo may name (with --kustomize-enable-helm);
    /// repeatable. Any other is refused before kustomize runs.
    #[arg(long, value_name = "URL", requires = "kustomize_enable_helm")]
    pub kustomize_helm_repo: Vec<String>,

    /// Helm release name (default: the application's name).
    #[arg(long, value_name = "NAME")]
    pub release: Option<String>,

    /// Helm values file, a path in the repository; repeatable, applied in order.
    #[arg(long = "values", value_name = "FILE")]
    pub values: Vec<String>,

    /// Helm value, KEY=VALUE as helm --set; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,

    /// Do not render the chart's crds/ folder.
    #[arg(long)]
    pub skip_crds: bool,

    /// Render a chart from this Helm repository (the URL holding index.yaml).
    #[arg(long, value_name = "URL", requires = "chart")]
    pub helm_repo: Option<String>,

    /// The chart's name in --helm-repo.
    #[arg(long, value_name = "NAME", requires = "helm_repo")]
    pub chart: Option<String>,

    /// The chart version: exact or a semver range (default: the newest).
    #[arg(long, value_name = "VERSION", default_value = "*")]
    pub chart_version: String,

    /// .Capabilities.KubeVersion for Helm (default for render: v1.34.0, the version tether
    /// is built against; plan/apply ask the cluster).
    #[arg(long, value_name = "VERSION")]
    pub kube_version: Option<String>,

    /// .Capabilities.APIVersions for Helm; repeatable (plan/apply ask the cluster).
    #[arg(long, value_name = "GROUP/VERSION")]
    pub api_versions: Vec<String>,

    /// The kustomize program (default: $TETHER_KUSTOMIZE, else PATH).
    #[arg(long, value_name = "FILE")]
    pub kustomize_bin: Option<PathBuf>,

    /// The helm program (default: $TETHER_HELM, else PATH).
    #[arg(long, value_name = "FILE")]
    pub helm_bin: Option<PathBuf>,

    /// An external variable of .jsonnet files (std.extVar), a string.
    #[arg(long, value_name = "NAME=VALUE")]
    pub jsonnet_ext_str: Vec<String>,

    /// An external variable of .jsonnet files, as Jsonnet code.
    #[arg(long, value_name = "NAME=CODE")]
    pub jsonnet_ext_code: Vec<String>,

    /// A top-level argument of .jsonnet files whose value is a function, a string.
    #[arg(long, value_name = "NAME=VALUE")]
    pub jsonnet_tla_str: Vec<String>,

    /// A top-level argument of .jsonnet files, as Jsonnet code.
    #[arg(long, value_name = "NAME=CODE")]
    pub jsonnet_tla_code: Vec<String>,

    /// A folder of the repository searched for Jsonnet imports (as jsonnet -J).
    #[arg(long = "jsonnet-lib", value_name = "FOLDER")]
    pub jsonnet_libs: Vec<String>,

    /// Time limit for one kustomize, helm or Jsonnet run.
    #[arg(long, value_name = "DURATION", default_value = "90s", value_parser = parse_duration)]
    pub render_timeout: Duration,

    /// Memory limit for one kustomize, helm or Jsonnet run (with the programs it starts):
    /// past it the run is killed.
    #[arg(long, value_name = "SIZE", default_value = "256Mi", value_parser = crate::render::external::parse_memory_limit)]
    pub render_memory: u64,
}

impl RendererArgs {
    /// Render options for application `app` in `namespace`.
    pub fn options(
        &self,
        app: &str,
        namespace: &str,
        revision: Option<&Revision>,
    ) -> anyhow::Result<RenderOptions> {
        let mut vars = None;
        if !self.vars.is_empty() || !self.vars_file.is_empty() {
            let mut all = crate::render::substitute::Vars::new();
            for file in &self.vars_file {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("--vars-file {}", file.display()))?;
                let parsed = crate::render::substitute::parse_vars_file(&text)
                    .map_err(|e| anyhow::anyhow!("--vars-file {}: {e}", file.display()))?;
                all.extend(parsed);
            }
            for pair in &self.vars {
                let (key, value) = pair
                    .split_once('=')
                    .with_context(|| format!("--var {pair:?}: expected KEY=VALUE"))?;
                all.insert(key.to_string(), value.to_string());
            }
            vars = Some(all);
        }
        Ok(RenderOptions {
            renderer: self.renderer,
            kustomize: crate::render::kustomize::KustomizeOptions {
                allow_remote: self.kustomize_allow_remote,
                enable_helm: self.kustomize_enable_helm,
                helm_repos: self.kustomize_helm_repo.clone(),
            },
            helm: crate::render::helm::HelmOptions {
                release: self.release.clone(),
                values_files: self.values.clone(),
                set: self.set.clone(),
                skip_crds: self.skip_crds,
                kube_version: self.kube_version.clone(),
                api_versions: self.api_versions.clone(),
                repo_chart: match (&self.helm_repo, &self.chart) {
                    (Some(url), Some(chart)) => Some(crate::render::helm::RepoChart {
                        url: url.clone(),
                        chart: chart.clone(),
                        version: self.chart_version.clone(),
                    }),
                    _ => None,
                },
            },
            jsonnet: self.jsonnet_options()?,
            vars,
            namespace: namespace.to_string(),
            app: app.to_string(),
            kustomize_bin: self.kustomize_bin.clone(),
            helm_bin: self.helm_bin.clone(),
            limits: self.limits(),
            revision: revision.map(|r| r.commit.clone()),
            cache_dir: Some(crate::source::git::cache_root()),
            ..Default::default()
        })
    }
}

impl RendererArgs {
    /// The limits of one renderer run. A command renders one folder at a time, so the
    /// budget of renders running at once is raised to its limit when below.
    fn limits(&self) -> crate::render::external::Limits {
        use crate::render::external;
        if self.render_memory > external::memory_budget() {
            external::set_memory_budget(self.render_memory);
        }
        external::Limits {
            timeout: self.render_timeout,
            memory_bytes: self.render_memory,
            ..Default::default()
        }
    }

    fn jsonnet_options(&self) -> anyhow::Result<crate::render::jsonnet::JsonnetOptions> {
        use crate::render::jsonnet::Argument;
        let parse =
            |flag: &str, pairs: &[String], code: bool| -> anyhow::Result<Vec<(String, Argument)>> {
                pairs
                    .iter()
                    .map(|pair| {
                        let (name, value) = pair
                            .split_once('=')
                            .with_context(|| format!("--{flag} {pair:?}: expected NAME=VALUE"))?;
                        let value = if code {
                            Argument::Code(value.to_string())
                        } else {
                            Argument::Str(value.to_string())
                        };
                        Ok((name.to_string(), value))
                    })
                    .collect()
            };
        let mut ext_vars = parse("jsonnet-ext-str", &self.jsonnet_ext_str, false)?;
        ext_vars.extend(parse("jsonnet-ext-code", &self.jsonnet_ext_code, true)?);
        let mut tlas = parse("jsonnet-tla-str", &self.jsonnet_tla_str, false)?;
        tlas.extend(parse("jsonnet-tla-code", &self.jsonnet_tla_code, true)?);
        let libs = self
            .jsonnet_libs
            .iter()
            .map(|lib| {
                crate::source::tree::normalize(lib).with_context(|| {
                    format!("--jsonnet-lib {lib:?}: leaves the repository; give a folder inside it")
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(crate::render::jsonnet::JsonnetOptions {
            ext_vars,
            tlas,
            libs,
        })
    }
}

/// The last folder of the path, else the repository's name, as a DNS label. The set
/// records where it came from, so a second source whose default name is the same is
/// refused (see `PlanOptions::source`).
pub fn default_app_name(path: &str, repo: Option<&str>) -> anyhow::Result<String> {
    let from_path = path.rsplit('/').find(|p| !p.is_empty() && *p != ".");
    let from_repo = repo.and_then(|r| {
        r.trim_end_matches('/')
            .trim_end_matches(".git")
            .rsplit(['/', ':'])
            .next()
    });
    let raw = from_path.or(from_repo).unwrap_or("");
    let name: String = raw
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let name = name.trim_matches('-').to_string();
    if name.is_empty() {
        anyhow::bail!("cannot derive an application name from --path {path:?}; pass --app NAME");
    }
    Ok(name)
}

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub renderer: RendererArgs,

    /// Annotate each object with the file, line and document it came from.
    #[arg(long)]
    pub show_origin: bool,

    /// Print Secret values as they are in Git (default: each value is replaced by its size).
    #[arg(long)]
    pub show_secrets: bool,
}

/// The tree to render and, for Git, the revision it is at.
pub struct Resolved {
    pub tree: std::sync::Arc<dyn Tree>,
    pub revision: Option<Revision>,
    /// Repository-relative folder to render.
    pub path: String,
    /// What the source is, for the set to record: `<repository URL>#<path>`, or a folder
    /// outside any repository with a remote.
    pub source: String,
}

impl Resolved {
    /// The application name when none is given: the last folder of the path, else the
    /// repository's name (or, for a folder on disk, its own name).
    pub fn default_app_name(&self, repo: Option<&str>) -> anyhow::Result<String> {
        let fallback = repo.unwrap_or_else(|| self.source.split('#').next().unwrap_or_default());
        default_app_name(&self.path, Some(fallback))
    }

    /// Renders the folder on a blocking thread (renderers are programs and file I/O).
    pub async fn render(&self, options: RenderOptions) -> anyhow::Result<Vec<Object>> {
        let tree = self.tree.clone();
        let path = self.path.clone();
        Ok(
            tokio::task::spawn_blocking(move || render(tree.as_ref(), &path, &options))
                .await
                .context("the render task panicked")??,
        )
    }
}

impl SourceArgs {
    fn auth(&self) -> anyhow::Result<GitAuth> {
        let password = match (&self.git_password_file, &self.git_password_env) {
            (Some(file), _) => {
                let text = std::fs::read_to_string(file).with_context(|| {
                    format!("cannot read the Git password file {}", file.display())
                })?;
                let first = text.lines().next().unwrap_or("").trim_end().to_string();
                if first.is_empty() {
                    bail!("the Git password file {} is empty", file.display());
                }
                Some(first)
            }
            (None, Some(var)) => match std::env::var(var) {
                Ok(value) if !value.is_empty() => Some(value),
                _ => {
                    bail!("--git-password-env {var}: the environment variable is not set or empty")
                }
            },
            (None, None) => None,
        };
        Ok(GitAuth {
            username: self.git_user.clone(),
            password,
            ssh_key: self.ssh_key.clone(),
            known_hosts: self.known_hosts.clone(),
            ca_file: self.git_ca_file.clone(),
        })
    }

    /// Fetches (or opens) the source. Git work runs on a blocking thread.
    pub async fn resolve(&self) -> anyhow::Result<Resolved> {
        let Some(repo) = &self.repo else {
            if !self.reference.is_empty() {
                bail!("--ref needs --repo: a folder on disk has no revisions");
            }
            return local_folder(Path::new(&self.path));
        };
        let path = normalize(&self.path).with_context(|| {
            format!(
                "--path {:?} leaves the repository; give a folder inside it",
                self.path
            )
        })?;
        let mut source = GitSource::new(repo.clone(), RefSpec::parse(&self.reference)?);
        source.auth = self.auth()?;
        source.timeout = self.git_timeout;
        if let Some(dir) = &self.git_cache {
            source.cache_dir = dir.clone();
        }
        if !self.verify_signature.is_empty() {
            source.verify = Some(
                SignaturePolicy::from_files(&self.verify_signature).map_err(anyhow::Error::msg)?,
            );
        }
        let (revision, tree, stats) = tokio::task::spawn_blocking(move || source.fetch())
            .await
            .context("the Git task panicked")??;
        tracing::info!(
            commit = %revision.commit,
            contacted_remote = stats.contacted_remote,
            objects = stats.objects_received,
            "source resolved"
        );
        let source = format!("{}#{path}", same_repository(repo));
        Ok(Resolved {
            tree: std::sync::Arc::new(tree),
            revision: Some(revision),
            path,
            source,
        })
    }
}

/// A folder on disk: its repository root (the nearest folder with `.git` above the path as
/// given, else the folder itself) bounds what symlinks may reach, `--path` itself included.
fn local_folder(path: &Path) -> anyhow::Result<Resolved> {
    let folder =
        std::fs::canonicalize(path).with_context(|| format!("--path {}", path.display()))?;
    if !folder.is_dir() {
        bail!("--path {}: is not a folder", path.display());
    }
    // `..` taken lexically: only a symlink may lead the path elsewhere than it reads.
    let mut given = PathBuf::new();
    for part in std::path::absolute(path)
        .with_context(|| format!("--path {}", path.display()))?
        .components()
    {
        match part {
            std::path::Component::ParentDir => {
                given.pop();
            }
            std::path::Component::CurDir => {}
            other => given.push(other),
        }
    }
    let root = match given.ancestors().find(|dir| dir.join(".git").exists()) {
        Some(root) => std::fs::canonicalize(root)
            .with_context(|| format!("--path {}: {}", path.display(), root.display()))?,
        None => folder.clone(),
    };
    if !folder.starts_with(&root) {
        bail!(
            "--path {}: leads to {} through a symlink, outside the repository {}; tether reads nothing outside it",
            path.display(),
            folder.display(),
            root.display()
        );
    }
    let relative = folder
        .strip_prefix(&root)
        .expect("root is an ancestor")
        .to_string_lossy()
        .into_owned();
    // A clone is known by its remote, wherever it lies on disk (two people applying the
    // same folder of the same repository are the same source).
    let source = match origin_url(&root) {
        Some(url) => format!("{}#{relative}", same_repository(&url)),
        None => folder.display().to_string(),
    };
    Ok(Resolved {
        tree: std::sync::Arc::new(DirTree::new(root)?),
        revision: None,
        path: relative,
        source,
    })
}

/// The URL of the `origin` remote of the clone at `root`, from its Git config (for a
/// worktree or a submodule, `.git` is a file naming the Git folder).
fn origin_url(root: &Path) -> Option<String> {
    let dot_git = root.join(".git");
    let git_dir = if dot_git.is_file() {
        let text = std::fs::read_to_string(&dot_git).ok()?;
        let named = text.trim().strip_prefix("gitdir:")?.trim().to_string();
        let dir = root.join(named);
        // A worktree's config is in the common Git folder.
        match std::fs::read_to_string(dir.join("commondir")) {
            Ok(common) => dir.join(common.trim()),
            Err(_) => dir,
        }
    } else {
        dot_git
    };
    let config = std::fs::read_to_string(git_dir.join("config")).ok()?;
    let mut in_origin = false;
    for line in config.lines().map(str::trim) {
        if line.starts_with('[') {
            in_origin = line.replace(' ', "") == "[remote\"origin\"]";
        } else if in_origin
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "url"
        {
            return Some(value.trim().to_string());
        }
    }
    None
}

/// A repository as one spelling, fit to be recorded: host (lowercase) and path, whatever
/// the protocol, user, port or credentials (`https://u:token@Git.example.com/o/r.git`,
/// `ssh://git@git.example.com:22/o/r` and `git@git.example.com:o/r` are all
/// `git.example.com/o/r`); a local path stays as it is.
fn same_repository(url: &str) -> String {
    let url = url.trim().trim_end_matches('/').trim_end_matches(".git");
    let (authority, path) = match url.split_once("://") {
        Some((_, rest)) => rest.split_once('/').unwrap_or((rest, "")),
        // scp-like `user@host:path` (a colon before any slash).
        None => match url.split_once(':') {
            Some((host, path)) if !host.contains('/') => (host, path),
            _ => return url.to_string(),
        },
    };
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host = host.split(':').next().unwrap_or(host).to_ascii_lowercase();
    let path = path.split(['?', '#']).next().unwrap_or_default();
    format!("{host}/{}", path.trim_matches('/'))
}

pub async fn run(
    global: &GlobalArgs,
    args: &RenderArgs,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let resolved = args.source.resolve().await?;
    let app = resolved
        .default_app_name(args.source.repo.as_deref())
        .unwrap_or_else(|_| "app".into());
    let namespace = global.namespace.clone().unwrap_or_else(|| "default".into());
    let mut options = args
        .renderer
        .options(&app, &namespace, resolved.revision.as_ref())?;
    // No cluster to ask: the version tether is built against, not Helm's v1.20.0.
    options
        .helm
        .kube_version
        .get_or_insert_with(|| crate::render::helm::BUILT_FOR_KUBERNETES.to_string());
    let mut objects = resolved.render(options).await?;
    if !args.show_secrets {
        for object in &mut objects {
            redact_secret(object);
        }
    }
    match global.output {
        OutputFormat::Text | OutputFormat::Yaml | OutputFormat::Markdown => {
            write_yaml(out, &resolved, &objects, args.show_origin)?
        }
        OutputFormat::Json => {
            if let Some(revision) = &resolved.revision {
                eprintln!(
                    "revision: {} ({})",
                    revision.commit,
                    revision_from(revision)
                );
            }
            let items: Vec<Value> = objects
                .iter()
                .map(|o| {
                    if args.show_origin {
                        with_origin_annotation(o)
                    } else {
                        o.manifest.clone()
                    }
                })
                .collect();
            let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
            serde_json::to_writer_pretty(&mut *out, &list)?;
            writeln!(out)?;
        }
    }
    Ok(0)
}

fn revision_from(revision: &Revision) -> String {
    match &revision.from_ref {
        Some(r) => format!("{r} of {}", revision.url),
        None => revision.url.clone(),
    }
}

fn write_yaml(
    out: &mut impl Write,
    resolved: &Resolved,
    objects: &[Object],
    show_origin: bool,
) -> anyhow::Result<()> {
    if let Some(revision) = &resolved.revision {
        writeln!(
            out,
            "# Revision: {} ({})",
            revision.commit,
            revision_from(revision)
        )?;
    }
    for object in objects {
        writeln!(out, "---")?;
        if show_origin {
            writeln!(out, "# Source: {}", object.origin)?;
        }
        let text = serde_saphyr::to_string(&object.manifest)?;
        out.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            writeln!(out)?;
        }
    }
    Ok(())
}

/// Secret values never reach a terminal or a CI log unless asked for.
fn redact_secret(object: &mut Object) {
    if !(object.key.group.is_empty() && object.key.kind == "Secret") {
        return;
    }
    for field in ["data", "stringData"] {
        if let Some(values) = object
            .manifest
            .get_mut(field)
            .and_then(Value::as_object_mut)
        {
            for value in values.values_mut() {
                let size = value.as_str().map(str::len).unwrap_or(0);
                *value = Value::String(format!(
                    "<redacted: {size} bytes; --show-secrets prints it>"
                ));
            }
        }
    }
}

/// For JSON, where comments do not exist: the origin as an annotation.
fn with_origin_annotation(object: &Object) -> Value {
    let mut manifest = object.manifest.clone();
    if let Some(metadata) = manifest.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = metadata
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(map) = annotations.as_object_mut() {
            map.insert(
                "tether.dev/origin".into(),
                Value::String(object.origin.to_string()),
            );
        }
    }
    manifest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_app_names_are_dns_labels() {
        assert_eq!(
            default_app_name("examples/web-app", None).unwrap(),
            "web-app"
        );
        assert_eq!(
            default_app_name(".", Some("https://x/team/Deploy_Repo.git")).unwrap(),
            "deploy-repo"
        );
        assert_eq!(
            default_app_name("apps/Shop_Front/", None).unwrap(),
            "shop-front"
        );
        for spelling in [
            "https://ci:s3cret@Git.Example.com/team/deploy.git/",
            "ssh://git@git.example.com:22/team/deploy",
            "git@git.example.com:team/deploy.git",
            "https://git.example.com/team/deploy?private_token=s3cret",
        ] {
            assert_eq!(same_repository(spelling), "git.example.com/team/deploy");
        }
        assert_eq!(same_repository("/srv/git/deploy.git"), "/srv/git/deploy");
        assert!(default_app_name(".", None).is_err());
    }
}
