//! `tether version` run as a user runs it: the real binary, a real kubeconfig.

use crate::support;

use std::process::Output;

/// `tether args…` pointed at no cluster, with `KUBECONFIG` set to `kubeconfig_env` if given.
fn tether_with_kubeconfig_env(args: &[&str], kubeconfig_env: Option<&std::path::Path>) -> Output {
    let mut command = support::tether_bin();
    command.args(args);
    if let Some(path) = kubeconfig_env {
        command.env("KUBECONFIG", path);
    }
    command.output().expect("the tether binary runs")
}

#[tokio::test]
async fn version_shows_the_test_clusters_server_version() {
    let expected = support::cluster()
        .await
        .server_version()
        .await
        .expect("the test cluster answers")
        .git_version;
    let kubeconfig = support::kubeconfig();
    let kubeconfig = kubeconfig.to_str().expect("utf-8 path");

    let out =
        tether_with_kubeconfig_env(&["version", "--kubeconfig", kubeconfig, "-o", "json"], None);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    assert_eq!(report["server"]["gitVersion"], expected.as_str());
    assert_eq!(report["client"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(report["server"]["context"], "tether-testenv");

    let text = tether_with_kubeconfig_env(&["version"], Some(&support::kubeconfig()));
    assert!(text.status.success(), "KUBECONFIG is honoured");
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(stdout.contains(&format!("server: {expected}")), "{stdout}");
}

#[test]
fn version_without_a_reachable_cluster_is_a_clear_error() {
    let port = support::free_port();
    let dir = std::env::temp_dir().join(support::unique_name("tether-version"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("config");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{port}'}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: down, context: {{cluster: c, user: u}}}}]\n\
             current-context: down\n"
        ),
    )
    .expect("write kubeconfig");

    let out = tether_with_kubeconfig_env(&["version"], Some(&kubeconfig));
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.starts_with("tether: v"),
        "client version still printed: {stdout}"
    );
    assert!(
        stderr.starts_with(&format!(
            "error: cannot reach the Kubernetes API server at https://127.0.0.1:{port}"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("context \"down\""), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );

    let client_only = tether_with_kubeconfig_env(&["version", "--client"], Some(&kubeconfig));
    assert!(
        client_only.status.success(),
        "--client never contacts the cluster"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_binary_answers_gits_askpass_prompts_for_image_updates() {
    let ask = |prompt: &str| {
        let out = support::tether_bin()
            .arg(prompt)
            .env("TETHER_ASKPASS", "1")
            .env("TETHER_GIT_USERNAME", "bot")
            .env("TETHER_GIT_PASSWORD", "s3cret")
            .output()
            .expect("tether runs");
        assert!(out.status.success(), "{}", support::said(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(ask("Username for 'http://127.0.0.1:3000': "), "bot");
    assert_eq!(ask("Password for 'http://bot@127.0.0.1:3000': "), "s3cret");
    // Without TETHER_ASKPASS the same word is an unknown command.
    let out = support::tether_bin()
        .arg("Username for 'x': ")
        .output()
        .expect("tether runs");
    assert!(!out.status.success());
}
