//! Unit tests of the schedule, on hand-made plans.

use super::*;
use crate::inventory::ApplySet;
use crate::object::{ObjectKey, Origin};
use crate::plan::hooks::DeletePolicy;
use crate::plan::{Hook, PlanOptions};

fn key(group: &str, kind: &str, namespace: &str, name: &str) -> ObjectKey {
    ObjectKey {
        group: group.into(),
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

fn change(kind: &str, name: &str, action: Action, stage: Stage, wave: i64) -> Change {
    let (group, namespace) = match stage {
        Stage::Crds => ("apiextensions.k8s.io", ""),
        Stage::Namespaces | Stage::ClusterScoped => ("", ""),
        Stage::Namespaced => ("", "shop"),
    };
    Change {
        key: key(group, kind, namespace, name),
        action,
        origin: None,
        diff: String::new(),
        conflicts: Vec::new(),
        stage,
        desired: None,
        live: None,
        kind: None,
        takes_over_from: Vec::new(),
        wave,
        reclaims: Vec::new(),
        ignored: Vec::new(),
        force: false,
        recreate: None,
    }
}

/// A namespaced object of `wave`.
fn object(name: &str, action: Action, wave: i64) -> Change {
    change("ConfigMap", name, action, Stage::Namespaced, wave)
}

fn hook(name: &str, phase: Phase, order: i64) -> Hook {
    Hook {
        key: key("batch", "Job", "shop", name),
        origin: Origin {
            file: "hooks.yaml".into(),
            line: 1,
            document: 0,
            item: None,
        },
        phases: vec![phase],
        order,
        delete_policy: DeletePolicy::default(),
        generate_name: false,
        manifest: serde_json::Value::Null,
    }
}

fn plan(changes: Vec<Change>, hooks: Vec<Hook>) -> Plan {
    Plan {
        options: PlanOptions::new("web", "shop"),
        applyset: ApplySet::new("web", "shop"),
        parent_exists: true,
        changes,
        hooks,
        skipped: Vec::new(),
        refused: Vec::new(),
        creates_namespace: false,
    }
}

fn apply(stage: Stage, wave: i64, changes: &[usize]) -> Step {
    Step::Apply {
        stage,
        wave,
        changes: changes.to_vec(),
    }
}

fn hooks(phase: Phase, hooks: &[usize]) -> Step {
    Step::Hooks {
        phase,
        hooks: hooks.to_vec(),
    }
}

#[test]
fn plain_objects_are_applied_in_one_batch_between_widening_and_narrowing_the_inventory() {
    let plan = plan(
        vec![
            object("a", Action::Create, 0),
            object("b", Action::Unchanged, 0),
            object("c", Action::Update, 0),
            object("d", Action::Conflict, 0),
        ],
        vec![],
    );
    assert_eq!(
        schedule(&plan, &ApplyOptions::default(), None),
        vec![
            Step::Widen,
            Step::BeginApplying(3),
            apply(Stage::Namespaced, 0, &[0, 2, 3]),
            Step::FinishApplying,
            Step::RecordUnchanged(vec![1]),
            Step::Narrow,
            Step::RecordHooks,
        ]
    );
}

#[test]
fn crds_settle_before_namespaces_cluster_scoped_objects_and_their_custom_resources() {
    let plan = plan(
        vec![
            object("widget", Action::Create, 0),
            change(
                "ClusterRole",
                "reader",
                Action::Create,
                Stage::ClusterScoped,
                0,
            ),
            change("Namespace", "shop", Action::Create, Stage::Namespaces, 0),
            change(
                "CustomResourceDefinition",
                "widgets.example.com",
                Action::Create,
                Stage::Crds,
                0,
            ),
        ],
        vec![],
    );
    let options = ApplyOptions {
        prune: false,
        run_hooks: false,
        ..Default::default()
    };
    assert_eq!(
        schedule(&plan, &options, None),
        vec![
            Step::Widen,
            Step::BeginApplying(4),
            apply(Stage::Crds, 0, &[3]),
            Step::SettleCrds(vec![3]),
            apply(Stage::Namespaces, 0, &[2]),
            apply(Stage::ClusterScoped, 0, &[1]),
            apply(Stage::Namespaced, 0, &[0]),
            Step::FinishApplying,
            Step::RecordUnchanged(vec![]),
        ]
    );
}

#[test]
fn waves_go_from_the_lowest_up_and_each_but_the_last_waits_for_all_its_members() {
    let plan = plan(
        vec![
            object("late", Action::Create, 3),
            object("early", Action::Create, -5),
            object("middle", Action::Update, 0),
            object("middle-unchanged", Action::Unchanged, 0),
            object("gone", Action::Prune, 0),
        ],
        vec![],
    );
    let steps = schedule(&plan, &ApplyOptions::default(), None);
    assert_eq!(
        steps[..7],
        [
            Step::Widen,
            Step::BeginApplying(3),
            apply(Stage::Namespaced, -5, &[1]),
            Step::WaitWave {
                wave: -5,
                members: vec![1],
            },
            apply(Stage::Namespaced, 0, &[2]),
            // The unchanged member of the wave is waited for too, the pruned one not.
            Step::WaitWave {
                wave: 0,
                members: vec![2, 3],
            },
            apply(Stage::Namespaced, 3, &[0]),
        ]
    );
    assert_eq!(
        steps[7],
        Step::FinishApplying,
        "no wait after the last wave"
    );
}

#[test]
fn hooks_run_pre_sync_first_sync_in_their_wave_post_sync_after_health_and_sync_fail_last() {
    let plan = plan(
        vec![
            object("a", Action::Create, 0),
            object("b", Action::Create, 2),
        ],
        vec![
            hook("fail", Phase::SyncFail, 0),
            hook("post", Phase::PostSync, 0),
            hook("migrate-2", Phase::PreSync, 5),
            hook("migrate-1", Phase::PreSync, -1),
            hook("between", Phase::Sync, 1),
            hook("with-a", Phase::Sync, 0),
        ],
    );
    let options = ApplyOptions {
        wait: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    assert_eq!(
        schedule(&plan, &options, None),
        vec![
            hooks(Phase::PreSync, &[3, 2]),
            Step::Widen,
            Step::BeginApplying(2),
            apply(Stage::Namespaced, 0, &[0]),
            hooks(Phase::Sync, &[5]),
            Step::WaitWave {
                wave: 0,
                members: vec![0],
            },
            // A wave of Sync hooks alone.
            hooks(Phase::Sync, &[4]),
            Step::WaitWave {
                wave: 1,
                members: vec![],
            },
            apply(Stage::Namespaced, 2, &[1]),
            Step::FinishApplying,
            Step::RecordUnchanged(vec![]),
            Step::Narrow,
            Step::WaitForPostSync(vec![0, 1]),
            hooks(Phase::PostSync, &[1]),
            hooks(Phase::SyncFail, &[0]),
            Step::RecordHooks,
            Step::WaitHealthy {
                members: vec![0, 1],
                timeout: Duration::from_secs(30),
            },
        ]
    );
}

#[test]
fn a_sync_that_changes_nothing_or_is_told_not_to_runs_no_hooks() {
    let quiet = plan(
        vec![object("a", Action::Unchanged, 0)],
        vec![hook("migrate", Phase::PreSync, 0)],
    );
    assert_eq!(
        schedule(&quiet, &ApplyOptions::default(), None),
        vec![Step::Widen, Step::RecordUnchanged(vec![0]), Step::Narrow]
    );
    let changing = plan(
        vec![object("a", Action::Create, 0)],
        vec![hook("migrate", Phase::PreSync, 0)],
    );
    let no_hooks = ApplyOptions {
        run_hooks: false,
        ..Default::default()
    };
    let steps = schedule(&changing, &no_hooks, None);
    assert!(!steps.iter().any(|s| matches!(s, Step::Hooks { .. })));
    assert!(!steps.contains(&Step::RecordHooks));
}

#[test]
fn prune_comes_after_every_apply_in_reverse_stage_and_wave_order_then_narrows() {
    let plan = plan(
        vec![
            change("Namespace", "old", Action::Prune, Stage::Namespaces, 0),
            object("low", Action::Prune, -1),
            object("kept", Action::Update, 0),
            object("high", Action::Prune, 4),
            change(
                "CustomResourceDefinition",
                "old.example.com",
                Action::Prune,
                Stage::Crds,
                0,
            ),
            object("high-too", Action::Prune, 4),
        ],
        vec![],
    );
    let prune = |stage, wave, changes: &[usize]| Step::Prune {
        stage,
        wave,
        changes: changes.to_vec(),
    };
    let steps = schedule(&plan, &ApplyOptions::default(), None);
    assert_eq!(
        steps[3..],
        [
            Step::FinishApplying,
            Step::RecordUnchanged(vec![]),
            Step::BeginPruning(5),
            prune(Stage::Namespaced, 4, &[3, 5]),
            prune(Stage::Namespaced, -1, &[1]),
            prune(Stage::Namespaces, 0, &[0]),
            prune(Stage::Crds, 0, &[4]),
            Step::FinishPruning,
            Step::Narrow,
            Step::RecordHooks,
        ]
    );
    let keep = ApplyOptions {
        prune: false,
        ..Default::default()
    };
    let steps = schedule(&plan, &keep, None);
    assert!(
        !steps
            .iter()
            .any(|s| matches!(s, Step::Prune { .. } | Step::Narrow))
    );
}

#[test]
fn an_empty_plan_only_records_the_inventory() {
    let empty = plan(vec![], vec![]);
    assert_eq!(
        schedule(&empty, &ApplyOptions::default(), None),
        vec![Step::Widen, Step::RecordUnchanged(vec![]), Step::Narrow]
    );
    let waiting = ApplyOptions {
        prune: false,
        wait: Some(Duration::from_secs(5)),
        ..Default::default()
    };
    assert_eq!(
        schedule(&empty, &waiting, None),
        vec![
            Step::Widen,
            Step::RecordUnchanged(vec![]),
            Step::WaitHealthy {
                members: vec![],
                timeout: Duration::from_secs(5),
            },
        ]
    );
}

#[test]
fn the_namespace_applied_first_leaves_its_stage_and_its_wave() {
    let mut plan = plan(
        vec![
            change("Namespace", "shop", Action::Create, Stage::Namespaces, -1),
            change("Namespace", "other", Action::Create, Stage::Namespaces, 0),
        ],
        vec![],
    );
    plan.parent_exists = false;
    assert_eq!(
        first_namespace(&plan, true).expect("in the set"),
        FirstNamespace::Apply(0)
    );
    assert_eq!(
        first_namespace(&plan, false).expect("exists"),
        FirstNamespace::Ready
    );
    let steps = schedule(&plan, &ApplyOptions::default(), Some(0));
    assert_eq!(
        steps[..3],
        [
            Step::Widen,
            Step::BeginApplying(1),
            // Wave -1 is gone with it: nothing waits for it.
            apply(Stage::Namespaces, 0, &[1]),
        ]
    );
}

#[test]
fn a_missing_namespace_outside_the_set_is_created_or_refused() {
    let mut plan = plan(vec![object("a", Action::Create, 0)], vec![]);
    plan.parent_exists = false;
    let refused = first_namespace(&plan, true).expect_err("not in the set");
    assert!(
        refused
            .to_string()
            .contains("namespace shop does not exist and is not part of this application"),
        "{refused}"
    );
    plan.creates_namespace = true;
    assert_eq!(
        first_namespace(&plan, true).expect("created"),
        FirstNamespace::Create
    );
}

#[test]
fn an_empty_render_or_a_conflict_writes_nothing_unless_allowed() {
    let emptied = plan(vec![object("a", Action::Prune, 0)], vec![]);
    assert!(matches!(
        check(&emptied, &ApplyOptions::default()),
        Err(Error::EmptyRender { members: 1 })
    ));
    let allowed = ApplyOptions {
        allow_empty: true,
        ..Default::default()
    };
    assert!(check(&emptied, &allowed).is_ok());

    let mut conflict = object("a", Action::Conflict, 0);
    conflict.conflicts = vec![".data.x (kubectl)".into()];
    let conflicting = plan(vec![conflict], vec![]);
    match check(&conflicting, &ApplyOptions::default()) {
        Err(Error::Conflicts { count: 1, details }) => {
            assert_eq!(details, "  ConfigMap/a -n shop: .data.x (kubectl)")
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let forced = ApplyOptions {
        force_conflicts: true,
        ..Default::default()
    };
    assert!(check(&conflicting, &forced).is_ok());
}

/// The steps that run when the step at `fails` fails the way `fail` says.
fn walk(steps: &[Step], fails: usize, fail: impl Fn(&mut Outcome)) -> Vec<Step> {
    let mut outcome = Outcome::default();
    let mut ran = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        if step.when().holds(&outcome) {
            ran.push(step.clone());
            if i == fails {
                fail(&mut outcome);
            }
        }
    }
    ran
}

#[test]
fn a_failure_skips_what_today_s_apply_skips_and_runs_the_sync_fail_hooks() {
    let plan = plan(
        vec![
            object("a", Action::Create, 0),
            object("b", Action::Create, 1),
            object("gone", Action::Prune, 0),
        ],
        vec![
            hook("pre", Phase::PreSync, 0),
            hook("post", Phase::PostSync, 0),
            hook("fail", Phase::SyncFail, 0),
        ],
    );
    let options = ApplyOptions {
        wait: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let steps = schedule(&plan, &options, None);
    let apply_a = apply(Stage::Namespaced, 0, &[0]);
    let prune_gone = Step::Prune {
        stage: Stage::Namespaced,
        wave: 0,
        changes: vec![2],
    };
    let sync_fail = hooks(Phase::SyncFail, &[2]);
    let at = |step: &Step| steps.iter().position(|s| s == step).expect("scheduled");
    // The first wave fails: no later wave, no prune, no PostSync, no --wait.
    assert_eq!(
        walk(&steps, at(&apply_a), |o| o.applied_all = false),
        [
            hooks(Phase::PreSync, &[0]),
            Step::Widen,
            Step::BeginApplying(2),
            apply_a,
            Step::FinishApplying,
            Step::RecordUnchanged(vec![]),
            sync_fail.clone(),
            Step::RecordHooks,
        ]
    );
    // A PreSync hook fails: only SyncFail and the record follow.
    assert_eq!(
        walk(&steps, 0, |o| {
            o.stopped = true;
            o.failure = true;
        }),
        [
            hooks(Phase::PreSync, &[0]),
            sync_fail.clone(),
            Step::RecordHooks
        ]
    );
    // A prune fails: no narrowing, no PostSync; SyncFail, the record and --wait still run.
    let ran = walk(&steps, at(&prune_gone), |o| o.pruned_all = false);
    assert_eq!(
        ran[ran.len() - 5..],
        [
            prune_gone,
            Step::FinishPruning,
            sync_fail.clone(),
            Step::RecordHooks,
            Step::WaitHealthy {
                members: vec![0, 1],
                timeout: Duration::from_secs(1),
            },
        ]
    );
    // An error (the parent cannot be written): nothing but SyncFail and the record.
    assert_eq!(
        walk(&steps, at(&Step::Widen), |o| o.stopped = true),
        [
            hooks(Phase::PreSync, &[0]),
            Step::Widen,
            sync_fail,
            Step::RecordHooks
        ]
    );
}

#[test]
fn deleting_a_set_runs_pre_delete_hooks_prunes_in_reverse_then_post_delete_hooks() {
    let mut plan = plan(
        vec![
            object("low", Action::Prune, 0),
            change("Namespace", "shop", Action::Prune, Stage::Namespaces, 0),
            object("high", Action::Prune, 2),
        ],
        vec![
            hook("before", Phase::PreDelete, 0),
            hook("after", Phase::PostDelete, 0),
            hook("migrate", Phase::PreSync, 0),
        ],
    );
    let deleting = ApplyOptions {
        delete_set: true,
        allow_empty: true,
        ..Default::default()
    };
    let prune = |stage, wave, changes: &[usize]| Step::Prune {
        stage,
        wave,
        changes: changes.to_vec(),
    };
    let steps = schedule(&plan, &deleting, None);
    assert_eq!(
        steps,
        [
            hooks(Phase::PreDelete, &[0]),
            Step::MarkDeleting,
            Step::BeginPruning(3),
            prune(Stage::Namespaced, 2, &[2]),
            prune(Stage::Namespaced, 0, &[0]),
            prune(Stage::Namespaces, 0, &[1]),
            Step::FinishPruning,
            hooks(Phase::PostDelete, &[1]),
            Step::RemoveSet,
        ]
    );
    // A PreDelete hook fails: nothing is deleted.
    let ran = walk(&steps, 0, |o| {
        o.stopped = true;
        o.failure = true;
    });
    assert_eq!(ran, [hooks(Phase::PreDelete, &[0])]);
    // A PostDelete hook fails: the set's record stays (the deletion is tried again).
    let post = steps.len() - 2;
    let ran = walk(&steps, post, |o| o.failure = true);
    assert!(!ran.contains(&Step::RemoveSet), "{ran:?}");
    // Tried again once its PreDelete hooks ran (the parent says so): they do not run twice.
    plan.applyset.deleting = true;
    let again = schedule(&plan, &deleting, None);
    assert!(!again.contains(&hooks(Phase::PreDelete, &[0])), "{again:?}");
    assert!(again.contains(&Step::RemoveSet));
    // No parent: nothing was applied, or the deletion finished; nothing to do.
    plan.parent_exists = false;
    assert_eq!(schedule(&plan, &deleting, None), []);
    plan.parent_exists = true;
    // A sync never runs deletion hooks.
    let sync = schedule(&plan, &ApplyOptions::default(), None);
    assert!(
        !sync
            .iter()
            .any(|s| matches!(s, Step::Hooks { phase, .. } if phase.on_delete())),
        "{sync:?}"
    );
}
