//! Sync windows in the agent: the `SyncWindow` resources of the watched namespaces, kept
//! in a store (a change reconciles the Applications it selects at once), and the gate an
//! Application's windows and its namespace's make now ([`gate_for`]); [`crate::windows`]
//! decides.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, watcher};

use super::controller::AbortOnDrop;
use super::{AgentOptions, Context};
use crate::application::{Application, SyncWindow, SyncWindowStatus};
use crate::windows::{Gate, compile, gate};

/// The SyncWindows the agent knows, and whether it has read them yet.
#[derive(Clone)]
pub(super) struct Windows {
    pub store: Store<SyncWindow>,
    /// The first list is in (or the cluster has no SyncWindow kind): until then no
    /// Application syncs a new revision, lest a freeze be missed.
    pub ready: Arc<AtomicBool>,
}

/// Watches the SyncWindows of the agent's namespaces into a store; when one is created,
/// changed or deleted, the Applications of its namespace that it selected or selects are
/// reconciled.
pub(super) fn watch(
    client: &kube::Client,
    options: &AgentOptions,
    applications: &Store<Application>,
    trigger: &super::slots::Trigger,
) -> (Windows, AbortOnDrop) {
    let api: Api<SyncWindow> = match &options.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (store, writer) = kube::runtime::reflector::store();
    let ready = Arc::new(AtomicBool::new(false));
    let listed = ready.clone();
    let (applications, trigger) = (applications.clone(), trigger.clone());
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let window = match event {
                Ok(watcher::Event::Apply(w) | watcher::Event::Delete(w)) => w,
                Ok(watcher::Event::InitDone) => {
                    listed.store(true, Ordering::Relaxed);
                    continue;
                }
                Ok(_) => continue,
                Err(err) => {
                    // No SyncWindow kind in this cluster (CRDs of an older tether), or no
                    // right to read it: no namespace windows, said once; the Applications
                    // are reconciled all the same.
                    let why = unreadable(&err);
                    if let Some(why) = why.filter(|_| !listed.swap(true, Ordering::Relaxed)) {
                        tracing::warn!("{why}: no namespace sync windows apply");
                    }
                    tracing::debug!(%err, "the watch of SyncWindows is retried");
                    continue;
                }
            };
            // The window as it was is gone from the store by now: every Application of the
            // namespace is reconciled (it may have selected others before).
            let namespace = window.namespace().unwrap_or_default();
            for app in applications.state() {
                if app.namespace().as_deref() == Some(namespace.as_str()) {
                    trigger.routine(&app);
                }
            }
        }
    });
    (Windows { store, ready }, AbortOnDrop::new(task))
}

/// Why the SyncWindows cannot be read at all (the kind is not served, or the agent may not
/// list it); `None` for a failure that may pass.
fn unreadable(err: &watcher::Error) -> Option<&'static str> {
    let (watcher::Error::InitialListFailed(kube::Error::Api(status))
    | watcher::Error::WatchFailed(kube::Error::Api(status))) = err
    else {
        return None;
    };
    match status.code {
        404 => Some("the cluster has no SyncWindow kind (run tether install to add it)"),
        403 => Some(
            "the agent may not list SyncWindows (give it get, list and watch on syncwindows.tether.dev)",
        ),
        _ => None,
    }
}

/// Whether the SyncWindows are read (until then no reconcile may act, lest a freeze be
/// missed).
pub(super) fn ready(ctx: &Context) -> bool {
    ctx.windows.ready.load(Ordering::Relaxed)
}

/// What `app`'s windows (its own and its namespace's SyncWindows) let run now; `Err` names
/// the window that cannot be read.
pub(super) fn gate_for(ctx: &Context, app: &Application) -> Result<Gate, String> {
    let namespace = app.namespace().unwrap_or_default();
    let mut compiled = Vec::new();
    for (i, window) in app.spec.sync_windows.iter().enumerate() {
        compiled.push(compile(window, &format!("spec.syncWindows[{i}]"))?);
    }
    let mut shared: Vec<_> = ctx
        .windows
        .store
        .state()
        .into_iter()
        .filter(|w| w.namespace().as_deref() == Some(namespace.as_str()))
        .filter(|w| w.spec.selects(&app.name_any()))
        .collect();
    shared.sort_by_key(|w| w.name_any());
    for window in shared {
        let source = format!("SyncWindow {namespace}/{}", window.name_any());
        compiled.push(compile(&window.spec.window, &source)?);
    }
    if compiled.is_empty() {
        return Ok(Gate::open());
    }
    Ok(gate(&compiled, jiff::Timestamp::now()))
}

/// The status of `gate` (none for an Application without windows).
pub(super) fn status_of(gate: &Gate) -> Option<SyncWindowStatus> {
    if gate.message.is_empty() {
        return None;
    }
    Some(SyncWindowStatus {
        open: gate.open,
        message: gate.message.clone(),
        next_sync: gate.next_open.map(|t| t.to_string()),
        manual_sync: !gate.open && gate.manual_sync,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(code: u16) -> watcher::Error {
        let status: kube::core::Status = serde_json::from_value(serde_json::json!({
            "status": "Failure", "message": "m", "reason": "r", "code": code
        }))
        .expect("a Status");
        watcher::Error::InitialListFailed(kube::Error::Api(Box::new(status)))
    }

    #[test]
    fn no_kind_or_no_right_means_no_windows_and_anything_else_is_retried() {
        assert!(unreadable(&failed(404)).is_some_and(|w| w.contains("no SyncWindow kind")));
        assert!(unreadable(&failed(403)).is_some_and(|w| w.contains("may not list")));
        assert_eq!(unreadable(&failed(500)), None);
    }
}
