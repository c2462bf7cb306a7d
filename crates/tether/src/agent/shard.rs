//! Sharding: several agents split the Applications among themselves through Leases, so that
//! each Application is reconciled by exactly one agent at a time and a dead agent's share
//! moves to the others within the lease duration.
//!
//! An Application belongs to shard `hash(namespace/name) mod shards`. Each shard is a Lease
//! (`tether-shard-<i>`); an agent acts on an Application only while it holds that shard's
//! Lease. Which agent should hold a shard is decided by rendezvous hashing over the live
//! agents, each of which keeps a membership Lease (`tether-member-<hash of identity>`)
//! renewed: when an agent joins or leaves, only the shards whose top choice changes move.
//! An agent gives a shard up only once its reconciles in that shard have finished, and
//! stops acting on a shard it could not renew before the Lease could be taken by another.
//! Start at [`Shards::run`] and [`Shards::begin`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{ListParams, PostParams};
use sha2::Digest;

use futures::StreamExt;

use super::leader::{Election, ElectionOptions, expired_for};

const SHARD_PREFIX: &str = "tether-shard-";
const MEMBER_PREFIX: &str = "tether-member-";
/// On a membership Lease: the number of shards that agent splits the Applications into.
const SHARDS_ANNOTATION: &str = "tether.dev/shards";
/// A member Lease expired this long is deleted by whoever sees it (agents that died leave
/// one each).
const MEMBER_GARBAGE_AFTER: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// Where the shard and membership Leases live.
    pub namespace: String,
    /// How many shards the Applications are split into (the same on every agent; more
    /// shards than agents spreads them more evenly).
    pub shards: u32,
    /// Who this agent is (default: host name and process id).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

impl ShardOptions {
    pub fn new(namespace: impl Into<String>, shards: u32) -> Self {
        let election = ElectionOptions::new("");
        Self {
            namespace: namespace.into(),
            shards: shards.max(1),
            identity: election.identity,
            lease_duration: election.lease_duration,
            renew_every: election.renew_every,
        }
    }

    fn lease(&self, name: String) -> ElectionOptions {
        ElectionOptions {
            namespace: self.namespace.clone(),
            name,
            identity: self.identity.clone(),
            lease_duration: self.lease_duration,
            renew_every: self.renew_every,
            annotations: Default::default(),
        }
    }
}

/// The shard of the Application `namespace/name`.
pub fn shard_of(key: &str, shards: u32) -> u32 {
    (first_u64(key.as_bytes()) % u64::from(shards.max(1))) as u32
}

fn first_u64(bytes: &[u8]) -> u64 {
    let digest = sha2::Sha256::digest(bytes);
    u64::from_be_bytes(digest[..8].try_into().expect("a digest has 32 bytes"))
}

/// The member that should hold `shard`: the highest of hash(member, shard) (rendezvous
/// hashing), so one member joining or leaving moves only the shards it wins or held.
pub fn owner_of(shard: u32, members: &[String]) -> Option<&String> {
    members
        .iter()
        .max_by_key(|member| (first_u64(format!("{member}/{shard}").as_bytes()), *member))
}

/// The name of the membership Lease of `identity` (Lease names allow only a few
/// characters; identities are host names and numbers, but need not be).
fn member_lease(identity: &str) -> String {
    let digest = sha2::Sha256::digest(identity.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{MEMBER_PREFIX}{hex}")
}

#[derive(Default)]
struct State {
    /// Shard → when this agent last took or renewed its Lease.
    held: HashMap<u32, Instant>,
    /// Shard → reconciles running in it.
    in_flight: HashMap<u32, usize>,
    /// Shards given up whose Lease is released once their reconciles finish.
    releasing: std::collections::HashSet<u32>,
}

pub struct Shards {
    options: ShardOptions,
    api: Api<Lease>,
    state: Mutex<State>,
    /// Wakes a release waiting for a shard's reconciles to finish.
    finished: tokio::sync::Notify,
}

/// A reconcile running in a shard this agent holds; the shard is not given up while one
/// is alive.
pub struct ShardGuard {
    shards: Arc<Shards>,
    shard: u32,
    key: String,
    began: SystemTime,
}

impl Drop for ShardGuard {
    fn drop(&mut self) {
        {
            let mut state = self.shards.state.lock().expect("not poisoned");
            if let Some(count) = state.in_flight.get_mut(&self.shard) {
                *count = count.saturating_sub(1);
            }
        }
        self.shards.finished.notify_waiters();
        let micros = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_micros())
                .unwrap_or(0)
        };
        tracing::debug!(
            target: "tether::shard",
            agent = %self.shards.options.identity,
            application = %self.key,
            shard = self.shard,
            began = micros(self.began),
            ended = micros(SystemTime::now()),
            "reconciled in shard"
        );
    }
}

/// What happened to a shard, for [`Shards::run`]'s caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardEvent {
    /// This agent took the shard: its Applications, skipped until now, are its to reconcile.
    Taken,
    /// This agent gave the shard up: another reconciles its Applications now.
    GivenUp,
}

/// What [`Shards::begin`] found.
pub enum Begin {
    /// This agent holds the shard: act, keeping the guard while the reconcile runs.
    Act(ShardGuard),
    /// Another agent's shard (or none's yet): this agent is told when it takes it.
    NotHeld,
    /// This agent holds the shard but could not renew its Lease lately: try again soon.
    Stale,
}

impl Shards {
    pub fn new(client: kube::Client, options: ShardOptions) -> Arc<Self> {
        Arc::new(Self {
            api: Api::namespaced(client, &options.namespace),
            options,
            state: Default::default(),
            finished: Default::default(),
        })
    }

    pub fn options(&self) -> &ShardOptions {
        &self.options
    }

    /// Whether this agent may act on Application `key` now. The shard's Lease must have
    /// been renewed within the lease duration less one renewal period, so that an agent cut
    /// off from the API server stops acting before anyone else may take its shard.
    pub fn begin(self: &Arc<Self>, key: &str) -> Begin {
        let shard = shard_of(key, self.options.shards);
        let mut state = self.state.lock().expect("not poisoned");
        match self.fresh(&state, shard) {
            None => Begin::NotHeld,
            Some(false) => Begin::Stale,
            Some(true) => {
                *state.in_flight.entry(shard).or_default() += 1;
                Begin::Act(ShardGuard {
                    shards: self.clone(),
                    shard,
                    key: key.to_string(),
                    began: SystemTime::now(),
                })
            }
        }
    }

    /// Whether this agent holds the shard of Application `key` and may act on it now.
    pub fn holds(&self, key: &str) -> bool {
        let state = self.state.lock().expect("not poisoned");
        self.fresh(&state, shard_of(key, self.options.shards)) == Some(true)
    }

    /// `None` when this agent does not hold `shard`; else whether its Lease was renewed
    /// recently enough to act.
    fn fresh(&self, state: &State, shard: u32) -> Option<bool> {
        let fresh_for = self
            .options
            .lease_duration
            .saturating_sub(self.options.renew_every);
        let renewed = state.held.get(&shard)?;
        Some(renewed.elapsed() < fresh_for)
    }

    /// The shards this agent holds, in order.
    pub fn held(&self) -> Vec<u32> {
        let mut held: Vec<u32> = self
            .state
            .lock()
            .expect("not poisoned")
            .held
            .keys()
            .copied()
            .collect();
        held.sort();
        held
    }

    fn lease(&self, shard: u32) -> Election {
        Election::new(
            self.api.clone().into_client(),
            self.options.lease(format!("{SHARD_PREFIX}{shard}")),
        )
    }

    /// Keeps this agent's membership and its shards' Leases, every `renew_every`: takes the
    /// shards rendezvous hashing gives it (once free or expired), renews them, and gives up
    /// those that should move to another agent once their reconciles have finished.
    /// `changed(shard, how)` is told of each shard taken or given up. Runs until dropped.
    pub async fn run(self: Arc<Self>, changed: impl Fn(u32, ShardEvent)) {
        let mut membership = self.options.lease(member_lease(&self.options.identity));
        membership
            .annotations
            .insert(SHARDS_ANNOTATION.into(), self.options.shards.to_string());
        let member = Election::new(self.api.clone().into_client(), membership);
        let mut disagreed = false;
        loop {
            if let Err(err) = member.try_acquire().await {
                tracing::warn!(%err, "cannot renew this agent's membership Lease");
            }
            match self.members().await {
                Ok((members, others)) => {
                    // Agents that split the Applications into a different number of shards
                    // would each take a Lease of their own for one Application (a rolling
                    // update that changes --shards): until they agree, none acts.
                    let agreed = others.is_empty();
                    if !agreed && !disagreed {
                        tracing::error!(shards = self.options.shards, others = %others.join(", "),
                            "live agents use another --shards; no agent acts until all use the same");
                    }
                    if agreed && disagreed {
                        tracing::info!("every live agent uses the same --shards again");
                    }
                    disagreed = !agreed;
                    let members = if agreed { members } else { Vec::new() };
                    self.balance(&members, &changed).await;
                }
                Err(err) => tracing::warn!(%err, "cannot list the agents' membership Leases"),
            }
            tokio::time::sleep(self.options.renew_every).await;
        }
    }

    /// The identities of the agents whose membership Lease is live (this one included),
    /// and the live agents that announce another number of shards ("identity: N").
    async fn members(&self) -> Result<(Vec<String>, Vec<String>), kube::Error> {
        let now = Timestamp::now();
        let mut members = vec![self.options.identity.clone()];
        let mut others = Vec::new();
        for lease in self.api.list(&ListParams::default()).await?.items {
            let Some(name) = lease.metadata.name.clone() else {
                continue;
            };
            if !name.starts_with(MEMBER_PREFIX) {
                continue;
            }
            let Some(holder) = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty())
            else {
                continue;
            };
            match expired_for(&lease, now) {
                None => {
                    let shards = lease
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(SHARDS_ANNOTATION))
                        .cloned()
                        .unwrap_or_default();
                    if shards != self.options.shards.to_string() {
                        others.push(format!("{holder}: {shards}"));
                    } else if !members.contains(&holder) {
                        members.push(holder);
                    }
                }
                Some(expired) if expired > MEMBER_GARBAGE_AFTER => {
                    let precondition = kube::api::DeleteParams {
                        preconditions: Some(kube::api::Preconditions {
                            resource_version: lease.metadata.resource_version.clone(),
                            uid: None,
                        }),
                        ..Default::default()
                    };
                    let _ = self.api.delete(&name, &precondition).await;
                }
                Some(_) => {}
            }
        }
        members.sort();
        Ok((members, others))
    }

    /// One round over every shard, a few at once (each costs a GET and a PUT).
    async fn balance(self: &Arc<Self>, members: &[String], changed: &impl Fn(u32, ShardEvent)) {
        futures::stream::iter(0..self.options.shards)
            .for_each_concurrent(8, |shard| self.balance_one(shard, members, changed))
            .await;
    }

    async fn balance_one(
        self: &Arc<Self>,
        shard: u32,
        members: &[String],
        changed: &impl Fn(u32, ShardEvent),
    ) {
        let mine = owner_of(shard, members) == Some(&self.options.identity);
        let (held, releasing) = {
            let state = self.state.lock().expect("not poisoned");
            (
                state.held.contains_key(&shard),
                state.releasing.contains(&shard),
            )
        };
        let lease = self.lease(shard);
        if releasing {
            // Still ours until its reconciles finish: keep the Lease alive meanwhile.
            if let Err(err) = lease.try_acquire().await {
                tracing::warn!(shard, %err, "cannot renew the Lease of a shard being handed over");
            }
            return;
        }
        match (mine, held) {
            (true, _) => {
                // The time before asking: the Lease runs from no later than this.
                let asked = Instant::now();
                match lease.try_acquire().await {
                    Ok(true) => {
                        let before = self
                            .state
                            .lock()
                            .expect("not poisoned")
                            .held
                            .insert(shard, asked);
                        if before.is_none() {
                            tracing::info!(shard, agent = %self.options.identity, "took shard");
                            changed(shard, ShardEvent::Taken);
                        }
                    }
                    // Its holder has not let it go yet (or its Lease has not expired).
                    Ok(false) => {
                        if held {
                            self.drop_shard(shard, changed, "another agent holds its Lease now");
                        }
                    }
                    Err(err) => {
                        tracing::warn!(shard, %err, "cannot take or renew a shard's Lease")
                    }
                }
            }
            (false, true) => {
                // Stop starting reconciles in it, let those running finish (renewing it
                // meanwhile), then let go.
                self.drop_shard(shard, changed, "it moves to another agent");
                self.state
                    .lock()
                    .expect("not poisoned")
                    .releasing
                    .insert(shard);
                let shards = self.clone();
                tokio::spawn(async move {
                    shards.until_idle(shard).await;
                    if let Err(err) = release(&lease, &shards.options.identity).await {
                        tracing::warn!(shard, %err, "cannot release a shard's Lease; it moves once it expires");
                    }
                    shards
                        .state
                        .lock()
                        .expect("not poisoned")
                        .releasing
                        .remove(&shard);
                });
            }
            (false, false) => {}
        }
    }

    fn drop_shard(&self, shard: u32, changed: &impl Fn(u32, ShardEvent), why: &str) {
        let removed = self.state.lock().expect("not poisoned").held.remove(&shard);
        if removed.is_some() {
            tracing::info!(shard, agent = %self.options.identity, why, "gave up shard");
            changed(shard, ShardEvent::GivenUp);
        }
    }

    async fn until_idle(&self, shard: u32) {
        loop {
            // Registered before the count is read: a reconcile that ends in between wakes it.
            let finished = self.finished.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            let running = self
                .state
                .lock()
                .expect("not poisoned")
                .in_flight
                .get(&shard)
                .copied()
                .unwrap_or(0);
            if running == 0 {
                return;
            }
            finished.await;
        }
    }

    /// Gives every shard up and leaves (the agent is stopping, its reconciles are done):
    /// the others take over at once instead of after the lease duration.
    pub async fn leave(&self) {
        let held = self.held();
        self.state.lock().expect("not poisoned").held.clear();
        for shard in held {
            let _ = release(&self.lease(shard), &self.options.identity).await;
        }
        let _ = self
            .api
            .delete(&member_lease(&self.options.identity), &Default::default())
            .await;
    }
}

/// Empties the holder of a Lease this agent holds, so that another may take it at once.
async fn release(lease: &Election, identity: &str) -> Result<(), kube::Error> {
    let api = lease.api();
    let name = lease.name();
    let Some(mut current) = api.get_opt(name).await? else {
        return Ok(());
    };
    let spec = current.spec.get_or_insert_with(Default::default);
    if spec.holder_identity.as_deref() != Some(identity) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = None;
    match api.replace(name, &PostParams::default(), &current).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_joining_or_leaving_moves_only_the_shards_it_wins_or_held() {
        let three: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let two: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let mut counts = HashMap::new();
        for shard in 0..60 {
            let before = owner_of(shard, &three).expect("an owner").clone();
            let after = owner_of(shard, &two).expect("an owner").clone();
            if before != "c" {
                assert_eq!(before, after, "shard {shard} moved though its owner stayed");
            }
            *counts.entry(before).or_insert(0) += 1;
        }
        // Every member gets a share (60 shards, 3 members: each far from 0 and from 60).
        for member in &three {
            let share = counts.get(member).copied().unwrap_or(0);
            assert!(
                (8..=32).contains(&share),
                "{member} has {share} of 60 shards"
            );
        }
        assert_eq!(owner_of(0, &[]), None);
    }

    #[test]
    fn applications_spread_over_the_shards() {
        let mut counts = [0u32; 4];
        for i in 0..400 {
            counts[shard_of(&format!("team/app-{i}"), 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&n| (70..=130).contains(&n)),
            "{counts:?}"
        );
        assert_eq!(shard_of("ns/x", 1), 0);
        assert_eq!(shard_of("ns/x", 7), shard_of("ns/x", 7));
    }

    #[test]
    fn member_lease_names_are_valid_and_distinct() {
        let a = member_lease("Pod_A:1");
        let b = member_lease("pod-b-2");
        assert_ne!(a, b);
        assert!(
            a.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}
