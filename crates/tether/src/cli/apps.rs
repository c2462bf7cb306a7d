//! Operator commands on Applications: `get apps`, `sync`, `diff`, `suspend`, `resume`,
//! `history`, `rollback`. They read and patch the Application resources; the agent acts.

use std::io::Write;

use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams};

use super::GlobalArgs;
use crate::agent::Application;
use crate::application::actions;
use crate::cluster::Cluster;
use crate::cluster::discovery::Resolver;
use crate::output::{OutputFormat, write_structured};

#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// What to list: apps (Applications) or appsets (ApplicationSets).
    #[arg(value_parser = ["apps", "app", "applications", "application", "appsets", "appset", "applicationsets", "applicationset"])]
    pub what: String,
    /// In every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

#[derive(Debug, clap::Args)]
pub struct AppArgs {
    /// The Application's name (in -n / the context's namespace).
    pub app: String,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The Application's name (in -n / the context's namespace).
    pub app: String,
    /// The kustomize program (default: $TETHER_KUSTOMIZE, else PATH), as `tether render`.
    #[arg(long, value_name = "FILE")]
    pub kustomize_bin: Option<std::path::PathBuf>,
    /// The helm program (default: $TETHER_HELM, else PATH), as `tether render`.
    #[arg(long, value_name = "FILE")]
    pub helm_bin: Option<std::path::PathBuf>,
    /// The API server's audit log (its --audit-log-path): drift names the user and user
    /// agent of each change beside its field manager.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<std::path::PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The Application's name.
    pub app: String,
    /// The commit to go back to (see `tether history APP`).
    pub revision: String,
}

async fn api(global: &GlobalArgs) -> anyhow::Result<(Cluster, Api<Application>)> {
    let cluster = Cluster::connect(&global.cluster_options()).await?;
    let api = Api::namespaced(cluster.client(), cluster.namespace());
    Ok((cluster, api))
}

async fn get_app(
    cluster: &Cluster,
    api: &Api<Application>,
    name: &str,
) -> anyhow::Result<Application> {
    match api.get_opt(name).await.map_err(|e| cluster.describe(e))? {
        Some(app) => Ok(app),
        None => anyhow::bail!(
            "Application {name} not found in namespace {}; list them with `tether get apps`",
            cluster.namespace()
        ),
    }
}

fn condition(app: &Application, kind: &str) -> String {
    app.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == kind))
        .map(|c| c.status.clone())
        .unwrap_or_else(|| "Unknown".into())
}

/// `tether get appsets`: each set with how many Applications it makes, and whether its
/// generators and template went through.
async fn get_sets(global: &GlobalArgs, args: &GetArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    use crate::application::ApplicationSet;
    let cluster = crate::cluster::Cluster::connect(&global.cluster_options()).await?;
    let api: Api<ApplicationSet> = if args.all_namespaces {
        Api::all(cluster.client())
    } else {
        Api::namespaced(cluster.client(), cluster.namespace())
    };
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| cluster.describe(e))?;
    if matches!(global.output, OutputFormat::Json | OutputFormat::Yaml) {
        write_structured(out, global.output, &list.items)?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<20} {:<24} {:<6} {:<6} APPLICATIONS / MESSAGE",
        "NAMESPACE", "NAME", "COUNT", "READY"
    )?;
    for set in &list.items {
        let status = set.status.clone().unwrap_or_default();
        let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
        let said = match ready {
            Some(c) if c.status == "True" => status.applications.join(", "),
            Some(c) => c.message.clone(),
            None => "-".into(),
        };
        writeln!(
            out,
            "{:<20} {:<24} {:<6} {:<6} {said}",
            set.namespace().unwrap_or_default(),
            set.name_any(),
            status.count,
            ready.map_or("-", |c| c.status.as_str()),
        )?;
    }
    Ok(0)
}

/// What a list says of an Application that a sync window keeps from syncing now.
fn window_note(status: &crate::application::ApplicationStatus) -> String {
    match status.sync_window.as_ref().filter(|w| !w.open) {
        Some(window) => format!(
            " (sync window closed; next sync {})",
            window.next_sync.as_deref().unwrap_or("none within a year")
        ),
        None => String::new(),
    }
}

pub async fn get(global: &GlobalArgs, args: &GetArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    if args.what.starts_with("appset") || args.what.starts_with("applicationset") {
        return get_sets(global, args, out).await;
    }
    let (cluster, namespaced) = api(global).await?;
    let api: Api<Application> = if args.all_namespaces {
        Api::all(cluster.client())
    } else {
        namespaced
    };
    let list = api
        .list(&ListParams::default())
        .await
        .map_err(|e| cluster.describe(e))?;
    if matches!(global.output, OutputFormat::Json | OutputFormat::Yaml) {
        write_structured(out, global.output, &list.items)?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<20} {:<24} {:<13} {:<10} {:<11} {:<6}",
        "NAMESPACE", "NAME", "REVISION", "SYNC", "HEALTH", "READY"
    )?;
    for app in &list.items {
        let status = app.status.clone().unwrap_or_default();
        let revision = status
            .last_applied_revision
            .as_deref()
            .map(|r| &r[..r.len().min(12)])
            .unwrap_or("-")
            .to_string();
        let sync = status
            .sync
            .as_ref()
            .map(|s| s.status.clone())
            .unwrap_or_else(|| "-".into());
        let health = status.health.clone().unwrap_or_else(|| "-".into());
        let suspended = if app.spec.suspend { " (suspended)" } else { "" };
        writeln!(
            out,
            "{:<20} {:<24} {:<13} {:<10} {:<11} {}{suspended}{}",
            app.namespace().unwrap_or_default(),
            app.name_any(),
            revision,
            sync,
            health,
            condition(app, "Ready"),
            window_note(&status)
        )?;
    }
    Ok(0)
}

pub async fn sync(global: &GlobalArgs, args: &AppArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    let (cluster, api) = api(global).await?;
    let app = get_app(&cluster, &api, &args.app).await?;
    let window = app.status.as_ref().and_then(|s| s.sync_window.as_ref());
    if let Some(window) = window.filter(|w| !w.open && !w.manual_sync) {
        eprintln!(
            "warning: a sync window keeps {} from syncing now ({}); no window lets a sync asked for by hand through (manualSync): this request applies nothing. Ask again once a window opens ({})",
            args.app,
            window.message,
            window.next_sync.as_deref().unwrap_or("a window opens")
        );
    }
    let patch = actions::sync();
    api.patch(&args.app, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| cluster.describe(e))?;
    writeln!(
        out,
        "sync of {} requested; the agent runs it now (`tether get apps` shows the result)",
        args.app
    )?;
    Ok(0)
}

pub async fn diff(
    global: &GlobalArgs,
    args: &DiffArgs,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let (cluster, api) = api(global).await?;
    let app = get_app(&cluster, &api, &args.app).await?;
    let client = cluster.client();
    // Planned where the agent applies it: the cluster its Secret names, else this one.
    let target = match app.spec.destination.cluster_name() {
        Some(name) => {
            let namespace = app.namespace().unwrap_or_default();
            crate::agent::clusters::connect(&client, &namespace, name)
                .await
                .map_err(anyhow::Error::msg)?
        }
        None => crate::cluster::target::Target::home(
            client.clone(),
            std::sync::Arc::new(
                Resolver::new(client.clone())
                    .await
                    .map_err(|e| cluster.describe(e))?,
            ),
        ),
    };
    // Rendered exactly as the agent renders it (the cluster's Helm capabilities included).
    if let Some(path) = &args.audit_log {
        crate::audit::AuditLog::open(path).map_err(anyhow::Error::msg)?;
    }
    let options = crate::app::AppOptions {
        kustomize_bin: args.kustomize_bin.clone(),
        helm_bin: args.helm_bin.clone(),
        audit_log: args.audit_log.clone(),
        ..Default::default()
    };
    let (revision, plan) = crate::app::plan_current(
        &client,
        &target,
        &options,
        &app,
        std::time::Duration::ZERO,
        &mut Default::default(),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    super::plan::write_plan(out, global.output, &plan, Some(&revision))?;
    for refused in &plan.refused {
        eprintln!("cannot be synced: {refused}");
    }
    Ok(if plan.has_changes() { 2 } else { 0 })
}

async fn set_suspend(
    global: &GlobalArgs,
    name: &str,
    suspend: bool,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let (cluster, api) = api(global).await?;
    let app = get_app(&cluster, &api, name).await?;
    let patch = actions::suspend(&app, suspend).map_err(anyhow::Error::msg)?;
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| cluster.describe(e))?;
    writeln!(
        out,
        "{name} {}",
        if suspend {
            "suspended: the agent changes nothing until `tether resume`"
        } else {
            "resumed"
        }
    )?;
    Ok(0)
}

pub async fn suspend(
    global: &GlobalArgs,
    args: &AppArgs,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    set_suspend(global, &args.app, true, out).await
}

pub async fn resume(
    global: &GlobalArgs,
    args: &AppArgs,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    set_suspend(global, &args.app, false, out).await
}

pub async fn history(
    global: &GlobalArgs,
    args: &AppArgs,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let (cluster, api) = api(global).await?;
    let app = get_app(&cluster, &api, &args.app).await?;
    let history = app.status.map(|s| s.history).unwrap_or_default();
    if matches!(global.output, OutputFormat::Json | OutputFormat::Yaml) {
        write_structured(out, global.output, &history)?;
        return Ok(0);
    }
    writeln!(
        out,
        "{:<42} {:<22} {:<10} MESSAGE",
        "REVISION", "TIME", "RESULT"
    )?;
    for entry in history {
        writeln!(
            out,
            "{:<42} {:<22} {:<10} {}",
            entry.revision,
            entry.time,
            entry.result,
            entry.message.unwrap_or_default()
        )?;
        for hook in entry.hooks {
            writeln!(
                out,
                "    {} hook {} {}{}",
                hook.phase,
                hook.object,
                hook.result,
                if hook.message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", hook.message)
                }
            )?;
        }
    }
    Ok(0)
}

pub async fn rollback(
    global: &GlobalArgs,
    args: &RollbackArgs,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    if !crate::source::reference::is_commit_id(&args.revision) {
        anyhow::bail!(
            "{:?} is not a commit id; pick one from `tether history {}`",
            args.revision,
            args.app
        );
    }
    let (cluster, api) = api(global).await?;
    let app = get_app(&cluster, &api, &args.app).await?;
    let patch = actions::rollback(&app, &args.revision).map_err(anyhow::Error::msg)?;
    api.patch(&args.app, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| cluster.describe(e))?;
    writeln!(
        out,
        "{} is pinned to {}: new commits are not applied until `tether resume {}`",
        args.app, args.revision, args.app
    )?;
    Ok(0)
}
