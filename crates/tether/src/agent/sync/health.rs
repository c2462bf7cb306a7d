//! The health of an Application's set after a sync: read with the Application's client,
//! again only for what may have changed since the last read.

use futures::StreamExt;

use crate::agent::clusters::Connected;
use crate::agent::{Context, Desired};
use crate::health::rules::Rules;
use crate::health::{self, HealthStatus};

/// The health of set `id` (its objects as its last full sync desired them), reading again
/// only what may have changed: the members whose status the watches saw change, and those
/// not Healthy at the last read (a rollout in progress); everything when nothing was read
/// before or too many changed. Tells the drift watch that status changes so far are
/// accounted for.
pub(super) async fn assess_set(
    ctx: &Context,
    dest: &Connected,
    client: &kube::Client,
    id: &str,
    rules: &Rules,
) -> HealthStatus {
    let changed = dest.drift.take_status_changes(id);
    let desired = dest
        .desired
        .lock()
        .expect("not poisoned")
        .get(id)
        .cloned()
        .unwrap_or_default();
    let known = dest.health.lock().expect("not poisoned").get(id).cloned();
    let to_read: Vec<Desired> = match (&changed, &known) {
        (Some(changed), Some(known)) => desired
            .iter()
            .filter(|(key, _)| {
                changed.contains(key) || known.get(key).is_none_or(|h| *h != HealthStatus::Healthy)
            })
            .cloned()
            .collect(),
        _ => desired.clone(),
    };
    let read = assess_each(ctx, client, &to_read, rules).await;
    let mut all = dest.health.lock().expect("not poisoned");
    let each = all.entry(id.to_string()).or_default();
    each.extend(read);
    each.retain(|key, _| desired.iter().any(|(k, _)| k == key));
    HealthStatus::worst(
        desired
            .iter()
            .map(|(key, _)| each.get(key).copied().unwrap_or(HealthStatus::Unknown)),
    )
}

/// Each desired object's health, read with `client` (one GET each).
pub(super) async fn assess_each(
    ctx: &Context,
    client: &kube::Client,
    desired: &[Desired],
    rules: &Rules,
) -> Vec<(crate::object::ObjectKey, HealthStatus)> {
    futures::stream::iter((0..desired.len()).map(|i| async move {
        let (key, kind) = &desired[i];
        let Some(kind) = kind.clone() else {
            return (key.clone(), HealthStatus::Unknown);
        };
        let live = crate::cluster::api_for(client, &kind, &key.namespace)
            .get_opt(&key.name)
            .await
            .ok()
            .flatten()
            .map(|o| serde_json::to_value(o).expect("objects serialize"));
        (
            key.clone(),
            health::assess_with(live.as_ref(), rules).status,
        )
    }))
    .buffer_unordered(ctx.options.concurrency.max(1))
    .collect::<Vec<_>>()
    .await
}
