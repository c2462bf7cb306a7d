//! The agent's HTTP server: Git webhooks (GitHub, GitLab, Gitea, generic) that trigger an
//! immediate sync of the Applications following the pushed repository and branch,
//! `/healthz`, `/readyz`, Prometheus `/metrics`, and the JSON API ([`super::api`]) when a
//! token is configured.
//!
//! # Security
//! Every webhook is authenticated before its body is believed: an HMAC-SHA256 signature
//! (GitHub, Gitea, generic) or a shared token (GitLab), compared in constant time. A forged
//! or unsigned request gets 401 and triggers nothing. A body above [`WEBHOOK_BODY_LIMIT`] is
//! refused (413) before anything reads it, and a replay is refused (409): a delivery id
//! received before, or a signed body received in the last [`REPLAY_WINDOW`] under any
//! delivery id (the id is not signed, so a replay may carry a new one).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;

use super::Application;

/// The agent's metrics, registered once.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_seconds: Histogram,
    pub git_fetch_seconds: Histogram,
    pub applied: Family<ActionLabels, Counter>,
    pub drift_corrections: Counter,
    pub drift_missed: Counter,
    pub drift_verifications: Counter,
    pub applications: Family<StateLabels, Gauge>,
    pub webhooks: Family<WebhookLabels, Counter>,
    pub notifications: Family<ResultLabels, Counter>,
    pub notifications_dead: Counter,
    pub shards_held: Gauge,
    pub commit_statuses: Family<ResultLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub sync: String,
    pub health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub provider: String,
    pub result: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tether");
        let reconciles = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciles of Applications, by result",
            reconciles.clone(),
        );
        let buckets = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        let reconcile_seconds = Histogram::new(buckets);
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile",
            reconcile_seconds.clone(),
        );
        let git_fetch_seconds = Histogram::new(buckets);
        registry.register(
            "git_fetch_duration_seconds",
            "Time to resolve and fetch a revision",
            git_fetch_seconds.clone(),
        );
        let applied = Family::<ActionLabels, Counter>::default();
        registry.register(
            "objects_applied",
            "Objects created, updated or pruned by the agent",
            applied.clone(),
        );
        let drift_corrections = Counter::default();
        registry.register(
            "drift_corrections",
            "Syncs started because an owned object was changed by hand",
            drift_corrections.clone(),
        );
        let drift_missed = Counter::default();
        registry.register(
            "drift_missed",
            "Objects whose drift the watches missed and a full plan found (a bug: please report it)",
            drift_missed.clone(),
        );
        let drift_verifications = Counter::default();
        registry.register(
            "drift_verifications",
            "Full plans of an unchanged render that checked what the watches vouched for (the backstop)",
            drift_verifications.clone(),
        );
        let applications = Family::<StateLabels, Gauge>::default();
        registry.register(
            "applications",
            "Applications by sync state and health",
            applications.clone(),
        );
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "Webhook requests, by provider and result",
            webhooks.clone(),
        );
        let notifications = Family::<ResultLabels, Counter>::default();
        registry.register(
            "notifications",
            "Notification attempts (POSTs to --notify URLs), by result: delivered, or failed (retried unless it was the last attempt)",
            notifications.clone(),
        );
        let notifications_dead = Counter::default();
        registry.register(
            "notifications_dead_letter",
            "Notifications given up after every retry failed",
            notifications_dead.clone(),
        );
        let shards_held = Gauge::default();
        registry.register(
            "shards_held",
            "Shards whose Lease this agent holds (with --shards; it reconciles only their Applications)",
            shards_held.clone(),
        );
        let commit_statuses = Family::<ResultLabels, Counter>::default();
        registry.register(
            "commit_statuses",
            "Attempts to set a commit status on a Git host (spec.commitStatus), by result: set, or failed (retried twice)",
            commit_statuses.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_seconds,
            git_fetch_seconds,
            applied,
            drift_corrections,
            drift_missed,
            drift_verifications,
            applications,
            webhooks,
            notifications,
            notifications_dead,
            shards_held,
            commit_statuses,
        }
    }
}

#[derive(Clone)]
struct ServerState {
    metrics: Arc<Metrics>,
    applications: Store<Application>,
    trigger: mpsc::UnboundedSender<ObjectRef<Application>>,
    webhook_secret: Option<Arc<Vec<u8>>>,
    ready: Arc<AtomicBool>,
    deliveries: Arc<std::sync::Mutex<Deliveries>>,
    relay: Option<Relay>,
    /// The agent's ref listings, made stale by a push.
    listings: Arc<crate::source::git::Listings>,
}

/// For sharded agents: a push for an Application of another agent's shard is passed on by
/// annotating the Application (the Git host reaches one agent; the owner watches them all).
#[derive(Clone)]
pub struct Relay {
    pub client: kube::Client,
    pub shards: Arc<super::shard::Shards>,
}

impl Relay {
    /// Unless this agent holds the shard of `app`, sets its refresh annotation (in the
    /// background; a failure is logged, and the owner still finds the push at its next
    /// poll).
    pub fn pass_on_unless_held(&self, app: &Application) {
        if self.shards.holds(&super::application_key(app)) {
            return;
        }
        let namespace = app.metadata.namespace.clone().unwrap_or_default();
        let name = app.metadata.name.clone().unwrap_or_default();
        let api: kube::Api<Application> = kube::Api::namespaced(self.client.clone(), &namespace);
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        tokio::spawn(async move {
            let patch = serde_json::json!({"metadata": {"annotations": {
                super::application::REFRESH_ANNOTATION: now
            }}});
            if let Err(err) = api
                .patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
            {
                tracing::warn!(application = %format!("{namespace}/{name}"), %err,
                    "cannot pass a webhook on to the agent of this Application's shard");
            }
        });
    }
}

/// The largest webhook body read: a push event is a few kilobytes.
pub const WEBHOOK_BODY_LIMIT: usize = 2 << 20;

/// How long a signed body is remembered: the same body again within it is a replay,
/// whatever its delivery id (a Git host's "redeliver" included).
pub const REPLAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// The webhook deliveries accepted last, to refuse a replay. Bounded: only authenticated
/// deliveries are recorded, and the oldest is forgotten past [`Deliveries::KEEP`]; bodies
/// are forgotten after [`REPLAY_WINDOW`] too.
#[derive(Default)]
struct Deliveries {
    order: std::collections::VecDeque<String>,
    seen: std::collections::HashSet<String>,
    /// Digests of the signed bodies accepted, with when, oldest first.
    bodies: std::collections::VecDeque<([u8; 32], std::time::Instant)>,
    body_seen: std::collections::HashMap<[u8; 32], std::time::Instant>,
}

impl Deliveries {
    const KEEP: usize = 1024;

    /// Records `key`; false when it was recorded before (a replay).
    fn first_time(&mut self, key: String) -> bool {
        if !self.seen.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > Self::KEEP
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        true
    }

    /// Records a signed body (its digest) at `now`; `Err` with how long ago it was accepted
    /// when it was within [`REPLAY_WINDOW`].
    fn body_first_time(
        &mut self,
        digest: [u8; 32],
        now: std::time::Instant,
    ) -> Result<(), std::time::Duration> {
        while let Some((old, at)) = self.bodies.front().copied() {
            if now.duration_since(at) < REPLAY_WINDOW && self.bodies.len() < Self::KEEP {
                break;
            }
            self.bodies.pop_front();
            if self.body_seen.get(&old) == Some(&at) {
                self.body_seen.remove(&old);
            }
        }
        if let Some(at) = self.body_seen.get(&digest) {
            return Err(now.duration_since(*at));
        }
        self.bodies.push_back((digest, now));
        self.body_seen.insert(digest, now);
        Ok(())
    }
}

/// The router; `ready` turns true once the controller's first list of Applications is in.
#[allow(clippy::too_many_arguments)] // each is one piece of the agent the routes use
pub fn router(
    metrics: Arc<Metrics>,
    applications: Store<Application>,
    trigger: mpsc::UnboundedSender<ObjectRef<Application>>,
    webhook_secret: Option<Vec<u8>>,
    ready: Arc<AtomicBool>,
    api: Option<super::api::ApiState>,
    relay: Option<Relay>,
    listings: Arc<crate::source::git::Listings>,
) -> Router {
    let state = ServerState {
        metrics,
        applications,
        trigger,
        webhook_secret: webhook_secret.map(Arc::new),
        ready,
        deliveries: Default::default(),
        relay,
        listings,
    };
    let router = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route(
            "/webhooks/{provider}",
            post(webhook).layer(axum::extract::DefaultBodyLimit::max(WEBHOOK_BODY_LIMIT)),
        )
        .with_state(state);
    match api {
        Some(api) => router.merge(super::api::routes(api)),
        None => router,
    }
}

async fn readyz(State(state): State<ServerState>) -> (StatusCode, &'static str) {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the first list of Applications",
        )
    }
}

async fn metrics_text(State(state): State<ServerState>) -> (StatusCode, HeaderMap, String) {
    let mut text = String::new();
    let mut headers = HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
            .parse()
            .expect("valid header"),
    );
    match prometheus_client::encoding::text::encode(&mut text, &state.metrics.registry) {
        Ok(()) => (StatusCode::OK, headers, text),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            HeaderMap::new(),
            e.to_string(),
        ),
    }
}

/// HMAC-SHA256 of `body` with `secret`, compared in constant time with `given_hex`.
pub fn signature_valid(secret: &[u8], body: &[u8], given_hex: &str) -> bool {
    let Ok(given) = hex_decode(given_hex.trim()) else {
        return false;
    };
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    expected.as_slice().ct_eq(&given).into()
}

fn hex_decode(text: &str) -> Result<Vec<u8>, ()> {
    // Hex digits only: `u8::from_str_radix` alone also takes `+a` for `0a`.
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2).ok_or(())?, 16).map_err(|_| ()))
        .collect()
}

/// What a push says: which repository (by every URL the provider gives) and which ref.
#[derive(Debug, PartialEq)]
pub struct Push {
    pub urls: Vec<String>,
    pub branch: Option<String>,
}

async fn webhook(
    State(state): State<ServerState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> (StatusCode, String) {
    let count = |result: &str| {
        state
            .metrics
            .webhooks
            .get_or_create(&WebhookLabels {
                provider: provider.clone(),
                result: result.into(),
            })
            .inc();
    };
    let Some(secret) = state.webhook_secret.clone() else {
        count("disabled");
        return (
            StatusCode::NOT_FOUND,
            "webhooks are off: start the agent with --webhook-secret-file".into(),
        );
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            count("too-large");
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is above {} MiB, more than any push event; nothing was triggered (send push events only)",
                    WEBHOOK_BODY_LIMIT >> 20
                ),
            );
        }
        Err(rejection) => {
            count("bad-payload");
            return (rejection.status(), rejection.body_text());
        }
    };
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let authentic = match provider.as_str() {
        "github" => header("x-hub-signature-256")
            .strip_prefix("sha256=")
            .is_some_and(|sig| signature_valid(&secret, &body, sig)),
        "gitea" => signature_valid(&secret, &body, &header("x-gitea-signature")),
        "gitlab" => {
            let token = header("x-gitlab-token");
            !token.is_empty() && bool::from(token.as_bytes().ct_eq(secret.as_slice()))
        }
        "generic" => header("x-tether-signature")
            .strip_prefix("sha256=")
            .is_some_and(|sig| signature_valid(&secret, &body, sig)),
        _ => {
            count("unknown-provider");
            return (
                StatusCode::NOT_FOUND,
                format!("no webhook for {provider:?}; use github, gitlab, gitea or generic"),
            );
        }
    };
    if !authentic {
        count("refused");
        return (
            StatusCode::UNAUTHORIZED,
            "the signature or token does not match".into(),
        );
    }
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(&body) else {
        count("bad-payload");
        return (StatusCode::BAD_REQUEST, "the body is not JSON".into());
    };
    // A replay: a delivery id seen before. The id is not signed, so a replay with a new one
    // gets through; it only makes the agent ask Git for the ref again, which is harmless.
    let delivery = [
        "x-github-delivery",
        "x-gitea-delivery",
        "x-gitlab-event-uuid",
        "x-tether-delivery",
    ]
    .into_iter()
    .map(header)
    .find(|id| !id.is_empty());
    if let Some(id) = &delivery
        && !state
            .deliveries
            .lock()
            .expect("not poisoned")
            .first_time(format!("{provider} {id}"))
    {
        count("replayed");
        return (
            StatusCode::CONFLICT,
            format!("delivery {id} was received before; a replay triggers nothing"),
        );
    }
    // The same signed body under a new delivery id (or none) is a replay too.
    let digest: [u8; 32] = {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(provider.as_bytes());
        hasher.update([0]);
        hasher.update(&body);
        hasher.finalize().into()
    };
    if let Err(ago) = state
        .deliveries
        .lock()
        .expect("not poisoned")
        .body_first_time(digest, std::time::Instant::now())
    {
        count("replayed");
        return (
            StatusCode::CONFLICT,
            format!(
                "this signed body was received {} s ago (under another delivery id); a replay within {} minutes triggers nothing",
                ago.as_secs(),
                REPLAY_WINDOW.as_secs() / 60
            ),
        );
    }
    let push = parse_push(&provider, &payload);
    let mut triggered = 0;
    for app in state.applications.state() {
        if follows(&app, &push) {
            // The push is news: the next fetch must list the remote's refs again.
            state.listings.forget(&app.spec.source.repo_url);
            let _ = state.trigger.send(ObjectRef::from_obj(app.as_ref()));
            if let Some(relay) = &state.relay {
                relay.pass_on_unless_held(&app);
            }
            triggered += 1;
        }
    }
    count("accepted");
    (
        StatusCode::ACCEPTED,
        format!("{triggered} Application(s) will sync now\n"),
    )
}

/// Reads a push from an authenticated webhook's JSON `payload`, in the layout of `provider`
/// (`github`, `gitea`, `gitlab`, `generic`). Total: fields that are missing or of the wrong
/// type are left out, never an error (public so that tests/fuzz.rs can feed it anything).
pub fn parse_push(provider: &str, payload: &serde_json::Value) -> Push {
    let strings = |pointers: &[&str]| -> Vec<String> {
        pointers
            .iter()
            .filter_map(|p| {
                payload
                    .pointer(p)
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            })
            .collect()
    };
    let urls = match provider {
        "gitlab" => strings(&[
            "/project/git_http_url",
            "/project/git_ssh_url",
            "/project/web_url",
            "/repository/git_http_url",
        ]),
        "generic" => strings(&["/repoURL"]),
        _ => strings(&[
            "/repository/clone_url",
            "/repository/ssh_url",
            "/repository/html_url",
            "/repository/git_url",
        ]),
    };
    let branch = payload["ref"]
        .as_str()
        .map(|r| r.strip_prefix("refs/heads/").unwrap_or(r).to_string());
    Push { urls, branch }
}

/// Compares repository URLs without scheme, credentials, `.git` and trailing slashes.
pub fn same_repository(a: &str, b: &str) -> bool {
    fn key(url: &str) -> String {
        let without_scheme = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
        let without_user = without_scheme
            .rsplit_once('@')
            .map(|(_, rest)| rest)
            .unwrap_or(without_scheme);
        without_user
            .trim_end_matches('/')
            .trim_end_matches(".git")
            .replacen(':', "/", 1)
            .to_ascii_lowercase()
    }
    key(a) == key(b)
}

fn follows(app: &Application, push: &Push) -> bool {
    let source = &app.spec.source;
    if !push
        .urls
        .iter()
        .any(|url| same_repository(url, &source.repo_url))
    {
        return false;
    }
    match (&source.r#ref.branch, &push.branch) {
        (Some(branch), Some(pushed)) => branch == pushed,
        // Tags, commits and semver ranges may follow any push; a refresh is cheap.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_checked_against_an_independent_hmac() {
        // The expected signature comes from OpenSSL, not from the code under test.
        let mut openssl = std::process::Command::new("openssl")
            .args(["dgst", "-sha256", "-hmac", "s3cret", "-hex"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("openssl runs");
        use std::io::Write;
        openssl
            .stdin
            .take()
            .expect("piped")
            .write_all(br#"{"a":1}"#)
            .expect("write");
        let out = openssl.wait_with_output().expect("openssl output");
        let text = String::from_utf8_lossy(&out.stdout);
        let expected = text
            .rsplit(' ')
            .next()
            .expect("a digest")
            .trim()
            .to_string();
        assert_eq!(expected.len(), 64, "{text}");
        assert!(signature_valid(b"s3cret", br#"{"a":1}"#, &expected));
        assert!(
            !signature_valid(b"s3cret", br#"{"a":2}"#, &expected),
            "another body"
        );
        assert!(
            !signature_valid(b"other", br#"{"a":1}"#, &expected),
            "another secret"
        );
        assert!(!signature_valid(b"s3cret", br#"{"a":1}"#, "zz"), "not hex");
    }

    #[test]
    fn a_delivery_is_accepted_once_and_the_record_stays_bounded() {
        let mut deliveries = Deliveries::default();
        assert!(deliveries.first_time("github a".into()));
        assert!(!deliveries.first_time("github a".into()), "a replay");
        for n in 0..Deliveries::KEEP {
            assert!(deliveries.first_time(format!("github {n}")));
        }
        assert_eq!(deliveries.seen.len(), Deliveries::KEEP);
        assert!(
            deliveries.first_time("github a".into()),
            "forgotten: the oldest"
        );
    }

    #[test]
    fn a_signed_body_is_a_replay_within_the_window_whatever_its_delivery_id() {
        let mut deliveries = Deliveries::default();
        let start = std::time::Instant::now();
        assert_eq!(deliveries.body_first_time([1; 32], start), Ok(()));
        let later = start + std::time::Duration::from_secs(30);
        assert_eq!(
            deliveries.body_first_time([1; 32], later),
            Err(std::time::Duration::from_secs(30))
        );
        assert_eq!(deliveries.body_first_time([2; 32], later), Ok(()));
        let past = start + REPLAY_WINDOW + std::time::Duration::from_secs(1);
        assert_eq!(
            deliveries.body_first_time([1; 32], past),
            Ok(()),
            "forgotten"
        );
        for n in 0..Deliveries::KEEP * 2 {
            let mut digest = [0u8; 32];
            digest[..8].copy_from_slice(&(n as u64).to_le_bytes());
            let _ = deliveries.body_first_time(digest, past);
        }
        assert!(deliveries.bodies.len() <= Deliveries::KEEP);
        assert!(deliveries.body_seen.len() <= Deliveries::KEEP);
    }

    #[test]
    fn pushes_match_repositories_and_branches() {
        assert!(same_repository(
            "https://git.example.com/team/deploy.git",
            "git@git.example.com:team/deploy"
        ));
        assert!(same_repository(
            "ssh://git@git.example.com/team/deploy/",
            "https://user@git.example.com/team/deploy.git"
        ));
        assert!(!same_repository(
            "https://git.example.com/team/deploy",
            "https://git.example.com/team/other"
        ));
        let push = parse_push(
            "github",
            &serde_json::json!({"ref": "refs/heads/main", "repository": {"clone_url": "https://git.example.com/team/deploy.git"}}),
        );
        assert_eq!(push.branch.as_deref(), Some("main"));
        assert_eq!(push.urls, ["https://git.example.com/team/deploy.git"]);
    }
}
