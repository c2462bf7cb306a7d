//! The ApplySet parent Secret: the inventory widened before anything is created,
//! narrowed once the prunes are done, and whether the hooks of the last sync all ran.

use std::collections::BTreeSet;

use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};

use super::execute::Run;
use super::{ApplyReport, Error};
use crate::cluster::discovery::Resolver;
use crate::cluster::{api_for, describe};
use crate::inventory::ApplySet;
use crate::object::GroupKind;
use crate::plan::hooks::Phase;
use crate::plan::{Action, FIELD_MANAGER, HOOK_OF_LABEL, Plan};

impl Run<'_> {
    /// Widens the inventory before anything is created (crash safety).
    pub async fn widen(&mut self) {
        let widened = widened(self.plan);
        if let Err(e) = self
            .parent
            .record(self.client, &widened, &mut self.report)
            .await
        {
            self.stop(e);
        }
    }

    /// Narrows the inventory, only after the deletes are done.
    pub async fn narrow(&mut self) {
        let narrowed = narrowed(self.plan);
        if let Err(e) = self
            .parent
            .record(self.client, &narrowed, &mut self.report)
            .await
        {
            self.stop(e);
        }
    }

    /// Deleting the set: records that its PreDelete hooks ran, before any member is deleted
    /// (a retry does not run them again).
    pub async fn mark_deleting(&mut self) {
        let mut set = self.parent.recorded.clone();
        set.deleting = true;
        if let Err(e) = self
            .parent
            .record(self.client, &set, &mut self.report)
            .await
        {
            self.stop(e);
        }
    }

    /// Records whether this sync's hooks all ran to the end: why not, when an error stopped
    /// the sync or the report says it failed.
    pub async fn record_hooks(&mut self) {
        let why = match &self.error {
            Some(e) => Some(e.to_string()),
            None => self.report.failure_message(),
        };
        let plan = self.plan;
        if let Err(e) = self
            .parent
            .record_hooks(self.client, plan, why, &mut self.report)
            .await
        {
            self.stop(e);
        }
    }
}

impl Run<'_> {
    /// Deleting the set, once its members are gone: the objects its hooks left (those of
    /// its hooks' kinds and namespaces labelled as its hooks), then the parent itself.
    pub async fn remove_set(&mut self) {
        let (client, resolver, plan) = (self.client, self.resolver, self.plan);
        if let Err(e) = remove_set(client, resolver, plan, &mut self.report).await {
            self.stop(e);
        }
    }
}

async fn remove_set(
    client: &kube::Client,
    resolver: &Resolver,
    plan: &Plan,
    report: &mut ApplyReport,
) -> Result<(), Error> {
    let places: BTreeSet<(&str, &str, &str)> = plan
        .hooks
        .iter()
        .map(|h| {
            (
                h.key.group.as_str(),
                h.key.kind.as_str(),
                h.key.namespace.as_str(),
            )
        })
        .collect();
    let selector = format!("{HOOK_OF_LABEL}={}", plan.applyset.id);
    let background = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Background),
        ..Default::default()
    };
    for (group, kind, namespace) in places {
        let Some(info) = resolver.resolve_group_kind(group, kind) else {
            continue;
        };
        let api = api_for(client, &info, namespace);
        let failed = |what: String, e: &kube::Error| Error::Delete {
            what,
            reason: describe(e),
        };
        let left = api
            .list_metadata(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| failed(format!("the hooks ({kind}) of this set"), &e))?;
        for name in left.into_iter().filter_map(|o| o.metadata.name) {
            match api.delete(&name, &background).await {
                Ok(_) => report.writes += 1,
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(failed(format!("hook {kind} {name}"), &e)),
            }
        }
    }
    let parents: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), &plan.applyset.namespace);
    match parents
        .delete(&plan.applyset.parent_name(), &DeleteParams::default())
        .await
    {
        Ok(_) => report.writes += 1,
        Err(kube::Error::Api(status)) if status.code == 404 => {}
        Err(e) => {
            return Err(Error::Parent {
                name: plan.applyset.parent_name(),
                reason: describe(&e),
            });
        }
    }
    Ok(())
}

/// The desired objects' kinds, and their namespaces beyond the parent's own (the
/// ApplySet's "additional namespaces").
fn desired_members(plan: &Plan) -> (BTreeSet<GroupKind>, BTreeSet<String>) {
    let desired = plan.changes.iter().filter(|c| c.action != Action::Prune);
    let kinds = desired
        .clone()
        .map(|c| GroupKind {
            group: c.key.group.clone(),
            kind: c.key.kind.clone(),
        })
        .collect();
    let namespaces = desired
        .filter(|c| !c.key.namespace.is_empty() && c.key.namespace != plan.options.namespace)
        .map(|c| c.key.namespace.clone())
        .collect();
    (kinds, namespaces)
}

/// The set as recorded, with the desired objects' kinds and namespaces added (and the
/// plan's Application and source).
pub(super) fn widened(plan: &Plan) -> ApplySet {
    let (kinds, namespaces) = desired_members(plan);
    let mut widened = plan.applyset.clone();
    if plan.options.application.is_some() {
        widened.application = plan.options.application.clone();
    }
    if plan.options.source.is_some() {
        widened.source = plan.options.source.clone();
    }
    widened.group_kinds.extend(kinds);
    widened.namespaces.extend(namespaces);
    widened
}

/// The widened set with only the desired objects' kinds and namespaces.
pub(super) fn narrowed(plan: &Plan) -> ApplySet {
    let (kinds, namespaces) = desired_members(plan);
    let mut narrowed = widened(plan);
    narrowed.group_kinds = kinds;
    narrowed.namespaces = namespaces;
    narrowed
}

/// What the parent Secret records now; written only when that changes (never on a no-op).
pub(super) struct Parent {
    pub recorded: ApplySet,
    pub exists: bool,
}

impl Parent {
    pub async fn record(
        &mut self,
        client: &kube::Client,
        set: &ApplySet,
        report: &mut ApplyReport,
    ) -> Result<(), Error> {
        if self.exists
            && set.group_kinds == self.recorded.group_kinds
            && set.namespaces == self.recorded.namespaces
            && set.application == self.recorded.application
            && set.hooks_unfinished == self.recorded.hooks_unfinished
            && set.source == self.recorded.source
            && set.deleting == self.recorded.deleting
        {
            return Ok(());
        }
        let api: Api<k8s_openapi::api::core::v1::Secret> =
            Api::namespaced(client.clone(), &set.namespace);
        let manifest = set.parent_manifest();
        api.patch(
            &set.parent_name(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&manifest),
        )
        .await
        .map_err(|e| Error::Parent {
            name: set.parent_name(),
            reason: describe(&e),
        })?;
        report.writes += 1;
        self.recorded = set.clone();
        self.exists = true;
        Ok(())
    }

    /// Records whether the hooks of this sync (which ran them) all succeeded: until a sync
    /// runs them to the end, the set is not in sync and the next sync runs them again. A
    /// set without a parent yet needs no record: its next sync creates everything anyway.
    pub async fn record_hooks(
        &mut self,
        client: &kube::Client,
        plan: &Plan,
        why: Option<String>,
        report: &mut ApplyReport,
    ) -> Result<(), Error> {
        if !self.exists {
            return Ok(());
        }
        let due = plan.hooks.iter().any(|h| {
            h.phases
                .iter()
                .any(|p| *p != Phase::SyncFail && !p.on_delete())
        });
        let mut set = self.recorded.clone();
        set.hooks_unfinished = match why {
            Some(why) if due => Some(crate::inventory::UnfinishedHooks::new(
                !plan.parent_exists
                    || plan
                        .applyset
                        .hooks_unfinished
                        .as_ref()
                        .is_some_and(|u| u.install),
                &why,
            )),
            _ => None,
        };
        self.record(client, &set, report).await
    }
}
