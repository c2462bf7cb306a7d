//! SOPS-encrypted manifests, decrypted as the `sops` program reads them (the files Flux's
//! kustomize-controller decrypts; pure: documents and keys in, documents out). A document with a top-level `sops`
//! block has its values encrypted with AES-256-GCM under a data key that is itself encrypted
//! for each recipient (age, X25519); each value's additional data is its path of keys. The
//! MAC over every plaintext value is checked, so a file changed after it was encrypted is
//! refused, not applied. Decrypted values never leave the returned documents: errors name
//! paths and recipients, never a value or a key. The format is the one getsops/sops v3.13
//! writes (YAML and JSON; age recipients; key groups and comment rules are refused).

use aes_gcm::aead::consts::U32;
use aes_gcm::aead::generic_array::GenericArray;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use base64::Engine as _;
use serde_json::{Map, Value};
use sha2::{Digest, Sha512};

pub mod file;
mod pgp;

/// AES-256-GCM with SOPS's 32-byte IVs.
type Cipher = aes_gcm::AesGcm<aes_gcm::aes::Aes256, U32>;

/// Why an encrypted document cannot be read. None of them carries a decrypted value.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "it is SOPS-encrypted (for {recipients}) and no decryption key was given: give its age or OpenPGP key \
         (tether: --decryption-key-file or SOPS_AGE_KEY_FILE; an Application: spec.decryption)"
    )]
    NoKey { recipients: String },
    #[error("{} a recipient of it (it is encrypted for {recipients})", given(*keys))]
    WrongKey { keys: usize, recipients: String },
    #[error(
        "{path}: the value does not decrypt: the file was changed after it was encrypted (encrypt it again with sops)"
    )]
    Value { path: String },
    #[error(
        "its MAC does not match its values: the file was changed after it was encrypted (encrypt it again with sops)"
    )]
    Mac,
    #[error("its sops block cannot be used: {0}")]
    Format(String),
}

/// "the key given is not" or "none of the N keys given is", for [`Error::WrongKey`].
fn given(keys: usize) -> String {
    if keys == 1 {
        "the decryption key given is not".into()
    } else {
        format!("none of the {keys} decryption keys given is")
    }
}

/// Age identities (`AGE-SECRET-KEY-1…` lines, as `age-keygen` writes them) and OpenPGP
/// secret keys (armored blocks, as `gpg --export-secret-keys --armor` writes them).
#[derive(Clone, Default)]
pub struct Keys(Vec<age::x25519::Identity>, Vec<String>);

/// Shows how many keys, never a key.
impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Keys({} age keys, {} OpenPGP keys)",
            self.0.len(),
            self.1.len()
        )
    }
}

const PGP_BEGIN: &str = "-----BEGIN PGP PRIVATE KEY BLOCK-----";
const PGP_END: &str = "-----END PGP PRIVATE KEY BLOCK-----";

impl Keys {
    /// Reads a key file: age identities, one per line (`#` comments and blank lines
    /// skipped), and armored OpenPGP secret key blocks. An error names the line, never its
    /// text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        let mut pgp = Vec::new();
        let mut block: Option<String> = None;
        for (number, line) in text.lines().enumerate() {
            if let Some(open) = block.as_mut() {
                open.push_str(line);
                open.push('\n');
                if line.trim() == PGP_END {
                    pgp.extend(block.take());
                }
                continue;
            }
            if line.trim() == PGP_BEGIN {
                block = Some(format!("{PGP_BEGIN}\n"));
                continue;
            }
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = line.parse::<age::x25519::Identity>().map_err(|_| {
                format!(
                    "line {} is not an age secret key (AGE-SECRET-KEY-1…, as age-keygen writes)",
                    number + 1
                )
            })?;
            keys.push(key);
        }
        if block.is_some() {
            return Err(format!("an OpenPGP key block has no {PGP_END} line"));
        }
        Ok(Self(keys, pgp))
    }

    /// Both kinds together (the keys of several Secret entries).
    pub fn extend(&mut self, other: Keys) {
        self.0.extend(other.0);
        self.1.extend(other.1);
    }

    pub fn len(&self) -> usize {
        self.0.len() + self.1.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether `document` carries a SOPS block (a top-level `sops` mapping with a MAC).
pub fn is_encrypted(document: &Value) -> bool {
    document
        .get("sops")
        .is_some_and(|sops| sops.get("mac").is_some())
}

/// Decrypts the documents of one file (the first one's `sops` block describes them all) and
/// checks the MAC; the `sops` blocks are removed.
pub fn decrypt(mut documents: Vec<Value>, keys: &Keys) -> Result<Vec<Value>, Error> {
    let Some(meta) = documents.iter().find_map(|d| d.get("sops")).cloned() else {
        return Ok(documents);
    };
    let rule = Rule::of(&meta)?;
    let key = data_key(&meta, keys)?;
    let mac_only_encrypted = meta["mac_only_encrypted"].as_bool().unwrap_or(false);
    let mut walk = Walk {
        cipher: Cipher::new(GenericArray::from_slice(&key)),
        rule,
        hash: Sha512::new(),
        mac_only_encrypted,
    };
    if mac_only_encrypted {
        walk.hash.update(sha2::Sha256::digest(b"sops"));
    }
    for document in &mut documents {
        if let Value::Object(map) = document {
            map.remove("sops");
        }
        walk.value(document, &mut Vec::new())?;
    }
    let computed = faster_hex::hex_string_upper(&walk.hash.finalize());
    let stored = meta["mac"].as_str().unwrap_or_default();
    let modified = meta["lastmodified"].as_str().unwrap_or_default();
    let (stored, _) = open(&walk.cipher, stored, modified).map_err(|_| Error::Mac)?;
    if !stored.eq_ignore_ascii_case(computed.as_bytes()) {
        return Err(Error::Mac);
    }
    Ok(documents)
}

/// The recipients a file was encrypted for, for messages.
fn recipients(meta: &Value) -> String {
    let mut list: Vec<String> = meta["age"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| entry["recipient"].as_str().map(str::to_string))
        .collect();
    list.extend(
        meta["pgp"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|entry| entry["fp"].as_str().map(|fp| format!("OpenPGP key {fp}"))),
    );
    if list.is_empty() {
        "no age or OpenPGP recipient".into()
    } else {
        list.join(", ")
    }
}

/// The file's data key, from the first age stanza one of `keys` opens.
fn data_key(meta: &Value, keys: &Keys) -> Result<Vec<u8>, Error> {
    if meta.get("key_groups").is_some_and(|g| !g.is_null()) {
        return Err(Error::Format(
            "key groups (Shamir's secret sharing) are not supported; encrypt with one group".into(),
        ));
    }
    let recipients = recipients(meta);
    if keys.is_empty() {
        return Err(Error::NoKey { recipients });
    }
    for entry in meta["age"].as_array().into_iter().flatten() {
        let Some(enc) = entry["enc"].as_str() else {
            continue;
        };
        for key in &keys.0 {
            if let Ok(data_key) = age::decrypt(key, enc.as_bytes())
                && data_key.len() == 32
            {
                return Ok(data_key);
            }
        }
    }
    if !keys.1.is_empty() {
        for entry in meta["pgp"].as_array().into_iter().flatten() {
            if let Some(data_key) = entry["enc"]
                .as_str()
                .and_then(|enc| pgp::decrypt(enc, &keys.1))
                && data_key.len() == 32
            {
                return Ok(data_key);
            }
        }
    }
    Err(Error::WrongKey {
        keys: keys.len(),
        recipients,
    })
}

/// Which values the file says are encrypted, decided on each key of a value's path.
enum Rule {
    UnencryptedSuffix(String),
    EncryptedSuffix(String),
    EncryptedRegex(regex::Regex),
    UnencryptedRegex(regex::Regex),
}

impl Rule {
    fn of(meta: &Value) -> Result<Self, Error> {
        let text = |key: &str| meta[key].as_str().map(str::to_string);
        let regex = |key: &str, pattern: String| {
            regex::Regex::new(&pattern).map_err(|e| Error::Format(format!("{key}: {e}")))
        };
        for unsupported in ["encrypted_comment_regex", "unencrypted_comment_regex"] {
            if meta.get(unsupported).is_some() {
                return Err(Error::Format(format!("{unsupported} is not supported")));
            }
        }
        Ok(if let Some(pattern) = text("encrypted_regex") {
            Rule::EncryptedRegex(regex("encrypted_regex", pattern)?)
        } else if let Some(pattern) = text("unencrypted_regex") {
            Rule::UnencryptedRegex(regex("unencrypted_regex", pattern)?)
        } else if let Some(suffix) = text("encrypted_suffix") {
            Rule::EncryptedSuffix(suffix)
        } else {
            Rule::UnencryptedSuffix(text("unencrypted_suffix").unwrap_or("_unencrypted".into()))
        })
    }

    fn encrypts(&self, path: &[String]) -> bool {
        match self {
            Rule::UnencryptedSuffix(s) => !path.iter().any(|k| k.ends_with(s.as_str())),
            Rule::EncryptedSuffix(s) => path.iter().any(|k| k.ends_with(s.as_str())),
            Rule::EncryptedRegex(r) => path.iter().any(|k| r.is_match(k)),
            Rule::UnencryptedRegex(r) => !path.iter().any(|k| r.is_match(k)),
        }
    }
}

/// One walk over the documents: decrypts what the rule says is encrypted, in place, and
/// hashes every plaintext value in order for the MAC.
struct Walk {
    cipher: Cipher,
    rule: Rule,
    hash: Sha512,
    mac_only_encrypted: bool,
}

impl Walk {
    fn value(&mut self, value: &mut Value, path: &mut Vec<String>) -> Result<(), Error> {
        match value {
            Value::Object(map) => self.map(map, path),
            Value::Array(items) => items.iter_mut().try_for_each(|item| self.value(item, path)),
            Value::Null => Ok(()),
            leaf => self.leaf(leaf, path),
        }
    }

    fn map(&mut self, map: &mut Map<String, Value>, path: &mut Vec<String>) -> Result<(), Error> {
        for (key, value) in map.iter_mut() {
            path.push(key.clone());
            let walked = self.value(value, path);
            path.pop();
            walked?;
        }
        Ok(())
    }

    fn leaf(&mut self, leaf: &mut Value, path: &[String]) -> Result<(), Error> {
        if !self.rule.encrypts(path) {
            if !self.mac_only_encrypted {
                self.hash.update(plain_bytes(leaf));
            }
            return Ok(());
        }
        let shown = path.join(":");
        let Value::String(text) = leaf else {
            return Err(Error::Format(format!(
                "{shown} should be encrypted but is not a string"
            )));
        };
        if text.is_empty() {
            return Ok(());
        }
        let aad: String = path.iter().map(|k| format!("{k}:")).collect();
        let (plain, kind) = open(&self.cipher, text, &aad).map_err(|()| Error::Value {
            path: shown.clone(),
        })?;
        self.hash.update(&plain);
        *leaf = typed(plain, &kind).ok_or(Error::Value { path: shown })?;
        Ok(())
    }
}

/// The bytes SOPS hashes for a value left in plaintext.
fn plain_bytes(leaf: &Value) -> Vec<u8> {
    match leaf {
        Value::String(s) => s.as_bytes().to_vec(),
        Value::Bool(true) => b"True".to_vec(),
        Value::Bool(false) => b"False".to_vec(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string().into_bytes(),
            (_, Some(u), _) => u.to_string().into_bytes(),
            // Go's shortest form without an exponent, as Rust shows an f64.
            (_, _, Some(f)) => f.to_string().into_bytes(),
            _ => n.to_string().into_bytes(),
        },
        _ => Vec::new(),
    }
}

/// A decrypted plaintext as the value its type names.
fn typed(plain: Vec<u8>, kind: &str) -> Option<Value> {
    let text = String::from_utf8(plain).ok()?;
    Some(match kind {
        "str" | "bytes" | "time" => Value::String(text),
        "int" => Value::from(text.parse::<i64>().ok()?),
        "float" => serde_json::Number::from_f64(text.parse::<f64>().ok()?)?.into(),
        "bool" => Value::Bool(match text.as_str() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
            "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
            _ => return None,
        }),
        _ => return None,
    })
}

/// Opens one `ENC[AES256_GCM,data:…,iv:…,tag:…,type:…]`: its plaintext and type.
fn open(cipher: &Cipher, text: &str, aad: &str) -> Result<(Vec<u8>, String), ()> {
    let inner = text
        .strip_prefix("ENC[AES256_GCM,")
        .and_then(|t| t.strip_suffix(']'))
        .ok_or(())?;
    let (mut data, mut iv, mut tag, mut kind) = (None, None, None, None);
    for field in inner.split(',') {
        let (name, value) = field.split_once(':').ok_or(())?;
        let decoded = || base64::engine::general_purpose::STANDARD.decode(value);
        match name {
            "data" => data = Some(decoded().map_err(|_| ())?),
            "iv" => iv = Some(decoded().map_err(|_| ())?),
            "tag" => tag = Some(decoded().map_err(|_| ())?),
            "type" => kind = Some(value.to_string()),
            _ => return Err(()),
        }
    }
    let (mut message, iv, tag) = (data.ok_or(())?, iv.ok_or(())?, tag.ok_or(())?);
    if iv.len() != 32 || tag.len() != 16 {
        return Err(());
    }
    message.extend_from_slice(&tag);
    let payload = Payload {
        msg: &message,
        aad: aad.as_bytes(),
    };
    let plain = cipher
        .decrypt(GenericArray::from_slice(&iv), payload)
        .map_err(|_| ())?;
    Ok((plain, kind.unwrap_or_else(|| "str".into())))
}

#[cfg(test)]
mod tests;
