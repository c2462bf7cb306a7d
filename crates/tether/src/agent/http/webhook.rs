//! Git webhooks (GitHub, GitLab, Gitea, generic): an authenticated push triggers an
//! immediate sync of the Applications following the pushed repository and branch. Start at
//! [`webhook`]: it checks a request ([`accept`]) before it triggers anything.
//!
//! # Security
//! Every webhook is authenticated before its body is believed: an HMAC-SHA256 signature
//! (GitHub, Gitea, generic) or a shared token (GitLab), compared in constant time. A forged
//! or unsigned request gets 401 and triggers nothing. A body above [`WEBHOOK_BODY_LIMIT`] is
//! refused (413) before anything reads it, and a replay is refused (409): a delivery id
//! received before, or a signed body received in the last [`REPLAY_WINDOW`] under any
//! delivery id (the id is not signed, so a replay may carry a new one).

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

use super::ServerState;
use super::metrics::WebhookLabels;
use crate::agent::Application;

/// The largest webhook body read: a push event is a few kilobytes.
pub const WEBHOOK_BODY_LIMIT: usize = 2 << 20;

/// How long a signed body is remembered: the same body again within it is a replay,
/// whatever its delivery id (a Git host's "redeliver" included).
pub const REPLAY_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// The webhook deliveries accepted last, to refuse a replay. Bounded: only authenticated
/// deliveries are recorded, and the oldest is forgotten past [`Deliveries::KEEP`]; bodies
/// are forgotten after [`REPLAY_WINDOW`] too.
#[derive(Default)]
pub(super) struct Deliveries {
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

/// A request refused: the result it is counted as, and the reply.
type Refusal = (&'static str, (StatusCode, String));

pub(super) async fn webhook(
    State(state): State<ServerState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> (StatusCode, String) {
    let (result, reply) = match accept(&state, &provider, &headers, body) {
        Ok(push) => ("accepted", trigger(&state, &push)),
        Err(refusal) => refusal,
    };
    state
        .metrics
        .webhooks
        .get_or_create(&WebhookLabels {
            provider: provider.clone(),
            result: result.into(),
        })
        .inc();
    reply
}

/// Checks a webhook before believing it, in this order: webhooks are on, the body is not
/// too large, the request is authentic, its body is JSON, and it is not a replay. Returns
/// the push it reports.
fn accept(
    state: &ServerState,
    provider: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Push, Refusal> {
    let Some(secret) = state.webhook_secret.clone() else {
        return Err((
            "disabled",
            (
                StatusCode::NOT_FOUND,
                "webhooks are off: start the agent with --webhook-secret-file".into(),
            ),
        ));
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let message = format!(
                "the body is above {} MiB, more than any push event; nothing was triggered (send push events only)",
                WEBHOOK_BODY_LIMIT >> 20
            );
            return Err(("too-large", (StatusCode::PAYLOAD_TOO_LARGE, message)));
        }
        Err(rejection) => {
            return Err(("bad-payload", (rejection.status(), rejection.body_text())));
        }
    };
    authenticate(provider, &secret, &body, headers)?;
    let Ok(payload) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return Err((
            "bad-payload",
            (StatusCode::BAD_REQUEST, "the body is not JSON".into()),
        ));
    };
    not_replayed(state, provider, &body, headers)?;
    Ok(parse_push(provider, &payload))
}

/// A header's value as text (empty when missing or not text).
fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Whether the request carries `provider`'s signature of `body` (or its token).
fn authenticate(
    provider: &str,
    secret: &[u8],
    body: &[u8],
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    let header = |name: &str| header(headers, name);
    let authentic = match provider {
        "github" => header("x-hub-signature-256")
            .strip_prefix("sha256=")
            .is_some_and(|sig| signature_valid(secret, body, sig)),
        "gitea" => signature_valid(secret, body, &header("x-gitea-signature")),
        "gitlab" => {
            let token = header("x-gitlab-token");
            !token.is_empty() && bool::from(token.as_bytes().ct_eq(secret))
        }
        "generic" => header("x-tether-signature")
            .strip_prefix("sha256=")
            .is_some_and(|sig| signature_valid(secret, body, sig)),
        _ => {
            let message =
                format!("no webhook for {provider:?}; use github, gitlab, gitea or generic");
            return Err(("unknown-provider", (StatusCode::NOT_FOUND, message)));
        }
    };
    if !authentic {
        return Err((
            "refused",
            (
                StatusCode::UNAUTHORIZED,
                "the signature or token does not match".into(),
            ),
        ));
    }
    Ok(())
}

/// Refuses a replay: a delivery id seen before, or the same signed body again.
fn not_replayed(
    state: &ServerState,
    provider: &str,
    body: &[u8],
    headers: &HeaderMap,
) -> Result<(), Refusal> {
    // A replay: a delivery id seen before. The id is not signed, so a replay with a new one
    // gets through; it only makes the agent ask Git for the ref again, which is harmless.
    let delivery = [
        "x-github-delivery",
        "x-gitea-delivery",
        "x-gitlab-event-uuid",
        "x-tether-delivery",
    ]
    .into_iter()
    .map(|name| header(headers, name))
    .find(|id| !id.is_empty());
    let mut deliveries = state.deliveries.lock().expect("not poisoned");
    if let Some(id) = &delivery
        && !deliveries.first_time(format!("{provider} {id}"))
    {
        let message = format!("delivery {id} was received before; a replay triggers nothing");
        return Err(("replayed", (StatusCode::CONFLICT, message)));
    }
    // The same signed body under a new delivery id (or none) is a replay too.
    let digest: [u8; 32] = {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(provider.as_bytes());
        hasher.update([0]);
        hasher.update(body);
        hasher.finalize().into()
    };
    if let Err(ago) = deliveries.body_first_time(digest, std::time::Instant::now()) {
        let message = format!(
            "this signed body was received {} s ago (under another delivery id); a replay within {} minutes triggers nothing",
            ago.as_secs(),
            REPLAY_WINDOW.as_secs() / 60
        );
        return Err(("replayed", (StatusCode::CONFLICT, message)));
    }
    Ok(())
}

/// Triggers every Application that follows the pushed repository and branch: first those
/// whose folder the push changed (all of them when the payload does not list the files),
/// then the others (their new revision most likely renders what they have).
fn trigger(state: &ServerState, push: &Push) -> (StatusCode, String) {
    // ApplicationSets generate again (a pull request's head may have moved).
    state.listings.announce_push();
    let (mut triggered, mut first) = (0, 0);
    for app in state.applications.state() {
        if follows(&app, push) {
            // The push is news: the next fetch must list the remote's refs again.
            state.listings.forget(&app.spec.source.repo_url);
            if push
                .changed
                .as_ref()
                .is_none_or(|files| touches(files, &app.spec.source.path))
            {
                state.trigger.urgent(&app);
                first += 1;
            } else {
                state.trigger.routine(&app);
            }
            if let Some(relay) = &state.relay {
                relay.pass_on_unless_held(&app);
            }
            triggered += 1;
        }
    }
    (
        StatusCode::ACCEPTED,
        format!(
            "{triggered} Application(s) will sync now ({first} whose folder the push changed first)\n"
        ),
    )
}

/// Whether one of the `files` a push changed is in folder `path` of the repository.
fn touches(files: &BTreeSet<String>, path: &str) -> bool {
    let Some(folder) = crate::source::tree::normalize(path) else {
        return true;
    };
    folder.is_empty()
        || files.iter().any(|file| {
            file.strip_prefix(folder.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
}

/// HMAC-SHA256 of `body` with `secret`, compared in constant time with `given_hex`.
pub fn signature_valid(secret: &[u8], body: &[u8], given_hex: &str) -> bool {
    // Hex digits only, of an even number (`faster_hex` checks both).
    let given_hex = given_hex.trim().as_bytes();
    let mut given = vec![0; given_hex.len() / 2];
    if faster_hex::hex_decode(given_hex, &mut given).is_err() {
        return false;
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    expected.as_slice().ct_eq(&given).into()
}

/// What a push says: which repository (by every URL the provider gives), which ref, and
/// which files changed.
#[derive(Debug, PartialEq)]
pub struct Push {
    pub urls: Vec<String>,
    pub branch: Option<String>,
    /// The files added, changed or removed, when the payload lists them for each of its
    /// commits (`commits[].added/modified/removed`: GitHub, Gitea, GitLab); `None` when it
    /// does not. Only an order: every Application following the branch is still triggered.
    pub changed: Option<BTreeSet<String>>,
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
    Push {
        urls,
        branch,
        changed: changed_files(payload),
    }
}

/// The files every commit of a push payload lists as added, modified or removed; `None`
/// when there is no commit or one lacks a list.
fn changed_files(payload: &serde_json::Value) -> Option<BTreeSet<String>> {
    let commits = payload["commits"].as_array().filter(|c| !c.is_empty())?;
    let mut files = BTreeSet::new();
    for commit in commits {
        for field in ["added", "modified", "removed"] {
            for file in commit.get(field)?.as_array()? {
                files.insert(file.as_str()?.to_string());
            }
        }
    }
    Some(files)
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
        assert!(
            signature_valid(b"s3cret", br#"{"a":1}"#, &expected.to_uppercase()),
            "upper case"
        );
        let signed = format!("+{}", &expected[1..]);
        assert!(
            !signature_valid(b"s3cret", br#"{"a":1}"#, &signed),
            "a sign"
        );
        assert!(
            !signature_valid(b"s3cret", br#"{"a":1}"#, &expected[1..]),
            "odd length"
        );
        assert!(!signature_valid(b"s3cret", br#"{"a":1}"#, ""), "empty");
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
        assert_eq!(
            push.changed, None,
            "no commits listed: every folder may have changed"
        );
    }

    #[test]
    fn the_folders_a_push_changed_go_first() {
        let push = parse_push(
            "gitea",
            &serde_json::json!({"ref": "refs/heads/main", "commits": [
                {"added": ["apps/web/new.yaml"], "modified": [], "removed": []},
                {"added": [], "modified": ["apps/db/cm.yaml", "README.md"], "removed": ["old/x.yaml"]}
            ]}),
        );
        let files = push.changed.expect("listed");
        assert_eq!(files.len(), 4);
        for (path, touched) in [
            ("apps/web", true),
            ("./apps/web/", true),
            ("apps/db", true),
            ("apps/we", false),
            ("apps/webapp", false),
            ("apps", true),
            ("", true),
            ("old", true),
            ("other", false),
        ] {
            assert_eq!(touches(&files, path), touched, "{path:?}");
        }
        // One commit without its lists: nothing can be told.
        let partial = parse_push(
            "github",
            &serde_json::json!({"commits": [{"added": []}, {"added": [], "modified": [], "removed": []}]}),
        );
        assert_eq!(partial.changed, None);
    }
}
