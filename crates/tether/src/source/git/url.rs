//! The rules for a Git URL: a local path becomes `file://`, a password in a URL is refused,
//! and a URL shown in a message has its password masked. Pure but for the path lookup.

use std::path::Path;

use gix::bstr::ByteSlice;

use super::Error;

/// A local path becomes a `file://` URL; credentials in a URL are refused.
pub(super) fn normalize_url(given: &str) -> Result<gix::Url, Error> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: given.to_string(),
        reason,
    };
    let looks_local = given.starts_with('/') || given.starts_with('.') || Path::new(given).exists();
    let text = if looks_local && !given.contains("://") {
        let path = std::fs::canonicalize(given).map_err(|e| invalid(format!("{e}")))?;
        format!("file://{}", path.display())
    } else {
        given.to_string()
    };
    let url =
        gix::Url::from_bytes(text.as_bytes().as_bstr()).map_err(|e| invalid(e.to_string()))?;
    if url.password().is_some() {
        return Err(Error::CredentialsInUrl { url: redact(given) });
    }
    Ok(url)
}

/// The normalised form of `given` that keys caches and listings, when it is a valid URL.
pub(super) fn display_url(given: &str) -> Option<String> {
    normalize_url(given)
        .ok()
        .map(|url| url.to_bstring().to_string())
}

/// `https://user:secret@host/x` → `https://user:***@host/x`, for messages only.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_refused_and_redacted() {
        let err = normalize_url("https://bob:hunter2@git.example.com/repo.git")
            .expect_err("password in URL");
        let text = err.to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            text.contains("https://bob:***@git.example.com/repo.git"),
            "{text}"
        );
        assert!(
            normalize_url("https://bob@git.example.com/repo.git").is_ok(),
            "a user alone is fine"
        );
    }

    #[test]
    fn scp_like_and_local_paths_are_urls() {
        let url = normalize_url("git@github.com:org/deploy.git").expect("scp-like");
        assert_eq!(url.scheme, gix::url::Scheme::Ssh);
        let here = normalize_url(".").expect("local path");
        assert_eq!(here.scheme, gix::url::Scheme::File);
    }
}
