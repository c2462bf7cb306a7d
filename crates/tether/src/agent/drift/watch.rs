//! The metadata-only watch of one kind: each event it sees is judged ([`super::prints`]),
//! recorded in the shared state ([`super::state`]), and turned into a trigger of the owning
//! Application or an announcement to the web UI. Start at [`DriftWatch::watch_kind`].

use std::collections::{HashMap, HashSet};

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};

use super::prints::{Prints, Writer, fingerprints, judge};
use super::state::Seen;
use super::{Changed, DriftWatch};
use crate::cluster::discovery::KindInfo;
use crate::inventory::PART_OF_LABEL;
use crate::object::ObjectKey;

/// What the watch of one kind remembers between events: its objects by uid (key and set),
/// to tell after a gap in the watch which ones went away meanwhile; and the uids listed
/// again since the gap.
struct KindWatch {
    kind: KindInfo,
    known: HashMap<String, (ObjectKey, Option<String>)>,
    relisted: Option<HashSet<String>>,
    listed_once: bool,
}

impl KindWatch {
    fn know(&mut self, object: &PartialObjectMeta<DynamicObject>) {
        if let Some(uid) = &object.metadata.uid {
            let known = (member_key(&self.kind, object), set_of(object));
            self.known.insert(uid.clone(), known);
        }
    }

    /// A list ended: after a gap, the objects known before that it did not show (uid, key
    /// and set), now forgotten.
    fn gone_since_gap(&mut self) -> Vec<(String, ObjectKey, Option<String>)> {
        let mut gone = Vec::new();
        if let Some(relisted) = self.relisted.take()
            && self.listed_once
        {
            let uids: Vec<String> = self
                .known
                .keys()
                .filter(|uid| !relisted.contains(*uid))
                .cloned()
                .collect();
            for uid in uids {
                if let Some((key, id)) = self.known.remove(&uid) {
                    gone.push((uid, key, id));
                }
            }
        }
        self.listed_once = true;
        gone
    }
}

impl DriftWatch {
    pub(super) async fn watch_kind(self, kind: KindInfo) {
        let Some(api) = self.api_for(&kind) else {
            return;
        };
        let config = watcher::Config::default().labels(PART_OF_LABEL);
        // Errors (the API server restarting, the kind's CRD deleted) are retried with a
        // growing pause, not in a tight loop.
        let mut events = watcher(api, config).backoff(watch_backoff()).boxed();
        let mut watch = KindWatch {
            kind,
            known: HashMap::new(),
            relisted: None,
            listed_once: false,
        };
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => {
                    tracing::trace!(kind = %watch.kind.resource.kind, "watch lists");
                    if watch.listed_once {
                        let kind = &watch.kind.resource;
                        self.state()
                            .relisting((kind.group.clone(), kind.kind.clone()));
                    }
                    watch.relisted = Some(HashSet::new())
                }
                Ok(watcher::Event::InitApply(object)) => self.list_item(&mut watch, &object),
                Ok(watcher::Event::Apply(object)) => self.applied(&mut watch, &object),
                Ok(watcher::Event::InitDone) => self.listed(&mut watch),
                Ok(watcher::Event::Delete(object)) => self.deleted(&mut watch, &object),
                // kube's watcher resumes from the last resourceVersion it saw, so no event is
                // lost; after a 410 (too old) it lists again, and the list reports what
                // changed meanwhile. What matters is how soon it retries (`watch_backoff`).
                Err(err) => {
                    tracing::debug!(%err, kind = %watch.kind.resource.kind, "drift watch restarts")
                }
            }
        }
    }

    /// The API to watch `kind` through; `None` when it is not this agent's to watch (nor,
    /// with its rights, to write): a cluster-scoped kind for an agent scoped to a namespace.
    fn api_for(&self, kind: &KindInfo) -> Option<Api<PartialObjectMeta<DynamicObject>>> {
        match &self.scope {
            None => Some(Api::all_with(self.client.clone(), &kind.resource)),
            Some(namespace) if kind.namespaced => Some(Api::namespaced_with(
                self.client.clone(),
                namespace,
                &kind.resource,
            )),
            Some(_) => None,
        }
    }

    /// An object on a list (the first, or after a gap in the watch).
    fn list_item(&self, watch: &mut KindWatch, object: &PartialObjectMeta<DynamicObject>) {
        let (previous, now) = self.remember(&watch.kind, object);
        trace_event("watch list item", object, &previous, &now, None);
        // A list after a gap shows only the newest state: any change to an object seen
        // before may hide someone else's write.
        if watch.listed_once && previous.is_some_and(|p| p != now) {
            self.notify(&watch.kind, object, Seen::ChangedMeanwhile);
        }
        if let (Some(relisted), Some(uid)) = (watch.relisted.as_mut(), &object.metadata.uid) {
            relisted.insert(uid.clone());
        }
        self.know(watch, object);
        self.record_version(&watch.kind, object);
    }

    /// A write the watch saw live.
    fn applied(&self, watch: &mut KindWatch, object: &PartialObjectMeta<DynamicObject>) {
        let (previous, now) = self.remember(&watch.kind, object);
        let key = member_key(&watch.kind, object);
        let change = judge(previous.as_ref(), &now, || {
            let id = set_of(object);
            self.state()
                .applied_by_us(id.as_deref(), &key, now.digest.as_deref())
        });
        trace_event("watch event", object, &previous, &now, change.as_ref());
        match change {
            Some(Writer::Foreign) => self.notify(&watch.kind, object, Seen::Changed),
            Some(Writer::Status) => self.status_changed(&watch.kind, object),
            Some(Writer::Ours) | None => {}
        }
        self.know(watch, object);
        self.record_version(&watch.kind, object);
        self.announce(object);
    }

    /// A list ended: what went away during a gap was deleted meanwhile, and the kind is
    /// watched from now on.
    fn listed(&self, watch: &mut KindWatch) {
        tracing::trace!(kind = %watch.kind.resource.kind, "watch listed");
        for (uid, key, id) in watch.gone_since_gap() {
            self.forget(&uid, &key);
            self.state().member(id.as_deref(), None, &key);
            if let Some(id) = id {
                self.report(&id, key, Seen::DeletedMeanwhile);
            }
        }
        let kind = &watch.kind.resource;
        self.state().listed((kind.group.clone(), kind.kind.clone()));
        self.listed.notify_waiters();
    }

    fn deleted(&self, watch: &mut KindWatch, object: &PartialObjectMeta<DynamicObject>) {
        let key = member_key(&watch.kind, object);
        // An object whose ApplySet label was removed leaves the watch's selection as if
        // deleted, its new state naming no set: the set it was in is the one it was known in.
        let mut id = set_of(object);
        if let Some(uid) = &object.metadata.uid {
            if let Some((_, known_in)) = watch.known.remove(uid) {
                self.state().member(known_in.as_deref(), None, &key);
                id = id.or(known_in);
            }
            self.forget(uid, &key);
        }
        self.state().member(set_of(object).as_deref(), None, &key);
        let what = if set_of(object).is_none() && id.is_some() {
            Seen::Unlabelled
        } else {
            Seen::Deleted
        };
        if let Some(id) = id {
            self.report(&id, key, what);
        }
        self.announce(object);
    }

    /// The watch of `watch`'s kind sees `object` now: in its own memory and in the sets'
    /// members (moved when its set label changed).
    fn know(&self, watch: &mut KindWatch, object: &PartialObjectMeta<DynamicObject>) {
        let was = object
            .metadata
            .uid
            .as_ref()
            .and_then(|uid| watch.known.get(uid))
            .and_then(|(_, set)| set.clone());
        let key = member_key(&watch.kind, object);
        self.state()
            .member(was.as_deref(), set_of(object).as_deref(), &key);
        watch.know(object);
    }

    /// Tells whoever follows (the web UI) that a member of this object's set changed.
    fn announce(&self, object: &PartialObjectMeta<DynamicObject>) {
        if self.changes.receiver_count() == 0 {
            return;
        }
        let owner = set_of(object).and_then(|id| self.state().owner(&id));
        if let Some(owner) = owner {
            let _ = self.changes.send(Changed::new(owner));
        }
    }

    /// An object is gone: forget its fingerprints and version.
    fn forget(&self, uid: &str, key: &ObjectKey) {
        self.state().forget(uid, key);
    }

    fn record_version(&self, kind: &KindInfo, object: &PartialObjectMeta<DynamicObject>) {
        if let Some(version) = object.metadata.resource_version.clone() {
            let id = set_of(object);
            let key = member_key(kind, object);
            self.state().saw_version(id.as_deref(), key, version);
        }
    }

    /// Stores the object's fingerprints; returns the ones seen before (none at first sight)
    /// and the new ones.
    fn remember(
        &self,
        kind: &KindInfo,
        object: &PartialObjectMeta<DynamicObject>,
    ) -> (Option<Prints>, Prints) {
        let prints = fingerprints(object);
        let uid = object.metadata.uid.clone();
        let key = member_key(kind, object);
        let previous = self.state().remember(uid, &key, prints.clone());
        (previous, prints)
    }

    /// A member's status changed: its Application reads health again now (the controller
    /// merges triggers that arrive while one is queued), so Healthy and Degraded follow the
    /// cluster instead of the next poll.
    fn status_changed(&self, kind: &KindInfo, object: &PartialObjectMeta<DynamicObject>) {
        let Some(id) = set_of(object) else {
            return;
        };
        let owner = self.state().status_changed(&id, member_key(kind, object));
        if let Some(owner) = owner {
            let _ = self.trigger.send(owner);
        }
    }

    fn notify(&self, kind: &KindInfo, object: &PartialObjectMeta<DynamicObject>, what: Seen) {
        if let Some(id) = set_of(object) {
            self.report(&id, member_key(kind, object), what);
        }
    }

    /// Someone else changed or deleted `key`, a member of set `id`: remember it and
    /// trigger the owning Application (unless tether is pruning it).
    fn report(&self, id: &str, key: ObjectKey, what: Seen) {
        let name = key.name.clone();
        let owner = self.state().report(id, key, what);
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

/// One watch event in the trace log: the object, its version, and how it was classified.
fn trace_event(
    what: &str,
    object: &PartialObjectMeta<DynamicObject>,
    previous: &Option<Prints>,
    now: &Prints,
    change: Option<&Writer>,
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

/// A watched object's identity, as plans write it.
fn member_key(kind: &KindInfo, object: &PartialObjectMeta<DynamicObject>) -> ObjectKey {
    ObjectKey {
        group: kind.resource.group.clone(),
        kind: kind.resource.kind.clone(),
        namespace: object.metadata.namespace.clone().unwrap_or_default(),
        name: object.metadata.name.clone().unwrap_or_default(),
    }
}

/// Retries of a failed drift watch: 0.5 s, doubling up to 5 s, and from 0.5 s again once
/// it works. (kube's default grows to 30 s: after an outage of the API server, the watches
/// would come back that much later.)
fn watch_backoff() -> kube::runtime::watcher::ExponentialBackoff {
    crate::duration::doubling(
        std::time::Duration::from_millis(500),
        std::time::Duration::from_secs(5),
    )
    .into()
}
