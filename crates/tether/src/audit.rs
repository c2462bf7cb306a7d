//! Who made a write, beyond the field manager that managedFields names: the user and the
//! user agent, read from the API server's audit log (`--audit-log-path`, JSON lines of
//! `audit.k8s.io/v1` Events, at level Metadata or above) when tether is given the file
//! (`--audit-log FILE`). A write is found by its object (resource, namespace, name,
//! subresource), its field manager (the request's `fieldManager`, else the user agent up
//! to its first `/`, as the API server names a manager) and the second managedFields
//! records, which falls between the request's arrival and its answer.
//!
//! The log is read once per [`AuditLog`] (a plan), and only when a field is attributed:
//! its last [`TAIL_BYTES`], so a huge log costs a bounded read.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::Value;

/// How much of the end of the log is read.
pub const TAIL_BYTES: u64 = 64 * 1024 * 1024;

/// One successful write the log records.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Write {
    resource: String,
    namespace: String,
    name: String,
    subresource: Option<String>,
    manager: String,
    /// The seconds (since the epoch) from the request's arrival to its answer.
    from: i64,
    to: i64,
    /// The user the request acted as (`impersonatedUser`), else the one who sent it.
    user: String,
    /// Who sent a request that acted as someone else.
    impersonated_by: Option<String>,
    user_agent: String,
}

/// An audit log file, read on first use.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    writes: OnceLock<Vec<Write>>,
}

impl AuditLog {
    /// The log at `path`; an error when it cannot be read now.
    pub fn open(path: &Path) -> Result<AuditLog, String> {
        std::fs::File::open(path).map_err(|e| {
            format!(
                "cannot read the audit log {}: {e}; give the file the API server writes (its --audit-log-path)",
                path.display()
            )
        })?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            writes: OnceLock::new(),
        })
    }

    /// Who wrote the object with `manager` at `time` (managedFields' RFC 3339 second; an
    /// entry without one, as the scale subresource's, takes the last write of that manager),
    /// as `user "alice" with kubectl/v1.34.4 (linux/amd64)`; the latest such write.
    pub fn who(&self, object: &ObjectRef<'_>, manager: &str, time: Option<&str>) -> Option<String> {
        let second = match time {
            Some(time) => Some(time.parse::<jiff::Timestamp>().ok()?.as_second()),
            None => None,
        };
        let writes = self.writes.get_or_init(|| read_writes(&self.path));
        let write = writes.iter().rev().find(|w| {
            w.resource == object.resource
                && w.namespace == object.namespace
                && w.name == object.name
                && w.subresource.as_deref() == object.subresource
                && w.manager == manager
                && second.is_none_or(|s| (w.from..=w.to).contains(&s))
        })?;
        Some(match &write.impersonated_by {
            Some(by) => format!(
                "user {:?} (impersonated by {by:?}) with {}",
                write.user, write.user_agent
            ),
            None => format!("user {:?} with {}", write.user, write.user_agent),
        })
    }
}

/// The object a write is looked for on.
pub struct ObjectRef<'a> {
    /// The plural resource (`deployments`).
    pub resource: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub subresource: Option<&'a str>,
}

/// The writes in the last [`TAIL_BYTES`] of the log (none when it cannot be read: the
/// attribution then names the manager only).
fn read_writes(path: &Path) -> Vec<Write> {
    let mut text = String::new();
    let read = std::fs::File::open(path).and_then(|mut file| {
        let length = file.metadata()?.len();
        let start = length.saturating_sub(TAIL_BYTES);
        file.seek(SeekFrom::Start(start))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        // A line cut by the start is not read.
        let skip = match start {
            0 => 0,
            _ => bytes
                .iter()
                .position(|b| *b == b'\n')
                .map_or(bytes.len(), |i| i + 1),
        };
        text = String::from_utf8_lossy(&bytes[skip..]).into_owned();
        Ok(())
    });
    if let Err(err) = read {
        tracing::warn!(path = %path.display(), %err, "cannot read the audit log");
        return Vec::new();
    }
    text.lines().filter_map(parse_write).collect()
}

/// A successful create, update or patch from one line of the log.
fn parse_write(line: &str) -> Option<Write> {
    let event: Value = serde_json::from_str(line).ok()?;
    let uri = event["requestURI"].as_str().unwrap_or_default();
    if !matches!(event["verb"].as_str()?, "create" | "update" | "patch")
        || event["stage"].as_str() != Some("ResponseComplete")
        || uri.contains("dryRun=")
    {
        return None;
    }
    let code = event["responseStatus"]["code"].as_i64().unwrap_or(200);
    if !(200..300).contains(&code) {
        return None;
    }
    let object = &event["objectRef"];
    let user_agent = event["userAgent"].as_str().unwrap_or_default().to_string();
    let manager = field_manager(uri)
        .unwrap_or_else(|| user_agent.split('/').next().unwrap_or_default().to_string());
    let second = |field: &str| {
        event[field]
            .as_str()?
            .parse::<jiff::Timestamp>()
            .ok()
            .map(|t| t.as_second())
    };
    Some(Write {
        resource: object["resource"].as_str()?.to_string(),
        namespace: object["namespace"].as_str().unwrap_or_default().to_string(),
        name: object["name"].as_str()?.to_string(),
        subresource: object["subresource"].as_str().map(str::to_string),
        manager,
        from: second("requestReceivedTimestamp")?,
        to: second("stageTimestamp")?,
        user: event["impersonatedUser"]["username"]
            .as_str()
            .or(event["user"]["username"].as_str())?
            .to_string(),
        impersonated_by: event["impersonatedUser"]["username"]
            .as_str()
            .and(event["user"]["username"].as_str())
            .map(str::to_string),
        user_agent,
    })
}

/// The `fieldManager` query parameter of a request URI, decoded.
fn field_manager(uri: &str) -> Option<String> {
    let query = uri.split_once('?')?.1;
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("fieldManager="))?;
    let mut out = Vec::new();
    let bytes = value.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(verb: &str, uri: &str, agent: &str, subresource: Option<&str>, code: i64) -> String {
        serde_json::json!({
            "kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": "Metadata",
            "stage": "ResponseComplete", "verb": verb, "requestURI": uri,
            "user": {"username": "alice", "groups": ["system:authenticated"]},
            "userAgent": agent,
            "objectRef": {"resource": "deployments", "namespace": "shop", "name": "web",
                          "apiGroup": "apps", "apiVersion": "v1", "subresource": subresource},
            "responseStatus": {"code": code},
            "requestReceivedTimestamp": "2026-12-06T10:00:00.900000Z",
            "stageTimestamp": "2026-12-06T10:00:01.020000Z"
        })
        .to_string()
    }

    #[test]
    fn a_write_is_found_by_object_manager_and_second() {
        let dir = tempfile::tempdir().expect("temp");
        let path = dir.path().join("audit.log");
        let lines = [
            event(
                "patch",
                "/apis/apps/v1/namespaces/shop/deployments/web/scale",
                "kubectl/v1.34.4 (linux/amd64) kubernetes/abc",
                Some("scale"),
                200,
            ),
            event(
                "patch",
                "/apis/apps/v1/namespaces/shop/deployments/web?fieldManager=kubectl-edit",
                "kubectl/v1.34.4 (linux/amd64) kubernetes/abc",
                None,
                200,
            ),
            event(
                "update",
                "/apis/apps/v1/namespaces/shop/deployments/web",
                "kube-controller-manager/v1.34.4",
                None,
                409,
            ),
            "not json".to_string(),
        ];
        std::fs::write(&path, lines.join("\n")).expect("write");
        let log = AuditLog::open(&path).expect("opens");
        let object = |subresource| ObjectRef {
            resource: "deployments",
            namespace: "shop",
            name: "web",
            subresource,
        };
        // The manager from the user agent (no fieldManager), on the scale subresource.
        assert_eq!(
            log.who(
                &object(Some("scale")),
                "kubectl",
                Some("2026-12-06T10:00:01Z")
            )
            .as_deref(),
            Some("user \"alice\" with kubectl/v1.34.4 (linux/amd64) kubernetes/abc")
        );
        // The manager from fieldManager; the second the request arrived counts too.
        assert!(
            log.who(&object(None), "kubectl-edit", Some("2026-12-06T10:00:00Z"))
                .is_some()
        );
        // Another second, another manager, a refused write: not found.
        assert_eq!(
            log.who(&object(None), "kubectl-edit", Some("2026-12-06T10:00:02Z")),
            None
        );
        assert_eq!(
            log.who(
                &object(None),
                "kube-controller-manager",
                Some("2026-12-06T10:00:01Z")
            ),
            None
        );
        // No time (the scale subresource's entry has none): the manager's last write.
        assert!(log.who(&object(Some("scale")), "kubectl", None).is_some());
        let err = AuditLog::open(&dir.path().join("missing.log")).expect_err("no file");
        assert!(
            err.contains("missing.log") && err.contains("--audit-log-path"),
            "{err}"
        );
        assert_eq!(
            field_manager("/x?dryRun=All&fieldManager=my%2Dtool+x"),
            Some("my-tool x".into())
        );
    }
}
