//! Tenants: an Application that names `spec.serviceAccountName` is planned, applied, pruned
//! and health-checked as that ServiceAccount (in the Application's namespace), through
//! Kubernetes impersonation, as Flux's kustomize-controller does. What the account may not
//! do, the API server refuses, and the refusal is the sync's failure: a tenant can write
//! only where its account may. The agent's own identity still reads and writes the
//! Application (its status and Events), the Git credentials Secret it names, and runs the
//! drift watches, which only trigger reconciles that then act as the account.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use kube::ResourceExt;
use kube::client::Body;

use crate::application::Application;

/// The client that acts for `app`: the agent's own, or one impersonating the Application's
/// ServiceAccount. `Err` says why an Application may not run (it names no account, and the
/// agent requires one; or the name is not one a ServiceAccount can have).
pub fn client_for(
    base: &kube::Client,
    app: &Application,
    required: bool,
) -> Result<kube::Client, String> {
    let namespace = app.namespace().unwrap_or_default();
    let Some(account) = app.spec.service_account_name.as_deref() else {
        if required {
            return Err(format!(
                "spec.serviceAccountName is required: this agent runs with \
                 --require-service-account; name a ServiceAccount in namespace {namespace} that \
                 may write this Application's objects"
            ));
        }
        return Ok(base.clone());
    };
    if account.is_empty()
        || account.len() > 253
        || !account
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Err(format!(
            "spec.serviceAccountName {account:?} is not a ServiceAccount name (lowercase letters, \
             digits, '-' and '.')"
        ));
    }
    impersonating(
        base,
        &format!("system:serviceaccount:{namespace}:{account}"),
    )
}

/// A client that sends every request of `base` as `user` (the caller must be allowed to
/// impersonate that user).
pub fn impersonating(base: &kube::Client, user: &str) -> Result<kube::Client, String> {
    let user = HeaderValue::from_str(user).map_err(|e| format!("{user:?}: {e}"))?;
    Ok(kube::Client::new(
        Impersonate {
            inner: base.clone(),
            user,
        },
        base.default_namespace().to_string(),
    ))
}

/// Adds `Impersonate-User` to every request and sends it through the agent's client (its
/// connections, credentials and TLS).
#[derive(Clone)]
struct Impersonate {
    inner: kube::Client,
    user: HeaderValue,
}

impl tower::Service<Request<Body>> for Impersonate {
    type Response = Response<Body>;
    type Error = kube::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, kube::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        request
            .headers_mut()
            .insert("impersonate-user", self.user.clone());
        let inner = self.inner.clone();
        Box::pin(async move { inner.send(request).await })
    }
}
