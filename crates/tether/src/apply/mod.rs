//! Apply: carry out a [`Plan`] — widen the ApplySet, server-side apply stage by stage,
//! prune what is no longer desired, narrow the ApplySet, and optionally wait for health.
//!
//! These rules hold here: nothing is written if the plan has errors or
//! conflicts (unless forced); the inventory grows before objects are created and shrinks
//! only after they are deleted; pruning happens only after every apply succeeded, in
//! reverse order; an unchanged object gets no request at all. Start at [`apply`]: it walks
//! the steps that [`schedule::schedule`] lays out (pure), calling the effects in
//! `execute` (applies, namespaces, CRDs), `prune`, `wait` (health), `parent` (the
//! inventory) and [`hooks`].

mod execute;
pub mod hooks;
mod parent;
mod prune;
mod report;
pub mod schedule;
mod wait;

use std::ops::ControlFlow;
use std::time::Duration;

use crate::cluster::discovery::Resolver;
use crate::plan::Plan;
pub use report::{ApplyReport, ObjectResult, SyncFailure};
use schedule::Step;

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Delete members that are no longer desired.
    pub prune: bool,
    /// Allow a render with no objects to prune everything.
    pub allow_empty: bool,
    /// Take ownership of fields other managers own.
    pub force_conflicts: bool,
    pub concurrency: usize,
    /// Wait for every desired object to be healthy, up to this long.
    pub wait: Option<Duration>,
    /// How long to wait for CRDs to be established and pruned objects to be gone.
    pub settle_timeout: Duration,
    /// Run the plan's hooks (when it changes something). Off for a drift correction,
    /// which puts back the revision already applied.
    pub run_hooks: bool,
    /// How long one hook may run, and one sync wave may take to become Healthy.
    pub hook_timeout: Duration,
    pub progress: crate::progress::ProgressHandle,
    /// Health rules before the process's and the library's (an Application's
    /// `spec.healthCheckExprs`): waves, PostSync hooks and `--wait` gate on them.
    pub health_rules: crate::health::rules::Rules,
    /// Delete the whole set (its Application is deleted): its PreDelete hooks, every member
    /// pruned (stages and waves in reverse), its PostDelete hooks, then the hooks' objects
    /// left from earlier syncs and the parent. The plan is made with
    /// [`crate::plan::PlanOptions::deleting`].
    pub delete_set: bool,
    /// Delete with foreground propagation: an object is gone only once what it owns is (a
    /// Deployment once its Pods are).
    pub foreground: bool,
    /// Requests in flight as a window that grows with the round trip (push mode; see
    /// [`crate::cluster::window`]); else [`Self::concurrency`].
    pub window: Option<std::sync::Arc<crate::cluster::window::Window>>,
    /// Assess each written object's health from the server's answer to its apply
    /// ([`ObjectResult::written_health`]): the agent's health after a sync starts from it.
    pub health_of_written: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            prune: true,
            allow_empty: false,
            force_conflicts: false,
            concurrency: 16,
            wait: None,
            settle_timeout: Duration::from_secs(120),
            run_hooks: true,
            hook_timeout: Duration::from_secs(300),
            health_rules: Default::default(),
            delete_set: false,
            foreground: false,
            progress: Default::default(),
            window: None,
            health_of_written: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "the render is empty but the ApplySet holds {members} object(s): refusing to prune \
         everything; pass --allow-empty if that is what you want"
    )]
    EmptyRender { members: usize },
    #[error(
        "{count} object(s) have fields that tether never applied and another manager owns; nothing was written:\n{details}\nresolve the conflict in Git, or take the fields: --force-conflicts (the agent: spec.syncPolicy.forceConflicts: true)"
    )]
    Conflicts { count: usize, details: String },
    #[error("cannot create namespace {name} (CreateNamespace): {reason}")]
    Namespace { name: String, reason: String },
    #[error("cannot update the ApplySet parent Secret/{name}: {reason}")]
    Parent { name: String, reason: String },
    #[error("cannot delete {what}: {reason}")]
    Delete { what: String, reason: String },
    #[error("CRD {name} was not established within {seconds} s")]
    CrdNotEstablished { name: String, seconds: u64 },
    #[error("cannot refresh API discovery: {0}")]
    Discovery(String),
    #[error(
        "CRD {name} is established, but the API server still does not serve its kind after {seconds:.1} s of discovery; check the API server's log, then apply again"
    )]
    KindNotServed { name: String, seconds: f64 },
}

/// Carries out `plan`. Per-object failures are in the report; an `Err` means nothing (or
/// nothing more) could be done safely.
pub async fn apply(
    client: &kube::Client,
    resolver: &Resolver,
    plan: Plan,
    options: &ApplyOptions,
) -> Result<ApplyReport, Error> {
    schedule::check(&plan, options)?;
    let mut run = execute::Run::new(client, resolver, &plan, options);
    // The parent lives in the application's namespace: when this set creates that
    // namespace, it is created first, then the parent, then everything else.
    // (Deleting the set, nothing is created: no namespace either.)
    let applied_first = match options.delete_set {
        true => None,
        false => match run.first_namespace().await? {
            ControlFlow::Continue(applied_first) => applied_first,
            ControlFlow::Break(()) => return Ok(run.report),
        },
    };
    // Each step runs or not as the steps before it went (see `Step::when`): a failed
    // apply or wave stops the stages and pruning, a failed prune the narrowing, and an
    // error (kept in `run`) everything but the SyncFail hooks and the record of them.
    for step in schedule::schedule(&plan, options, applied_first) {
        if !step.when().holds(&run.outcome()) {
            continue;
        }
        match step {
            Step::Hooks { phase, hooks } => run.hooks(phase, &hooks).await,
            Step::Widen => run.widen().await,
            Step::BeginApplying(count) => options.progress.begin("applying", count),
            Step::Apply { changes, .. } => run.apply(&changes).await,
            Step::SettleCrds(crds) => run.settle_crds(&crds).await,
            Step::WaitWave { wave, members } => run.wait_wave(wave, &members).await,
            Step::FinishApplying | Step::FinishPruning => options.progress.finish(),
            Step::RecordUnchanged(changes) => run.record_unchanged(&changes),
            Step::BeginPruning(count) => options.progress.begin("pruning", count),
            Step::Prune { changes, .. } => run.prune(&changes).await,
            Step::Narrow => run.narrow().await,
            Step::WaitForPostSync(members) => run.wait_for_post_sync(&members).await,
            // Recorded even when the sync stopped on an error: its hooks did not all run.
            Step::RecordHooks => run.record_hooks().await,
            Step::WaitHealthy { members, timeout } => run.wait_healthy(&members, timeout).await,
            Step::MarkDeleting => run.mark_deleting().await,
            Step::RemoveSet => run.remove_set().await,
        }
    }
    run.finish()
}
