//! Rendering the template of an ApplicationSet for one parameter set: every `{{param}}`,
//! `{{ param }}`, `{{.param}}` or `{{ .param }}` in any string of the template's metadata
//! and spec is replaced by the parameter's text (Argo CD's fasttemplate and Go template
//! spellings of a plain parameter); a placeholder no generator gives is an error.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use super::Params;
use crate::application::set::Template;

static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\{\{\s*\.?([A-Za-z0-9_\-\[\]\.]+)\s*\}\}").expect("a valid pattern")
});

/// The Application one parameter set makes: its name, labels, annotations and spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub spec: Value,
}

/// Renders `template` with `params`.
pub fn render(template: &Template, params: &Params) -> Result<Rendered, String> {
    let text = |s: &str| substitute(s, params);
    let name = text(&template.metadata.name)?;
    if name.is_empty() {
        return Err(
            "template.metadata.name is empty: give each Application a name, e.g. '{{name}}-app'"
                .into(),
        );
    }
    let mut labels = BTreeMap::new();
    for (k, v) in &template.metadata.labels {
        labels.insert(text(k)?, text(v)?);
    }
    let mut annotations = BTreeMap::new();
    for (k, v) in &template.metadata.annotations {
        annotations.insert(text(k)?, text(v)?);
    }
    let mut spec = template.spec.clone();
    substitute_all(&mut spec, params)?;
    Ok(Rendered {
        name,
        labels,
        annotations,
        spec,
    })
}

fn substitute_all(value: &mut Value, params: &Params) -> Result<(), String> {
    match value {
        Value::String(s) => *s = substitute(s, params)?,
        Value::Array(items) => {
            for item in items {
                substitute_all(item, params)?;
            }
        }
        Value::Object(fields) => {
            for (_, field) in fields.iter_mut() {
                substitute_all(field, params)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn substitute(text: &str, params: &Params) -> Result<String, String> {
    let mut missing = None;
    let out = PLACEHOLDER.replace_all(text, |caps: &regex::Captures<'_>| {
        let key = &caps[1];
        match params.get(key) {
            Some(value) => value.clone(),
            None => {
                missing.get_or_insert_with(|| key.to_string());
                String::new()
            }
        }
    });
    match missing {
        Some(key) => {
            let known: Vec<&str> = params.keys().map(String::as_str).collect();
            Err(format!(
                "the template uses {{{{{key}}}}}, which its generator does not give (it gives: {})",
                known.join(", ")
            ))
        }
        None => Ok(out.into_owned()),
    }
}
