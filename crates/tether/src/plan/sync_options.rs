//! Per-object sync options, as Argo CD and Flux users write them on their objects:
//! `argocd.argoproj.io/sync-options` (`Prune=false`, `Prune=confirm`), `argocd.argoproj.io/
//! compare-options: IgnoreExtraneous`, `kustomize.toolkit.fluxcd.io/prune: disabled` keep an
//! object in the cluster when Git no longer has it (`Delete=false` and `prune: disabled`
//! when its Application is deleted); `kustomize.toolkit.fluxcd.io/ssa:
//! IfNotPresent` creates an object but never changes it, `Ignore` never applies it. Pure.

use serde_json::Value;

use super::types::{Action, Change, Skipped};

pub const ARGO_SYNC_OPTIONS: &str = "argocd.argoproj.io/sync-options";
pub const ARGO_COMPARE_OPTIONS: &str = "argocd.argoproj.io/compare-options";
pub const FLUX_PRUNE: &str = "kustomize.toolkit.fluxcd.io/prune";
pub const FLUX_SSA: &str = "kustomize.toolkit.fluxcd.io/ssa";

fn annotation<'a>(object: &'a Value, name: &str) -> Option<&'a str> {
    object["metadata"]["annotations"][name].as_str()
}

/// Argo CD's comma-separated options (`Prune=false,ServerSideApply=true`) hold `option`.
fn has_option(object: &Value, name: &str, option: &str) -> bool {
    annotation(object, name).is_some_and(|options| {
        options
            .split(',')
            .any(|o| o.trim().eq_ignore_ascii_case(option))
    })
}

/// Why a live object Git no longer has stays in the cluster (`None`: it is pruned).
pub fn kept_on_prune(live: &Value) -> Option<String> {
    if has_option(live, ARGO_SYNC_OPTIONS, "Prune=false") {
        return Some(format!("{ARGO_SYNC_OPTIONS}: Prune=false"));
    }
    if has_option(live, ARGO_SYNC_OPTIONS, "Prune=confirm") {
        return Some(format!(
            "{ARGO_SYNC_OPTIONS}: Prune=confirm (delete it by hand once you are sure)"
        ));
    }
    if has_option(live, ARGO_COMPARE_OPTIONS, "IgnoreExtraneous") {
        return Some(format!("{ARGO_COMPARE_OPTIONS}: IgnoreExtraneous"));
    }
    if annotation(live, FLUX_PRUNE).is_some_and(|v| v.eq_ignore_ascii_case("disabled")) {
        return Some(format!("{FLUX_PRUNE}: disabled"));
    }
    None
}

/// Why a member stays in the cluster when its whole set is deleted (its Application is):
/// Argo CD's `Delete=false` (and `Delete=confirm`, left for a person), and Flux's `prune:
/// disabled`, which Flux also honours then. `Prune=false` does not keep it, as in Argo CD.
pub fn kept_on_delete(live: &Value) -> Option<String> {
    if has_option(live, ARGO_SYNC_OPTIONS, "Delete=false") {
        return Some(format!("{ARGO_SYNC_OPTIONS}: Delete=false"));
    }
    if has_option(live, ARGO_SYNC_OPTIONS, "Delete=confirm") {
        return Some(format!(
            "{ARGO_SYNC_OPTIONS}: Delete=confirm (delete it by hand once you are sure)"
        ));
    }
    if annotation(live, FLUX_PRUNE).is_some_and(|v| v.eq_ignore_ascii_case("disabled")) {
        return Some(format!("{FLUX_PRUNE}: disabled"));
    }
    None
}

pub const FLUX_FORCE: &str = "kustomize.toolkit.fluxcd.io/force";

/// Why a desired object is deleted and created anew when the server refuses to update it
/// in place (an immutable field changed): Argo CD's `Force=true`, Flux's `force: enabled`.
pub fn recreate_when_refused(desired: &Value) -> Option<String> {
    if has_option(desired, ARGO_SYNC_OPTIONS, "Force=true") {
        return Some(format!("{ARGO_SYNC_OPTIONS}: Force=true"));
    }
    if annotation(desired, FLUX_FORCE).is_some_and(|v| v.eq_ignore_ascii_case("enabled")) {
        return Some(format!("{FLUX_FORCE}: enabled"));
    }
    None
}

/// Argo CD's `Replace=true`: the object is written whole, every field Git sets taken from
/// whoever holds it (applied with force); with `Force=true` too, any change deletes it and
/// creates it anew, as Argo CD's replace with force does.
pub fn replaces(desired: &Value) -> bool {
    has_option(desired, ARGO_SYNC_OPTIONS, "Replace=true")
}

/// Flux's server-side apply policy of a desired object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SsaMode {
    /// The default: Git's fields are applied (Flux's `Override` and `Merge` both apply with
    /// server-side apply, which leaves other managers' fields alone).
    Apply,
    /// Created when missing, never changed after.
    IfNotPresent,
    /// Never applied.
    Ignore,
}

pub fn ssa_mode(desired: &Value) -> SsaMode {
    match annotation(desired, FLUX_SSA)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("ifnotpresent") => SsaMode::IfNotPresent,
        Some("ignore") => SsaMode::Ignore,
        _ => SsaMode::Apply,
    }
}

/// Applies the desired objects' `ssa` policies to their planned changes: an update of an
/// `IfNotPresent` object, and any change of an `Ignore` one, is left out (an `Ignore`
/// object that does not exist is not created: it goes to `skipped`).
pub fn apply_ssa_modes(changes: &mut Vec<Change>, skipped: &mut Vec<Skipped>) {
    changes.retain_mut(|change| {
        let Some(desired) = &change.desired else {
            return true;
        };
        let mode = ssa_mode(desired);
        let leave = match (mode, change.action) {
            (SsaMode::Ignore, Action::Create) => {
                skipped.push(Skipped {
                    key: change.key.clone(),
                    origin: change
                        .origin
                        .clone()
                        .unwrap_or_else(|| crate::object::Origin {
                            file: String::new(),
                            line: 0,
                            document: 0,
                            item: None,
                        }),
                    why: format!("{FLUX_SSA}: Ignore (never applied)"),
                });
                return false;
            }
            (SsaMode::Ignore, Action::Update | Action::Conflict) => true,
            (SsaMode::IfNotPresent, Action::Update | Action::Conflict) => true,
            _ => false,
        };
        if leave {
            change.action = Action::Unchanged;
            change.diff.clear();
            change.conflicts.clear();
            change.reclaims.clear();
            change.force = false;
        }
        true
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_peers_annotations_keep_an_object_or_leave_it_alone() {
        let with = |name: &str, value: &str| json!({"metadata": {"annotations": {name: value}}});
        assert!(
            kept_on_prune(&with(
                ARGO_SYNC_OPTIONS,
                "ServerSideApply=true, Prune=false"
            ))
            .is_some()
        );
        assert!(
            kept_on_prune(&with(ARGO_SYNC_OPTIONS, "Prune=confirm"))
                .unwrap()
                .contains("by hand")
        );
        assert!(kept_on_prune(&with(ARGO_COMPARE_OPTIONS, "IgnoreExtraneous")).is_some());
        assert!(kept_on_prune(&with(FLUX_PRUNE, "disabled")).is_some());
        assert_eq!(
            kept_on_prune(&with(ARGO_SYNC_OPTIONS, "PruneLast=true")),
            None
        );
        assert_eq!(kept_on_prune(&json!({"metadata": {}})), None);
        // Recreated when refused in place; Replace=true takes every field.
        assert!(
            recreate_when_refused(&with(ARGO_SYNC_OPTIONS, "Replace=true,Force=true")).is_some()
        );
        assert!(recreate_when_refused(&with(FLUX_FORCE, "Enabled")).is_some());
        assert_eq!(recreate_when_refused(&with(FLUX_FORCE, "disabled")), None);
        assert!(replaces(&with(ARGO_SYNC_OPTIONS, "Replace=true")));
        assert!(!replaces(&with(ARGO_SYNC_OPTIONS, "Force=true")));
        // Deleting the Application: Delete=false keeps an object, Prune=false does not.
        assert!(kept_on_delete(&with(ARGO_SYNC_OPTIONS, "Delete=false")).is_some());
        assert!(kept_on_delete(&with(FLUX_PRUNE, "disabled")).is_some());
        assert_eq!(
            kept_on_delete(&with(ARGO_SYNC_OPTIONS, "Prune=false")),
            None
        );
        assert_eq!(
            kept_on_prune(&with(ARGO_SYNC_OPTIONS, "Delete=false")),
            None
        );
        assert_eq!(
            ssa_mode(&with(FLUX_SSA, "IfNotPresent")),
            SsaMode::IfNotPresent
        );
        assert_eq!(ssa_mode(&with(FLUX_SSA, "Ignore")), SsaMode::Ignore);
        assert_eq!(ssa_mode(&with(FLUX_SSA, "Merge")), SsaMode::Apply);
    }
}
