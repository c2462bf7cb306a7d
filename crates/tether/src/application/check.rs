//! What the CRD's schema cannot say about a spec, checked before every sync: a malformed
//! spec is a condition naming the field.

use super::ApplicationSpec;

impl ApplicationSpec {
    /// What the CRD's schema cannot say: checked before every sync, so that a malformed
    /// spec is a condition naming the field (`Ready=False`), not a default used in silence.
    pub fn check(&self) -> Result<(), String> {
        use crate::duration::parse_duration;
        if self.source.repo_url.trim().is_empty() {
            return Err("spec.source.repoURL is empty; name the Git repository".into());
        }
        self.sync_policy.create_namespace()?;
        let reference = self.source.r#ref.as_ref_text()?;
        crate::source::reference::RefSpec::parse(&reference).map_err(
            |crate::source::reference::RefError::Invalid { reason, .. }| {
                format!("spec.source.ref {reference:?}: {reason}")
            },
        )?;
        if crate::source::tree::normalize(&self.source.path).is_none() {
            return Err(format!(
                "spec.source.path {:?} leaves the repository; give a folder inside it",
                self.source.path
            ));
        }
        if let Some(renderer) = self.render.renderer.as_deref()
            && !["", "auto", "directory", "kustomize", "helm"].contains(&renderer)
        {
            return Err(format!(
                "spec.render.renderer {renderer:?} is not auto, directory, kustomize or helm"
            ));
        }
        if let Some(lib) = self
            .render
            .jsonnet
            .libs
            .iter()
            .find(|l| crate::source::tree::normalize(l).is_none())
        {
            return Err(format!(
                "spec.render.jsonnet.libs: {lib:?} leaves the repository; give a folder inside it"
            ));
        }
        if let Some(file) = self
            .render
            .values_files
            .iter()
            .find(|f| crate::render::snapshot::inside("", f).is_none())
        {
            return Err(format!(
                "spec.render.valuesFiles: {file:?} leaves the repository; give a path inside it"
            ));
        }
        let namespace = &self.destination.namespace;
        let label = namespace.len() <= 63
            && namespace.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && namespace.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && namespace
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !label {
            return Err(format!(
                "spec.destination.namespace {namespace:?} is not a namespace name (lower-case letters, digits and '-', at most 63)"
            ));
        }
        match parse_duration(&self.sync_policy.interval) {
            Ok(interval) if interval.is_zero() => {
                return Err("spec.syncPolicy.interval is 0; give one like 1m".into());
            }
            Ok(_) => {}
            Err(e) => return Err(format!("spec.syncPolicy.interval: {e}")),
        }
        parse_duration(&self.sync_policy.retry.backoff)
            .map_err(|e| format!("spec.syncPolicy.retry.backoff: {e}"))?;
        if let Some(status) = &self.commit_status {
            // The request itself says what else is wrong (no host, no repository).
            let probe = super::commit_status::Status {
                commit: String::new(),
                state: super::commit_status::State::Success,
                description: String::new(),
                context: String::new(),
            };
            super::commit_status::request_for(status, &self.source.repo_url, &probe)?;
        }
        crate::plan::ignore::check(&self.ignore_differences, "spec.ignoreDifferences")?;
        self.health_rules().map(|_| ())
    }

    /// The Application's health rules, compiled (`spec.healthCheckExprs`); an error names
    /// the rule and the expression that does not parse.
    pub fn health_rules(&self) -> Result<crate::health::rules::Rules, String> {
        crate::health::rules::Rules::compile(&self.health_check_exprs, "spec.healthCheckExprs")
    }
}
