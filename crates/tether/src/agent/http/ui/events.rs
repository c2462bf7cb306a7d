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

/// At most this many changes waiting in the broadcast are sent as one batch.
const BATCH: usize = 256;

pub async fn stream(
    State(state): State<UiState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    // The changes read straight from the broadcast, those already waiting taken with each
    // (the stream, and its subscription, ends when the browser goes away and the server
    // drops it).
    let batches = futures::stream::unfold(
        (state.changes.subscribe(), state),
        |(mut changes, state)| async move {
            let events = match changes.recv().await {
                Ok(changed) => batch_events(&state, &mut changes, changed),
                // Too many at once: the page reloads what it shows.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => vec![resync()],
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            Some((futures::stream::iter(events), (changes, state)))
        },
    );
    let events = futures::StreamExt::map(futures::StreamExt::flatten(batches), Ok);
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn resync() -> Event {
    Event::default().event("resync").data("{}")
}

/// The events for `first` and the changes already waiting behind it (up to [`BATCH`]):
/// one `app` event per Application, all with the counts counted once. (Counted for each
/// change, 10,000 Applications changing state made each event cost a pass over all of them,
/// and the stream fell behind: 1,783 resyncs in one converge.)
fn batch_events(
    state: &UiState,
    changes: &mut tokio::sync::broadcast::Receiver<Changed>,
    first: Changed,
) -> Vec<Event> {
    use tokio::sync::broadcast::error::TryRecvError;
    let mut batch = vec![first];
    let mut lagged = false;
    while batch.len() < BATCH {
        match changes.try_recv() {
            Ok(changed) => batch.push(changed),
            Err(TryRecvError::Lagged(_)) => {
                lagged = true;
                break;
            }
            Err(_) => break,
        }
    }
    let counts = list::counts(&state.apps.state()).into_string();
    let mut seen = std::collections::HashSet::new();
    // The newest change of each Application, in the order they came.
    let mut events: Vec<Event> = batch
        .iter()
        .rev()
        .filter(|changed| seen.insert(changed.app.clone()))
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|changed| app_event(state, changed.clone(), &counts))
        .collect();
    if lagged {
        events.push(resync());
    }
    events
}

/// The `app` event for one change: the Application's new row and the counts.
fn app_event(state: &UiState, changed: Changed, counts: &str) -> Event {
    // Before the page hears of it: its next request must not get the old view (the same
    // change marked by every stream counts once).
    super::view::invalidate(&state.views, &changed);
    let changed = changed.app;
    let key = format!(
        "{}/{}",
        changed.namespace.clone().unwrap_or_default(),
        changed.name
    );
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
