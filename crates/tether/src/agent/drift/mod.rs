//! Drift detection from watch streams: a change made by hand to an object an Application
//! owns triggers that Application's reconcile at once, without polling.
//!
//! One metadata-only watch per kind in use, selecting objects with an ApplySet label.
//! Each object's fingerprint is tether's own entry in its managedFields ([`classify`]): a
//! write that took or removed fields tether set, or a delete, triggers the owning
//! Application; tether's own applies and writes that leave its fields alone (status, other
//! managers' fields) do not. After a gap in a watch, objects that changed or went away
//! meanwhile trigger too. It remembers which members drifted, so that a few can be
//! corrected without planning the whole set.
//!
//! It also tells a periodic reconcile when it may skip planning altogether (no-op is free):
//! when every kind of the set has been watched since the last full sync and nothing that
//! tether set changed, no request is needed for the Application's objects; when only
//! status changed, health is read again. The agent's backstop (a full plan now and then)
//! checks that promise: [`DriftWatch::saw_unreported`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc;

use super::Application;
use crate::cluster::discovery::KindInfo;
use crate::inventory::PART_OF_LABEL;
use crate::object::ObjectKey;
use crate::plan::FIELD_MANAGER;
use crate::plan::fields::APPLIED_DIGEST_ANNOTATION;

#[derive(Clone)]
pub struct DriftWatch {
    client: kube::Client,
    /// Watch only this namespace (a namespaced agent, whose rights end there); cluster-scoped
    /// kinds are then not watched, and sets with them are planned in full at each reconcile.
    scope: Option<String>,
    /// ApplySet id → the Application that owns the set.
    owners: Arc<RwLock<HashMap<String, ObjectRef<Application>>>>,
    /// Kinds (group, kind) with a running watch.
    watched: Arc<Mutex<BTreeSet<(String, String)>>>,
    /// Object uid → fingerprint of the last state seen.
    seen: Arc<Mutex<HashMap<String, Prints>>>,
    /// Member → its resourceVersion as last seen by the watches.
    versions: Arc<Mutex<HashMap<ObjectKey, String>>>,
    /// Kinds whose watch has listed every object once.
    ready: Arc<Mutex<BTreeSet<(String, String)>>>,
    /// ApplySet id → what changed since the last full sync.
    sets: Arc<Mutex<HashMap<String, SetState>>>,
    /// Wakes those waiting for a kind's first list ([`Self::watch_before_sync`]).
    listed: Arc<tokio::sync::Notify>,
    /// The watch of each kind, stopped by [`Self::stop`].
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    trigger: mpsc::UnboundedSender<ObjectRef<Application>>,
    /// Every change to a member (status included), by its Application: what the web UI
    /// shows live.
    changes: tokio::sync::broadcast::Sender<Changed>,
}

impl DriftWatch {
    /// A drift watch and the stream of Applications it asks to reconcile.
    pub fn new(
        client: kube::Client,
    ) -> (
        Self,
        impl futures::Stream<Item = ObjectRef<Application>> + Send + 'static,
    ) {
        let (trigger, receiver) = mpsc::unbounded_channel();
        let changes = tokio::sync::broadcast::channel(1024).0;
        let watch = Self::with_channels(client, trigger, changes);
        (watch, tokio_stream_from(receiver))
    }

    fn with_channels(
        client: kube::Client,
        trigger: mpsc::UnboundedSender<ObjectRef<Application>>,
        changes: tokio::sync::broadcast::Sender<Changed>,
    ) -> Self {
        Self {
            client,
            scope: None,
            owners: Default::default(),
            watched: Default::default(),
            seen: Default::default(),
            versions: Default::default(),
            ready: Default::default(),
            sets: Default::default(),
            listed: Default::default(),
            tasks: Default::default(),
            trigger,
            changes,
        }
    }

    /// A drift watch of another cluster (a destination of some Applications) whose
    /// triggers and announced changes go where this one's go.
    pub fn for_cluster(&self, client: kube::Client) -> Self {
        Self::with_channels(client, self.trigger.clone(), self.changes.clone())
    }

    /// Watches only `namespace` from now on (call before the first watch starts).
    pub fn scoped_to(mut self, namespace: Option<String>) -> Self {
        self.scope = namespace;
        self
    }

    /// A full sync of set `id` starts: forget earlier changes. Until it completes
    /// ([`Self::finish_full_sync`]) the watches vouch for nothing: a sync that fails leaves
    /// the cluster as it found it, drift included, and the next reconcile must plan in
    /// full again. Returns whether, until now, the watches vouched that nothing tether set
    /// changed since the last full sync (a difference this sync finds in an unchanged
    /// render is then one they missed).
    pub fn begin_full_sync(&self, id: &str) -> bool {
        let mut sets = self.sets.lock().expect("not poisoned");
        let state = sets.entry(id.to_string()).or_default();
        let vouched = state.verified && !state.drifted;
        state.last_full_plan = Some(std::time::Instant::now());
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

    /// Whether the backstop's full plan of set `id` is due: its last full plan is older
    /// than `period`, stretched by a jitter of up to +20 % that differs between sets (so
    /// that Applications synced together are not verified together).
    pub fn verification_due(&self, id: &str, period: std::time::Duration) -> bool {
        self.until_verification(id, period).is_zero()
    }

    /// How long until the backstop's full plan of set `id` is due (zero: now).
    pub fn until_verification(&self, id: &str, period: std::time::Duration) -> std::time::Duration {
        let sets = self.sets.lock().expect("not poisoned");
        let Some(last) = sets.get(id).and_then(|s| s.last_full_plan) else {
            return std::time::Duration::ZERO;
        };
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        let stretch = 1.0 + (hasher.finish() % 1000) as f64 / 5000.0;
        period.mul_f64(stretch).saturating_sub(last.elapsed())
    }

    /// Whether the watches saw `key` of set `id` at exactly `version` and did not take it
    /// for someone else's change since the current full sync began: a difference in that
    /// state is one they missed. `false` while the watch has not reached that version yet,
    /// or when too many members changed to tell.
    pub fn saw_unreported(&self, id: &str, key: &ObjectKey, version: &str) -> bool {
        let versions = self.versions.lock().expect("not poisoned");
        let sets = self.sets.lock().expect("not poisoned");
        let Some(state) = sets.get(id) else {
            return false;
        };
        versions.get(key).map(String::as_str) == Some(version)
            && !state.drift_overflow
            && !state.drifted_objects.contains(key)
    }

    /// The full sync of set `id` completed (planned everything, and applied what it was
    /// allowed to). If every kind of the set was watched from its start, the watches vouch
    /// for the set from now on. Otherwise `expected` holds each member's resourceVersion
    /// as the sync left it (as its writes and plan saw them): once the watches have seen
    /// each member at exactly that version, nothing was missed, and they vouch from then
    /// on, with no second full plan to establish that.
    pub fn finish_full_sync(&self, id: &str, expected: Vec<(ObjectKey, String)>) {
        let ready = self.ready.lock().expect("not poisoned").clone();
        // The same lock order as `saw_version`: versions, then sets.
        let seen = self.versions.lock().expect("not poisoned");
        let mut sets = self.sets.lock().expect("not poisoned");
        let Some(state) = sets.get_mut(id) else {
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
            .filter(|(key, version)| seen.get(key) != Some(version))
            .collect();
        // A version seen before a watch broke proves nothing about now: a broken watch
        // vouches once a live event shows each pending member (`saw_version`).
        let watching = state.kinds.iter().all(|k| ready.contains(k));
        state.verified = watching && state.pending.is_empty();
    }

    /// The watch saw `key` of set `id` at `version`.
    fn saw_version(&self, id: Option<&str>, key: ObjectKey, version: String) {
        // The same lock order as `finish_full_sync`: versions, then sets.
        let mut versions = self.versions.lock().expect("not poisoned");
        if let Some(id) = id
            && let Some(state) = self.sets.lock().expect("not poisoned").get_mut(id)
            && state.pending.get(&key) == Some(&version)
        {
            state.pending.remove(&key);
            state.verified = state.pending.is_empty();
        }
        versions.insert(key, version);
    }

    /// The members of set `id` someone changed or deleted since its last full sync, when
    /// correcting just those is enough: every kind of the set was watched since then, and
    /// few members drifted. Taking them clears the drift; later changes set it again.
    pub fn take_drifted(&self, id: &str) -> Option<BTreeSet<ObjectKey>> {
        let mut sets = self.sets.lock().expect("not poisoned");
        let state = sets.get_mut(id)?;
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
    pub fn require_full_sync(&self, id: &str) {
        if let Some(state) = self.sets.lock().expect("not poisoned").get_mut(id) {
            state.drifted = true;
            state.drift_overflow = true;
        }
    }

    /// Forgets what the watches know of set `id` (its Application moved to another agent):
    /// if it comes back, its first reconcile plans in full, as after a restart.
    pub fn forget_set(&self, id: &str) {
        self.sets.lock().expect("not poisoned").remove(id);
    }

    /// The full sync of set `id` left the cluster holding the render with this digest.
    pub fn set_applied_digest(&self, id: &str, digest: [u8; 32]) {
        if let Some(state) = self.sets.lock().expect("not poisoned").get_mut(id) {
            state.applied_digest = Some(digest);
        }
    }

    /// The digest of the render the cluster holds for set `id`, if known.
    pub fn applied_digest(&self, id: &str) -> Option<[u8; 32]> {
        self.sets
            .lock()
            .expect("not poisoned")
            .get(id)
            .and_then(|s| s.applied_digest)
    }

    /// Whether a periodic reconcile of set `id` may skip planning: `Some(status_changed)`
    /// when nothing but status changed since a full sync made while every kind was watched.
    pub fn may_skip(&self, id: &str) -> Option<bool> {
        let sets = self.sets.lock().expect("not poisoned");
        let state = sets.get(id)?;
        (state.verified && !state.drifted).then_some(state.status_changed)
    }

    /// Whether someone changed or deleted a member of set `id` since its last full sync.
    pub fn is_drifted(&self, id: &str) -> bool {
        self.sets
            .lock()
            .expect("not poisoned")
            .get(id)
            .is_some_and(|s| s.drifted)
    }

    /// Before a health read: the members whose status changed since the last one, which
    /// are now accounted for; `None` when too many changed to list (read them all).
    pub fn take_status_changes(&self, id: &str) -> Option<BTreeSet<ObjectKey>> {
        let mut sets = self.sets.lock().expect("not poisoned");
        let state = sets.get_mut(id)?;
        state.status_changed = false;
        let overflow = std::mem::take(&mut state.status_overflow);
        let changed = std::mem::take(&mut state.status_objects);
        (!overflow).then_some(changed)
    }

    /// Whether a member's status change triggers set `id`'s Application at once (only
    /// while the set is settled; see `SetState::follows_health`).
    pub fn follow_health(&self, id: &str, on: bool) {
        if let Some(state) = self.sets.lock().expect("not poisoned").get_mut(id) {
            state.follows_health = on;
        }
    }

    /// Starts watches for the `kinds` of set `id` (owned by `app`) before its full sync
    /// plans, and waits up to `timeout` until each has listed its objects once: from then
    /// on every write to a member is seen, so the sync counts as watched from its start.
    pub async fn watch_before_sync(
        &self,
        app: ObjectRef<Application>,
        id: &str,
        kinds: Vec<KindInfo>,
        timeout: std::time::Duration,
    ) {
        self.register(app, id, kinds);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let listed = self.listed.notified();
            tokio::pin!(listed);
            listed.as_mut().enable();
            let ready = self.ready.lock().expect("not poisoned").clone();
            if let Some(state) = self.sets.lock().expect("not poisoned").get_mut(id)
                && state.kinds.iter().all(|k| ready.contains(k))
            {
                state.watched_from_start = true;
                return;
            }
            if tokio::time::timeout_at(deadline, listed).await.is_err() {
                tracing::debug!(
                    set = id,
                    "watches not listed in time; the sync counts as unwatched"
                );
                return;
            }
        }
    }

    /// Where the watches announce each Application one of whose members changed.
    pub fn changes(&self) -> tokio::sync::broadcast::Sender<Changed> {
        self.changes.clone()
    }

    /// Tells whoever follows (the web UI) that a member of this object's set changed.
    fn announce(&self, object: &PartialObjectMeta<DynamicObject>) {
        if self.changes.receiver_count() == 0 {
            return;
        }
        let owner = set_of(object)
            .and_then(|id| self.owners.read().expect("not poisoned").get(&id).cloned());
        if let Some(owner) = owner {
            let _ = self.changes.send(Changed::new(owner));
        }
    }

    /// Stops every watch (the agent is stopping).
    pub fn stop(&self) {
        for task in self.tasks.lock().expect("not poisoned").drain(..) {
            task.abort();
        }
    }

    /// Records that `app` owns ApplySet `id` with objects of `kinds`, and starts a watch for
    /// every kind not watched yet. A kind whose watch has not listed yet means the current
    /// sync was not watched from its start.
    pub fn register(
        &self,
        app: ObjectRef<Application>,
        id: &str,
        kinds: impl IntoIterator<Item = KindInfo>,
    ) {
        self.owners
            .write()
            .expect("not poisoned")
            .insert(id.to_string(), app);
        let kinds: Vec<KindInfo> = kinds.into_iter().collect();
        {
            let ready = self.ready.lock().expect("not poisoned");
            let mut sets = self.sets.lock().expect("not poisoned");
            let state = sets.entry(id.to_string()).or_default();
            state.kinds = kinds
                .iter()
                .map(|k| (k.resource.group.clone(), k.resource.kind.clone()))
                .collect();
            if !state.kinds.iter().all(|k| ready.contains(k)) {
                state.watched_from_start = false;
            }
        }
        for kind in kinds {
            let key = (kind.resource.group.clone(), kind.resource.kind.clone());
            if !self.watched.lock().expect("not poisoned").insert(key) {
                continue;
            }
            let this = self.clone();
            let task = tokio::spawn(async move { this.watch_kind(kind).await });
            self.tasks.lock().expect("not poisoned").push(task);
        }
    }

    async fn watch_kind(self, kind: KindInfo) {
        let api: Api<PartialObjectMeta<DynamicObject>> = match &self.scope {
            None => Api::all_with(self.client.clone(), &kind.resource),
            Some(namespace) if kind.namespaced => {
                Api::namespaced_with(self.client.clone(), namespace, &kind.resource)
            }
            // Not this agent's to watch (nor, with its rights, to write).
            Some(_) => return,
        };
        let config = watcher::Config::default().labels(PART_OF_LABEL);
        // Errors (the API server restarting, the kind's CRD deleted) are retried with a
        // growing pause, not in a tight loop.
        let mut events = watcher(api, config)
            .backoff(WatchBackoff::default())
            .boxed();
        // Objects of this kind by uid (key and set), to tell after a gap in the watch which
        // ones went away meanwhile; and the uids listed again since the gap.
        let mut known: HashMap<String, (ObjectKey, Option<String>)> = HashMap::new();
        let mut relisted: Option<HashSet<String>> = None;
        let mut listed_once = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => {
                    tracing::trace!(kind = %kind.resource.kind, "watch lists");
                    relisted = Some(HashSet::new())
                }
                Ok(watcher::Event::InitApply(object)) => {
                    let (previous, now) = self.remember(&object);
                    trace_event("watch list item", &object, &previous, &now, None);
                    // A list after a gap shows only the newest state: any change to an
                    // object seen before may hide someone else's write.
                    if listed_once && previous.is_some_and(|p| p != now) {
                        self.notify(&kind, &object, Seen::ChangedMeanwhile);
                    }
                    if let (Some(relisted), Some(uid)) = (relisted.as_mut(), &object.metadata.uid) {
                        relisted.insert(uid.clone());
                    }
                    Self::know(&mut known, &kind, &object);
                    self.record_version(&kind, &object);
                }
                Ok(watcher::Event::Apply(object)) => {
                    let (previous, now) = self.remember(&object);
                    let key = member_key(&kind, &object);
                    // tether's field manager is not proof of this agent's write: what the
                    // write carries is. First sight: created by our apply, by someone else
                    // into the set, or before the watch existed.
                    // An apply of other values to the same fields leaves tether's entry
                    // as it was: the digest it carries moves.
                    let digest_moved = previous.as_ref().is_none_or(|p| p.digest != now.digest);
                    let classified = previous.as_ref().map(|p| classify(p, &now));
                    let as_tether = match classified {
                        Some(Change::Ours) | None => true,
                        Some(Change::Status) => digest_moved,
                        Some(Change::Foreign) => false,
                    };
                    let change = if as_tether && !self.applied_by_us(&object, &key, &now) {
                        Some(Change::Foreign)
                    } else {
                        classified
                    };
                    trace_event("watch event", &object, &previous, &now, change.as_ref());
                    match change {
                        Some(Change::Foreign) => self.notify(&kind, &object, Seen::Changed),
                        Some(Change::Status) => self.status_changed(&kind, &object),
                        Some(Change::Ours) | None => {}
                    }
                    Self::know(&mut known, &kind, &object);
                    self.record_version(&kind, &object);
                    self.announce(&object);
                }
                Ok(watcher::Event::InitDone) => {
                    tracing::trace!(kind = %kind.resource.kind, "watch listed");
                    if let Some(relisted) = relisted.take()
                        && listed_once
                    {
                        let gone: Vec<String> = known
                            .keys()
                            .filter(|uid| !relisted.contains(*uid))
                            .cloned()
                            .collect();
                        for uid in gone {
                            if let Some((key, id)) = known.remove(&uid) {
                                self.forget(&uid, &key);
                                if let Some(id) = id {
                                    self.report(&id, key, Seen::DeletedMeanwhile);
                                }
                            }
                        }
                    }
                    listed_once = true;
                    self.ready
                        .lock()
                        .expect("not poisoned")
                        .insert((kind.resource.group.clone(), kind.resource.kind.clone()));
                    self.listed.notify_waiters();
                }
                Ok(watcher::Event::Delete(object)) => {
                    let key = member_key(&kind, &object);
                    // An object whose ApplySet label was removed leaves the watch's
                    // selection as if deleted, its new state naming no set: the set it
                    // was in is the one it was known in.
                    let mut id = set_of(&object);
                    if let Some(uid) = &object.metadata.uid {
                        if let Some((_, known_in)) = known.remove(uid) {
                            id = id.or(known_in);
                        }
                        self.forget(uid, &key);
                    }
                    let what = if set_of(&object).is_none() && id.is_some() {
                        Seen::Unlabelled
                    } else {
                        Seen::Deleted
                    };
                    if let Some(id) = id {
                        self.report(&id, key, what);
                    }
                    self.announce(&object);
                }
                // kube's watcher resumes from the last resourceVersion it saw, so no event is
                // lost; after a 410 (too old) it lists again, and the list reports what
                // changed meanwhile. What matters is how soon it retries (`WatchBackoff`).
                Err(err) => {
                    tracing::debug!(%err, kind = %kind.resource.kind, "drift watch restarts")
                }
            }
        }
    }

    fn know(
        known: &mut HashMap<String, (ObjectKey, Option<String>)>,
        kind: &KindInfo,
        object: &PartialObjectMeta<DynamicObject>,
    ) {
        if let Some(uid) = &object.metadata.uid {
            known.insert(uid.clone(), (member_key(kind, object), set_of(object)));
        }
    }

    /// An object is gone: forget its fingerprints and version.
    fn forget(&self, uid: &str, key: &ObjectKey) {
        self.seen.lock().expect("not poisoned").remove(uid);
        self.versions.lock().expect("not poisoned").remove(key);
    }

    fn record_version(&self, kind: &KindInfo, object: &PartialObjectMeta<DynamicObject>) {
        if let Some(version) = object.metadata.resource_version.clone() {
            let id = set_of(object);
            self.saw_version(id.as_deref(), member_key(kind, object), version);
        }
    }

    /// Stores the object's fingerprints; returns the ones seen before (none at first sight)
    /// and the new ones.
    fn remember(&self, object: &PartialObjectMeta<DynamicObject>) -> (Option<Prints>, Prints) {
        let prints = fingerprints(object);
        let Some(uid) = object.metadata.uid.clone() else {
            return (None, prints);
        };
        let previous = self
            .seen
            .lock()
            .expect("not poisoned")
            .insert(uid, prints.clone());
        (previous, prints)
    }

    /// A member's status changed: its Application reads health again now (the controller
    /// merges triggers that arrive while one is queued), so Healthy and Degraded follow the
    /// cluster instead of the next poll.
    fn status_changed(&self, kind: &KindInfo, object: &PartialObjectMeta<DynamicObject>) {
        let Some(id) = set_of(object) else {
            return;
        };
        let trigger = match self.sets.lock().expect("not poisoned").get_mut(&id) {
            Some(state) => {
                if state.status_objects.len() < TARGETED_LIMIT {
                    state.status_objects.insert(member_key(kind, object));
                } else {
                    state.status_overflow = true;
                }
                // Already flagged, a reconcile is due and will read this one too.
                let was = std::mem::replace(&mut state.status_changed, true);
                !was && state.follows_health
            }
            None => return,
        };
        if !trigger {
            return;
        }
        let owner = self.owners.read().expect("not poisoned").get(&id).cloned();
        if let Some(owner) = owner {
            let _ = self.trigger.send(owner);
        }
    }

    fn notify(&self, kind: &KindInfo, object: &PartialObjectMeta<DynamicObject>, what: Seen) {
        if let Some(id) = set_of(object) {
            self.report(&id, member_key(kind, object), what);
        }
    }

    /// What this agent applies to the members of set `id` (their applied digests), known
    /// before it writes: a write under tether's field manager that carries another digest
    /// is another process's, and drift. A full sync gives every desired member
    /// (`complete`); a targeted correction, the ones it corrects.
    pub fn expect_applied(
        &self,
        id: &str,
        digests: impl IntoIterator<Item = (ObjectKey, String)>,
        complete: bool,
    ) {
        if let Some(state) = self.sets.lock().expect("not poisoned").get_mut(id) {
            if complete {
                state.applied.clear();
            }
            state.applied.extend(digests);
        }
    }

    /// Whether a write to `key` that looks like tether's own apply by its managedFields was
    /// this agent's: it carries the digest of what the agent applies. A member the agent
    /// knows nothing of yet (before its first full sync) is taken as its own; an object
    /// that joined a set whose members are known, without being one of them, is not.
    fn applied_by_us(
        &self,
        object: &PartialObjectMeta<DynamicObject>,
        key: &ObjectKey,
        now: &Prints,
    ) -> bool {
        let Some(id) = set_of(object) else {
            return true;
        };
        let sets = self.sets.lock().expect("not poisoned");
        let Some(state) = sets.get(&id).filter(|s| !s.applied.is_empty()) else {
            return true;
        };
        state
            .applied
            .get(key)
            .is_some_and(|wanted| now.digest.as_ref() == Some(wanted))
    }

    /// The sync of set `id` is about to prune these members: their deletion is tether's.
    pub fn expect_pruned(&self, id: &str, keys: impl IntoIterator<Item = ObjectKey>) {
        if let Some(state) = self.sets.lock().expect("not poisoned").get_mut(id) {
            state.pruning.extend(keys);
        }
    }

    /// Someone else changed or deleted `key`, a member of set `id`: remember it and
    /// trigger the owning Application (unless tether is pruning it).
    fn report(&self, id: &str, key: ObjectKey, what: Seen) {
        let name = key.name.clone();
        if let Some(state) = self.sets.lock().expect("not poisoned").get_mut(id) {
            if state.pruning.contains(&key) {
                if matches!(what, Seen::Deleted | Seen::DeletedMeanwhile) {
                    state.pruning.remove(&key);
                }
                return;
            }
            state.drifted = true;
            if state.drifted_objects.len() < TARGETED_LIMIT {
                state.drifted_objects.insert(key);
            } else {
                state.drift_overflow = true;
            }
        }
        let owner = self.owners.read().expect("not poisoned").get(id).cloned();
        if let Some(owner) = owner {
            tracing::info!(
                object = name,
                application = %owner,
                "drift: an owned object was {what}"
            );
            let _ = self.trigger.send(owner);
        }
    }
}

/// An Application whose state changed (its status, or one of its objects), numbered in
/// the order the agent saw the changes: whoever hears of the same change twice (every open
/// page) can tell it is the same.
#[derive(Debug, Clone)]
pub struct Changed {
    pub app: ObjectRef<Application>,
    pub seq: u64,
}

impl Changed {
    pub fn new(app: ObjectRef<Application>) -> Self {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Self {
            app,
            seq: SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// One watch event in the trace log: the object, its version, and how it was classified.
fn trace_event(
    what: &str,
    object: &PartialObjectMeta<DynamicObject>,
    previous: &Option<Prints>,
    now: &Prints,
    change: Option<&Change>,
) {
    tracing::trace!(
        object = object.metadata.name.as_deref().unwrap_or_default(),
        version = object
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default(),
        ?change,
        ?previous,
        ?now,
        "{what}"
    );
}

/// The ApplySet an object belongs to, from its label.
fn set_of(object: &PartialObjectMeta<DynamicObject>) -> Option<String> {
    object
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(PART_OF_LABEL))
        .cloned()
}

#[derive(Debug, Default)]
struct SetState {
    kinds: BTreeSet<(String, String)>,
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
    last_full_plan: Option<std::time::Instant>,
    /// Members the current sync prunes: their deletion is not drift.
    pruning: BTreeSet<ObjectKey>,
    /// Each desired member's digest as this agent applies it: an apply under tether's
    /// field manager that carries another is someone else's (rule 12).
    applied: HashMap<ObjectKey, String>,
}

/// What the watch saw happen to a member.
#[derive(Debug, Clone, Copy)]
enum Seen {
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

/// Up to this many drifted members are corrected one by one; more take a full sync.
const TARGETED_LIMIT: usize = 32;

/// Who changed an object, judged from its managedFields.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// Someone other than tether took or removed fields tether set, or deleted the object.
    Foreign,
    /// tether's own apply.
    Ours,
    /// Nothing tether set changed: status, or fields other managers own.
    Status,
}

/// A watched object's identity, as plans write it.
fn member_key(kind: &KindInfo, object: &PartialObjectMeta<DynamicObject>) -> ObjectKey {
    ObjectKey {
        group: kind.resource.group.clone(),
        kind: kind.resource.kind.clone(),
        namespace: object.metadata.namespace.clone().unwrap_or_default(),
        name: object.metadata.name.clone().unwrap_or_default(),
    }
}

/// What an object's managedFields say about tether's own apply entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Prints {
    /// The fields tether applied (its entry's fieldsV1).
    ours: u64,
    /// How long that fieldsV1 is: only tether's own apply can make it longer.
    ours_size: usize,
    /// When tether last applied the object (none while it owns no field at all).
    ours_time: Option<u64>,
    /// The object is being deleted.
    deleting: bool,
    /// What the last apply under tether's field manager carried of what it applied
    /// ([`crate::plan::fields::APPLIED_DIGEST_ANNOTATION`]).
    digest: Option<String>,
}

/// Who made the write between two states of an object, read from tether's own entry in
/// its managedFields. Whoever changes a value tether set takes that field from tether's
/// entry (an update, a scale, a forced apply) or removes it (a patch that deletes it), so
/// the entry shrinks, and its time stays, since only tether's own apply moves it. A write
/// that leaves tether's fields as they were cannot have changed a value tether set: a
/// controller writing fields of its own (the Deployment controller's revision annotation,
/// status) is not drift, and neither is a label someone added. Times have one-second
/// resolution: tether's apply that drops fields within the second of its last one looks
/// like someone else's (one needless reconcile, which writes nothing).
fn classify(previous: &Prints, now: &Prints) -> Change {
    if now.deleting && !previous.deleting {
        Change::Foreign
    } else if now.ours == previous.ours {
        Change::Status
    } else if (now.ours_time.is_some() && now.ours_time != previous.ours_time)
        || now.ours_size > previous.ours_size
    {
        Change::Ours
    } else {
        Change::Foreign
    }
}

fn fingerprints(object: &PartialObjectMeta<DynamicObject>) -> Prints {
    let hash = |value: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        value(&mut hasher);
        hasher.finish()
    };
    let ours = object
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|entry| {
            entry.manager.as_deref() == Some(FIELD_MANAGER)
                && entry.operation.as_deref() == Some("Apply")
                && entry.subresource.is_none()
        });
    let fields = ours.and_then(|e| e.fields_v1.as_ref().map(|f| f.0.to_string()));
    Prints {
        ours: hash(&|h| fields.hash(h)),
        ours_size: fields.as_ref().map_or(0, String::len),
        ours_time: ours
            .map(|entry| hash(&|h| entry.time.as_ref().map(|t| format!("{:?}", t.0)).hash(h))),
        deleting: object.metadata.deletion_timestamp.is_some(),
        digest: object
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(APPLIED_DIGEST_ANNOTATION))
            .cloned(),
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

/// Retries of a failed drift watch: 0.5 s, doubling up to 5 s, and from 0.5 s again once
/// it works. (kube's default grows to 30 s: after an outage of the API server, the watches
/// would come back that much later.)
struct WatchBackoff {
    next: std::time::Duration,
}

impl WatchBackoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(500);
    const MAX: std::time::Duration = std::time::Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<Self::Item> {
        let wait = self.next;
        self.next = (wait * 2).min(Self::MAX);
        Some(wait)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object tether applied at second 1.
    fn applied() -> Prints {
        Prints {
            ours: 10,
            ours_size: 100,
            ours_time: Some(1),
            deleting: false,
            digest: Some("d1".into()),
        }
    }

    #[test]
    fn who_wrote_is_read_from_tethers_own_managed_fields() {
        let before = applied();
        // kubectl edit, scale or set image: someone takes one of tether's fields.
        let edited = Prints {
            ours: 11,
            ours_size: 90,
            ..applied()
        };
        assert_eq!(classify(&before, &edited), Change::Foreign);
        // tether takes it back later: its own time moves.
        let corrected = Prints {
            ours_time: Some(3),
            ..applied()
        };
        assert_eq!(classify(&edited, &corrected), Change::Ours);
        // ... or within the same second as its last apply: its entry grows, which no one
        // else's write can make it do.
        assert_eq!(classify(&edited, &applied()), Change::Ours);
        // Someone takes a second field within the same second.
        let again = Prints {
            ours: 13,
            ours_size: 80,
            ..edited.clone()
        };
        assert_eq!(classify(&edited, &again), Change::Foreign);
        // tether's fields changed, no longer and with no new time: someone's write.
        let reshaped = Prints {
            ours: 14,
            ..applied()
        };
        assert_eq!(classify(&before, &reshaped), Change::Foreign);
        // tether's own apply of a new revision.
        let reapplied = Prints {
            ours: 15,
            ours_size: 90,
            ours_time: Some(5),
            ..applied()
        };
        assert_eq!(classify(&before, &reapplied), Change::Ours);
        // Someone takes every field tether had: its entry goes, and its time with it.
        let taken = Prints {
            ours: 16,
            ours_size: 0,
            ours_time: None,
            ..applied()
        };
        assert_eq!(classify(&before, &taken), Change::Foreign);
        // A deletion begins.
        let deleting = Prints {
            deleting: true,
            ..applied()
        };
        assert_eq!(classify(&before, &deleting), Change::Foreign);
        // A controller writes status or fields of its own: tether's entry is untouched.
        assert_eq!(classify(&before, &applied()), Change::Status);
    }
}
