//! Pure decisions about one desired object, from values only: whose its live state is
//! ([`ownership`]), whether it needs no dry-run ([`already_held`]), what the server's
//! dry-run answer means ([`read_answer`]: a conflict, drift to reclaim, a prediction) and
//! what apply would do with its diff ([`compare`]). [`super::dry_run`] asks the cluster
//! and calls these in that order; the golden cases under `testdata/` walk the same path.

use serde_json::Value;

use super::types::Action;
use super::{diff, fields, migrate};
use crate::inventory::{ApplySet, PART_OF_LABEL};
use crate::object::ObjectKey;

/// Whose the live object is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Ownership {
    /// Ours to write: a member of this set, an object to adopt, or none yet.
    Ours,
    /// A member whose ApplySet label someone removed: the apply puts it back.
    Relabel,
    /// A member of another ApplySet (its id).
    OtherSet(String),
    /// It belongs to no ApplySet and is not to be adopted.
    Unmanaged,
}

/// Whose `live` (the object `key`, if it exists) is, for the set `set`.
pub(super) fn ownership(
    live: Option<&Value>,
    key: &ObjectKey,
    set: &ApplySet,
    adopt: bool,
) -> Ownership {
    let Some(live) = live else {
        return Ownership::Ours;
    };
    match live["metadata"]["labels"][PART_OF_LABEL].as_str() {
        Some(id) if id == set.id => Ownership::Ours,
        Some(other) => Ownership::OtherSet(other.to_string()),
        None if recorded_member(live, key, set) => Ownership::Relabel,
        None if !adopt => Ownership::Unmanaged,
        None => Ownership::Ours,
    }
}

/// Whether `live`, which carries no ApplySet label, is a member of `set` all the same: the
/// set's parent records its kind (and namespace), and its managedFields hold an apply by
/// tether. Someone removed the label (`kubectl label … applyset.kubernetes.io/part-of-`);
/// the object is still tether's, and the apply puts the label back.
fn recorded_member(live: &Value, key: &ObjectKey, set: &ApplySet) -> bool {
    let applied_by_tether = live["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .any(fields::is_tethers_apply);
    set.records(&key.group, &key.kind, &key.namespace) && applied_by_tether
}

/// What the reclaim of a removed ApplySet label says.
fn relabel_reclaim() -> String {
    format!(
        "metadata.labels.{PART_OF_LABEL} (someone removed it; tether's apply entry and the set's kinds show the object is a member)"
    )
}

/// A member that already holds, in the fields tether applied last time, exactly the values
/// it would write again: an apply cannot change it, and no dry-run is needed to know that
/// (a no-op plan of thousands of objects makes no request per object).
pub(super) fn already_held(manifest: &Value, held: &Value, applyset_id: &str) -> bool {
    held["metadata"]["labels"][PART_OF_LABEL] == *applyset_id
        && migrate::client_side_managers(held).is_empty()
        && fields::already_applied(manifest, held)
}

/// What the server's dry-run of the apply answered.
#[derive(Debug, Clone)]
pub(super) enum DryRun {
    /// The object as the apply would leave it.
    Applied(Value),
    /// 409 Conflict: the fields other managers own (`field`, `message`, as the server
    /// names them), the server's message, and the object as a forced apply would leave it.
    Conflict {
        causes: Vec<(String, String)>,
        message: String,
        forced: Value,
    },
    /// Not found while its namespace is created by this same apply: nothing to dry-run yet.
    NamespacePending,
    /// 422: the server refuses to update it in place (an immutable field changed), and its
    /// annotations (`why`) say to delete it and create it anew.
    Refused { message: String, why: String },
}

/// The plan of one object: what apply would do, and why.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Outcome {
    pub action: Action,
    /// Unified YAML diff from live to predicted, Secret values redacted.
    pub diff: String,
    pub conflicts: Vec<String>,
    pub reclaims: Vec<String>,
    pub takes_over_from: Vec<String>,
    /// Deleted and created anew instead of updated, and why.
    pub recreate: Option<String>,
    /// Apply with force: every field in conflict is one tether applied before.
    pub force: bool,
    pub live: Option<Value>,
}

impl Outcome {
    fn new(action: Action) -> Self {
        Self {
            action,
            diff: String::new(),
            conflicts: Vec::new(),
            reclaims: Vec::new(),
            takes_over_from: Vec::new(),
            recreate: None,
            force: false,
            live: None,
        }
    }

    /// A create the server cannot dry-run yet (its kind or namespace comes with this set).
    pub fn create_unchecked(key: &ObjectKey, desired: &Value) -> Self {
        Self {
            diff: render_diff(None, Some(desired), key),
            ..Self::new(Action::Create)
        }
    }

    /// An object that already holds what tether would write (`live`: what is kept of it).
    pub fn unchanged(live: Option<Value>) -> Self {
        Self {
            live,
            ..Self::new(Action::Unchanged)
        }
    }
}

/// What the server predicts an apply leaves, still to compare with the live object.
#[derive(Debug)]
pub(super) struct Prediction {
    pub live: Option<Value>,
    pub predicted: Value,
    /// Apply with force: every field in conflict is one tether applied before.
    pub force: bool,
    pub reclaims: Vec<String>,
}

/// An object the server refuses to update in place, to be deleted and created anew (`why`
/// names the annotation). No prediction: the diff shows the fields Git sets, as the
/// cluster holds them and as Git has them.
fn recreated(
    key: &ObjectKey,
    desired: &Value,
    live: Option<Value>,
    message: &str,
    why: &str,
) -> Outcome {
    let after = diff::normalize(desired);
    let before = live
        .as_ref()
        .map(|l| only_fields_of(&diff::normalize(l), &after));
    Outcome {
        diff: render_diff(before.as_ref(), Some(&after), key),
        recreate: Some(format!(
            "{why}; the server refuses the update: {}",
            refusal(message)
        )),
        live,
        ..Outcome::new(Action::Update)
    }
}

/// `value` with only the object fields `shape` has (at every depth; lists and values as
/// they are): what Git sets, as the cluster holds it.
fn only_fields_of(value: &Value, shape: &Value) -> Value {
    match (value, shape) {
        (Value::Object(fields), Value::Object(wanted)) => Value::Object(
            fields
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), only_fields_of(v, wanted.get(k)?))))
                .collect(),
        ),
        _ => value.clone(),
    }
}

/// The server's refusal without the object it quotes (`Job.batch "x" is invalid:
/// spec.template: … field is immutable`).
fn refusal(message: &str) -> String {
    match message.split_once("Invalid value:") {
        Some((head, tail)) => {
            let reason = tail.rsplit(": ").next().unwrap_or_default();
            format!("{head}…: {reason}")
        }
        None => message.chars().take(300).collect(),
    }
}

/// What a dry-run answer settles.
#[derive(Debug)]
pub(super) enum Verdict {
    /// The object's plan (a conflict, or a create the server cannot dry-run yet).
    Settled(Outcome),
    /// The apply would leave the object as predicted: [`compare`] it with the live one.
    Predicted(Prediction),
}

/// Who made a write beyond its manager, when known (the audit log's user and user agent):
/// `(manager, subresource, time)` → `user "alice" with kubectl/v1.34.4`.
pub(super) type Who<'a> = &'a dyn Fn(&str, Option<&str>, Option<&str>) -> Option<String>;

/// A field in conflict as the user reads it: who holds it now, from the server's cause
/// (`conflict with "kubectl-scale" with subresource "scale" using apps/v1`), with the
/// operation and the time the live object's managedFields record for that manager
/// (`.spec.replicas: changed by "kubectl-scale" (Update of the scale subresource at
/// 2026-12-06T06:00:00Z)`, and `; user "alice" with kubectl/…` when `who` knows); the
/// server's words when the entry is not found.
pub(super) fn attributed(live: Option<&Value>, field: &str, message: &str, who: Who<'_>) -> String {
    let manager = message.split('"').nth(1);
    let subresource = message
        .split("with subresource \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next());
    let entry = live
        .and_then(|l| l["metadata"]["managedFields"].as_array())
        .into_iter()
        .flatten()
        .find(|e| e["manager"].as_str() == manager && e["subresource"].as_str() == subresource);
    let (Some(manager), Some(entry)) = (manager, entry) else {
        return format!("{field}: {message}");
    };
    let operation = entry["operation"].as_str().unwrap_or("a write");
    let mut how = operation.to_string();
    if let Some(subresource) = subresource {
        how.push_str(&format!(" of the {subresource} subresource"));
    }
    let time = entry["time"].as_str();
    if let Some(time) = time {
        how.push_str(&format!(" at {time}"));
    }
    if let Some(by) = who(manager, subresource, time) {
        how.push_str(&format!("; {by}"));
    }
    format!("{field}: changed by \"{manager}\" ({how})")
}

/// What the dry-run `answer` for `desired` (the object `key`, live as `live`) means. A
/// field in conflict that tether applied before is drift, whoever holds it now, and is
/// taken back with force; only a field it never applied is a conflict. An object applied
/// by an older tether keeps no record: as a member of this set, Git wins there too.
pub(super) fn read_answer(
    key: &ObjectKey,
    desired: &Value,
    live: Option<Value>,
    relabel: bool,
    applyset_id: &str,
    answer: DryRun,
    who: Who<'_>,
) -> Verdict {
    let relabeled = || relabel.then(relabel_reclaim).into_iter().collect();
    let (causes, message, forced) = match answer {
        DryRun::Applied(predicted) => {
            return Verdict::Predicted(Prediction {
                live,
                predicted,
                force: false,
                reclaims: relabeled(),
            });
        }
        DryRun::NamespacePending => {
            return Verdict::Settled(Outcome {
                reclaims: relabeled(),
                ..Outcome::create_unchecked(key, desired)
            });
        }
        DryRun::Refused { message, why } => {
            return Verdict::Settled(recreated(key, desired, live, &message, &why));
        }
        DryRun::Conflict {
            causes,
            message,
            forced,
        } => (causes, message, forced),
    };
    let member = relabel
        || live
            .as_ref()
            .is_some_and(|l| l["metadata"]["labels"][PART_OF_LABEL] == *applyset_id);
    let drift = |field: &str| {
        member
            && live
                .as_ref()
                .and_then(|l| fields::applied_before(l, field))
                .unwrap_or(true)
    };
    let (reclaimed, foreign): (Vec<_>, Vec<_>) = causes.iter().partition(|(field, _)| drift(field));
    let describe =
        |(field, message): &(String, String)| attributed(live.as_ref(), field, message, who);
    let reclaims = reclaimed.into_iter().map(describe).collect();
    if !causes.is_empty() && foreign.is_empty() {
        return Verdict::Predicted(Prediction {
            live,
            predicted: forced,
            force: true,
            reclaims,
        });
    }
    let mut conflicts: Vec<String> = foreign.into_iter().map(describe).collect();
    if conflicts.is_empty() {
        conflicts = vec![message];
    }
    Verdict::Settled(Outcome {
        diff: render_diff(
            live.as_ref().map(diff::normalize).as_ref(),
            Some(&diff::normalize(&forced)),
            key,
        ),
        conflicts,
        reclaims,
        live,
        ..Outcome::new(Action::Conflict)
    })
}

/// The two sides compared: the live object (`before`: it normalized) and the predicted
/// one (`after`, normalized).
pub(super) struct Sides {
    pub live: Option<Value>,
    pub before: Option<Value>,
    pub after: Value,
}

impl Sides {
    pub fn new(live: Option<Value>, predicted: &Value) -> Self {
        Self {
            before: live.as_ref().map(diff::normalize),
            after: diff::normalize(predicted),
            live,
        }
    }

    /// Whether the object exists and the apply would change it.
    pub fn differ(&self) -> bool {
        self.before.is_some() && self.before.as_ref() != Some(&self.after)
    }
}

/// What apply would do to an object, from its two sides. Fields a client-side manager
/// owns cannot be removed until tether owns them: the first apply hands them over, even
/// when the values already match. An unchanged object keeps what [`unchanged_live`] keeps.
pub(super) fn compare(key: &ObjectKey, sides: Sides, keep_unchanged_live: bool) -> Outcome {
    let Sides {
        live,
        before,
        after,
    } = sides;
    let takes_over_from = live
        .as_ref()
        .map(migrate::client_side_managers)
        .unwrap_or_default();
    let action = match &before {
        None => Action::Create,
        Some(before) if *before == after && takes_over_from.is_empty() => Action::Unchanged,
        Some(_) => Action::Update,
    };
    if action == Action::Unchanged {
        return Outcome {
            takes_over_from,
            ..Outcome::unchanged(live.map(|live| unchanged_live(live, keep_unchanged_live)))
        };
    }
    Outcome {
        diff: render_diff(before.as_ref(), Some(&after), key),
        takes_over_from,
        live,
        ..Outcome::new(action)
    }
}

/// What is kept of an unchanged object's live state: without its managedFields (nothing
/// after the plan reads them for an object it does not write; the UI and diffs strip them,
/// and for a Deployment they are about a third of the object); with `keep` false, only its
/// identity and versions (see [`super::PlanOptions::keep_unchanged_live`]).
pub(super) fn unchanged_live(mut live: Value, keep: bool) -> Value {
    if keep {
        if let Some(metadata) = live["metadata"].as_object_mut() {
            metadata.remove("managedFields");
        }
        return live;
    }
    let mut metadata = serde_json::Map::new();
    for field in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "labels",
    ] {
        if let Some(value) = live["metadata"].get_mut(field) {
            metadata.insert(field.to_string(), value.take());
        }
    }
    serde_json::json!({
        "apiVersion": live["apiVersion"].take(),
        "kind": live["kind"].take(),
        "metadata": metadata,
    })
}

/// A redacted unified diff between two normalized objects.
pub(super) fn render_diff(
    before: Option<&Value>,
    after: Option<&Value>,
    key: &ObjectKey,
) -> String {
    let mut before = before.map(diff::normalize);
    let mut after = after.map(diff::normalize);
    if before
        .as_ref()
        .or(after.as_ref())
        .is_some_and(diff::is_secret)
    {
        diff::redact_secret_pair(before.as_mut(), after.as_mut());
    }
    diff::unified_diff(
        &diff::to_yaml(before.as_ref()),
        &diff::to_yaml(after.as_ref()),
        &key.to_string(),
    )
}

#[cfg(test)]
mod tests;
