//! The ApplicationSets page: each set of the agent's namespaces, whether its generators and
//! template went through, its Applications (each a link, and the set's name a filter of the
//! Applications page) and its rollout's steps.

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use kube::{Api, ResourceExt};
use maud::html;

use super::UiState;
use super::layout::{self, badge};
use super::session::Session;
use crate::application::ApplicationSet;

/// The sets, read when the page is asked for (one list request).
pub(super) async fn list(
    state: &crate::agent::http::api::ApiState,
) -> Result<Vec<ApplicationSet>, String> {
    let api: Api<ApplicationSet> = match &state.options.namespace {
        Some(ns) => Api::namespaced(state.client.clone(), ns),
        None => Api::all(state.client.clone()),
    };
    let mut sets = api
        .list(&Default::default())
        .await
        .map_err(|e| crate::cluster::describe(&e))?
        .items;
    sets.sort_by_key(|s| (s.namespace(), s.name_any()));
    Ok(sets)
}

pub async fn page(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
) -> Response {
    let sets = list(&state.api).await;
    let body = html! {
        p { a href="/ui/" { "← Applications" } }
        @match &sets {
            Err(e) => p.empty { "The ApplicationSets cannot be read: " (e) },
            Ok(sets) if sets.is_empty() => p.empty { "No ApplicationSet." },
            Ok(sets) => table.apps #sets {
                thead { tr { th { "Set" } th { "Namespace" } th { "Ready" } th { "Applications" } th { "Rollout" } } }
                tbody {
                    @for set in sets {
                        @let namespace = set.namespace().unwrap_or_default();
                        @let status = set.status.clone().unwrap_or_default();
                        @let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
                        tr data-set={(namespace) "/" (set.name_any())} {
                            td.name { a href={"/ui/?set=" (set.name_any()) "&namespace=" (namespace)} { (set.name_any()) } }
                            td { (namespace) }
                            td {
                                @match ready {
                                    Some(c) => { (badge(&c.status)) @if c.status != "True" { div.message { (c.message) } } }
                                    None => span.muted { "not generated yet" },
                                }
                            }
                            td.applications {
                                @for name in &status.applications {
                                    a href={"/ui/apps/" (namespace) "/" (name)} { (name) } " "
                                }
                            }
                            td.rollout {
                                @for step in &status.rollout {
                                    div { "step " (step.step) ": " (badge(&step.state)) " " (step.applications.join(", ")) }
                                }
                            }
                        }
                    }
                }
            },
        }
    };
    layout::page("ApplicationSets", &session, body)
}
