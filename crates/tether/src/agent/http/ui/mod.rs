//! The web UI, served by the agent next to the JSON API (same port, same token): the
//! Applications list ([`list`]), one Application with its resource tree, live diff, history
//! and actions ([`app`]), the login page ([`session`]) and a live event stream
//! ([`events`]). Pages are rendered on the server; a small embedded script keeps them live
//! from the agent's own watches (no request to the API server per viewer). Start at
//! [`routes`].
//!
//! # Security
//! A session starts from the API token (or the read-only token) given once on the login
//! page and lives in an HttpOnly, SameSite=Strict cookie; `Authorization: Bearer <token>`
//! works too (scripts, tests). Every action is a POST that carries the session's CSRF token
//! and comes from this origin. Without a valid session, pages lead to the login page and
//! everything else answers 401, with no Application data. Secret values never reach the
//! browser: diffs are redacted, live Secrets show key names only. Every response carries a
//! strict Content-Security-Policy (scripts and styles only from the UI's own assets, no
//! inline code, no framing), `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`
//! and `Referrer-Policy: same-origin` ([`SECURITY_HEADERS`]); the cookie is Secure when
//! the UI is reached over HTTPS.

mod app;
mod assets;
mod events;
mod layout;
mod list;
mod session;
mod sets;
mod view;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::broadcast;

use super::api::ApiState;
use crate::agent::Application;
use crate::agent::drift::Changed;

pub use session::Role;

/// Everything the UI's handlers share.
#[derive(Clone)]
pub struct UiState {
    pub api: ApiState,
    /// The Applications as the UI's own watch last saw them.
    apps: Store<Application>,
    /// A token that gives a read-only session (shows everything, offers no action).
    readonly_token: Option<Arc<Vec<u8>>>,
    sessions: session::Sessions,
    /// Applications whose state changed (status, or an object of theirs): fed by the
    /// agent's watches, read by every open page.
    changes: broadcast::Sender<Changed>,
    /// The view of each Application (plan, tree), computed once per change for every viewer.
    views: Arc<Mutex<HashMap<ObjectRef<Application>, view::Cached>>>,
}

/// Starts the UI's watch of the Applications (in `namespace`, or all) and returns its
/// state with the tasks that keep it current. `changes` is where the agent's drift watches
/// announce Applications whose objects changed; the UI's watch adds the Applications'
/// own changes.
pub fn start(
    api: ApiState,
    readonly_token: Option<Vec<u8>>,
    changes: broadcast::Sender<Changed>,
    namespace: Option<String>,
) -> (UiState, Vec<tokio::task::JoinHandle<()>>) {
    let (apps, writer) = kube::runtime::reflector::store();
    let watch = follow_applications(api.client.clone(), namespace, writer, changes.clone());
    let state = UiState {
        api,
        apps,
        readonly_token: readonly_token.map(Arc::new),
        sessions: Default::default(),
        changes,
        views: Default::default(),
    };
    let invalidate = view::invalidate_on_change(&state);
    (state, vec![watch, invalidate])
}

/// The headers on every UI response.
pub const SECURITY_HEADERS: [(&str, &str); 5] = [
    (
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    // Not no-referrer: a browser then sends `Origin: null` on the login form, which the
    // same-origin check refuses. Nothing leaves for another site.
    ("referrer-policy", "same-origin"),
    ("cross-origin-opener-policy", "same-origin"),
];

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, axum::http::HeaderValue::from_static(value));
    }
    response
}

pub fn routes(state: UiState) -> Router {
    let protected = Router::new()
        .route("/ui/", get(list::page))
        .route("/ui/events", get(events::stream))
        .route("/ui/sets", get(sets::page))
        .route("/ui/apps/{namespace}/{name}", get(app::page))
        .route("/ui/apps/{namespace}/{name}/tree", get(app::tree_fragment))
        .route("/ui/apps/{namespace}/{name}/object", get(app::object))
        .route("/ui/apps/{namespace}/{name}/{action}", post(app::action))
        .route("/ui/assets/{file}", get(assets::serve))
        .route("/ui/logout", post(session::logout))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/login", get(session::login_page).post(session::login))
        .merge(protected)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Lets a request through only with a valid session (cookie or bearer token); the session
/// travels on as a request extension. Without one, a page request goes to the login page
/// and anything else gets 401.
async fn require_session(
    State(state): State<UiState>,
    mut request: Request,
    next: Next,
) -> Response {
    match state.sessions.authenticate(&state, request.headers()) {
        Some(session) => {
            if request.method() == axum::http::Method::POST
                && let Err(why) = session::check_post(&session, request.headers())
            {
                return (StatusCode::FORBIDDEN, why).into_response();
            }
            request.extensions_mut().insert(session);
            next.run(request).await
        }
        None => {
            let wants_page = request.method() == axum::http::Method::GET
                && request
                    .headers()
                    .get(axum::http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|accept| accept.contains("text/html"));
            if wants_page {
                Redirect::to("/ui/login").into_response()
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    "log in first: a valid session is required",
                )
                    .into_response()
            }
        }
    }
}

/// Keeps the UI's copy of the Applications, and announces each one that changed (after
/// the copy holds its new state): one watch, whatever the number of viewers.
fn follow_applications(
    client: kube::Client,
    namespace: Option<String>,
    mut writer: kube::runtime::reflector::store::Writer<Application>,
    changes: broadcast::Sender<Changed>,
) -> tokio::task::JoinHandle<()> {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    tokio::spawn(async move {
        let api: kube::Api<Application> = match &namespace {
            Some(ns) => kube::Api::namespaced(client, ns),
            None => kube::Api::all(client),
        };
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            let Ok(event) = event else { continue };
            writer.apply_watcher_event(&event);
            match event {
                watcher::Event::Apply(app) | watcher::Event::Delete(app) => {
                    let _ = changes.send(Changed::new(ObjectRef::from_obj(&app)));
                }
                watcher::Event::InitDone => {
                    for app in writer.as_reader().state() {
                        let _ = changes.send(Changed::new(ObjectRef::from_obj(app.as_ref())));
                    }
                }
                _ => {}
            }
        }
    })
}
