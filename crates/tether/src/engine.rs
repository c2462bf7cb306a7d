//! One sync for every caller: plan the desired objects against the cluster, apply the plan
//! (pre-flight dry-runs, waves and hooks, server-side apply, prune, health wait), and give
//! one answer ([`ApplyReport::into_result`]). `tether install` and `tether bootstrap` call
//! [`sync`]; `tether apply` and the agent plan first and look at the plan before applying
//! it (print it, refuse another's set, start the drift watches), then call
//! [`crate::apply::apply`] and read the same answer.

use crate::apply::{ApplyOptions, ApplyReport, SyncFailure, apply};
use crate::cluster::discovery::Resolver;
use crate::object::Object;
use crate::plan::{PlanErrors, PlanOptions, plan};

/// Why a sync did not succeed: the plan, the apply, or what the apply reported.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing was written: an object could not be planned.
    #[error(transparent)]
    Plan(#[from] PlanErrors),
    /// The apply stopped before its end (pre-flight, conflicts, the inventory).
    #[error(transparent)]
    Apply(#[from] crate::apply::Error),
    /// The apply ran and said how it ended (the report has every object's result).
    #[error(transparent)]
    Failed(#[from] SyncFailure),
}

/// Plans `objects` and applies the plan; `report` sees the report, whatever its outcome
/// (a command prints it), before the outcome is judged.
pub async fn sync(
    client: &kube::Client,
    resolver: &Resolver,
    objects: Vec<Object>,
    plan_options: &PlanOptions,
    apply_options: &ApplyOptions,
    report: impl FnOnce(&ApplyReport) -> anyhow::Result<()>,
) -> anyhow::Result<ApplyReport> {
    let planned = plan(client, resolver, objects, plan_options)
        .await
        .map_err(Error::from)?;
    let applied = apply(client, resolver, planned, apply_options)
        .await
        .map_err(Error::from)?;
    report(&applied)?;
    Ok(applied.into_result().map_err(Error::from)?)
}
