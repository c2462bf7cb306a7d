//! The vocabulary every stage shares: what identifies an object in a cluster
//! ([`ObjectKey`], [`GroupKind`]), where a desired object was written ([`Origin`]), and the
//! desired object itself ([`Object`]). Below render, plan, apply and the agent, so none of
//! them reaches into another for it.

use std::fmt;

use serde::Serialize;
use serde_json::Value;

/// Where an object came from: `apps/web/deploy.yaml:12 (document 2)`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Origin {
    /// Repository-relative path.
    pub file: String,
    /// 1-based line where the object starts; 0 when unknown.
    pub line: u64,
    /// 0-based index of the document among the file's non-empty YAML documents.
    pub document: usize,
    /// For `kind: List`, the index in `items`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub item: Option<usize>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        write!(f, " (document {}", self.document + 1)?;
        if let Some(item) = self.item {
            write!(f, ", item {}", item + 1)?;
        }
        write!(f, ")")
    }
}

/// What identifies an object in a cluster: group, kind, namespace, name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectKey {
    pub group: String,
    pub kind: String,
    /// Empty when the manifest names none (cluster-scoped, or the default namespace).
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    /// `Deployment.apps/web -n shop`, in kubectl's resource.group/name style.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        write!(f, "/{}", self.name)?;
        if !self.namespace.is_empty() {
            write!(f, " -n {}", self.namespace)?;
        }
        Ok(())
    }
}

/// A desired object: its manifest as JSON, its identity and where it was written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Object {
    pub key: ObjectKey,
    pub origin: Origin,
    pub manifest: Value,
}

/// A group and kind as the ApplySet annotation spells them: `Deployment.apps`, `ConfigMap`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKind {
    pub group: String,
    pub kind: String,
}

impl GroupKind {
    pub fn parse(text: &str) -> Self {
        match text.split_once('.') {
            Some((kind, group)) => Self {
                group: group.to_string(),
                kind: kind.to_string(),
            },
            None => Self {
                group: String::new(),
                kind: text.to_string(),
            },
        }
    }
}

impl fmt::Display for GroupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(&self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

/// The annotations that make an object a hook: tether's and Argo CD's.
pub const HOOK_ANNOTATIONS: [&str; 2] = ["tether.dev/hook", "argocd.argoproj.io/hook"];
/// Helm's hook annotation.
pub const HELM_HOOK: &str = "helm.sh/hook";

/// Whether the manifest is a hook (run at a phase of a sync, not kept in sync).
pub fn is_hook(manifest: &Value) -> bool {
    let Some(annotations) = manifest["metadata"]["annotations"].as_object() else {
        return false;
    };
    HOOK_ANNOTATIONS
        .iter()
        .chain([&HELM_HOOK])
        .any(|key| annotations.get(*key).is_some_and(Value::is_string))
}
