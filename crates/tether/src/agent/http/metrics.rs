//! The agent's Prometheus metrics ([`Metrics`]): every family registered once, under the
//! `tether_` prefix, and served at `/metrics` ([`super::router`]).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// The agent's metrics, registered once.
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: Family<ResultLabels, Counter>,
    pub reconcile_seconds: Histogram,
    pub reconciles_waiting: Family<ClassLabels, Gauge>,
    pub git_fetch_seconds: Histogram,
    pub renders_skipped: Counter,
    pub applied: Family<ActionLabels, Counter>,
    pub drift_corrections: Counter,
    pub drift_missed: Counter,
    pub drift_verifications: Counter,
    pub applications: Family<StateLabels, Gauge>,
    pub webhooks: Family<WebhookLabels, Counter>,
    pub notifications: Family<ResultLabels, Counter>,
    pub notifications_dead: Counter,
    pub shards_held: Gauge,
    pub commit_statuses: Family<ResultLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    pub action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub sync: String,
    pub health: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub provider: String,
    pub result: String,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tether");
        let r = &mut registry;
        let buckets = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        // In the order they are registered, which is the order /metrics lists them.
        Self {
            reconciles: add(r, "reconciles", "Reconciles of Applications, by result"),
            reconcile_seconds: registered(
                r,
                "reconcile_duration_seconds",
                "Time of one reconcile",
                Histogram::new(buckets),
            ),
            reconciles_waiting: add(
                r,
                "reconciles_waiting",
                "Reconciles waiting for one of the --concurrency slots, by class: urgent (the Application is new or changed, a sync was asked for, drift was seen, a push changed its folder) or routine (a poll at the interval, a retry, another Application a push woke); urgent ones go first",
            ),
            git_fetch_seconds: registered(
                r,
                "git_fetch_duration_seconds",
                "Time to resolve and fetch a revision",
                Histogram::new(buckets),
            ),
            renders_skipped: add(
                r,
                "renders_skipped",
                "Renders not needed: a new revision holds, at every path the render of what is applied read, what it read (plain YAML and Jsonnet folders; kustomize and helm read a copy of the whole repository)",
            ),
            applied: add(
                r,
                "objects_applied",
                "Objects created, updated or pruned by the agent",
            ),
            drift_corrections: add(
                r,
                "drift_corrections",
                "Syncs started because an owned object was changed by hand",
            ),
            drift_missed: add(
                r,
                "drift_missed",
                "Objects whose drift the watches missed and a full plan found (a bug: please report it)",
            ),
            drift_verifications: add(
                r,
                "drift_verifications",
                "Full plans of an unchanged render that checked what the watches vouched for (the backstop)",
            ),
            applications: add(r, "applications", "Applications by sync state and health"),
            webhooks: add(r, "webhooks", "Webhook requests, by provider and result"),
            notifications: add(
                r,
                "notifications",
                "Notification attempts (POSTs to --notify URLs), by result: delivered, or failed (retried unless it was the last attempt)",
            ),
            notifications_dead: add(
                r,
                "notifications_dead_letter",
                "Notifications given up after every retry failed",
            ),
            shards_held: add(
                r,
                "shards_held",
                "Shards whose Lease this agent holds (with --shards; it reconciles only their Applications)",
            ),
            commit_statuses: add(
                r,
                "commit_statuses",
                "Attempts to set a commit status on a Git host (spec.commitStatus), by result: set, or failed (retried twice)",
            ),
            registry,
        }
    }
}

/// Registers a new metric of type `M` as `name` with `help`; returns it.
fn add<M: Metric + Clone + Default>(registry: &mut Registry, name: &str, help: &str) -> M {
    registered(registry, name, help, M::default())
}

/// Registers `metric` as `name` with `help`; returns it (a handle on the same metric).
fn registered<M: Metric + Clone>(registry: &mut Registry, name: &str, help: &str, metric: M) -> M {
    registry.register(name, help, metric.clone());
    metric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_listed_with_its_name_and_help_in_registration_order() {
        let metrics = Metrics::default();
        metrics.drift_missed.inc();
        // A family is listed once it has a member.
        let result = ResultLabels {
            result: "ok".into(),
        };
        metrics.reconciles.get_or_create(&result).inc();
        metrics.notifications.get_or_create(&result).inc();
        metrics.commit_statuses.get_or_create(&result).inc();
        let action = ActionLabels {
            action: "created".into(),
        };
        metrics.applied.get_or_create(&action).inc();
        let state = StateLabels {
            sync: "Synced".into(),
            health: "Healthy".into(),
        };
        metrics.applications.get_or_create(&state).set(1);
        let webhook = WebhookLabels {
            provider: "github".into(),
            result: "accepted".into(),
        };
        metrics.webhooks.get_or_create(&webhook).inc();
        let class = ClassLabels {
            class: "urgent".into(),
        };
        metrics.reconciles_waiting.get_or_create(&class).set(0);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &metrics.registry).expect("encodes");
        let helps: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# HELP "))
            .collect();
        let names: Vec<&str> = helps.iter().filter_map(|h| h.split(' ').next()).collect();
        assert_eq!(
            names,
            [
                "tether_reconciles",
                "tether_reconcile_duration_seconds",
                "tether_reconciles_waiting",
                "tether_git_fetch_duration_seconds",
                "tether_renders_skipped",
                "tether_objects_applied",
                "tether_drift_corrections",
                "tether_drift_missed",
                "tether_drift_verifications",
                "tether_applications",
                "tether_webhooks",
                "tether_notifications",
                "tether_notifications_dead_letter",
                "tether_shards_held",
                "tether_commit_statuses",
            ]
        );
        assert!(
            helps.iter().any(|h| h.starts_with(
                "tether_drift_missed Objects whose drift the watches missed and a full plan found (a bug: please report it)"
            )),
            "{text}"
        );
        assert!(text.contains("tether_drift_missed_total 1"), "{text}");
    }
}
