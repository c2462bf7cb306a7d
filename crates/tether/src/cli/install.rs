//! `tether install` and `tether uninstall`: the agent in the cluster, as a set tether applies
//! and prunes itself (ApplySet `tether-install` in the agent's namespace).

use std::io::Write;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use serde_json::Value;

use super::GlobalArgs;

use crate::agent::install_crd;
use crate::apply::ApplyOptions;
use crate::cluster::Cluster;
use crate::cluster::discovery::Resolver;
use crate::install::{InstallOptions, NAME, TOKENS_SECRET, Tokens};
use crate::output::OutputFormat;
use crate::plan::PlanOptions;

/// The agent's namespace when `-n` names none.
const DEFAULT_NAMESPACE: &str = "tether-system";

#[derive(Debug, clap::Args)]
pub struct InstallArgs {
    #[command(flatten)]
    pub agent: InstallFlags,

    /// Install or upgrade only the CRDs (applications.tether.dev, syncwindows.tether.dev),
    /// no agent.
    #[arg(long)]
    pub crd_only: bool,

    /// Print the install (-o yaml, the default here, or -o json) and change nothing; no
    /// cluster is needed. The Secret of generated tokens is left out unless --show-secrets.
    #[arg(long)]
    pub dry_run: bool,

    /// Print the tokens: with --dry-run, the Secret is printed with new ones; otherwise the
    /// installed ones are printed after the install.
    #[arg(long)]
    pub show_secrets: bool,

    /// Wait until every installed object is healthy (the agent's Deployment Available), up
    /// to this long; 0 does not wait.
    #[arg(long, value_name = "DURATION", default_value = "3m", value_parser = crate::duration::parse_duration)]
    pub timeout: Duration,
}

/// How the agent is installed: the flags `tether install` and `tether bootstrap` share.
#[derive(Debug, clap::Args)]
pub struct InstallFlags {
    /// The agent's container image.
    #[arg(long, value_name = "IMAGE", default_value = concat!("tether:", env!("CARGO_PKG_VERSION")))]
    pub image: String,

    /// Agent replicas: 1, or 0 to stop it; with --shards, as many as you like. (Without
    /// sharding, a standby waiting for the leader Lease is not Ready, so the Deployment
    /// would never be Available.)
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub replicas: u32,

    /// Run the replicas sharded: the Applications are split into N shards (Leases in the
    /// agent's namespace) and each replica reconciles the Applications of its own shards;
    /// when one dies, its shards move to the others within the lease time (15 s).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub shards: Option<u32>,

    /// Multi-tenant: the agent may write nothing itself; every Application must name a
    /// ServiceAccount, which the agent impersonates.
    #[arg(long)]
    pub tenants: bool,

    /// A single-namespace install: the agent reconciles only the Applications of its own
    /// namespace (-n), applies only into it, and gets a Role there instead of cluster-wide
    /// rights.
    #[arg(long)]
    pub namespaced: bool,
}

#[derive(Debug, clap::Args)]
pub struct UninstallArgs {
    /// Also delete the agent's namespace (and any Application in it; the objects Applications
    /// applied stay).
    #[arg(long)]
    pub delete_namespace: bool,

    /// Also delete the CRDs, and with them every Application and SyncWindow in the cluster
    /// (the objects Applications applied stay).
    #[arg(long)]
    pub delete_crd: bool,
}

/// The agent's namespace: `-n`, else tether-system.
fn agent_namespace(global: &GlobalArgs) -> String {
    global
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.into())
}

fn options(global: &GlobalArgs, args: &InstallArgs) -> anyhow::Result<InstallOptions> {
    install_options(global, &args.agent)
}

/// The install `tether install` and `tether bootstrap` make from their flags.
pub(super) fn install_options(
    global: &GlobalArgs,
    flags: &InstallFlags,
) -> anyhow::Result<InstallOptions> {
    let InstallFlags {
        image,
        replicas,
        shards,
        tenants,
        namespaced,
    } = flags;
    let (replicas, shards, tenants, namespaced) = (*replicas, *shards, *tenants, *namespaced);
    if shards.is_none() && replicas > 1 {
        anyhow::bail!(
            "--replicas {replicas} needs --shards: without sharding one agent acts and a standby \
             is never Ready (try --shards {} --replicas {replicas})",
            replicas * 4
        );
    }
    Ok(InstallOptions {
        namespace: agent_namespace(global),
        image: image.clone(),
        replicas,
        tenants,
        shards,
        namespaced,
    })
}

pub async fn install(
    global: &GlobalArgs,
    args: &InstallArgs,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let options = options(global, args)?;
    if args.dry_run {
        let tokens = args.show_secrets.then(Tokens::generate);
        let mut documents = Vec::new();
        for crd in crate::application::crds() {
            documents.push(serde_json::to_value(crd)?);
        }
        if !args.crd_only {
            documents.extend(crate::install::manifests(&options, tokens.as_ref()));
        }
        return print_documents(out, global.output, &documents, &options, tokens.is_some());
    }
    let cluster = Cluster::connect(&global.cluster_options()).await?;
    cluster.server_version().await?;
    install_crd(&cluster.client()).await?;
    for name in crate::application::CRD_NAMES {
        writeln!(
            out,
            "customresourcedefinition {name} installed and established"
        )?;
    }
    if args.crd_only {
        return Ok(0);
    }
    let client = cluster.client();
    let namespace = options.namespace.as_str();
    // Tokens are generated once: an upgrade keeps the installed ones.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let installed = secrets.get_opt(TOKENS_SECRET).await?;
    let (tokens, kept) = Tokens::kept_from(installed.as_ref());
    let objects = crate::install::manifests(&options, Some(&tokens));
    let apply_options = ApplyOptions {
        force_conflicts: true,
        wait: (!args.timeout.is_zero()).then_some(args.timeout),
        ..Default::default()
    };
    // The install owns these names: an earlier hand-applied RBAC file is taken over.
    apply_install_set(
        &client,
        namespace,
        objects,
        true,
        apply_options,
        "install",
        out,
    )
    .await?;
    writeln!(out)?;
    writeln!(
        out,
        "The agent runs as Deployment {NAME} in namespace {namespace}; webhooks, the JSON API and the web UI are served by Service {NAME} on port {}.",
        crate::install::PORT
    )?;
    writeln!(
        out,
        "  kubectl -n {namespace} port-forward svc/{NAME} {port}:{port}   # then open http://127.0.0.1:{port}/ui/",
        port = crate::install::PORT
    )?;
    if args.show_secrets {
        writeln!(out, "  webhook secret: {}", tokens.webhook_secret)?;
        writeln!(out, "  API token (log in to the UI): {}", tokens.api_token)?;
        writeln!(out, "  read-only token: {}", tokens.readonly_token)?;
    } else {
        writeln!(
            out,
            "  tokens: Secret {TOKENS_SECRET} ({}; --show-secrets prints them)",
            match kept {
                3 => "kept from the earlier install",
                0 => "generated",
                _ => "kept from the earlier install; the missing ones generated",
            }
        )?;
    }
    Ok(0)
}

/// Plans `manifests` as the install's set in `namespace` and applies them, pruning what the
/// set no longer holds; prints each change (and health, when waiting). An error when any
/// object failed or (waiting) is not healthy; `what` names the command in it.
async fn apply_install_set(
    client: &kube::Client,
    namespace: &str,
    manifests: Vec<Value>,
    adopt: bool,
    mut apply_options: ApplyOptions,
    what: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let resolver = Resolver::new(client.clone()).await?;
    let mut plan_options = PlanOptions::new(crate::install::APP, namespace);
    plan_options.adopt = adopt;
    plan_options.force_conflicts = apply_options.force_conflicts;
    plan_options.keep_unchanged_live = false;
    plan_options.progress = super::progress::for_stderr();
    apply_options.progress = super::progress::for_stderr();
    let objects = crate::install::objects(manifests);
    let wait = apply_options.wait.is_some();
    crate::engine::sync(
        client,
        &resolver,
        objects,
        &plan_options,
        &apply_options,
        |report| super::apply::write_text(out, report, wait, false),
    )
    .await
    .map_err(|e| e.context(format!("the {what}")))?;
    Ok(())
}

fn print_documents(
    out: &mut impl Write,
    format: OutputFormat,
    documents: &[Value],
    options: &InstallOptions,
    with_secret: bool,
) -> anyhow::Result<u8> {
    if format == OutputFormat::Json {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": documents});
        crate::output::write_structured(out, OutputFormat::Json, &list)?;
        return Ok(0);
    }
    writeln!(
        out,
        "# tether install --dry-run: the agent's install, for a repository of its own."
    )?;
    if !with_secret {
        writeln!(
            out,
            "# Secret {}/{TOKENS_SECRET} (keys webhook-secret, api-token, readonly-token) is not printed: create it\n# yourself, or let `tether install` generate it (--show-secrets prints one with new tokens).",
            options.namespace
        )?;
    }
    for document in documents {
        writeln!(out, "---")?;
        write!(out, "{}", serde_saphyr::to_string(document)?)?;
    }
    Ok(0)
}

/// Takes tether's finalizer off every Application (none when the CRD is not installed);
/// how many had it.
async fn release_applications(client: &kube::Client) -> anyhow::Result<usize> {
    use crate::agent::finalize::{self, FINALIZER};
    use kube::ResourceExt;
    let apps: Api<crate::application::Application> = Api::all(client.clone());
    let listed = match apps.list(&Default::default()).await {
        Ok(listed) => listed,
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(0),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            eprintln!(
                "warning: cannot list Applications (forbidden): their finalizer {FINALIZER} stays, and deleting one waits for an agent; remove it by hand (kubectl patch application NAME --type=merge -p '{{\"metadata\":{{\"finalizers\":null}}}}') to keep its objects"
            );
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    };
    let mut released = 0;
    for app in listed.items.iter().filter(|a| finalize::has_finalizer(a)) {
        finalize::patch_finalizers(client, app, finalize::others(app))
            .await
            .map_err(|e| anyhow::anyhow!("cannot remove the finalizer {FINALIZER} from Application {}/{}: {e}; run `tether uninstall` again", app.namespace().unwrap_or_default(), app.name_any()))?;
        released += 1;
    }
    Ok(released)
}

pub async fn uninstall(
    global: &GlobalArgs,
    args: &UninstallArgs,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let cluster = Cluster::connect(&global.cluster_options()).await?;
    cluster.server_version().await?;
    let client = cluster.client();
    let namespace = agent_namespace(global);
    // Nothing installed there (a wrong -n): say so, and create nothing.
    let parent = crate::inventory::parent_name(crate::install::APP);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    if secrets.get_opt(&parent).await?.is_none() {
        anyhow::bail!(
            "nothing of tether's install is in namespace {namespace} (no Secret {parent}); pass -n with the namespace `tether install` used"
        );
    }
    // The set again, with only its namespace, which holds the set's parent and is deleted
    // last, on its own: everything else of it is pruned.
    let keep = vec![crate::install::namespace_manifest(&namespace)];
    let apply_options = ApplyOptions {
        allow_empty: true,
        ..Default::default()
    };
    apply_install_set(
        &client,
        &namespace,
        keep,
        false,
        apply_options,
        "uninstall",
        out,
    )
    .await?;
    // No agent is left to delete an Application's objects: without this, deleting one (or
    // the CRD, or a namespace holding one) would wait for an agent for ever.
    let released = release_applications(&client).await?;
    if released > 0 {
        writeln!(
            out,
            "removed the finalizer {} from {released} Application(s): deleting them now keeps their objects",
            crate::agent::finalize::FINALIZER
        )?;
    }
    if args.delete_namespace {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        namespaces.delete(&namespace, &Default::default()).await?;
        writeln!(out, "deleted Namespace/{namespace}")?;
    }
    if args.delete_crd {
        use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for name in crate::application::CRD_NAMES {
            match crds.delete(name, &Default::default()).await {
                Ok(_) => writeln!(out, "deleted customresourcedefinition {name}")?,
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    } else {
        writeln!(
            out,
            "The CRDs, the Applications and SyncWindows stay (--delete-crd removes them); the objects Applications applied stay either way."
        )?;
    }
    Ok(0)
}
