use super::artifact::{pack, unpack_into};
use super::{Credentials, OciRef, OciUrl};

#[test]
fn urls_and_references_read_as_helm_and_flux_write_them() {
    let url = OciUrl::parse("oci://127.0.0.1:5000/charts/web").unwrap();
    assert_eq!(url.host, "127.0.0.1:5000");
    assert_eq!(url.repository, "charts/web");
    assert!(matches!(OciRef::parse("", &url).unwrap(), OciRef::Tag(t) if t == "latest"));
    let tagged = OciUrl::parse("oci://ghcr.io/org/app:v1.2.0").unwrap();
    assert_eq!(tagged.repository, "org/app");
    assert!(matches!(OciRef::parse("", &tagged).unwrap(), OciRef::Tag(t) if t == "v1.2.0"));
    assert!(matches!(OciRef::parse("1.2.3", &url).unwrap(), OciRef::Tag(t) if t == "1.2.3"));
    assert!(matches!(
        OciRef::parse(">=1.0.0 <2", &url).unwrap(),
        OciRef::Semver(_)
    ));
    let digest = format!("sha256:{}", "a".repeat(64));
    assert!(matches!(OciRef::parse(&digest, &url).unwrap(), OciRef::Digest(d) if d == digest));
    for bad in ["branch:main", "sha256:abc", "digest:sha256:12"] {
        assert!(OciRef::parse(bad, &url).is_err(), "{bad}");
    }
    for bad in [
        "https://ghcr.io/org/app",
        "oci://ghcr.io",
        "oci://ghcr.io/Org/App",
        "oci://u:p@ghcr.io/a",
    ] {
        let err = OciUrl::parse(bad).unwrap_err().to_string();
        assert!(err.contains("oci://host[:port]/repository"), "{bad}: {err}");
    }
}

#[test]
fn credentials_come_from_a_docker_config() {
    let config = br#"{"auths": {"127.0.0.1:5000": {"auth": "YWxpY2U6czNjcmV0"}, "https://ghcr.io": {"username": "bob", "password": "t0ken"}}}"#;
    let alice = Credentials::from_docker_config(config, "127.0.0.1:5000")
        .unwrap()
        .unwrap();
    assert_eq!(
        (alice.username.as_str(), alice.password.as_str()),
        ("alice", "s3cret")
    );
    let bob = Credentials::from_docker_config(config, "ghcr.io")
        .unwrap()
        .unwrap();
    assert_eq!(bob.username, "bob");
    assert_eq!(
        Credentials::from_docker_config(config, "quay.io").unwrap(),
        None
    );
    assert!(!format!("{alice:?}").contains("s3cret"));
    // Docker Hub's credentials, under the name docker login gives them.
    let hub = br#"{"auths": {"https://index.docker.io/v1/": {"auth": "Ym9iOnQwa2Vu"}}}"#;
    let bob = Credentials::from_docker_config(hub, "registry-1.docker.io")
        .unwrap()
        .unwrap();
    assert_eq!(bob.username, "bob");
    // A tag that looks like a Git commit id is a tag.
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let url = OciUrl::parse("oci://r.example/app").unwrap();
    assert!(matches!(OciRef::parse(sha, &url).unwrap(), OciRef::Tag(t) if t == sha));
}

#[test]
fn a_packed_folder_unpacks_to_the_same_files_and_packs_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("app/nested")).unwrap();
    std::fs::create_dir_all(src.join(".git")).unwrap();
    std::fs::write(src.join("app/a.yaml"), "a: 1\n").unwrap();
    std::fs::write(src.join("app/nested/b.yaml"), "b: 2\n").unwrap();
    std::fs::write(src.join(".git/HEAD"), "ref\n").unwrap();
    let packed = pack(&src).unwrap();
    assert_eq!(pack(&src).unwrap(), packed, "reproducible");
    let out = dir.path().join("out");
    unpack_into(&packed, &out).unwrap();
    assert_eq!(
        std::fs::read_to_string(out.join("content/app/nested/b.yaml")).unwrap(),
        "b: 2\n"
    );
    assert!(!out.join("content/.git").exists());
    std::os::unix::fs::symlink("/etc/passwd", src.join("app/link")).unwrap();
    assert!(pack(&src).unwrap_err().to_string().contains("symlink"));
}

#[test]
fn a_layer_with_a_path_leaving_its_folder_is_refused() {
    let mut archive = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut header = tar::Header::new_gnu();
    let body = b"x";
    header.set_size(1);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    // append_data refuses `..` itself; write the raw name as a hostile tool would.
    header.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../escape.ya");
    header.set_cksum();
    archive.append(&header, &body[..]).unwrap();
    let bytes = archive.into_inner().unwrap().finish().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = unpack_into(&bytes, &dir.path().join("x"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("leaves the artifact's folder"), "{err}");
    assert!(!dir.path().join("escape.ya").exists());
}
