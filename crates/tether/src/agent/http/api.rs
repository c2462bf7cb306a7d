//! The agent's JSON API under `/api/v1`, for tools and the UI: list Applications, show one
//! with each object's sync state, health and current diff, and trigger a sync.
//!
//! # Security
//! Every request needs `Authorization: Bearer <token>` (compared in constant time); the
//! token comes from a file, never from the command line. Diffs never contain Secret values.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

use crate::agent::{AgentOptions, Application};
use crate::plan::Action;

#[derive(Clone)]
pub struct ApiState {
    pub applications: Store<Application>,
    pub trigger: mpsc::UnboundedSender<ObjectRef<Application>>,
    pub token: Arc<Vec<u8>>,
    pub client: kube::Client,
    /// Where Applications apply (their diffs are planned there).
    pub clusters: Arc<crate::agent::clusters::Clusters>,
    pub options: AgentOptions,
    /// Sharded: passes a sync on to the agent holding the Application's shard.
    pub relay: Option<super::Relay>,
}

pub fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/applications", get(list))
        .route("/api/v1/applicationsets", get(list_sets))
        .route("/api/v1/applications/{namespace}/{name}", get(show))
        .route("/api/v1/applications/{namespace}/{name}/sync", post(sync))
        .with_state(state)
}

type Reply = (StatusCode, Json<Value>);

fn error(code: StatusCode, message: impl Into<String>) -> Reply {
    (code, Json(json!({"error": message.into()})))
}

fn authorized(state: &ApiState, headers: &HeaderMap) -> Result<(), Reply> {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !given.is_empty() && bool::from(given.as_bytes().ct_eq(state.token.as_slice())) {
        Ok(())
    } else {
        Err(error(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required",
        ))
    }
}

fn summary(app: &Application) -> Value {
    let status = app.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| json!({"status": c.status, "reason": c.reason, "message": c.message}));
    json!({
        "namespace": app.namespace(),
        "name": app.name_any(),
        "repoURL": app.spec.source.repo_url,
        "path": app.spec.source.path,
        "suspended": app.spec.suspend,
        "lastAppliedRevision": status.last_applied_revision,
        "sync": crate::application::sync_state(app.status.as_ref(), crate::application::Objects::NotPlanned),
        "health": crate::application::health_state(app.status.as_ref()),
        "ready": ready,
        "syncWindow": status.sync_window,
    })
}

/// The ApplicationSets of the agent's namespaces: whether each generated, its Applications
/// and its rollout.
async fn list_sets(State(state): State<ApiState>, headers: HeaderMap) -> Reply {
    if let Err(reply) = authorized(&state, &headers) {
        return reply;
    }
    let api: kube::Api<crate::application::ApplicationSet> = match &state.options.namespace {
        Some(ns) => kube::Api::namespaced(state.client.clone(), ns),
        None => kube::Api::all(state.client.clone()),
    };
    let sets = match api.list(&Default::default()).await {
        Ok(sets) => sets.items,
        Err(e) => return error(StatusCode::BAD_GATEWAY, crate::cluster::describe(&e)),
    };
    let sets: Vec<Value> = sets
        .iter()
        .map(|set| {
            let status = set.status.clone().unwrap_or_default();
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
            json!({
                "namespace": set.namespace(),
                "name": set.name_any(),
                "ready": ready.map(|c| json!({"status": c.status, "reason": c.reason, "message": c.message})),
                "applications": status.applications,
                "rollout": status.rollout,
            })
        })
        .collect();
    (StatusCode::OK, Json(json!({"applicationSets": sets})))
}

async fn list(State(state): State<ApiState>, headers: HeaderMap) -> Reply {
    if let Err(reply) = authorized(&state, &headers) {
        return reply;
    }
    let mut apps: Vec<Value> = state
        .applications
        .state()
        .iter()
        .map(|a| summary(a))
        .collect();
    apps.sort_by_key(|a| (a["namespace"].to_string(), a["name"].to_string()));
    (StatusCode::OK, Json(json!({"applications": apps})))
}

/// The Application a request names, once the request is authorized.
fn authorized_app(
    state: &ApiState,
    headers: &HeaderMap,
    namespace: &str,
    name: &str,
) -> Result<Arc<Application>, Reply> {
    authorized(state, headers)?;
    state
        .applications
        .get(&ObjectRef::new(name).within(namespace))
        .ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                format!("no Application {namespace}/{name}"),
            )
        })
}

/// One Application with its objects: what apply would do, and health, computed now.
async fn show(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Reply {
    let app = match authorized_app(&state, &headers, &namespace, &name) {
        Ok(app) => app,
        Err(reply) => return reply,
    };
    let planned = crate::agent::plan_in_destination(
        &state.client,
        &state.clusters,
        &state.options,
        &app,
        std::time::Duration::ZERO,
    )
    .await
    .map(|(_, revision, plan)| (revision, plan));
    let mut body = summary(&app);
    body["status"] = serde_json::to_value(&app.status).unwrap_or(Value::Null);
    match planned {
        Ok((revision, plan)) => {
            let refused = plan.refused.iter().map(|refused| {
                json!({
                    "key": refused.key,
                    "origin": refused.origin,
                    "sync": "OutOfSync",
                    "action": "refused",
                    "error": refused.message,
                })
            });
            let rules = app.spec.health_rules().unwrap_or_default();
            let objects: Vec<Value> = plan
                .changes
                .iter()
                .map(|change| {
                    let health = if change.action == Action::Prune {
                        None
                    } else {
                        Some(crate::health::assess_with(change.live.as_ref(), &rules))
                    };
                    json!({
                        "key": change.key,
                        "origin": change.origin,
                        "sync": if change.action == Action::Unchanged { "Synced" } else { "OutOfSync" },
                        "action": change.action,
                        "health": health,
                        "diff": change.diff,
                        // Who changed each field that differs (drift) or is held (conflict).
                        "changedBy": change.reclaims,
                        "conflicts": change.conflicts,
                    })
                })
                .chain(refused)
                .collect();
            // The top state is derived from the objects' (rule 11).
            let differing = plan
                .changes
                .iter()
                .filter(|c| c.action != Action::Unchanged)
                .count()
                + plan.refused.len();
            body["sync"] = json!(crate::application::sync_state(
                app.status.as_ref(),
                crate::application::Objects::Planned { differing }
            ));
            body["revision"] = serde_json::to_value(&revision).unwrap_or(Value::Null);
            body["objects"] = Value::Array(objects);
        }
        Err(message) => {
            body["sync"] = json!(crate::application::sync_state(
                app.status.as_ref(),
                crate::application::Objects::Unplanned
            ));
            body["planError"] = Value::String(message)
        }
    }
    (StatusCode::OK, Json(body))
}

async fn sync(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Reply {
    let app = match authorized_app(&state, &headers, &namespace, &name) {
        Ok(app) => app,
        Err(reply) => return reply,
    };
    let _ = state.trigger.send(ObjectRef::from_obj(app.as_ref()));
    if let Some(relay) = &state.relay {
        relay.pass_on_unless_held(&app);
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({"sync": "requested", "application": format!("{namespace}/{name}")})),
    )
}
