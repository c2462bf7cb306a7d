//! The agent's HTTP server: `/healthz`, `/readyz`, Prometheus `/metrics` ([`metrics`]), Git
//! webhooks ([`webhook`]), and when a token is configured the JSON API ([`api`]) and the web
//! UI ([`ui`]), all on one port. Start at [`router`].

pub mod api;
mod metrics;
pub mod ui;
mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use kube::runtime::reflector::Store;

use crate::agent::Application;
pub use metrics::{ActionLabels, ClassLabels, Metrics, ResultLabels, StateLabels, WebhookLabels};
pub use webhook::{
    Push, REPLAY_WINDOW, WEBHOOK_BODY_LIMIT, parse_push, same_repository, signature_valid,
};

#[derive(Clone)]
struct ServerState {
    metrics: Arc<Metrics>,
    applications: Store<Application>,
    trigger: crate::agent::slots::Trigger,
    webhook_secret: Option<Arc<Vec<u8>>>,
    ready: Arc<AtomicBool>,
    deliveries: Arc<std::sync::Mutex<webhook::Deliveries>>,
    relay: Option<Relay>,
    /// The agent's ref listings, made stale by a push.
    listings: Arc<crate::source::git::Listings>,
}

/// For sharded agents: a push for an Application of another agent's shard is passed on by
/// annotating the Application (the Git host reaches one agent; the owner watches them all).
#[derive(Clone)]
pub struct Relay {
    pub client: kube::Client,
    pub shards: Arc<crate::agent::shard::Shards>,
}

impl Relay {
    /// Unless this agent holds the shard of `app`, sets its refresh annotation (in the
    /// background; a failure is logged, and the owner still finds the push at its next
    /// poll).
    pub fn pass_on_unless_held(&self, app: &Application) {
        if self.shards.holds(&crate::agent::application_key(app)) {
            return;
        }
        let namespace = app.metadata.namespace.clone().unwrap_or_default();
        let name = app.metadata.name.clone().unwrap_or_default();
        let api: kube::Api<Application> = kube::Api::namespaced(self.client.clone(), &namespace);
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        tokio::spawn(async move {
            let patch = serde_json::json!({"metadata": {"annotations": {
                crate::application::REFRESH_ANNOTATION: now
            }}});
            if let Err(err) = api
                .patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
            {
                tracing::warn!(application = %format!("{namespace}/{name}"), %err,
                    "cannot pass a webhook on to the agent of this Application's shard");
            }
        });
    }
}

/// The router; `ready` turns true once the controller's first list of Applications is in.
#[allow(clippy::too_many_arguments)] // each is one piece of the agent the routes use
pub fn router(
    metrics: Arc<Metrics>,
    applications: Store<Application>,
    trigger: crate::agent::slots::Trigger,
    webhook_secret: Option<Vec<u8>>,
    ready: Arc<AtomicBool>,
    api: Option<api::ApiState>,
    relay: Option<Relay>,
    listings: Arc<crate::source::git::Listings>,
) -> Router {
    let state = ServerState {
        metrics,
        applications,
        trigger,
        webhook_secret: webhook_secret.map(Arc::new),
        ready,
        deliveries: Default::default(),
        relay,
        listings,
    };
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route(
            "/webhooks/{provider}",
            post(webhook::webhook).layer(axum::extract::DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT)),
        )
        .with_state(state);
    match api {
        Some(api) => router.merge(api::routes(api)),
        None => router,
    }
}

async fn readyz(State(state): State<ServerState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first list of Applications",
        )
    }
}

async fn metrics_text(State(state): State<ServerState>) -> (StatusCode, HeaderMap, String) {
    let mut text = String::new();
    let mut headers = HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
            .parse()
            .expect("valid header"),
    );
    match prometheus_client::encoding::text::encode(&mut text, &state.metrics.registry) {
        Ok(()) => (StatusCode::OK, headers, text),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            HeaderMap::new(),
            e.to_string(),
        ),
    }
}
