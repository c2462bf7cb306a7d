//! One Application: its state, source and conditions, the resource tree with each object's
//! sync state and health, an object's live manifest and diff against Git, the history with
//! a rollback per revision, and the actions (sync, suspend/resume, rollback). The part that
//! changes (`#live`) is served alone too, for the page to refresh it when the agent's
//! watches report a change.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::{Extension, Json};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::ObjectRef;
use maud::{Markup, html};
use serde_json::json;

use super::UiState;
use super::layout::{self, badge, commit};
use super::session::{Role, Session};
use super::view::{self, AppView, Node};
use crate::agent::{Application, ApplicationStatus};
use crate::application::actions;
use crate::plan::Action;

fn find(state: &UiState, namespace: &str, name: &str) -> Result<Arc<Application>, Box<Response>> {
    state
        .apps
        .get(&ObjectRef::new(name).within(namespace))
        .ok_or_else(|| {
            let message = format!("no Application {namespace}/{name}");
            Box::new((StatusCode::NOT_FOUND, message).into_response())
        })
}

/// A condition's status, coloured by what it means: Ready True is good, Stalled True bad,
/// Reconciling True is work in progress.
fn condition_badge(kind: &str, status: &str) -> Markup {
    let class = match (kind, status) {
        ("Ready", "True") => "ok",
        ("Ready", _) | ("Reconciling", "True") => "warn",
        ("Stalled", "True") => "bad",
        _ => "neutral",
    };
    html! { span class={"badge " (class)} { (status) } }
}

fn sync_state(node: &Node) -> &'static str {
    match node.action {
        Some(Action::Unchanged) => "Synced",
        Some(Action::Prune) => "Prune",
        Some(Action::Conflict) => "Conflict",
        Some(_) => "OutOfSync",
        None => "",
    }
}

fn resources(app: &Application, view: &AppView) -> Markup {
    let sync = view.sync_state(app);
    let health = crate::application::health_state(app.status.as_ref());
    html! {
        section.card #tree-card {
            h2 { "Resources" }
            @if let Some(error) = &view.error {
                p.error { "The current plan cannot be made: " (error) }
            }
            ul.tree {
                li.node.root data-depth="0" {
                    div.object {
                        span.kind { "Application" }
                        span.objname { (app.name_any()) }
                        (badge(sync)) (badge(health))
                        span.hmsg { (view.nodes.iter().filter(|n| n.depth == 0 && n.hook.is_none()).count()) " objects in its ApplySet" }
                    }
                }
                @for node in &view.nodes {
                    li.node data-depth=(node.depth + 1) {
                        button.object type="button"
                            data-group=(node.key.group) data-kind=(node.key.kind)
                            data-namespace=(node.key.namespace) data-name=(node.key.name)
                            data-sync=(sync_state(node)) {
                            span.kind { (node.key.kind) }
                            span.objname { (node.key.name) }
                            @if node.action.is_some() { (badge(sync_state(node))) }
                            @if node.hook.is_some() { (badge("Hook")) }
                            (badge(&node.health.status.to_string()))
                            span.hmsg { (node.health.message) }
                        }
                    }
                }
            }
        }
    }
}

/// Everything on the page that changes with the Application's state.
fn live(app: &Application, view: &AppView, role: Role) -> Markup {
    let status = app.status.clone().unwrap_or_default();
    let operator = role == Role::Operator;
    html! {
        (heading(app, view, operator))
        div.grid {
            (source_card(app, view, &status))
            (conditions_card(&status))
        }
        (resources(app, view))
        (history(app, &status, operator))
    }
}

/// The name, what differs, the states, and the actions an operator may take.
fn heading(app: &Application, view: &AppView, operator: bool) -> Markup {
    let namespace = app.namespace().unwrap_or_default();
    let name = app.name_any();
    let sync = view.sync_state(app);
    let health = crate::application::health_state(app.status.as_ref());
    let pinned = app
        .annotations()
        .contains_key(crate::application::ROLLED_BACK_FROM_ANNOTATION);
    html! {
        section.heading {
            div {
                h1 { (name) }
                div.sub {
                    "Application in " code { (namespace) } " · "
                    @if view.error.is_some() { "its current revision cannot be planned" }
                    @else { (view.out_of_sync()) " object(s) differ from Git" }
                }
            }
            div.states {
                (badge(sync)) (badge(health))
                @if app.spec.suspend { (badge("Suspended")) }
                @if let Some(window) = app.status.as_ref().and_then(|s| s.sync_window.as_ref()).filter(|w| !w.open) {
                    span.badge.warn title={(window.message)} {
                        "Sync window closed · next sync "
                        (window.next_sync.as_deref().unwrap_or("none within a year"))
                    }
                }
            }
            @if operator {
                div.actions {
                    button.primary data-action="sync" data-confirm={"Sync " (name) " with Git now?"} { "Sync" }
                    @if app.spec.suspend || pinned {
                        button data-action="resume" data-confirm={"Resume " (name) "? It follows its branch again."} {
                            (if pinned { "Follow the branch again" } else { "Resume" })
                        }
                    }
                    @if !app.spec.suspend {
                        button data-action="suspend" data-confirm={"Suspend " (name) "? The agent will change nothing until it is resumed."} { "Suspend" }
                    }
                }
            }
        }
    }
}

/// Where the Application comes from, what is applied and what Git says now.
fn source_card(app: &Application, view: &AppView, status: &ApplicationStatus) -> Markup {
    let source = &app.spec.source;
    let reference = match source.r#ref.as_ref_text() {
        Ok(text) if text.is_empty() => "the default branch".to_string(),
        Ok(text) => text,
        Err(e) => e,
    };
    html! {
        section.card {
            h2 { "Source" }
            dl {
                dt { "Repository" } dd { code { (source.repo_url) } }
                dt { "Ref" } dd { (reference) }
                dt { "Path" } dd { code { (if source.path.is_empty() { "." } else { &source.path }) } }
                dt { "Renderer" } dd { (app.spec.render.renderer.as_deref().unwrap_or("auto")) }
                dt { "Applied" } dd {
                    @match &status.last_applied_revision {
                        Some(revision) => {
                            (commit(revision))
                            @if let Some(info) = &status.revision_info {
                                @if let Some(message) = &info.message { " " (message) }
                                @if let Some(author) = &info.author { span.muted { " — " (author) } }
                            }
                        }
                        None => span.muted { "nothing yet" },
                    }
                }
                @if let Some(revision) = &view.revision {
                    dt { "Git now" } dd { (commit(&revision.commit)) @if let Some(s) = &revision.summary { " " (s) } }
                }
            }
        }
    }
}

fn conditions_card(status: &ApplicationStatus) -> Markup {
    html! {
        section.card {
            h2 { "Conditions" }
            table.conditions {
                @for condition in &status.conditions {
                    tr {
                        td { (condition.type_) }
                        td { (condition_badge(&condition.type_, &condition.status)) }
                        td.muted { (condition.reason) }
                        td { (condition.message) }
                    }
                }
            }
        }
    }
}

/// The syncs so far, each with a rollback to its revision for an operator.
fn history(app: &Application, status: &ApplicationStatus, operator: bool) -> Markup {
    let name = app.name_any();
    html! {
        section.card #history {
            h2 { "History" }
            @if status.history.is_empty() {
                p.muted { "No sync yet." }
            } @else {
                table.history {
                    thead { tr { th { "Revision" } th { "Time" } th { "Result" } th { "Changes" } th { "Hooks" } th {} } }
                    tbody {
                        @for entry in &status.history {
                            tr {
                                td { (commit(&entry.revision)) }
                                td { (entry.time.replace('T', " ").trim_end_matches('Z')) }
                                td { (badge(&entry.result)) }
                                td.muted { (entry.created) " created, " (entry.updated) " updated, " (entry.pruned) " pruned" }
                                td {
                                    @for hook in &entry.hooks {
                                        div { (hook.phase) " " code { (hook.object) } " " (badge(&hook.result)) }
                                    }
                                }
                                td {
                                    @if operator && status.last_applied_revision.as_deref() != Some(entry.revision.as_str()) && entry.result == "Succeeded" {
                                        button data-action="rollback" data-revision=(entry.revision)
                                            data-confirm={"Roll " (name) " back to " (&entry.revision[..entry.revision.len().min(12)]) "? It stays pinned there until resumed."} { "Roll back" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub async fn page(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let app = match find(&state, &namespace, &name) {
        Ok(app) => app,
        Err(response) => return *response,
    };
    let view = view::of(&state, &app).await;
    let body = html! {
        div #app data-app={(namespace) "/" (name)} {
            div #live { (live(&app, &view, session.role)) }
            aside.card #object hidden {}
        }
    };
    layout::page(&name, &session, body)
}

/// The `#live` part alone, for the page to swap in when something changed.
pub async fn tree_fragment(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let app = match find(&state, &namespace, &name) {
        Ok(app) => app,
        Err(response) => return *response,
    };
    let view = view::of(&state, &app).await;
    Html(live(&app, &view, session.role).into_string()).into_response()
}

#[derive(serde::Deserialize)]
pub struct ObjectQuery {
    #[serde(default)]
    group: String,
    kind: String,
    #[serde(default)]
    namespace: String,
    name: String,
}

/// One object of the tree: its live manifest (Secret values never) and its diff against Git.
pub async fn object(
    State(state): State<UiState>,
    Path((namespace, name)): Path<(String, String)>,
    Query(query): Query<ObjectQuery>,
) -> Response {
    let app = match find(&state, &namespace, &name) {
        Ok(app) => app,
        Err(response) => return *response,
    };
    let view = view::of(&state, &app).await;
    let Some(node) = view.nodes.iter().find(|n| {
        n.key.group == query.group
            && n.key.kind == query.kind
            && n.key.namespace == query.namespace
            && n.key.name == query.name
    }) else {
        return (StatusCode::NOT_FOUND, "no such object in this Application").into_response();
    };
    let manifest = crate::plan::diff::to_yaml(node.live.as_ref());
    let markup = html! {
        div.object-head {
            h2 { (node.key.kind) " " (node.key.name) }
            button.link #close-object type="button" aria-label="Close" { "✕" }
        }
        div.muted { (node.key.to_string()) " · " (node.health.status.to_string()) ": " (node.health.message) }
        @if node.action.is_some() {
            h3 { "Diff against Git" }
            @if node.diff.is_empty() {
                p.insync { "In sync: the cluster holds what Git says." }
            } @else {
                @if !node.who.is_empty() {
                    h3 { "Who changed it" }
                    ul.who { @for line in &node.who { li { (line) } } }
                }
                pre.diff { @for line in node.diff.lines() { span class=(diff_class(line)) { (line) "\n" } } }
            }
        } @else if let Some(hook) = &node.hook {
            p.muted { "A hook left behind by a sync (" (hook) "): not a member of the set, never pruned; its next run deletes it first." }
        } @else {
            p.muted { "Not in Git: created by its owner." }
        }
        h3 { "Live manifest" }
        @if node.live.is_some() {
            pre.manifest { (manifest) }
        } @else {
            p.muted { "Not in the cluster." }
        }
    };
    Html(markup.into_string()).into_response()
}

fn diff_class(line: &str) -> &'static str {
    if line.starts_with("+++") || line.starts_with("---") {
        "h"
    } else if line.starts_with('+') {
        "add"
    } else if line.starts_with('-') {
        "del"
    } else if line.starts_with("@@") {
        "hunk"
    } else {
        ""
    }
}

#[derive(Default, serde::Deserialize)]
pub struct ActionBody {
    /// The commit to roll back to.
    #[serde(default)]
    revision: String,
}

/// An action on the Application (sync, suspend, resume, rollback): the same patch the CLI
/// sends; answers with what happened, for the page.
pub async fn action(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Path((namespace, name, action)): Path<(String, String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let error =
        |code: StatusCode, message: String| (code, Json(json!({"error": message}))).into_response();
    if session.role != Role::Operator {
        return error(
            StatusCode::FORBIDDEN,
            "a read-only session cannot change anything".into(),
        );
    }
    let app = match find(&state, &namespace, &name) {
        Ok(app) => app,
        Err(response) => return *response,
    };
    let body: ActionBody = if body.is_empty() {
        ActionBody::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(body) => body,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not JSON: {e}"),
                );
            }
        }
    };
    // Not a slice: the revision is the client's text until `actions::rollback` checks it.
    let short: String = body.revision.chars().take(12).collect();
    let (patch, done) = match action.as_str() {
        "sync" => (
            Ok(actions::sync()),
            "Sync requested: the agent runs it now.".to_string(),
        ),
        "suspend" => (
            actions::suspend(&app, true),
            "Suspended: the agent changes nothing until it is resumed.".to_string(),
        ),
        "resume" => (actions::suspend(&app, false), "Resumed.".to_string()),
        "rollback" => (
            actions::rollback(&app, &body.revision),
            format!("Rolled back to {short}: pinned there until resumed."),
        ),
        other => return error(StatusCode::NOT_FOUND, format!("no action {other:?}")),
    };
    let patch = match patch {
        Ok(patch) => patch,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let api: Api<Application> = Api::namespaced(state.api.client.clone(), &namespace);
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => (StatusCode::OK, Json(json!({"message": done}))).into_response(),
        Err(e) => error(
            StatusCode::BAD_GATEWAY,
            format!("the API server refused: {}", crate::cluster::describe(&e)),
        ),
    }
}
