//! `tether status`: is the cluster in sync with a revision, and is every object healthy?

use std::io::Write;

use serde::Serialize;

use super::GlobalArgs;
use super::plan::{TargetArgs, prepare};
use crate::health::{self, Health, HealthStatus};
use crate::object::ObjectKey;
use crate::output::OutputFormat;
use crate::plan::Action;

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Exit 0 when Synced and Healthy, 2 otherwise (1 on error).
    #[arg(long)]
    pub detailed_exitcode: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Sync {
    Synced,
    OutOfSync,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectStatus {
    key: ObjectKey,
    sync: Sync,
    /// What apply would do about it.
    action: Action,
    health: Health,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusDocument<'a> {
    api_version: &'static str,
    kind: &'static str,
    app: &'a str,
    namespace: &'a str,
    revision: Option<&'a crate::source::git::Revision>,
    sync: Sync,
    health: HealthStatus,
    objects: Vec<ObjectStatus>,
}

/// `tether status`: plan against the live objects, assess each one's health, report; with
/// `--detailed-exitcode`, 2 unless Synced and Healthy.
pub async fn run(
    global: &GlobalArgs,
    args: &StatusArgs,
    out: &mut impl Write,
) -> anyhow::Result<u8> {
    let prepared = prepare(global, &args.target, true, false).await?;
    let plan = &prepared.plan;
    let objects = object_statuses(plan);
    let (sync, overall) = verdict(&objects);
    match global.output {
        OutputFormat::Json | OutputFormat::Yaml => {
            let document = StatusDocument {
                api_version: "tether.dev/v1alpha1",
                kind: "ApplicationStatus",
                app: &plan.options.app,
                namespace: &plan.options.namespace,
                revision: prepared.revision.as_ref(),
                sync,
                health: overall,
                objects,
            };
            crate::output::write_structured(out, global.output, &document)?;
        }
        _ => write_text(
            out,
            plan,
            prepared.revision.as_ref(),
            &objects,
            sync,
            overall,
        )?,
    }
    let clean = sync == Sync::Synced && overall == HealthStatus::Healthy;
    Ok(if args.detailed_exitcode && !clean {
        2
    } else {
        0
    })
}

/// Each object of the plan: in sync or not, and its health (one apply prunes is healthy).
fn object_statuses(plan: &crate::plan::Plan) -> Vec<ObjectStatus> {
    plan.changes
        .iter()
        .map(|change| ObjectStatus {
            key: change.key.clone(),
            sync: if change.action == Action::Unchanged {
                Sync::Synced
            } else {
                Sync::OutOfSync
            },
            action: change.action,
            health: if change.action == Action::Prune {
                Health {
                    status: HealthStatus::Healthy,
                    message: "no longer in Git; apply prunes it".into(),
                }
            } else {
                health::assess(change.live.as_ref())
            },
        })
        .collect()
}

/// The application's sync (Synced when every object is) and health (its least healthy
/// object's).
fn verdict(objects: &[ObjectStatus]) -> (Sync, HealthStatus) {
    let sync = if objects.iter().all(|o| o.sync == Sync::Synced) {
        Sync::Synced
    } else {
        Sync::OutOfSync
    };
    // The application is as healthy as its least healthy object.
    let overall = objects.iter().map(|o| o.health.status);
    (sync, HealthStatus::worst(overall))
}

fn write_text(
    out: &mut impl Write,
    plan: &crate::plan::Plan,
    revision: Option<&crate::source::git::Revision>,
    objects: &[ObjectStatus],
    sync: Sync,
    overall: HealthStatus,
) -> anyhow::Result<()> {
    let at = revision
        .map(|r| format!(" at {}", r.short()))
        .unwrap_or_default();
    let differing = objects.iter().filter(|o| o.sync == Sync::OutOfSync).count();
    writeln!(
        out,
        "app {} in namespace {}{at}: {sync:?} ({differing} of {} objects differ), {overall}",
        plan.options.app,
        plan.options.namespace,
        objects.len()
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:<10} {:<12} {:<50} MESSAGE",
        "SYNC", "HEALTH", "OBJECT"
    )?;
    for object in objects {
        let sync = match object.sync {
            Sync::Synced => "Synced".to_string(),
            Sync::OutOfSync => format!("{}", object.action),
        };
        writeln!(
            out,
            "{sync:<10} {:<12} {:<50} {}",
            object.health.status.to_string(),
            object.key.to_string(),
            object.health.message
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(name: &str, sync: Sync, status: HealthStatus) -> ObjectStatus {
        ObjectStatus {
            key: ObjectKey {
                group: String::new(),
                kind: "ConfigMap".into(),
                namespace: "shop".into(),
                name: name.into(),
            },
            sync,
            action: if sync == Sync::Synced {
                Action::Unchanged
            } else {
                Action::Update
            },
            health: Health::new(status, ""),
        }
    }

    #[test]
    fn the_application_is_synced_when_every_object_is_and_as_healthy_as_the_least() {
        assert_eq!(verdict(&[]), (Sync::Synced, HealthStatus::Healthy));
        let objects = [
            object("a", Sync::Synced, HealthStatus::Healthy),
            object("b", Sync::Synced, HealthStatus::Progressing),
        ];
        assert_eq!(verdict(&objects), (Sync::Synced, HealthStatus::Progressing));
        let objects = [
            object("a", Sync::OutOfSync, HealthStatus::Healthy),
            object("b", Sync::Synced, HealthStatus::Degraded),
            object("c", Sync::Synced, HealthStatus::Missing),
        ];
        assert_eq!(verdict(&objects), (Sync::OutOfSync, HealthStatus::Degraded));
    }
}
