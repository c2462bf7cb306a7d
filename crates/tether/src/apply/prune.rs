//! Pruning: deleting the members that are no longer desired, and waiting until they are
//! gone.

use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{Api, DeleteParams, DynamicObject, PropagationPolicy};

use super::execute::Run;
use super::{ApplyOptions, ObjectResult};
use crate::cluster::{api_for, describe};
use crate::plan::{Action, Change};

impl Run<'_> {
    /// Deletes one wave of a stage; a failure stops pruning (and the narrowing after it).
    pub async fn prune(&mut self, changes: &[usize]) {
        let batch: Vec<&Change> = changes.iter().map(|&i| &self.plan.changes[i]).collect();
        let results = prune_batch(self.client, &batch, self.options).await;
        for result in &results {
            if result.error.is_none() {
                self.report.pruned += 1;
                self.report.writes += 1;
            } else {
                self.pruned_all = false;
            }
        }
        self.report.results.extend(results);
    }
}

async fn prune_batch(
    client: &kube::Client,
    batch: &[&Change],
    options: &ApplyOptions,
) -> Vec<ObjectResult> {
    futures::stream::iter((0..batch.len()).map(|i| async move {
        let change = batch[i];
        let kind = change.kind.as_ref().expect("prune candidates are resolved");
        let api = api_for(client, kind, &change.key.namespace);
        let propagation = match options.foreground {
            true => PropagationPolicy::Foreground,
            false => PropagationPolicy::Background,
        };
        let params = DeleteParams {
            propagation_policy: Some(propagation),
            ..Default::default()
        };
        let error = match api.delete(&change.key.name, &params).await {
            Ok(_) => wait_gone(&api, &change.key.name, options.settle_timeout)
                .await
                .err(),
            Err(kube::Error::Api(status)) if status.code == 404 => None,
            Err(e) => Some(describe(&e)),
        };
        options.progress.tick();
        ObjectResult {
            key: change.key.clone(),
            action: Action::Prune,
            error,
            health: None,
            resource_version: None,
            written_health: None,
        }
    }))
    .buffer_unordered(options.concurrency.max(1))
    .collect()
    .await
}

pub(super) async fn wait_gone(
    api: &Api<DynamicObject>,
    name: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match api.get_opt(name).await {
            Ok(None) => return Ok(()),
            Ok(Some(_)) if Instant::now() > deadline => {
                return Err(format!(
                    "still present {} s after deletion (finalizers?)",
                    timeout.as_secs()
                ));
            }
            Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            Err(e) => return Err(describe(&e)),
        }
    }
}
