//! The agent's JSON API under `/api/v1`, for tools and the UI: list Applications, show one
//! with each object's sync state, health and current diff, and trigger a sync.
//!
//! # Security
//! Every request needs `Authorization: Bearer <token>` (compared in constant time); the
//! token comes from a file, never from the command line. Diffs never contain Secret values.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::agent::{AgentOptions, Application};
use crate::plan::Action;

#[derive(Clone)]
pub struct ApiState {
    pub applications: Store<Application>,
    pub trigger: crate::agent::slots::Trigger,
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

/// Which Applications a list asks for: filters (`namespace`, `q` in the name, `sync`,
/// `health`, `set`) and a page (`limit`, and `continue` from the previous page's answer).
/// Without `limit`, every Application that matches.
#[derive(Debug, Default, serde::Deserialize)]
pub struct ListQuery {
    namespace: Option<String>,
    q: Option<String>,
    sync: Option<String>,
    health: Option<String>,
    set: Option<String>,
    limit: Option<usize>,
    #[serde(rename = "continue")]
    from: Option<usize>,
}

async fn list(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Reply {
    if let Err(reply) = authorized(&state, &headers) {
        return reply;
    }
    (
        StatusCode::OK,
        Json(page_of(&state.applications.state(), &query)),
    )
}

/// One page of the Applications `query` matches, sorted by namespace and name: only the
/// page's Applications are summarized (the list of 10,000 is filtered and sorted by
/// reference). `continue` in the answer asks for the next page; `total` counts them all.
pub fn page_of(apps: &[Arc<Application>], query: &ListQuery) -> Value {
    let wanted = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
    let mut matched: Vec<(String, String, &Arc<Application>)> = apps
        .iter()
        .filter(|a| wanted(&query.namespace, &a.namespace().unwrap_or_default()))
        .filter(|a| query.q.as_deref().is_none_or(|q| a.name_any().contains(q)))
        .filter(|a| {
            let sync = crate::application::sync_state(
                a.status.as_ref(),
                crate::application::Objects::NotPlanned,
            );
            wanted(&query.sync, sync)
        })
        .filter(|a| {
            wanted(
                &query.health,
                crate::application::health_state(a.status.as_ref()),
            )
        })
        .filter(|a| {
            let set = a.labels().get("tether.dev/application-set").cloned();
            query.set.is_none() || query.set == set
        })
        .map(|a| (a.namespace().unwrap_or_default(), a.name_any(), a))
        .collect();
    matched.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
    let from = query.from.unwrap_or(0).min(matched.len());
    let to = query
        .limit
        .map_or(matched.len(), |l| (from + l).min(matched.len()));
    let page: Vec<Value> = matched[from..to]
        .iter()
        .map(|(_, _, a)| summary(a))
        .collect();
    let next = (to < matched.len()).then_some(to);
    json!({"applications": page, "total": matched.len(), "continue": next})
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

#[derive(serde::Deserialize, Default)]
pub struct ShowQuery {
    refresh: Option<String>,
}

/// How old the listing of the remote's refs may be for `?refresh=`: the agent's own (up to
/// [`crate::agent::LISTING_MAX_AGE`], made stale by a webhook) without it, a new listing with
/// `true` (or Argo CD's `normal` and `hard`).
fn listing_age(refresh: Option<&str>) -> Result<std::time::Duration, String> {
    match refresh {
        None | Some("false") => Ok(crate::agent::LISTING_MAX_AGE),
        Some("true" | "normal" | "hard") => Ok(std::time::Duration::ZERO),
        Some(other) => Err(format!(
            "refresh={other:?}: say refresh=true to list the remote's refs now, or leave it out"
        )),
    }
}

/// One Application with its objects: what apply would do, and health, planned now against
/// the cluster, from the newest revision the agent knows of (`?refresh=true` asks the
/// remote first). The `Server-Timing` header says how long each step took.
async fn show(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<ShowQuery>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let app = match authorized_app(&state, &headers, &namespace, &name) {
        Ok(app) => app,
        Err(reply) => return reply.into_response(),
    };
    let listing_max_age = match listing_age(query.refresh.as_deref()) {
        Ok(age) => age,
        Err(message) => return error(StatusCode::BAD_REQUEST, message).into_response(),
    };
    let planned = crate::agent::plan_in_destination(
        &state.client,
        &state.clusters,
        &state.options,
        &app,
        listing_max_age,
    )
    .await;
    let timing = match &planned {
        Ok(planned) => planned.steps.server_timing(),
        Err(_) => String::new(),
    };
    let planned = planned.map(|p| (p.revision, p.plan));
    let mut body = summary(&app);
    body["status"] = serde_json::to_value(&app.status).unwrap_or(Value::Null);
    match planned {
        Ok((revision, plan)) => {
            let objects = objects_of(&plan, &app.spec.health_rules().unwrap_or_default());
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
    let mut reply = (StatusCode::OK, Json(body)).into_response();
    if let Ok(value) = axum::http::HeaderValue::from_str(&timing) {
        reply.headers_mut().insert("server-timing", value);
    }
    reply
}

/// Each object of `plan` with its sync state, action, health, diff and who changed what,
/// then those refused.
fn objects_of(plan: &crate::plan::Plan, rules: &crate::health::rules::Rules) -> Vec<Value> {
    let refused = plan.refused.iter().map(|refused| {
        json!({
            "key": refused.key,
            "origin": refused.origin,
            "sync": "OutOfSync",
            "action": "refused",
            "error": refused.message,
        })
    });
    plan.changes
        .iter()
        .map(|change| {
            let health = if change.action == Action::Prune {
                None
            } else {
                Some(crate::health::assess_with(change.live.as_ref(), rules))
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
        .collect()
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
    // Asked for: it goes ahead of the polls.
    state.trigger.urgent(&app);
    if let Some(relay) = &state.relay {
        relay.pass_on_unless_held(&app);
    }
    (
        StatusCode::ACCEPTED,
        Json(json!({"sync": "requested", "application": format!("{namespace}/{name}")})),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(namespace: &str, name: &str, health: &str) -> Arc<Application> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "tether.dev/v1alpha1", "kind": "Application",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"source": {"repoURL": "https://example.com/r.git"}, "destination": {"namespace": namespace}},
                "status": {"health": health}
            }))
            .expect("an Application"),
        )
    }

    fn names(page: &Value) -> Vec<String> {
        page["applications"]
            .as_array()
            .expect("a list")
            .iter()
            .map(|a| {
                format!(
                    "{}/{}",
                    a["namespace"].as_str().unwrap_or(""),
                    a["name"].as_str().unwrap_or("")
                )
            })
            .collect()
    }

    #[test]
    fn refresh_asks_for_a_new_listing_and_anything_else_is_refused() {
        use std::time::Duration;
        assert_eq!(listing_age(None), Ok(crate::agent::LISTING_MAX_AGE));
        assert_eq!(
            listing_age(Some("false")),
            Ok(crate::agent::LISTING_MAX_AGE)
        );
        for fresh in ["true", "normal", "hard"] {
            assert_eq!(listing_age(Some(fresh)), Ok(Duration::ZERO), "{fresh}");
        }
        let refused = listing_age(Some("yes")).expect_err("not a refresh value");
        assert!(refused.contains("refresh=true"), "{refused}");
    }

    #[test]
    fn lists_are_filtered_sorted_and_paged_on_the_server() {
        let apps = [
            app("b", "web", "Healthy"),
            app("a", "web", "Degraded"),
            app("a", "db", "Healthy"),
            app("a", "cache", "Healthy"),
        ];
        let all = page_of(&apps, &ListQuery::default());
        assert_eq!(names(&all), ["a/cache", "a/db", "a/web", "b/web"]);
        assert_eq!(
            (all["total"].as_u64(), all["continue"].is_null()),
            (Some(4), true)
        );
        let first = page_of(
            &apps,
            &ListQuery {
                limit: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(names(&first), ["a/cache", "a/db"]);
        assert_eq!(first["continue"], 2);
        let second = page_of(
            &apps,
            &ListQuery {
                limit: Some(2),
                from: Some(2),
                ..Default::default()
            },
        );
        assert_eq!(names(&second), ["a/web", "b/web"]);
        assert!(second["continue"].is_null());
        let healthy_a = page_of(
            &apps,
            &ListQuery {
                namespace: Some("a".into()),
                health: Some("Healthy".into()),
                ..Default::default()
            },
        );
        assert_eq!(names(&healthy_a), ["a/cache", "a/db"]);
        let named = page_of(
            &apps,
            &ListQuery {
                q: Some("we".into()),
                ..Default::default()
            },
        );
        assert_eq!(named["total"], 2);
        let beyond = page_of(
            &apps,
            &ListQuery {
                limit: Some(2),
                from: Some(9),
                ..Default::default()
            },
        );
        assert!(names(&beyond).is_empty());
    }
}
