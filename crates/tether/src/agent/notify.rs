//! Notifications: on a sync that applied a change, a failed sync, health turning Degraded and
//! a drift correction, the agent POSTs to each configured URL, as generic JSON (signed with
//! an HMAC when a secret is set) or as a Slack-compatible message. Each delivery is retried
//! with a doubling wait; one that fails every attempt is counted as a dead letter
//! (`tether_notifications_dead_letter_total`). Events on the Application stay as they are.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{Value, json};

use super::http::{Metrics, ResultLabels};

/// The header of the generic payload's signature: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Tether-Signature";
/// The header naming the event.
pub const EVENT_HEADER: &str = "X-Tether-Event";

/// How a URL wants its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"event", "application": {"namespace", "name"}, "revision", "message", "time"}`.
    Generic,
    /// `{"text": "…"}`, as Slack's incoming webhooks (and Mattermost's, Rocket.Chat's) take.
    Slack,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub url: String,
    pub format: Format,
}

#[derive(Debug, Clone)]
pub struct NotifyOptions {
    pub targets: Vec<Endpoint>,
    /// The HMAC key of the generic payload's signature header; none leaves it unsigned.
    pub secret: Option<Vec<u8>>,
    /// Attempts per delivery, the first included.
    pub attempts: u32,
    /// The wait before the second attempt; it doubles after each.
    pub first_retry: Duration,
    /// One attempt's limit.
    pub timeout: Duration,
}

impl Default for NotifyOptions {
    fn default() -> Self {
        Self {
            targets: Vec::new(),
            secret: None,
            attempts: 4,
            first_retry: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        }
    }
}

/// What happened to an Application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    SyncSucceeded,
    SyncFailed,
    HealthDegraded,
    DriftCorrected,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::SyncSucceeded => "SyncSucceeded",
            Event::SyncFailed => "SyncFailed",
            Event::HealthDegraded => "HealthDegraded",
            Event::DriftCorrected => "DriftCorrected",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Notice {
    pub event: Event,
    pub namespace: String,
    pub name: String,
    pub revision: Option<String>,
    pub message: String,
    pub time: String,
}

impl Notice {
    fn generic(&self) -> Value {
        json!({
            "event": self.event.name(),
            "application": {"namespace": self.namespace, "name": self.name},
            "revision": self.revision,
            "message": self.message,
            "time": self.time,
        })
    }

    fn slack(&self) -> Value {
        let mark = match self.event {
            Event::SyncSucceeded | Event::DriftCorrected => ":white_check_mark:",
            Event::SyncFailed | Event::HealthDegraded => ":x:",
        };
        let revision = self
            .revision
            .as_deref()
            .map(|r| format!(" at `{}`", &r[..r.len().min(12)]))
            .unwrap_or_default();
        json!({
            "text": format!(
                "{mark} *{}/{}* {}{revision}: {}",
                self.namespace,
                self.name,
                self.event.name(),
                self.message
            )
        })
    }
}

/// Sends notices in the background; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    options: NotifyOptions,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl Notifier {
    /// A notifier that sends nothing (no target configured).
    pub fn none() -> Self {
        Self { inner: None }
    }

    pub fn new(options: NotifyOptions, metrics: Arc<Metrics>) -> Result<Self, String> {
        if options.targets.is_empty() {
            return Ok(Self::none());
        }
        crate::source::git::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .build()
            .map_err(|e| format!("cannot build the notifications' HTTP client: {e}"))?;
        Ok(Self {
            inner: Some(Arc::new(Inner {
                options,
                client,
                metrics,
            })),
        })
    }

    /// Delivers `notice` to every target, each in a task of its own (a slow or failing
    /// receiver delays nothing else).
    pub fn send(&self, notice: Notice) {
        let Some(inner) = &self.inner else {
            return;
        };
        for target in &inner.options.targets {
            let inner = inner.clone();
            let target = target.clone();
            let notice = notice.clone();
            tokio::spawn(async move { inner.deliver(&target, &notice).await });
        }
    }
}

impl Inner {
    async fn deliver(&self, target: &Endpoint, notice: &Notice) {
        let body = match target.format {
            Format::Generic => notice.generic(),
            Format::Slack => notice.slack(),
        }
        .to_string();
        let mut wait = self.options.first_retry;
        for attempt in 1..=self.options.attempts.max(1) {
            let mut request = self
                .client
                .post(&target.url)
                .header("Content-Type", "application/json")
                .header(EVENT_HEADER, notice.event.name());
            if let (Format::Generic, Some(secret)) = (target.format, &self.options.secret) {
                request = request.header(SIGNATURE_HEADER, sign(secret, body.as_bytes()));
            }
            // A webhook URL often carries its credential (Slack's does): logs name the
            // host only, and errors without the URL.
            let failure = match request.body(body.clone()).send().await {
                Ok(response) if response.status().is_success() => None,
                Ok(response) => Some(format!("HTTP {}", response.status())),
                Err(err) => Some(err.without_url().to_string()),
            };
            let Some(failure) = failure else {
                self.count("delivered");
                return;
            };
            self.count("failed");
            if attempt == self.options.attempts.max(1) {
                tracing::warn!(host = %host(&target.url), event = notice.event.name(), application = %notice.name,
                    %failure, attempts = attempt, "notification given up");
                self.metrics.notifications_dead.inc();
                return;
            }
            tracing::debug!(host = %host(&target.url), %failure, attempt, "notification failed; retrying");
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .notifications
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }
}

/// The host of a URL, for logs (its path and query may be a credential).
fn host(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "(not a URL)".into())
}

/// `sha256=<hex HMAC-SHA256 of body with secret>`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(event: Event) -> Notice {
        Notice {
            event,
            namespace: "shop".into(),
            name: "web".into(),
            revision: Some("0123456789abcdef0123".into()),
            message: "revision 0123456789ab applied".into(),
            time: "2026-12-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn payloads_name_the_application_event_and_revision() {
        let generic = notice(Event::DriftCorrected).generic();
        assert_eq!(generic["event"], "DriftCorrected");
        assert_eq!(generic["application"]["namespace"], "shop");
        assert_eq!(generic["revision"], "0123456789abcdef0123");
        let slack = notice(Event::SyncFailed).slack();
        assert_eq!(
            slack["text"],
            ":x: *shop/web* SyncFailed at `0123456789ab`: revision 0123456789ab applied"
        );
    }

    #[test]
    fn the_signature_is_the_hmac_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
