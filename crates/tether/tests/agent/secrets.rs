//! SOPS in the agent: an Application's `spec.decryption` names a Secret of age keys, and a
//! Kustomize `secretGenerator` reading a file the real sops encrypted is applied decrypted.
//! Without keys, with a Secret that is missing or holds another key, the sync fails saying
//! which file and why, and nothing of the set is applied.

use crate::support;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use support::agent::{applied, create_application, fails_with, options_for, start_agent, until};
use support::git::{GitDaemon, GitRepo};
use support::sops::{age_key, sops_encrypt};
use support::{TestNamespace, cluster};
use tether::agent::{Application, install_crd};

async fn create_key_secret(secrets: &Api<Secret>, name: &str, key_file: &std::path::Path) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name},
        "stringData": {"age.agekey": std::fs::read_to_string(key_file).expect("key")},
    }))
    .expect("a Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("the keys' Secret is created");
}

#[tokio::test]
async fn an_application_decrypts_a_secret_generator_with_the_keys_it_names() {
    let client = cluster().await.client();
    install_crd(&client).await.expect("CRD installed");
    let ns = TestNamespace::create(&client, "sops").await;
    let dir = tempfile::tempdir().expect("temp");
    let (key_file, recipient) = age_key(dir.path(), "key.txt");
    let (other_file, _) = age_key(dir.path(), "other.txt");
    let root = dir.path().join("served");
    let repo = GitRepo::init(&root, "deploy");
    repo.write(
        "app/kustomization.yaml",
        "resources: [settings.yaml]\nsecretGenerator:\n- name: db\n  envs: [db.env]\ngeneratorOptions:\n  disableNameSuffixHash: true\n",
    );
    repo.write(
        "app/settings.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  mode: fast\n",
    );
    repo.write("app/db.env", "PASSWORD=agent-s3cret\n");
    sops_encrypt(&repo.path.join("app/db.env"), &recipient, &[]);
    let commit = repo.commit("an encrypted secretGenerator input");
    let daemon = GitDaemon::start(&root);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    create_key_secret(&secrets, "sops-age", &key_file).await;
    create_key_secret(&secrets, "other-age", &other_file).await;

    let agent = start_agent(&client, options_for(&ns, dir.path()));
    let apps: Api<Application> = Api::namespaced(client.clone(), &ns.name);
    let spec = |decryption: serde_json::Value| {
        json!({
            "source": {"repoURL": daemon.url("deploy"), "path": "app"},
            "decryption": decryption,
            "destination": {"namespace": ns.name},
            "syncPolicy": {"interval": "1h"}
        })
    };
    create_application(&apps, "db", spec(serde_json::Value::Null)).await;
    let message = fails_with(&apps, "db", "no decryption key").await;
    assert!(
        message.contains("app/db.env")
            && message.contains(&recipient)
            && message.contains("spec.decryption"),
        "{message}"
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let set_decryption = |secret: &str| {
        let apps = apps.clone();
        let patch =
            json!({"spec": {"decryption": {"provider": "sops", "secretRef": {"name": secret}}}});
        async move {
            apps.patch("db", &PatchParams::default(), &Patch::Merge(patch))
                .await
                .expect("the Application is patched");
        }
    };
    for (secret, says) in [
        ("missing", "cannot read the decryption Secret"),
        ("other-age", "is not a recipient"),
    ] {
        set_decryption(secret).await;
        let message = fails_with(&apps, "db", says).await;
        assert!(
            message.contains(secret) || message.contains("app/db.env"),
            "{message}"
        );
        assert!(!message.contains("agent-s3cret"), "{message}");
    }
    assert!(
        configmaps
            .get_opt("settings")
            .await
            .expect("read")
            .is_none(),
        "nothing of the set was applied while the render failed"
    );

    set_decryption("sops-age").await;
    until(&apps, "db", "the set applied with the right key", |a| {
        applied(a) == Some(commit.as_str())
    })
    .await;
    let db = secrets.get("db").await.expect("the generated Secret");
    assert_eq!(
        db.data.expect("data")["PASSWORD"].0,
        b"agent-s3cret".to_vec()
    );
    assert!(
        configmaps
            .get_opt("settings")
            .await
            .expect("read")
            .is_some()
    );
    agent.stop().await.expect("the agent stops");
}
