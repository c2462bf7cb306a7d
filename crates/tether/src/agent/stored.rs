//! A watch's applied objects, each handed on only once the reflector's store holds it.
//!
//! kube's reflector keeps a (re)list's objects aside until the list is complete, then swaps
//! them into the store all at once; but `applied_objects()` hands each listed object on at
//! once. A controller fed so looks an object up before its store has it, reports
//! `ObjectNotFound` and drops the request; with a predicate filter in between, the object
//! is never handed on again. So an Application created while the agent's watch was down,
//! and first seen in the relist that followed (a 410 after a busy minute or an API server
//! restart), was never reconciled (40 of 40 in the test `relist::…` without this module; a
//! likely cause of the 61 of 10,000 in the fleet benchmark of 2026-12-05, beside the
//! saturation that docs/performance.md describes). [`applied_once_stored`] holds a list's
//! objects until the list is done.

use futures::{Stream, StreamExt};
use kube::runtime::watcher;

/// The objects `events` applies, those of a (re)list only after its end (`InitDone`), when
/// the store `events` was reflected into holds them; deletions are left out, errors passed
/// on. Place after `.reflect(writer)`.
pub(super) fn applied_once_stored<K: Send + 'static>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static {
    events
        .scan(Vec::new(), |listing: &mut Vec<K>, event| {
            let out = match event {
                Ok(watcher::Event::Apply(object)) => vec![Ok(object)],
                Ok(watcher::Event::Delete(_)) => Vec::new(),
                Ok(watcher::Event::Init) => {
                    // A list that broke off is started again: what it brought is listed again.
                    listing.clear();
                    Vec::new()
                }
                Ok(watcher::Event::InitApply(object)) => {
                    listing.push(object);
                    Vec::new()
                }
                Ok(watcher::Event::InitDone) => {
                    std::mem::take(listing).into_iter().map(Ok).collect()
                }
                Err(err) => vec![Err(err)],
            };
            futures::future::ready(Some(futures::stream::iter(out)))
        })
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::WatchStreamExt;
    use kube::runtime::reflector::{self, ObjectRef, Store};
    use watcher::Event;

    fn config_map(name: &str) -> ConfigMap {
        let mut map = ConfigMap::default();
        map.metadata.name = Some(name.into());
        map.metadata.namespace = Some("shop".into());
        map
    }

    /// Names handed on, each with whether the store held it at that moment.
    async fn handed_on(
        events: Vec<Event<ConfigMap>>,
        pipeline: impl FnOnce(
            futures::stream::BoxStream<'static, Result<Event<ConfigMap>, watcher::Error>>,
        )
            -> futures::stream::BoxStream<'static, Result<ConfigMap, watcher::Error>>,
    ) -> Vec<(String, bool)> {
        let (store, writer): (Store<ConfigMap>, _) = reflector::store();
        let reflected = futures::stream::iter(events.into_iter().map(Ok))
            .reflect(writer)
            .boxed();
        let mut out = Vec::new();
        let mut stream = pipeline(reflected);
        while let Some(object) = stream.next().await {
            let object = object.expect("no errors");
            let held = store.get(&ObjectRef::from_obj(&object)).is_some();
            out.push((object.metadata.name.clone().unwrap_or_default(), held));
        }
        out
    }

    /// A first list of `a`, then a relist that also brings `b` (created while the watch
    /// was down), then `c` applied by the watch.
    fn list_relist_apply() -> Vec<Event<ConfigMap>> {
        vec![
            Event::Init,
            Event::InitApply(config_map("a")),
            Event::InitDone,
            Event::Init,
            Event::InitApply(config_map("a")),
            Event::InitApply(config_map("b")),
            Event::InitDone,
            Event::Apply(config_map("c")),
            Event::Delete(config_map("c")),
        ]
    }

    #[tokio::test]
    async fn every_object_is_handed_on_once_the_store_holds_it() {
        let seen = handed_on(list_relist_apply(), |s| applied_once_stored(s).boxed()).await;
        let expected = [("a", true), ("a", true), ("b", true), ("c", true)];
        let expected: Vec<(String, bool)> =
            expected.iter().map(|(n, h)| (n.to_string(), *h)).collect();
        assert_eq!(seen, expected);
    }

    /// Why: kube's own `applied_objects()` hands a relist's new object on before the store
    /// holds it (if kube changes that, this test says so and the module may go).
    #[tokio::test]
    async fn kube_hands_a_relisted_new_object_on_before_its_store_holds_it() {
        let seen = handed_on(list_relist_apply(), |s| s.applied_objects().boxed()).await;
        assert!(
            seen.contains(&("b".to_string(), false)),
            "kube now stores before handing on: {seen:?}"
        );
    }

    #[tokio::test]
    async fn a_list_started_again_hands_on_only_what_the_new_list_brought() {
        let events = vec![
            Event::Init,
            Event::InitApply(config_map("old")),
            Event::Init,
            Event::InitApply(config_map("new")),
            Event::InitDone,
        ];
        let seen = handed_on(events, |s| applied_once_stored(s).boxed()).await;
        assert_eq!(seen, vec![("new".to_string(), true)]);
    }
}
