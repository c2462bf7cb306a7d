//! The agent (pull mode): a controller over `Application` resources that follows Git and
//! keeps the cluster converged with the same source → render → plan → apply → health
//! stages as push mode, writing what it did to each Application's status.
//!
//! Where things are:
//! - `controller`: the wiring ([`run`]): watches, controller, HTTP server, Leases.
//! - `reconcile`: one reconcile of one Application, on one screen; [`finalize`]: one
//!   being deleted (its objects deleted as `spec.deletionPolicy` says); `windows`: when
//!   its sync windows let it sync.
//! - `decide` (pure): which way a sync goes; `sync`: carrying it out.
//! - `status` (pure): what the status says after a sync; `memory`: what the agent
//!   remembers of each Application; `report`: what a reconcile tells (Events, and the
//!   sending it asks of [`notify`] and [`commit_status`]).
//! - [`drift`]: the watches of applied objects; [`clusters`], [`shard`], [`leader`]: where
//!   Applications apply and which agent acts (as whom: [`crate::tenancy`]).
//! - [`http`]: the HTTP server (webhooks, probes, metrics), the JSON API, the web UI.
//!
//! The `Application` resource itself lives below every stage, in [`crate::application`].

mod appsets;
pub mod clusters;
pub mod commit_status;
mod controller;
mod decide;
pub mod drift;
pub mod finalize;
pub mod http;
mod images;
pub mod leader;
mod memory;
pub mod notify;
mod pulls;
mod reconcile;
mod report;
pub mod shard;
pub mod slots;
mod status;
mod stored;
mod sync;
mod windows;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::Recorder;

use crate::app::plan_current;
pub use crate::application::{Application, ApplicationSpec, ApplicationStatus};
use crate::application::{ApplySetReference, HistoryEntry, SyncStatus, application_key};
use crate::health::HealthStatus;
use crate::source::git::Revision;
use clusters::Connected;
pub use controller::run;
pub(crate) use decide::LISTING_MAX_AGE;
use reconcile::confined;

/// The field manager of the agent's status writes.
const STATUS_MANAGER: &str = "tether-agent";
/// How long a full sync waits for new watches to list their kinds before it plans.
const WATCH_LIST_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest wait before the next periodic reconcile.
const MIN_REQUEUE: Duration = Duration::from_secs(1);

/// The pause before health is read again, after `progressing` of Progressing.
fn progress_backoff(progressing: Duration) -> Duration {
    (progressing / 10).max(MIN_REQUEUE)
}

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Watch Applications in this namespace only (default: all namespaces).
    pub namespace: Option<String>,
    /// Where Git repositories and renders are cached.
    pub cache_dir: std::path::PathBuf,
    pub concurrency: usize,
    /// Explicit kustomize and helm programs (else $TETHER_KUSTOMIZE / $TETHER_HELM, else PATH).
    pub kustomize_bin: Option<std::path::PathBuf>,
    pub helm_bin: Option<std::path::PathBuf>,
    /// Serve webhooks, /healthz, /readyz and /metrics here.
    pub listen: Option<std::net::SocketAddr>,
    /// The shared secret for webhooks (HMAC key, or GitLab's token); none turns them off.
    pub webhook_secret: Option<Vec<u8>>,
    /// The bearer token of the JSON API and the web UI; none turns both off.
    pub api_token: Option<Vec<u8>>,
    /// A token for read-only sessions of the web UI (everything shown, no action).
    pub api_readonly_token: Option<Vec<u8>>,
    /// The UI is reached over HTTPS: its session cookie is always Secure.
    pub secure_cookies: bool,
    /// Act only while holding this Lease (several agents, one leader).
    pub leader_election: Option<leader::ElectionOptions>,
    /// Split the Applications among several agents through shard Leases (each
    /// Application is reconciled by the one agent holding its shard).
    pub shards: Option<shard::ShardOptions>,
    /// The backstop: plan each Application in full at least this often (stretched by up
    /// to 20 %), even when the watches saw no change, and count what they missed
    /// (`tether_drift_missed_total`). `None` turns it off.
    pub verify_interval: Option<Duration>,
    /// Refuse Applications that name no `spec.serviceAccountName` (multi-tenant clusters:
    /// no Application acts with the agent's own rights).
    pub require_service_account: bool,
    /// Everything stays in `namespace`: Applications must apply there (no other namespace,
    /// no other cluster), and the drift watches watch only there, so the agent needs rights
    /// in that namespace alone (`tether install --namespaced`).
    pub namespaced: bool,
    /// Where to POST notifications of syncs, failures, degraded health and drift corrected.
    pub notify: notify::NotifyOptions,
    /// The memory limit of one render of an Application that sets no
    /// `spec.render.memoryLimit` (renders running at once share
    /// [`crate::render::external::set_memory_budget`]).
    pub render_memory: u64,
    /// The ref listings that this agent's fetches, webhooks, API and UI share (a webhook
    /// makes them stale). `Default` makes a new one: agents built from their own options
    /// share nothing.
    pub listings: std::sync::Arc<crate::source::git::Listings>,
    /// The API server's audit log: drift and conflicts name the user and user agent of
    /// each change (see [`crate::audit`]).
    pub audit_log: Option<std::path::PathBuf>,
}

/// The backstop's default period (see [`AgentOptions::verify_interval`]).
pub const DEFAULT_VERIFY_INTERVAL: Duration = Duration::from_secs(600);

impl AgentOptions {
    /// What the Application pipeline ([`crate::app`]) takes of the agent's options.
    pub fn app_options(&self) -> crate::app::AppOptions {
        crate::app::AppOptions {
            cache_dir: self.cache_dir.clone(),
            kustomize_bin: self.kustomize_bin.clone(),
            helm_bin: self.helm_bin.clone(),
            concurrency: self.concurrency,
            require_service_account: self.require_service_account,
            render_memory: self.render_memory,
            listings: self.listings.clone(),
            audit_log: self.audit_log.clone(),
            watched: None,
        }
    }
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            namespace: None,
            cache_dir: crate::source::git::cache_root(),
            concurrency: 16,
            kustomize_bin: None,
            helm_bin: None,
            listen: None,
            webhook_secret: None,
            api_token: None,
            api_readonly_token: None,
            secure_cookies: false,
            leader_election: None,
            shards: None,
            verify_interval: Some(DEFAULT_VERIFY_INTERVAL),
            require_service_account: false,
            namespaced: false,
            notify: Default::default(),
            render_memory: crate::render::external::DEFAULT_MEMORY_BYTES,
            listings: Default::default(),
            audit_log: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot install the Application CRD")]
    Install(#[source] kube::Error),
    #[error("cannot install the Application CRD: {0} was not established within 60 s")]
    NotEstablished(String),
    #[error("cannot install the Application CRD")]
    Established(#[source] kube::runtime::wait::Error),
    #[error("cannot write the status of {0}: {1}")]
    Status(String, String),
    #[error("the status of {0} changed meanwhile; reconciling again from the newest")]
    StaleStatus(String),
    #[error("lost the leader Lease; stopping so that the new leader alone acts")]
    LostLeadership,
    #[error("cannot serve on {0}")]
    Listen(String, #[source] std::io::Error),
    #[error(
        "--shards and --leader-elect cannot be used together: sharded agents all act, each on its own share"
    )]
    ShardsWithLeader,
    #[error("a namespaced agent needs the namespace it is confined to (-n)")]
    NamespacedWithoutNamespace,
    #[error("API discovery failed")]
    Discovery(#[source] kube::Error),
    #[error("{0}")]
    Notify(String),
}

/// Installs or upgrades the `applications.tether.dev` CRD (server-side apply) and waits
/// until it is established.
pub async fn install_crd(client: &kube::Client) -> Result<(), Error> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crate::application::crds() {
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("tether").force(),
            &Patch::Apply(&crd),
        )
        .await
        .map_err(Error::Install)?;
        let established = kube::runtime::wait::await_condition(
            crds.clone(),
            &name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        tokio::time::timeout(Duration::from_secs(60), established)
            .await
            .map_err(|_| Error::NotEstablished(name.clone()))?
            .map_err(Error::Established)?;
    }
    Ok(())
}

struct Context {
    notifier: notify::Notifier,
    commit_statuses: commit_status::CommitStatuses,
    /// The agent's own cluster: Applications, their status, Events and Secrets.
    client: kube::Client,
    /// Where Applications apply: the agent's cluster and the others they name.
    clusters: Arc<clusters::Clusters>,
    options: AgentOptions,
    /// What the Application pipeline takes of `options`, made once.
    pipeline: crate::app::AppOptions,
    recorder: Recorder,
    metrics: Arc<http::Metrics>,
    /// What it remembers of each Application between reconciles.
    memory: memory::Memory,
    /// With sharding: the shards this agent holds (it reconciles only their Applications).
    shards: Option<Arc<shard::Shards>>,
    /// The SyncWindows of the watched namespaces.
    windows: windows::Windows,
    /// Which reconcile runs next when all `--concurrency` slots are busy.
    slots: Arc<slots::Slots>,
}

impl Context {
    /// While an Application is Progressing, how soon its health is read again: 1 s at
    /// first, then a tenth of the time it has been progressing (a rollout of a minute is
    /// seen within 6 s of its end); the watches' status events usually come first.
    fn progress_backoff(&self, app: &Application, health: HealthStatus) -> Option<Duration> {
        let since = self.memory.with(&application_key(app), |remembered| {
            if health != HealthStatus::Progressing {
                remembered.progressing_since = None;
                return None;
            }
            Some(
                *remembered
                    .progressing_since
                    .get_or_insert_with(std::time::Instant::now),
            )
        })?;
        Some(progress_backoff(since.elapsed()))
    }

    fn count_reconcile(&self, app: &Application, result: &str, started: std::time::Instant) {
        tracing::debug!(
            application = %app.name_any(),
            result,
            seconds = started.elapsed().as_secs_f64(),
            "reconciled"
        );
        self.metrics
            .reconciles
            .get_or_create(&http::ResultLabels {
                result: result.into(),
            })
            .inc();
        self.metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Keeps the Applications-by-state gauge in step with this Application's latest state
    /// (changed under the memory's lock, so that two reconciles cannot interleave their
    /// counts).
    fn record_state(&self, app: &Application, sync: &str, health: &str) {
        let state = (sync.to_string(), health.to_string());
        self.memory.with(&application_key(app), |remembered| {
            let previous = remembered.state.replace(state.clone());
            if previous.as_ref() == Some(&state) {
                return;
            }
            if let Some(previous) = previous {
                self.uncount_state(previous);
            }
            let (sync, health) = state;
            self.metrics
                .applications
                .get_or_create(&http::StateLabels { sync, health })
                .inc();
        });
    }

    /// The Application `key` is gone: it no longer counts in the gauge of states, and a
    /// failure it could not report has no one left to tell.
    fn forget(&self, key: &str) {
        self.slots.forget(key);
        self.memory.forget(key, |gone| {
            if let Some(previous) = gone.state {
                self.uncount_state(previous);
            }
        });
    }

    /// Another agent takes `app` over: what this one knows of its objects may be stale when
    /// it comes back, so that is forgotten (its first reconcile then plans in full).
    fn forget_set(&self, app: &Application) {
        let id =
            crate::inventory::ApplySet::new(&app.name_any(), &app.spec.destination.namespace).id;
        if let Some(destination) = self.clusters.cached(app) {
            destination.forget_set(&id);
        }
    }

    /// One Application fewer in `state` (the caller holds the memory's lock); a state no
    /// Application is in leaves the gauge.
    fn uncount_state(&self, (sync, health): (String, String)) {
        let labels = http::StateLabels { sync, health };
        let before = self.metrics.applications.get_or_create(&labels).dec();
        if before <= 1 {
            self.metrics.applications.remove(&labels);
        }
    }
}

type Desired = (
    crate::object::ObjectKey,
    Option<crate::cluster::discovery::KindInfo>,
);

/// Whether someone asked for a sync (the annotation `tether sync` sets) that no reconcile
/// has carried out yet.
fn sync_requested(app: &Application) -> bool {
    let asked = app
        .annotations()
        .get(crate::application::SYNC_REQUEST_ANNOTATION)
        .cloned();
    app.status.as_ref().map(|s| &s.last_sync_request) != Some(&asked)
}

/// Why a sync failed (for the status), and its history entry when it has one (it ran hooks).
#[derive(Debug)]
struct Failure {
    message: String,
    entry: Option<HistoryEntry>,
    /// The revision that failed, once it was fetched.
    revision: Option<String>,
    /// The cluster is known to differ from the revision (an object failed to apply, or was
    /// refused): the status says OutOfSync. Otherwise a failure after the fetch says
    /// Unknown: nothing was compared.
    out_of_sync: bool,
}

impl From<crate::app::Error> for Failure {
    fn from(error: crate::app::Error) -> Self {
        String::from(error).into()
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Self {
            message,
            entry: None,
            revision: None,
            out_of_sync: false,
        }
    }
}

/// Where a sync acts: the destination, and the client acting there for the Application
/// (its ServiceAccount's, when it names one).
struct Acting<'a> {
    dest: &'a Arc<Connected>,
    client: &'a kube::Client,
    /// What the Application's sync windows let run now.
    gate: &'a crate::windows::Gate,
}

/// What one sync did, for the status.
struct Outcome {
    revision: Revision,
    sync: SyncStatus,
    health: HealthStatus,
    applied: Option<HistoryEntry>,
    apply_set: ApplySetReference,
    /// Where it was applied.
    destination: Arc<Connected>,
}

/// What [`plan_in_destination`] found, and how long each step took.
pub(crate) struct Planned {
    pub destination: Arc<Connected>,
    pub revision: Revision,
    pub plan: crate::plan::Plan,
    pub steps: crate::app::Steps,
}

/// [`plan_current`] in the Application's destination (the JSON API's and the web UI's view).
pub(crate) async fn plan_in_destination(
    home: &kube::Client,
    clusters: &clusters::Clusters,
    options: &AgentOptions,
    app: &Application,
    listing_max_age: Duration,
) -> Result<Planned, String> {
    let mut steps = crate::app::Steps::new();
    // What a sync would refuse is not planned either.
    confined(options, app)?;
    let destination = clusters.for_app(app).await?;
    // What the drift watches see, as the agent's syncs use it: members among many others
    // of their kind read alone, prune candidates without a LIST.
    let app_options = crate::app::AppOptions {
        watched: Some(destination.drift.watched()),
        ..options.app_options()
    };
    steps.done("destination");
    let (revision, plan) = plan_current(
        home,
        &destination.target,
        &app_options,
        app,
        listing_max_age,
        &mut steps,
    )
    .await?;
    Ok(Planned {
        destination,
        revision,
        plan,
        steps,
    })
}

/// ±10 % so that many Applications with one interval do not poll Git in lockstep.
fn jitter(base: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.9 + (nanos % 1000) as f64 / 5000.0;
    base.mul_f64(factor)
}

use crate::duration::now_rfc3339;

#[cfg(test)]
mod tests {
    use super::progress_backoff;
    use std::time::Duration;

    #[test]
    fn health_is_read_again_soon_while_progressing_and_less_often_as_it_goes_on() {
        assert_eq!(progress_backoff(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            progress_backoff(Duration::from_secs(12)),
            Duration::from_millis(1200)
        );
        assert_eq!(
            progress_backoff(Duration::from_secs(60)),
            Duration::from_secs(6)
        );
    }
}
