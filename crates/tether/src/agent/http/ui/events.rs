//! The live event stream (server-sent events): one `app` event per change of an
//! Application or of one of its objects, with the list's new row for it. Fed by the
//! agent's own watches, so an open page costs the API server nothing.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use kube::ResourceExt;
use serde_json::json;

use super::{UiState, list};
use crate::agent::drift::Changed;

pub async fn stream(
    State(state): State<UiState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // One event per change, read straight from the broadcast: the stream (and its
    // subscription) ends when the browser goes away and the server drops it.
    let events = futures::stream::unfold(
        (state.changes.subscribe(), state),
        |(mut changes, state)| async move {
            let event = match changes.recv().await {
                Ok(changed) => app_event(&state, changed),
                // Too many at once: the page reloads what it shows.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    Event::default().event("resync").data("{}")
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            Some((Ok(event), (changes, state)))
        },
    );
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// The `app` event for one change: the Application's new row and the counts.
fn app_event(state: &UiState, changed: Changed) -> Event {
    // Before the page hears of it: its next request must not get the old view (the same
    // change marked by every stream counts once).
    super::view::invalidate(&state.views, &changed);
    let changed = changed.app;
    let key = format!(
        "{}/{}",
        changed.namespace.clone().unwrap_or_default(),
        changed.name
    );
    let counts = list::counts(&state.apps.state()).into_string();
    let data = match state.apps.get(&changed) {
        Some(app) => json!({
            "app": key,
            "name": app.name_any(),
            "row": list::row(&app).into_string(),
            "counts": counts,
        }),
        None => json!({"app": key, "deleted": true, "counts": counts}),
    };
    Event::default().event("app").data(data.to_string())
}
