//! `tether apply`: plan, then make the cluster match — ordered server-side apply, ApplySet
//! pruning, and with `--wait` a wait for health.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;

use super::GlobalArgs;
use super::plan::{TargetArgs, color_wanted, prepare};
use super::render::parse_duration;
use crate::apply::{ApplyOptions, ApplyReport, apply};
use crate::output::OutputFormat;
use crate::plan::Action;

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Keep objects that are no longer in Git (default: prune them).
    #[arg(long)]
    pub no_prune: bool,

    /// Allow an empty render to prune every object of the application.
    #[arg(long)]
    pub allow_empty: bool,

    /// Wait until every object is healthy (Deployments rolled out, Jobs complete, …).
    #[arg(long)]
    pub wait: bool,

    /// How long --wait waits.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,

    /// How long one hook may run, and one sync wave may take to become Healthy.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub hook_timeout: Duration,

    /// Apply into a set that an Application's agent syncs (refused without it): the agent
    /// sees the write as drift and puts Git's state back.
    #[arg(long)]
    pub override_application: bool,

    /// Apply although a SyncWindow of the namespace keeps this application from syncing now.
    #[arg(long)]
    pub ignore_sync_windows: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ApplyDocument<'a> {
    api_version: &'static str,
    kind: &'static str,
    app: &'a str,
    namespace: &'a str,
    revision: Option<&'a crate::source::git::Revision>,
    #[serde(flatten)]
    report: &'a ApplyReport,
}

/// `tether apply`: plan, refuse an Application's set unless overridden, apply, report; the
/// exit code is 0, or an error naming what failed.
pub async fn run(
    global: &GlobalArgs,
    args: &ApplyArgs,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let prepared = prepare(global, &args.target, false, false).await?;
    guard_application_set(&prepared.plan, args.override_application)?;
    let mut options = apply_options(args);
    // The window the plan found carries on into the apply.
    options.window = prepared.plan.options.window.clone();
    let app = prepared.plan.options.app.clone();
    let namespace = prepared.plan.options.namespace.clone();
    guard_windows(&prepared.cluster.client(), &namespace, &app, args).await?;
    let summary = prepared.plan.summary();
    if global.output == OutputFormat::Text {
        super::plan::write_plan(
            out,
            OutputFormat::Text,
            &prepared.plan,
            prepared.revision.as_ref(),
        )?;
        writeln!(out)?;
    }
    let client = prepared.cluster.client();
    let report = apply(&client, &prepared.resolver, prepared.plan, &options)
        .await
        .map_err(|err| match err {
            // Say which render came out empty: a wrong --path or --ref is the usual cause.
            crate::apply::Error::EmptyRender { .. } => anyhow::anyhow!(
                "--path {}{}: {err}",
                args.target.source.path,
                prepared
                    .revision
                    .as_ref()
                    .map(|r| format!(" at {}", r.short()))
                    .unwrap_or_default()
            ),
            other => other.into(),
        })?;
    match global.output {
        OutputFormat::Json | OutputFormat::Yaml => {
            let document = ApplyDocument {
                api_version: "tether.dev/v1alpha1",
                kind: "ApplyResult",
                app: &app,
                namespace: &namespace,
                revision: prepared.revision.as_ref(),
                report: &report,
            };
            crate::output::write_structured(out, global.output, &document)?;
        }
        _ => write_text(out, &report, args.wait, color_wanted())?,
    }
    let writes = report.writes;
    outcome(report)?;
    tracing::debug!(?summary, writes, "apply finished");
    Ok(0)
}

/// A SyncWindow of the namespace blocks this application now: refused unless a blocking
/// window says manualSync (an apply is a sync asked for by hand) or the user overrides it.
async fn guard_windows(
    client: &kube::Client,
    namespace: &str,
    app: &str,
    args: &ApplyArgs,
) -> anyhow::Result<()> {
    let Some(gate) = super::windows::closed_now(client, namespace, app).await? else {
        return Ok(());
    };
    let reopens = super::windows::reopens(&gate);
    if gate.manual_sync || args.ignore_sync_windows {
        eprintln!(
            "note: a sync window keeps {app} from syncing now ({}; {reopens}); applying as a sync asked for by hand",
            gate.message
        );
        return Ok(());
    }
    anyhow::bail!(
        "a sync window keeps {app} from syncing now: {}; {reopens}. Pass --ignore-sync-windows to apply anyway (or give the window manualSync: true); nothing was written",
        gate.message
    )
}

/// An Application's agent syncs this set: refused unless `--override-application`, and then
/// with a warning.
pub(super) fn guard_application_set(
    plan: &crate::plan::Plan,
    override_application: bool,
) -> anyhow::Result<()> {
    let Some(application) = plan.synced_by_other() else {
        return Ok(());
    };
    let set = format!(
        "Secret/{} -n {}",
        plan.applyset.parent_name(),
        plan.options.namespace
    );
    if !override_application {
        anyhow::bail!(
            "{set} is the set of Application {application}: its agent puts Git's state back over anything applied here. Change Git instead (or suspend the Application), or pass --override-application to apply anyway; nothing was written"
        );
    }
    eprintln!(
        "warning: applying into {set}, the set of Application {application}: its agent will see this as drift and put Git's state back (with selfHeal), or show the Application OutOfSync"
    );
    Ok(())
}

fn apply_options(args: &ApplyArgs) -> ApplyOptions {
    ApplyOptions {
        prune: !args.no_prune,
        allow_empty: args.allow_empty,
        force_conflicts: args.target.force_conflicts,
        concurrency: args.target.concurrency,
        wait: args.wait.then_some(args.timeout),
        hook_timeout: args.hook_timeout,
        progress: super::progress::for_stderr(),
        ..Default::default()
    }
}

/// The report as the command's result: every failed object listed with its action.
fn outcome(report: ApplyReport) -> anyhow::Result<()> {
    match report.into_result() {
        Ok(_) => Ok(()),
        Err(crate::apply::SyncFailure::Objects { failed }) => {
            let list: Vec<String> = failed
                .iter()
                .map(|(action, why)| format!("  {action} {why}"))
                .collect();
            anyhow::bail!(
                "{} object(s) failed; later stages and pruning were skipped:\n{}",
                failed.len(),
                list.join("\n")
            )
        }
        Err(other) => Err(other.into()),
    }
}

pub(super) fn write_text(
    out: &mut impl Write,
    report: &ApplyReport,
    wait: bool,
    color: bool,
) -> anyhow::Result<()> {
    let count = |action: Action| {
        report
            .results
            .iter()
            .filter(|r| r.action == action && r.error.is_none())
            .count()
    };
    for hook in &report.hooks {
        writeln!(
            out,
            "{} hook {} {}{}: {}",
            hook.phase,
            hook.key,
            if hook.succeeded {
                "succeeded"
            } else {
                "failed"
            },
            if hook.deleted { " (deleted)" } else { "" },
            hook.message
        )?;
    }
    for result in report
        .results
        .iter()
        .filter(|r| r.action != Action::Unchanged)
    {
        let verb = match (result.action, &result.error) {
            (_, Some(_)) => "failed",
            (Action::Create, None) => "created",
            (Action::Prune, None) => "pruned",
            _ => "updated",
        };
        writeln!(out, "{verb} {}", result.key)?;
    }
    if wait {
        writeln!(out)?;
        writeln!(out, "{:<12} {:<50} MESSAGE", "HEALTH", "OBJECT")?;
        for result in report.results.iter().filter(|r| r.health.is_some()) {
            let health = result.health.as_ref().expect("filtered");
            let status = health.status.to_string();
            let status = if color {
                let code = match health.status {
                    crate::health::HealthStatus::Healthy => "32",
                    crate::health::HealthStatus::Degraded => "31",
                    _ => "33",
                };
                format!("\x1b[{code}m{status:<12}\x1b[0m")
            } else {
                format!("{status:<12}")
            };
            writeln!(
                out,
                "{status} {:<50} {}",
                result.key.to_string(),
                health.message
            )?;
        }
    }
    writeln!(
        out,
        "Apply complete: {} created, {} updated, {} pruned, {} unchanged ({} writes)",
        count(Action::Create),
        count(Action::Update),
        count(Action::Prune),
        count(Action::Unchanged),
        report.writes
    )?;
    Ok(())
}
