//! Hardening (issue 30): the readiness probe turns ready once the agent has listed its
//! Applications (with none, and with 50), asked over HTTP as the kubelet asks.

mod support;

use std::time::{Duration, Instant};

use kube::Api;
use serde_json::json;
use support::agent::{create_application, options_for, start_agent};
use support::{TestNamespace, cluster};
use tether::agent::{AgentOptions, Application, install_crd};

/// GETs `/readyz` until it answers 200; how long that took, or the last answer after 30 s.
async fn ready_after(port: u16) -> Result<Duration, String> {
    let started = Instant::now();
    let url = format!("http://127.0.0.1:{port}/readyz");
    loop {
        let url = url.clone();
        let answer = tokio::task::spawn_blocking(move || {
            reqwest::blocking::Client::new()
                .get(&url)
                .timeout(Duration::from_secs(5))
                .send()
                .map(|r| (r.status().as_u16(), r.text().unwrap_or_default()))
        })
        .await
        .expect("request");
        match answer {
            Ok((200, _)) => return Ok(started.elapsed()),
            Ok((status, body)) if started.elapsed() > Duration::from_secs(30) => {
                return Err(format!("{status} {body}"));
            }
            Err(e) if started.elapsed() > Duration::from_secs(30) => return Err(e.to_string()),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn readyz_turns_ready_once_the_applications_are_listed_with_none_and_with_50() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let dir = tempfile::tempdir().expect("temp");
    for count in [0usize, 50] {
        let ns = TestNamespace::create(&client, "readyz").await;
        let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
        for i in 0..count {
            create_application(
                &apps,
                &format!("app-{i}"),
                json!({
                    "source": {"repoURL": "https://git.invalid/deploy.git", "path": "app"},
                    "destination": {"namespace": ns.name},
                    "suspend": true
                }),
            )
            .await;
        }
        let port = support::free_port();
        let agent = start_agent(
            &client,
            AgentOptions {
                listen: Some(format!("127.0.0.1:{port}").parse().expect("address")),
                ..options_for(&ns, dir.path())
            },
        );
        let took = ready_after(port).await;
        let _ = agent.stop().await;
        let took = took.unwrap_or_else(|last| {
            panic!("/readyz with {count} Applications: not 200 within 30 s; last: {last}")
        });
        println!("/readyz 200 after {took:?} with {count} Applications");
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
}
