//! Files encrypted by the real `sops` (v3.13.3, with an age key made by age-keygen) and what
//! `sops decrypt` made of them, under `testdata/`; the key there is for these tests only.

use super::{Error, Keys, decrypt, is_encrypted};
use crate::render::yaml::{YamlLimits, parse_documents};
use serde_json::Value;

fn testdata(name: &str) -> String {
    let path = format!(
        "{}/src/render/sops/testdata/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn documents(name: &str) -> Vec<Value> {
    parse_documents(&testdata(name), &YamlLimits::default())
        .unwrap()
        .into_iter()
        .map(|d| d.value)
        .collect()
}

fn key(name: &str) -> Keys {
    Keys::parse(&testdata(name)).unwrap()
}

#[test]
fn each_file_decrypts_to_what_sops_decrypts_it_to() {
    for (encrypted, plain) in [
        ("secret.yaml", "secret.plain.yaml"),
        ("config.yaml", "config.plain.yaml"),
        ("multi.yaml", "multi.plain.yaml"),
        ("secret.json", "secret.plain.json"),
    ] {
        let docs = documents(encrypted);
        assert!(docs.iter().all(is_encrypted), "{encrypted}");
        let decrypted =
            decrypt(docs, &key("key.txt")).unwrap_or_else(|e| panic!("{encrypted}: {e}"));
        assert_eq!(decrypted, documents(plain), "{encrypted}");
        assert!(!decrypted.iter().any(is_encrypted));
    }
}

#[test]
fn a_value_changed_in_plaintext_fails_the_mac() {
    // metadata.name is not encrypted (encrypted_regex names data and stringData) but is in the MAC.
    assert_eq!(
        decrypt(documents("tampered.yaml"), &key("key.txt")),
        Err(Error::Mac)
    );
}

#[test]
fn a_changed_ciphertext_names_its_path_and_no_value() {
    let mut docs = documents("secret.yaml");
    let password = docs[0]["stringData"]["password"]
        .as_str()
        .unwrap()
        .to_string();
    let swapped = docs[0]["stringData"]["port"].as_str().unwrap().to_string();
    // A valid ciphertext moved to another path no longer decrypts: the path is its AAD.
    docs[0]["stringData"]["password"] = Value::String(swapped);
    let err = decrypt(docs, &key("key.txt")).unwrap_err();
    assert_eq!(
        err,
        Error::Value {
            path: "stringData:password".into()
        }
    );
    assert!(!err.to_string().contains("s3cr3t") && !err.to_string().contains(&password));
}

#[test]
fn a_wrong_or_missing_key_names_the_recipients() {
    let docs = documents("secret.yaml");
    let recipient = docs[0]["sops"]["age"][0]["recipient"]
        .as_str()
        .unwrap()
        .to_string();
    let err = decrypt(docs.clone(), &key("other-key.txt")).unwrap_err();
    assert_eq!(
        err,
        Error::WrongKey {
            keys: 1,
            recipients: recipient.clone()
        }
    );
    let err = decrypt(docs, &Keys::default()).unwrap_err();
    assert!(err.to_string().contains(&recipient), "{err}");
    assert!(matches!(err, Error::NoKey { .. }));
}

#[test]
fn a_key_file_line_that_is_not_a_key_is_named_by_number_not_text() {
    let err = Keys::parse("# comment\n\nAGE-SECRET-KEY-NOT-REALLY\n")
        .err()
        .unwrap();
    assert!(err.contains("line 3"), "{err}");
    assert!(!err.contains("NOT-REALLY"), "{err}");
    assert_eq!(key("key.txt").len(), 1);
}

#[test]
fn a_plain_document_is_left_alone() {
    let docs = documents("secret.plain.yaml");
    assert!(!is_encrypted(&docs[0]));
    assert_eq!(decrypt(docs.clone(), &Keys::default()).unwrap(), docs);
}
