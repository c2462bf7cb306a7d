//! The OCI distribution API, as far as tether needs it: manifests, tags, blobs, and pushing
//! a blob and a manifest. A 401 is answered once: with basic credentials when the registry
//! asks for them, or with a bearer token from the realm it names (Docker Hub, GHCR, …).

use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header::{ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use sha2::Digest;

use super::{Credentials, Error, OciUrl, Options};

/// What a manifest request accepts: OCI and Docker manifests, and indexes (refused later
/// with a clear message).
pub const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// The most a manifest may take (registries cap them at 4 MiB).
const MAX_MANIFEST_BYTES: u64 = 4 << 20;

/// A manifest as fetched: its digest (of the bytes), the bytes, and their JSON.
pub struct Manifest {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub value: serde_json::Value,
}

pub struct Client {
    http: reqwest::blocking::Client,
    /// `https://host[:port]` (or http://).
    base: String,
    repository: String,
    credentials: Option<Credentials>,
    /// The Authorization header that worked last (basic or bearer).
    authorization: Option<String>,
}

impl Client {
    pub fn new(url: &OciUrl, options: &Options) -> Result<Self, Error> {
        crate::source::git::install_crypto_provider();
        let scheme = if options.plain_http { "http" } else { "https" };
        let base = format!("{scheme}://{}", url.host);
        let mut builder = reqwest::blocking::Client::builder()
            .connect_timeout(options.timeout.min(std::time::Duration::from_secs(30)))
            .timeout(options.timeout)
            .no_proxy();
        if let Some(pem) = &options.ca_pem {
            let certs =
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| Error::Transport {
                    url: base.clone(),
                    message: format!("the CA file holds no PEM certificate: {e}"),
                })?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder.build().map_err(|e| Error::Transport {
            url: base.clone(),
            message: format!("cannot make an HTTP client: {e}"),
        })?;
        // A bearer token from an earlier pull that is still valid, else basic credentials go
        // with the first request: one request per poll either way. A registry that wants a
        // (new) token answers 401 and gets one.
        let cache_key = token_key(&base, &url.repository, options.credentials.as_ref());
        let authorization =
            cached_token(&cache_key).or_else(|| options.credentials.as_ref().map(basic));
        Ok(Self {
            http,
            base,
            repository: url.repository.clone(),
            credentials: options.credentials.clone(),
            authorization,
        })
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.repository)
    }

    /// Sends a request (made by `build`, again after a 401), with authorization.
    fn send(
        &mut self,
        url: &str,
        action: &'static str,
        build: impl Fn(&reqwest::blocking::Client) -> RequestBuilder,
    ) -> Result<Response, Error> {
        let attempt = |client: &Self| {
            let mut request = build(&client.http);
            if let Some(header) = &client.authorization {
                request = request.header(reqwest::header::AUTHORIZATION, header);
            }
            request.send().map_err(|e| transport(url, &e))
        };
        let mut response = attempt(self)?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            self.authorization = Some(self.authorize(url, &challenge, action)?);
            response = attempt(self)?;
        }
        match response.status().as_u16() {
            200..=299 => Ok(response),
            401 => Err(Error::Unauthorized {
                url: url.to_string(),
                who: self.who(),
            }),
            403 => Err(Error::Forbidden {
                url: url.to_string(),
                action,
                repository: self.repository.clone(),
            }),
            status => {
                let body = response.text().unwrap_or_default();
                if body.contains("HTTP request to an HTTPS server") {
                    return Err(Error::Transport {
                        url: url.to_string(),
                        message: "the registry speaks HTTPS: drop --plain-http (plainHTTP)".into(),
                    });
                }
                let message = registry_message(&body).unwrap_or_else(|| {
                    body.chars()
                        .take(200)
                        .collect::<String>()
                        .trim()
                        .to_string()
                });
                if status == 404 {
                    return Err(Error::NotFound {
                        what: message,
                        url: url.to_string(),
                    });
                }
                Err(Error::Status {
                    url: url.to_string(),
                    status,
                    message,
                })
            }
        }
    }

    fn who(&self) -> String {
        match &self.credentials {
            Some(c) => format!("user {:?}", c.username),
            None => "anonymous access (no credentials given)".into(),
        }
    }

    /// The Authorization header a 401's challenge asks for.
    fn authorize(&self, url: &str, challenge: &str, action: &str) -> Result<String, Error> {
        let unauthorized = || Error::Unauthorized {
            url: url.to_string(),
            who: self.who(),
        };
        let basic = self.credentials.as_ref().map(basic);
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return basic.ok_or_else(unauthorized);
        }
        let params = challenge_params(params);
        let realm = params.get("realm").ok_or_else(unauthorized)?;
        let mut query: Vec<(String, String)> = Vec::new();
        if let Some(service) = params.get("service") {
            query.push(("service".into(), service.clone()));
        }
        let scope = params.get("scope").cloned().unwrap_or_else(|| {
            let actions = if action == "push to" {
                "pull,push"
            } else {
                "pull"
            };
            format!("repository:{}:{actions}", self.repository)
        });
        query.push(("scope".into(), scope));
        let token_url =
            reqwest::Url::parse_with_params(realm, &query).map_err(|e| Error::Invalid {
                url: url.to_string(),
                message: format!(
                    "the registry names a token realm {realm:?} that is not a URL: {e}"
                ),
            })?;
        let mut request = self.http.get(token_url);
        if let Some(header) = &basic {
            request = request.header(reqwest::header::AUTHORIZATION, header);
        }
        let response = request.send().map_err(|e| transport(realm, &e))?;
        if !response.status().is_success() {
            return Err(unauthorized());
        }
        let body = read_bounded(response, MAX_MANIFEST_BYTES, realm)?;
        let body: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| Error::Invalid {
                url: realm.clone(),
                message: format!("the token answer is not JSON: {e}"),
            })?;
        let token = body["token"]
            .as_str()
            .or(body["access_token"].as_str())
            .ok_or_else(unauthorized)?;
        let header = format!("Bearer {token}");
        // Kept until shortly before it expires (60 s when the answer does not say).
        let lifetime = body["expires_in"].as_u64().unwrap_or(60).saturating_sub(10);
        if action != "push to" && lifetime > 0 {
            let key = token_key(&self.base, &self.repository, self.credentials.as_ref());
            let until = std::time::Instant::now() + std::time::Duration::from_secs(lifetime);
            let mut tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
            tokens.retain(|_, (_, expires)| *expires > std::time::Instant::now());
            tokens.insert(key, (header.clone(), until));
        }
        Ok(header)
    }

    /// The manifest `reference` (a tag or a digest) names.
    pub fn manifest(&mut self, reference: &str) -> Result<Manifest, Error> {
        let url = self.url(&format!("manifests/{reference}"));
        let response = self.send(&url, "read", |http| {
            http.get(&url).header(ACCEPT, MANIFEST_TYPES)
        })?;
        let bytes = read_bounded(response, MAX_MANIFEST_BYTES, &url)?;
        let digest = format!("sha256:{:x}", sha2::Sha256::digest(&bytes));
        if reference.starts_with("sha256:") && reference != digest {
            return Err(Error::Invalid {
                url,
                message: format!("the manifest's digest is {digest}, not the one asked for"),
            });
        }
        let value = serde_json::from_slice(&bytes).map_err(|e| Error::Invalid {
            url: url.clone(),
            message: format!("the manifest is not JSON: {e}"),
        })?;
        Ok(Manifest {
            digest,
            bytes,
            value,
        })
    }

    /// Every tag of the repository (following the `Link` header's pages).
    pub fn tags(&mut self) -> Result<Vec<String>, Error> {
        let mut tags = Vec::new();
        let mut next = self.url("tags/list?n=1000");
        for _ in 0..100 {
            let url = next.clone();
            let response = self.send(&url, "list the tags of", |http| http.get(&url))?;
            let link = response
                .headers()
                .get("link")
                .and_then(|v| v.to_str().ok())
                .and_then(|l| {
                    l.split_once('<')?
                        .1
                        .split_once('>')
                        .map(|(u, _)| u.to_string())
                });
            let body = read_bounded(response, MAX_MANIFEST_BYTES, &url)?;
            let body: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| Error::Invalid {
                    url: url.clone(),
                    message: format!("the tag list is not JSON: {e}"),
                })?;
            tags.extend(
                body["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_string)),
            );
            // The next page on this registry only: credentials never go to another host.
            match link {
                Some(link) if link.starts_with('/') => next = format!("{}{link}", self.base),
                Some(link) if link.starts_with(&format!("{}/", self.base)) => next = link,
                _ => return Ok(tags),
            }
        }
        Ok(tags)
    }

    /// A blob, checked against its digest, of at most `max` bytes.
    pub fn blob(&mut self, digest: &str, max: u64) -> Result<Vec<u8>, Error> {
        let url = self.url(&format!("blobs/{digest}"));
        let response = self.send(&url, "read", |http| http.get(&url))?;
        let bytes = read_bounded(response, max, &url)?;
        let got = format!("sha256:{:x}", sha2::Sha256::digest(&bytes));
        if got != digest {
            return Err(Error::Invalid {
                url,
                message: format!("the blob's digest is {got}, not {digest}: refused"),
            });
        }
        Ok(bytes)
    }

    /// Uploads a blob (one monolithic upload) unless the registry has it; its digest.
    pub fn push_blob(&mut self, bytes: &[u8]) -> Result<String, Error> {
        let digest = format!("sha256:{:x}", sha2::Sha256::digest(bytes));
        let head = self.url(&format!("blobs/{digest}"));
        match self.send(&head, "push to", |http| http.head(&head)) {
            Ok(_) => return Ok(digest),
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let start = self.url("blobs/uploads/");
        let response = self.send(&start, "push to", |http| http.post(&start))?;
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Error::Invalid {
                url: start.clone(),
                message: "the upload answer has no Location".into(),
            })?;
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location.to_string()
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{separator}digest={digest}");
        let body = bytes.to_vec();
        self.send(&put, "push to", |http| {
            http.put(&put)
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(body.clone())
        })?;
        Ok(digest)
    }

    /// Puts a manifest under `tag`; its digest.
    pub fn push_manifest(
        &mut self,
        tag: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<String, Error> {
        let url = self.url(&format!("manifests/{tag}"));
        let body = bytes.to_vec();
        self.send(&url, "push to", |http| {
            http.put(&url)
                .header(CONTENT_TYPE, media_type)
                .body(body.clone())
        })?;
        Ok(format!("sha256:{:x}", sha2::Sha256::digest(bytes)))
    }
}

/// Pull tokens by registry, repository and user, with when they expire: a poll of an
/// unchanged tag on a token registry is then one request, as with basic auth.
static TOKENS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
> = std::sync::LazyLock::new(Default::default);

/// A token is reused only with the very credentials it was given for (a digest of user
/// and password: another tenant naming the same user with another password gets none).
fn token_key(base: &str, repository: &str, credentials: Option<&Credentials>) -> String {
    let who = credentials
        .map(|c| {
            let digest = sha2::Sha256::digest(format!("{}:{}", c.username, c.password));
            faster_hex::hex_string(&digest)
        })
        .unwrap_or_default();
    format!("{base}/{repository}@{who}")
}

fn cached_token(key: &str) -> Option<String> {
    let tokens = TOKENS.lock().unwrap_or_else(|e| e.into_inner());
    let (header, expires) = tokens.get(key)?;
    (*expires > std::time::Instant::now()).then(|| header.clone())
}

/// The Basic Authorization header of `credentials`.
fn basic(credentials: &Credentials) -> String {
    use base64::Engine as _;
    let pair = format!("{}:{}", credentials.username, credentials.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// `key="value", …` of a WWW-Authenticate challenge.
fn challenge_params(text: &str) -> std::collections::HashMap<String, String> {
    let mut params = std::collections::HashMap::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, tail) = if let Some(quoted) = after.strip_prefix('"') {
            quoted.split_once('"').unwrap_or((quoted, ""))
        } else {
            after.split_once(',').unwrap_or((after, ""))
        };
        params.insert(key, value.to_string());
        rest = tail.trim_start_matches(',').trim();
    }
    params
}

/// The first `errors[].message` of a registry's error body.
fn registry_message(body: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(body).ok()?;
    let error = &value["errors"][0];
    let code = error["code"].as_str().unwrap_or_default();
    let message = error["message"].as_str()?;
    Some(if code.is_empty() {
        message.to_string()
    } else {
        format!("{code}: {message}")
    })
}

fn read_bounded(response: Response, max: u64, url: &str) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let mut bytes = Vec::new();
    response
        .take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::Transport {
            url: url.to_string(),
            message: format!("reading the answer: {e}"),
        })?;
    if bytes.len() as u64 > max {
        return Err(Error::Invalid {
            url: url.to_string(),
            message: format!("more than {} MiB: refused", max >> 20),
        });
    }
    Ok(bytes)
}

/// A transport error with what to check: TLS (a CA, or --plain-http), or the connection.
fn transport(url: &str, error: &reqwest::Error) -> Error {
    let text = crate::error::chain(error);
    let hint = if text.contains("certificate") || text.contains("UnknownIssuer") {
        "; trust its CA (a CA file) if it is a private registry"
    } else if text.contains("InvalidContentType") || text.contains("CorruptMessage") {
        "; the registry may speak plain HTTP (--plain-http, plainHTTP: true)"
    } else if error.is_connect() {
        "; check the host and port"
    } else if error.is_timeout() {
        "; no answer in time"
    } else {
        ""
    };
    Error::Transport {
        url: url.to_string(),
        message: format!("{text}{hint}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_token_is_reused_only_with_the_credentials_it_was_given_for_and_until_it_expires() {
        use super::{Credentials, TOKENS, cached_token, token_key};
        let alice = Credentials {
            username: "alice".into(),
            password: "right".into(),
        };
        let wrong = Credentials {
            password: "wrong".into(),
            ..alice.clone()
        };
        let key = token_key("https://r.example", "team/web", Some(&alice));
        let later = std::time::Instant::now() + std::time::Duration::from_secs(60);
        TOKENS
            .lock()
            .unwrap()
            .insert(key.clone(), ("Bearer t".into(), later));
        assert_eq!(cached_token(&key).as_deref(), Some("Bearer t"));
        assert_eq!(
            cached_token(&token_key("https://r.example", "team/web", Some(&wrong))),
            None
        );
        assert_eq!(
            cached_token(&token_key("https://r.example", "team/api", Some(&alice))),
            None
        );
        assert_eq!(
            cached_token(&token_key("https://r.example", "team/web", None)),
            None
        );
        let past = std::time::Instant::now() - std::time::Duration::from_secs(1);
        TOKENS
            .lock()
            .unwrap()
            .insert(key.clone(), ("Bearer t".into(), past));
        assert_eq!(cached_token(&key), None);
    }

    #[test]
    fn challenges_and_registry_errors_are_read() {
        let params = super::challenge_params(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(params["realm"], "https://auth.example/token");
        assert_eq!(params["service"], "registry.example");
        assert_eq!(params["scope"], "repository:a/b:pull");
        assert_eq!(
            super::registry_message(
                r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#
            )
            .as_deref(),
            Some("MANIFEST_UNKNOWN: manifest unknown")
        );
    }
}
