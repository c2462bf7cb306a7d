//! Applying a plan as the Application's policy says: hooks that failed become Events, what
//! was applied is counted in the metrics and becomes the history entry.

use kube::runtime::events::EventType;

use crate::agent::Application;
use crate::agent::report::publish;
use crate::agent::{Acting, Context, Failure, http, now_rfc3339};
use crate::application::{HistoryEntry, HookRecord, RunResult};
use crate::apply::{ApplyOptions, ApplyReport, apply};
use crate::health::HealthStatus;
use crate::object::ObjectKey;
use crate::plan::Action as PlanAction;
use crate::source::git::Revision;

/// What the cluster held of the set once an apply succeeded, as the server answered
/// tether's writes (and the plan read the unchanged members).
pub(super) struct Written {
    /// Each member's resourceVersion, for the drift watch.
    pub versions: Vec<(ObjectKey, String)>,
    /// Each written member's health in the server's answer.
    pub health: Vec<(ObjectKey, HealthStatus)>,
}

/// Applies a plan as the Application's policy says, counts what it did in the metrics, and
/// returns the history entry (`what` starts its message: "applied", "corrected drift at")
/// and what the cluster now holds.
pub(super) async fn apply_and_record(
    ctx: &Context,
    at: &Acting<'_>,
    app: &Application,
    planned: crate::plan::Plan,
    revision: &Revision,
    drift: bool,
    what: &str,
) -> Result<(HistoryEntry, Written), Failure> {
    let (dest, client) = (at.dest, at.client);
    let policy = &app.spec.sync_policy;
    let options = ApplyOptions {
        prune: policy.prune && !planned.options.partial,
        force_conflicts: policy.force_conflicts,
        concurrency: ctx.options.concurrency,
        // Putting back the revision already applied is not a new deployment.
        run_hooks: !drift,
        health_rules: super::health_rules(app),
        health_of_written: true,
        ..Default::default()
    };
    // Who changed what tether puts back (fields and writers, never values): in the history
    // entry, so the Event, the notifications, the status and the API say it.
    let put_back: Vec<String> = planned
        .changes
        .iter()
        .flat_map(|c| c.reclaims.iter().map(move |f| format!("{} {f}", c.key)))
        .collect();
    // The plan had changes: whatever stopped the apply (a conflict, a parent that cannot be
    // written), the cluster differs from the revision.
    let report = apply(client, &dest.target.resolver, planned, &options)
        .await
        .map_err(|e| Failure {
            message: dest.target.context(e.to_string()),
            entry: None,
            revision: None,
            out_of_sync: true,
        })?;
    for hook in report.hooks.iter().filter(|h| !h.succeeded) {
        publish(ctx, app, EventType::Warning, "HookFailed", hook.to_string()).await;
    }
    let hooks: Vec<HookRecord> = report.hooks.iter().map(HookRecord::from).collect();
    if let Some(message) = report.failure_message().map(|m| dest.target.context(m)) {
        // A failed sync is history too when it ran hooks: which ran, and how they ended.
        let entry = (!hooks.is_empty()).then(|| HistoryEntry {
            revision: revision.commit.clone(),
            time: now_rfc3339(),
            result: RunResult::Failed.into(),
            created: 0,
            updated: 0,
            pruned: 0,
            message: Some(message.clone()),
            hooks: hooks.clone(),
        });
        return Err(Failure {
            message,
            entry,
            revision: None,
            out_of_sync: true,
        });
    }
    count_applied(ctx, &report, drift);
    let versions = report
        .results
        .iter()
        .filter(|r| r.action != PlanAction::Prune)
        .filter_map(|r| Some((r.key.clone(), r.resource_version.clone()?)))
        .collect();
    let health = report
        .results
        .iter()
        .filter_map(|r| Some((r.key.clone(), r.written_health?)))
        .collect();
    let mut entry = succeeded_entry(&report, revision, hooks, what);
    say_put_back(&mut entry, &put_back);
    Ok((entry, Written { versions, health }))
}

/// Adds what was put back, and who had changed it, to the entry's message (five at most).
fn say_put_back(entry: &mut HistoryEntry, put_back: &[String]) {
    let Some(message) = entry.message.as_mut().filter(|_| !put_back.is_empty()) else {
        return;
    };
    let shown: Vec<&str> = put_back.iter().take(5).map(String::as_str).collect();
    let more = if put_back.len() > 5 { "; …" } else { "" };
    message.push_str(&format!("; put back: {}{more}", shown.join("; ")));
}

/// How many objects the apply gave `action`.
fn count(report: &ApplyReport, action: PlanAction) -> u32 {
    report.results.iter().filter(|r| r.action == action).count() as u32
}

/// Counts what an apply did in the metrics (and a drift correction, when it put back the
/// revision already applied).
fn count_applied(ctx: &Context, report: &ApplyReport, drift: bool) {
    for (action, label) in [
        (PlanAction::Create, "create"),
        (PlanAction::Update, "update"),
        (PlanAction::Prune, "prune"),
    ] {
        ctx.metrics
            .applied
            .get_or_create(&http::ActionLabels {
                action: label.into(),
            })
            .inc_by(count(report, action) as u64);
    }
    if drift {
        // The same revision again, with changes: someone changed the cluster by hand.
        ctx.metrics.drift_corrections.inc();
    }
}

/// The history entry of an apply that went through.
fn succeeded_entry(
    report: &ApplyReport,
    revision: &Revision,
    hooks: Vec<HookRecord>,
    what: &str,
) -> HistoryEntry {
    let (created, updated, pruned) = (
        count(report, PlanAction::Create),
        count(report, PlanAction::Update),
        count(report, PlanAction::Prune),
    );
    HistoryEntry {
        revision: revision.commit.clone(),
        time: now_rfc3339(),
        result: RunResult::Succeeded.into(),
        created,
        updated,
        pruned,
        message: Some(format!(
            "{what} {}: {created} created, {updated} updated, {pruned} pruned",
            &revision.commit[..12.min(revision.commit.len())],
        )),
        hooks,
    }
}
