//! SOPS-encrypted files made by the real `sops` with keys from the real `age-keygen` (both
//! built by testenv).

use std::path::Path;
use std::process::Command;

/// A new age key: (its file, its public recipient).
pub fn age_key(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let file = dir.join(name);
    let out = Command::new(super::tool("age-keygen"))
        .arg("-o")
        .arg(&file)
        .output()
        .expect("age-keygen runs");
    assert!(out.status.success(), "age-keygen: {}", super::said(&out));
    let text = std::fs::read_to_string(&file).expect("key file");
    let recipient = text
        .lines()
        .find_map(|l| l.strip_prefix("# public key: "))
        .expect("age-keygen writes the public key")
        .to_string();
    (file, recipient)
}

/// Encrypts `file` in place for `recipient` with the real sops (`args` before the file,
/// e.g. `--encrypted-regex`).
pub fn sops_encrypt(file: &Path, recipient: &str, args: &[&str]) {
    let out = Command::new(super::tool("sops"))
        .args(["encrypt", "--in-place", "--age", recipient])
        .args(args)
        .arg(file)
        .output()
        .expect("sops runs");
    assert!(out.status.success(), "sops encrypt: {}", super::said(&out));
}
