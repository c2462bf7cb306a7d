//! `tether render`: print the desired objects of a Git revision (or a local folder); and the
//! renderer flags (`RendererArgs`) that `plan`, `apply` and `status` share. Where the source
//! comes from (`SourceArgs`, `Resolved`) is in `cli/source.rs`.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;

use super::GlobalArgs;
pub use super::source::{Resolved, SourceArgs};
pub use crate::duration::parse_duration;
use crate::object::Object;
use crate::output::OutputFormat;
use crate::render::{RenderOptions, Renderer};
use crate::source::git::Revision;

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

    /// Keys for SOPS-encrypted files (plain manifests and what Kustomize, Helm and Jsonnet
    /// read): an age key file (as age-keygen writes it) and/or armored OpenPGP secret keys;
    /// default: $SOPS_AGE_KEY_FILE, as sops reads it. Without one, an encrypted file is
    /// refused, never applied as it is.
    #[arg(long, value_name = "FILE", env = "SOPS_AGE_KEY_FILE")]
    pub decryption_key_file: Option<PathBuf>,

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
        registry: &super::source::RegistryArgs,
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
        let decryption = match &self.decryption_key_file {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("--decryption-key-file {}", file.display()))?;
                crate::render::sops::Keys::parse(&text)
                    .map_err(|e| anyhow::anyhow!("--decryption-key-file {}: {e}", file.display()))?
            }
            None => Default::default(),
        };
        Ok(RenderOptions {
            renderer: self.renderer,
            decryption,
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
            registry: match &self.helm_repo {
                Some(url) if url.starts_with("oci://") => {
                    Some(registry.options(&crate::source::oci::OciUrl::parse(url)?)?)
                }
                _ => None,
            },
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
    let mut options = args.renderer.options(
        &app,
        &namespace,
        resolved.revision.as_ref(),
        &args.source.registry,
    )?;
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
