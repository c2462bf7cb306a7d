//! The refs a remote advertised ([`Listing`]), what a ref names in them ([`listed_ref`]),
//! and the listings a process keeps so that fetches of one repository share them
//! ([`Listings`], a value its owner passes in: the agent keeps one, each command its own).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::url::display_url;
use crate::source::reference::RefSpec;

/// A ref the remote advertised, reduced to what resolution needs.
#[derive(Debug, Clone)]
pub(super) struct RemoteRef {
    pub(super) name: String,
    /// The commit (annotated tags peeled).
    pub(super) commit: gix::ObjectId,
}

#[derive(Debug, Clone)]
pub(super) struct Listing {
    pub(super) refs: Vec<RemoteRef>,
    /// The branch HEAD points at, if the server says.
    pub(super) head: Option<String>,
}

/// A URL and the identity that listed it (see [`super::GitSource::identity`]).
type ListingKey = (String, Option<String>);

/// The last ref listing per URL and identity, with when it was taken, and the webhooks'
/// word that a remote changed. Shared by the fetches of its owner (clone the `Arc`), so
/// polls of many Applications following one repository share one listing (and the
/// index of the commit they read).
#[derive(Default)]
pub struct Listings {
    state: Mutex<ListingState>,
    /// Held by whoever lists a remote for a poll ([`super::GitSource::list_remote`]), so
    /// that many polls of one repository list it once.
    listers: Mutex<BTreeMap<ListingKey, Arc<Mutex<()>>>>,
    /// How many listings were taken (remembered).
    taken: std::sync::atomic::AtomicU64,
    /// The tree indexes of the commits read last (see [`super::commit_tree::Indexes`]).
    pub(super) indexes: super::commit_tree::Indexes,
    /// Woken by each push a webhook announces (ApplicationSets generate again: a pull
    /// request's head, a folder, a file may have changed).
    pushed: tokio::sync::Notify,
}

#[derive(Default)]
struct ListingState {
    taken: BTreeMap<ListingKey, (Instant, Listing)>,
    /// URL → listings taken before this instant are stale (the remote announced a change).
    stale_before: BTreeMap<String, Instant>,
}

impl std::fmt::Debug for Listings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.lock().expect("not poisoned");
        f.debug_struct("Listings")
            .field("taken", &state.taken.len())
            .field("stale", &state.stale_before.len())
            .finish()
    }
}

impl Listings {
    /// A webhook announced a push: whoever waits in [`Listings::pushed`] goes on.
    pub fn announce_push(&self) {
        // One waiter (the sets' controller); a push while it is busy is kept for it.
        self.pushed.notify_one();
    }

    /// Until the next push a webhook announces.
    pub async fn pushed(&self) {
        self.pushed.notified().await;
    }

    /// The remote at `url` changed (a webhook said so): no ref listing taken before now may
    /// be reused for it, however recent.
    pub fn forget(&self, url: &str) {
        let Some(url) = display_url(url) else {
            return;
        };
        let mut state = self.state.lock().expect("not poisoned");
        state.stale_before.insert(url, Instant::now());
    }

    /// The listing of the normalised `url` taken as `identity` at or after `not_before`,
    /// unless a change was announced since it was taken.
    pub(super) fn recent(
        &self,
        url: &str,
        identity: Option<&str>,
        not_before: Instant,
    ) -> Option<Listing> {
        let state = self.state.lock().expect("not poisoned");
        let stale_before = state.stale_before.get(url).copied();
        let not_before = stale_before.map_or(not_before, |stale| stale.max(not_before));
        let (taken, listing) = state
            .taken
            .get(&(url.to_string(), identity.map(str::to_string)))?;
        (*taken >= not_before).then(|| listing.clone())
    }

    /// How many listings of remotes the sources sharing these listings took.
    pub fn taken(&self) -> u64 {
        self.taken.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The lock of whoever lists `url` as `identity` for polls.
    pub(super) fn lister(&self, url: &str, identity: Option<&str>) -> Arc<Mutex<()>> {
        let mut listers = self.listers.lock().expect("not poisoned");
        listers
            .entry((url.to_string(), identity.map(str::to_string)))
            .or_default()
            .clone()
    }

    pub(super) fn remember(
        &self,
        url: &str,
        identity: Option<&str>,
        taken: Instant,
        listing: &Listing,
    ) {
        self.taken
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut state = self.state.lock().expect("not poisoned");
        state.taken.insert(
            (url.to_string(), identity.map(str::to_string)),
            (taken, listing.clone()),
        );
    }

    /// Whether a webhook announced a change to the remote at `url` that no ref listing
    /// taken as `identity` has seen since.
    pub(super) fn change_announced(&self, url: &str, identity: Option<&str>) -> bool {
        let Some(key) = display_url(url) else {
            return false;
        };
        let state = self.state.lock().expect("not poisoned");
        let Some(stale) = state.stale_before.get(&key).copied() else {
            return false;
        };
        state
            .taken
            .get(&(key, identity.map(str::to_string)))
            .is_none_or(|(taken, _)| *taken < stale)
    }
}

/// The advertised ref that `reference` names in `listing`: the default branch, a branch, a
/// tag, a name that is one of those, or the highest tag in a semver range. `None` when it
/// names none of them (a commit id names no ref).
pub(super) fn listed_ref(reference: &RefSpec, listing: &Listing) -> Option<RemoteRef> {
    let find = |name: &str| listing.refs.iter().find(|r| r.name == name).cloned();
    match reference {
        RefSpec::Default => {
            let branch = listing.head.clone().or_else(|| {
                ["refs/heads/main", "refs/heads/master"]
                    .into_iter()
                    .find(|n| find(n).is_some())
                    .map(str::to_string)
            })?;
            find(&branch)
        }
        RefSpec::Branch(b) => find(&format!("refs/heads/{b}")),
        RefSpec::Tag(t) => find(&format!("refs/tags/{t}")),
        RefSpec::Name(n) => find(&format!("refs/heads/{n}"))
            .or_else(|| find(&format!("refs/tags/{n}")))
            .or_else(|| find(n)),
        RefSpec::Commit(_) => None,
        RefSpec::Semver(range) => {
            let tags = listing
                .refs
                .iter()
                .filter_map(|r| r.name.strip_prefix("refs/tags/"));
            let (tag, _) = range.best(tags)?;
            find(&format!("refs/tags/{tag}"))
        }
    }
}

/// The names in `listing` under `prefix` (branches and tags when `None`), for a message.
pub(super) fn available(listing: &Listing, prefix: Option<&str>) -> String {
    let mut names: Vec<&str> = listing
        .refs
        .iter()
        .filter_map(|r| match prefix {
            Some(p) => r.name.strip_prefix(p),
            None => r
                .name
                .strip_prefix("refs/heads/")
                .or_else(|| r.name.strip_prefix("refs/tags/")),
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    if names.is_empty() {
        return " (the remote has none)".into();
    }
    let shown: Vec<&str> = names.iter().take(20).copied().collect();
    let more = if names.len() > 20 {
        format!(" and {} more", names.len() - 20)
    } else {
        String::new()
    };
    format!("; the remote has: {}{more}", shown.join(", "))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn listing() -> Listing {
        Listing {
            refs: Vec::new(),
            head: Some("main".into()),
        }
    }

    /// An instant surely before any `forget` that follows it.
    fn a_moment_ago() -> Instant {
        Instant::now() - Duration::from_millis(10)
    }

    #[test]
    fn a_recent_listing_is_shared_until_a_webhook_marks_it_stale() {
        let url = "https://git.example.com/listing-test.git";
        let key = display_url(url).expect("url");
        let listings = Listings::default();
        let taken = Instant::now();
        listings.remember(&key, None, taken, &listing());
        let later = taken + Duration::from_secs(3);
        assert!(
            listings.recent(&key, None, later).is_none(),
            "older than the fetch"
        );
        assert!(
            listings
                .recent(&key, None, later - Duration::from_secs(5))
                .is_some(),
            "within the allowed age"
        );
        // A listing taken with credentials is theirs alone, and the other way round.
        assert!(
            listings
                .recent(&key, Some("secret a/git"), later - Duration::from_secs(5))
                .is_none(),
            "another identity's listing"
        );
        assert!(!listings.change_announced(url, None), "no webhook yet");
        listings.forget(url);
        assert!(
            listings
                .recent(&key, None, later - Duration::from_secs(5))
                .is_none(),
            "stale after a webhook"
        );
        assert!(
            listings.change_announced(url, None),
            "announced, not listed since"
        );
        listings.remember(&key, None, Instant::now(), &listing());
        assert!(
            listings
                .recent(&key, None, later - Duration::from_secs(5))
                .is_some()
        );
        assert!(
            !listings.change_announced(url, None),
            "listed since the webhook"
        );
        assert!(
            listings.change_announced(url, Some("secret a/git")),
            "not listed since with those credentials"
        );
    }

    #[test]
    fn forgetting_a_url_makes_the_next_lookup_miss() {
        let url = "https://git.example.com/team/deploy.git";
        let key = display_url(url).expect("url");
        let listings = Listings::default();
        let before = a_moment_ago();
        listings.remember(&key, None, before, &listing());
        assert!(listings.recent(&key, None, before).is_some());
        // The webhook's URL is normalised as the fetch's is.
        listings.forget(url);
        assert!(listings.recent(&key, None, before).is_none());
        // Another repository's listing stays.
        let other = display_url("https://git.example.com/team/other.git").expect("url");
        listings.remember(&other, None, before, &listing());
        listings.forget(url);
        assert!(listings.recent(&other, None, before).is_some());
    }

    #[test]
    fn a_listing_older_than_asked_is_not_served() {
        let key = display_url("https://git.example.com/old.git").expect("url");
        let listings = Listings::default();
        let taken = Instant::now();
        listings.remember(&key, None, taken, &listing());
        assert!(listings.recent(&key, None, taken).is_some(), "just in time");
        assert!(
            listings
                .recent(&key, None, taken + Duration::from_millis(1))
                .is_none(),
            "taken before the fetch may use"
        );
    }

    #[test]
    fn two_values_share_no_listings() {
        let url = "https://git.example.com/shared.git";
        let key = display_url(url).expect("url");
        let (mine, yours) = (Listings::default(), Listings::default());
        let taken = a_moment_ago();
        mine.remember(&key, None, taken, &listing());
        assert!(mine.recent(&key, None, taken).is_some());
        assert!(yours.recent(&key, None, taken).is_none(), "not taken by it");
        // A webhook told to one leaves the other's listings fresh.
        yours.remember(&key, None, taken, &listing());
        mine.forget(url);
        assert!(mine.recent(&key, None, taken).is_none());
        assert!(yours.recent(&key, None, taken).is_some());
        assert!(mine.change_announced(url, None));
        assert!(!yours.change_announced(url, None));
    }
}
