//! `tether delete`: push mode's deletion of an application, as the agent deletes an
//! Application's objects (see `agent::finalize`): the revision is rendered for its
//! PreDelete and PostDelete hooks, every member of the set is planned for deletion (but
//! those `Delete=false` keeps), and the set is deleted in reverse stages and waves, then its
//! record (the ApplySet parent).

use std::io::Write;
use std::time::Duration;

use super::GlobalArgs;
use super::apply::{guard_application_set, write_text};
use super::plan::{TargetArgs, color_wanted, prepare};
use super::render::parse_duration;
use crate::apply::{ApplyOptions, apply};
use crate::output::OutputFormat;

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Show what would be deleted (and kept), delete nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// How long one hook may run, and the objects of one wave may take to be gone.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub hook_timeout: Duration,

    /// Delete the set an Application's agent syncs (refused without it; delete the
    /// Application instead, and its agent deletes the objects).
    #[arg(long)]
    pub override_application: bool,
}

/// `tether delete`: plan the deletion, refuse an Application's set unless overridden,
/// delete, report. Exit 0, or an error naming what failed.
pub async fn run(
    global: &GlobalArgs,
    args: &DeleteArgs,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let prepared = prepare(global, &args.target, false, true).await?;
    let plan = &prepared.plan;
    let (app, namespace) = (plan.options.app.clone(), plan.options.namespace.clone());
    if !plan.parent_exists {
        anyhow::bail!(
            "nothing to delete: no set {app} in namespace {namespace} (no Secret/{}); check --app and -n; nothing was written",
            plan.applyset.parent_name()
        );
    }
    guard_application_set(plan, args.override_application)?;
    if global.output == OutputFormat::Text || args.dry_run {
        super::plan::write_plan(out, global.output, plan, prepared.revision.as_ref())?;
    }
    if args.dry_run {
        return Ok(0);
    }
    writeln!(out)?;
    let kept = crate::agent::finalize::kept_count(plan);
    let options = ApplyOptions {
        allow_empty: true,
        delete_set: true,
        // Each wave gone with what it owns before the next.
        foreground: true,
        concurrency: args.target.concurrency,
        hook_timeout: args.hook_timeout,
        settle_timeout: args.hook_timeout,
        progress: super::progress::for_stderr(),
        ..Default::default()
    };
    let client = prepared.cluster.client();
    let report = apply(&client, &prepared.resolver, prepared.plan, &options).await?;
    write_text(out, &report, false, color_wanted())?;
    let failed: Vec<String> = report
        .results
        .iter()
        .filter_map(|r| Some(format!("  {}: {}", r.key, r.error.as_ref()?)))
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} object(s) could not be deleted; the set's record stays, so running tether delete again finishes it:\n{}",
            failed.len(),
            failed.join("\n")
        );
    }
    if let Some(hook) = report.hooks.iter().find(|h| !h.succeeded) {
        anyhow::bail!("{hook}; the set's record stays, so running tether delete again finishes it");
    }
    writeln!(
        out,
        "deleted the set {app} in namespace {namespace}: {} object(s) deleted, {kept} kept by their annotations, {} deletion hook(s) ran",
        report.pruned,
        report.hooks.len()
    )?;
    Ok(0)
}
