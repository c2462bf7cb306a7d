//! What the drift watches know, as one value behind one lock ([`super::DriftWatch`] holds
//! it): which Application owns each ApplySet, what the watches last saw of each object, and
//! each set's state machine (vouching, verification, applied digests, drifted members).
//! Pure: no I/O, and the time comes in as an argument, so every transition is unit-tested.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use kube::runtime::reflector::ObjectRef;

use super::prints::Prints;
use crate::agent::Application;
use crate::object::ObjectKey;

/// A kind as the watches key it: (group, kind).
pub(super) type Kind = (String, String);

/// Where objects are: (group, kind, namespace).
type Place = (String, String, String);

/// Up to this many drifted members are corrected one by one; more take a full sync.
pub(super) const TARGETED_LIMIT: usize = 32;

/// Everything the watches remember, shared by the watch of every kind.
#[derive(Debug, Default)]
pub(super) struct State {
    /// ApplySet id → the Application that owns the set.
    owners: HashMap<String, ObjectRef<Application>>,
    /// Object uid → fingerprint of the last state seen.
    seen: HashMap<String, Prints>,
    /// (group, kind, namespace) → how many labelled objects the watches see there (every
    /// set's): tells a plan when one LIST of its members there would scan far more objects
    /// than it reads (see [`crate::plan::Crowd`]).
    crowds: HashMap<Place, usize>,
    /// Member → its resourceVersion as last seen by the watches.
    versions: HashMap<ObjectKey, String>,
    /// Kinds whose watch has listed every object once.
    ready: BTreeSet<Kind>,
    /// Kinds whose watch lists again after a gap: what it knows may lack objects made
    /// meanwhile until the list ends.
    relisting: BTreeSet<Kind>,
    /// ApplySet id → its members the watches see, by (group, kind, namespace), by name: a
    /// plan's prune candidates without a LIST that scans the namespace.
    members: HashMap<String, BTreeMap<Place, BTreeSet<String>>>,
    /// ApplySet id → what changed since the last full sync.
    sets: HashMap<String, SetState>,
}

#[derive(Debug, Default)]
struct SetState {
    kinds: BTreeSet<Kind>,
    /// The watches vouch for the set: the last full sync completed, and every change to a
    /// member since then was seen.
    verified: bool,
    /// Every kind of the set was watched before the current full sync planned.
    watched_from_start: bool,
    /// Someone else changed or deleted a member since.
    drifted: bool,
    /// A member's status changed since (health may differ).
    status_changed: bool,
    /// Which members' status changed, while there are few of them.
    status_objects: BTreeSet<ObjectKey>,
    /// More than [`TARGETED_LIMIT`] members' status changed: health is read in full.
    status_overflow: bool,
    /// The set is settled (its Application Synced): a member's status change triggers the
    /// Application at once, to read health. Off while it fails or is out of sync, so a
    /// status change never bypasses a failing sync's backoff.
    follows_health: bool,
    /// The digest of the render the last full sync left the cluster holding.
    applied_digest: Option<[u8; 32]>,
    /// The members changed or deleted by someone else since, while there are few of them.
    drifted_objects: BTreeSet<ObjectKey>,
    /// More than [`TARGETED_LIMIT`] members drifted: only a full sync will do.
    drift_overflow: bool,
    /// Members the watches have yet to see at the version the last full sync left them.
    pending: HashMap<ObjectKey, String>,
    /// When the last full sync (a full plan) began.
    last_full_plan: Option<Instant>,
    /// Members the current sync prunes: their deletion is not drift.
    pruning: BTreeSet<ObjectKey>,
    /// Each desired member's digest as this agent applies it: an apply under tether's
    /// field manager that carries another is someone else's (rule 12).
    applied: HashMap<ObjectKey, String>,
}

/// Where an object counts in [`State::crowd`].
fn crowd_of(key: &ObjectKey) -> Place {
    (key.group.clone(), key.kind.clone(), key.namespace.clone())
}

/// What the watch saw happen to a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    Changed,
    Deleted,
    /// Its ApplySet label was removed: it left the watch's selection.
    Unlabelled,
    /// Seen on the list after a gap in the watch.
    ChangedMeanwhile,
    DeletedMeanwhile,
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Seen::Changed => "changed",
            Seen::Deleted => "deleted",
            Seen::Unlabelled => "relabelled out of its set",
            Seen::ChangedMeanwhile => "changed while the watch was away",
            Seen::DeletedMeanwhile => "deleted while the watch was away",
        })
    }
}

impl State {
    /// See [`super::DriftWatch::begin_full_sync`]; `now` is when the sync begins.
    pub fn begin_full_sync(&mut self, id: &str, now: Instant) -> bool {
        let state = self.sets.entry(id.to_string()).or_default();
        let vouched = state.verified && !state.drifted;
        state.last_full_plan = Some(now);
        state.verified = false;
        state.watched_from_start = false;
        state.drifted = false;
        state.status_changed = false;
        state.status_objects.clear();
        state.status_overflow = false;
        state.follows_health = false;
        state.applied_digest = None;
        state.drifted_objects.clear();
        state.drift_overflow = false;
        state.pending.clear();
        state.pruning.clear();
        vouched
    }

    /// How long after `now` the backstop's full plan of set `id` is due (zero: now); see
    /// [`super::DriftWatch::until_verification`].
    pub fn until_verification(&self, id: &str, period: Duration, now: Instant) -> Duration {
        let Some(last) = self.sets.get(id).and_then(|s| s.last_full_plan) else {
            return Duration::ZERO;
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        let stretch = 1.0 + (hasher.finish() % 1000) as f64 / 5000.0;
        period
            .mul_f64(stretch)
            .saturating_sub(now.saturating_duration_since(last))
    }

    /// See [`super::DriftWatch::saw_unreported`].
    pub fn saw_unreported(&self, id: &str, key: &ObjectKey, version: &str) -> bool {
        let Some(state) = self.sets.get(id) else {
            return false;
        };
        self.versions.get(key).map(String::as_str) == Some(version)
            && !state.drift_overflow
            && !state.drifted_objects.contains(key)
    }

    /// See [`super::DriftWatch::finish_full_sync`].
    pub fn finish_full_sync(&mut self, id: &str, expected: Vec<(ObjectKey, String)>) {
        let Some(state) = self.sets.get_mut(id) else {
            return;
        };
        if state.watched_from_start {
            state.verified = true;
            return;
        }
        if expected.is_empty() {
            return;
        }
        state.pending = expected
            .into_iter()
            .filter(|(key, version)| self.versions.get(key) != Some(version))
            .collect();
        // A version seen before a watch broke proves nothing about now: a broken watch
        // vouches once a live event shows each pending member (`saw_version`).
        let watching = state.kinds.iter().all(|k| self.ready.contains(k));
        state.verified = watching && state.pending.is_empty();
    }

    /// The watch saw `key` (of set `id`, if it names one) at `version`.
    pub fn saw_version(&mut self, id: Option<&str>, key: ObjectKey, version: String) {
        if let Some(id) = id
            && let Some(state) = self.sets.get_mut(id)
            && state.pending.get(&key) == Some(&version)
        {
            state.pending.remove(&key);
            state.verified = state.pending.is_empty();
        }
        self.versions.insert(key, version);
    }

    /// See [`super::DriftWatch::take_drifted`].
    pub fn take_drifted(&mut self, id: &str) -> Option<BTreeSet<ObjectKey>> {
        let state = self.sets.get_mut(id)?;
        if !state.verified
            || !state.drifted
            || state.drift_overflow
            || state.drifted_objects.is_empty()
        {
            return None;
        }
        state.drifted = false;
        Some(std::mem::take(&mut state.drifted_objects))
    }

    /// A targeted correction of set `id` failed: the next reconcile must sync it in full.
    pub fn require_full_sync(&mut self, id: &str) {
        if let Some(state) = self.sets.get_mut(id) {
            state.drifted = true;
            state.drift_overflow = true;
        }
    }

    /// Forgets what the watches know of set `id`.
    pub fn forget_set(&mut self, id: &str) {
        self.sets.remove(id);
    }

    pub fn set_applied_digest(&mut self, id: &str, digest: [u8; 32]) {
        if let Some(state) = self.sets.get_mut(id) {
            state.applied_digest = Some(digest);
        }
    }

    pub fn applied_digest(&self, id: &str) -> Option<[u8; 32]> {
        self.sets.get(id).and_then(|s| s.applied_digest)
    }

    /// See [`super::DriftWatch::may_skip`].
    pub fn may_skip(&self, id: &str) -> Option<bool> {
        let state = self.sets.get(id)?;
        (state.verified && !state.drifted).then_some(state.status_changed)
    }

    pub fn is_drifted(&self, id: &str) -> bool {
        self.sets.get(id).is_some_and(|s| s.drifted)
    }

    /// See [`super::DriftWatch::take_status_changes`].
    pub fn take_status_changes(&mut self, id: &str) -> Option<BTreeSet<ObjectKey>> {
        let state = self.sets.get_mut(id)?;
        state.status_changed = false;
        let overflow = std::mem::take(&mut state.status_overflow);
        let changed = std::mem::take(&mut state.status_objects);
        (!overflow).then_some(changed)
    }

    /// See [`super::DriftWatch::follow_health`]: the owner to trigger now when a member's
    /// status changed while the set was not followed (after its last health read).
    pub fn follow_health(&mut self, id: &str, on: bool) -> Option<ObjectRef<Application>> {
        let state = self.sets.get_mut(id)?;
        state.follows_health = on;
        if on && state.status_changed {
            return self.owner(id);
        }
        None
    }

    /// Records that `app` owns set `id` with objects of `kinds`. A kind whose watch has
    /// not listed yet means the current sync was not watched from its start.
    pub fn register(&mut self, app: ObjectRef<Application>, id: &str, kinds: BTreeSet<Kind>) {
        self.owners.insert(id.to_string(), app);
        let state = self.sets.entry(id.to_string()).or_default();
        state.kinds = kinds;
        if !state.kinds.iter().all(|k| self.ready.contains(k)) {
            state.watched_from_start = false;
        }
    }

    /// If every kind of set `id` has listed its objects, the current sync counts as
    /// watched from its start; returns whether it does.
    pub fn start_watched(&mut self, id: &str) -> bool {
        match self.sets.get_mut(id) {
            Some(state) if state.kinds.iter().all(|k| self.ready.contains(k)) => {
                state.watched_from_start = true;
                true
            }
            _ => false,
        }
    }

    /// The watch of `kind` listed every object (once, or again after a gap).
    pub fn listed(&mut self, kind: Kind) {
        self.relisting.remove(&kind);
        self.ready.insert(kind);
    }

    /// The watch of `kind` lists again after a gap.
    pub fn relisting(&mut self, kind: Kind) {
        self.relisting.insert(kind);
    }

    /// The watch saw `key` labelled as a member of set `now` (`None`: of none, or gone),
    /// where it knew it in set `was` before.
    pub fn member(&mut self, was: Option<&str>, now: Option<&str>, key: &ObjectKey) {
        if let Some(was) = was.filter(|was| Some(*was) != now)
            && let Some(there) = self.members.get_mut(was)
        {
            let group = crowd_of(key);
            if let Some(names) = there.get_mut(&group) {
                names.remove(&key.name);
                if names.is_empty() {
                    there.remove(&group);
                }
            }
            if there.is_empty() {
                self.members.remove(was);
            }
        }
        if let Some(now) = now {
            let there = self.members.entry(now.to_string()).or_default();
            there
                .entry(crowd_of(key))
                .or_default()
                .insert(key.name.clone());
        }
    }

    /// See [`crate::plan::Watched::members`]: set `id`'s members of a kind in a namespace
    /// as the watch sees them, and those this agent applied (the watch may not have seen
    /// its last writes yet); while the kind's watch has listed and is not listing again,
    /// and, after a sync the watches did not see from its start, every member it wrote has
    /// been seen at the version it left.
    pub fn members_of(
        &self,
        id: &str,
        group: &str,
        kind: &str,
        namespace: &str,
    ) -> Option<Vec<String>> {
        let watched = (group.to_string(), kind.to_string());
        if !self.ready.contains(&watched) || self.relisting.contains(&watched) {
            return None;
        }
        if self.sets.get(id).is_some_and(|set| !set.pending.is_empty()) {
            return None;
        }
        let there = (watched.0, watched.1, namespace.to_string());
        let mut names: BTreeSet<&String> = self
            .members
            .get(id)
            .and_then(|m| m.get(&there))
            .into_iter()
            .flatten()
            .collect();
        if let Some(set) = self.sets.get(id) {
            names.extend(
                set.applied
                    .keys()
                    .filter(|k| crowd_of(k) == there)
                    .map(|k| &k.name),
            );
        }
        Some(names.into_iter().cloned().collect())
    }

    /// The Application that owns set `id`.
    pub fn owner(&self, id: &str) -> Option<ObjectRef<Application>> {
        self.owners.get(id).cloned()
    }

    /// Stores the fingerprints of the object with `uid`; returns the ones seen before
    /// (none at first sight, or without a uid).
    pub fn remember(
        &mut self,
        uid: Option<String>,
        key: &ObjectKey,
        prints: Prints,
    ) -> Option<Prints> {
        let previous = self.seen.insert(uid?, prints);
        if previous.is_none() {
            *self.crowds.entry(crowd_of(key)).or_default() += 1;
        }
        previous
    }

    /// An object is gone: forget its fingerprints and version.
    pub fn forget(&mut self, uid: &str, key: &ObjectKey) {
        if self.seen.remove(uid).is_some() {
            let crowd = crowd_of(key);
            if let Some(count) = self.crowds.get_mut(&crowd) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.crowds.remove(&crowd);
                }
            }
        }
        self.versions.remove(key);
    }

    /// How many labelled objects of `kind` (group, kind) the watches see in `namespace`.
    pub fn crowd(&self, group: &str, kind: &str, namespace: &str) -> usize {
        let key = (group.to_string(), kind.to_string(), namespace.to_string());
        self.crowds.get(&key).copied().unwrap_or(0)
    }

    /// A member's status changed: remembers which, and returns the Application to trigger
    /// when the set follows health and this is the first change since the last health read
    /// (already flagged, a reconcile is due and will read this one too).
    pub fn status_changed(&mut self, id: &str, key: ObjectKey) -> Option<ObjectRef<Application>> {
        let state = self.sets.get_mut(id)?;
        if state.status_objects.len() < TARGETED_LIMIT {
            state.status_objects.insert(key);
        } else {
            state.status_overflow = true;
        }
        let was = std::mem::replace(&mut state.status_changed, true);
        if was || !state.follows_health {
            return None;
        }
        self.owner(id)
    }

    /// See [`super::DriftWatch::expect_applied`].
    pub fn expect_applied(
        &mut self,
        id: &str,
        digests: impl IntoIterator<Item = (ObjectKey, String)>,
        complete: bool,
    ) {
        if let Some(state) = self.sets.get_mut(id) {
            if complete {
                state.applied.clear();
            }
            state.applied.extend(digests);
        }
    }

    /// Whether a write to `key` (of set `id`, if it names one) that carries `digest` and
    /// looks like tether's own apply by its managedFields was this agent's. A member the
    /// agent knows nothing of yet (before its first full sync) is taken as its own; an
    /// object that joined a set whose members are known, without being one of them, is not.
    pub fn applied_by_us(&self, id: Option<&str>, key: &ObjectKey, digest: Option<&str>) -> bool {
        let Some(state) = id
            .and_then(|id| self.sets.get(id))
            .filter(|s| !s.applied.is_empty())
        else {
            return true;
        };
        state
            .applied
            .get(key)
            .is_some_and(|wanted| digest == Some(wanted.as_str()))
    }

    /// See [`super::DriftWatch::expect_pruned`].
    pub fn expect_pruned(&mut self, id: &str, keys: impl IntoIterator<Item = ObjectKey>) {
        if let Some(state) = self.sets.get_mut(id) {
            state.pruning.extend(keys);
        }
    }

    /// Someone else changed or deleted `key`, a member of set `id`: remembers it, and
    /// returns the Application to trigger. Not when tether is pruning it (its deletion
    /// ends the pruning).
    pub fn report(
        &mut self,
        id: &str,
        key: ObjectKey,
        what: Seen,
    ) -> Option<ObjectRef<Application>> {
        if let Some(state) = self.sets.get_mut(id) {
            if state.pruning.contains(&key) {
                if matches!(what, Seen::Deleted | Seen::DeletedMeanwhile) {
                    state.pruning.remove(&key);
                }
                return None;
            }
            state.drifted = true;
            if state.drifted_objects.len() < TARGETED_LIMIT {
                state.drifted_objects.insert(key);
            } else {
                state.drift_overflow = true;
            }
        }
        self.owner(id)
    }
}

#[cfg(test)]
mod tests;
