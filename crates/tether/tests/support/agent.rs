//! Helpers for tests of the agent: run one in the test process, create Applications, and
//! wait for what they report.

use std::time::{Duration, Instant};

use kube::Api;
use kube::api::PostParams;
use serde_json::json;
use tether::agent::{AgentOptions, Application, run};

use super::TestNamespace;

/// An agent running in this test process; `stop` ends it as SIGTERM would.
pub struct RunningAgent {
    pub stop: tokio::sync::oneshot::Sender<()>,
    pub handle: tokio::task::JoinHandle<Result<(), tether::agent::Error>>,
}

pub fn start_agent(client: &kube::Client, options: AgentOptions) -> RunningAgent {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(run(client.clone(), options, async move {
        let _ = stopped.await;
    }));
    RunningAgent { stop, handle }
}

impl RunningAgent {
    /// Ends the agent at once, as a crash would: nothing is released.
    pub fn kill(self) {
        self.handle.abort();
    }

    pub async fn stop(self) -> Result<(), String> {
        let _ = self.stop.send(());
        match tokio::time::timeout(Duration::from_secs(30), self.handle).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(err))) => Err(err.to_string()),
            Ok(Err(panic)) => Err(format!("the agent panicked: {panic}")),
            Err(_) => Err("the agent did not stop within 30 s".into()),
        }
    }
}

/// A free port on loopback and the agent's `listen` address on it (its HTTP server:
/// probes, metrics, webhooks, the API and the UI).
pub fn free_listen() -> (u16, Option<std::net::SocketAddr>) {
    let port = super::free_port();
    (
        port,
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
    )
}

/// An agent watching the test namespace, caching under `dir`.
pub fn options_for(ns: &TestNamespace, dir: &std::path::Path) -> AgentOptions {
    AgentOptions {
        namespace: Some(ns.name.clone()),
        cache_dir: dir.join("cache"),
        // The backstop is off unless a test turns it on: some tests count requests.
        verify_interval: None,
        ..Default::default()
    }
}

/// Creates Application `name` with `spec` in the namespace of `apps`.
pub async fn create_application(apps: &Api<Application>, name: &str, spec: serde_json::Value) {
    let app: Application = serde_json::from_value(json!({
        "apiVersion": "tether.dev/v1alpha1",
        "kind": "Application",
        "metadata": {"name": name},
        "spec": spec
    }))
    .expect("a valid Application");
    apps.create(&PostParams::default(), &app)
        .await
        .expect("the Application is created");
}

/// Waits until `check` holds for the Application, or fails with its last status.
pub async fn until(
    apps: &Api<Application>,
    name: &str,
    what: &str,
    check: impl Fn(&Application) -> bool,
) -> Application {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let app = apps.get(name).await.expect("the Application exists");
        if check(&app) {
            return app;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within 60 s; status: {:#?}",
            app.status
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reads with `check` every 50 ms until it holds, or fails after 10 s saying `what` did
/// not happen; returns how many reads it took.
pub async fn within_10_s<F: std::future::Future<Output = bool>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> u64 {
    let started = Instant::now();
    let mut reads = 0;
    loop {
        reads += 1;
        if check().await {
            return reads;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not within 10 s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Ready condition's status and message.
pub fn ready(app: &Application) -> Option<(String, String)> {
    let condition = app
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")?;
    Some((condition.status.clone(), condition.message.clone()))
}

/// Waits until the Application reports a failed sync whose message contains `says`, and
/// returns that message.
pub async fn fails_with(apps: &Api<Application>, name: &str, says: &str) -> String {
    let app = until(apps, name, &format!("a failure saying {says:?}"), |a| {
        ready(a).is_some_and(|(status, message)| status == "False" && message.contains(says))
    })
    .await;
    ready(&app).expect("Ready").1
}

/// Asks the agent to sync Application `name` now (as `tether sync` does).
pub async fn request_sync(apps: &Api<Application>, name: &str) {
    apps.patch(
        name,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(tether::application::actions::sync()),
    )
    .await
    .expect("sync requested");
}

pub fn applied(app: &Application) -> Option<&str> {
    app.status.as_ref()?.last_applied_revision.as_deref()
}

/// The Application's health as its status says.
pub fn health(app: &Application) -> Option<&str> {
    app.status.as_ref()?.health.as_deref()
}

/// The Application's sync state as its status says.
pub fn sync_state(app: &Application) -> Option<&str> {
    Some(app.status.as_ref()?.sync.as_ref()?.status.as_str())
}

/// The agent's /metrics on `port`, as text.
pub async fn agent_metrics(port: u16) -> String {
    tokio::task::spawn_blocking(move || {
        reqwest::blocking::get(format!("http://127.0.0.1:{port}/metrics")).and_then(|r| r.text())
    })
    .await
    .expect("the request task")
    .expect("the agent serves /metrics")
}

/// One counter or gauge from the agent's /metrics on `port`, summed over its labels (0
/// when absent).
pub async fn agent_metric(port: u16, name: &str) -> f64 {
    let text = agent_metrics(port).await;
    text.lines()
        .filter(|line| line.split([' ', '{']).next() == Some(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One request a [`Receiver`] took: its headers (names lower-case) and body.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: std::collections::BTreeMap<String, String>,
    pub body: Vec<u8>,
}

/// A plain HTTP/1.1 server on loopback that records each request and answers `status`.
pub struct Receiver {
    pub url: String,
    pub received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
}

impl Receiver {
    pub fn start(status: u16) -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = received.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let path = line.split(' ').nth(1).unwrap_or_default().to_string();
                let mut headers = std::collections::BTreeMap::new();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.split_once(':') {
                        headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
                    }
                }
                let length: usize = headers
                    .get("content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                log.lock().expect("not poisoned").push(Received {
                    path,
                    headers,
                    body,
                });
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Self { url, received }
    }

    pub fn taken(&self) -> Vec<Received> {
        self.received.lock().expect("not poisoned").clone()
    }
}

/// Posts `body` to the agent's webhook for `provider` with `headers`; (status, text).
pub async fn post(
    port: u16,
    provider: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (u16, String) {
    let url = format!("http://127.0.0.1:{port}/webhooks/{provider}");
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut request = reqwest::blocking::Client::new()
            .post(url)
            .timeout(Duration::from_secs(30))
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let response = request.send().expect("the agent answers");
        let status = response.status().as_u16();
        (status, response.text().unwrap_or_default())
    })
    .await
    .expect("the request task")
}

pub fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
