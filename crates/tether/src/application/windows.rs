//! Sync windows as they are written: on an Application (`spec.syncWindows`) and, for the
//! Applications of a namespace, as `SyncWindow` resources (`syncwindows.tether.dev`).
//! Argo CD's names (`kind: allow|deny`, `schedule`, `duration`, `timeZone`, `manualSync`);
//! [`crate::windows`] says what they decide.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One window: when it opens (cron), how long it stays open, and what it does meanwhile.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Window {
    /// `allow`: automated syncs run only while an allow window is open; `deny`: none runs
    /// while a deny window is open (deny wins).
    pub kind: WindowKind,
    /// When the window opens: five-field cron (`minute hour day-of-month month
    /// day-of-week`, e.g. `0 22 * * 1-5`), or `@daily`, `@weekly`, ….
    pub schedule: String,
    /// How long it stays open each time (`1h`, `30m`, `8h`).
    pub duration: String,
    /// The schedule's time zone, an IANA name (`Europe/Berlin`); UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// A sync asked for by hand (`tether sync`, the UI, the API) still runs while this
    /// window blocks.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub manual_sync: bool,
    /// Hand edits are still put back while this window blocks (the revision already
    /// applied; a new revision waits for the window).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub self_heal: bool,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    Allow,
    Deny,
}

/// A sync window for the Applications of its namespace (all of them, or those
/// `applications` names).
// Several printcolumns each name `type_`: not a duplicate, though clippy reads it as one.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema)]
#[kube(
    group = "tether.dev",
    version = "v1alpha1",
    kind = "SyncWindow",
    namespaced,
    shortname = "syncwindow",
    category = "tether",
    printcolumn(name = "Kind", type_ = "string", json_path = ".spec.kind"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Duration", type_ = "string", json_path = ".spec.duration"),
    printcolumn(name = "Zone", type_ = "string", json_path = ".spec.timeZone")
)]
#[serde(rename_all = "camelCase")]
pub struct SyncWindowSpec {
    #[serde(flatten)]
    pub window: Window,
    /// Names of the Applications it applies to (`*` and `?` match any text and any one
    /// character); every Application of the namespace when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<String>,
}

impl SyncWindowSpec {
    /// Whether the window applies to the Application `name` (of its namespace).
    pub fn selects(&self, name: &str) -> bool {
        self.applications.is_empty() || self.applications.iter().any(|p| wildcard(p, name))
    }
}

/// `*` matches any text, `?` any one character.
pub fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // The classic two-pointer match with one backtrack point.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_select_applications_by_name_with_wildcards() {
        for (pattern, name, matches) in [
            ("web", "web", true),
            ("web", "web-2", false),
            ("web-*", "web-2", true),
            ("*-prod", "shop-prod", true),
            ("*-prod", "shop-staging", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
        ] {
            assert_eq!(wildcard(pattern, name), matches, "{pattern} {name}");
        }
        let spec: SyncWindowSpec = serde_json::from_value(serde_json::json!({
            "kind": "deny", "schedule": "0 22 * * *", "duration": "8h",
            "applications": ["web-*"]
        }))
        .expect("reads");
        assert!(spec.selects("web-1") && !spec.selects("db"));
        assert_eq!(spec.window.kind, WindowKind::Deny);
    }
}
