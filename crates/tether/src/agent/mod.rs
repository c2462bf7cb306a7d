//! The agent (pull mode): a controller over `Application` resources that follows Git and
//! keeps the cluster converged with the same source → render → plan → apply → health
//! stages as push mode, writing what it did to each Application's status.
//!
//! Start at [`run`]; one reconcile of one Application is `reconcile`.

pub mod api;
pub mod application;
pub mod clusters;
pub mod commit_status;
mod decide;
pub mod drift;
pub mod leader;
mod memory;
pub mod notify;
pub mod server;
pub mod shard;
mod status;
pub mod tenancy;
pub mod ui;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{CustomResourceExt, Resource, ResourceExt};
use serde_json::json;

use crate::app::{digest_of, fetch, git_source, plan_app, plan_current, render_app};
use crate::apply::{ApplyOptions, apply};
use crate::cluster::describe;
use crate::cluster::discovery::Resolver;
use crate::duration::parse_duration;
use crate::health::{self, HealthStatus};
use crate::plan::{Action as PlanAction, plan};
use crate::source::git::Revision;
pub use application::{Application, ApplicationSpec, ApplicationStatus};
use application::{ApplySetReference, HistoryEntry, HookRecord, SyncStatus, application_key};
use clusters::Destination;

/// The field manager of the agent's status writes.
const STATUS_MANAGER: &str = "tether-agent";
pub(crate) use decide::LISTING_MAX_AGE;
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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot install the Application CRD: {0}")]
    Install(String),
    #[error("cannot write the status of {0}: {1}")]
    Status(String, String),
    #[error("the status of {0} changed meanwhile; reconciling again from the newest")]
    StaleStatus(String),
    #[error("lost the leader Lease; stopping so that the new leader alone acts")]
    LostLeadership,
    #[error("cannot serve on {0}: {1}")]
    Listen(String, String),
    #[error(
        "--shards and --leader-elect cannot be used together: sharded agents all act, each on its own share"
    )]
    ShardsWithLeader,
    #[error("a namespaced agent needs the namespace it is confined to (-n)")]
    NamespacedWithoutNamespace,
    #[error("API discovery failed: {0}")]
    Discovery(String),
    #[error("{0}")]
    Notify(String),
}

/// Installs or upgrades the `applications.tether.dev` CRD (server-side apply) and waits
/// until it is established.
pub async fn install_crd(client: &kube::Client) -> Result<(), Error> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = Application::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply("tether").force(),
        &Patch::Apply(&crd),
    )
    .await
    .map_err(|e| Error::Install(e.to_string()))?;
    let established = kube::runtime::wait::await_condition(
        crds,
        &name,
        kube::runtime::wait::conditions::is_crd_established(),
    );
    tokio::time::timeout(Duration::from_secs(60), established)
        .await
        .map_err(|_| Error::Install(format!("{name} was not established within 60 s")))?
        .map_err(|e| Error::Install(e.to_string()))?;
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
    recorder: Recorder,
    metrics: Arc<server::Metrics>,
    /// What it remembers of each Application between reconciles.
    memory: memory::Memory,
    /// With sharding: the shards this agent holds (it reconciles only their Applications).
    shards: Option<Arc<shard::Shards>>,
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
            .get_or_create(&server::ResultLabels {
                result: result.into(),
            })
            .inc();
        self.metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// Keeps the Applications-by-state gauge in step with this Application's latest state.
    fn record_state(&self, app: &Application, sync: &str, health: &str) {
        let state = (sync.to_string(), health.to_string());
        let previous = self.memory.with(&application_key(app), |remembered| {
            remembered.state.replace(state.clone())
        });
        if previous.as_ref() == Some(&state) {
            return;
        }
        if let Some(previous) = previous {
            self.uncount_state(previous);
        }
        let (sync, health) = state;
        self.metrics
            .applications
            .get_or_create(&server::StateLabels { sync, health })
            .inc();
    }

    /// The Application `key` is gone: it no longer counts in the gauge of states, and a
    /// failure it could not report has no one left to tell.
    fn forget(&self, key: &str) {
        if let Some(previous) = self.memory.forget(key).and_then(|gone| gone.state) {
            self.uncount_state(previous);
        }
    }

    /// Another agent takes `app` over: what this one knows of its objects may be stale when
    /// it comes back, so that is forgotten (its first reconcile then plans in full).
    fn forget_set(&self, app: &Application) {
        let id =
            crate::inventory::ApplySet::new(&app.name_any(), &app.spec.destination.namespace).id;
        if let Some(destination) = self.clusters.cached(app) {
            destination.drift.forget_set(&id);
            destination
                .desired
                .lock()
                .expect("not poisoned")
                .remove(&id);
        }
    }

    /// One Application fewer in `state`; a state no Application is in leaves the gauge.
    fn uncount_state(&self, (sync, health): (String, String)) {
        let labels = server::StateLabels { sync, health };
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

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: kube::Client,
    options: AgentOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    if options.shards.is_some() && options.leader_election.is_some() {
        return Err(Error::ShardsWithLeader);
    }
    if options.namespaced && options.namespace.is_none() {
        return Err(Error::NamespacedWithoutNamespace);
    }
    let shards = options
        .shards
        .clone()
        .map(|o| shard::Shards::new(client.clone(), o));
    let resolver = Arc::new(
        Resolver::new(client.clone())
            .await
            .map_err(|e| Error::Discovery(e.to_string()))?,
    );
    let applications: Api<Application> = match &options.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "tether-agent".into(),
            // Sharded agents say which of them acted.
            instance: match &shards {
                Some(shards) => Some(shards.options().identity.clone()),
                None => std::env::var("HOSTNAME").ok(),
            },
        },
    );
    let concurrency = options.concurrency;
    let (drift, drifted) = drift::DriftWatch::new(client.clone());
    let drift = drift.scoped_to(options.namespace.clone().filter(|_| options.namespaced));
    let changes = drift.changes();
    let home = clusters::Target::home(client.clone(), resolver);
    let clusters = Arc::new(clusters::Clusters::new(Destination::new(home, drift)));
    let metrics = Arc::new(server::Metrics::default());
    let (webhook_trigger, webhooks) = tokio::sync::mpsc::unbounded_channel();
    let shard_trigger = webhook_trigger.clone();
    // Reconcile on spec changes (generation), not on the status this agent writes: a sync
    // happens when Git, the spec, a watched object or a webhook says so, or at the interval.
    let (store, writer) = kube::runtime::reflector::store();
    // A deleted Application is not reconciled (the store no longer holds it): what the
    // agent keeps about it is forgotten here: on its Delete event, and after a relist
    // (deletions while the watch was down come as no event), for every key the store lacks.
    let (gone_sender, mut gone) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
    // Ready (/readyz) once the first list of Applications is in: seen here, on the stream
    // itself. (`Store::wait_until_ready` from a second task never woke: the store's one-shot
    // keeps the waker of its last poller only, the controller's.)
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listed = ready.clone();
    let applications = watcher(applications, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| match event {
            Ok(watcher::Event::Delete(app)) => {
                let _ = gone_sender.send(Some(application_key(app)));
            }
            Ok(watcher::Event::InitDone) => {
                listed.store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = gone_sender.send(None);
            }
            _ => {}
        })
        .applied_objects()
        .predicate_filter(spec_or_sync_request, Default::default());
    let controller = Controller::for_stream(applications, store.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency as u16));
    let server = match options.listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| Error::Listen(address.to_string(), e.to_string()))?;
            let relay = shards.clone().map(|shards| server::Relay {
                client: client.clone(),
                shards,
            });
            let api = options.api_token.as_ref().map(|token| api::ApiState {
                applications: store.clone(),
                trigger: webhook_trigger.clone(),
                token: Arc::new(token.clone()),
                client: client.clone(),
                clusters: clusters.clone(),
                options: options.clone(),
                relay: relay.clone(),
            });
            // The web UI, with the API and its token.
            let ui = api.clone().map(|api| {
                ui::start(
                    api,
                    options.api_readonly_token.clone(),
                    changes,
                    options.namespace.clone(),
                )
            });
            let (ui, ui_tasks) = match ui {
                Some((state, tasks)) => (Some(state), tasks),
                None => (None, Vec::new()),
            };
            let app = server::router(
                metrics.clone(),
                store.clone(),
                webhook_trigger,
                options.webhook_secret.clone(),
                ready.clone(),
                api,
                relay,
            );
            let app = match ui {
                Some(ui) => app.merge(ui::routes(ui)),
                None => app,
            };
            tracing::info!(%address, "serving webhooks, health and metrics");
            Some(AbortOnDrop(tokio::spawn(async move {
                // The UI's watches live as long as the server.
                let _tasks: Vec<AbortOnDrop> = ui_tasks.into_iter().map(AbortOnDrop).collect();
                if let Err(err) = axum::serve(listener, app).await {
                    tracing::warn!(%err, "the HTTP server stopped");
                }
            })))
        }
        None => None,
    };
    let notifier =
        notify::Notifier::new(options.notify.clone(), metrics.clone()).map_err(Error::Notify)?;
    let commit_statuses =
        commit_status::CommitStatuses::new(metrics.clone()).map_err(Error::Notify)?;
    let context = Arc::new(Context {
        notifier,
        commit_statuses,
        client,
        clusters: clusters.clone(),
        options,
        recorder,
        metrics,
        memory: Default::default(),
        shards: shards.clone(),
    });
    // Sharded: keep this agent's shards; reconcile each Application of a shard it takes
    // (they were skipped while another agent held it), forget those of a shard it gives up.
    let _sharding = shards.clone().map(|shards| {
        let (store, trigger, context) = (store.clone(), shard_trigger.clone(), context.clone());
        let mine = shards.clone();
        AbortOnDrop(tokio::spawn(shards.run(move |shard, change| {
            context.metrics.shards_held.set(mine.held().len() as i64);
            let of = mine.options().shards;
            let apps = store.state().into_iter();
            for app in apps.filter(|app| shard::shard_of(&application_key(app), of) == shard) {
                match change {
                    shard::Change::Taken => {
                        let _ = trigger
                            .send(kube::runtime::reflector::ObjectRef::from_obj(app.as_ref()));
                    }
                    shard::Change::GivenUp => {
                        context.forget(&application_key(&app));
                        context.forget_set(&app);
                    }
                }
            }
        })))
    });
    let _forgetting = AbortOnDrop(tokio::spawn({
        let context = context.clone();
        let store = store.clone();
        async move {
            while let Some(gone) = gone.recv().await {
                match gone {
                    Some(key) => context.forget(&key),
                    None => {
                        let present: std::collections::HashSet<String> = store
                            .state()
                            .iter()
                            .map(|app| application_key(app))
                            .collect();
                        let known: Vec<String> = context
                            .memory
                            .keys()
                            .into_iter()
                            .filter(|key| !present.contains(key))
                            .collect();
                        for key in known {
                            context.forget(&key);
                        }
                    }
                }
            }
        }
    }));
    // With leader election, wait for the Lease (serving health and metrics meanwhile); stop
    // when it is lost, so that two agents never act at once.
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lost_signal = Arc::new(tokio::sync::Notify::new());
    let mut renewal = None;
    if let Some(election) = context.options.leader_election.clone() {
        let election = leader::Election::new(context.client.clone(), election);
        let lease_lost = tokio::select! {
            lease_lost = election.lead() => lease_lost,
            _ = shutdown.clone() => {
                drop(server);
                return Ok(());
            }
        };
        let lost = lost.clone();
        let lost_signal = lost_signal.clone();
        // Renewal lives exactly as long as this function: if the agent's task dies, so does
        // its claim on the Lease.
        renewal = Some(AbortOnDrop(tokio::spawn(async move {
            lease_lost.await;
            lost.store(true, std::sync::atomic::Ordering::Relaxed);
            lost_signal.notify_one();
        })));
    }
    let stop = {
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                _ = shutdown => {},
                _ = lost_signal.notified() => {},
            }
        }
    };
    let mut webhooks = webhooks;
    let triggers = futures::stream::select(
        drifted,
        futures::stream::poll_fn(move |cx| webhooks.poll_recv(cx)),
    );
    controller
        .reconcile_on(triggers)
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, context.clone())
        .for_each(|result| async move {
            match result {
                Err(kube::runtime::controller::Error::ReconcilerFailed(Error::StaleStatus(name), _)) => {
                    tracing::debug!(application = %name, "status changed meanwhile; reconciling again");
                }
                Err(err) => tracing::warn!(%err, "reconcile failed"),
                Ok(_) => {}
            }
        })
        .await;
    context.clusters.stop();
    drop(_sharding);
    if let Some(shards) = &context.shards {
        shards.leave().await;
    }
    drop(server);
    drop(renewal);
    if lost.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Error::LostLeadership);
    }
    Ok(())
}

/// Whether someone asked for a sync (the annotation `tether sync` sets) that no reconcile
/// has carried out yet.
fn sync_requested(app: &Application) -> bool {
    let asked = app
        .annotations()
        .get(application::SYNC_REQUEST_ANNOTATION)
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

/// A spawned task that ends when this handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reconcile when the spec changes (generation) or `tether sync` asks (annotation).
fn spec_or_sync_request(app: &Application) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    app.metadata.generation.hash(&mut hasher);
    app.annotations()
        .get(application::SYNC_REQUEST_ANNOTATION)
        .hash(&mut hasher);
    app.annotations()
        .get(application::REFRESH_ANNOTATION)
        .hash(&mut hasher);
    Some(hasher.finish())
}

fn error_policy(_app: Arc<Application>, err: &Error, _ctx: Arc<Context>) -> Action {
    if let Error::StaleStatus(_) = err {
        tracing::debug!(%err);
        return Action::requeue(Duration::from_millis(100));
    }
    tracing::warn!(%err, "will retry");
    Action::requeue(Duration::from_secs(5))
}

/// Where a sync acts: the destination, and the client acting there for the Application
/// (its ServiceAccount's, when it names one).
struct Acting<'a> {
    dest: &'a Arc<Destination>,
    client: &'a kube::Client,
}

/// What one sync did, for the status.
struct Outcome {
    revision: Revision,
    sync: SyncStatus,
    health: HealthStatus,
    applied: Option<HistoryEntry>,
    apply_set: ApplySetReference,
    /// Where it was applied.
    destination: Arc<Destination>,
}

/// One reconcile of one Application: resolve, render, plan, apply when allowed, record.
async fn reconcile(cached: Arc<Application>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Sharded: only the agent holding the Application's shard acts on it; the shard is not
    // given up while this reconcile runs.
    let _in_shard = match &ctx.shards {
        Some(shards) => match shards.begin(&application_key(&cached)) {
            shard::Begin::Act(guard) => Some(guard),
            // Reconciled again when this agent takes the shard.
            shard::Begin::NotHeld => return Ok(Action::await_change()),
            shard::Begin::Stale => return Ok(Action::requeue(shards.options().renew_every)),
        },
        None => None,
    };
    let started = std::time::Instant::now();
    let Some(app) = read_fresh(&ctx, &cached).await? else {
        return Ok(Action::await_change());
    };
    report_late_failure(&ctx, &app).await;
    take_refresh(&ctx, &app);
    let interval =
        parse_duration(&app.spec.sync_policy.interval).unwrap_or(Duration::from_secs(60));
    let status = app.status.clone().unwrap_or_default();
    if app.spec.suspend {
        let status = status::suspended(&app, status, &now_rfc3339());
        write_status(&ctx, &app, status).await?;
        return Ok(Action::requeue(interval));
    }
    if let Some(waiting) = unready_dependency(&ctx, &app).await {
        let status = status::waiting_for(&app, status, &waiting, &now_rfc3339());
        write_status(&ctx, &app, status).await?;
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    match sync(&ctx, &app).await {
        Ok(outcome) => {
            let result = if outcome.applied.is_some() {
                "applied"
            } else {
                "unchanged"
            };
            ctx.count_reconcile(&app, result, started);
            record_success(&ctx, &app, status, outcome, interval).await
        }
        Err(failure) => {
            ctx.count_reconcile(&app, "failed", started);
            record_failure(&ctx, &app, status, failure, interval).await
        }
    }
}

/// The Application as this agent last wrote it, or newer; `None` when it is gone.
///
/// The cache may not hold this agent's last status write yet: unless it holds the newest
/// version this agent has seen, the Application itself is read (one request, none per
/// object), so the status built from it starts from the newest one and its write does not
/// conflict. (A write by someone else that the cache has not shown yet makes the status
/// write fail on its resourceVersion, and the reconcile runs again.)
async fn read_fresh(
    ctx: &Context,
    cached: &Application,
) -> Result<Option<Arc<Application>>, Error> {
    let api: Api<Application> =
        Api::namespaced(ctx.client.clone(), &cached.namespace().unwrap_or_default());
    let key = application_key(cached);
    let fresh = cached.resource_version().is_some()
        && ctx
            .memory
            .with(&key, |remembered| remembered.seen_version.clone())
            == cached.resource_version();
    let read = if fresh {
        Ok(Some(cached.clone()))
    } else {
        api.get_opt(&cached.name_any()).await
    };
    match read {
        Ok(Some(app)) => {
            if let Some(version) = app.resource_version() {
                ctx.memory
                    .with(&key, |remembered| remembered.seen_version = Some(version));
            }
            Ok(Some(Arc::new(app)))
        }
        Ok(None) => {
            // Deleted: a failure it could not report has no one left to tell.
            ctx.forget(&key);
            Ok(None)
        }
        Err(e) => Err(Error::Status(cached.name_any(), describe(&e))),
    }
}

/// Another agent received a push for this Application (its refresh annotation changed):
/// the listing of its repository's refs is read anew.
fn take_refresh(ctx: &Context, app: &Application) {
    let Some(refresh) = app.annotations().get(application::REFRESH_ANNOTATION) else {
        return;
    };
    let new = ctx.memory.with(&application_key(app), |remembered| {
        let new = remembered.refresh.as_ref() != Some(refresh);
        remembered.refresh = Some(refresh.clone());
        new
    });
    if new {
        crate::source::git::forget_listing(&app.spec.source.repo_url);
    }
}

/// Writes the status of a sync that went through, tells what it says to tell, and says
/// when to look again.
async fn record_success(
    ctx: &Context,
    app: &Application,
    status: ApplicationStatus,
    outcome: Outcome,
    interval: Duration,
) -> Result<Action, Error> {
    let set_id = outcome.apply_set.id.clone();
    let revision = outcome.revision.commit.clone();
    let health = outcome.health;
    let destination = outcome.destination;
    if let Some(entry) = &outcome.applied {
        let message = entry.message.clone().unwrap_or_default();
        publish(ctx, app, EventType::Normal, "Synced", message).await;
    }
    let after = status::on_success(
        app,
        status,
        status::Succeeded {
            revision: outcome.revision,
            sync: outcome.sync,
            health,
            applied: outcome.applied,
            apply_set: outcome.apply_set,
            drifted_meanwhile: destination.drift.is_drifted(&set_id),
        },
        sync_requested(app),
        &now_rfc3339(),
    );
    let sync_state = after.status.sync.as_ref().map(|s| s.status.clone());
    ctx.record_state(
        app,
        sync_state.as_deref().unwrap_or("Unknown"),
        &health.to_string(),
    );
    let synced = after.synced;
    write_status(ctx, app, after.status).await?;
    // Told once the status that records them is written (a failed write retries the
    // reconcile, which would tell them again).
    for (event, message) in after.notices {
        notify(ctx, app, event, Some(&revision), message);
    }
    if synced {
        let summary = after.summary;
        set_commit_status(ctx, app, &revision, commit_status::State::Success, || {
            format!("Synced, {health}: {summary}")
        });
    }
    // Settled: a member's status change reads health at once from now on.
    destination.drift.follow_health(&set_id, synced);
    let mut next = jitter(interval);
    if let Some(backoff) = ctx.progress_backoff(app, health) {
        next = next.min(backoff);
    }
    if let Some(period) = ctx.options.verify_interval {
        let verify = destination.drift.until_verification(&set_id, period);
        next = next.min(verify.max(MIN_REQUEUE));
    }
    Ok(Action::requeue(next))
}

/// Writes the status of a failed sync, tells the first failure of a streak, and says when
/// to retry.
async fn record_failure(
    ctx: &Context,
    app: &Application,
    status: ApplicationStatus,
    failure: Failure,
    interval: Duration,
) -> Result<Action, Error> {
    let message = failure.message;
    let revision_failed = failure.revision.clone();
    let after = status::on_failure(
        app,
        status,
        status::Failed {
            message: message.clone(),
            entry: failure.entry,
            revision: failure.revision,
            out_of_sync: failure.out_of_sync,
        },
        &now_rfc3339(),
    );
    let sync_state = after.status.sync.as_ref().map(|s| s.status.clone());
    let health = after.status.health.clone();
    ctx.record_state(
        app,
        sync_state.as_deref().unwrap_or("Unknown"),
        health.as_deref().unwrap_or("Unknown"),
    );
    let (status, stalled, tell) = (after.status, after.stalled, after.tell);
    let published = publish(ctx, app, EventType::Warning, "SyncFailed", message.clone()).await;
    let failures = status.failures;
    let written = write_status(ctx, app, status).await;
    if let (Ok(()), Some(revision)) = (&written, revision_failed.as_deref()) {
        set_commit_status(ctx, app, revision, commit_status::State::Failure, || {
            format!("Sync failed: {message}")
        });
    }
    if let (Some((revision, message)), Ok(())) = (tell, &written) {
        let event = notify::Event::SyncFailed;
        notify(ctx, app, event, revision.as_deref(), message);
    }
    if !published || matches!(written, Err(Error::Status(..))) {
        let late = (now_rfc3339(), message);
        ctx.memory.with(&application_key(app), |remembered| {
            remembered.late_failure = Some(late)
        });
    }
    written?;
    let wait = if stalled {
        interval
    } else {
        jitter(status::failure_backoff(app, failures))
    };
    Ok(Action::requeue(wait))
}

/// A namespaced agent applies only to its own namespace of its own cluster: `Err` says
/// why this Application asks for more.
fn confined(options: &AgentOptions, app: &Application) -> Result<(), String> {
    let (true, Some(namespace)) = (options.namespaced, options.namespace.as_deref()) else {
        return Ok(());
    };
    let destination = &app.spec.destination;
    if destination.namespace != namespace {
        return Err(format!(
            "this agent is confined to namespace {namespace} (--namespaced): \
             spec.destination.namespace {:?} must be {namespace:?}",
            destination.namespace
        ));
    }
    if destination.cluster_name().is_some() {
        return Err(format!(
            "this agent is confined to namespace {namespace} of its own cluster (--namespaced): \
             spec.destination.cluster must be unset"
        ));
    }
    Ok(())
}

/// The first dependency that is not Ready, if any.
async fn unready_dependency(ctx: &Context, app: &Application) -> Option<String> {
    let namespace = app.namespace().unwrap_or_default();
    let apps: Api<Application> = Api::namespaced(ctx.client.clone(), &namespace);
    for dependency in &app.spec.depends_on {
        let ready = apps
            .get_opt(&dependency.name)
            .await
            .ok()
            .flatten()
            .and_then(|d| d.status)
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
        if !ready {
            return Some(dependency.name.clone());
        }
    }
    None
}

/// Resolve, render, plan and (when the policy allows) apply; an `Err` is a message for
/// the status, saying what failed.
async fn sync(ctx: &Context, app: &Application) -> Result<Outcome, Failure> {
    let name = app.name_any();
    let spec = &app.spec;
    spec.check()?;
    confined(&ctx.options, app)?;
    let destination = ctx.clusters.for_app(app).await?;
    let dest = &destination;
    // The client that plans, applies and reads health for this Application throughout the
    // sync (its ServiceAccount's, when it names one); refused here, before anything is
    // fetched, when it names none and the agent requires one.
    let client = tenancy::client_for(
        &dest.target.client,
        app,
        ctx.options.require_service_account,
    )?;
    let client = &client;
    let at = &Acting { dest, client };
    let fetch_started = std::time::Instant::now();
    let applyset_id = crate::inventory::ApplySet::new(&name, &spec.destination.namespace).id;
    let decision = decide::decide(&facts(ctx, dest, app, &applyset_id));
    let (pin, listing_max_age) = (decision.pin.clone(), decision.listing_max_age);
    // What the last full sync left, for the ways that change nothing.
    let settled = app
        .status
        .as_ref()
        .and_then(|s| Some((s, s.sync.as_ref()?, s.apply_set.as_ref()?)))
        .filter(|_| decision.settled);
    // An idle poll: the shared listing of the remote's refs (a few seconds old at most)
    // shows the commit already applied. Nor is the Git cache opened then.
    if decision.idle_poll
        && let Some((status, sync, apply_set)) = settled
        && let Some(status_changed) = dest.drift.may_skip(&applyset_id)
        && let Some(applied) = status.revision_info.as_ref()
        && let Some(listed) = git_source(&ctx.options.app_options(), app, listing_max_age)
            .ok()
            .and_then(|source| source.recently_listed())
        && listed.commit == applied.commit
    {
        let revision = Revision {
            summary: applied.message.clone(),
            author: applied.author.clone(),
            ..listed
        };
        let settled = (status, sync, apply_set);
        return Ok(
            unchanged_outcome(ctx, at, &applyset_id, settled, status_changed, revision).await,
        );
    }
    let (revision, tree) = fetch(
        &ctx.client,
        &ctx.options.app_options(),
        app,
        pin.as_deref(),
        listing_max_age,
    )
    .await?;
    // A failure from here on is the failure of this revision: the status names it.
    let attempted = revision.commit.clone();
    let result: Result<Outcome, Failure> = async {
        let mut tree = Some(tree);
        ctx.metrics
            .git_fetch_seconds
            .observe(fetch_started.elapsed().as_secs_f64());

        let mut rendered = None;
        // The watches reported drift that this sync took on (not for the backstop to count).
        let mut reported_drift = false;
        // Drift with selfHeal, on the revision applied: correct just the objects that drifted.
        if decision.correct_drift
            && let Some(settled) = settled
            && let Some(drifted) = dest.drift.take_drifted(&applyset_id)
        {
            let tree = tree.take().expect("the tree is rendered once");
            match correct_drift(
                ctx,
                at,
                app,
                &applyset_id,
                (revision.clone(), tree),
                drifted,
                settled,
            )
            .await
            {
                Ok(Targeted::Done(outcome)) => return Ok(*outcome),
                Ok(Targeted::Full(objects, digest)) => {
                    rendered = Some((objects, digest));
                    reported_drift = true;
                }
                Err(message) => {
                    dest.drift.require_full_sync(&applyset_id);
                    return Err(message);
                }
            }
        }
        if rendered.is_none()
            && decision.stop_if_same_render
            && let Some((status, sync, apply_set)) = settled
            && let Some(status_changed) = dest.drift.may_skip(&applyset_id)
        {
            let same_revision =
                status.last_applied_revision.as_deref() == Some(revision.commit.as_str());
            let same_output = if same_revision {
                true
            } else {
                let tree = tree.take().expect("the tree is rendered once");
                let (objects, digest) = render_digested(ctx, dest, app, &revision, tree).await?;
                rendered = Some((objects, digest));
                dest.drift.applied_digest(&applyset_id) == Some(digest)
            };
            if same_output {
                let settled = (status, sync, apply_set);
                return Ok(unchanged_outcome(
                    ctx,
                    at,
                    &applyset_id,
                    settled,
                    status_changed,
                    revision,
                )
                .await);
            }
        }
        let applied_digest = dest.drift.applied_digest(&applyset_id);
        let vouched = dest.drift.begin_full_sync(&applyset_id);
        let rendered = match rendered {
            Some(rendered) => rendered,
            None => {
                let tree = tree.take().expect("the tree is rendered once");
                render_digested(ctx, dest, app, &revision, tree).await?
            }
        };
        // The watches vouched that nothing changed, and the cluster holds this very render:
        // whatever this plan finds different, they missed.
        let check_watches = vouched && !reported_drift && applied_digest == Some(rendered.1);
        full_sync(
            ctx,
            at,
            app,
            &applyset_id,
            revision,
            rendered,
            check_watches,
        )
        .await
    }
    .await;
    result.map_err(|mut failure| {
        failure.revision.get_or_insert(attempted);
        failure
    })
}

/// What the status and the drift watches say before a sync of set `applyset_id`.
fn facts(ctx: &Context, dest: &Destination, app: &Application, applyset_id: &str) -> decide::Facts {
    let status = app.status.as_ref();
    let policy = &app.spec.sync_policy;
    let spec_observed = status.is_some_and(|s| s.observed_generation == app.metadata.generation);
    let drifted = dest.drift.is_drifted(applyset_id);
    decide::Facts {
        sync_requested: sync_requested(app),
        spec_observed,
        synced: status.is_some_and(|s| {
            s.apply_set.is_some() && s.sync.as_ref().is_some_and(|sync| sync.status == "Synced")
        }),
        last_applied: status.and_then(|s| s.last_applied_revision.clone()),
        described: status.and_then(|s| Some(s.revision_info.as_ref()?.commit.clone())),
        drifted,
        // Asked only when it matters (a hand edit waiting to be put back).
        change_announced: drifted
            && git_source(&ctx.options.app_options(), app, Duration::ZERO)
                .is_ok_and(|source| source.change_announced()),
        may_skip: dest.drift.may_skip(applyset_id),
        verification_due: ctx
            .options
            .verify_interval
            .is_some_and(|period| dest.drift.verification_due(applyset_id, period)),
        automated: policy.automated,
        self_heal: policy.self_heal,
        interval: parse_duration(&policy.interval).unwrap_or(LISTING_MAX_AGE),
    }
}

/// The outcome of a sync that changes nothing: the settled status carried over to
/// `revision`, with health read again only when the watches saw a member's status change.
async fn unchanged_outcome(
    ctx: &Context,
    at: &Acting<'_>,
    applyset_id: &str,
    settled: (&ApplicationStatus, &SyncStatus, &ApplySetReference),
    status_changed: bool,
    revision: Revision,
) -> Outcome {
    let dest = at.dest;
    let (status, sync, apply_set) = settled;
    // Read again when a member's status changed, and while not Healthy (a rollout in
    // progress: only the objects not Healthy are read).
    let health = if status_changed || status.health.as_deref() != Some("Healthy") {
        assess_set(ctx, at.dest, at.client, applyset_id).await
    } else {
        health_from(status.health.as_deref().unwrap_or("Unknown"))
    };
    let mut sync = sync.clone();
    sync.revision = revision.commit.clone();
    Outcome {
        revision,
        sync,
        health,
        applied: None,
        apply_set: apply_set.clone(),

        destination: dest.clone(),
    }
}

/// Plans every object of the render against the cluster and applies when the policy
/// allows; records for the drift watch what the cluster now holds. With `check_watches`,
/// differences are drift the watches missed, and are reported as such.
async fn full_sync(
    ctx: &Context,
    at: &Acting<'_>,
    app: &Application,
    applyset_id: &str,
    revision: Revision,
    (objects, digest): (Vec<crate::object::Object>, [u8; 32]),
    check_watches: bool,
) -> Result<Outcome, Failure> {
    let (dest, client) = (at.dest, at.client);
    let policy = &app.spec.sync_policy;
    let owner = kube::runtime::reflector::ObjectRef::from_obj(app);
    // Watch every kind of the render before planning it: from then on no write to a
    // member goes unseen, and this sync counts as watched from its start.
    let kinds = kinds_of(
        &dest.target.resolver,
        objects.iter().map(|o| (&o.manifest, &o.key.kind)),
    );
    dest.drift
        .watch_before_sync(owner.clone(), applyset_id, kinds, WATCH_LIST_TIMEOUT)
        .await;
    let planned = plan_app(
        client,
        &dest.target.resolver,
        &ctx.options.app_options(),
        app,
        objects,
        false,
    )
    .await
    .map_err(|m| dest.target.context(m))?;
    let mut planned = planned;
    // What this agent is about to apply, known before it writes (rule 12).
    dest.drift
        .expect_applied(applyset_id, applied_digests(&planned), true);
    // Objects another owner holds fail alone; the rest is synced (rule 13).
    let refused = std::mem::take(&mut planned.refused);
    if check_watches {
        ctx.metrics.drift_verifications.inc();
        report_missed(ctx, dest, app, applyset_id, &planned);
    }
    let summary = planned.summary();
    let apply_set = ApplySetReference {
        kind: "Secret".into(),
        name: planned.applyset.parent_name(),
        namespace: planned.applyset.namespace.clone(),
        id: planned.applyset.id.clone(),
    };
    dest.drift.register(
        owner.clone(),
        &planned.applyset.id,
        planned.changes.iter().filter_map(|c| c.kind.clone()),
    );
    // Kinds whose CRD comes with this set are served only once it is applied.
    let unserved: Vec<(crate::object::ObjectKey, serde_json::Value)> = planned
        .changes
        .iter()
        .filter(|c| c.kind.is_none())
        .filter_map(|c| Some((c.key.clone(), c.desired.clone()?)))
        .collect();
    let new_revision = app
        .status
        .as_ref()
        .and_then(|s| s.last_applied_revision.as_deref())
        != Some(revision.commit.as_str());
    // A new revision is applied when automated, and drift on the same revision with
    // selfHeal; anything, when someone asks for a sync (`tether sync`, the UI's Sync
    // button), as a manual sync does in Argo CD.
    let allowed = sync_requested(app) || (policy.automated && (new_revision || policy.self_heal));
    let mut sync = SyncStatus {
        status: if planned.has_changes() {
            "OutOfSync"
        } else {
            "Synced"
        }
        .into(),
        revision: revision.commit.clone(),
        create: summary.create as u32,
        update: summary.update as u32,
        prune: summary.prune as u32,
        unchanged: summary.unchanged as u32,
    };
    let mut applied = None;
    let mut desired: Vec<_> = planned
        .changes
        .iter()
        .filter(|c| c.action != PlanAction::Prune)
        .map(|c| (c.key.clone(), c.kind.clone()))
        .collect();
    // Each member's resourceVersion after this sync, for the drift watch.
    let mut versions: Vec<(crate::object::ObjectKey, String)> = planned
        .changes
        .iter()
        .filter(|c| c.action == PlanAction::Unchanged)
        .filter_map(|c| {
            let version = c.live.as_ref()?["metadata"]["resourceVersion"].as_str()?;
            Some((c.key.clone(), version.to_string()))
        })
        .collect();
    if planned.has_changes() && allowed {
        if policy.prune {
            dest.drift.expect_pruned(
                applyset_id,
                planned
                    .changes
                    .iter()
                    .filter(|c| c.action == PlanAction::Prune)
                    .map(|c| c.key.clone()),
            );
        }
        let (entry, written) =
            apply_and_record(ctx, at, app, planned, &revision, !new_revision, "applied").await?;
        applied = Some(entry);
        versions = written;
        // The counts say what differs now (what was done is in the history).
        sync = SyncStatus {
            status: "Synced".into(),
            create: 0,
            update: 0,
            prune: if policy.prune { 0 } else { sync.prune },
            unchanged: sync.create + sync.update + sync.unchanged,
            ..sync
        };
    }
    if !unserved.is_empty() {
        for (key, kind) in desired.iter_mut().filter(|(_, kind)| kind.is_none()) {
            *kind = unserved
                .iter()
                .find(|(unserved, _)| unserved == key)
                .and_then(|(key, manifest)| {
                    kinds_of(&dest.target.resolver, [(manifest, &key.kind)]).pop()
                });
        }
        dest.drift.register(
            owner,
            applyset_id,
            desired.iter().filter_map(|(_, kind)| kind.clone()),
        );
    }
    if !refused.is_empty() {
        sync.status = "OutOfSync".into();
    }
    if sync.status == "Synced" {
        // The cluster now holds this render: a later revision that renders the same needs
        // no plan.
        dest.drift.set_applied_digest(applyset_id, digest);
    }
    if sync.status != "Synced" || versions.len() != desired.len() {
        versions.clear();
    }
    dest.drift.finish_full_sync(applyset_id, versions);
    // A new desired set: its health is read in full (and remembered per object).
    dest.health
        .lock()
        .expect("not poisoned")
        .remove(applyset_id);
    dest.desired
        .lock()
        .expect("not poisoned")
        .insert(applyset_id.to_string(), desired);
    let health = assess_set(ctx, dest, client, applyset_id).await;
    if !refused.is_empty() {
        return Err(Failure {
            message: dest.target.context(refused_message(&refused, &sync)),
            entry: applied,
            revision: None,
            out_of_sync: true,
        });
    }
    Ok(Outcome {
        revision,
        sync,
        health,
        applied,
        apply_set,

        destination: dest.clone(),
    })
}

/// Each desired member's applied digest, as the plan will write it.
fn applied_digests(
    planned: &crate::plan::Plan,
) -> impl Iterator<Item = (crate::object::ObjectKey, String)> + '_ {
    planned
        .changes
        .iter()
        .filter(|c| c.action != PlanAction::Prune)
        .filter_map(|c| {
            let digest = crate::plan::fields::carried_digest(c.desired.as_ref()?)?;
            Some((c.key.clone(), digest.to_string()))
        })
}

/// The status message of a sync whose objects held by another owner were left out: each
/// one, where it came from, why, and what to do.
fn refused_message(refused: &[crate::plan::PlanError], sync: &SyncStatus) -> String {
    let synced = sync.create + sync.update + sync.unchanged;
    let mut message = format!(
        "{} object(s) cannot be synced (the other {synced} are synced and healed):",
        refused.len()
    );
    for error in refused {
        message.push_str(&format!("\n  {error}"));
    }
    message
}

/// The kinds of these manifests that the cluster serves, each once.
fn kinds_of<'a>(
    resolver: &Resolver,
    manifests: impl IntoIterator<Item = (&'a serde_json::Value, &'a String)>,
) -> Vec<crate::cluster::discovery::KindInfo> {
    let mut kinds: Vec<crate::cluster::discovery::KindInfo> = Vec::new();
    for (manifest, kind) in manifests {
        let api_version = manifest["apiVersion"].as_str().unwrap_or_default();
        if let Some(info) = resolver.resolve(api_version, kind)
            && !kinds.iter().any(|k| {
                k.resource.group == info.resource.group && k.resource.kind == info.resource.kind
            })
        {
            kinds.push(info);
        }
    }
    kinds
}

/// The backstop's finding: members that differ from a render the cluster held while the
/// watches vouched that nothing changed. Each one whose differing state the watch saw
/// without reporting it is logged with the managers that wrote it and counted in
/// `tether_drift_missed_total`; a non-zero count is a bug to report. (A state the watch
/// has not reached yet may still be reported by it, and is not counted.)
fn report_missed(
    ctx: &Context,
    dest: &Destination,
    app: &Application,
    applyset_id: &str,
    planned: &crate::plan::Plan,
) {
    for change in &planned.changes {
        let differs = match change.action {
            PlanAction::Update => !change.diff.is_empty(),
            PlanAction::Conflict => true,
            _ => false,
        };
        let Some(live) = change.live.as_ref().filter(|_| differs) else {
            continue;
        };
        let Some(version) = live["metadata"]["resourceVersion"].as_str() else {
            continue;
        };
        if !dest.drift.saw_unreported(applyset_id, &change.key, version) {
            continue;
        }
        let managers: Vec<String> = live["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|entry| {
                let text = |field: &str| entry[field].as_str().unwrap_or("-").to_string();
                let subresource = entry["subresource"]
                    .as_str()
                    .map(|s| format!(" /{s}"))
                    .unwrap_or_default();
                format!(
                    "{} {}{subresource} at {}",
                    text("manager"),
                    text("operation"),
                    text("time")
                )
            })
            .collect();
        tracing::warn!(
            application = %format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any()),
            object = %change.key,
            managers = %managers.join(", "),
            "the full plan found drift that the watches missed; it is corrected like any other, but please report it as a bug"
        );
        ctx.metrics.drift_missed.inc();
    }
}

/// Applies a plan as the Application's policy says, counts what it did in the metrics, and
/// returns the history entry (`what` starts its message: "applied", "corrected drift at").
async fn apply_and_record(
    ctx: &Context,
    at: &Acting<'_>,
    app: &Application,
    planned: crate::plan::Plan,
    revision: &Revision,
    drift: bool,
    what: &str,
) -> Result<(HistoryEntry, Vec<(crate::object::ObjectKey, String)>), Failure> {
    let (dest, client) = (at.dest, at.client);
    let policy = &app.spec.sync_policy;
    let options = ApplyOptions {
        prune: policy.prune && !planned.options.partial,
        force_conflicts: policy.force_conflicts,
        concurrency: ctx.options.concurrency,
        // Putting back the revision already applied is not a new deployment.
        run_hooks: !drift,
        ..Default::default()
    };
    // The plan had changes: whatever stopped the apply (a conflict, a parent that cannot be
    // written), the cluster differs from the revision.
    let report = apply(client, &dest.target.resolver, planned, &options)
        .await
        .map_err(|e| Failure {
            message: dest.target.context(e.to_string()),
            entry: None,
            revision: None,
            out_of_sync: true,
        })?;
    for hook in report.hooks.iter().filter(|h| !h.succeeded) {
        publish(ctx, app, EventType::Warning, "HookFailed", hook.to_string()).await;
    }
    let hooks: Vec<HookRecord> = report.hooks.iter().map(HookRecord::from).collect();
    if let Some(message) = report.failure_message().map(|m| dest.target.context(m)) {
        // A failed sync is history too when it ran hooks: which ran, and how they ended.
        let entry = (!hooks.is_empty()).then(|| HistoryEntry {
            revision: revision.commit.clone(),
            time: now_rfc3339(),
            result: "Failed".into(),
            created: 0,
            updated: 0,
            pruned: 0,
            message: Some(message.clone()),
            hooks: hooks.clone(),
        });
        return Err(Failure {
            message,
            entry,
            revision: None,
            out_of_sync: true,
        });
    }
    let count =
        |action: PlanAction| report.results.iter().filter(|r| r.action == action).count() as u32;
    for (action, label) in [
        (PlanAction::Create, "create"),
        (PlanAction::Update, "update"),
        (PlanAction::Prune, "prune"),
    ] {
        ctx.metrics
            .applied
            .get_or_create(&server::ActionLabels {
                action: label.into(),
            })
            .inc_by(count(action) as u64);
    }
    if drift {
        // The same revision again, with changes: someone changed the cluster by hand.
        ctx.metrics.drift_corrections.inc();
    }
    let versions = report
        .results
        .iter()
        .filter(|r| r.action != PlanAction::Prune)
        .filter_map(|r| Some((r.key.clone(), r.resource_version.clone()?)))
        .collect();
    let entry = HistoryEntry {
        revision: revision.commit.clone(),
        time: now_rfc3339(),
        result: "Succeeded".into(),
        created: count(PlanAction::Create),
        updated: count(PlanAction::Update),
        pruned: count(PlanAction::Prune),
        message: Some(format!(
            "{what} {}: {} created, {} updated, {} pruned",
            &revision.commit[..12.min(revision.commit.len())],
            count(PlanAction::Create),
            count(PlanAction::Update),
            count(PlanAction::Prune)
        )),
        hooks,
    };
    Ok((entry, versions))
}

/// What a targeted drift correction did.
enum Targeted {
    Done(Box<Outcome>),
    /// The render is not the one applied, or a drifted member is not in it: sync in full
    /// (with this render).
    Full(Vec<crate::object::Object>, [u8; 32]),
}

/// Corrects only the members someone changed or deleted: renders the applied revision,
/// plans and applies just those objects (never prunes), and keeps the rest of the status.
async fn correct_drift(
    ctx: &Context,
    at: &Acting<'_>,
    app: &Application,
    applyset_id: &str,
    (revision, tree): (Revision, crate::source::git::CommitTree),
    drifted: std::collections::BTreeSet<crate::object::ObjectKey>,
    settled: (&ApplicationStatus, &SyncStatus, &ApplySetReference),
) -> Result<Targeted, Failure> {
    let (dest, client) = (at.dest, at.client);
    let (objects, digest) = render_digested(ctx, dest, app, &revision, tree).await?;
    if dest.drift.applied_digest(applyset_id) != Some(digest) {
        return Ok(Targeted::Full(objects, digest));
    }
    let destination = &app.spec.destination.namespace;
    // A rendered object names its namespace, or leaves it to the destination (or is
    // cluster-scoped, where the watch reports none).
    let is_drifted = |key: &crate::object::ObjectKey| {
        drifted.iter().any(|d| {
            d.group == key.group
                && d.kind == key.kind
                && d.name == key.name
                && (d.namespace == key.namespace
                    || (key.namespace.is_empty()
                        && (d.namespace == *destination || d.namespace.is_empty())))
        })
    };
    let subset: Vec<crate::object::Object> = objects
        .iter()
        .filter(|o| is_drifted(&o.key))
        .cloned()
        .collect();
    if subset.len() < drifted.len() {
        return Ok(Targeted::Full(objects, digest));
    }
    let mut plan_options = crate::app::plan_options_for(&ctx.options.app_options(), app);
    plan_options.partial = true;
    // Health is read afresh after the correction: an unchanged object's state is not kept.
    plan_options.keep_unchanged_live = false;
    let planned = plan(client, &dest.target.resolver, subset, &plan_options)
        .await
        .map_err(|e| dest.target.context(e.to_string()))?;
    if !planned.refused.is_empty() {
        // A member another owner took: the full sync reports it, and syncs the rest.
        return Ok(Targeted::Full(objects, digest));
    }
    dest.drift
        .expect_applied(applyset_id, applied_digests(&planned), false);
    let corrected: Vec<_> = planned
        .changes
        .iter()
        .map(|c| (c.key.clone(), c.kind.clone()))
        .collect();
    let applied = if planned.has_changes() {
        Some(
            apply_and_record(ctx, at, app, planned, &revision, true, "corrected drift at")
                .await?
                .0,
        )
    } else {
        None
    };
    let (_, sync, apply_set) = settled;
    // The corrected objects are read again, with those whose status changed and those not
    // Healthy (the others still are as last read).
    if let Some(known) = dest
        .health
        .lock()
        .expect("not poisoned")
        .get_mut(applyset_id)
    {
        for (key, _) in &corrected {
            known.remove(key);
        }
    }
    let health = assess_set(ctx, at.dest, at.client, applyset_id).await;
    let mut sync = sync.clone();
    sync.revision = revision.commit.clone();
    Ok(Targeted::Done(Box::new(Outcome {
        revision,
        sync,
        health,
        applied,
        apply_set: apply_set.clone(),

        destination: dest.clone(),
    })))
}

/// The health of set `id` (its objects as its last full sync desired them), reading again
/// only what may have changed: the members whose status the watches saw change, and those
/// not Healthy at the last read (a rollout in progress); everything when nothing was read
/// before or too many changed. Tells the drift watch that status changes so far are
/// accounted for.
async fn assess_set(
    ctx: &Context,
    dest: &Destination,
    client: &kube::Client,
    id: &str,
) -> HealthStatus {
    let changed = dest.drift.take_status_changes(id);
    let desired = dest
        .desired
        .lock()
        .expect("not poisoned")
        .get(id)
        .cloned()
        .unwrap_or_default();
    let known = dest.health.lock().expect("not poisoned").get(id).cloned();
    let to_read: Vec<Desired> = match (&changed, &known) {
        (Some(changed), Some(known)) => desired
            .iter()
            .filter(|(key, _)| {
                changed.contains(key) || known.get(key).is_none_or(|h| *h != HealthStatus::Healthy)
            })
            .cloned()
            .collect(),
        _ => desired.clone(),
    };
    let read = assess_each(ctx, client, &to_read).await;
    let mut all = dest.health.lock().expect("not poisoned");
    let each = all.entry(id.to_string()).or_default();
    each.extend(read);
    each.retain(|key, _| desired.iter().any(|(k, _)| k == key));
    HealthStatus::worst(
        desired
            .iter()
            .map(|(key, _)| each.get(key).copied().unwrap_or(HealthStatus::Unknown)),
    )
}

/// [`plan_current`] in the Application's destination (the JSON API's and the web UI's view).
pub(crate) async fn plan_in_destination(
    home: &kube::Client,
    clusters: &clusters::Clusters,
    options: &AgentOptions,
    app: &Application,
    listing_max_age: Duration,
) -> Result<(Arc<Destination>, Revision, crate::plan::Plan), String> {
    // What a sync would refuse is not planned either.
    confined(options, app)?;
    let destination = clusters.for_app(app).await?;
    let (revision, plan) = plan_current(
        home,
        &destination.target,
        &options.app_options(),
        app,
        listing_max_age,
    )
    .await?;
    Ok((destination, revision, plan))
}

/// Renders as [`render_app`] does, with the render's [`digest_of`].
async fn render_digested(
    ctx: &Context,
    dest: &Destination,
    app: &Application,
    revision: &Revision,
    tree: crate::source::git::CommitTree,
) -> Result<(Vec<crate::object::Object>, [u8; 32]), String> {
    let objects = render_app(
        &dest.target.resolver,
        &ctx.options.app_options(),
        app,
        revision,
        tree,
    )
    .await?;
    let digest = digest_of(&objects);
    Ok((objects, digest))
}

fn health_from(text: &str) -> HealthStatus {
    match text {
        "Healthy" => HealthStatus::Healthy,
        "Progressing" => HealthStatus::Progressing,
        "Degraded" => HealthStatus::Degraded,
        "Missing" => HealthStatus::Missing,
        _ => HealthStatus::Unknown,
    }
}

/// Each desired object's health, read with `client` (one GET each).
async fn assess_each(
    ctx: &Context,
    client: &kube::Client,
    desired: &[Desired],
) -> Vec<(crate::object::ObjectKey, HealthStatus)> {
    futures::stream::iter((0..desired.len()).map(|i| async move {
        let (key, kind) = &desired[i];
        let Some(kind) = kind.clone() else {
            return (key.clone(), HealthStatus::Unknown);
        };
        let live = crate::cluster::api_for(client, &kind, &key.namespace)
            .get_opt(&key.name)
            .await
            .ok()
            .flatten()
            .map(|o| serde_json::to_value(o).expect("objects serialize"));
        (key.clone(), health::assess(live.as_ref()).status)
    }))
    .buffer_unordered(ctx.options.concurrency.max(1))
    .collect::<Vec<_>>()
    .await
}

async fn write_status(
    ctx: &Context,
    app: &Application,
    status: ApplicationStatus,
) -> Result<(), Error> {
    if app.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<Application> =
        Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
    // The status is computed from the Application as this reconcile saw it: the
    // resourceVersion makes the write fail if it changed since (no lost history entry).
    let patch = json!({
        "apiVersion": Application::api_version(&()),
        "kind": "Application",
        "metadata": {"name": app.name_any(), "resourceVersion": app.resource_version()},
        "status": status
    });
    match api
        .patch_status(
            &app.name_any(),
            &PatchParams::apply(STATUS_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(written) => {
            if let Some(version) = written.resource_version() {
                ctx.memory.with(&application_key(app), |remembered| {
                    remembered.seen_version = Some(version)
                });
            }
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            Err(Error::StaleStatus(app.name_any()))
        }
        Err(e) => Err(Error::Status(app.name_any(), describe(&e))),
    }
}

/// Publishes the Event of a failed sync that could not be published when it happened.
async fn report_late_failure(ctx: &Context, app: &Application) {
    let key = application_key(app);
    let late = ctx
        .memory
        .with(&key, |remembered| remembered.late_failure.take());
    if let Some((when, message)) = late {
        let note =
            format!("at {when}, the API server could not be reached to report it: {message}");
        if !publish(ctx, app, EventType::Warning, "SyncFailed", note).await {
            ctx.memory.with(&key, |remembered| {
                remembered.late_failure.get_or_insert((when, message));
            });
        }
    }
}

/// Sets the outcome of a sync as a status of `revision` on the Git host, when the
/// Application asks for it (in the background, once per revision and state: the idle
/// reconciles of a synced revision build nothing).
fn set_commit_status(
    ctx: &Context,
    app: &Application,
    revision: &str,
    state: commit_status::State,
    description: impl FnOnce() -> String,
) {
    let Some(spec) = &app.spec.commit_status else {
        return;
    };
    let key = application_key(app);
    if ctx.commit_statuses.was_last(&key, revision, state) {
        return;
    }
    let description = description();
    let namespace = app.namespace().unwrap_or_default();
    let status = commit_status::Status {
        commit: revision.to_string(),
        state,
        description,
        context: spec
            .context
            .clone()
            .unwrap_or_else(|| format!("tether/{namespace}/{}", app.name_any())),
    };
    let request = match commit_status::request_for(spec, &app.spec.source.repo_url, &status) {
        Ok(request) => request,
        Err(err) => {
            tracing::warn!(application = %key, %err, "cannot set the commit status");
            return;
        }
    };
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(ctx.client.clone(), &namespace);
    let secret = spec.secret_ref.name.clone();
    let token = async move {
        let found = secrets.get(&secret).await.map_err(|e| {
            format!(
                "cannot read the commit status token Secret {namespace}/{secret}: {}",
                describe(&e)
            )
        })?;
        found
            .data
            .and_then(|d| d.get("token").cloned())
            .map(|t| String::from_utf8_lossy(&t.0).trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("the Secret {namespace}/{secret} has no key token"))
    };
    ctx.commit_statuses.send(&key, request, &status, token);
}

/// Tells the configured notification URLs (in the background).
fn notify(
    ctx: &Context,
    app: &Application,
    event: notify::Event,
    revision: Option<&str>,
    message: String,
) {
    ctx.notifier.send(notify::Notice {
        event,
        namespace: app.namespace().unwrap_or_default(),
        name: app.name_any(),
        revision: revision.map(str::to_string),
        message,
        time: now_rfc3339(),
    });
}

/// Publishes an Event about the Application; false when it could not.
async fn publish(
    ctx: &Context,
    app: &Application,
    type_: EventType,
    reason: &str,
    note: String,
) -> bool {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Sync".into(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &app.object_ref(&())).await {
        Ok(()) => true,
        Err(err) => {
            tracing::debug!(%err, "cannot publish an event");
            false
        }
    }
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

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

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
