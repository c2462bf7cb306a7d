//! The ceiling of `make bench-apply`: a client that does nothing but the server-side apply
//! PATCHes of a folder's objects, at a given concurrency, with kube-rs (the client tether
//! uses). No plan, no dry-run, no inventory, no pruning: what the API server allows a
//! client to write. Prints `<seconds> <objects> <failures>`.
//!
//! `cargo run --release --example ssa_ceiling -- DIR NAMESPACE CONCURRENCY` (KUBECONFIG as
//! kubectl reads it). With `SSA_HTTP2=1` the requests go as streams of one HTTP/2
//! connection instead of kube-rs's HTTP/1.1, a connection for each request in flight.

use std::collections::BTreeMap;
use std::time::Instant;

use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use tether::render::{RenderOptions, render_plain};
use tether::source::tree::DirTree;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, namespace, concurrency] = args.as_slice() else {
        anyhow::bail!("usage: ssa_ceiling DIR NAMESPACE CONCURRENCY");
    };
    let concurrency: usize = concurrency.parse()?;
    let objects = render_plain(
        &DirTree::new(std::path::Path::new(dir))?,
        "",
        &RenderOptions::default(),
    )
    .map_err(|problems| anyhow::anyhow!("{problems}"))?;
    let client = client(std::env::var("SSA_HTTP2").as_deref() == Ok("1")).await?;
    // One discovery per kind, before the clock starts.
    let mut apis: BTreeMap<(String, String), Api<DynamicObject>> = BTreeMap::new();
    for object in &objects {
        let api_version = object.manifest["apiVersion"].as_str().unwrap_or_default();
        let key = (api_version.to_string(), object.key.kind.clone());
        if apis.contains_key(&key) {
            continue;
        }
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, &object.key.kind);
        let (resource, capabilities) = kube::discovery::pinned_kind(&client, &gvk).await?;
        let api = match capabilities.scope {
            kube::discovery::Scope::Namespaced => {
                Api::namespaced_with(client.clone(), namespace, &resource)
            }
            kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
        };
        apis.insert(key, api);
    }
    let params = PatchParams::apply("ssa-ceiling").force();
    let started = Instant::now();
    let failures: usize = futures::stream::iter(objects.iter().map(|object| {
        let api_version = object.manifest["apiVersion"].as_str().unwrap_or_default();
        let api = &apis[&(api_version.to_string(), object.key.kind.clone())];
        let params = &params;
        async move {
            api.patch(&object.key.name, params, &Patch::Apply(&object.manifest))
                .await
                .map_err(|e| eprintln!("{}: {e}", object.key))
                .is_err()
        }
    }))
    .buffer_unordered(concurrency.max(1))
    .filter(|failed| futures::future::ready(*failed))
    .count()
    .await;
    println!(
        "{:.3} {} {failures}",
        started.elapsed().as_secs_f64(),
        objects.len()
    );
    Ok(())
}

/// kube-rs's client (HTTP/1.1), or one that speaks only HTTP/2 (ALPN `h2`), with the same
/// kubeconfig: its address, its TLS identity and trust, and its credentials.
async fn client(http2: bool) -> anyhow::Result<kube::Client> {
    use kube::client::ConfigExt;
    let config = kube::Config::infer().await?;
    if !http2 {
        return Ok(kube::Client::try_from(config)?);
    }
    if config.tls_server_name.is_some() {
        anyhow::bail!("SSA_HTTP2=1: a kubeconfig with tls-server-name is not supported here");
    }
    // ALPN `h2`: hyper-rustls offers it with `enable_http2` alone.
    let tls = config.rustls_client_config()?;
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http2()
        .wrap_connector(tcp);
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build(https);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .map_err(tower::BoxError::from)
        .service(http);
    Ok(kube::Client::new(service, config.default_namespace))
}
