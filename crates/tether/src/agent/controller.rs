//! The agent's wiring: the watch of Applications and its store, the controller that runs
//! [`super::reconcile`] for each, the HTTP server (webhooks, API, UI, probes, metrics), the
//! shard and leader Leases, forgetting deleted Applications, and a graceful shutdown. Start
//! at [`run`].

use super::*;

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
                options.listings.clone(),
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
        pipeline: options.app_options(),
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

/// A spawned task that ends when this handle is dropped.
pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reconcile when the spec changes (generation) or `tether sync` asks (annotation).
pub(super) fn spec_or_sync_request(app: &Application) -> Option<u64> {
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

pub(super) fn error_policy(_app: Arc<Application>, err: &Error, _ctx: Arc<Context>) -> Action {
    if let Error::StaleStatus(_) = err {
        tracing::debug!(%err);
        return Action::requeue(Duration::from_millis(100));
    }
    tracing::warn!(%err, "will retry");
    Action::requeue(Duration::from_secs(5))
}
