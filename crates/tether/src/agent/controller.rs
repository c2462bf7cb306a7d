//! The agent's wiring: the watch of Applications and its store, the controller that runs
//! [`super::reconcile`] for each, the HTTP server (webhooks, API, UI, probes, metrics), the
//! shard and leader Leases, forgetting deleted Applications, and a graceful shutdown. Start
//! at [`run`], which calls one named step after another.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, Stream, StreamExt};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::sync::{Notify, broadcast};

use super::clusters::{Clusters, Connected};
use super::reconcile::reconcile;
use super::slots::{Slots, Trigger};
use super::{AgentOptions, Context, Error, commit_status, drift, http, leader, notify, shard};
use crate::application::{self, Application, application_key};
use crate::cluster::discovery::Resolver;
use crate::cluster::target::Target;

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: kube::Client,
    options: AgentOptions,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    check_options(&options)?;
    let shards = options
        .shards
        .clone()
        .map(|o| shard::Shards::new(client.clone(), o));
    let (clusters, changes, drifted) = destinations(&client, &options).await?;
    let recorder = recorder(&client, shards.as_ref());
    let metrics = Arc::new(http::Metrics::default());
    let (sender, webhooks) = unbounded_channel();
    let slots = slots(&options, &metrics);
    let trigger = Trigger::new(sender, slots.clone());
    let watch = watch_applications(&client, &options, &slots);
    // No limit in kube's controller: its waiting requests are taken in hash order, so
    // reconciles wait for a slot in `slots` instead, in order (see [`super::slots`]).
    let controller =
        Controller::for_stream(watch.stream, watch.store.clone()).with_config(Config::default());
    let serving = Serving {
        client: &client,
        options: &options,
        store: &watch.store,
        trigger: &trigger,
        clusters: &clusters,
        shards: shards.as_ref(),
        metrics: &metrics,
        ready: &watch.ready,
    };
    let server = serve(serving, changes).await?;
    let (windows, _windows_watch) =
        super::windows::watch(&client, &options, &watch.store, &trigger);
    let parts = Parts {
        recorder,
        clusters,
        metrics,
        shards: shards.clone(),
        windows,
        slots,
    };
    let context = Arc::new(Context::new(client, options, parts)?);
    let sharding = shards.map(|shards| follow_shards(shards, &watch.store, &trigger, &context));
    let _forgetting = forget_gone(&context, &watch.store, watch.gone);
    let shutdown = shutdown.boxed().shared();
    let Some(leadership) = lead(&context, shutdown.clone()).await else {
        drop(server);
        return Ok(());
    };
    let stop = until_stopped(shutdown, leadership.lost_signal.clone())
        .boxed()
        .shared();
    // On the stop, reconciles waiting for a slot end (the shutdown waits for those running).
    let closing = {
        let (stop, context) = (stop.clone(), context.clone());
        AbortOnDrop::new(tokio::spawn(async move {
            stop.await;
            context.slots.close();
        }))
    };
    let sets = super::appsets::run(context.clone(), stop.clone());
    let applications = run_controller(controller, drifted, webhooks, stop, &context);
    futures::future::join(applications, sets).await;
    drop(closing);
    context.clusters.stop();
    drop(sharding);
    if let Some(shards) = &context.shards {
        shards.leave().await;
    }
    drop(server);
    drop(leadership.renewal);
    if leadership.lost.load(Ordering::Relaxed) {
        return Err(Error::LostLeadership);
    }
    Ok(())
}

/// What the context is made of, beside the client and the options.
struct Parts {
    recorder: Recorder,
    clusters: Arc<Clusters>,
    metrics: Arc<http::Metrics>,
    shards: Option<Arc<shard::Shards>>,
    windows: super::windows::Windows,
    slots: Arc<Slots>,
}

/// The `--concurrency` slots of reconciles, counting their waiters in `metrics`.
fn slots(options: &AgentOptions, metrics: &http::Metrics) -> Arc<Slots> {
    let waiting = |class: &str| {
        let labels = http::ClassLabels {
            class: class.into(),
        };
        metrics.reconciles_waiting.get_or_create(&labels).clone()
    };
    Slots::new(options.concurrency, [waiting("urgent"), waiting("routine")])
}

impl Context {
    /// What every reconcile shares; `Err` when a notification or commit status client
    /// cannot be built.
    fn new(client: kube::Client, options: AgentOptions, parts: Parts) -> Result<Self, Error> {
        let Parts {
            recorder,
            clusters,
            metrics,
            shards,
            windows,
            slots,
        } = parts;
        let notifier = notify::Notifier::new(options.notify.clone(), metrics.clone())
            .map_err(Error::Notify)?;
        let commit_statuses =
            commit_status::CommitStatuses::new(metrics.clone()).map_err(Error::Notify)?;
        Ok(Context {
            notifier,
            commit_statuses,
            client,
            clusters,
            pipeline: options.app_options(),
            options,
            recorder,
            metrics,
            memory: Default::default(),
            shards,
            windows,
            slots,
        })
    }
}

/// Refuses options that cannot work together.
fn check_options(options: &AgentOptions) -> Result<(), Error> {
    if options.shards.is_some() && options.leader_election.is_some() {
        return Err(Error::ShardsWithLeader);
    }
    if options.namespaced && options.namespace.is_none() {
        return Err(Error::NamespacedWithoutNamespace);
    }
    Ok(())
}

/// The agent's own cluster (discovered) as the first destination, with its drift watches;
/// the watches' broadcast of changes (for the UI), and the Applications they ask to
/// reconcile.
async fn destinations(
    client: &kube::Client,
    options: &AgentOptions,
) -> Result<
    (
        Arc<Clusters>,
        broadcast::Sender<drift::Changed>,
        impl Stream<Item = ObjectRef<Application>> + Send + 'static,
    ),
    Error,
> {
    let resolver = Arc::new(
        Resolver::new(client.clone())
            .await
            .map_err(Error::Discovery)?,
    );
    let (drift, drifted) = drift::DriftWatch::new(client.clone());
    let drift = drift.scoped_to(options.namespace.clone().filter(|_| options.namespaced));
    let changes = drift.changes();
    let home = Target::home(client.clone(), resolver);
    let clusters = Arc::new(Clusters::new(Connected::new(home, drift)));
    Ok((clusters, changes, drifted))
}

/// The recorder of the agent's Events; sharded agents say which of them acted.
fn recorder(client: &kube::Client, shards: Option<&Arc<shard::Shards>>) -> Recorder {
    let reporter = Reporter {
        controller: "tether-agent".into(),
        instance: match shards {
            Some(shards) => Some(shards.options().identity.clone()),
            None => std::env::var("HOSTNAME").ok(),
        },
    };
    Recorder::new(client.clone(), reporter)
}

/// The watch of Applications, as the controller reads it.
struct Watch<S> {
    /// Applied Applications whose spec changed or that ask for a sync.
    stream: S,
    store: Store<Application>,
    /// Set once the first list of Applications is in (/readyz).
    ready: Arc<AtomicBool>,
    /// A deleted Application's key; `None` after a (re)list.
    gone: UnboundedReceiver<Option<String>>,
}

/// Watches the Applications (in `options.namespace`, or everywhere) into a store.
fn watch_applications(
    client: &kube::Client,
    options: &AgentOptions,
    slots: &Arc<Slots>,
) -> Watch<impl Stream<Item = Result<Application, watcher::Error>> + Send + 'static> {
    let applications: Api<Application> = match &options.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // Reconcile on spec changes (generation), not on the status this agent writes: a sync
    // happens when Git, the spec, a watched object or a webhook says so, or at the interval.
    let (store, writer) = kube::runtime::reflector::store();
    // A deleted Application is not reconciled (the store no longer holds it): what the
    // agent keeps about it is forgotten ([`forget_gone`]): on its Delete event, and after a
    // relist (deletions while the watch was down come as no event), for every key the
    // store lacks.
    let (gone_sender, gone) = unbounded_channel::<Option<String>>();
    // Ready (/readyz) once the first list of Applications is in: seen here, on the stream
    // itself. (`Store::wait_until_ready` from a second task never woke: the store's one-shot
    // keeps the waker of its last poller only, the controller's.)
    let ready = Arc::new(AtomicBool::new(false));
    let listed = ready.clone();
    let events = watcher(applications, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| match event {
            Ok(watcher::Event::Delete(app)) => {
                let _ = gone_sender.send(Some(application_key(app)));
            }
            Ok(watcher::Event::InitDone) => {
                listed.store(true, Ordering::Relaxed);
                let _ = gone_sender.send(None);
            }
            _ => {}
        });
    // What passes the filter is new or changed: its reconcile is urgent.
    let slots = slots.clone();
    let stream = super::stored::applied_once_stored(events)
        .predicate_filter(spec_or_sync_request, Default::default())
        .inspect(move |app| {
            if let Ok(app) = app {
                slots.expedite(application_key(app));
            }
        });
    Watch {
        stream,
        store,
        ready,
        gone,
    }
}

/// What the HTTP server serves from.
struct Serving<'a> {
    client: &'a kube::Client,
    options: &'a AgentOptions,
    store: &'a Store<Application>,
    /// Reconciles an Application now (webhooks, the API and the UI).
    trigger: &'a Trigger,
    clusters: &'a Arc<Clusters>,
    shards: Option<&'a Arc<shard::Shards>>,
    metrics: &'a Arc<http::Metrics>,
    ready: &'a Arc<AtomicBool>,
}

/// Serves webhooks, health, metrics, and (with an API token) the JSON API and the web UI,
/// when the agent listens; the server stops when the handle is dropped.
async fn serve(
    serving: Serving<'_>,
    changes: broadcast::Sender<drift::Changed>,
) -> Result<Option<AbortOnDrop>, Error> {
    let Serving {
        client,
        options,
        store,
        trigger,
        clusters,
        shards,
        metrics,
        ready,
    } = serving;
    let Some(address) = options.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| Error::Listen(address.to_string(), e))?;
    let relay = shards.cloned().map(|shards| http::Relay {
        client: client.clone(),
        shards,
    });
    let api = options.api_token.as_ref().map(|token| http::api::ApiState {
        applications: store.clone(),
        trigger: trigger.clone(),
        token: Arc::new(token.clone()),
        client: client.clone(),
        clusters: clusters.clone(),
        options: options.clone(),
        relay: relay.clone(),
    });
    // The web UI, with the API and its token.
    let ui = api.clone().map(|api| {
        let (readonly, namespace) = (
            options.api_readonly_token.clone(),
            options.namespace.clone(),
        );
        http::ui::start(api, readonly, changes, namespace)
    });
    let (ui, ui_tasks) = match ui {
        Some((state, tasks)) => (Some(state), tasks),
        None => (None, Vec::new()),
    };
    let secret = options.webhook_secret.clone();
    let (store, trigger, ready) = (store.clone(), trigger.clone(), ready.clone());
    let listings = options.listings.clone();
    let app = http::router(
        metrics.clone(),
        store,
        trigger,
        secret,
        ready,
        api,
        relay,
        listings,
    );
    let app = match ui {
        Some(ui) => app.merge(http::ui::routes(ui)),
        None => app,
    };
    tracing::info!(%address, "serving webhooks, health and metrics");
    Ok(Some(AbortOnDrop::new(tokio::spawn(async move {
        // The UI's watches live as long as the server.
        let _tasks: Vec<AbortOnDrop> = ui_tasks.into_iter().map(AbortOnDrop::new).collect();
        if let Err(err) = axum::serve(listener, app).await {
            tracing::warn!(%err, "the HTTP server stopped");
        }
    }))))
}

/// Sharded: keeps this agent's shards; reconciles each Application of a shard it takes
/// (they were skipped while another agent held it), forgets those of a shard it gives up.
fn follow_shards(
    shards: Arc<shard::Shards>,
    store: &Store<Application>,
    trigger: &Trigger,
    context: &Arc<Context>,
) -> AbortOnDrop {
    let (store, trigger, context) = (store.clone(), trigger.clone(), context.clone());
    let mine = shards.clone();
    AbortOnDrop::new(tokio::spawn(shards.run(move |shard, change| {
        context.metrics.shards_held.set(mine.held().len() as i64);
        let of = mine.options().shards;
        let apps = store.state().into_iter();
        for app in apps.filter(|app| shard::shard_of(&application_key(app), of) == shard) {
            match change {
                shard::ShardEvent::Taken => {
                    trigger.routine(&app);
                }
                shard::ShardEvent::GivenUp => {
                    context.forget(&application_key(&app));
                    context.forget_set(&app);
                }
            }
        }
    })))
}

/// Forgets what the agent keeps of each Application that is gone: on its Delete event, and
/// after a relist for every key the store lacks.
fn forget_gone(
    context: &Arc<Context>,
    store: &Store<Application>,
    mut gone: UnboundedReceiver<Option<String>>,
) -> AbortOnDrop {
    let (context, store) = (context.clone(), store.clone());
    AbortOnDrop::new(tokio::spawn(async move {
        while let Some(gone) = gone.recv().await {
            match gone {
                Some(key) => context.forget(&key),
                None => {
                    let present: HashSet<String> = store
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
    }))
}

/// The leader Lease as this agent holds it (or none is asked for).
struct Leadership {
    /// Set when the Lease is lost.
    lost: Arc<AtomicBool>,
    /// Notified when the Lease is lost.
    lost_signal: Arc<Notify>,
    /// Renewal lives exactly as long as [`run`]: if the agent's task dies, so does its
    /// claim on the Lease.
    renewal: Option<AbortOnDrop>,
}

/// With leader election, waits for the Lease (serving health and metrics meanwhile), and
/// notes when it is lost, so that two agents never act at once; `None` when `shutdown`
/// came first.
async fn lead(context: &Context, shutdown: Shared<BoxFuture<'static, ()>>) -> Option<Leadership> {
    let lost = Arc::new(AtomicBool::new(false));
    let lost_signal = Arc::new(Notify::new());
    let mut renewal = None;
    if let Some(election) = context.options.leader_election.clone() {
        let election = leader::Election::new(context.client.clone(), election);
        let lease_lost = tokio::select! {
            lease_lost = election.lead() => lease_lost,
            _ = shutdown => return None,
        };
        let (lost, lost_signal) = (lost.clone(), lost_signal.clone());
        renewal = Some(AbortOnDrop::new(tokio::spawn(async move {
            lease_lost.await;
            lost.store(true, Ordering::Relaxed);
            lost_signal.notify_one();
        })));
    }
    Some(Leadership {
        lost,
        lost_signal,
        renewal,
    })
}

/// Completes on shutdown, or when the leader Lease is lost.
async fn until_stopped(shutdown: Shared<BoxFuture<'static, ()>>, lost: Arc<Notify>) {
    tokio::select! {
        _ = shutdown => {},
        _ = lost.notified() => {},
    }
}

/// Runs the controller over the watched Applications, also reconciling those the drift
/// watches and the webhooks name, until `stop` completes (in-flight reconciles finish).
async fn run_controller(
    controller: Controller<Application>,
    drifted: impl Stream<Item = ObjectRef<Application>> + Send + 'static,
    mut webhooks: UnboundedReceiver<ObjectRef<Application>>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
    context: &Arc<Context>,
) {
    // Drift: someone's edit waits to be put back, the reconcile is urgent. (The others say
    // their class through [`Trigger`].)
    let slots = context.slots.clone();
    let drifted = drifted.inspect(move |app: &ObjectRef<Application>| {
        let namespace = app.namespace.as_deref().unwrap_or_default();
        slots.expedite(format!("{namespace}/{}", app.name));
    });
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
}

/// A spawned task that ends when this handle is dropped.
pub(super) type AbortOnDrop = tokio_util::task::AbortOnDropHandle<()>;

/// Reconcile when the spec changes (generation), `tether sync` asks (annotation), or the
/// Application is being deleted.
pub(super) fn spec_or_sync_request(app: &Application) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    app.metadata.generation.hash(&mut hasher);
    app.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    app.annotations()
        .get(application::SYNC_REQUEST_ANNOTATION)
        .hash(&mut hasher);
    app.annotations()
        .get(application::REFRESH_ANNOTATION)
        .hash(&mut hasher);
    Some(hasher.finish())
}

pub(super) fn error_policy(_app: Arc<Application>, err: &Error, _ctx: Arc<Context>) -> Action {
    if let Error::StaleStatus(_) = err {
        tracing::debug!(%err);
        return Action::requeue(Duration::from_millis(100));
    }
    tracing::warn!(%err, "will retry");
    Action::requeue(Duration::from_secs(5))
}
