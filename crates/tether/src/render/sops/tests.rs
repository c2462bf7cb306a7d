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

#[test]
fn dotenv_and_binary_files_decrypt_to_what_sops_decrypts_them_to() {
    use super::file::decrypt_file;
    let read = |name: &str| {
        std::fs::read(format!(
            "{}/src/render/sops/testdata/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let env = decrypt_file("app.env", &read("app.env"), &key("key.txt"))
        .unwrap()
        .expect("a sops dotenv file");
    let lines = |bytes: &[u8]| -> Vec<String> {
        String::from_utf8(bytes.to_vec())
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(lines(&env), lines(&read("app.plain.env")));
    let pem = decrypt_file("cert.pem", &read("cert.pem"), &key("key.txt"))
        .unwrap()
        .expect("a sops binary file");
    assert_eq!(pem, read("cert.plain.pem"));
    let yaml = decrypt_file("secret.yaml", &read("secret.yaml"), &key("key.txt"))
        .unwrap()
        .expect("a sops YAML file");
    let docs =
        parse_documents(std::str::from_utf8(&yaml).unwrap(), &YamlLimits::default()).unwrap();
    assert_eq!(docs[0].value, documents("secret.plain.yaml")[0]);
    // Plain files are left alone; a wrong key or a changed value is refused.
    assert_eq!(
        decrypt_file("app.plain.env", &read("app.plain.env"), &key("key.txt")),
        Ok(None)
    );
    assert!(matches!(
        decrypt_file("app.env", &read("app.env"), &key("other-key.txt")),
        Err(Error::WrongKey { .. })
    ));
    // A line taken out leaves every other value intact: only the MAC tells.
    let text = String::from_utf8(read("app.env")).unwrap();
    let cut: String = text
        .lines()
        .filter(|l| !l.starts_with("PASSWORD="))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        decrypt_file("app.env", cut.as_bytes(), &key("key.txt")),
        Err(Error::Mac)
    );
}

#[test]
fn ciphertext_is_seen_as_it_is_and_base64_encoded_at_any_offset() {
    use super::file::shows_ciphertext;
    use base64::Engine as _;
    let value = "ENC[AES256_GCM,data:5p0Fepk=,iv:zhFn,tag:ZZkz,type:str]";
    assert!(shows_ciphertext(format!("password: {value}").as_bytes()));
    for prefix in ["", "a", "ab", "abc", "abcd"] {
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{prefix}{value}"));
        assert!(
            shows_ciphertext(format!("data:\n  p: {encoded}\n").as_bytes()),
            "{prefix:?}"
        );
    }
    let plain = base64::engine::general_purpose::STANDARD.encode("ENC but not encrypted");
    assert!(!shows_ciphertext(plain.as_bytes()));
    assert!(!shows_ciphertext(b"kind: Secret\ndata: {}\n"));
}
