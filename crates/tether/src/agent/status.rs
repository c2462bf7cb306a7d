//! What a reconcile writes in an Application's status, decided without I/O: the conditions
//! (Ready, Reconciling, Stalled), sync state, health, history and failure count after a
//! sync that went through ([`on_success`]) or failed ([`on_failure`]), what to tell people
//! about it, and how long to wait before a retry ([`failure_backoff`]). The reconcile
//! writes the result and sends what it says to tell.

use std::time::Duration;

use kube::ResourceExt;

use super::notify;
use crate::agent::Application;
use crate::application::{
    ApplicationStatus, ApplySetReference, Condition, ConditionStatus, ConditionType, HistoryEntry,
    Reason, SYNC_REQUEST_ANNOTATION, SyncState, SyncStatus, health_from,
};
use crate::duration::parse_duration;
use crate::health::HealthStatus;
use crate::source::git::Revision;

/// The syncs a status keeps, newest first.
pub const HISTORY_LIMIT: usize = 10;

/// Sets condition `kind` to `value` with its reason and message; its transition time
/// changes (to `now`) only when its value does.
pub fn set_condition(
    status: &mut ApplicationStatus,
    app: &Application,
    kind: ConditionType,
    value: ConditionStatus,
    reason: Reason,
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
        ConditionType::Reconciling,
        ConditionStatus::False,
        Reason::Suspended,
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
        ConditionType::Ready,
        ConditionStatus::False,
        Reason::DependencyNotReady,
        &ready,
        now,
    );
    let reconciling = format!("waiting for {waiting}");
    set_condition(
        &mut status,
        app,
        ConditionType::Reconciling,
        ConditionStatus::True,
        Reason::DependencyNotReady,
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
    let applied_revision = sync.status == SyncState::Synced;
    // Applied, but someone changed a member while this sync ran: the cluster may differ
    // from Git now, so this status must not say Synced (the change has queued the next
    // reconcile already).
    let changed_meanwhile = applied_revision && outcome.drifted_meanwhile;
    if changed_meanwhile {
        sync.status = SyncState::OutOfSync.into();
    }
    let synced = sync.status == SyncState::Synced;
    let commit = &outcome.revision.commit;
    status.failures = 0;
    status.last_sync_request = app.annotations().get(SYNC_REQUEST_ANNOTATION).cloned();
    status.last_attempted_revision = Some(commit.clone());
    if applied_revision {
        status.last_applied_revision = Some(commit.clone());
        status.revision_info = Some((&outcome.revision).into());
    }
    let applied = outcome.applied.as_ref();
    let notices = success_notices(app, commit, applied, outcome.health, sync_requested);
    let summary = applied
        .and_then(|entry| entry.message.clone())
        .unwrap_or_else(|| "the cluster already holds it".into());
    if let Some(entry) = outcome.applied {
        push_history(&mut status, entry);
    }
    status.health = Some(outcome.health.to_string());
    status.apply_set = Some(outcome.apply_set);
    let blocked = status.sync_window.as_ref().filter(|w| !w.open);
    let message = match blocked {
        Some(window) if !synced && !changed_meanwhile => window_message(commit, window),
        _ => success_message(app, commit, outcome.health, synced, changed_meanwhile),
    };
    status.sync = Some(sync);
    set_success_conditions(&mut status, app, synced, changed_meanwhile, &message, now);
    AfterSuccess {
        status,
        synced,
        notices,
        summary,
    }
}

/// What to tell of a sync that went through: what it applied (a drift corrected, when it
/// put back the revision, spec and sync request already applied), and health that has
/// just turned Degraded.
fn success_notices(
    app: &Application,
    commit: &str,
    applied: Option<&HistoryEntry>,
    health: HealthStatus,
    sync_requested: bool,
) -> Vec<(notify::Event, String)> {
    let previous = app.status.as_ref();
    let mut notices = Vec::new();
    if let Some(entry) = applied {
        // The same revision, spec and sync request applied again, with changes: a hand
        // edit put back.
        let drift = previous.is_some_and(|s| {
            s.last_applied_revision.as_deref() == Some(commit)
                && s.observed_generation == app.metadata.generation
        }) && !sync_requested;
        let event = if drift {
            notify::Event::DriftCorrected
        } else {
            notify::Event::SyncSucceeded
        };
        notices.push((event, entry.message.clone().unwrap_or_default()));
    }
    if health == HealthStatus::Degraded
        && previous.and_then(|s| s.health.as_deref()).map(health_from)
            != Some(HealthStatus::Degraded)
    {
        notices.push((notify::Event::HealthDegraded, format!("health is {health}")));
    }
    notices
}

/// The conditions' message after a sync that went through: the revision, what became of
/// it, and the health.
fn success_message(
    app: &Application,
    commit: &str,
    health: HealthStatus,
    synced: bool,
    changed_meanwhile: bool,
) -> String {
    let state = if synced {
        "applied"
    } else if changed_meanwhile {
        "applied, but objects were changed meanwhile (correcting)"
    } else if app.spec.sync_policy.automated {
        "differs from the cluster (selfHeal is off: a sync applies it)"
    } else {
        "differs from the cluster (automated sync is off: a sync applies it)"
    };
    format!(
        "revision {} {state}; {health}",
        &commit[..12.min(commit.len())]
    )
}

/// The conditions' message while a sync window keeps a revision from being applied.
fn window_message(commit: &str, window: &crate::application::SyncWindowStatus) -> String {
    let next = match &window.next_sync {
        Some(at) => format!("; syncs may run from {at}"),
        None => "; no window opens within a year".into(),
    };
    let manual = if window.manual_sync {
        " (a sync asked for by hand runs)"
    } else {
        ""
    };
    format!(
        "revision {} differs from the cluster and waits: {}{next}{manual}",
        &commit[..12.min(commit.len())],
        window.message
    )
}

/// Ready, Reconciling and Stalled after a sync that went through.
fn set_success_conditions(
    status: &mut ApplicationStatus,
    app: &Application,
    synced: bool,
    changed_meanwhile: bool,
    message: &str,
    now: &str,
) {
    let ready_reason = match (synced, changed_meanwhile) {
        (true, _) => Reason::Succeeded,
        (false, true) => Reason::ChangedMeanwhile,
        (false, false) => Reason::OutOfSync,
    };
    let ready = ConditionStatus::from(synced);
    set_condition(
        status,
        app,
        ConditionType::Ready,
        ready,
        ready_reason,
        message,
        now,
    );
    let (reconciling, reason) = if changed_meanwhile {
        (ConditionStatus::True, Reason::ChangedMeanwhile)
    } else {
        (ConditionStatus::False, Reason::Succeeded)
    };
    let kind = ConditionType::Reconciling;
    set_condition(status, app, kind, reconciling, reason, message, now);
    let (stalled, succeeded) = (ConditionType::Stalled, Reason::Succeeded);
    set_condition(
        status,
        app,
        stalled,
        ConditionStatus::False,
        succeeded,
        "",
        now,
    );
}

/// Adds a sync to the history, newest first, keeping [`HISTORY_LIMIT`].
fn push_history(status: &mut ApplicationStatus, entry: HistoryEntry) {
    status.history.insert(0, entry);
    status.history.truncate(HISTORY_LIMIT);
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
                SyncState::OutOfSync
            } else {
                SyncState::Unknown
            }
            .into();
        }
    }
    if let Some(entry) = failed.entry {
        push_history(&mut status, entry);
    }
    status.failures += 1;
    let failures = status.failures;
    let stalled = failures >= app.spec.sync_policy.retry.limit.max(1);
    set_condition(
        &mut status,
        app,
        ConditionType::Ready,
        ConditionStatus::False,
        Reason::Failed,
        &message,
        now,
    );
    if stalled {
        let why = format!(
            "{failures} failed attempts; fix the cause, then change the Application or wait for the next interval: {message}"
        );
        set_condition(
            &mut status,
            app,
            ConditionType::Stalled,
            ConditionStatus::True,
            Reason::RetryLimitReached,
            &why,
            now,
        );
        set_condition(
            &mut status,
            app,
            ConditionType::Reconciling,
            ConditionStatus::False,
            Reason::Stalled,
            &message,
            now,
        );
    } else {
        set_condition(
            &mut status,
            app,
            ConditionType::Reconciling,
            ConditionStatus::True,
            Reason::Retrying,
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
    use backon::BackoffBuilder;
    let base =
        parse_duration(&app.spec.sync_policy.retry.backoff).unwrap_or(Duration::from_secs(5));
    let most = Duration::from_secs(300);
    let mut delays = crate::duration::doubling(base, most).build();
    // Doubling reaches 5 min from any base of a nanosecond or more within 64 steps.
    let nth = failures.saturating_sub(1).min(64) as usize;
    delays.nth(nth).unwrap_or(most).min(most)
}

#[cfg(test)]
mod tests;
