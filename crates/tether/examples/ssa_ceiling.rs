//! The ceiling of `make bench-apply`: a client that does nothing but the server-side apply
//! PATCHes of a folder's objects, at a given concurrency, with kube-rs (the client tether
//! uses). No plan, no dry-run, no inventory, no pruning: what the API server allows a
//! client to write. Prints `<seconds> <objects> <failures>`.
//!
//! `cargo run --release --example ssa_ceiling -- DIR NAMESPACE CONCURRENCY` (KUBECONFIG as
//! kubectl reads it).

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
    let client = kube::Client::try_default().await?;
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
