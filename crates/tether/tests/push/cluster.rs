//! The local control plane (testenv) is real and usable from kube-rs: namespaces list,
//! Deployments become Available on kwok nodes, CRDs and custom resources round-trip.

use crate::support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, ResourceExt};
use serde_json::json;

use support::{TestNamespace, cluster, unique_name};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn kube_client_lists_namespaces_of_the_test_cluster() {
    let cluster = cluster().await;
    let namespaces = Api::<Namespace>::all(cluster.client())
        .list(&ListParams::default())
        .await
        .expect("the API server answers");
    let names: Vec<String> = namespaces.iter().map(|ns| ns.name_any()).collect();
    for expected in ["default", "kube-system", "kube-public"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn deployment_becomes_available_on_kwok_nodes() {
    let cluster = cluster().await;
    let client = cluster.client();
    let ns = TestNamespace::create(&client, "deploy").await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    let manifest = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}
            }
        }
    });
    deployments
        .patch(
            "web",
            &PatchParams::apply("tether-test"),
            &Patch::Apply(&manifest),
        )
        .await
        .expect("server-side apply of a valid Deployment succeeds");

    let available = |obj: Option<&Deployment>| {
        obj.and_then(|d| d.status.as_ref())
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| c.type_ == "Available" && c.status == "True")
            })
    };
    tokio::time::timeout(WAIT, await_condition(deployments.clone(), "web", available))
        .await
        .expect("the Deployment becomes Available within 60 s")
        .expect("the watch runs");

    let status = deployments
        .get("web")
        .await
        .expect("exists")
        .status
        .expect("has status");
    assert_eq!(status.ready_replicas, Some(2));
    let pods = Api::<Pod>::namespaced(client, &ns.name)
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("pods list");
    assert_eq!(pods.items.len(), 2);
    for pod in &pods {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(
            node.starts_with("kwok-node-"),
            "pod {} is on {node:?}",
            pod.name_any()
        );
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        assert_eq!(phase.as_deref(), Some("Running"), "pod {}", pod.name_any());
    }
}

#[tokio::test]
async fn crd_is_established_and_custom_resource_round_trips() {
    let cluster = cluster().await;
    let client = cluster.client();
    // A group of its own per run, so concurrent or leftover runs never collide.
    let group = format!("{}.test.tether.dev", unique_name("g"));
    let crd_name = format!("widgets.{group}");
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {
            "group": group,
            "names": {"kind": "Widget", "plural": "widgets", "singular": "widget", "listKind": "WidgetList"},
            "scope": "Namespaced",
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "properties": {"spec": {
                        "type": "object",
                        "properties": {
                            "size": {"type": "integer", "minimum": 1},
                            "color": {"type": "string", "default": "blue"}
                        },
                        "required": ["size"]
                    }}
                }}
            }]
        }
    }))
    .expect("static CRD manifest");
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    crds.create(&PostParams::default(), &crd)
        .await
        .expect("CRD is created");
    let cleanup = CrdCleanup(crd_name.clone());

    tokio::time::timeout(
        WAIT,
        await_condition(crds.clone(), &crd_name, conditions::is_crd_established()),
    )
    .await
    .expect("the CRD is Established within 60 s")
    .expect("the watch runs");

    let ns = TestNamespace::create(&client, "crd").await;
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(&group, "v1", "Widget"),
        "widgets",
    );
    let widgets = Api::<DynamicObject>::namespaced_with(client.clone(), &ns.name, &resource);
    let widget: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"),
        "kind": "Widget",
        "metadata": {"name": "w1"},
        "spec": {"size": 3}
    }))
    .expect("static widget manifest");
    widgets
        .create(&PostParams::default(), &widget)
        .await
        .expect("widget is created");

    let read = widgets.get("w1").await.expect("widget is read back");
    assert_eq!(read.data["spec"]["size"], 3);
    // The schema's default was applied by the server: proof the CRD's schema is live.
    assert_eq!(read.data["spec"]["color"], "blue");

    // The schema is enforced: size must be >= 1.
    let invalid: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1"),
        "kind": "Widget",
        "metadata": {"name": "w2"},
        "spec": {"size": 0}
    }))
    .expect("static widget manifest");
    let err = widgets
        .create(&PostParams::default(), &invalid)
        .await
        .expect_err("size 0 violates the schema");
    assert!(err.to_string().contains("spec.size"), "{err}");

    widgets
        .delete("w1", &DeleteParams::default())
        .await
        .expect("widget is deleted");
    drop(ns);
    drop(cleanup);
}

/// Deletes a test CRD when dropped, also when the test panics.
struct CrdCleanup(String);

impl Drop for CrdCleanup {
    fn drop(&mut self) {
        let name = self.0.clone();
        support::cleanup(&format!("test CRD {name}"), move |client| async move {
            Api::<CustomResourceDefinition>::all(client)
                .delete(&name, &DeleteParams::default())
                .await
                .map(|_| ())
        });
    }
}
