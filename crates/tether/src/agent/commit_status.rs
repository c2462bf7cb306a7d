//! Commit statuses: an Application with `spec.commitStatus` has the outcome of each sync set
//! as a status of the synced commit on its Git host (GitHub, GitLab or Gitea), so a pull
//! request or a commit page shows whether tether applied it. Each host's request is built by
//! a pure function (`application::commit_status::request_for`); [`CommitStatuses`] sends them in the background, once
//! per revision and state, with retries.
//!
//! # Security
//! The token comes from a Secret in the Application's namespace (key `token`), read when a
//! status is sent; it goes only in the request's header (never after a redirect) and never
//! into a log or an error. Whoever may create Applications in a namespace can have any
//! Secret of that namespace with a `token` key sent to a host of their choosing, as with
//! `spec.source.secretRef` for Git: keep Secrets that must not leave in other namespaces.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::http::{Metrics, ResultLabels};
pub use crate::application::commit_status::{Request, State, Status, request_for};

const ATTEMPTS: u32 = 3;

/// The (revision, state) last sent for an Application, and the delivery's number.
type Sent = ((String, State), u64);

/// Sends commit statuses in the background, each (Application, revision, state) once.
#[derive(Clone)]
pub struct CommitStatuses {
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    /// namespace/name → the last (revision, state) sent, and its number: a delivery still
    /// retrying gives up once a newer one for the same Application exists, so an older
    /// outcome never lands after a newer one.
    sent: Arc<Mutex<HashMap<String, Sent>>>,
    next: Arc<std::sync::atomic::AtomicU64>,
    retry_after: Duration,
}

impl CommitStatuses {
    pub fn new(metrics: Arc<Metrics>) -> Result<Self, String> {
        let client = crate::source::git::host_api_client(Duration::from_secs(10))
            .map_err(|e| format!("the commit statuses: {e}"))?;
        Ok(Self {
            client,
            metrics,
            sent: Default::default(),
            next: Default::default(),
            retry_after: Duration::from_secs(2),
        })
    }

    /// Whether (`commit`, `state`) is what was last sent for Application `key`.
    pub fn was_last(&self, key: &str, commit: &str, state: State) -> bool {
        self.sent
            .lock()
            .expect("not poisoned")
            .get(key)
            .is_some_and(|((last, last_state), _)| last == commit && *last_state == state)
    }

    /// Sets `status` for Application `key` unless it was the last one sent; `token` is read
    /// when it is sent (from the Application's Secret).
    pub fn send(
        &self,
        key: &str,
        request: Request,
        status: &Status,
        token: impl std::future::Future<Output = Result<String, String>> + Send + 'static,
    ) {
        let number = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        {
            let mut sent = self.sent.lock().expect("not poisoned");
            let this = (status.commit.clone(), status.state);
            if sent.get(key).map(|(last, _)| last) == Some(&this) {
                return;
            }
            sent.insert(key.to_string(), (this, number));
        }
        let this = self.clone();
        let key = key.to_string();
        tokio::spawn(async move {
            let token = match token.await {
                Ok(token) => token,
                Err(err) => {
                    tracing::warn!(application = %key, %err, "cannot set the commit status");
                    this.count("failed");
                    this.forget(&key, number);
                    return;
                }
            };
            let mut wait = this.retry_after;
            for attempt in 1..=ATTEMPTS {
                if !this.current(&key, number) {
                    return;
                }
                let sent = this
                    .client
                    .post(&request.url)
                    .header("Content-Type", "application/json")
                    .header("Accept", "application/json")
                    .header(
                        request.auth_header,
                        format!("{}{token}", request.auth_prefix),
                    )
                    .body(request.body.to_string())
                    .send()
                    .await;
                let failure = match sent {
                    Ok(response) if response.status().is_success() => None,
                    Ok(response) => Some(format!("HTTP {}", response.status())),
                    Err(err) => Some(err.without_url().to_string()),
                };
                let Some(failure) = failure else {
                    this.count("set");
                    return;
                };
                this.count("failed");
                if attempt == ATTEMPTS {
                    tracing::warn!(application = %key, url = %request.url, %failure,
                        "the commit status could not be set");
                    // The next sync of this revision tries again.
                    this.forget(&key, number);
                    return;
                }
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        });
    }

    /// Whether delivery `number` is still the newest for `key`.
    fn current(&self, key: &str, number: u64) -> bool {
        self.sent
            .lock()
            .expect("not poisoned")
            .get(key)
            .is_some_and(|(_, newest)| *newest == number)
    }

    /// Delivery `number` failed: unless a newer one exists, the next sync sends it again.
    fn forget(&self, key: &str, number: u64) {
        let mut sent = self.sent.lock().expect("not poisoned");
        if sent.get(key).is_some_and(|(_, newest)| *newest == number) {
            sent.remove(key);
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .commit_statuses
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }
}
