//! The `ApplicationSet` resource (`applicationsets.tether.dev`): one definition that makes
//! an Application per element of its generators' output, with Argo CD's field and generator
//! names (`generators[].list.elements`, `git.directories`, `git.files`, `clusters.selector`,
//! `matrix`, `merge`; `template.metadata`, `template.spec` a tether Application's spec with
//! `{{param}}` placeholders). [`crate::appset`] generates and renders; the agent applies.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Condition;

/// Any object: the CRD keeps what it holds (nested generators, the template's spec with
/// placeholders in any field), checked when the set is reconciled.
fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

fn any_objects(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}})
}

// Several printcolumns each name `type_`: not a duplicate, though clippy reads it as one.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[kube(
    group = "tether.dev",
    version = "v1alpha1",
    kind = "ApplicationSet",
    namespaced,
    status = "ApplicationSetStatus",
    shortname = "appset",
    category = "tether",
    printcolumn(name = "Applications", type_ = "integer", json_path = ".status.count"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSetSpec {
    /// What makes the parameters of each Application (one Application per parameter set).
    #[schemars(schema_with = "any_objects")]
    pub generators: Vec<Value>,
    /// The Application made for each parameter set.
    pub template: Template,
    #[serde(default)]
    pub sync_policy: SetSyncPolicy,
    /// How changes reach the Applications: all at once (none), or step by step
    /// (`type: RollingSync`, Argo CD's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
}

/// Argo CD's progressive syncs: steps of Applications selected by their labels, each step
/// updated only once the steps before it are Synced and Healthy.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Strategy {
    /// `RollingSync` (the only type).
    #[serde(rename = "type")]
    pub type_: String,
    #[serde(default)]
    pub rolling_sync: RollingSync,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RollingSync {
    pub steps: Vec<RolloutStep>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStep {
    /// The Applications of this step: every expression holds for their labels.
    #[serde(default)]
    pub match_expressions: Vec<LabelExpression>,
    /// At most this many (or this percentage, `"25%"`) of the step's Applications change at
    /// once; all when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_string")]
    pub max_update: Option<Value>,
}

fn int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"x-kubernetes-int-or-string": true})
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct LabelExpression {
    pub key: String,
    /// `In` or `NotIn`.
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

/// The Application each parameter set makes: placeholders (`{{name}}`, `{{ .path.basename }}`)
/// in any string.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    #[serde(default)]
    pub metadata: TemplateMetadata,
    /// A tether Application's spec.
    #[schemars(schema_with = "any_object")]
    pub spec: Value,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// The Application's name (required; placeholders allowed).
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub annotations: std::collections::BTreeMap<String, String>,
}

/// What the set may do to the Applications it made (Argo CD's names).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct SetSyncPolicy {
    /// `sync` (default: create, update and delete), `create-update` (never delete),
    /// `create-delete` (never update), `create-only`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applications_sync: Option<String>,
    /// The Applications it makes keep their objects when deleted (`deletionPolicy: Orphan`
    /// unless the template says otherwise).
    #[serde(default)]
    pub preserve_resources_on_deletion: bool,
}

impl SetSyncPolicy {
    /// May it (update, delete) Applications it made? An unknown policy is an error.
    pub fn allows(&self) -> Result<(bool, bool), String> {
        match self.applications_sync.as_deref().unwrap_or("sync") {
            "sync" => Ok((true, true)),
            "create-update" => Ok((true, false)),
            "create-delete" => Ok((false, true)),
            "create-only" => Ok((false, false)),
            other => Err(format!(
                "spec.syncPolicy.applicationsSync {other:?}: use sync, create-update, create-delete or create-only"
            )),
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationSetStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The Applications it makes now, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applications: Vec<String>,
    #[serde(default)]
    pub count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// With a RollingSync strategy: each step's state (`Done`, `Progressing`, `Waiting`) and
    /// its Applications.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollout: Vec<StepStatus>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct StepStatus {
    /// 1 for the first step; the last, after the steps the strategy names, holds the
    /// Applications no step selects.
    pub step: u32,
    pub state: String,
    pub applications: Vec<String>,
}
