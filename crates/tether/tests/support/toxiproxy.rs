//! Toxiproxy (built by testenv) between a client under test and a real server: latency,
//! bandwidth limits, connections cut mid-stream, and a server that is gone, as the
//! reliability tests and benchmarks need them. One `toxiproxy-server` per test, stopped
//! with the test; proxies and toxics are set through its HTTP API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::ProcessGroup;

pub struct Toxiproxy {
    api_port: u16,
    _server: ProcessGroup,
}

/// One proxy: clients connect to `127.0.0.1:port`, Toxiproxy forwards to the upstream.
pub struct Proxy {
    api_port: u16,
    pub name: String,
    pub port: u16,
}

impl Toxiproxy {
    pub fn start() -> Self {
        let api_port = super::free_port();
        let binary = super::tool("toxiproxy-server");
        let mut child = Command::new(&binary)
            .args(["-host", "127.0.0.1", "-port", &api_port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        super::wait_for_port(api_port, "toxiproxy-server", &mut child);
        Self {
            api_port,
            _server: ProcessGroup::new(child),
        }
    }

    /// A proxy to `upstream` (`host:port`) on a free loopback port.
    pub fn proxy(&self, name: &str, upstream: &str) -> Proxy {
        let port = super::free_port();
        request(
            self.api_port,
            "POST",
            "/proxies",
            Some(
                json!({"name": name, "listen": format!("127.0.0.1:{port}"), "upstream": upstream}),
            ),
        );
        Proxy {
            api_port: self.api_port,
            name: name.into(),
            port,
        }
    }
}

impl Proxy {
    /// Adds toxic `name` of `kind` (latency, bandwidth, limit_data, reset_peer, timeout, …)
    /// on `stream` (`upstream`: client → server, `downstream`: server → client).
    pub fn add_toxic(&self, name: &str, kind: &str, stream: &str, attributes: Value) {
        request(
            self.api_port,
            "POST",
            &format!("/proxies/{}/toxics", self.name),
            Some(
                json!({"name": name, "type": kind, "stream": stream, "toxicity": 1.0,
                        "attributes": attributes}),
            ),
        );
    }

    /// Removes a toxic. (A `latency` toxic holding data longer than Toxiproxy's API waits
    /// cannot be removed: its API answers 503. Use `timeout` for a server that goes silent.)
    pub fn remove_toxic(&self, name: &str) {
        request(
            self.api_port,
            "DELETE",
            &format!("/proxies/{}/toxics/{name}", self.name),
            None,
        );
    }

    /// Disabling closes every open connection and refuses new ones: the server is gone.
    pub fn set_enabled(&self, enabled: bool) {
        request(
            self.api_port,
            "POST",
            &format!("/proxies/{}", self.name),
            Some(json!({"enabled": enabled})),
        );
    }
}

/// One request to Toxiproxy's API over a plain socket (no client runtime, so it works from
/// async tests and threads alike); fails the test unless the answer is 2xx.
fn request(port: u16, method: &str, path: &str, body: Option<Value>) -> String {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("toxiproxy's API answers");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("a read timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("the request is sent");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("toxiproxy {method} {path}: no answer within 30 s: {e}"));
    let status = answer.split(' ').nth(1).unwrap_or("");
    assert!(
        status.starts_with('2'),
        "toxiproxy {method} {path} answered: {answer}"
    );
    answer
}

/// The API server a kubeconfig names (`host:port`), and a copy of that kubeconfig in `dir`
/// that reaches it through `127.0.0.1:port` instead (testenv's certificate names 127.0.0.1,
/// so TLS still verifies).
pub fn api_server(kubeconfig: &Path) -> String {
    let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    let config: serde_json::Value = serde_json::from_str(&text).expect("testenv writes JSON");
    config["clusters"][0]["cluster"]["server"]
        .as_str()
        .and_then(|s| s.strip_prefix("https://"))
        .expect("the kubeconfig names its server")
        .to_string()
}

pub fn kubeconfig_through(kubeconfig: &Path, port: u16, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(kubeconfig).expect("kubeconfig");
    let path = dir.join("kubeconfig-proxied");
    let proxied = text.replace(
        &format!("https://{}", api_server(kubeconfig)),
        &format!("https://127.0.0.1:{port}"),
    );
    std::fs::write(&path, proxied).expect("write");
    path
}

/// A client of the API server `kubeconfig` names, through `proxy`.
pub async fn client_through(kubeconfig: &Path, proxy: &Proxy, dir: &Path) -> kube::Client {
    let proxied = kubeconfig_through(kubeconfig, proxy.port, dir);
    tether::cluster::Cluster::connect(
        &tether::cluster::ClusterOptions::default().kubeconfig(proxied),
    )
    .await
    .expect("the proxied kubeconfig")
    .client()
}
