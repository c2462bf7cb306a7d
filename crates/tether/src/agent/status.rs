//! What a reconcile writes in an Application's status, decided without I/O: the conditions
//! (Ready, Reconciling, Stalled), sync state, health, history and failure count after a
//! sync that went through ([`on_success`]) or failed ([`on_failure`]), what to tell people
//! about it, and how long to wait before a retry ([`failure_backoff`]). The reconcile
//! writes the result and sends what it says to tell.

use std::time::Duration;

use kube::ResourceExt;

use super::application::{
    self, ApplicationStatus, ApplySetReference, Condition, HistoryEntry, SyncStatus,
};
use super::notify;
use crate::agent::Application;
use crate::duration::parse_duration;
use crate::health::HealthStatus;
use crate::source::git::Revision;

/// The syncs a status keeps, newest first.
pub const HISTORY_LIMIT: usize = 10;

/// Sets condition `kind` to `value` (`True`/`False`) with its reason and message; its
/// transition time changes (to `now`) only when its value does.
pub fn set_condition(
    status: &mut ApplicationStatus,
    app: &Application,
    kind: &str,
    value: &str,
    reason: &str,
    message: &str,
    now: &str,
) {
    let generation = app.metadata.generation;
    match status.conditions.iter_mut().find(|c| c.type_ == kind) {
        Some(existing) => {
            if existing.status != value {
                existing.last_transition_time = now.into();
            }
            existing.status = value.into();
            existing.reason = reason.into();
            existing.message = message.into();
            existing.observed_generation = generation;
        }
        None => status.conditions.push(Condition {
            type_: kind.into(),
            status: value.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: now.into(),
            observed_generation: generation,
        }),
    }
    status.observed_generation = generation;
}

/// The status of a suspended Application: nothing is changed.
pub fn suspended(app: &Application, mut status: ApplicationStatus, now: &str) -> ApplicationStatus {
    let why = "spec.suspend is true: nothing is changed";
    set_condition(
        &mut status,
        app,
        "Reconciling",
        "False",
        "Suspended",
        why,
        now,
    );
    status
}

/// The status of an Application waiting for Application `waiting` (its `dependsOn`).
pub fn waiting_for(
    app: &Application,
    mut status: ApplicationStatus,
    waiting: &str,
    now: &str,
) -> ApplicationStatus {
    let ready = format!("waiting for Application {waiting} to be Ready");
    set_condition(
        &mut status,
        app,
        "Ready",
        "False",
        "DependencyNotReady",
        &ready,
        now,
    );
    let reconciling = format!("waiting for {waiting}");
    set_condition(
        &mut status,
        app,
        "Reconciling",
        "True",
        "DependencyNotReady",
        &reconciling,
        now,
    );
    status
}

/// A sync that went through: what it found and did.
pub struct Succeeded {
    pub revision: Revision,
    pub sync: SyncStatus,
    pub health: HealthStatus,
    /// The history entry of what was applied (none when nothing needed to be).
    pub applied: Option<HistoryEntry>,
    pub apply_set: ApplySetReference,
    /// The watches saw a member change while the sync ran.
    pub drifted_meanwhile: bool,
}

/// The status to write after a sync that went through, and what to tell once it is.
pub struct AfterSuccess {
    pub status: ApplicationStatus,
    /// The cluster holds the revision (Ready is True).
    pub synced: bool,
    /// Notifications to send once the status is written.
    pub notices: Vec<(notify::Event, String)>,
    /// What the sync did, in a sentence (the commit status's description).
    pub summary: String,
}

/// The status after a sync that went through. `sync_requested`: the sync was asked for
/// (`tether sync`), so a change it applied is not a hand edit put back.
pub fn on_success(
    app: &Application,
    mut status: ApplicationStatus,
    outcome: Succeeded,
    sync_requested: bool,
    now: &str,
) -> AfterSuccess {
    let mut sync = outcome.sync;
    let applied_revision = sync.status == "Synced";
    // Applied, but someone changed a member while this sync ran: the cluster may differ
    // from Git now, so this status must not say Synced (the change has queued the next
    // reconcile already).
    let changed_meanwhile = applied_revision && outcome.drifted_meanwhile;
    if changed_meanwhile {
        sync.status = "OutOfSync".into();
    }
    let synced = sync.status == "Synced";
    let previous = app.status.as_ref();
    let commit = &outcome.revision.commit;
    status.failures = 0;
    status.last_sync_request = app
        .annotations()
        .get(application::SYNC_REQUEST_ANNOTATION)
        .cloned();
    status.last_attempted_revision = Some(commit.clone());
    if applied_revision {
        status.last_applied_revision = Some(commit.clone());
        status.revision_info = Some((&outcome.revision).into());
    }
    let mut notices = Vec::new();
    if let Some(entry) = &outcome.applied {
        // The same revision, spec and sync request applied again, with changes: a hand
        // edit put back.
        let drift = previous.is_some_and(|s| {
            s.last_applied_revision.as_deref() == Some(commit.as_str())
                && s.observed_generation == app.metadata.generation
        }) && !sync_requested;
        let event = if drift {
            notify::Event::DriftCorrected
        } else {
            notify::Event::SyncSucceeded
        };
        notices.push((event, entry.message.clone().unwrap_or_default()));
    }
    if outcome.health == HealthStatus::Degraded
        && previous.and_then(|s| s.health.as_deref()) != Some("Degraded")
    {
        notices.push((
            notify::Event::HealthDegraded,
            format!("health is {}", outcome.health),
        ));
    }
    let summary = outcome
        .applied
        .as_ref()
        .and_then(|entry| entry.message.clone())
        .unwrap_or_else(|| "the cluster already holds it".into());
    if let Some(entry) = outcome.applied {
        status.history.insert(0, entry);
        status.history.truncate(HISTORY_LIMIT);
    }
    status.health = Some(outcome.health.to_string());
    status.apply_set = Some(outcome.apply_set);
    let state = if synced {
        "applied"
    } else if changed_meanwhile {
        "applied, but objects were changed meanwhile (correcting)"
    } else if app.spec.sync_policy.automated {
        "differs from the cluster (selfHeal is off: a sync applies it)"
    } else {
        "differs from the cluster (automated sync is off: a sync applies it)"
    };
    let message = format!(
        "revision {} {state}; {}",
        &commit[..12.min(commit.len())],
        outcome.health
    );
    status.sync = Some(sync);
    let ready_reason = match (synced, changed_meanwhile) {
        (true, _) => "Succeeded",
        (false, true) => "ChangedMeanwhile",
        (false, false) => "OutOfSync",
    };
    let ready = if synced { "True" } else { "False" };
    set_condition(
        &mut status,
        app,
        "Ready",
        ready,
        ready_reason,
        &message,
        now,
    );
    let (reconciling, reason) = if changed_meanwhile {
        ("True", "ChangedMeanwhile")
    } else {
        ("False", "Succeeded")
    };
    set_condition(
        &mut status,
        app,
        "Reconciling",
        reconciling,
        reason,
        &message,
        now,
    );
    set_condition(&mut status, app, "Stalled", "False", "Succeeded", "", now);
    AfterSuccess {
        status,
        synced,
        notices,
        summary,
    }
}

/// A sync that failed.
pub struct Failed {
    pub message: String,
    /// The history entry of a failed sync that ran hooks.
    pub entry: Option<HistoryEntry>,
    /// The revision that failed, once it was fetched.
    pub revision: Option<String>,
    /// The cluster is known to differ from the revision (OutOfSync); otherwise a failure
    /// after the fetch says Unknown: nothing was compared.
    pub out_of_sync: bool,
}

/// The status to write after a failed sync, and what to do about it.
pub struct AfterFailure {
    pub status: ApplicationStatus,
    /// The retry limit is reached: wait for the interval or a change.
    pub stalled: bool,
    /// The first failure of a streak is told (its revision and message); its retries are
    /// not.
    pub tell: Option<(Option<String>, String)>,
}

/// The status after a failed sync.
pub fn on_failure(
    app: &Application,
    mut status: ApplicationStatus,
    failed: Failed,
    now: &str,
) -> AfterFailure {
    let message = failed.message;
    if failed.revision.is_some() {
        status.last_attempted_revision = failed.revision;
        // Synced is never said while an object failed, nor when nothing could be compared
        // (rule 13).
        if let Some(sync) = status.sync.as_mut() {
            sync.status = if failed.out_of_sync {
                "OutOfSync"
            } else {
                "Unknown"
            }
            .into();
        }
    }
    if let Some(entry) = failed.entry {
        status.history.insert(0, entry);
        status.history.truncate(HISTORY_LIMIT);
    }
    status.failures += 1;
    let failures = status.failures;
    let stalled = failures >= app.spec.sync_policy.retry.limit.max(1);
    set_condition(&mut status, app, "Ready", "False", "Failed", &message, now);
    if stalled {
        let why = format!(
            "{failures} failed attempts; fix the cause, then change the Application or wait for the next interval: {message}"
        );
        set_condition(
            &mut status,
            app,
            "Stalled",
            "True",
            "RetryLimitReached",
            &why,
            now,
        );
        set_condition(
            &mut status,
            app,
            "Reconciling",
            "False",
            "Stalled",
            &message,
            now,
        );
    } else {
        set_condition(
            &mut status,
            app,
            "Reconciling",
            "True",
            "Retrying",
            &message,
            now,
        );
    }
    let tell = (failures == 1).then(|| (status.last_attempted_revision.clone(), message));
    AfterFailure {
        status,
        stalled,
        tell,
    }
}

/// How long to wait before retrying the `failures`-th failed sync in a row: the
/// Application's `retry.backoff` (default 5 s), doubled with each failure, at most 5 min.
pub fn failure_backoff(app: &Application, failures: u32) -> Duration {
    let base =
        parse_duration(&app.spec.sync_policy.retry.backoff).unwrap_or(Duration::from_secs(5));
    (base * 2u32.saturating_pow(failures.saturating_sub(1))).min(Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
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
}
