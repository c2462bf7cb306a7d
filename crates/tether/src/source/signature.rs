//! Commit signature checks: the resolved commit must be signed by one of the given keys.
//!
//! SSH signatures are checked with OpenSSH's `ssh-keygen -Y verify` and OpenPGP signatures
//! with GnuPG against a keyring holding only the given keys, the same programs `git
//! verify-commit` uses. Nothing here trusts the user's own keyring or allowed-signers file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The keys one of which must have signed the revision.
#[derive(Debug, Clone, Default)]
pub struct SignaturePolicy {
    /// OpenSSH public keys (`ssh-ed25519 AAAA… comment`).
    pub ssh_keys: Vec<String>,
    /// ASCII-armored OpenPGP public keys.
    pub pgp_keys: Vec<String>,
}

impl SignaturePolicy {
    /// Reads key files: each holds OpenSSH public keys (one per line, `#` comments) or
    /// ASCII-armored OpenPGP public key blocks.
    pub fn from_files(paths: &[PathBuf]) -> Result<Self, String> {
        let mut policy = Self::default();
        for path in paths {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read signing key file {}: {e}", path.display()))?;
            if text.contains("-----BEGIN PGP PUBLIC KEY BLOCK-----") {
                policy.pgp_keys.push(text);
                continue;
            }
            let before = policy.ssh_keys.len();
            for line in text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                if !(line.starts_with("ssh-")
                    || line.starts_with("ecdsa-")
                    || line.starts_with("sk-"))
                {
                    return Err(format!(
                        "{}: {:?} is not an OpenSSH public key or an armored OpenPGP key",
                        path.display(),
                        line.chars().take(30).collect::<String>()
                    ));
                }
                policy.ssh_keys.push(line.to_string());
            }
            if policy.ssh_keys.len() == before {
                return Err(format!("{}: holds no public key", path.display()));
            }
        }
        if policy.ssh_keys.is_empty() && policy.pgp_keys.is_empty() {
            return Err("signature verification needs at least one public key".into());
        }
        Ok(policy)
    }

    fn describe(&self) -> String {
        let count = self.ssh_keys.len() + self.pgp_keys.len();
        format!("{count} trusted key{}", if count == 1 { "" } else { "s" })
    }
}

/// Checks the commit's signature; `Err` says why it is refused.
pub fn verify_commit(commit: &gix::Commit<'_>, policy: &SignaturePolicy) -> Result<(), String> {
    let signature = commit
        .signature()
        .map_err(|e| format!("cannot read the signature: {e}"))?;
    let Some((signature, signed)) = signature else {
        return Err(format!(
            "is not signed, and a signature by one of {} is required",
            policy.describe()
        ));
    };
    let payload = signed.to_bstring();
    let signature = signature.to_vec();
    if signature.starts_with(b"-----BEGIN SSH SIGNATURE-----") {
        verify_ssh(&signature, &payload, policy)
    } else if signature.starts_with(b"-----BEGIN PGP SIGNATURE-----") {
        verify_pgp(&signature, &payload, policy)
    } else {
        Err("has a signature in an unsupported format (only SSH and OpenPGP are checked)".into())
    }
}

fn scratch() -> Result<tempfile::TempDir, String> {
    tempfile::Builder::new()
        .prefix("tether-verify-")
        .tempdir()
        .map_err(|e| format!("cannot create a temporary folder: {e}"))
}

fn write(path: &Path, data: &[u8]) -> Result<(), String> {
    std::fs::write(path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn verify_ssh(signature: &[u8], payload: &[u8], policy: &SignaturePolicy) -> Result<(), String> {
    if policy.ssh_keys.is_empty() {
        return Err("is signed with an SSH key, but only OpenPGP keys are trusted".into());
    }
    let dir = scratch()?;
    let allowed: String = policy
        .ssh_keys
        .iter()
        .map(|key| format!("tether namespaces=\"git\" {key}\n"))
        .collect();
    write(&dir.path().join("allowed_signers"), allowed.as_bytes())?;
    write(&dir.path().join("signature"), signature)?;
    let mut child = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-n", "git", "-I", "tether", "-f"])
        .arg(dir.path().join("allowed_signers"))
        .arg("-s")
        .arg(dir.path().join("signature"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!(
                "cannot run ssh-keygen to check the SSH signature (install openssh-client): {e}"
            )
        })?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(payload)
        .map_err(|e| format!("cannot pass the commit to ssh-keygen: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("ssh-keygen failed: {e}"))?;
    if out.status.success() {
        tracing::debug!(output = %String::from_utf8_lossy(&out.stdout).trim(), "SSH signature verified");
        Ok(())
    } else {
        Err(format!(
            "is not signed by any of the {}: {}",
            policy.describe(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn verify_pgp(signature: &[u8], payload: &[u8], policy: &SignaturePolicy) -> Result<(), String> {
    if policy.pgp_keys.is_empty() {
        return Err("is signed with an OpenPGP key, but only SSH keys are trusted".into());
    }
    let dir = scratch()?;
    let home = dir.path().join("gnupg");
    std::fs::create_dir(&home).map_err(|e| format!("cannot create a GnuPG home: {e}"))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot protect the GnuPG home: {e}"))?;
    }
    let gpg = |args: &[&str]| {
        Command::new("gpg")
            .env("GNUPGHOME", &home)
            .args(["--batch", "--no-tty", "--no-auto-key-retrieve"])
            .args(args)
            .current_dir(dir.path())
            .output()
            .map_err(|e| {
                format!("cannot run gpg to check the OpenPGP signature (install gnupg): {e}")
            })
    };
    for (index, key) in policy.pgp_keys.iter().enumerate() {
        let file = format!("key{index}.asc");
        write(&dir.path().join(&file), key.as_bytes())?;
        let out = gpg(&["--import", &file])?;
        if !out.status.success() {
            return Err(format!(
                "cannot import trusted OpenPGP key {}: {}",
                index + 1,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    write(&dir.path().join("signature.asc"), signature)?;
    write(&dir.path().join("payload"), payload)?;
    let out = gpg(&["--status-fd", "1", "--verify", "signature.asc", "payload"])?;
    let status = String::from_utf8_lossy(&out.stdout);
    let valid = status.lines().any(|l| l.starts_with("[GNUPG:] VALIDSIG "));
    let revoked_or_expired = status
        .lines()
        .any(|l| l.starts_with("[GNUPG:] REVKEYSIG ") || l.starts_with("[GNUPG:] EXPKEYSIG "));
    if out.status.success() && valid && !revoked_or_expired {
        Ok(())
    } else {
        let reason = status
            .lines()
            .find_map(|l| {
                l.strip_prefix("[GNUPG:] ").filter(|s| {
                    s.starts_with("NO_PUBKEY") || s.starts_with("BADSIG") || s.starts_with("ERRSIG")
                })
            })
            .unwrap_or("no valid signature");
        Err(format!(
            "is not signed by any of the {} ({reason})",
            policy.describe()
        ))
    }
}

/// A private, temporary GnuPG home (0700) for one use of `gpg` with keys given to tether:
/// the user's keyring is neither read nor changed. Dropped, it stops the agent gpg may have
/// started for it (on every path, errors included) and is removed.
pub struct GnupgHome {
    dir: tempfile::TempDir,
}

impl GnupgHome {
    pub fn new() -> Result<Self, String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("tether-gnupg-")
            .tempdir()
            .map_err(|e| format!("cannot create a GnuPG home: {e}"))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot protect the GnuPG home: {e}"))?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for GnupgHome {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.dir.path())
            .args(["--kill", "gpg-agent"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
