//! One Application as its page shows it: the plan of its revision against the cluster
//! (the same functions as `tether diff`) and the resource tree, from the Application
//! through its ApplySet members to what they own (Deployment → ReplicaSet → Pod, Job →
//! Pod). Computed once per change of the Application or its objects, for every viewer.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::api::{Api, DynamicObject, ListParams};
use kube::runtime::reflector::ObjectRef;
use serde_json::Value;

use super::UiState;
use crate::agent::Application;
use crate::agent::drift::Changed;
use crate::health::{self, Health};
use crate::object::ObjectKey;
use crate::plan::{Action, diff};
use crate::source::git::Revision;

/// A node of the resource tree.
#[derive(Debug, Clone)]
pub struct Node {
    pub depth: usize,
    pub key: ObjectKey,
    /// What a sync would do to it; `None` for objects its members own (not in Git).
    pub action: Option<Action>,
    pub health: Health,
    /// The diff against Git (Secret values redacted); empty when in sync.
    pub diff: String,
    /// Who changed what differs (drift put back, and conflicts): each field with its
    /// manager, how and when, and with an audit log the user and user agent.
    pub who: Vec<String>,
    /// The live object, Secret values replaced by their sizes.
    pub live: Option<Value>,
    /// A hook object a sync left behind (not a member): its phases and delete policy.
    pub hook: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct AppView {
    pub revision: Option<Revision>,
    /// Why the plan could not be made (the render failed, Git is unreachable, …).
    pub error: Option<String>,
    pub nodes: Vec<Node>,
}

impl AppView {
    pub fn out_of_sync(&self) -> usize {
        self.nodes
            .iter()
            .filter(|n| n.action.is_some_and(|a| a != Action::Unchanged))
            .count()
    }

    /// The Application's sync state on its page: from its objects' states (rule 11).
    pub fn sync_state(&self, app: &crate::agent::Application) -> &'static str {
        use crate::application::{Objects, sync_state};
        let objects = if self.error.is_some() {
            Objects::Unplanned
        } else {
            Objects::Planned {
                differing: self.out_of_sync(),
            }
        };
        sync_state(app.status.as_ref(), objects)
    }
}

/// The view of one Application, and the change it was computed after.
#[derive(Default)]
pub struct Cached {
    /// The last change of the Application or its objects (its sequence number).
    version: u64,
    view: Option<(u64, Arc<AppView>)>,
    /// Held while the view is computed: viewers asking meanwhile wait for that one.
    computing: Arc<tokio::sync::Mutex<()>>,
}

type Views = Mutex<HashMap<ObjectRef<Application>, Cached>>;

/// Forgets the views of Applications as they change (started with the UI).
pub fn invalidate_on_change(state: &UiState) -> tokio::task::JoinHandle<()> {
    let mut changes = state.changes.subscribe();
    let views = state.views.clone();
    tokio::spawn(async move {
        loop {
            match changes.recv().await {
                Ok(changed) => invalidate(&views, &changed),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    for cached in views.lock().expect("not poisoned").values_mut() {
                        cached.view = None;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    })
}

/// The view of an Application is out of date: `changed` happened after it.
pub fn invalidate(views: &Views, changed: &Changed) {
    let mut views = views.lock().expect("not poisoned");
    let cached = views.entry(changed.app.clone()).or_default();
    cached.version = cached.version.max(changed.seq);
}

/// The view of `app`: the cached one if nothing changed since, else computed now (once,
/// however many viewers ask at the same time).
pub async fn of(state: &UiState, app: &Application) -> Arc<AppView> {
    let reference = ObjectRef::from_obj(app);
    let fresh = || -> Result<Arc<AppView>, (u64, Arc<tokio::sync::Mutex<()>>)> {
        let mut views = state.views.lock().expect("not poisoned");
        let cached = views.entry(reference.clone()).or_default();
        match &cached.view {
            Some((at, view)) if *at == cached.version => Ok(view.clone()),
            _ => Err((cached.version, cached.computing.clone())),
        }
    };
    let computing = match fresh() {
        Ok(view) => return view,
        Err((_, computing)) => computing,
    };
    let _turn = computing.lock().await;
    // Another viewer may have computed it while this one waited.
    let version = match fresh() {
        Ok(view) => return view,
        Err((version, _)) => version,
    };
    let view = Arc::new(compute(state, app).await);
    if let Some(cached) = state
        .views
        .lock()
        .expect("not poisoned")
        .get_mut(&reference)
    {
        cached.view = Some((version, view.clone()));
    }
    view
}

async fn compute(state: &UiState, app: &Application) -> AppView {
    let api = &state.api;
    let planned = crate::agent::plan_in_destination(
        &api.client,
        &api.clusters,
        &api.options,
        app,
        crate::agent::LISTING_MAX_AGE,
    )
    .await;
    let (destination, revision, plan) = match planned {
        Ok(planned) => (planned.destination, planned.revision, planned.plan),
        Err(error) => {
            return AppView {
                error: Some(error),
                ..Default::default()
            };
        }
    };
    let mut nodes = Vec::new();
    let owned = owned_objects(&destination.target.client, &plan.changes).await;
    // The same rules as the agent's status (rule 11): the Application's own first.
    let rules = app.spec.health_rules().unwrap_or_default();
    for change in &plan.changes {
        nodes.push(node_of(change, &rules));
        if let Some(uid) = change
            .live
            .as_ref()
            .and_then(|l| l["metadata"]["uid"].as_str())
        {
            add_children(&owned, uid, 1, &mut nodes);
        }
    }
    // Objects another owner holds: each fails alone, and says why.
    for refused in &plan.refused {
        if let Some(key) = &refused.key {
            nodes.push(Node {
                depth: 0,
                key: key.clone(),
                action: Some(Action::Conflict),
                health: Health::new(health::HealthStatus::Unknown, refused.message.clone()),
                diff: String::new(),
                who: Vec::new(),
                live: None,
                hook: None,
            });
        }
    }
    leftover_hooks(
        &destination.target.client,
        &destination.target.resolver,
        &plan,
        &mut nodes,
    )
    .await;
    AppView {
        revision: Some(revision),
        error: None,
        nodes,
    }
}

/// The node of a member (or of one Git no longer has).
fn node_of(change: &crate::plan::Change, rules: &crate::health::rules::Rules) -> Node {
    let health = if change.action == Action::Prune {
        Health::new(health::HealthStatus::Missing, "no longer in Git")
    } else {
        health::assess_with(change.live.as_ref(), rules)
    };
    Node {
        depth: 0,
        key: change.key.clone(),
        action: Some(change.action),
        health,
        diff: change.diff.clone(),
        who: change
            .reclaims
            .iter()
            .chain(&change.conflicts)
            .cloned()
            .collect(),
        live: change.live.as_ref().map(redacted),
        hook: None,
    }
}

/// Hook objects that syncs left behind (a failed Job its policy keeps, a hook whose policy
/// deletes it only before its next run): one LIST per kind and namespace of the plan's hooks.
async fn leftover_hooks(
    client: &kube::Client,
    resolver: &crate::cluster::discovery::Resolver,
    plan: &crate::plan::Plan,
    nodes: &mut Vec<Node>,
) {
    let mut listed = std::collections::BTreeSet::new();
    for hook in &plan.hooks {
        let api_version = hook.manifest["apiVersion"].as_str().unwrap_or_default();
        if !listed.insert((api_version, &hook.key.kind, &hook.key.namespace)) {
            continue;
        }
        let Some(kind) = resolver.resolve(api_version, &hook.key.kind) else {
            continue;
        };
        let api = crate::cluster::api_for(client, &kind, &hook.key.namespace);
        let selector = format!("{}={}", crate::plan::HOOK_OF_LABEL, plan.applyset.id);
        let Ok(list) = api.list(&ListParams::default().labels(&selector)).await else {
            continue;
        };
        for object in list {
            let label = object
                .labels()
                .get(crate::plan::HOOK_LABEL)
                .cloned()
                .unwrap_or_default();
            let of = plan
                .hooks
                .iter()
                .find(|h| crate::plan::hook_label(&h.key) == label);
            let what = match of {
                Some(h) => {
                    let phases: Vec<String> = h.phases.iter().map(ToString::to_string).collect();
                    format!("{} hook, deleted: {}", phases.join(","), h.delete_policy)
                }
                None => "a hook of an earlier revision".to_string(),
            };
            let mut value = serde_json::to_value(&object).expect("objects serialize");
            value["apiVersion"] = Value::String(api_version.to_string());
            value["kind"] = Value::String(hook.key.kind.clone());
            nodes.push(Node {
                depth: 0,
                key: ObjectKey {
                    group: hook.key.group.clone(),
                    kind: hook.key.kind.clone(),
                    namespace: hook.key.namespace.clone(),
                    name: object.name_any(),
                },
                action: None,
                health: health::assess(Some(&value)),
                diff: String::new(),
                who: Vec::new(),
                live: Some(redacted(&value)),
                hook: Some(what),
            });
        }
    }
}

/// Objects that members may own, by the uid of their owner.
type Owned = HashMap<String, Vec<(ObjectKey, Value)>>;

fn add_children(owned: &Owned, uid: &str, depth: usize, nodes: &mut Vec<Node>) {
    let Some(children) = owned.get(uid) else {
        return;
    };
    for (key, live) in children {
        nodes.push(Node {
            depth,
            key: key.clone(),
            action: None,
            health: health::assess(Some(live)),
            diff: String::new(),
            who: Vec::new(),
            live: Some(live.clone()),
            hook: None,
        });
        if depth < 4
            && let Some(child) = live["metadata"]["uid"].as_str()
        {
            add_children(owned, child, depth + 1, nodes);
        }
    }
}

/// ReplicaSets, Pods and Jobs in the namespaces of the members that own such things
/// (Deployments, StatefulSets, DaemonSets, Jobs, CronJobs), by their owner's uid: one LIST
/// per kind and namespace.
async fn owned_objects(client: &kube::Client, changes: &[crate::plan::Change]) -> Owned {
    let owners = [
        "Deployment",
        "StatefulSet",
        "DaemonSet",
        "Job",
        "CronJob",
        "ReplicaSet",
    ];
    let namespaces: std::collections::BTreeSet<&str> = changes
        .iter()
        .filter(|c| c.live.is_some() && owners.contains(&c.key.kind.as_str()))
        .map(|c| c.key.namespace.as_str())
        .collect();
    use kube::api::ApiResource;
    let kinds = [
        ApiResource::erase::<k8s_openapi::api::apps::v1::ReplicaSet>(&()),
        ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&()),
        ApiResource::erase::<k8s_openapi::api::batch::v1::Job>(&()),
    ];
    let mut owned: Owned = HashMap::new();
    for namespace in namespaces {
        for resource in &kinds {
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, resource);
            let Ok(list) = api.list(&ListParams::default()).await else {
                continue;
            };
            for mut object in list {
                object.types = Some(kube::core::TypeMeta {
                    api_version: resource.api_version.clone(),
                    kind: resource.kind.clone(),
                });
                let owners: Vec<String> = object
                    .owner_references()
                    .iter()
                    .map(|o| o.uid.clone())
                    .collect();
                let key = ObjectKey {
                    group: resource.group.clone(),
                    kind: resource.kind.clone(),
                    namespace: namespace.into(),
                    name: object.name_any(),
                };
                let value = serde_json::to_value(&object).expect("objects serialize");
                for owner in owners {
                    owned
                        .entry(owner)
                        .or_default()
                        .push((key.clone(), value.clone()));
                }
            }
        }
    }
    for children in owned.values_mut() {
        children.sort_by(|a, b| a.0.cmp(&b.0));
    }
    owned
}

/// The object as the browser may see it: server bookkeeping gone, Secret values replaced
/// by their sizes.
pub fn redacted(live: &Value) -> Value {
    let mut object = diff::normalize(live);
    if diff::is_secret(&object)
        && let Some(map) = object.as_object_mut()
    {
        for field in ["data", "stringData"] {
            if let Some(Value::Object(values)) = map.get_mut(field) {
                for value in values.values_mut() {
                    let size = value.as_str().map_or(0, |s| {
                        if field == "data" {
                            s.len() / 4 * 3
                        } else {
                            s.len()
                        }
                    });
                    *value = Value::String(format!("(redacted, about {size} bytes)"));
                }
            }
        }
        if let Some(annotations) = map
            .get_mut("metadata")
            .and_then(|m| m.get_mut("annotations"))
            .and_then(Value::as_object_mut)
        {
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    }
    object
}

/// Counts of Applications by sync state and by health, for the list's header.
pub fn counts<'a>(apps: impl Iterator<Item = &'a Application>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for app in apps {
        let status = app.status.as_ref();
        let sync = crate::application::sync_state(status, crate::application::Objects::NotPlanned);
        let health = crate::application::health_state(status);
        *counts.entry(format!("sync:{sync}")).or_default() += 1;
        *counts.entry(format!("health:{health}")).or_default() += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_values_never_reach_the_browser() {
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "db", "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"data\":{\"password\":\"aHVudGVyMg==\"}}"}},
            "data": {"password": "aHVudGVyMg=="},
            "stringData": {"token": "hunter2"}
        });
        let shown = serde_json::to_string(&redacted(&secret)).expect("json");
        assert!(
            !shown.contains("aHVudGVyMg") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(
            shown.contains("password") && shown.contains("redacted"),
            "{shown}"
        );
    }
}
