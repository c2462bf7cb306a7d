//! Pure: the order an apply works in, as plain data. [`schedule`] turns a [`Plan`] into the
//! [`Step`]s that [`super::apply`] walks (hooks, the inventory, stages and waves, prune,
//! health waits), and [`When`] says which steps still run once something failed.

use std::collections::BTreeSet;
use std::time::Duration;

use super::{ApplyOptions, Error};
use crate::plan::hooks::Phase;
use crate::plan::{Action, Change, Plan, Stage};

/// One thing an apply does. Changes and hooks are named by their index in `plan.changes`
/// and `plan.hooks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Run these hooks of `phase`, in run order.
    Hooks {
        phase: Phase,
        hooks: Vec<usize>,
    },
    /// Widen the inventory on the parent before anything is created (crash safety).
    Widen,
    /// The "applying" progress begins, over this many objects.
    BeginApplying(usize),
    /// Server-side apply one wave of one stage.
    Apply {
        stage: Stage,
        wave: i64,
        changes: Vec<usize>,
    },
    /// Wait until the CRDs just applied are established and their kinds served.
    SettleCrds(Vec<usize>),
    /// Wait until a wave's members are Healthy before the next wave.
    WaitWave {
        wave: i64,
        members: Vec<usize>,
    },
    FinishApplying,
    /// Report the unchanged objects (they get no request).
    RecordUnchanged(Vec<usize>),
    /// The "pruning" progress begins, over this many objects.
    BeginPruning(usize),
    /// Delete one wave of one stage's members that are no longer desired.
    Prune {
        stage: Stage,
        wave: i64,
        changes: Vec<usize>,
    },
    FinishPruning,
    /// Narrow the inventory on the parent, once the deletes are done.
    Narrow,
    /// Wait until every desired object is Healthy before the PostSync hooks.
    WaitForPostSync(Vec<usize>),
    /// Record on the parent whether this sync's hooks all ran to the end.
    RecordHooks,
    /// `--wait`: every desired object Healthy, up to `timeout`.
    WaitHealthy {
        members: Vec<usize>,
        timeout: Duration,
    },
    /// Deleting the set: record on the parent that its PreDelete hooks ran.
    MarkDeleting,
    /// Deleting the set: delete the hooks' objects left from earlier syncs, then the parent.
    RemoveSet,
}

/// How an apply has gone so far: what decides whether a step still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// A PreSync hook failed, or an error ended the sync: nothing more is written.
    pub stopped: bool,
    /// Every apply, Sync hook and wave so far succeeded.
    pub applied_all: bool,
    /// Every prune so far succeeded.
    pub pruned_all: bool,
    /// The report says why the sync stopped (a hook or a wave).
    pub failure: bool,
}

impl Default for Outcome {
    fn default() -> Self {
        Self {
            stopped: false,
            applied_all: true,
            pruned_all: true,
            failure: false,
        }
    }
}

/// When a step runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Always,
    /// Unless the sync stopped.
    Going,
    /// Unless the sync stopped or an apply, a Sync hook or a wave failed.
    Applied,
    /// Only while everything succeeded, prunes too.
    Succeeded,
    /// Only when something failed.
    Failed,
}

impl When {
    pub fn holds(self, o: &Outcome) -> bool {
        match self {
            When::Always => true,
            When::Going => !o.stopped,
            When::Applied => !o.stopped && o.applied_all,
            When::Succeeded => !o.stopped && o.applied_all && o.pruned_all && !o.failure,
            When::Failed => o.stopped || o.failure || !o.applied_all || !o.pruned_all,
        }
    }
}

impl Step {
    /// When this step runs, given how the apply went before it.
    pub fn when(&self) -> When {
        match self {
            Step::Hooks { phase, .. } => match phase {
                Phase::PreSync => When::Always,
                Phase::Sync => When::Applied,
                Phase::PostSync => When::Succeeded,
                Phase::SyncFail => When::Failed,
                Phase::PreDelete => When::Always,
                Phase::PostDelete => When::Succeeded,
            },
            Step::Widen | Step::BeginApplying(_) | Step::FinishApplying => When::Going,
            Step::RecordUnchanged(_) => When::Going,
            Step::Apply { .. } | Step::SettleCrds(_) | Step::WaitWave { .. } => When::Applied,
            Step::BeginPruning(_) | Step::FinishPruning => When::Applied,
            Step::Prune { .. } | Step::Narrow | Step::WaitForPostSync(_) => When::Succeeded,
            Step::RecordHooks => When::Always,
            Step::WaitHealthy { .. } => When::Applied,
            Step::MarkDeleting => When::Going,
            Step::RemoveSet => When::Succeeded,
        }
    }
}

/// The stages in the order they are applied (and pruned, reversed).
const STAGES: [Stage; 4] = [
    Stage::Crds,
    Stage::Namespaces,
    Stage::ClusterScoped,
    Stage::Namespaced,
];

/// Refuses a plan that must write nothing: an empty render that would prune everything,
/// or conflicts that are not to be forced.
pub fn check(plan: &Plan, options: &ApplyOptions) -> Result<(), Error> {
    let prunes = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Prune)
        .count();
    if plan.desired_count() == 0 && prunes > 0 && options.prune && !options.allow_empty {
        return Err(Error::EmptyRender { members: prunes });
    }
    let conflicts: Vec<&Change> = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Conflict)
        .collect();
    if !conflicts.is_empty() && !options.force_conflicts {
        let details = conflicts
            .iter()
            .map(|c| format!("  {}: {}", c.key, c.conflicts.join("; ")))
            .collect::<Vec<_>>()
            .join("\n");
        return Err(Error::Conflicts {
            count: conflicts.len(),
            details,
        });
    }
    Ok(())
}

/// What the parent's namespace needs before anything else, when the set has no parent yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstNamespace {
    /// It exists (or cannot be read): nothing.
    Ready,
    /// Create it (`CreateNamespace`), not as a member.
    Create,
    /// Apply this member (the namespace itself) before the parent and everything else.
    Apply(usize),
}

/// Whether the parent's namespace, `missing` or not, is created or applied first.
pub fn first_namespace(plan: &Plan, missing: bool) -> Result<FirstNamespace, Error> {
    let in_set = pending(plan, None).into_iter().find(|&i| {
        let key = &plan.changes[i].key;
        key.group.is_empty() && key.kind == "Namespace" && key.name == plan.options.namespace
    });
    if missing && plan.creates_namespace && in_set.is_none() {
        Ok(FirstNamespace::Create)
    } else if missing {
        let member = in_set.ok_or_else(|| Error::Parent {
            name: plan.applyset.parent_name(),
            reason: format!(
                "namespace {} does not exist and is not part of this application; create it or pick another with -n",
                plan.options.namespace
            ),
        })?;
        Ok(FirstNamespace::Apply(member))
    } else {
        Ok(FirstNamespace::Ready)
    }
}

/// The steps of applying `plan`, in order; `applied_first` is the namespace member already
/// applied before them (see [`first_namespace`]).
pub fn schedule(plan: &Plan, options: &ApplyOptions, applied_first: Option<usize>) -> Vec<Step> {
    if options.delete_set {
        return deletion(plan);
    }
    // Hooks run with a sync that changes something (a no-op runs none).
    let run_hooks = options.run_hooks && plan.has_changes();
    let hooks_of = |phase| {
        if run_hooks {
            hooks_of(plan, phase)
        } else {
            Vec::new()
        }
    };
    let pending = pending(plan, applied_first);
    let desired = indexes(plan, |c| c.action != Action::Prune);
    let mut steps = Vec::new();
    // PreSync hooks, before any member is written: a failure stops the sync.
    push_hooks(&mut steps, Phase::PreSync, hooks_of(Phase::PreSync));
    steps.push(Step::Widen);
    if !pending.is_empty() {
        steps.push(Step::BeginApplying(pending.len()));
    }
    stages(plan, &pending, &hooks_of(Phase::Sync), &mut steps);
    if !pending.is_empty() {
        steps.push(Step::FinishApplying);
    }
    steps.push(Step::RecordUnchanged(indexes(plan, |c| {
        c.action == Action::Unchanged
    })));
    if options.prune {
        prunes(plan, &mut steps);
    }
    // PostSync hooks, once every object is Healthy.
    let post_sync = hooks_of(Phase::PostSync);
    if !post_sync.is_empty() {
        steps.push(Step::WaitForPostSync(desired.clone()));
        push_hooks(&mut steps, Phase::PostSync, post_sync);
    }
    push_hooks(&mut steps, Phase::SyncFail, hooks_of(Phase::SyncFail));
    if run_hooks {
        steps.push(Step::RecordHooks);
    }
    if let Some(timeout) = options.wait {
        steps.push(Step::WaitHealthy {
            members: desired,
            timeout,
        });
    }
    steps
}

/// Stage by stage, and within a stage wave by wave: later stages wait for earlier ones, and
/// a wave waits until the waves before it are Healthy. Sync hooks run with the namespaced
/// objects of their wave.
fn stages(plan: &Plan, pending: &[usize], sync_hooks: &[usize], steps: &mut Vec<Step>) {
    for stage in STAGES {
        let in_stage = |i: &&usize| plan.changes[**i].stage == stage;
        let mut waves: BTreeSet<i64> = pending
            .iter()
            .filter(in_stage)
            .map(|&i| plan.changes[i].wave)
            .collect();
        if stage == Stage::Namespaced {
            waves.extend(sync_hooks.iter().map(|&h| plan.hooks[h].order));
        }
        let last_wave = waves.last().copied();
        for wave in waves {
            let batch: Vec<usize> = pending
                .iter()
                .filter(in_stage)
                .copied()
                .filter(|&i| plan.changes[i].wave == wave)
                .collect();
            if !batch.is_empty() {
                steps.push(Step::Apply {
                    stage,
                    wave,
                    changes: batch.clone(),
                });
                if stage == Stage::Crds {
                    steps.push(Step::SettleCrds(batch));
                }
            }
            let in_wave: Vec<usize> = sync_hooks
                .iter()
                .copied()
                .filter(|&h| stage == Stage::Namespaced && plan.hooks[h].order == wave)
                .collect();
            push_hooks(steps, Phase::Sync, in_wave);
            if Some(wave) != last_wave {
                let members = indexes(plan, |c| {
                    c.stage == stage && c.wave == wave && c.action != Action::Prune
                });
                steps.push(Step::WaitWave { wave, members });
            }
        }
    }
}

/// Prune only after every apply succeeded, in reverse stage order, and within a stage from
/// the highest wave down; then narrow the inventory.
fn prunes(plan: &Plan, steps: &mut Vec<Step>) {
    let prunes = indexes(plan, |c| c.action == Action::Prune);
    if !prunes.is_empty() {
        steps.push(Step::BeginPruning(prunes.len()));
    }
    waves_in_reverse(plan, &prunes, steps);
    if !prunes.is_empty() {
        steps.push(Step::FinishPruning);
    }
    steps.push(Step::Narrow);
}

/// The prunes of `prunes`, in reverse stage order, and within a stage from the highest
/// wave down.
fn waves_in_reverse(plan: &Plan, prunes: &[usize], steps: &mut Vec<Step>) {
    for stage in STAGES.into_iter().rev() {
        let in_stage: Vec<usize> = prunes
            .iter()
            .copied()
            .filter(|&i| plan.changes[i].stage == stage)
            .collect();
        let waves: BTreeSet<i64> = in_stage.iter().map(|&i| plan.changes[i].wave).collect();
        for wave in waves.into_iter().rev() {
            let changes = in_stage
                .iter()
                .copied()
                .filter(|&i| plan.changes[i].wave == wave)
                .collect();
            steps.push(Step::Prune {
                stage,
                wave,
                changes,
            });
        }
    }
}

/// Deleting the set: PreDelete hooks (a failure keeps everything), the record that they
/// ran (a retry does not run them again), every member pruned in reverse, PostDelete
/// hooks, then what is left of the set. No parent: nothing was ever applied, or an
/// earlier deletion finished; nothing to do. The inventory is not narrowed: the set's
/// own namespace may be among what is deleted, and the parent goes last anyway.
fn deletion(plan: &Plan) -> Vec<Step> {
    let mut steps = Vec::new();
    if !plan.parent_exists {
        return steps;
    }
    if !plan.applyset.deleting {
        let pre_delete = hooks_of(plan, Phase::PreDelete);
        push_hooks(&mut steps, Phase::PreDelete, pre_delete);
        steps.push(Step::MarkDeleting);
    }
    let prunes = indexes(plan, |c| c.action == Action::Prune);
    if !prunes.is_empty() {
        steps.push(Step::BeginPruning(prunes.len()));
        waves_in_reverse(plan, &prunes, &mut steps);
        steps.push(Step::FinishPruning);
    }
    let post_delete = hooks_of(plan, Phase::PostDelete);
    push_hooks(&mut steps, Phase::PostDelete, post_delete);
    steps.push(Step::RemoveSet);
    steps
}

fn push_hooks(steps: &mut Vec<Step>, phase: Phase, hooks: Vec<usize>) {
    if !hooks.is_empty() {
        steps.push(Step::Hooks { phase, hooks });
    }
}

/// The hooks of `phase`, in run order.
fn hooks_of(plan: &Plan, phase: Phase) -> Vec<usize> {
    let mut hooks: Vec<usize> = (0..plan.hooks.len())
        .filter(|&h| plan.hooks[h].phases.contains(&phase))
        .collect();
    hooks.sort_by(|&a, &b| {
        let (a, b) = (&plan.hooks[a], &plan.hooks[b]);
        (a.run_order(), &a.key).cmp(&(b.run_order(), &b.key))
    });
    hooks
}

/// The changes that are written (created, updated, or forced over a conflict), but the
/// one applied first.
fn pending(plan: &Plan, applied_first: Option<usize>) -> Vec<usize> {
    indexes(plan, |c| {
        matches!(c.action, Action::Create | Action::Update | Action::Conflict)
    })
    .into_iter()
    .filter(|&i| Some(i) != applied_first)
    .collect()
}

fn indexes(plan: &Plan, keep: impl Fn(&Change) -> bool) -> Vec<usize> {
    (0..plan.changes.len())
        .filter(|&i| keep(&plan.changes[i]))
        .collect()
}

#[cfg(test)]
mod tests;
