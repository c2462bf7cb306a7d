//! The status decisions' tests: a success, a drift correction, a change meanwhile, a
//! sync left OutOfSync, and failures up to the retry limit.

use super::*;

const NOW: &str = "2026-12-05T10:00:00Z";
const LATER: &str = "2026-12-05T11:00:00Z";

fn app(spec: serde_json::Value, status: Option<serde_json::Value>) -> Application {
    let mut app = serde_json::json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "Application",
        "metadata": {"name": "web", "namespace": "shop", "generation": 3},
        "spec": {
            "source": {"repoURL": "https://git.example.com/deploy.git", "path": "web"},
            "destination": {"namespace": "shop"},
        }
    });
    for (key, value) in spec.as_object().expect("an object") {
        app["spec"][key] = value.clone();
    }
    if let Some(status) = status {
        app["status"] = status;
    }
    serde_json::from_value(app).expect("an Application")
}

fn revision(commit: &str) -> Revision {
    Revision {
        commit: commit.into(),
        from_ref: Some("refs/heads/main".into()),
        url: "https://git.example.com/deploy.git".into(),
        summary: None,
        author: None,
    }
}

fn succeeded(sync: &str, applied: bool, health: HealthStatus) -> Succeeded {
    Succeeded {
        revision: revision("0123456789abcdef0123"),
        sync: SyncStatus {
            status: sync.into(),
            ..Default::default()
        },
        health,
        applied: applied.then(|| HistoryEntry {
            revision: "0123456789abcdef0123".into(),
            message: Some("1 created".into()),
            ..Default::default()
        }),
        apply_set: ApplySetReference::default(),
        drifted_meanwhile: false,
    }
}

fn condition<'a>(status: &'a ApplicationStatus, kind: &str) -> (&'a str, &'a str) {
    let c = status
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .expect("the condition is set");
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn a_sync_that_applied_says_synced_resets_the_failures_and_tells_once() {
    let app = app(
        serde_json::json!({}),
        Some(serde_json::json!({"failures": 2})),
    );
    let after = on_success(
        &app,
        app.status.clone().expect("status"),
        succeeded("Synced", true, HealthStatus::Healthy),
        false,
        NOW,
    );
    assert!(after.synced);
    assert_eq!(after.status.failures, 0);
    assert_eq!(condition(&after.status, "Ready"), ("True", "Succeeded"));
    assert_eq!(
        condition(&after.status, "Reconciling"),
        ("False", "Succeeded")
    );
    assert_eq!(condition(&after.status, "Stalled"), ("False", "Succeeded"));
    assert_eq!(
        after.status.last_applied_revision.as_deref(),
        Some("0123456789abcdef0123")
    );
    assert_eq!(after.status.history.len(), 1);
    assert_eq!(after.summary, "1 created");
    assert_eq!(
        after.notices,
        vec![(notify::Event::SyncSucceeded, "1 created".to_string())]
    );
    let ready = after
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.message, "revision 0123456789ab applied; Healthy");
    assert_eq!(ready.last_transition_time, NOW);
}

#[test]
fn the_same_revision_applied_again_is_a_drift_correction_unless_a_sync_was_asked_for() {
    let app = app(
        serde_json::json!({}),
        Some(serde_json::json!({
            "lastAppliedRevision": "0123456789abcdef0123",
            "observedGeneration": 3
        })),
    );
    let status = app.status.clone().expect("status");
    let corrected = on_success(
        &app,
        status.clone(),
        succeeded("Synced", true, HealthStatus::Healthy),
        false,
        NOW,
    );
    assert_eq!(corrected.notices[0].0, notify::Event::DriftCorrected);
    let asked = on_success(
        &app,
        status,
        succeeded("Synced", true, HealthStatus::Healthy),
        true,
        NOW,
    );
    assert_eq!(asked.notices[0].0, notify::Event::SyncSucceeded);
}

#[test]
fn a_member_changed_during_the_sync_is_never_synced() {
    let app = app(serde_json::json!({}), None);
    let mut outcome = succeeded("Synced", true, HealthStatus::Healthy);
    outcome.drifted_meanwhile = true;
    let after = on_success(&app, ApplicationStatus::default(), outcome, false, NOW);
    assert!(!after.synced);
    assert_eq!(
        after.status.sync.as_ref().expect("sync").status,
        "OutOfSync"
    );
    assert_eq!(
        condition(&after.status, "Ready"),
        ("False", "ChangedMeanwhile")
    );
    assert_eq!(
        condition(&after.status, "Reconciling"),
        ("True", "ChangedMeanwhile")
    );
    // What was applied is still the revision applied.
    assert!(after.status.last_applied_revision.is_some());
}

#[test]
fn out_of_sync_without_self_heal_says_how_to_apply_and_degraded_health_is_told_once() {
    let manual = app(
        serde_json::json!({"syncPolicy": {"automated": false}}),
        None,
    );
    let after = on_success(
        &manual,
        ApplicationStatus::default(),
        succeeded("OutOfSync", false, HealthStatus::Degraded),
        false,
        NOW,
    );
    assert!(!after.synced);
    assert_eq!(condition(&after.status, "Ready"), ("False", "OutOfSync"));
    assert!(after.status.last_applied_revision.is_none());
    assert_eq!(after.notices.len(), 1);
    assert_eq!(after.notices[0].0, notify::Event::HealthDegraded);
    let ready = &after.status.conditions[0];
    assert!(
        ready.message.contains("automated sync is off"),
        "{}",
        ready.message
    );
    let degraded_before = app(
        serde_json::json!({}),
        Some(serde_json::json!({"health": "Degraded"})),
    );
    let again = on_success(
        &degraded_before,
        ApplicationStatus::default(),
        succeeded("OutOfSync", false, HealthStatus::Degraded),
        false,
        NOW,
    );
    assert!(again.notices.is_empty());
}

#[test]
fn failures_count_up_to_the_retry_limit_and_only_the_first_is_told() {
    let app = app(
        serde_json::json!({"syncPolicy": {"retry": {"limit": 2, "backoff": "10s"}}}),
        Some(serde_json::json!({"sync": {
            "status": "Synced", "revision": "abc", "create": 0, "update": 0, "prune": 0, "unchanged": 1
        }})),
    );
    let first = on_failure(
        &app,
        app.status.clone().expect("status"),
        Failed {
            message: "ConfigMap/a: denied".into(),
            entry: None,
            revision: Some("abc".into()),
            out_of_sync: true,
        },
        NOW,
    );
    assert!(!first.stalled);
    assert_eq!(first.status.failures, 1);
    assert_eq!(
        first.status.sync.as_ref().expect("sync").status,
        "OutOfSync"
    );
    assert_eq!(condition(&first.status, "Ready"), ("False", "Failed"));
    assert_eq!(
        condition(&first.status, "Reconciling"),
        ("True", "Retrying")
    );
    assert_eq!(
        first.tell,
        Some((Some("abc".into()), "ConfigMap/a: denied".into()))
    );
    let second = on_failure(
        &app,
        first.status,
        Failed {
            message: "cannot reach Git".into(),
            entry: None,
            revision: None,
            out_of_sync: false,
        },
        LATER,
    );
    assert!(second.stalled);
    assert!(second.tell.is_none());
    assert_eq!(
        condition(&second.status, "Stalled"),
        ("True", "RetryLimitReached")
    );
    assert_eq!(
        condition(&second.status, "Reconciling"),
        ("False", "Stalled")
    );
    // No revision this time: the sync state of the last compare stays.
    assert_eq!(
        second.status.sync.as_ref().expect("sync").status,
        "OutOfSync"
    );
    // Ready stayed False: its transition time is the first failure's.
    let ready = second
        .status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.last_transition_time, NOW);
    assert_eq!(failure_backoff(&app, 1), Duration::from_secs(10));
    assert_eq!(failure_backoff(&app, 3), Duration::from_secs(40));
    assert_eq!(failure_backoff(&app, 30), Duration::from_secs(300));
}
