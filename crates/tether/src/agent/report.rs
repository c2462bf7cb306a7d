//! What the agent tells about a reconcile once its status is written: Kubernetes Events,
//! notifications and commit statuses on the Git host; and a failure whose Event could not
//! be published when it happened, published once the API server answers again.

use kube::api::Api;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};

use super::{Context, commit_status, notify, now_rfc3339};
use crate::application::{Application, application_key};
use crate::cluster::describe;

/// Publishes the Event of a failed sync that could not be published when it happened.
pub(super) async fn report_late_failure(ctx: &Context, app: &Application) {
    let key = application_key(app);
    let late = ctx
        .memory
        .with(&key, |remembered| remembered.late_failure.take());
    if let Some((when, message)) = late {
        let note =
            format!("at {when}, the API server could not be reached to report it: {message}");
        if !publish(ctx, app, EventType::Warning, "SyncFailed", note).await {
            ctx.memory.with(&key, |remembered| {
                remembered.late_failure.get_or_insert((when, message));
            });
        }
    }
}

/// Sets the outcome of a sync as a status of `revision` on the Git host, when the
/// Application asks for it (in the background, once per revision and state: the idle
/// reconciles of a synced revision build nothing).
pub(super) fn set_commit_status(
    ctx: &Context,
    app: &Application,
    revision: &str,
    state: commit_status::State,
    description: impl FnOnce() -> String,
) {
    let Some(spec) = &app.spec.commit_status else {
        return;
    };
    let key = application_key(app);
    if ctx.commit_statuses.was_last(&key, revision, state) {
        return;
    }
    let description = description();
    let namespace = app.namespace().unwrap_or_default();
    let status = commit_status::Status {
        commit: revision.to_string(),
        state,
        description,
        context: spec
            .context
            .clone()
            .unwrap_or_else(|| format!("tether/{namespace}/{}", app.name_any())),
    };
    let request = match commit_status::request_for(spec, &app.spec.source.repo_url, &status) {
        Ok(request) => request,
        Err(err) => {
            tracing::warn!(application = %key, %err, "cannot set the commit status");
            return;
        }
    };
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(ctx.client.clone(), &namespace);
    let secret = spec.secret_ref.name.clone();
    let token = async move {
        let found = secrets.get(&secret).await.map_err(|e| {
            format!(
                "cannot read the commit status token Secret {namespace}/{secret}: {}",
                describe(&e)
            )
        })?;
        found
            .data
            .and_then(|d| d.get("token").cloned())
            .map(|t| String::from_utf8_lossy(&t.0).trim().to_string())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("the Secret {namespace}/{secret} has no key token"))
    };
    ctx.commit_statuses.send(&key, request, &status, token);
}

/// Tells the configured notification URLs (in the background).
pub(super) fn notify(
    ctx: &Context,
    app: &Application,
    event: notify::Event,
    revision: Option<&str>,
    message: String,
) {
    ctx.notifier.send(notify::Notice {
        event,
        namespace: app.namespace().unwrap_or_default(),
        name: app.name_any(),
        revision: revision.map(str::to_string),
        message,
        time: now_rfc3339(),
    });
}

/// Publishes an Event about the Application; false when it could not.
pub(super) async fn publish(
    ctx: &Context,
    app: &Application,
    type_: EventType,
    reason: &str,
    note: String,
) -> bool {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Sync".into(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &app.object_ref(&())).await {
        Ok(()) => true,
        Err(err) => {
            tracing::debug!(%err, "cannot publish an event");
            false
        }
    }
}
