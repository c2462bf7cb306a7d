//! Image updates written back to Git: each policy of an Application picks a tag of an image
//! from its registry ([`choose`], pure; [`scan`] asks the registry), [`setters`] rewrites
//! the marked fields and kustomization `images:` of the files, and [`writeback`] commits
//! and pushes them with the real `git`; the next sync applies the commit like any other.

pub mod setters;
pub mod writeback;

use crate::application::{ImagePolicy, ImageUpdates};
use crate::source::oci::{self, OciUrl};
use crate::source::reference::SemverRange;

/// What a policy picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The policy's name.
    pub policy: String,
    /// The image repository, as written in Pods (`registry.example/team/web`).
    pub image: String,
    pub tag: String,
    /// `sha256:…` when the policy pins digests.
    pub digest: Option<String>,
}

impl Chosen {
    /// `image:tag`, with `@digest` when pinned.
    pub fn reference(&self) -> String {
        match &self.digest {
            Some(digest) => format!("{}:{}@{digest}", self.image, self.tag),
            None => format!("{}:{}", self.image, self.tag),
        }
    }
}

/// Checks the policies as written (one rule each, a valid range or pattern, unique names).
pub fn check(updates: &ImageUpdates) -> Result<(), String> {
    let mut names = std::collections::BTreeSet::new();
    for (index, policy) in updates.policies.iter().enumerate() {
        let at = format!("spec.imageUpdates.policies[{index}]");
        if policy.name.is_empty() || !names.insert(policy.name.as_str()) {
            return Err(format!("{at}.name is empty or used twice"));
        }
        registry_url(&policy.image).map_err(|e| format!("{at}.image: {e}"))?;
        Rule::of(policy).map_err(|e| format!("{at}: {e}"))?;
    }
    Ok(())
}

/// The registry repository of an image as written in a Pod: a first part with a `.` or `:`
/// (or `localhost`) is the registry, else Docker Hub (`library/` for one-part names).
pub fn registry_url(image: &str) -> Result<OciUrl, String> {
    if image.contains('@')
        || image
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'))
    {
        return Err(format!(
            "{image:?} names a tag or digest: give the repository only"
        ));
    }
    let (first, rest) = image.split_once('/').unwrap_or(("", image));
    let url = if matches!(first, "docker.io" | "index.docker.io") {
        let path = if rest.contains('/') {
            rest.to_string()
        } else {
            format!("library/{rest}")
        };
        format!("oci://registry-1.docker.io/{path}")
    } else if first.contains('.') || first.contains(':') || first == "localhost" {
        format!("oci://{image}")
    } else if first.is_empty() {
        format!("oci://registry-1.docker.io/library/{rest}")
    } else {
        format!("oci://registry-1.docker.io/{image}")
    };
    OciUrl::parse(&url).map_err(|e| e.to_string())
}

/// A policy's rule over tags.
enum Rule {
    Semver(SemverRange),
    Numerical { ascending: bool },
    Alphabetical { ascending: bool },
}

impl Rule {
    fn of(policy: &ImagePolicy) -> Result<(Self, Option<(regex::Regex, String)>), String> {
        let rules = &policy.policy;
        let order = |o: &Option<crate::application::OrderPolicy>| -> Result<bool, String> {
            match o.as_ref().and_then(|o| o.order.as_deref()) {
                None | Some("asc") => Ok(true),
                Some("desc") => Ok(false),
                Some(other) => Err(format!("order {other:?} is not asc or desc")),
            }
        };
        let rule = match (&rules.semver, &rules.numerical, &rules.alphabetical) {
            (Some(semver), None, None) => Rule::Semver(
                SemverRange::parse(&semver.range)
                    .map_err(|e| format!("policy.semver.range {:?}: {e}", semver.range))?,
            ),
            (None, Some(_), None) => Rule::Numerical {
                ascending: order(&rules.numerical)?,
            },
            (None, None, Some(_)) => Rule::Alphabetical {
                ascending: order(&rules.alphabetical)?,
            },
            _ => {
                return Err("policy needs exactly one of semver, numerical or alphabetical".into());
            }
        };
        let filter = match &policy.filter_tags {
            Some(filter) => Some((
                regex::Regex::new(&filter.pattern)
                    .map_err(|e| format!("filterTags.pattern: {e}"))?,
                filter.extract.clone().unwrap_or_else(|| "$0".into()),
            )),
            None => None,
        };
        Ok((rule, filter))
    }
}

/// The tag `policy` picks among `tags`; an error says why none qualifies (what the rule
/// was and some of the tags seen).
pub fn choose(policy: &ImagePolicy, tags: &[String]) -> Result<String, String> {
    let (rule, filter) = Rule::of(policy)?;
    let candidates: Vec<(String, String)> = tags
        .iter()
        // Only what OCI allows in a tag is ever written to Git (a registry's answer is not
        // trusted to be YAML-safe).
        .filter(|tag| is_tag(tag))
        .filter_map(|tag| match &filter {
            Some((pattern, extract)) => {
                let captures = pattern.captures(tag)?;
                let mut value = String::new();
                captures.expand(extract, &mut value);
                Some((tag.clone(), value))
            }
            None => Some((tag.clone(), tag.clone())),
        })
        .collect();
    let best = match rule {
        Rule::Semver(range) => {
            let values: Vec<&str> = candidates.iter().map(|(_, v)| v.as_str()).collect();
            range
                .best(values.iter().copied())
                .and_then(|(value, _)| candidates.iter().find(|(_, v)| v == value))
        }
        Rule::Numerical { ascending } => candidates
            .iter()
            .filter_map(|c| Some((c.1.parse::<f64>().ok()?, c)))
            .max_by(|a, b| {
                let order = a.0.total_cmp(&b.0);
                if ascending { order } else { order.reverse() }
            })
            .map(|(_, c)| c),
        Rule::Alphabetical { ascending } => candidates.iter().max_by(|a, b| {
            let order = a.1.cmp(&b.1);
            if ascending { order } else { order.reverse() }
        }),
    };
    best.map(|(tag, _)| tag.clone()).ok_or_else(|| {
        let shown: Vec<&str> = tags.iter().take(10).map(String::as_str).collect();
        format!(
            "no tag of {} qualifies under policy {:?} (tags seen: {}{})",
            policy.image,
            policy.name,
            if shown.is_empty() {
                "none".into()
            } else {
                shown.join(", ")
            },
            if tags.len() > 10 { ", …" } else { "" }
        )
    })
}

/// A tag as OCI's distribution spec writes them: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    tag.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Asks the registry for the tags of the policy's image and picks one (with its digest
/// when pinned). Blocking.
pub fn scan(policy: &ImagePolicy, options: &oci::Options) -> Result<Chosen, String> {
    let url = registry_url(&policy.image)?;
    let mut client = oci::client::Client::new(&url, options).map_err(|e| e.to_string())?;
    let tags = client.tags().map_err(|e| e.to_string())?;
    let tag = choose(policy, &tags)?;
    let digest = if policy.pin_digest {
        Some(client.manifest(&tag).map_err(|e| e.to_string())?.digest)
    } else {
        None
    };
    Ok(Chosen {
        policy: policy.name.clone(),
        image: policy.image.clone(),
        tag,
        digest,
    })
}

/// The commit message for `changes`: the image, the old and the new value of each.
pub fn commit_message(changes: &[setters::Change]) -> String {
    let mut seen = std::collections::BTreeSet::new();
    let lines: Vec<String> = changes
        .iter()
        .map(|c| {
            // A whole reference is shown by its tag (and digest).
            let short = |value: &str| {
                value
                    .strip_prefix(&format!("{}:", c.image))
                    .unwrap_or(value)
                    .to_string()
            };
            let old = if c.old.is_empty() {
                "(unset)".to_string()
            } else {
                short(&c.old)
            };
            format!("{}: {old} -> {}", c.image, short(&c.new))
        })
        .filter(|line| seen.insert(line.clone()))
        .collect();
    let subject = match lines.as_slice() {
        [one] => format!("Update image {one}"),
        _ => format!("Update {} image references", lines.len()),
    };
    let files: std::collections::BTreeSet<&str> = changes.iter().map(|c| c.file.as_str()).collect();
    format!(
        "{subject}\n\n{}\n\nFiles: {}\n",
        lines.join("\n"),
        files.into_iter().collect::<Vec<_>>().join(", ")
    )
}

#[cfg(test)]
mod tests;
