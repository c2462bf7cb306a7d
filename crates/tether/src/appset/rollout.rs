//! Staged rollouts (Argo CD's RollingSync), pure: which of a set's Applications may be
//! written now. Each Application belongs to the first step whose label expressions it
//! matches (those no step selects form a last step). A step is written only once every step
//! before it is settled (each of its Applications at the set's current template, Synced and
//! Healthy), and at most `maxUpdate` of its Applications are changing at once.

use std::collections::BTreeMap;

use crate::application::set::{RolloutStep, StepStatus};

/// One Application of the set as the rollout sees it.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// It exists and holds what the set makes now.
    pub current: bool,
    /// It is Synced and Healthy at its current spec.
    pub settled: bool,
}

/// What to write now, and each step's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    pub write: Vec<String>,
    pub steps: Vec<StepStatus>,
    /// A step is under way: look again soon.
    pub progressing: bool,
}

fn matches(step: &RolloutStep, labels: &BTreeMap<String, String>) -> Result<bool, String> {
    for expression in &step.match_expressions {
        let value = labels.get(&expression.key);
        let inside = value.is_some_and(|v| expression.values.contains(v));
        let holds = match expression.operator.as_str() {
            "In" => inside,
            "NotIn" => !inside,
            other => {
                return Err(format!(
                    "spec.strategy.rollingSync: operator {other:?}: use In or NotIn"
                ));
            }
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

/// How many of `total` may change at once (0: none, a gate opened by changing the set).
fn budget(step: Option<&RolloutStep>, total: usize) -> Result<usize, String> {
    let Some(max) = step.and_then(|s| s.max_update.as_ref()) else {
        return Ok(total);
    };
    let bad = || {
        format!("spec.strategy.rollingSync: maxUpdate {max}: a number or a percentage (\"25%\")")
    };
    let n = match max {
        serde_json::Value::Number(n) => n.as_u64().ok_or_else(bad)? as usize,
        serde_json::Value::String(s) => match s.strip_suffix('%') {
            Some(p) => {
                let p: usize = p.trim().parse().map_err(|_| bad())?;
                match p {
                    0 => 0,
                    p => (total * p / 100).max(1),
                }
            }
            None => s.trim().parse().map_err(|_| bad())?,
        },
        _ => return Err(bad()),
    };
    Ok(n)
}

/// The rollout of `members` through `steps`.
pub fn plan(steps: &[RolloutStep], members: &[Member]) -> Result<Rollout, String> {
    let mut groups: Vec<Vec<&Member>> = vec![Vec::new(); steps.len() + 1];
    for member in members {
        let mut at = steps.len();
        for (i, step) in steps.iter().enumerate() {
            if matches(step, &member.labels)? {
                at = i;
                break;
            }
        }
        groups[at].push(member);
    }
    let mut rollout = Rollout {
        write: Vec::new(),
        steps: Vec::new(),
        progressing: false,
    };
    let mut blocked = false;
    for (i, group) in groups.iter().enumerate() {
        if group.is_empty() && i == steps.len() {
            continue;
        }
        let applications = group.iter().map(|m| m.name.clone()).collect();
        let pending: Vec<&&Member> = group.iter().filter(|m| !m.current).collect();
        let changing = group.iter().filter(|m| m.current && !m.settled).count();
        let state = if blocked {
            "Waiting"
        } else if pending.is_empty() && changing == 0 {
            "Done"
        } else {
            let room = budget(steps.get(i), group.len())?.saturating_sub(changing);
            rollout
                .write
                .extend(pending.iter().take(room).map(|m| m.name.clone()));
            blocked = true;
            rollout.progressing = true;
            "Progressing"
        };
        rollout.steps.push(StepStatus {
            step: i as u32 + 1,
            state: state.into(),
            applications,
        });
    }
    Ok(rollout)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::set::LabelExpression;
    use serde_json::json;

    fn step(env: &str, max: Option<serde_json::Value>) -> RolloutStep {
        RolloutStep {
            match_expressions: vec![LabelExpression {
                key: "env".into(),
                operator: "In".into(),
                values: vec![env.into()],
            }],
            max_update: max,
        }
    }

    fn member(name: &str, env: &str, current: bool, settled: bool) -> Member {
        Member {
            name: name.into(),
            labels: [("env".to_string(), env.to_string())].into(),
            current,
            settled,
        }
    }

    #[test]
    fn steps_go_one_after_another_within_their_budget() {
        let steps = [step("dev", None), step("prod", Some(json!(1)))];
        // A change to all: only dev is written.
        let members = [
            member("dev-a", "dev", false, true),
            member("prod-a", "prod", false, true),
            member("prod-b", "prod", false, true),
            member("lab", "lab", false, true),
        ];
        let rollout = plan(&steps, &members).expect("plan");
        assert_eq!(rollout.write, ["dev-a"]);
        let states: Vec<&str> = rollout.steps.iter().map(|s| s.state.as_str()).collect();
        assert_eq!(states, ["Progressing", "Waiting", "Waiting"]);
        // dev written but not yet Healthy: nothing more.
        let members = [
            member("dev-a", "dev", true, false),
            member("prod-a", "prod", false, true),
            member("prod-b", "prod", false, true),
        ];
        assert!(plan(&steps, &members).expect("plan").write.is_empty());
        // dev settled: prod one at a time.
        let members = [
            member("dev-a", "dev", true, true),
            member("prod-a", "prod", false, true),
            member("prod-b", "prod", false, true),
        ];
        assert_eq!(plan(&steps, &members).expect("plan").write, ["prod-a"]);
        let members = [
            member("dev-a", "dev", true, true),
            member("prod-a", "prod", true, false),
            member("prod-b", "prod", false, true),
        ];
        assert!(plan(&steps, &members).expect("plan").write.is_empty());
        // Everything settled: done, nothing to write.
        let members = [
            member("dev-a", "dev", true, true),
            member("prod-a", "prod", true, true),
        ];
        let rollout = plan(&steps, &members).expect("plan");
        assert!(rollout.write.is_empty() && !rollout.progressing);
        assert_eq!(budget(Some(&step("x", Some(json!("50%")))), 5), Ok(2));
        assert_eq!(budget(Some(&step("x", Some(json!("10%")))), 3), Ok(1));
        assert!(budget(Some(&step("x", Some(json!("half")))), 3).is_err());
        // maxUpdate 0: a gate; the step waits, and so do those after it.
        let gated = [step("dev", Some(json!(0))), step("prod", None)];
        let members = [
            member("dev-a", "dev", false, true),
            member("prod-a", "prod", false, true),
        ];
        let rollout = plan(&gated, &members).expect("plan");
        assert!(rollout.write.is_empty());
        assert_eq!(rollout.steps[1].state, "Waiting");
    }
}
