//! `tether plan`: what `apply` would change, as a diff per object, a summary line, JSON for
//! tools or Markdown for a pull-request comment. `--detailed-exitcode`: 0 in sync, 2 changes.

use std::io::{IsTerminal, Write};

use anyhow::Context;
use serde::Serialize;

use super::GlobalArgs;
use super::render::{RendererArgs, SourceArgs};
use crate::cluster::Cluster;
use crate::cluster::discovery::Resolver;
use crate::cluster::window::Window;
use crate::object::{ObjectKey, Origin};
use crate::output::OutputFormat;
use crate::plan::{Action, Change, Hook, Plan, PlanOptions, Skipped, Summary};
use crate::source::git::Revision;

mod markdown;

/// Where to apply and how: shared by `plan` and `apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub renderer: RendererArgs,

    /// Application name; names the ApplySet parent Secret `tether-<app>` in the namespace.
    /// Default: the last folder of --path (else the repository's name).
    #[arg(long, value_name = "NAME")]
    pub app: Option<String>,

    /// Take over objects that already exist and belong to no ApplySet.
    #[arg(long)]
    pub adopt: bool,

    /// Take ownership of fields that another field manager owns.
    #[arg(long)]
    pub force_conflicts: bool,

    /// API requests in flight at once, to start with.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub concurrency: usize,

    /// Requests in flight grow from --concurrency up to this many while the API server
    /// answers as fast as it first did (a long round trip, not its queue, is what they wait
    /// for), and shrink back when its answers slow down. Equal to --concurrency: fixed.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub max_concurrency: usize,

    /// Let objects name namespaces other than -n (a set spanning namespaces); without it,
    /// an explicit -n refuses them, as kubectl does.
    #[arg(long)]
    pub multi_namespace: bool,

    /// Create the namespace when it does not exist (not a member of the set: never
    /// pruned), as Argo CD's CreateNamespace=true and helm's --create-namespace.
    #[arg(long)]
    pub create_namespace: bool,

    /// Fields left to someone else: a YAML list of rules as Argo CD's ignoreDifferences
    /// (group, kind, name, namespace, jsonPointers, managedFieldsManagers). They are left
    /// out of what is applied and never shown as drift.
    #[arg(long, value_name = "FILE")]
    pub ignore_differences: Option<std::path::PathBuf>,

    /// The API server's audit log (the file of its --audit-log-path, JSON, level Metadata
    /// or above): drift and conflicts name the user and user agent of each change beside
    /// its field manager.
    #[arg(long, value_name = "FILE")]
    pub audit_log: Option<std::path::PathBuf>,
}

impl TargetArgs {
    /// The rules of --ignore-differences (none without it).
    fn ignore_rules(&self) -> anyhow::Result<Vec<crate::plan::ignore::IgnoreRule>> {
        let Some(file) = &self.ignore_differences else {
            return Ok(Vec::new());
        };
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("--ignore-differences {}", file.display()))?;
        let rules: Vec<crate::plan::ignore::IgnoreRule> = serde_saphyr::from_str(&text)
            .map_err(|e| {
                anyhow::anyhow!(
                    "--ignore-differences {}: not a list of rules (group, kind, jsonPointers, managedFieldsManagers): {e}",
                    file.display()
                )
            })?;
        crate::plan::ignore::check(&rules, &format!("--ignore-differences {}", file.display()))
            .map_err(anyhow::Error::msg)?;
        Ok(rules)
    }
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Exit 0 when in sync, 2 when there are changes, 1 on error (as terraform plan).
    #[arg(long)]
    pub detailed_exitcode: bool,

    #[command(flatten)]
    pub comment: super::comment::CommentArgs,
}

/// Everything `plan` and `apply` start from.
pub struct Prepared {
    pub cluster: Cluster,
    pub resolver: Resolver,
    pub plan: Plan,
    pub revision: Option<Revision>,
}

/// Resolves the source, renders, connects, discovers and plans; `keep_unchanged_live` when
/// the caller shows unchanged objects' state (see [`PlanOptions::keep_unchanged_live`]);
/// `deleting` plans the deletion of the whole set (its hooks kept from the render).
pub async fn prepare(
    global: &GlobalArgs,
    target: &TargetArgs,
    keep_unchanged_live: bool,
    deleting: bool,
) -> anyhow::Result<Prepared> {
    let resolved = target.source.resolve().await?;
    let cluster = Cluster::connect(&global.cluster_options()).await?;
    let resolver = Resolver::new(cluster.client())
        .await
        .map_err(|e| cluster.describe(e))
        .context("API discovery failed")?;
    let app = match &target.app {
        Some(app) => app.clone(),
        None => resolved.default_app_name(target.source.repo.as_deref())?,
    };
    let mut render_options = target.renderer.options(
        &app,
        cluster.namespace(),
        resolved.revision.as_ref(),
        &target.source.registry,
    )?;
    // Helm's .Capabilities describe the cluster this is planned for.
    let capabilities = resolver.capabilities();
    render_options
        .helm
        .fill_capabilities(capabilities.kube_version, capabilities.api_versions);
    let mut objects = resolved.render(render_options).await?;
    if deleting {
        objects.retain(|o| crate::object::is_hook(&o.manifest));
    }
    if let Some(namespace) = &global.namespace
        && !target.multi_namespace
    {
        let elsewhere = in_other_namespaces(&objects, namespace, &resolver);
        if !elsewhere.is_empty() {
            anyhow::bail!(
                "-n {namespace}, but {} object(s) name another namespace:\n  {}\npass --multi-namespace to apply a set that spans namespaces, or remove metadata.namespace from them; nothing was written",
                elsewhere.len(),
                elsewhere.join("\n  ")
            );
        }
    }
    let mut options = PlanOptions::new(app, cluster.namespace());
    options.adopt = target.adopt;
    options.force_conflicts = target.force_conflicts;
    options.concurrency = target.concurrency;
    if target.max_concurrency > target.concurrency {
        let window = Window::new(target.concurrency, target.max_concurrency);
        options.window = Some(std::sync::Arc::new(window));
    }
    options.keep_unchanged_live = keep_unchanged_live;
    options.deleting = deleting;
    options.create_namespace = target.create_namespace;
    options.source = Some(resolved.source.clone());
    options.app_defaulted = target.app.is_none();
    options.ignore_differences = target.ignore_rules()?;
    if let Some(path) = &target.audit_log {
        let log = crate::audit::AuditLog::open(path).map_err(anyhow::Error::msg)?;
        options.audit_log = Some(std::sync::Arc::new(log));
    }
    options.progress = super::progress::for_stderr();
    let plan = crate::plan::plan(&cluster.client(), &resolver, objects, &options).await?;
    Ok(Prepared {
        cluster,
        resolver,
        plan,
        revision: resolved.revision,
    })
}

pub async fn run(global: &GlobalArgs, args: &PlanArgs, out: &mut impl Write) -> anyhow::Result<u8> {
    let comment_to = args.comment.target()?;
    let prepared = prepare(global, &args.target, false, false).await?;
    let (app, namespace) = (&prepared.plan.options.app, &prepared.plan.options.namespace);
    super::windows::note(&prepared.cluster.client(), namespace, app).await?;
    if let Some(application) = prepared.plan.synced_by_other() {
        eprintln!(
            "note: this is the set of Application {application}; its agent syncs it from Git, and `tether apply` here is refused without --override-application"
        );
    }
    write_plan(
        out,
        global.output,
        &prepared.plan,
        prepared.revision.as_ref(),
    )?;
    if let Some(target) = comment_to {
        super::comment::comment(target, &prepared.plan, prepared.revision.as_ref()).await?;
    }
    Ok(if args.detailed_exitcode && prepared.plan.has_changes() {
        2
    } else {
        0
    })
}

/// The objects that name a namespace other than `namespace`, each as `origin: key` (at
/// most 20, then how many more). Only kinds the cluster serves as namespaced count: a cluster-scoped one that names a
/// namespace, or an unknown kind, is the plan's to explain.
fn in_other_namespaces(
    objects: &[crate::object::Object],
    namespace: &str,
    resolver: &Resolver,
) -> Vec<String> {
    let namespaced = |o: &crate::object::Object| {
        let api_version = o.manifest["apiVersion"].as_str().unwrap_or_default();
        resolver
            .resolve(api_version, &o.key.kind)
            .is_some_and(|k| k.namespaced)
    };
    let mut found: Vec<String> = objects
        .iter()
        .filter(|o| !o.key.namespace.is_empty() && o.key.namespace != namespace)
        .filter(|o| namespaced(o))
        .map(|o| format!("{}: {}", o.origin, o.key))
        .collect();
    if found.len() > 20 {
        let more = found.len() - 20;
        found.truncate(20);
        found.push(format!("… and {more} more"));
    }
    found
}

/// The `-o json` document. Its shape is a contract: fields are only ever added.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanDocument<'a> {
    api_version: &'static str,
    kind: &'static str,
    app: &'a str,
    namespace: &'a str,
    apply_set_id: &'a str,
    revision: Option<&'a Revision>,
    summary: Summary,
    changes: Vec<ChangeDocument<'a>>,
    #[serde(skip_serializing_if = "<[Hook]>::is_empty")]
    hooks: &'a [Hook],
    #[serde(skip_serializing_if = "<[Skipped]>::is_empty")]
    skipped: &'a [Skipped],
    /// Why the last sync's hooks did not finish: the next sync runs them again.
    #[serde(skip_serializing_if = "Option::is_none")]
    hooks_unfinished: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ChangeDocument<'a> {
    action: Action,
    key: &'a ObjectKey,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin: Option<&'a Origin>,
    #[serde(skip_serializing_if = "str::is_empty")]
    diff: &'a str,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    conflicts: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    takes_over_from: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    reclaims: &'a [String],
    wave: i64,
}

pub fn write_plan(
    out: &mut impl Write,
    format: OutputFormat,
    plan: &Plan,
    revision: Option<&Revision>,
) -> anyhow::Result<()> {
    match format {
        OutputFormat::Json | OutputFormat::Yaml => {
            let document = PlanDocument {
                api_version: "tether.dev/v1alpha1",
                kind: "Plan",
                app: &plan.options.app,
                namespace: &plan.options.namespace,
                apply_set_id: &plan.applyset.id,
                revision,
                summary: plan.summary(),
                changes: plan
                    .changes
                    .iter()
                    .map(|c| ChangeDocument {
                        action: c.action,
                        key: &c.key,
                        origin: c.origin.as_ref(),
                        diff: &c.diff,
                        conflicts: &c.conflicts,
                        takes_over_from: &c.takes_over_from,
                        reclaims: &c.reclaims,
                        wave: c.wave,
                    })
                    .collect(),
                hooks: &plan.hooks,
                skipped: &plan.skipped,
                hooks_unfinished: plan
                    .applyset
                    .hooks_unfinished
                    .as_ref()
                    .map(|u| u.why.clone()),
            };
            crate::output::write_structured(out, format, &document)?;
        }
        OutputFormat::Markdown => markdown::write_markdown(out, plan, revision)?,
        OutputFormat::Text => write_text(out, plan, revision, color_wanted())?,
    }
    Ok(())
}

/// ANSI colours on a terminal, unless NO_COLOR is set.
pub fn color_wanted() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

pub(super) fn symbol(action: Action) -> &'static str {
    match action {
        Action::Create => "+",
        Action::Update => "~",
        Action::Unchanged => "=",
        Action::Prune => "-",
        Action::Conflict => "!",
    }
}

fn describe_change(change: &Change, waves: bool) -> String {
    let origin = change
        .origin
        .as_ref()
        .map(|o| format!("  ({o})"))
        .unwrap_or_default();
    let wave = if waves {
        format!(" [wave {}]", change.wave)
    } else {
        String::new()
    };
    format!(
        "{} {} {}{wave}{origin}",
        symbol(change.action),
        change.action,
        change.key
    )
}

/// `PreSync Job.batch/migrate-* -n web (order 0, delete: BeforeHookCreation)`.
pub(super) fn describe_hook(hook: &Hook) -> String {
    let phases: Vec<String> = hook.phases.iter().map(ToString::to_string).collect();
    let mut key = hook.key.clone();
    if hook.generate_name {
        key.name.push('*');
    }
    let delete = hook.delete_policy.to_string();
    format!(
        "{} {key} (order {}{})",
        phases.join(","),
        hook.order,
        if delete.is_empty() {
            String::new()
        } else {
            format!(", delete: {delete}")
        }
    )
}

fn write_text(
    out: &mut impl Write,
    plan: &Plan,
    revision: Option<&Revision>,
    color: bool,
) -> anyhow::Result<()> {
    let paint = |code: &str, text: &str| paint(color, code, text);
    let at = revision
        .map(|r| format!(" at {}", r.short()))
        .unwrap_or_default();
    writeln!(
        out,
        "tether plan: app {} in namespace {}{at} (ApplySet {})",
        plan.options.app, plan.options.namespace, plan.applyset.id
    )?;
    for change in plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Unchanged)
    {
        writeln!(out)?;
        write_text_change(out, change, plan.uses_waves(), &paint)?;
    }
    if plan.creates_namespace {
        writeln!(out)?;
        writeln!(
            out,
            "{} Namespace/{} (it does not exist; created first, not a member: never pruned)",
            paint("32", "+ create"),
            plan.options.namespace
        )?;
    }
    if !plan.hooks.is_empty() {
        writeln!(out)?;
        writeln!(out, "Hooks (run by a sync that changes something):")?;
        for hook in &plan.hooks {
            writeln!(out, "  {}  ({})", describe_hook(hook), hook.origin)?;
        }
    }
    if let Some(line) = unfinished_hooks(plan) {
        writeln!(out)?;
        writeln!(out, "{line}")?;
    }
    for skipped in &plan.skipped {
        writeln!(out)?;
        writeln!(
            out,
            "  not applied: {} ({}; {})",
            skipped.key, skipped.why, skipped.origin
        )?;
    }
    // Ignored fields of objects that do not change otherwise (those that do say it above).
    for change in plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Unchanged && !c.ignored.is_empty())
    {
        writeln!(out)?;
        for field in &change.ignored {
            writeln!(
                out,
                "  {}: ignored (the cluster's value is kept): {field}",
                change.key
            )?;
        }
    }
    writeln!(out)?;
    writeln!(out, "{}", plan.summary())?;
    Ok(())
}

/// `text` in the terminal colour `code` (an SGR parameter) when `color`.
fn paint(color: bool, code: &str, text: &str) -> String {
    if color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// One change of the text plan: its line, conflicts, reclaimed fields, take-overs, and diff.
fn write_text_change(
    out: &mut impl Write,
    change: &Change,
    waves: bool,
    paint: &impl Fn(&str, &str) -> String,
) -> anyhow::Result<()> {
    let code = match change.action {
        Action::Create => "32;1",
        Action::Prune => "31;1",
        Action::Conflict => "35;1",
        _ => "33;1",
    };
    writeln!(out, "{}", paint(code, &describe_change(change, waves)))?;
    for conflict in &change.conflicts {
        writeln!(out, "    conflict (tether never applied it): {conflict}")?;
    }
    for field in &change.reclaims {
        writeln!(out, "    drift, Git's value goes back: {field}")?;
    }
    if let Some(why) = &change.recreate {
        writeln!(out, "    deleted and created anew: {why}")?;
    }
    for field in &change.ignored {
        writeln!(out, "    ignored (the cluster's value is kept): {field}")?;
    }
    if !change.takes_over_from.is_empty() {
        writeln!(
            out,
            "    takes over fields from {}",
            change.takes_over_from.join(", ")
        )?;
    }
    for line in change.diff.lines() {
        let code = diff_line_color(line);
        if code.is_empty() {
            writeln!(out, "    {line}")?;
        } else {
            writeln!(out, "    {}", paint(code, line))?;
        }
    }
    Ok(())
}

/// The colour of a unified diff's line: headers bold, additions green, removals red, hunks
/// cyan, context none.
fn diff_line_color(line: &str) -> &'static str {
    if line.starts_with("+++") || line.starts_with("---") {
        "1"
    } else if line.starts_with('+') {
        "32"
    } else if line.starts_with('-') {
        "31"
    } else if line.starts_with("@@") {
        "36"
    } else {
        ""
    }
}

/// The hooks of the set's last sync failed or never ran: the next sync runs them again.
pub(super) fn unfinished_hooks(plan: &Plan) -> Option<String> {
    let unfinished = plan.applyset.hooks_unfinished.as_ref()?;
    Some(format!(
        "The last sync's hooks did not all succeed, so the next sync runs them again: {}",
        unfinished.why
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_lines_are_coloured_by_what_they_say() {
        assert_eq!(diff_line_color("--- live"), "1");
        assert_eq!(diff_line_color("+++ desired"), "1");
        assert_eq!(diff_line_color("+  replicas: 3"), "32");
        assert_eq!(diff_line_color("-  replicas: 2"), "31");
        assert_eq!(diff_line_color("@@ -1,3 +1,3 @@"), "36");
        assert_eq!(diff_line_color("   kind: Deployment"), "");
        assert_eq!(paint(false, "32", "x"), "x");
        assert_eq!(paint(true, "32", "x"), "\x1b[32mx\x1b[0m");
    }
}
