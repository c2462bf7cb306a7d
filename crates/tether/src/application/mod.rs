//! The `Application` custom resource (`applications.tether.dev/v1alpha1`): one source, how
//! to render it, one destination and a sync policy; its status is the agent's record.
//! Below every stage that uses it (the Application pipeline in [`crate::app`], the agent,
//! the CLI). Start at [`ApplicationSpec`] ([`spec`]) and [`ApplicationStatus`] ([`status`]).

pub mod actions;
mod check;
pub mod commit_status;
pub mod set;
pub mod spec;
pub mod state;
pub mod status;
#[cfg(test)]
mod tests;
pub mod windows;

pub use set::{ApplicationSet, ApplicationSetSpec, ApplicationSetStatus};
pub use spec::*;
pub use state::{ConditionStatus, ConditionType, Reason, RunResult, SyncState, health_from};
pub use status::*;
pub use windows::{SyncWindow, SyncWindowSpec, Window, WindowKind};

/// `tether sync` sets this annotation (to a timestamp) to ask for a full sync now.
pub const SYNC_REQUEST_ANNOTATION: &str = "tether.dev/sync-requested";
/// Set by a sharded agent that received a webhook for an Application of another agent's
/// shard: the owner sees the change, lists the remote's refs afresh and reconciles.
pub const REFRESH_ANNOTATION: &str = "tether.dev/refresh-requested";
/// `tether rollback` records the ref it replaced here, for `tether resume`.
pub const ROLLED_BACK_FROM_ANNOTATION: &str = "tether.dev/rolled-back-from";

/// `namespace/name`: how the agent keys its memory of an Application and its shard.
pub fn application_key(app: &Application) -> String {
    use kube::ResourceExt;
    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any())
}

/// The custom resources of tether: Applications and SyncWindows, as installed.
pub fn crds()
-> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>
{
    use kube::CustomResourceExt;
    vec![Application::crd(), SyncWindow::crd(), ApplicationSet::crd()]
}

/// Their names, as `kubectl get crd` shows them.
pub const CRD_NAMES: [&str; 3] = [
    "applications.tether.dev",
    "syncwindows.tether.dev",
    "applicationsets.tether.dev",
];
