//! What the agent remembers of each Application between its reconciles, in one place:
//! forgetting an Application (deleted, or its shard given to another agent) is one
//! removal, so nothing of it is left behind.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// What the agent remembers of one Application.
#[derive(Debug, Default, Clone)]
pub struct Remembered {
    /// Its (sync, health) as counted in the Applications gauge.
    pub state: Option<(String, String)>,
    /// (when, why) of a failed sync whose Event could not be published (the API server
    /// was unreachable then): published once it answers again, so an outage that the next
    /// attempt rode out still shows in the Events.
    pub late_failure: Option<(String, String)>,
    /// The newest resourceVersion of the Application this agent knows (its own read or
    /// status write): a reconcile whose cached copy is that version reads nothing (a poll
    /// of 1,000 Applications is not 1,000 GETs a minute).
    pub seen_version: Option<String>,
    /// The refresh annotation last acted on (another agent passed a webhook on): a new one
    /// means the remote's refs must be listed afresh.
    pub refresh: Option<String>,
    /// Since when it has been Progressing: its health is read again on a short backoff
    /// until it settles.
    pub progressing_since: Option<Instant>,
    /// When its image updates last scanned the registries.
    pub images_scanned: Option<Instant>,
}

/// The agent's memory of its Applications, by `namespace/name`.
#[derive(Debug, Default)]
pub struct Memory {
    apps: Mutex<HashMap<String, Remembered>>,
}

impl Memory {
    /// Reads or changes what is remembered of Application `key` (remembering it from now
    /// on).
    pub fn with<R>(&self, key: &str, change: impl FnOnce(&mut Remembered) -> R) -> R {
        let mut apps = self.apps.lock().expect("not poisoned");
        change(apps.entry(key.to_string()).or_default())
    }

    /// Forgets Application `key`, and hands what was remembered of it to `then` (under the
    /// same lock as [`Self::with`], so that a gauge kept from it stays in step).
    pub fn forget<R>(&self, key: &str, then: impl FnOnce(Remembered) -> R) -> Option<R> {
        let mut apps = self.apps.lock().expect("not poisoned");
        apps.remove(key).map(then)
    }

    /// The Applications remembered.
    pub fn keys(&self) -> Vec<String> {
        self.apps
            .lock()
            .expect("not poisoned")
            .keys()
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgetting_an_application_forgets_everything_remembered_of_it() {
        let memory = Memory::default();
        memory.with("shop/web", |app| {
            app.state = Some(("Synced".into(), "Healthy".into()));
            app.seen_version = Some("42".into());
            app.progressing_since = Some(Instant::now());
        });
        memory.with("shop/db", |app| app.refresh = Some("1".into()));
        let gone = memory.forget("shop/web", |gone| gone).expect("remembered");
        assert_eq!(gone.seen_version.as_deref(), Some("42"));
        assert!(gone.progressing_since.is_some());
        assert_eq!(memory.keys(), vec!["shop/db".to_string()]);
        // Asked again, it starts from nothing.
        assert!(memory.with("shop/web", |app| app.seen_version.is_none()));
    }
}
