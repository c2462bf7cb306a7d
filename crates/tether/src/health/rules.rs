//! Health rules for any kind as CEL expressions, in the form of Flux's `healthCheckExprs`:
//! for a group and kind, `inProgress`, `failed` and `current`, evaluated in that order against
//! the object (its top-level fields are the variables: `status`, `metadata`, `spec`, …),
//! after an `observedGeneration` behind `metadata.generation` says it is still in progress;
//! the first that holds decides (none: in progress). An expression that cannot be evaluated
//! (a field not there yet) leaves the object in progress and says why.
//!
//! Rules come from the Application (`spec.healthCheckExprs`), the agent or the command
//! (`--health-rules FILE`) and a library shipped with tether ([`library`], `library.yaml`),
//! searched in that order.

use std::sync::{Arc, OnceLock};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Health, HealthStatus};

/// One rule as written (Flux's field names).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, JsonSchema, Default)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckExpr {
    /// `group/version` (or `v1`); the rule holds for every version of the group.
    pub api_version: String,
    pub kind: String,
    /// True when the object is healthy.
    pub current: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_progress: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// A compiled rule, and where it was written (for messages).
pub struct Rule {
    group: String,
    kind: String,
    source: String,
    /// (name, text, program) in evaluation order: inProgress, failed, current.
    exprs: Vec<(&'static str, String, cel::Program, HealthStatus)>,
}

/// Rules searched in order (the first for a kind wins).
#[derive(Clone, Default)]
pub struct Rules(Vec<Arc<Rule>>);

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rules({})", self.0.len())
    }
}

fn env() -> &'static Arc<cel::Env> {
    static ENV: OnceLock<Arc<cel::Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = cel::Env::stdlib();
        // As Flux's environment: string and list functions, optional values (`a.?b`).
        let _ = env.add_extension(cel::extensions::strings);
        let _ = env.add_extension(cel::extensions::lists);
        Arc::new(env)
    })
}

impl Rules {
    /// Compiles `exprs` (from `source`, e.g. `spec.healthCheckExprs`); an error names the
    /// rule and the expression that does not parse.
    pub fn compile(exprs: &[HealthCheckExpr], source: &str) -> Result<Self, String> {
        let mut rules = Vec::new();
        for (index, expr) in exprs.iter().enumerate() {
            let at = format!("{source}[{index}] ({} {})", expr.api_version, expr.kind);
            if expr.kind.is_empty() || expr.api_version.is_empty() || expr.current.trim().is_empty()
            {
                return Err(format!("{at}: apiVersion, kind and current are required"));
            }
            let mut compiled = Vec::new();
            for (name, text, status) in [
                (
                    "inProgress",
                    expr.in_progress.as_deref(),
                    HealthStatus::Progressing,
                ),
                ("failed", expr.failed.as_deref(), HealthStatus::Degraded),
                (
                    "current",
                    Some(expr.current.as_str()),
                    HealthStatus::Healthy,
                ),
            ] {
                let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
                    continue;
                };
                // Rules are evaluated inline for every object: no loop of their own making
                // (`lists.range`), only over the object's own lists.
                if text.contains("range(") {
                    return Err(format!(
                        "{at}: {name}: lists.range is not allowed in a health rule"
                    ));
                }
                let program = env()
                    .compile(text)
                    .map_err(|e| format!("{at}: {name}: not a CEL expression: {e}"))?;
                compiled.push((name, text.to_string(), program, status));
            }
            let group = expr
                .api_version
                .split_once('/')
                .map(|(g, _)| g)
                .unwrap_or("")
                .to_string();
            rules.push(Arc::new(Rule {
                group,
                kind: expr.kind.clone(),
                source: source.to_string(),
                exprs: compiled,
            }));
        }
        Ok(Self(rules))
    }

    /// These rules, then `more`.
    pub fn then(&self, more: &Rules) -> Rules {
        Rules(self.0.iter().chain(&more.0).cloned().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The kinds these rules are for.
    pub fn kinds(&self) -> Vec<String> {
        self.0.iter().map(|r| r.kind.clone()).collect()
    }

    fn find(&self, group: &str, kind: &str) -> Option<&Rule> {
        self.0
            .iter()
            .find(|r| r.kind == kind && r.group == group)
            .map(Arc::as_ref)
    }
}

/// The rules shipped with tether (`library.yaml`): custom resources people run most.
pub fn library() -> &'static Rules {
    static LIBRARY: OnceLock<Rules> = OnceLock::new();
    LIBRARY.get_or_init(|| {
        let exprs: Vec<HealthCheckExpr> = serde_saphyr::from_str(include_str!("library.yaml"))
            .expect("the health rule library parses");
        Rules::compile(&exprs, "library").expect("the health rule library compiles")
    })
}

/// Rules for every Application and command of this process (`--health-rules`), set once at
/// start.
static GLOBAL: OnceLock<Rules> = OnceLock::new();

/// Sets this process's rules (the agent's or a command's `--health-rules`); a second call
/// is ignored.
pub fn set_global(rules: Rules) {
    let _ = GLOBAL.set(rules);
}

/// The rule for the object's kind: `first` (an Application's), then this process's.
pub(super) fn user_rule<'a>(first: &'a Rules, group: &str, kind: &str) -> Option<&'a Rule> {
    first
        .find(group, kind)
        .or_else(|| GLOBAL.get().and_then(|g| g.find(group, kind)))
}

/// The library's rule for the object's kind.
pub(super) fn library_rule(group: &str, kind: &str) -> Option<&'static Rule> {
    library().find(group, kind)
}

/// The object's health by `rule`.
pub(super) fn evaluate(rule: &Rule, obj: &Value) -> Health {
    let said = |status, what: &str| {
        Health::new(
            status,
            format!("{} rule for {}: {what}", rule.source, rule.kind),
        )
    };
    // A number, or a number written as a string (Argo Rollouts); a hash is not compared.
    let number = |v: &Value| v.as_i64().or_else(|| v.as_str()?.parse::<i64>().ok());
    let generation = obj.pointer("/metadata/generation").and_then(number);
    let observed = obj.pointer("/status/observedGeneration").and_then(number);
    if let (Some(generation), Some(observed)) = (generation, observed)
        && generation != observed
    {
        return said(
            HealthStatus::Progressing,
            &format!(
                "waiting for the controller to observe generation {generation} (seen {observed})"
            ),
        );
    }
    let mut context = cel::Context::with_env(env().clone());
    if let Value::Object(fields) = obj {
        for (name, value) in fields {
            match cel::to_value(value) {
                Ok(value) => context.add_variable_from_value(name.clone(), value),
                Err(e) => return said(HealthStatus::Unknown, &format!("cannot read {name}: {e}")),
            }
        }
    }
    for (name, _, program, status) in &rule.exprs {
        match program.execute(&context) {
            Ok(cel::Value::Bool(true)) => {
                let detail = detail(obj, *status);
                let detail = if detail.is_empty() {
                    String::new()
                } else {
                    format!(": {detail}")
                };
                return said(*status, &format!("{name}{detail}"));
            }
            Ok(cel::Value::Bool(false)) => {}
            Ok(other) => {
                // The type only: a value could be a Secret's.
                return said(
                    HealthStatus::Progressing,
                    &format!("{name} is not true or false but a {:?}", other.type_of()),
                );
            }
            Err(e) => {
                return said(
                    HealthStatus::Progressing,
                    &format!("{name} cannot be evaluated yet ({e})"),
                );
            }
        }
    }
    let detail = detail(obj, HealthStatus::Progressing);
    let detail = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    said(
        HealthStatus::Progressing,
        &format!("none of inProgress, failed, current holds yet{detail}"),
    )
}

/// What the object says of itself, for a rule's message: when healthy, its Ready condition's
/// message; else the first condition that is not True (its message, else its reason), else
/// `status.message`, `status.health.message` or `status.phase`.
fn detail(obj: &Value, status: HealthStatus) -> String {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    if status == HealthStatus::Healthy {
        return super::condition_message(obj, "Ready");
    }
    let conditions = obj.pointer("/status/conditions").and_then(Value::as_array);
    if let Some(condition) = conditions
        .into_iter()
        .flatten()
        .find(|c| c["status"] != "True" && (c["message"].is_string() || c["reason"].is_string()))
    {
        let said = text(&condition["message"]);
        let said = if said.is_empty() {
            text(&condition["reason"])
        } else {
            said
        };
        return format!(
            "{} {}: {said}",
            text(&condition["type"]),
            text(&condition["status"])
        );
    }
    ["/status/message", "/status/health/message", "/status/phase"]
        .iter()
        .filter_map(|pointer| obj.pointer(pointer).map(text))
        .find(|said| !said.is_empty())
        .unwrap_or_default()
}
