//! The Application's status, the agent's record (kstatus style): conditions, sync state,
//! health, history; and the sync and health states every face shows.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::state::{ConditionStatus, ConditionType, Reason, RunResult, SyncState};

/// The agent's record, kstatus style.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempted_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStatus>,
    /// Healthy, Progressing, Degraded, Missing or Unknown: the least healthy object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<String>,
    /// The last syncs, newest first (at most 10).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apply_set: Option<ApplySetReference>,
    /// Consecutive failed attempts (reset by a success).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failures: u32,
    /// The last `tether.dev/sync-requested` annotation value acted on (`tether sync`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_request: Option<String>,
    /// The last applied revision as Git describes it (for people: the UI, `tether get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision_info: Option<RevisionInfo>,
    /// Whether its sync windows let syncs run now (none without windows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_window: Option<SyncWindowStatus>,
}

/// What an Application's sync windows say now.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncWindowStatus {
    /// Automated syncs may run now.
    pub open: bool,
    /// Which window decides, in a sentence.
    pub message: String,
    /// While they block: when syncs may run again (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_sync: Option<String>,
    /// While they block: a sync asked for by hand still runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual_sync: bool,
}

/// Every sync state an Application is shown in: each Application is in exactly one.
pub const SYNC_STATES: [&str; 4] = [
    SyncState::Synced.as_str(),
    SyncState::OutOfSync.as_str(),
    SyncState::Unknown.as_str(),
    SyncState::Failed.as_str(),
];
/// Every health state an Application is shown in: each Application is in exactly one.
pub const HEALTH_STATES: [&str; 5] = ["Healthy", "Progressing", "Degraded", "Missing", "Unknown"];

/// What is known of an Application's objects now, beside its status.
pub enum Objects {
    /// Only the status (the list of Applications).
    NotPlanned,
    /// A plan of its current revision could not be made.
    Unplanned,
    /// A plan was made: how many objects differ from Git (or failed).
    Planned { differing: usize },
}

/// The sync state shown for an Application, one of [`SYNC_STATES`], for every face (the
/// list, its counts, an Application's page, the JSON API): with a current plan, derived
/// from its objects' states (any object differing makes it OutOfSync, no plan Unknown);
/// else Failed when its last sync failed, and otherwise its status.
pub fn sync_state(status: Option<&ApplicationStatus>, objects: Objects) -> &'static str {
    let failed = status.is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == ConditionType::Ready
                && c.status == ConditionStatus::False
                && c.reason == Reason::Failed
        })
    });
    let recorded = match status
        .and_then(|s| s.sync.as_ref())
        .and_then(|s| SyncState::parse(&s.status))
    {
        Some(state @ (SyncState::Synced | SyncState::OutOfSync)) => state,
        _ => SyncState::Unknown,
    };
    let state = match objects {
        Objects::Unplanned => SyncState::Unknown,
        Objects::Planned { differing } if differing > 0 => SyncState::OutOfSync,
        Objects::Planned { .. } if failed => SyncState::Failed,
        Objects::Planned { .. } => SyncState::Synced,
        Objects::NotPlanned if failed => SyncState::Failed,
        Objects::NotPlanned => recorded,
    };
    state.as_str()
}

/// The health shown for an Application, one of [`HEALTH_STATES`].
pub fn health_state(status: Option<&ApplicationStatus>) -> &'static str {
    let health = status
        .and_then(|s| s.health.as_deref())
        .unwrap_or("Unknown");
    HEALTH_STATES
        .into_iter()
        .find(|h| *h == health)
        .unwrap_or("Unknown")
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// Synced or OutOfSync.
    pub status: String,
    pub revision: String,
    pub create: u32,
    pub update: u32,
    pub prune: u32,
    pub unchanged: u32,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub revision: String,
    pub time: String,
    /// Succeeded or Failed.
    pub result: String,
    pub created: u32,
    pub updated: u32,
    pub pruned: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The hooks this sync ran, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookRecord>,
}

/// A revision as Git describes it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RevisionInfo {
    pub commit: String,
    /// The ref it came from (refs/heads/main), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The first line of the commit message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
}

impl From<&crate::source::git::Revision> for RevisionInfo {
    fn from(revision: &crate::source::git::Revision) -> Self {
        Self {
            commit: revision.commit.clone(),
            reference: revision.from_ref.clone(),
            message: revision.summary.clone(),
            author: revision.author.clone(),
        }
    }
}

/// One hook run, as history keeps it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HookRecord {
    /// PreSync, Sync, PostSync or SyncFail.
    pub phase: String,
    /// `Kind/name` (the generated name for a generateName hook).
    pub object: String,
    /// Succeeded or Failed.
    pub result: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl From<&crate::apply::hooks::HookResult> for HookRecord {
    fn from(run: &crate::apply::hooks::HookResult) -> Self {
        Self {
            phase: run.phase.to_string(),
            object: format!("{}/{}", run.key.kind, run.key.name),
            result: if run.succeeded {
                RunResult::Succeeded
            } else {
                RunResult::Failed
            }
            .into(),
            message: run.message.clone(),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApplySetReference {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub id: String,
}
