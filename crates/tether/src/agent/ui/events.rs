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

pub async fn stream(
    State(state): State<UiState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut changes = state.changes.subscribe();
    let store = state.apps.clone();
    let views = state.views.clone();
    let events = async_stream(move |sender| async move {
        loop {
            let changed = match changes.recv().await {
                Ok(changed) => changed,
                // Too many at once: the page reloads what it shows.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    if sender
                        .send(Event::default().event("resync").data("{}"))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            // Before the page hears of it: its next request must not get the old view (the
            // same change marked by every stream counts once).
            super::view::invalidate(&views, &changed);
            let changed = changed.app;
            let key = format!(
                "{}/{}",
                changed.namespace.clone().unwrap_or_default(),
                changed.name
            );
            let counts = list::counts(&store.state()).into_string();
            let data = match store.get(&changed) {
                Some(app) => json!({
                    "app": key,
                    "name": app.name_any(),
                    "row": list::row(&app).into_string(),
                    "counts": counts,
                }),
                None => json!({"app": key, "deleted": true, "counts": counts}),
            };
            if sender
                .send(Event::default().event("app").data(data.to_string()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// A stream fed by `producer` through a small channel (ends when the producer returns or
/// the client goes away).
fn async_stream<F, Fut>(producer: F) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Event>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (sender, mut receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(producer(sender));
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx).map(|e| e.map(Ok)))
}
