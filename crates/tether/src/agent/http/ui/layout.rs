//! The frame every page shares (header, navigation, the session's role) and the small
//! pieces pages are made of (state badges, times, commits).

use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::session::{Role, Session};

/// Two linked rings: tether's mark, drawn inline (no font has it everywhere).
pub const LOGO: &str = r#"<svg width="20" height="20" viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2.6" aria-hidden="true"><rect x="2" y="7" width="12" height="10" rx="5"/><rect x="10" y="7" width="12" height="10" rx="5"/></svg>"#;

/// A whole page: `title`, the body, and the data the script needs (CSRF token, role).
pub fn page(title: &str, session: &Session, body: Markup) -> Response {
    let csrf = session.csrf.clone().unwrap_or_default();
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="csrf-token" content=(csrf);
                title { (title) " · tether" }
                link rel="stylesheet" href="/ui/assets/ui.css";
                script src="/ui/assets/ui.js" defer {}
            }
            body data-role=(role_name(session.role)) {
                header.top {
                    a.brand href="/ui/" { span.logo { (maud::PreEscaped(LOGO)) } " tether" }
                    nav { a href="/ui/" { "Applications" } }
                    div.session {
                        span.role { (if session.role == Role::Operator { "operator" } else { "read-only" }) }
                        @if session.csrf.is_some() {
                            button.link #logout type="button" { "Log out" }
                        }
                    }
                }
                main { (body) }
                div #toast role="status" aria-live="polite" {}
            }
        }
    };
    Html(markup.into_string()).into_response()
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Operator => "operator",
        Role::Viewer => "viewer",
    }
}

/// A coloured badge for a sync state or a health.
pub fn badge(text: &str) -> Markup {
    let class = match text {
        "Synced" | "Healthy" | "Succeeded" | "True" => "ok",
        "OutOfSync" | "Progressing" | "Suspended" | "Window closed" => "warn",
        "Degraded" | "Failed" | "Missing" | "False" => "bad",
        _ => "neutral",
    };
    html! { span class={"badge " (class)} { (text) } }
}

/// A commit id, abbreviated, with the whole id on hover.
pub fn commit(id: &str) -> Markup {
    html! { code.commit title=(id) { (&id[..id.len().min(8)]) } }
}
