//! Sync waves and hooks, read from an object's annotations: the order an object is applied
//! in ([`wave_of`]), and whether it is a hook that runs at one phase of a sync instead of a
//! member of the set ([`role_of`]). Argo CD's annotations, tether's own, and Helm's hook
//! annotations are understood; all of this is pure, the running is in `apply::hooks`.

use serde::Serialize;
use serde_json::Value;

use crate::object::{HELM_HOOK, HOOK_ANNOTATIONS};

/// The sync wave annotations: lower waves are applied (and Healthy) first.
pub const WAVE_ANNOTATIONS: [&str; 2] = ["tether.dev/sync-wave", "argocd.argoproj.io/sync-wave"];
const DELETE_POLICY_ANNOTATIONS: [&str; 2] = [
    "tether.dev/hook-delete-policy",
    "argocd.argoproj.io/hook-delete-policy",
];
const HELM_WEIGHT: &str = "helm.sh/hook-weight";
const HELM_DELETE_POLICY: &str = "helm.sh/hook-delete-policy";

/// Helm's order of kinds among hooks of one weight (its `InstallOrder`, v3 and v4): a
/// ServiceAccount and its Role before the Job that uses them.
const INSTALL_ORDER: [&str; 38] = [
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
];

/// Where `kind` runs among hooks of one weight: Helm's kind order, then kinds Helm does
/// not know (the caller sorts those by name).
pub fn kind_rank(kind: &str) -> usize {
    INSTALL_ORDER
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(INSTALL_ORDER.len())
}

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Phase {
    /// Before any object of the set is written; a failure stops the sync.
    PreSync,
    /// With the objects of its wave.
    Sync,
    /// Once every object is applied and Healthy.
    PostSync,
    /// When the sync failed.
    SyncFail,
    /// When the Application is deleted, before any of its objects is; a failure keeps them.
    PreDelete,
    /// When the Application is deleted, once all of its objects are gone.
    PostDelete,
}

impl Phase {
    /// Runs when the set is deleted, never in a sync.
    pub fn on_delete(self) -> bool {
        matches!(self, Phase::PreDelete | Phase::PostDelete)
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::PreSync => "PreSync",
            Phase::Sync => "Sync",
            Phase::PostSync => "PostSync",
            Phase::SyncFail => "SyncFail",
            Phase::PreDelete => "PreDelete",
            Phase::PostDelete => "PostDelete",
        })
    }
}

/// When a hook's object is deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletePolicy {
    /// Before the hook is created again (the default when none is named).
    pub before_creation: bool,
    /// Once it succeeded.
    pub succeeded: bool,
    /// Once it failed.
    pub failed: bool,
}

impl std::fmt::Display for DeletePolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = [
            (self.before_creation, "BeforeHookCreation"),
            (self.succeeded, "HookSucceeded"),
            (self.failed, "HookFailed"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect();
        f.write_str(&names.join(","))
    }
}

/// What an object is to a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A member of the set, applied in this wave.
    Member { wave: i64 },
    /// A hook: run at these phases (in order of `order`), never a member.
    Hook {
        phases: Vec<Phase>,
        order: i64,
        delete: DeletePolicy,
    },
    /// Neither applied nor run by a sync: `Skip`, Helm's test and rollback hooks, or an
    /// install hook on an upgrade and the reverse.
    Ignored { why: String },
}

/// The annotation value under the first of `keys` the object has.
fn annotation<'a>(manifest: &'a Value, keys: &[&str]) -> Option<(&'a str, String)> {
    let annotations = manifest["metadata"]["annotations"].as_object()?;
    keys.iter().find_map(|key| {
        annotations
            .get(*key)
            .and_then(Value::as_str)
            .map(|v| (v, key.to_string()))
    })
}

fn parse_integer(value: &str, key: &str) -> Result<i64, String> {
    value
        .trim()
        .parse()
        .map_err(|_| format!("annotation {key}: {value:?} is not an integer"))
}

/// The object's sync wave (0 when it names none).
pub fn wave_of(manifest: &Value) -> Result<i64, String> {
    match annotation(manifest, &WAVE_ANNOTATIONS) {
        Some((value, key)) => parse_integer(value, &key),
        None => Ok(0),
    }
}

/// What the object is to a sync. `first_sync`: the set has never been applied (Helm's
/// "install"; any later sync is an "upgrade").
pub fn role_of(manifest: &Value, first_sync: bool) -> Result<Role, String> {
    if let Some((value, key)) = annotation(manifest, &HOOK_ANNOTATIONS) {
        let mut phases = Vec::new();
        for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let phase = match name {
                "PreSync" => Phase::PreSync,
                "Sync" => Phase::Sync,
                "PostSync" => Phase::PostSync,
                "SyncFail" => Phase::SyncFail,
                "PreDelete" => Phase::PreDelete,
                "PostDelete" => Phase::PostDelete,
                "Skip" => {
                    return Ok(Role::Ignored {
                        why: format!("{key}: Skip"),
                    });
                }
                other => {
                    return Err(format!(
                        "annotation {key}: unknown hook {other:?}; use PreSync, Sync, PostSync, SyncFail, PreDelete, PostDelete or Skip"
                    ));
                }
            };
            if !phases.contains(&phase) {
                phases.push(phase);
            }
        }
        if phases.is_empty() {
            return Err(format!("annotation {key} names no hook"));
        }
        let delete = match annotation(manifest, &DELETE_POLICY_ANNOTATIONS) {
            Some((value, key)) => parse_policy(
                value,
                &key,
                ["BeforeHookCreation", "HookSucceeded", "HookFailed"],
            )?,
            None => DeletePolicy {
                before_creation: true,
                ..Default::default()
            },
        };
        return Ok(Role::Hook {
            phases,
            order: wave_of(manifest)?,
            delete,
        });
    }
    if let Some((value, _)) = annotation(manifest, &[HELM_HOOK]) {
        return helm_role(manifest, value, first_sync);
    }
    Ok(Role::Member {
        wave: wave_of(manifest)?,
    })
}

fn parse_policy(value: &str, key: &str, names: [&str; 3]) -> Result<DeletePolicy, String> {
    let mut policy = DeletePolicy::default();
    for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match names.iter().position(|n| *n == name) {
            Some(0) => policy.before_creation = true,
            Some(1) => policy.succeeded = true,
            Some(2) => policy.failed = true,
            _ => {
                return Err(format!(
                    "annotation {key}: unknown delete policy {name:?}; use {}",
                    names.join(", ")
                ));
            }
        }
    }
    Ok(policy)
}

/// Helm's hooks: install hooks run on the set's first sync, upgrade hooks on later ones.
fn helm_role(manifest: &Value, value: &str, first_sync: bool) -> Result<Role, String> {
    let mut phases = Vec::new();
    let mut others = Vec::new();
    for event in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let phase = match (event, first_sync) {
            ("pre-install", true) | ("pre-upgrade", false) => Some(Phase::PreSync),
            ("post-install", true) | ("post-upgrade", false) => Some(Phase::PostSync),
            ("pre-install" | "pre-upgrade" | "post-install" | "post-upgrade", _) => None,
            // `helm uninstall`'s hooks run when the Application is deleted.
            ("pre-delete", _) => Some(Phase::PreDelete),
            ("post-delete", _) => Some(Phase::PostDelete),
            ("test" | "test-success" | "test-failure" | "pre-rollback" | "post-rollback", _) => {
                None
            }
            (other, _) => {
                return Err(format!(
                    "annotation {HELM_HOOK}: unknown hook {other:?}; Helm knows pre-install, post-install, pre-upgrade, post-upgrade, pre-delete, post-delete, pre-rollback, post-rollback and test"
                ));
            }
        };
        match phase {
            Some(phase) if !phases.contains(&phase) => phases.push(phase),
            Some(_) => {}
            None => others.push(event),
        }
    }
    if phases.is_empty() {
        return Ok(Role::Ignored {
            why: format!(
                "{HELM_HOOK}: {} (not run by a {})",
                others.join(","),
                if first_sync {
                    "first sync"
                } else {
                    "later sync"
                }
            ),
        });
    }
    let order = match annotation(manifest, &[HELM_WEIGHT]) {
        Some((value, key)) => parse_integer(value, &key)?,
        None => 0,
    };
    let delete = match annotation(manifest, &[HELM_DELETE_POLICY]) {
        Some((value, key)) => parse_policy(
            value,
            &key,
            ["before-hook-creation", "hook-succeeded", "hook-failed"],
        )?,
        None => DeletePolicy {
            before_creation: true,
            ..Default::default()
        },
    };
    Ok(Role::Hook {
        phases,
        order,
        delete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn annotated(annotations: Value) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x", "annotations": annotations}})
    }

    #[test]
    fn waves_come_from_either_annotation_and_default_to_zero() {
        assert_eq!(wave_of(&json!({"metadata": {}})), Ok(0));
        assert_eq!(
            wave_of(&annotated(json!({"argocd.argoproj.io/sync-wave": "-2"}))),
            Ok(-2)
        );
        assert_eq!(
            wave_of(&annotated(json!({"tether.dev/sync-wave": "3"}))),
            Ok(3)
        );
        let err = wave_of(&annotated(json!({"tether.dev/sync-wave": "soon"}))).unwrap_err();
        assert!(
            err.contains("tether.dev/sync-wave") && err.contains("soon"),
            "{err}"
        );
    }

    #[test]
    fn argo_hooks_with_their_phases_and_delete_policies() {
        let role = role_of(
            &annotated(json!({
                "argocd.argoproj.io/hook": "PreSync,PostSync",
                "argocd.argoproj.io/hook-delete-policy": "HookSucceeded",
                "argocd.argoproj.io/sync-wave": "5"
            })),
            false,
        );
        assert_eq!(
            role,
            Ok(Role::Hook {
                phases: vec![Phase::PreSync, Phase::PostSync],
                order: 5,
                delete: DeletePolicy {
                    succeeded: true,
                    ..Default::default()
                }
            })
        );
        // No policy named: delete before creating it again.
        let Ok(Role::Hook { delete, .. }) =
            role_of(&annotated(json!({"tether.dev/hook": "Sync"})), true)
        else {
            panic!("a hook");
        };
        assert!(delete.before_creation && !delete.succeeded && !delete.failed);
        let Ok(Role::Hook { phases, .. }) = role_of(
            &annotated(json!({"argocd.argoproj.io/hook": "PreDelete,PostDelete"})),
            false,
        ) else {
            panic!("a hook");
        };
        assert!(phases.iter().all(|p| p.on_delete()) && phases.len() == 2);
        assert!(matches!(
            role_of(&annotated(json!({"argocd.argoproj.io/hook": "Skip"})), true),
            Ok(Role::Ignored { .. })
        ));
        let err = role_of(&annotated(json!({"tether.dev/hook": "Later"})), true).unwrap_err();
        assert!(err.contains("Later") && err.contains("PreSync"), "{err}");
        let err = role_of(
            &annotated(
                json!({"tether.dev/hook": "Sync", "tether.dev/hook-delete-policy": "Never"}),
            ),
            true,
        )
        .unwrap_err();
        assert!(err.contains("Never"), "{err}");
    }

    #[test]
    fn helm_install_hooks_run_on_the_first_sync_and_upgrade_hooks_after_it() {
        let pre_install =
            annotated(json!({"helm.sh/hook": "pre-install", "helm.sh/hook-weight": "-1"}));
        assert_eq!(
            role_of(&pre_install, true),
            Ok(Role::Hook {
                phases: vec![Phase::PreSync],
                order: -1,
                delete: DeletePolicy {
                    before_creation: true,
                    ..Default::default()
                }
            })
        );
        assert!(matches!(
            role_of(&pre_install, false),
            Ok(Role::Ignored { .. })
        ));
        let both = annotated(json!({
            "helm.sh/hook": "post-install,post-upgrade",
            "helm.sh/hook-delete-policy": "hook-succeeded,hook-failed"
        }));
        for first in [true, false] {
            let Ok(Role::Hook { phases, delete, .. }) = role_of(&both, first) else {
                panic!("a hook");
            };
            assert_eq!(phases, vec![Phase::PostSync]);
            assert!(delete.succeeded && delete.failed && !delete.before_creation);
        }
        for event in ["test", "pre-rollback", "post-rollback"] {
            assert!(matches!(
                role_of(&annotated(json!({"helm.sh/hook": event})), true),
                Ok(Role::Ignored { .. })
            ));
        }
        // `helm uninstall`'s hooks run when the Application is deleted, whatever the sync.
        for first in [true, false] {
            let Ok(Role::Hook { phases, .. }) = role_of(
                &annotated(json!({"helm.sh/hook": "pre-delete,post-delete"})),
                first,
            ) else {
                panic!("a hook");
            };
            assert_eq!(phases, vec![Phase::PreDelete, Phase::PostDelete]);
        }
        // An Argo CD annotation wins over Helm's, as in Argo CD.
        assert!(matches!(
            role_of(
                &annotated(json!({"helm.sh/hook": "test", "argocd.argoproj.io/hook": "Sync"})),
                true
            ),
            Ok(Role::Hook { .. })
        ));
        assert!(crate::object::is_hook(&annotated(
            json!({"helm.sh/hook": "test"})
        )));
        assert!(!crate::object::is_hook(&annotated(
            json!({"tether.dev/sync-wave": "1"})
        )));
    }

    #[test]
    fn hooks_of_one_weight_run_in_helms_kind_order() {
        let mut kinds = [
            "Job",
            "Widget",
            "RoleBinding",
            "ServiceAccount",
            "Role",
            "Pod",
        ];
        kinds.sort_by_key(|k| (kind_rank(k), *k));
        assert_eq!(
            kinds,
            [
                "ServiceAccount",
                "Role",
                "RoleBinding",
                "Pod",
                "Job",
                "Widget"
            ]
        );
    }

    #[test]
    fn members_carry_their_wave() {
        assert_eq!(
            role_of(&annotated(json!({"tether.dev/sync-wave": "2"})), true),
            Ok(Role::Member { wave: 2 })
        );
    }
}
