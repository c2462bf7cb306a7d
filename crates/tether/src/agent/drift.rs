//! Drift detection from watch streams: a change made by hand to an object an Application
//! owns triggers that Application's reconcile at once, without polling.
//!
//! One metadata-only watch per kind in use, selecting objects with an ApplySet label.
//! Each object's fingerprint is its managedFields minus the status subresource. A write
//! that moved the time of tether's own apply entry is tether's (even when it took fields
//! back from someone); any other change outside status (an edit, a scale, a removed field
//! tether set) or a delete triggers the owning Application. It remembers which members
//! drifted, so that a few can be corrected without planning the whole set.
//!
//! It also tells a periodic reconcile when it may skip planning altogether (no-op is free):
//! when every kind of the set has been watched since the last full sync and nothing but
//! status changed, no request is needed for the Application's objects; when only status
//! changed, health is read again.

use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tokio::sync::mpsc;

use super::Application;
use crate::apply::applyset::PART_OF_LABEL;
use crate::cluster::discovery::KindInfo;
use crate::plan::FIELD_MANAGER;
use crate::render::ObjectKey;

#[derive(Clone)]
pub struct DriftWatch {
    client: kube::Client,
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
    trigger: mpsc::UnboundedSender<ObjectRef<Application>>,
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
        let watch = Self {
            client,
            owners: Default::default(),
            watched: Default::default(),
            seen: Default::default(),
            versions: Default::default(),
            ready: Default::default(),
            sets: Default::default(),
            trigger,
        };
        (watch, tokio_stream_from(receiver))
    }

    /// A full sync of set `id` starts: forget earlier changes. The sync counts as watched
    /// only if every kind it had last time is watched already.
    pub fn begin_full_sync(&self, id: &str) {
        let ready = self.ready.lock().expect("not poisoned").clone();
        let mut sets = self.sets.lock().expect("not poisoned");
        let state = sets.entry(id.to_string()).or_default();
        state.verified = !state.kinds.is_empty() && state.kinds.iter().all(|k| ready.contains(k));
        state.drifted = false;
        state.status_changed = false;
        state.applied_digest = None;
        state.drifted_objects.clear();
        state.drift_overflow = false;
        state.pending.clear();
    }

    /// A full sync of set `id` that began before its watches were running ended with its
    /// members at these resourceVersions (as its writes and plan saw them). Once the
    /// watches have seen each member at exactly that version, nothing was missed, and the
    /// set counts as watched from the sync on: later reconciles may skip, with no
    /// second full plan to establish that.
    pub fn expect_versions(&self, id: &str, expected: Vec<(ObjectKey, String)>) {
        let seen = self.versions.lock().expect("not poisoned");
        let mut sets = self.sets.lock().expect("not poisoned");
        let Some(state) = sets.get_mut(id) else {
            return;
        };
        if state.verified || expected.is_empty() {
            return;
        }
        state.pending = expected
            .into_iter()
            .filter(|(key, version)| seen.get(key) != Some(version))
            .collect();
        state.verified = state.pending.is_empty();
    }

    /// The watch saw `key` of set `id` at `version`.
    fn saw_version(&self, id: Option<&str>, key: ObjectKey, version: String) {
        // The same lock order as `expect_versions`: versions, then sets.
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

    /// After a health read: status changes so far are accounted for.
    pub fn health_read(&self, id: &str) {
        if let Some(state) = self.sets.lock().expect("not poisoned").get_mut(id) {
            state.status_changed = false;
        }
    }

    /// Records that `app` owns ApplySet `id` with objects of `kinds`, and starts a watch for
    /// every kind not watched yet.
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
        self.sets
            .lock()
            .expect("not poisoned")
            .entry(id.to_string())
            .or_default()
            .kinds = kinds
            .iter()
            .map(|k| (k.resource.group.clone(), k.resource.kind.clone()))
            .collect();
        for kind in kinds {
            let key = (kind.resource.group.clone(), kind.resource.kind.clone());
            if !self.watched.lock().expect("not poisoned").insert(key) {
                continue;
            }
            let this = self.clone();
            tokio::spawn(async move { this.watch_kind(kind).await });
        }
    }

    async fn watch_kind(self, kind: KindInfo) {
        let api: Api<PartialObjectMeta<DynamicObject>> =
            Api::all_with(self.client.clone(), &kind.resource);
        let config = watcher::Config::default().labels(PART_OF_LABEL);
        let mut events = watcher(api, config).boxed();
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::InitApply(object)) => {
                    let _ = self.remember(&object);
                    self.record_version(&kind, &object);
                }
                Ok(watcher::Event::Apply(object)) => {
                    match self.remember(&object) {
                        Change::Foreign => self.notify(&kind, &object, "changed"),
                        Change::Ours => {}
                        Change::Status => self.status_changed(&object),
                    }
                    self.record_version(&kind, &object);
                }
                Ok(watcher::Event::InitDone) => {
                    self.ready
                        .lock()
                        .expect("not poisoned")
                        .insert((kind.resource.group.clone(), kind.resource.kind.clone()));
                }
                Ok(watcher::Event::Delete(object)) => {
                    if let Some(uid) = &object.metadata.uid {
                        self.seen.lock().expect("not poisoned").remove(uid);
                    }
                    self.versions
                        .lock()
                        .expect("not poisoned")
                        .remove(&member_key(&kind, &object));
                    self.notify(&kind, &object, "deleted");
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(%err, kind = %kind.resource.kind, "drift watch restarts")
                }
            }
        }
    }

    fn record_version(&self, kind: &KindInfo, object: &PartialObjectMeta<DynamicObject>) {
        if let Some(version) = object.metadata.resource_version.clone() {
            let id = object
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(PART_OF_LABEL));
            self.saw_version(id.map(String::as_str), member_key(kind, object), version);
        }
    }

    /// Stores the object's fingerprints and says who changed it since the last event.
    fn remember(&self, object: &PartialObjectMeta<DynamicObject>) -> Change {
        let Some(uid) = object.metadata.uid.clone() else {
            return Change::Ours;
        };
        let prints = fingerprints(object);
        let previous = self
            .seen
            .lock()
            .expect("not poisoned")
            .insert(uid, prints.clone());
        match previous {
            // First sight (created by our apply, or before the watch existed).
            None => Change::Ours,
            Some(previous) => classify(&previous, &prints),
        }
    }

    fn status_changed(&self, object: &PartialObjectMeta<DynamicObject>) {
        if let Some(id) = object
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(PART_OF_LABEL))
            && let Some(state) = self.sets.lock().expect("not poisoned").get_mut(id)
        {
            state.status_changed = true;
        }
    }

    fn notify(&self, kind: &KindInfo, object: &PartialObjectMeta<DynamicObject>, what: &str) {
        let Some(id) = object
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(PART_OF_LABEL))
        else {
            return;
        };
        if let Some(state) = self.sets.lock().expect("not poisoned").get_mut(id) {
            state.drifted = true;
            if state.drifted_objects.len() < TARGETED_LIMIT {
                state.drifted_objects.insert(member_key(kind, object));
            } else {
                state.drift_overflow = true;
            }
        }
        let owner = self.owners.read().expect("not poisoned").get(id).cloned();
        if let Some(owner) = owner {
            tracing::info!(
                object = object.metadata.name.as_deref().unwrap_or_default(),
                application = %owner,
                "drift: an owned object was {what}"
            );
            let _ = self.trigger.send(owner);
        }
    }
}

#[derive(Debug, Default)]
struct SetState {
    kinds: BTreeSet<(String, String)>,
    /// The last full sync ran while every kind was watched.
    verified: bool,
    /// Someone else changed or deleted a member since.
    drifted: bool,
    /// A member's status changed since (health may differ).
    status_changed: bool,
    /// The digest of the render the last full sync left the cluster holding.
    applied_digest: Option<[u8; 32]>,
    /// The members changed or deleted by someone else since, while there are few of them.
    drifted_objects: BTreeSet<ObjectKey>,
    /// More than [`TARGETED_LIMIT`] members drifted: only a full sync will do.
    drift_overflow: bool,
    /// Members the watches have yet to see at the version the last full sync left them.
    pending: HashMap<ObjectKey, String>,
}

/// Up to this many drifted members are corrected one by one; more take a full sync.
const TARGETED_LIMIT: usize = 32;

/// Who changed an object, judged from its managedFields.
#[derive(Debug, PartialEq, Eq)]
enum Change {
    /// Someone other than tether changed fields outside status, or deleted it.
    Foreign,
    /// tether's own apply (or the first sight of the object).
    Ours,
    /// Only status changed.
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

/// What an object's managedFields (outside status) say about who wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Prints {
    /// Every other manager's entry: (manager, operation) → when it last wrote.
    foreign_times: Vec<(u64, u64)>,
    /// The fields the other managers own, and whether the object is being deleted.
    foreign: u64,
    /// tether's own applied fields.
    ours: u64,
    /// When tether last applied the object.
    ours_time: u64,
    /// How much each side owns (the length of its fieldsV1): who took fields from whom.
    ours_size: usize,
    foreign_size: usize,
}

/// Who made the write between two states of an object. A manager's entry gets a new time
/// when that manager writes; entries of managers whose fields the writer took shrink
/// without a new time. Times have one-second resolution, so tether's own write in the
/// same second as its last one may be taken for someone else's: one needless reconcile.
fn classify(previous: &Prints, now: &Prints) -> Change {
    let someone_wrote = now.foreign_times.iter().any(|(manager, time)| {
        previous
            .foreign_times
            .iter()
            .find(|(m, _)| m == manager)
            .is_none_or(|(_, t)| t != time)
    });
    if someone_wrote {
        Change::Foreign
    } else if now.ours_time != previous.ours_time {
        // tether wrote, perhaps taking fields back from someone.
        Change::Ours
    } else if now.foreign != previous.foreign {
        // No entry has a new time, yet others' fields changed: the object began to be
        // deleted, someone wrote twice in one second (taking tether's fields, or their own),
        // or tether took fields back in the same second as its last apply.
        let took_ours =
            now.ours_size < previous.ours_size && now.foreign_size > previous.foreign_size;
        let only_theirs =
            now.ours == previous.ours && now.foreign_times.len() == previous.foreign_times.len();
        if took_ours || only_theirs {
            Change::Foreign
        } else {
            Change::Ours
        }
    } else if now.ours != previous.ours {
        // Some of tether's fields went without anyone gaining them: removed by hand.
        Change::Foreign
    } else {
        // Neither someone's change nor tether's apply: a controller wrote status.
        Change::Status
    }
}

fn fingerprints(object: &PartialObjectMeta<DynamicObject>) -> Prints {
    let hash = |value: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        value(&mut hasher);
        hasher.finish()
    };
    let mut foreign = std::collections::hash_map::DefaultHasher::new();
    let mut foreign_times = Vec::new();
    let (mut ours, mut ours_time, mut ours_size, mut foreign_size) = (0, 0, 0, 0);
    for entry in object.metadata.managed_fields.iter().flatten() {
        if entry.subresource.as_deref() == Some("status") {
            continue;
        }
        let fields = entry.fields_v1.as_ref().map(|f| f.0.to_string());
        let time = hash(&|h| entry.time.as_ref().map(|t| format!("{:?}", t.0)).hash(h));
        if entry.manager.as_deref() == Some(FIELD_MANAGER)
            && entry.operation.as_deref() == Some("Apply")
        {
            ours = hash(&|h| fields.hash(h));
            ours_time = time;
            ours_size = fields.as_ref().map_or(0, String::len);
        } else {
            let manager = hash(&|h| {
                entry.manager.hash(h);
                entry.operation.hash(h);
            });
            foreign_times.push((manager, time));
            foreign_size += fields.as_ref().map_or(0, String::len);
            manager.hash(&mut foreign);
            fields.hash(&mut foreign);
        }
    }
    object
        .metadata
        .deletion_timestamp
        .is_some()
        .hash(&mut foreign);
    Prints {
        foreign_times,
        foreign: foreign.finish(),
        ours,
        ours_time,
        ours_size,
        foreign_size,
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An object tether applied at second 1 that no one else wrote to.
    fn applied() -> Prints {
        Prints {
            foreign_times: Vec::new(),
            foreign: 0,
            ours: 10,
            ours_time: 1,
            ours_size: 100,
            foreign_size: 0,
        }
    }

    #[test]
    fn who_wrote_is_read_from_the_managed_fields() {
        let before = applied();
        // kubectl edit: a new manager takes one of tether's fields.
        let edited = Prints {
            foreign_times: vec![(7, 2)],
            foreign: 70,
            ours: 11,
            ours_size: 90,
            foreign_size: 10,
            ..applied()
        };
        assert_eq!(classify(&before, &edited), Change::Foreign);
        // tether takes it back later: its own time moves, the editor's entry goes.
        let corrected = Prints {
            ours_time: 3,
            ..applied()
        };
        assert_eq!(classify(&edited, &corrected), Change::Ours);
        // ... or in the same second as its last apply: no new time anywhere.
        assert_eq!(classify(&edited, &applied()), Change::Ours);
        // A field of tether's removed by someone who then owns nothing.
        let removed = Prints {
            ours: 12,
            ours_size: 80,
            ..applied()
        };
        assert_eq!(classify(&before, &removed), Change::Foreign);
        // The editor writes again within the same second, taking another field of tether's.
        let again = Prints {
            foreign: 71,
            ours: 13,
            ours_size: 80,
            foreign_size: 20,
            ..edited.clone()
        };
        assert_eq!(classify(&edited, &again), Change::Foreign);
        // tether's own apply of a new revision.
        let reapplied = Prints {
            ours: 14,
            ours_time: 5,
            ..applied()
        };
        assert_eq!(classify(&before, &reapplied), Change::Ours);
        // A deletion begins.
        let deleting = Prints {
            foreign: 1,
            ..applied()
        };
        assert_eq!(classify(&before, &deleting), Change::Foreign);
        // Only the status subresource changed (its entries are left out).
        assert_eq!(classify(&before, &applied()), Change::Status);
    }
}
