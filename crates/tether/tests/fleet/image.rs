//! The agent's OCI image (`scripts/image.py`, behind `make image`): umoci, an OCI tool of
//! its own, unpacks it (checking every digest), and the root filesystem it unpacks runs
//! tether and helm with nothing of the host (chroot in a user namespace); the same inputs
//! give the same digest.

use crate::support;

use std::path::Path;
use std::process::Command;

use sha2::Digest;

fn build(out: &Path) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/image.py");
    let output = Command::new("python3")
        .arg(script)
        .arg("--tether")
        .arg(env!("CARGO_BIN_EXE_tether"))
        .arg("--helm")
        .arg(support::tool("helm"))
        .arg("--kustomize")
        .arg(support::tool("kustomize"))
        .arg("--out")
        .arg(out)
        .arg("--tag")
        .arg("test")
        .output()
        .expect("python3 runs image.py");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Runs `program` inside `root` only: a chroot in a new user and mount namespace (no root
/// needed), with the host's /dev on the image's empty /dev, as a container runtime mounts
/// one.
fn in_image(root: &Path, program: &[&str]) -> std::process::Output {
    Command::new("unshare")
        .args([
            "-r",
            "-m",
            "sh",
            "-c",
            "mount --rbind /dev \"$0/dev\" && exec chroot \"$0\" \"$@\"",
        ])
        .arg(root)
        .args(program)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("unshare runs")
}

#[test]
fn the_agent_image_unpacks_with_an_oci_tool_and_runs_on_its_own() {
    let dir = tempfile::tempdir().expect("temp");
    let layout = dir.path().join("layout");
    let reference = build(&layout);
    let digest = reference
        .strip_prefix("tether@sha256:")
        .unwrap_or_else(|| panic!("not a digest reference: {reference}"));
    // The reference names the manifest: its blob hashes to that digest.
    let manifest = std::fs::read(layout.join("blobs/sha256").join(digest)).expect("manifest");
    assert_eq!(format!("{:x}", sha2::Sha256::digest(&manifest)), digest);

    let root = dir.path().join("rootfs");
    let unpacked = Command::new("umoci")
        .args(["raw", "unpack", "--rootless", "--image"])
        .arg(format!("{}:test", layout.display()))
        .arg(&root)
        .output()
        .expect("umoci runs (scripts/install-deps.sh installs it)");
    assert!(
        unpacked.status.success(),
        "{}",
        String::from_utf8_lossy(&unpacked.stderr)
    );
    let version = in_image(&root, &["/tether", "version", "--client"]);
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(
        version.status.success() && text.contains("tether"),
        "{text}{}",
        String::from_utf8_lossy(&version.stderr)
    );
    let helm = in_image(&root, &["/usr/local/bin/helm", "version", "--short"]);
    assert!(
        helm.status.success(),
        "{}",
        String::from_utf8_lossy(&helm.stderr)
    );

    // Image updates and OpenPGP: git with its HTTP helper (a refused connection, not a
    // missing helper), gpg, ssh and ssh-keygen run inside.
    let git = in_image(&root, &["/usr/bin/git", "--version"]);
    assert!(
        git.status.success(),
        "{}",
        String::from_utf8_lossy(&git.stderr)
    );
    let port = support::free_port().to_string();
    let url = format!("http://127.0.0.1:{port}/x.git");
    let remote = in_image(&root, &["/usr/bin/git", "ls-remote", &url]);
    let said = String::from_utf8_lossy(&remote.stderr);
    assert!(
        said.contains("Failed to connect") || said.contains("Could not connect"),
        "{said}"
    );
    let gpg = in_image(&root, &["/usr/bin/gpg", "--version"]);
    assert!(
        gpg.status.success() && String::from_utf8_lossy(&gpg.stdout).contains("GnuPG"),
        "{}",
        String::from_utf8_lossy(&gpg.stderr)
    );
    for program in [["/usr/bin/ssh", "-V"], ["/usr/bin/ssh-keygen", "-?"]] {
        let out = in_image(&root, &program);
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("OpenSSH") || text.contains("usage"),
            "{program:?}: {text}"
        );
    }

    // Built again from the same inputs: the same image.
    assert_eq!(build(&dir.path().join("again")), reference);
}
