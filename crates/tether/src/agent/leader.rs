//! Leader election with a `coordination.k8s.io` Lease, so that of several agents only one
//! acts and another takes over within the lease duration when it dies.
//!
//! The holder renews the Lease every `renew_every`; a candidate takes it once
//! `renewTime + leaseDurationSeconds` has passed. Every write carries the resourceVersion it
//! read, so two candidates can never both win. Start at [`Election::lead`].

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

#[derive(Debug, Clone)]
pub struct ElectionOptions {
    /// The Lease's namespace and name.
    pub namespace: String,
    pub name: String,
    /// Who this agent is (default: host name and process id).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
    /// Annotations written on the Lease with each renewal (what sharded agents tell each
    /// other through their membership Leases).
    pub annotations: std::collections::BTreeMap<String, String>,
}

impl ElectionOptions {
    pub fn new(namespace: impl Into<String>) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "tether".into());
        Self {
            namespace: namespace.into(),
            name: "tether-agent".into(),
            identity: format!("{host}-{}", std::process::id()),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            annotations: Default::default(),
        }
    }
}

pub struct Election {
    api: Api<Lease>,
    options: ElectionOptions,
}

impl Election {
    pub fn new(client: kube::Client, options: ElectionOptions) -> Self {
        Self {
            api: Api::namespaced(client, &options.namespace),
            options,
        }
    }

    /// The Leases' API (in the Lease's namespace).
    pub fn api(&self) -> &Api<Lease> {
        &self.api
    }

    /// The Lease's name.
    pub fn name(&self) -> &str {
        &self.options.name
    }

    /// Waits until this agent holds the Lease, then keeps renewing it; the returned future
    /// completes when the lease is lost (a renewal failed for longer than the duration).
    pub async fn lead(self) -> impl std::future::Future<Output = ()> + Send {
        loop {
            match self.try_acquire().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(err) => tracing::warn!(%err, "cannot read or write the leader Lease"),
            }
            tokio::time::sleep(self.options.renew_every).await;
        }
        tracing::info!(identity = %self.options.identity, "leading");
        async move {
            let mut last_renewal = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(self.options.renew_every).await;
                match self.try_acquire().await {
                    Ok(true) => last_renewal = tokio::time::Instant::now(),
                    Ok(false) => {
                        tracing::warn!("another agent holds the Lease now");
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(%err, "cannot renew the leader Lease");
                        if last_renewal.elapsed() >= self.options.lease_duration {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Takes or renews the Lease; `false` when someone else holds a live one.
    pub async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let me = &self.options.identity;
        let seconds = self.options.lease_duration.as_secs().max(1) as i32;
        let annotations =
            (!self.options.annotations.is_empty()).then(|| self.options.annotations.clone());
        let Some(mut lease) = self.api.get_opt(&self.options.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.options.name.clone()),
                    annotations,
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(me.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(err) => Err(err),
            };
        };
        let expired = expired_for(&lease, now).is_some();
        if let Some(annotations) = annotations {
            lease
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .extend(annotations);
        }
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().unwrap_or_default();
        if holder != *me && !holder.is_empty() && !expired {
            return Ok(false);
        }
        if holder != *me {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(me.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(MicroTime(now));
        // The resourceVersion read above makes this fail if anyone wrote in between.
        match self
            .api
            .replace(&self.options.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        }
    }
}

/// How long ago `lease` expired (`renewTime + leaseDurationSeconds` before `now`); `None`
/// while it is live. A Lease without those fields counts as long expired.
pub(crate) fn expired_for(lease: &Lease, now: Timestamp) -> Option<Duration> {
    let Some(spec) = lease.spec.as_ref() else {
        return Some(Duration::MAX);
    };
    let (Some(MicroTime(renewed)), Some(seconds)) = (&spec.renew_time, spec.lease_duration_seconds)
    else {
        return Some(Duration::MAX);
    };
    let Ok(deadline) = renewed.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(
        i64::from(seconds),
    )) else {
        return Some(Duration::MAX);
    };
    if deadline >= now {
        return None;
    }
    Some(Duration::try_from(now.duration_since(deadline)).unwrap_or(Duration::ZERO))
}
