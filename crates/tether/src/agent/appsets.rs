//! ApplicationSets in the agent: a controller over `ApplicationSet` resources that fetches
//! what their generators read (Git repositories as an Application's source is fetched,
//! the cluster Secrets of the set's namespace), renders an Application per parameter set
//! ([`crate::appset`]), applies them (owned by the set, labelled with its name), deletes
//! those no longer generated (as `syncPolicy.applicationsSync` allows; each goes with its
//! deletion policy), and writes the set's status. A generator error leaves every existing
//! Application alone. Start at [`run`].

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use super::{Context, now_rfc3339};
use crate::application::{Application, ApplicationSet, ApplicationSetStatus, Condition};
use crate::appset::{Cluster, Inputs, Trees};

/// The label on each Application a set made: the set's name.
pub const SET_LABEL: &str = "tether.dev/application-set";
/// The label that marks a Secret as a cluster for the clusters generator (Argo CD's
/// `argocd.argoproj.io/secret-type: cluster` is read too).
pub const CLUSTER_SECRET_LABEL: &str = "tether.dev/secret-type";
const MANAGER: &str = "tether-applicationset";
/// What the set made an Application from (a digest): it holds the set's current template
/// when this matches.
pub const HASH_ANNOTATION: &str = "tether.dev/set-hash";
/// How often a set is generated again without a change to it (Argo CD's default).
const REGENERATE_EVERY: Duration = Duration::from_secs(180);

/// Runs the controller over the ApplicationSets of the agent's namespaces until `stop`.
pub(super) async fn run(
    context: Arc<Context>,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = context.client.clone();
    let (sets, apps): (Api<ApplicationSet>, Api<Application>) = match &context.options.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client, ns),
        ),
        None => (Api::all(client.clone()), Api::all(client)),
    };
    // A push a webhook announces generates every set again.
    let listings = context.pipeline.listings.clone();
    let pushes = futures::stream::unfold(listings, |listings| async move {
        listings.pushed().await;
        Some(((), listings))
    });
    // An owned Application wakes its set only when what a rollout reads of it changes (its
    // spec's generation, or the generation, sync state, health and Ready its status
    // report), not at each status write.
    let owned = watcher(apps, watcher::Config::default().labels(SET_LABEL))
        .default_backoff()
        .touched_objects()
        .predicate_filter(rollout_view, Default::default());
    // Each set handed on once the store holds it (a relist's new sets are not dropped).
    let (store, writer) = kube::runtime::reflector::store();
    let sets = watcher(sets, watcher::Config::default())
        .default_backoff()
        .reflect(writer);
    Controller::for_stream(super::stored::applied_once_stored(sets), store)
        .owns_stream(owned)
        .reconcile_all_on(pushes)
        .graceful_shutdown_on(stop)
        .run(
            reconcile,
            |_, err, _| {
                tracing::warn!(%err, "will retry");
                Action::requeue(Duration::from_secs(15))
            },
            context,
        )
        .for_each(|_| async {})
        .await;
}

/// What a rollout reads of an Application, as one number.
fn rollout_view(app: &Application) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    app.metadata.generation.hash(&mut hasher);
    app.annotations().get(HASH_ANNOTATION).hash(&mut hasher);
    settled(app).hash(&mut hasher);
    Some(hasher.finish())
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the status of ApplicationSet {0}: {1}")]
pub(super) struct StatusError(String, String);

/// One reconcile of one set: generate, apply, delete, record.
async fn reconcile(set: Arc<ApplicationSet>, ctx: Arc<Context>) -> Result<Action, StatusError> {
    let key = format!("{}/{}", set.namespace().unwrap_or_default(), set.name_any());
    let _in_shard = match &ctx.shards {
        Some(shards) => match shards.begin(&key) {
            super::shard::Begin::Act(guard) => Some(guard),
            super::shard::Begin::NotHeld => return Ok(Action::await_change()),
            super::shard::Begin::Stale => return Ok(Action::requeue(Duration::from_secs(5))),
        },
        None => None,
    };
    if set.meta().deletion_timestamp.is_some() {
        // Its Applications go with it (they are owned by it), each with its deletion policy.
        return Ok(Action::await_change());
    }
    let every = crate::appset::requeue_after(&set.spec.generators)
        .map_or(REGENERATE_EVERY, |d| d.min(REGENERATE_EVERY));
    let (status, next) = match sync_set(&ctx, &set).await {
        Ok(synced) => {
            let message = format!("{} Application(s) generated", synced.names.len());
            // A rollout under way is looked at again soon (an Application settling also
            // wakes it: the set watches what it owns).
            let next = if synced.rollout.progressing {
                every.min(Duration::from_secs(5))
            } else {
                every
            };
            let status = Outcome {
                ready: true,
                message,
                names: synced.names,
                rollout: synced.rollout.steps,
            };
            (status, next)
        }
        Err(message) => {
            let names = previous_names(&set);
            let rollout = set
                .status
                .as_ref()
                .map(|s| s.rollout.clone())
                .unwrap_or_default();
            (
                Outcome {
                    ready: false,
                    message,
                    names,
                    rollout,
                },
                every.min(Duration::from_secs(30)),
            )
        }
    };
    write_status(&ctx, &set, status).await?;
    Ok(Action::requeue(next))
}

/// What a reconcile of a set came to, for its status.
struct Outcome {
    ready: bool,
    message: String,
    names: Vec<String>,
    rollout: Vec<crate::application::set::StepStatus>,
}

fn previous_names(set: &ApplicationSet) -> Vec<String> {
    set.status
        .as_ref()
        .map(|s| s.applications.clone())
        .unwrap_or_default()
}

/// What a set's generation did: the Applications it makes, and its rollout.
struct Synced {
    names: Vec<String>,
    rollout: crate::appset::rollout::Rollout,
}

/// Generates, applies (as the rollout allows) and deletes.
async fn sync_set(ctx: &Context, set: &ApplicationSet) -> Result<Synced, String> {
    let namespace = set.namespace().unwrap_or_default();
    let (may_update, may_delete) = set.spec.sync_policy.allows()?;
    let wanted = generate(ctx, set, &namespace).await?;
    let names: BTreeSet<String> = wanted.iter().map(name_of).collect();
    let apps: Api<Application> = Api::namespaced(ctx.client.clone(), &namespace);
    let selector = format!("{SET_LABEL}={}", set.name_any());
    let existing = apps
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| {
            format!(
                "cannot list the Applications of this set: {}",
                crate::cluster::describe(&e)
            )
        })?
        .items;
    let rollout = rollout_of(set, &wanted, &existing, may_update)?;
    for app in wanted
        .iter()
        .filter(|a| rollout.write.contains(&name_of(a)))
    {
        let name = name_of(app);
        let ours = existing.iter().any(|e| e.name_any() == name);
        if ours && !may_update {
            continue;
        }
        if !ours && apps.get_opt(&name).await.ok().flatten().is_some() {
            return Err(format!(
                "Application {name} exists and was not made by this set (another set's, or made by hand): rename it in template.metadata.name, or delete the other one"
            ));
        }
        apps.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(app),
        )
        .await
        .map_err(|e| {
            format!(
                "cannot apply Application {name}: {}",
                crate::cluster::describe(&e)
            )
        })?;
    }
    if may_delete {
        for gone in existing
            .iter()
            .map(|e| e.name_any())
            .filter(|n| !names.contains(n))
        {
            match apps.delete(&gone, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => {
                    return Err(format!(
                        "cannot delete Application {gone}: {}",
                        crate::cluster::describe(&e)
                    ));
                }
            }
        }
    }
    Ok(Synced {
        names: names.into_iter().collect(),
        rollout,
    })
}

fn name_of(app: &Value) -> String {
    app["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Every Application the set's generators and template make now.
async fn generate(
    ctx: &Context,
    set: &ApplicationSet,
    namespace: &str,
) -> Result<Vec<Value>, String> {
    let trees = fetch_trees(ctx, set).await?;
    let clusters = cluster_secrets(ctx, namespace).await?;
    let pull_requests = super::pulls::list(ctx, set).await?;
    let inputs = Inputs {
        trees: &trees,
        clusters: &clusters,
        pull_requests: &pull_requests,
    };
    let params = crate::appset::generate(&set.spec.generators, &inputs)?;
    let mut wanted = Vec::new();
    let mut names = BTreeSet::new();
    for params in &params {
        let rendered = crate::appset::render(&set.spec.template, params)?;
        if !names.insert(rendered.name.clone()) {
            return Err(format!(
                "two parameter sets make Application {}: put a parameter in template.metadata.name that tells them apart",
                rendered.name
            ));
        }
        wanted.push(application_of(set, rendered)?);
    }
    Ok(wanted)
}

/// Which Applications are written now: those not holding what the set makes, all at once,
/// or step by step with a RollingSync strategy.
fn rollout_of(
    set: &ApplicationSet,
    wanted: &[Value],
    existing: &[Application],
    may_update: bool,
) -> Result<crate::appset::rollout::Rollout, String> {
    use crate::appset::rollout::{Member, Rollout, plan};
    let members: Vec<Member> = wanted
        .iter()
        .map(|app| {
            let name = name_of(app);
            let live = existing.iter().find(|e| e.name_any() == name);
            let hash = app["metadata"]["annotations"][HASH_ANNOTATION].as_str();
            // An Application the set may not update counts as current once it exists.
            let held = |l: &Application| {
                !may_update || l.annotations().get(HASH_ANNOTATION).map(String::as_str) == hash
            };
            Member {
                current: live.is_some_and(held),
                settled: live.is_some_and(settled),
                labels: serde_json::from_value(app["metadata"]["labels"].clone())
                    .unwrap_or_default(),
                name,
            }
        })
        .collect();
    match &set.spec.strategy {
        Some(strategy) if strategy.type_ == "RollingSync" => {
            plan(&strategy.rolling_sync.steps, &members)
        }
        Some(strategy) => Err(format!(
            "spec.strategy.type {:?}: tether knows RollingSync",
            strategy.type_
        )),
        None => Ok(Rollout {
            write: members
                .iter()
                .filter(|m| !m.current)
                .map(|m| m.name.clone())
                .collect(),
            steps: Vec::new(),
            progressing: false,
        }),
    }
}

/// The Application is Synced and Healthy at its current spec.
fn settled(app: &Application) -> bool {
    let Some(status) = &app.status else {
        return false;
    };
    status.observed_generation == app.metadata.generation
        && status.sync.as_ref().is_some_and(|s| s.status == "Synced")
        && status.health.as_deref() == Some("Healthy")
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The Application `rendered` stands for, owned by `set`; its spec checked.
fn application_of(
    set: &ApplicationSet,
    rendered: crate::appset::Rendered,
) -> Result<Value, String> {
    let mut labels = rendered.labels;
    labels.insert(SET_LABEL.into(), set.name_any());
    let mut spec = rendered.spec;
    if set.spec.sync_policy.preserve_resources_on_deletion && spec.get("deletionPolicy").is_none() {
        spec["deletionPolicy"] = json!("Orphan");
    }
    let mut annotations = rendered.annotations;
    let hash = {
        use sha2::Digest;
        let made = json!({"labels": labels, "annotations": annotations, "spec": spec});
        let digest = sha2::Sha256::digest(made.to_string().as_bytes());
        digest
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    annotations.insert(HASH_ANNOTATION.into(), hash);
    let owner = json!({
        "apiVersion": ApplicationSet::api_version(&()),
        "kind": "ApplicationSet",
        "name": set.name_any(),
        "uid": set.uid().unwrap_or_default(),
        "controller": true,
        "blockOwnerDeletion": true,
    });
    let app = json!({
        "apiVersion": Application::api_version(&()),
        "kind": "Application",
        "metadata": {
            "name": rendered.name,
            "namespace": set.namespace(),
            "labels": labels,
            "annotations": annotations,
            "ownerReferences": [owner],
        },
        "spec": spec,
    });
    let checked: Application = serde_json::from_value(app.clone()).map_err(|e| {
        format!(
            "the template makes an invalid Application {}: {e}",
            rendered.name
        )
    })?;
    checked
        .spec
        .check()
        .map_err(|e| format!("Application {}: {e}", rendered.name))?;
    Ok(app)
}

/// The Git trees the generators read, fetched as an Application's source is (at the
/// revision a generator names: a branch, a tag or a commit; the default branch without).
async fn fetch_trees(ctx: &Context, set: &ApplicationSet) -> Result<Trees, String> {
    let mut trees = Trees::new();
    for (repo, revision) in crate::appset::git_sources(&set.spec.generators) {
        let mut source = json!({"repoURL": repo});
        match revision.as_str() {
            "" | "HEAD" => {}
            commit if commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()) => {
                source["ref"] = json!({"commit": commit});
            }
            branch => source["ref"] = json!({"branch": branch}),
        }
        let reader: Application = serde_json::from_value(json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "Application",
            "metadata": {"name": set.name_any(), "namespace": set.namespace()},
            "spec": {"source": source, "destination": {"namespace": set.namespace()}}
        }))
        .map_err(|e| format!("generator repository {repo}: {e}"))?;
        let (_, tree) = crate::app::fetch(
            &ctx.client,
            &ctx.pipeline,
            &reader,
            None,
            // Read anew each time (a set is generated every few minutes, or when changed).
            Duration::ZERO,
        )
        .await
        .map_err(|e| {
            format!(
                "cannot fetch {repo} for a git generator: {}",
                String::from(e)
            )
        })?;
        trees.insert((repo, revision), tree);
    }
    Ok(trees)
}

/// The cluster Secrets of `namespace` (labelled `tether.dev/secret-type: cluster`, or Argo
/// CD's label): what the clusters generator selects from.
async fn cluster_secrets(ctx: &Context, namespace: &str) -> Result<Vec<Cluster>, String> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut clusters = Vec::new();
    for label in [CLUSTER_SECRET_LABEL, "argocd.argoproj.io/secret-type"] {
        let listed = secrets
            .list(&ListParams::default().labels(&format!("{label}=cluster")))
            .await
            .map_err(|e| {
                format!(
                    "cannot list the cluster Secrets of {namespace}: {}",
                    crate::cluster::describe(&e)
                )
            })?;
        for secret in listed.items {
            let name = secret.name_any();
            if clusters.iter().any(|c: &Cluster| c.name == name) {
                continue;
            }
            let annotations = secret.annotations().clone().into_iter().collect();
            let server = secret
                .data
                .as_ref()
                .and_then(|d| d.get("server"))
                .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                .unwrap_or_default();
            clusters.push(Cluster {
                server,
                labels: secret.labels().clone().into_iter().collect(),
                annotations,
                name,
            });
        }
    }
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(clusters)
}

/// Writes the set's status (Ready, the Applications it makes, the rollout), when it changed.
async fn write_status(
    ctx: &Context,
    set: &ApplicationSet,
    outcome: Outcome,
) -> Result<(), StatusError> {
    let Outcome {
        ready,
        message,
        names: applications,
        rollout,
    } = outcome;
    let before = set.status.clone().unwrap_or_default();
    let value = if ready { "True" } else { "False" };
    let unchanged = before.applications == applications
        && before.rollout == rollout
        && before.observed_generation == set.metadata.generation
        && before
            .conditions
            .iter()
            .any(|c| c.status == value && c.message == message);
    if unchanged {
        return Ok(());
    }
    let since = before
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == value)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(now_rfc3339);
    let status = ApplicationSetStatus {
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: value.into(),
            reason: if ready { "Generated" } else { "ErrorOccurred" }.into(),
            message,
            last_transition_time: since,
            observed_generation: set.metadata.generation,
        }],
        count: applications.len() as u32,
        applications,
        observed_generation: set.metadata.generation,
        rollout,
    };
    let api: Api<ApplicationSet> =
        Api::namespaced(ctx.client.clone(), &set.namespace().unwrap_or_default());
    let patch = json!({"apiVersion": ApplicationSet::api_version(&()), "kind": "ApplicationSet", "status": status});
    api.patch_status(
        &set.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(|_| ())
    .map_err(|e| StatusError(set.name_any(), crate::cluster::describe(&e)))
}
