//! Health waits: between sync waves, before the PostSync hooks, and `--wait`.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::Value;

use super::ApplyReport;
use super::execute::Run;
use crate::cluster::api_for;
use crate::cluster::discovery::Resolver;
use crate::health::rules::Rules;
use crate::health::{self, Health, HealthStatus};
use crate::object::ObjectKey;
use crate::plan::Change;

impl<'a> Run<'a> {
    /// The changes named by `members`, as planned.
    fn members(&self, members: &[usize]) -> Vec<&'a Change> {
        let plan = self.plan;
        members.iter().map(|&i| &plan.changes[i]).collect()
    }

    /// Waits until a wave is Healthy before the next; when it does not become so, the
    /// stages stop.
    pub async fn wait_wave(&mut self, wave: i64, members: &[usize]) {
        let members = self.members(members);
        let options = self.options;
        if let Err(why) = wait_until_healthy(
            self.client,
            self.resolver,
            &options.health_rules,
            &members,
            options.hook_timeout,
            WAVE_PAUSE,
            &options.progress,
        )
        .await
        .1
        {
            self.report.failure = Some(format!("sync wave {wave} did not become Healthy: {why}"));
            self.applied_all = false;
        }
    }

    /// Waits until every desired object is Healthy, before the PostSync hooks.
    pub async fn wait_for_post_sync(&mut self, members: &[usize]) {
        let members = self.members(members);
        let options = self.options;
        if let Err(why) = wait_until_healthy(
            self.client,
            self.resolver,
            &options.health_rules,
            &members,
            options.hook_timeout,
            WAVE_PAUSE,
            &options.progress,
        )
        .await
        .1
        {
            self.report.failure = Some(format!("PostSync hooks not run: {why}"));
        }
    }

    /// `--wait`, with its own progress.
    pub async fn wait_healthy(&mut self, members: &[usize], timeout: Duration) {
        let members = self.members(members);
        let progress = &self.options.progress;
        progress.begin("waiting for health", members.len());
        wait_healthy(
            self.client,
            self.resolver,
            &self.options.health_rules,
            &members,
            &mut self.report,
            timeout,
            progress,
        )
        .await;
        progress.finish();
    }
}

/// The health of each of `changes`, read from the cluster now.
async fn check_health(
    client: &kube::Client,
    resolver: &Resolver,
    rules: &Rules,
    changes: &[&Change],
) -> Vec<(ObjectKey, Health)> {
    futures::stream::iter((0..changes.len()).map(|i| async move {
        let change = changes[i];
        let api_version = change
            .desired
            .as_ref()
            .and_then(|d| d["apiVersion"].as_str())
            .unwrap_or_default();
        let Some(kind) = change
            .kind
            .clone()
            .or_else(|| resolver.resolve(api_version, &change.key.kind))
        else {
            return (change.key.clone(), Health::missing());
        };
        let live: Option<Value> = api_for(client, &kind, &change.key.namespace)
            .get_opt(&change.key.name)
            .await
            .ok()
            .flatten()
            .map(|o| serde_json::to_value(o).expect("objects serialize"));
        (
            change.key.clone(),
            health::assess_with(live.as_ref(), rules),
        )
    }))
    .buffer_unordered(16)
    .collect()
    .await
}

/// The first pause between health checks of a wave or before PostSync hooks: short, for a
/// wave is often Healthy at once.
const WAVE_PAUSE: Duration = Duration::from_millis(100);

/// Waits until every one of `changes` is Healthy, checking again after `first_pause`
/// (doubling up to 1 s). Returns the last health of each, and `Err` saying which is
/// Degraded, or which are not Healthy when `timeout` ran out.
async fn wait_until_healthy(
    client: &kube::Client,
    resolver: &Resolver,
    rules: &Rules,
    changes: &[&Change],
    timeout: Duration,
    first_pause: Duration,
    progress: &crate::progress::ProgressHandle,
) -> (Vec<(ObjectKey, Health)>, Result<(), String>) {
    let deadline = Instant::now() + timeout;
    use backon::BackoffBuilder;
    let mut pauses =
        crate::duration::doubling(first_pause, first_pause.max(Duration::from_secs(1))).build();
    loop {
        let checks = check_health(client, resolver, rules, changes).await;
        if let Some((key, h)) = checks
            .iter()
            .find(|(_, h)| h.status == HealthStatus::Degraded)
        {
            let why = format!("{key} is Degraded: {}", h.message);
            return (checks, Err(why));
        }
        let not_healthy: Vec<&(ObjectKey, Health)> = checks
            .iter()
            .filter(|(_, h)| h.status != HealthStatus::Healthy)
            .collect();
        let Some((key, h)) = not_healthy.first() else {
            return (checks, Ok(()));
        };
        if Instant::now() > deadline {
            let why = format!(
                "{} object(s) not healthy after {} s, e.g. {key}: {} ({})",
                not_healthy.len(),
                timeout.as_secs(),
                h.status,
                h.message
            );
            return (checks, Err(why));
        }
        progress.note(&format!(
            "{}/{} healthy; e.g. {key}: {} ({})",
            checks.len() - not_healthy.len(),
            checks.len(),
            h.status,
            h.message
        ));
        tokio::time::sleep(pauses.next().unwrap_or(first_pause)).await;
    }
}

/// `--wait`: every desired object Healthy (checked every second), one Degraded, or time
/// ran out; each object's last health goes into the report.
async fn wait_healthy(
    client: &kube::Client,
    resolver: &Resolver,
    rules: &Rules,
    desired: &[&Change],
    report: &mut ApplyReport,
    timeout: Duration,
    progress: &crate::progress::ProgressHandle,
) {
    let (checks, healthy) = wait_until_healthy(
        client,
        resolver,
        rules,
        desired,
        timeout,
        Duration::from_secs(1),
        progress,
    )
    .await;
    for (key, health) in &checks {
        if let Some(result) = report.results.iter_mut().find(|r| &r.key == key) {
            result.health = Some(health.clone());
        }
    }
    report.unhealthy = healthy.err();
}
