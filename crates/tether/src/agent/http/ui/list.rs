//! The Applications page: every Application the agent sees, with counts per state, filters
//! (name, namespace, sync, health) and pages of 50; rows change in place as the agent's
//! watches report (see `events`).

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use axum::response::Response;
use kube::ResourceExt;
use maud::{Markup, html};

use super::layout::{self, badge, commit};
use super::session::Session;
use super::{UiState, view};
use crate::agent::Application;

const SET_LABEL: &str = "tether.dev/application-set";

/// Rows per page.
const PAGE: usize = 50;

#[derive(Debug, Default, serde::Deserialize)]
pub struct Filter {
    #[serde(default)]
    q: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    sync: String,
    #[serde(default)]
    health: String,
    /// The Applications of one ApplicationSet.
    #[serde(default)]
    set: String,
    #[serde(default)]
    page: usize,
}

fn sync_of(app: &Application) -> &'static str {
    crate::application::sync_state(app.status.as_ref(), crate::application::Objects::NotPlanned)
}

fn health_of(app: &Application) -> &'static str {
    crate::application::health_state(app.status.as_ref())
}

impl Filter {
    fn keeps(&self, app: &Application) -> bool {
        (self.q.is_empty() || app.name_any().contains(self.q.trim()))
            && (self.namespace.is_empty() || app.namespace().as_deref() == Some(&self.namespace))
            && (self.sync.is_empty() || sync_of(app) == self.sync)
            && (self.health.is_empty() || health_of(app) == self.health)
            && (self.set.is_empty() || app.labels().get(SET_LABEL) == Some(&self.set))
    }

    fn link(&self, page: usize) -> String {
        let pairs = [
            ("q", self.q.as_str()),
            ("namespace", self.namespace.as_str()),
            ("sync", self.sync.as_str()),
            ("health", self.health.as_str()),
            ("set", self.set.as_str()),
        ];
        let mut query: Vec<String> = pairs
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| format!("{k}={}", urlencoding(v)))
            .collect();
        if page > 0 {
            query.push(format!("page={page}"));
        }
        format!("/ui/?{}", query.join("&"))
    }
}

fn urlencoding(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One row of the table; also sent as is by the event stream when the Application changes.
pub fn row(app: &Application) -> Markup {
    let namespace = app.namespace().unwrap_or_default();
    let name = app.name_any();
    let status = app.status.clone().unwrap_or_default();
    let last = status.history.first();
    let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    html! {
        tr data-app={(namespace) "/" (name)} {
            td.name {
                a href={"/ui/apps/" (namespace) "/" (name)} { (name) }
                @if app.spec.suspend { " " (badge("Suspended")) }
                @if status.sync_window.as_ref().is_some_and(|w| !w.open) { " " (badge("Window closed")) }
                @if let Some(set) = app.labels().get(SET_LABEL) {
                    div.set { "set " a href={"/ui/?set=" (set) "&namespace=" (namespace)} { (set) } }
                }
            }
            td { (namespace) }
            td { (badge(sync_of(app))) }
            td { (badge(health_of(app))) }
            td.revision {
                @match &status.last_applied_revision {
                    Some(revision) => {
                        (commit(revision))
                        @if let Some(info) = &status.revision_info {
                            @if let Some(reference) = &info.reference { " " span.ref { (reference.trim_start_matches("refs/heads/").trim_start_matches("refs/tags/")) } }
                            @if let Some(message) = &info.message { div.message { (message) } }
                            @if let Some(author) = &info.author { div.author { (author) } }
                        }
                    }
                    None => span.muted { "not applied yet" },
                }
            }
            td.last {
                @match last {
                    Some(entry) => {
                        (badge(&entry.result)) " "
                        time datetime=(entry.time) { (entry.time.replace('T', " ").trim_end_matches('Z')) }
                    }
                    None => @if let Some(ready) = ready { span.muted title=(ready.message) { (ready.reason) } },
                }
            }
        }
    }
}

/// The counts per state at the top of the page.
pub fn counts(apps: &[Arc<Application>]) -> Markup {
    let counts = view::counts(apps.iter().map(|a| a.as_ref()));
    let count = |key: &str| counts.get(key).copied().unwrap_or(0);
    html! {
        section.counts #counts {
            div.count { span.n { (apps.len()) } span.label { "Applications" } }
            @for label in crate::application::SYNC_STATES {
                a.count href={"/ui/?sync=" (label)} { span.n { (count(&format!("sync:{label}"))) } (badge(label)) }
            }
            @for label in crate::application::HEALTH_STATES {
                a.count href={"/ui/?health=" (label)} { span.n { (count(&format!("health:{label}"))) } (badge(label)) }
            }
        }
    }
}

pub async fn page(
    State(state): State<UiState>,
    Extension(session): Extension<Session>,
    Query(filter): Query<Filter>,
) -> Response {
    let started = std::time::Instant::now();
    let mut apps = state.apps.state();
    apps.sort_by_key(|a| (a.namespace(), a.name_any()));
    let namespaces: BTreeSet<String> = apps.iter().filter_map(|a| a.namespace()).collect();
    let shown: Vec<&Arc<Application>> = apps.iter().filter(|a| filter.keeps(a)).collect();
    let pages = shown.len().div_ceil(PAGE).max(1);
    let page = filter.page.min(pages - 1);
    let body = html! {
        (counts(&apps))
        p.sets { a href="/ui/sets" { "ApplicationSets →" } @if !filter.set.is_empty() { " · the Applications of set " strong { (filter.set) } } }
        form.filters method="get" action="/ui/" {
            input type="hidden" name="set" value=(filter.set);
            input type="search" name="q" placeholder="Filter by name" value=(filter.q);
            select name="namespace" {
                option value="" { "All namespaces" }
                @for ns in &namespaces { option value=(ns) selected[*ns == filter.namespace] { (ns) } }
            }
            select name="sync" {
                option value="" { "Any sync state" }
                @for s in crate::application::SYNC_STATES { option value=(s) selected[s == filter.sync] { (s) } }
            }
            select name="health" {
                option value="" { "Any health" }
                @for h in crate::application::HEALTH_STATES { option value=(h) selected[h == filter.health] { (h) } }
            }
            button type="submit" { "Filter" }
        }
        @if shown.is_empty() {
            p.empty { "No Application matches." }
        } @else {
            table.apps #apps {
                thead { tr { th { "Name" } th { "Namespace" } th { "Sync" } th { "Health" } th { "Revision" } th { "Last sync" } } }
                tbody {
                    @for app in shown.iter().skip(page * PAGE).take(PAGE) { (row(app)) }
                }
            }
            nav.pager {
                @if page > 0 { a href=(filter.link(page - 1)) { "← Previous" } }
                span { "Page " (page + 1) " of " (pages) " · " (shown.len()) " shown" }
                @if page + 1 < pages { a href=(filter.link(page + 1)) { "Next →" } }
            }
        }
    };
    let response = layout::page("Applications", &session, body);
    tracing::debug!(
        applications = apps.len(),
        seconds = started.elapsed().as_secs_f64(),
        "UI list rendered"
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_keep_what_they_name() {
        let app: Application = serde_json::from_value(serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Application",
            "metadata": {"name": "shop-web", "namespace": "team-a"},
            "spec": {"source": {"repoURL": "https://example.com/r.git", "path": "p"}, "destination": {"namespace": "team-a"}},
            "status": {"sync": {"status": "OutOfSync", "revision": "abc", "create": 0, "update": 1, "prune": 0, "unchanged": 3}, "health": "Healthy"}
        }))
        .expect("an Application");
        let filter = |q: &str, sync: &str| Filter {
            q: q.into(),
            sync: sync.into(),
            ..Default::default()
        };
        assert!(filter("web", "").keeps(&app));
        assert!(!filter("api", "").keeps(&app));
        assert!(filter("", "OutOfSync").keeps(&app));
        assert!(!filter("", "Synced").keeps(&app));
        assert_eq!(
            Filter {
                q: "a b&c".into(),
                page: 2,
                ..Default::default()
            }
            .link(2),
            "/ui/?q=a%20b%26c&page=2"
        );
    }
}
