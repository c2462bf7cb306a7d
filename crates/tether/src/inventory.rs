//! Ownership as a KEP-3659 ApplySet, so kubectl understands what tether owns.
//!
//! The parent is a Secret `tether-<app>` in the application's namespace, labelled with the
//! set's id and annotated with the tooling, the group-kinds and the extra namespaces of its
//! members; every member carries `applyset.kubernetes.io/part-of: <id>`. The id is computed
//! exactly as kubectl computes it, so `kubectl get -l applyset.kubernetes.io/part-of=<id>`
//! lists the same objects. Start at [`ApplySet`].

use std::collections::BTreeSet;

use base64::Engine;
use serde_json::{Value, json};
use sha2::Digest;

use crate::object::GroupKind;

pub const PART_OF_LABEL: &str = "applyset.kubernetes.io/part-of";
pub const ID_LABEL: &str = "applyset.kubernetes.io/id";
pub const TOOLING_ANNOTATION: &str = "applyset.kubernetes.io/tooling";
pub const GROUP_KINDS_ANNOTATION: &str = "applyset.kubernetes.io/contains-group-kinds";
pub const NAMESPACES_ANNOTATION: &str = "applyset.kubernetes.io/additional-namespaces";
/// On the parent: the Application (`namespace/name`) whose agent syncs the set.
pub const APPLICATION_ANNOTATION: &str = "tether.dev/application";
/// On the parent: where push mode's objects come from (`<repository>#<path>`, or a folder).
pub const SOURCE_ANNOTATION: &str = "tether.dev/source";
/// On the parent: the hooks of the last sync that ran hooks did not all succeed, so the
/// next sync runs them again (`install: why` or `upgrade: why`).
pub const HOOKS_UNFINISHED_ANNOTATION: &str = "tether.dev/hooks-unfinished";
/// The set is being deleted and its PreDelete hooks ran (they do not run again).
pub const DELETING_ANNOTATION: &str = "tether.dev/deleting";

/// The hooks of the set's last sync failed or never ran: until a sync runs them and they
/// succeed, the set is not in sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnfinishedHooks {
    /// It was the set's first sync (Helm's install): the next sync is an install again.
    pub install: bool,
    pub why: String,
}

impl UnfinishedHooks {
    /// `why` is cut at 2 KiB: all annotations together may hold 256 KiB.
    pub fn new(install: bool, why: &str) -> Self {
        let mut why = why.to_string();
        if why.len() > 2048 {
            let mut end = 2048;
            while !why.is_char_boundary(end) {
                end -= 1;
            }
            why.truncate(end);
            why.push('…');
        }
        Self { install, why }
    }

    fn parse(text: &str) -> Option<Self> {
        let (event, why) = text.split_once(": ").unwrap_or((text, ""));
        let install = match event {
            "install" => true,
            "upgrade" => false,
            _ => return None,
        };
        Some(Self {
            install,
            why: why.to_string(),
        })
    }
}

impl std::fmt::Display for UnfinishedHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let event = if self.install { "install" } else { "upgrade" };
        write!(f, "{event}: {}", self.why)
    }
}

/// The set's identity and what its parent records about its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplySet {
    pub app: String,
    /// The parent's (and the application's default) namespace.
    pub namespace: String,
    pub id: String,
    pub group_kinds: BTreeSet<GroupKind>,
    /// Namespaces of members other than the parent's.
    pub namespaces: BTreeSet<String>,
    /// The Application (`namespace/name`) that syncs the set, if an agent does.
    pub application: Option<String>,
    pub hooks_unfinished: Option<UnfinishedHooks>,
    /// Where the objects come from, as the last `tether apply` said.
    pub source: Option<String>,
    /// The set is being deleted: its PreDelete hooks ran.
    pub deleting: bool,
}

impl ApplySet {
    pub fn new(app: &str, namespace: &str) -> Self {
        let parent_name = parent_name(app);
        Self {
            app: app.to_string(),
            namespace: namespace.to_string(),
            id: applyset_id(&parent_name, namespace, "Secret", ""),
            group_kinds: BTreeSet::new(),
            namespaces: BTreeSet::new(),
            application: None,
            hooks_unfinished: None,
            source: None,
            deleting: false,
        }
    }

    pub fn parent_name(&self) -> String {
        parent_name(&self.app)
    }

    /// Whether the parent records members of kind `group`/`kind` in `namespace` (empty for
    /// a cluster-scoped kind): where it does not, the set has none (the parent is widened
    /// before a member is created).
    pub fn records(&self, group: &str, kind: &str, namespace: &str) -> bool {
        let kind_recorded = self.group_kinds.contains(&GroupKind {
            group: group.to_string(),
            kind: kind.to_string(),
        });
        kind_recorded
            && (namespace.is_empty()
                || namespace == self.namespace
                || self.namespaces.contains(namespace))
    }

    /// Reads the recorded members' kinds and namespaces from an existing parent.
    pub fn read_parent(&mut self, parent: &Value) -> Result<(), String> {
        let labels = &parent["metadata"]["labels"];
        let annotations = &parent["metadata"]["annotations"];
        match labels[ID_LABEL].as_str() {
            Some(id) if id == self.id => {}
            Some(other) => {
                return Err(format!(
                    "its {ID_LABEL} label is {other}, expected {}",
                    self.id
                ));
            }
            None => {
                return Err(format!(
                    "it has no {ID_LABEL} label: it is not an ApplySet parent"
                ));
            }
        }
        match annotations[TOOLING_ANNOTATION].as_str() {
            Some(tooling) if tooling.split('/').next() == Some("tether") => {}
            Some(tooling) => return Err(format!("it is managed by {tooling:?}, not tether")),
            None => return Err(format!("it has no {TOOLING_ANNOTATION} annotation")),
        }
        self.group_kinds = split(annotations[GROUP_KINDS_ANNOTATION].as_str())
            .map(|s| GroupKind::parse(&s))
            .collect();
        self.namespaces = split(annotations[NAMESPACES_ANNOTATION].as_str()).collect();
        self.application = annotations[APPLICATION_ANNOTATION]
            .as_str()
            .filter(|a| !a.is_empty())
            .map(str::to_string);
        self.source = annotations[SOURCE_ANNOTATION]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        self.hooks_unfinished = annotations[HOOKS_UNFINISHED_ANNOTATION]
            .as_str()
            .and_then(UnfinishedHooks::parse);
        self.deleting = annotations[DELETING_ANNOTATION].as_str() == Some("true");
        Ok(())
    }

    /// The parent Secret for server-side apply, recording `group_kinds` and `namespaces`.
    pub fn parent_manifest(&self) -> Value {
        let kinds: Vec<String> = self.group_kinds.iter().map(ToString::to_string).collect();
        let namespaces: Vec<&str> = self
            .namespaces
            .iter()
            .map(String::as_str)
            .filter(|ns| *ns != self.namespace && !ns.is_empty())
            .collect();
        let mut parent = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "tether.dev/applyset",
            "metadata": {
                "name": self.parent_name(),
                "namespace": self.namespace,
                "labels": {ID_LABEL: self.id, "app.kubernetes.io/managed-by": "tether", "tether.dev/app": self.app},
                "annotations": {
                    TOOLING_ANNOTATION: format!("tether/v{}", env!("CARGO_PKG_VERSION")),
                    GROUP_KINDS_ANNOTATION: kinds.join(","),
                    NAMESPACES_ANNOTATION: namespaces.join(","),
                }
            }
        });
        if let Some(application) = &self.application {
            parent["metadata"]["annotations"][APPLICATION_ANNOTATION] = json!(application);
        }
        if let Some(source) = &self.source {
            parent["metadata"]["annotations"][SOURCE_ANNOTATION] = json!(source);
        }
        if let Some(unfinished) = &self.hooks_unfinished {
            parent["metadata"]["annotations"][HOOKS_UNFINISHED_ANNOTATION] =
                json!(unfinished.to_string());
        }
        if self.deleting {
            parent["metadata"]["annotations"][DELETING_ANNOTATION] = json!("true");
        }
        parent
    }
}

fn split(text: Option<&str>) -> impl Iterator<Item = String> + '_ {
    text.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

pub fn parent_name(app: &str) -> String {
    format!("tether-{app}")
}

/// `applyset-<base64url(sha256(name.namespace.kind.group))>-v1`, as KEP-3659 and kubectl define it.
pub fn applyset_id(name: &str, namespace: &str, kind: &str, group: &str) -> String {
    let digest = sha2::Sha256::digest(format!("{name}.{namespace}.{kind}.{group}").as_bytes());
    format!(
        "applyset-{}-v1",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_computed_as_kubectl_computes_it() {
        // sha256("tether-web.shop.Secret.") in unpadded base64url, computed independently:
        // python3 -c 'import hashlib,base64;print(base64.urlsafe_b64encode(hashlib.sha256(b"tether-web.shop.Secret.").digest()).rstrip(b"="))'
        let expected = {
            let out = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import hashlib,base64;print(base64.urlsafe_b64encode(hashlib.sha256(b'tether-web.shop.Secret.').digest()).rstrip(b'=').decode())",
                ])
                .output()
                .expect("python3 runs");
            format!(
                "applyset-{}-v1",
                String::from_utf8_lossy(&out.stdout).trim()
            )
        };
        assert_eq!(ApplySet::new("web", "shop").id, expected);
    }

    #[test]
    fn parent_round_trips_kinds_and_namespaces() {
        let mut set = ApplySet::new("web", "shop");
        set.group_kinds = [
            "Deployment.apps",
            "ConfigMap",
            "Greeting.example.tether.dev",
        ]
        .iter()
        .map(|s| GroupKind::parse(s))
        .collect();
        set.namespaces = ["shop", "monitoring"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let parent = set.parent_manifest();
        assert_eq!(
            parent["metadata"]["annotations"][GROUP_KINDS_ANNOTATION],
            "ConfigMap,Deployment.apps,Greeting.example.tether.dev"
        );
        assert_eq!(
            parent["metadata"]["annotations"][NAMESPACES_ANNOTATION],
            "monitoring"
        );
        let mut read = ApplySet::new("web", "shop");
        read.read_parent(&parent).expect("our own parent");
        assert_eq!(read.application, None);
        let mut synced = set.clone();
        synced.application = Some("apps/web".into());
        read.read_parent(&synced.parent_manifest())
            .expect("an agent's parent");
        assert_eq!(read.application.as_deref(), Some("apps/web"));
        assert_eq!(read.hooks_unfinished, None);
        for install in [true, false] {
            synced.hooks_unfinished = Some(UnfinishedHooks::new(
                install,
                &format!("PostSync hook Job/x failed: {}", "e".repeat(5000)),
            ));
            read.read_parent(&synced.parent_manifest())
                .expect("an agent's parent");
            assert_eq!(read.hooks_unfinished, synced.hooks_unfinished);
            let why = &read.hooks_unfinished.as_ref().expect("recorded").why;
            assert!(why.starts_with("PostSync hook") && why.len() < 2100);
        }
        read.read_parent(&parent).expect("our own parent");
        assert_eq!(read.group_kinds, set.group_kinds);
        assert_eq!(
            read.namespaces,
            ["monitoring".to_string()].into_iter().collect()
        );

        let mut other = parent.clone();
        other["metadata"]["annotations"][TOOLING_ANNOTATION] = "kubectl/v1.34".into();
        assert!(
            read.read_parent(&other)
                .expect_err("kubectl's")
                .contains("kubectl/v1.34")
        );
    }
}
