//! Sync windows in push mode: the `SyncWindow` resources of the target namespace that
//! select the application (by its `--app` name) keep `tether apply` from writing while they
//! block, as they keep an agent's automated syncs; a blocking window with `manualSync` lets
//! it through (an apply from CI or a laptop is a sync asked for by hand), and
//! `--ignore-sync-windows` overrides them. `tether plan` only says so.

use kube::Api;
use kube::ResourceExt;

use crate::application::SyncWindow;
use crate::windows::{Gate, compile, gate};

/// The gate of the namespace's windows for `app` when they block now (`None`: none blocks,
/// none selects it, or the cluster has no SyncWindow kind).
pub(super) async fn closed_now(
    client: &kube::Client,
    namespace: &str,
    app: &str,
) -> anyhow::Result<Option<Gate>> {
    let api: Api<SyncWindow> = Api::namespaced(client.clone(), namespace);
    let listed = match api.list(&Default::default()).await {
        Ok(listed) => listed.items,
        // No SyncWindow kind here (the CRDs of an older tether, or none).
        Err(kube::Error::Api(status)) if status.code == 404 => return Ok(None),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            eprintln!(
                "warning: cannot read the SyncWindows of namespace {namespace} (forbidden): sync windows were not checked"
            );
            return Ok(None);
        }
        Err(e) => anyhow::bail!("cannot read the SyncWindows of namespace {namespace}: {e}"),
    };
    let mut selecting: Vec<&SyncWindow> = listed.iter().filter(|w| w.spec.selects(app)).collect();
    selecting.sort_by_key(|w| w.name_any());
    let mut compiled = Vec::new();
    for window in selecting {
        let source = format!("SyncWindow {namespace}/{}", window.name_any());
        compiled.push(compile(&window.spec.window, &source).map_err(anyhow::Error::msg)?);
    }
    if compiled.is_empty() {
        return Ok(None);
    }
    let gate = gate(&compiled, jiff::Timestamp::now());
    Ok((!gate.open).then_some(gate))
}

/// `tether plan`: says on stderr when a window blocks the application now.
pub(super) async fn note(client: &kube::Client, namespace: &str, app: &str) -> anyhow::Result<()> {
    let Some(gate) = closed_now(client, namespace, app).await? else {
        return Ok(());
    };
    let apply = if gate.manual_sync {
        "tether apply still runs (the window says manualSync)"
    } else {
        "tether apply is refused until then without --ignore-sync-windows"
    };
    eprintln!(
        "note: a sync window keeps {app} from syncing now ({}; {}): {apply}",
        gate.message,
        reopens(&gate),
    );
    Ok(())
}

/// When syncs may run again, for a message.
pub(super) fn reopens(gate: &Gate) -> String {
    match gate.next_open {
        Some(at) => format!("syncs may run from {at}"),
        None => "no window opens within a year".into(),
    }
}
