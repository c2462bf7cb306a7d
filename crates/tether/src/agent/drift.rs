//! Drift detection from watch streams: a change made by hand to an object an Application
//! owns triggers that Application's reconcile at once, without polling.
//!
//! One metadata-only watch per kind in use, selecting objects with an ApplySet label.
//! Each object's fingerprint is its managedFields minus the status subresource and minus
//! tether's own applies: status updates and tether's writes change nothing, while an edit,
//! a scale or a delete by anyone else triggers the owning Application.

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

#[derive(Clone)]
pub struct DriftWatch {
    client: kube::Client,
    /// ApplySet id → the Application that owns the set.
    owners: Arc<RwLock<HashMap<String, ObjectRef<Application>>>>,
    /// Kinds (group, kind) with a running watch.
    watched: Arc<Mutex<BTreeSet<(String, String)>>>,
    /// Object uid → fingerprint of the last state seen.
    seen: Arc<Mutex<HashMap<String, u64>>>,
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
            trigger,
        };
        (watch, tokio_stream_from(receiver))
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
                    self.remember(&object);
                }
                Ok(watcher::Event::Apply(object)) => {
                    if self.remember(&object) {
                        self.notify(&object, "changed");
                    }
                }
                Ok(watcher::Event::Delete(object)) => {
                    if let Some(uid) = &object.metadata.uid {
                        self.seen.lock().expect("not poisoned").remove(uid);
                    }
                    self.notify(&object, "deleted");
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(%err, kind = %kind.resource.kind, "drift watch restarts")
                }
            }
        }
    }

    /// Stores the object's fingerprint; true when it differs from the last one seen.
    fn remember(&self, object: &PartialObjectMeta<DynamicObject>) -> bool {
        let Some(uid) = object.metadata.uid.clone() else {
            return false;
        };
        let print = fingerprint(object);
        let previous = self.seen.lock().expect("not poisoned").insert(uid, print);
        previous.is_some_and(|p| p != print)
    }

    fn notify(&self, object: &PartialObjectMeta<DynamicObject>, what: &str) {
        let Some(id) = object
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(PART_OF_LABEL))
        else {
            return;
        };
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

/// What others than tether changed: managedFields without status and without tether's applies.
fn fingerprint(object: &PartialObjectMeta<DynamicObject>) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for entry in object.metadata.managed_fields.iter().flatten() {
        let ours = entry.manager.as_deref() == Some(FIELD_MANAGER)
            && entry.operation.as_deref() == Some("Apply");
        if ours || entry.subresource.as_deref() == Some("status") {
            continue;
        }
        entry.manager.hash(&mut hasher);
        entry.operation.hash(&mut hasher);
        entry.subresource.hash(&mut hasher);
        entry
            .fields_v1
            .as_ref()
            .map(|f| f.0.to_string())
            .hash(&mut hasher);
        entry
            .time
            .as_ref()
            .map(|t| format!("{:?}", t.0))
            .hash(&mut hasher);
    }
    object
        .metadata
        .deletion_timestamp
        .is_some()
        .hash(&mut hasher);
    hasher.finish()
}

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}
