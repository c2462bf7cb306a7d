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
//!
//! Here is the public face ([`DriftWatch`]); [`state`] holds what the watches know (pure, one
//! lock), [`watch`] the watch of each kind, [`prints`] who wrote an object.

mod prints;
mod state;
mod watch;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc;

use super::Application;
use crate::cluster::discovery::KindInfo;
use crate::object::ObjectKey;
use state::{Kind, State};

#[derive(Clone)]
pub struct DriftWatch {
    client: kube::Client,
    /// Watch only this namespace (a namespaced agent, whose rights end there); cluster-scoped
    /// kinds are then not watched, and sets with them are planned in full at each reconcile.
    scope: Option<String>,
    /// What the watches know: owners, fingerprints, versions, listed kinds, and each set's
    /// state since its last full sync. One lock, never held across an await.
    state: Arc<Mutex<State>>,
    /// The kinds with a running watch, and those watches, stopped by [`Self::stop`].
    watches: Arc<Mutex<Watches>>,
    /// Wakes those waiting for a kind's first list ([`Self::watch_before_sync`]).
    listed: Arc<tokio::sync::Notify>,
    trigger: mpsc::UnboundedSender<ObjectRef<Application>>,
    /// Every change to a member (status included), by its Application: what the web UI
    /// shows live.
    changes: tokio::sync::broadcast::Sender<Changed>,
}

#[derive(Default)]
struct Watches {
    kinds: BTreeSet<Kind>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
            state: Default::default(),
            watches: Default::default(),
            listed: Default::default(),
            trigger,
            changes,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("not poisoned")
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

    /// What the watches see, for the plans: how many labelled objects of each kind are in
    /// each namespace, and each set's members (see [`crate::plan::Watched`]).
    pub fn watched(&self) -> Arc<dyn crate::plan::Watched> {
        Arc::new(Watching(self.state.clone()))
    }

    /// A full sync of set `id` starts: forget earlier changes. Until it completes
    /// ([`Self::finish_full_sync`]) the watches vouch for nothing: a sync that fails leaves
    /// the cluster as it found it, drift included, and the next reconcile must plan in
    /// full again. Returns whether, until now, the watches vouched that nothing tether set
    /// changed since the last full sync (a difference this sync finds in an unchanged
    /// render is then one they missed).
    pub fn begin_full_sync(&self, id: &str) -> bool {
        self.state().begin_full_sync(id, std::time::Instant::now())
    }

    /// Whether the backstop's full plan of set `id` is due: its last full plan is older
    /// than `period`, stretched by a jitter of up to +20 % that differs between sets (so
    /// that Applications synced together are not verified together).
    pub fn verification_due(&self, id: &str, period: std::time::Duration) -> bool {
        self.until_verification(id, period).is_zero()
    }

    /// How long until the backstop's full plan of set `id` is due (zero: now).
    pub fn until_verification(&self, id: &str, period: std::time::Duration) -> std::time::Duration {
        let now = std::time::Instant::now();
        self.state().until_verification(id, period, now)
    }

    /// Whether the watches saw `key` of set `id` at exactly `version` and did not take it
    /// for someone else's change since the current full sync began: a difference in that
    /// state is one they missed. `false` while the watch has not reached that version yet,
    /// or when too many members changed to tell.
    pub fn saw_unreported(&self, id: &str, key: &ObjectKey, version: &str) -> bool {
        self.state().saw_unreported(id, key, version)
    }

    /// The full sync of set `id` completed (planned everything, and applied what it was
    /// allowed to). If every kind of the set was watched from its start, the watches vouch
    /// for the set from now on. Otherwise `expected` holds each member's resourceVersion
    /// as the sync left it (as its writes and plan saw them): once the watches have seen
    /// each member at exactly that version, nothing was missed, and they vouch from then
    /// on, with no second full plan to establish that.
    pub fn finish_full_sync(&self, id: &str, expected: Vec<(ObjectKey, String)>) {
        self.state().finish_full_sync(id, expected);
    }

    /// The members of set `id` someone changed or deleted since its last full sync, when
    /// correcting just those is enough: every kind of the set was watched since then, and
    /// few members drifted. Taking them clears the drift; later changes set it again.
    pub fn take_drifted(&self, id: &str) -> Option<BTreeSet<ObjectKey>> {
        self.state().take_drifted(id)
    }

    /// A targeted correction of set `id` failed: the next reconcile must sync it in full.
    pub fn require_full_sync(&self, id: &str) {
        self.state().require_full_sync(id);
    }

    /// Forgets what the watches know of set `id` (its Application moved to another agent):
    /// if it comes back, its first reconcile plans in full, as after a restart.
    pub fn forget_set(&self, id: &str) {
        self.state().forget_set(id);
    }

    /// The full sync of set `id` left the cluster holding the render with this digest.
    pub fn set_applied_digest(&self, id: &str, digest: [u8; 32]) {
        self.state().set_applied_digest(id, digest);
    }

    /// The digest of the render the cluster holds for set `id`, if known.
    pub fn applied_digest(&self, id: &str) -> Option<[u8; 32]> {
        self.state().applied_digest(id)
    }

    /// Whether a periodic reconcile of set `id` may skip planning: `Some(status_changed)`
    /// when nothing but status changed since a full sync made while every kind was watched.
    pub fn may_skip(&self, id: &str) -> Option<bool> {
        self.state().may_skip(id)
    }

    /// Whether someone changed or deleted a member of set `id` since its last full sync.
    pub fn is_drifted(&self, id: &str) -> bool {
        self.state().is_drifted(id)
    }

    /// Before a health read: the members whose status changed since the last one, which
    /// are now accounted for; `None` when too many changed to list (read them all).
    pub fn take_status_changes(&self, id: &str) -> Option<BTreeSet<ObjectKey>> {
        self.state().take_status_changes(id)
    }

    /// Whether a member's status change triggers set `id`'s Application at once (only
    /// while the set is settled; see `SetState::follows_health`). A change seen after the
    /// last health read and before the set is followed again triggers it now: the next
    /// change would not (one is already due).
    pub fn follow_health(&self, id: &str, on: bool) {
        let owner = self.state().follow_health(id, on);
        if let Some(owner) = owner {
            let _ = self.trigger.send(owner);
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
            if self.state().start_watched(id) {
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

    /// Stops every watch (the agent is stopping).
    pub fn stop(&self) {
        for task in self.watches.lock().expect("not poisoned").tasks.drain(..) {
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
        let kinds: Vec<KindInfo> = kinds.into_iter().collect();
        let keys = kinds.iter().map(kind_key).collect();
        self.state().register(app, id, keys);
        for kind in kinds {
            let mut watches = self.watches.lock().expect("not poisoned");
            if !watches.kinds.insert(kind_key(&kind)) {
                continue;
            }
            let this = self.clone();
            watches
                .tasks
                .push(tokio::spawn(async move { this.watch_kind(kind).await }));
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
        self.state().expect_applied(id, digests, complete);
    }

    /// The sync of set `id` is about to prune these members: their deletion is tether's.
    pub fn expect_pruned(&self, id: &str, keys: impl IntoIterator<Item = ObjectKey>) {
        self.state().expect_pruned(id, keys);
    }
}

fn kind_key(kind: &KindInfo) -> Kind {
    (kind.resource.group.clone(), kind.resource.kind.clone())
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

fn tokio_stream_from<T: Send + 'static>(
    mut receiver: mpsc::UnboundedReceiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

/// The plans' view of the watches' state ([`DriftWatch::watched`]).
struct Watching(Arc<Mutex<State>>);

impl crate::plan::Watched for Watching {
    fn crowd(&self, group: &str, kind: &str, namespace: &str) -> usize {
        let state = self.0.lock().expect("not poisoned");
        state.crowd(group, kind, namespace)
    }

    fn members(&self, id: &str, group: &str, kind: &str, namespace: &str) -> Option<Vec<String>> {
        let state = self.0.lock().expect("not poisoned");
        state.members_of(id, group, kind, namespace)
    }
}
