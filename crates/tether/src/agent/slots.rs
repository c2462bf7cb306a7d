//! Which reconcile runs next when all `--concurrency` slots are busy ([`Slots`]): the
//! urgent ones (an Application new or changed, a sync asked for, drift reported) first,
//! then the routine polls, each class first come first served.
//!
//! kube's controller runs at most its own concurrency at once; past that it keeps the
//! waiting requests in an unordered set and takes the first in hash order, so the same
//! Applications could win again and again (at 10,000 Applications, 973 were never
//! reconciled in 40 minutes while the synced ones' polls kept every slot busy). The
//! agent gives kube no limit and waits here instead, where no Application can be passed
//! over: each waits at most for those that came before it in its class, and for the
//! urgent ones.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;

/// How soon a reconcile should run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Someone waits for it: a new or changed Application, a sync asked for, drift.
    Urgent,
    /// A poll at the interval.
    Routine,
}

/// Admission of reconciles: `free` slots, and who waits for one.
pub struct Slots {
    state: Mutex<State>,
    /// Applications something happened to (the watch, drift, a webhook, the API): their
    /// next reconcile is urgent. Keys as [`crate::application::application_key`] makes them.
    expedited: Mutex<HashSet<String>>,
    /// How many wait, per class (the agent's `tether_reconciles_waiting`).
    waiting: [Gauge; 2],
}

struct State {
    free: usize,
    /// The agent stops: nobody gets a slot any more.
    closed: bool,
    urgent: VecDeque<oneshot::Sender<Permit>>,
    routine: VecDeque<oneshot::Sender<Permit>>,
}

/// One slot, held while a reconcile runs; passed on to the next waiter when dropped.
pub struct Permit {
    /// `None` once the slot is freed rather than passed on.
    slots: Option<Arc<Slots>>,
}

impl Slots {
    /// `concurrency` slots (at least one); `waiting` counts the urgent and the routine
    /// waiters.
    pub fn new(concurrency: usize, waiting: [Gauge; 2]) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                free: concurrency.max(1),
                closed: false,
                urgent: VecDeque::new(),
                routine: VecDeque::new(),
            }),
            waiting,
            expedited: Mutex::default(),
        })
    }

    /// The next reconcile of the Application with `key` is urgent.
    pub fn expedite(&self, key: String) {
        self.expedited.lock().expect("not poisoned").insert(key);
    }

    /// A slot for the reconcile of the Application with `key`: urgent when it was
    /// expedited since its last one, else routine (a poll, a retry).
    pub async fn acquire_for(self: &Arc<Self>, key: &str) -> Option<Permit> {
        let urgent = self.expedited.lock().expect("not poisoned").remove(key);
        self.acquire(if urgent {
            Class::Urgent
        } else {
            Class::Routine
        })
        .await
    }

    /// Forgets that the Application with `key` was expedited (it is gone).
    pub fn forget(&self, key: &str) {
        self.expedited.lock().expect("not poisoned").remove(key);
    }

    /// A slot for a reconcile of `class`: at once when one is free and nobody waits,
    /// else when those before it are done; `None` once the agent stops ([`Slots::close`]).
    /// A waiter dropped before its turn takes no slot.
    pub async fn acquire(self: &Arc<Self>, class: Class) -> Option<Permit> {
        let receiver = {
            let mut state = self.state.lock().expect("not poisoned");
            if state.closed {
                return None;
            }
            if state.free > 0 && state.urgent.is_empty() && state.routine.is_empty() {
                state.free -= 1;
                return Some(Permit {
                    slots: Some(self.clone()),
                });
            }
            let (sender, receiver) = oneshot::channel();
            match class {
                Class::Urgent => state.urgent.push_back(sender),
                Class::Routine => state.routine.push_back(sender),
            }
            self.count(&state);
            receiver
        };
        // A sender is dropped without a permit only when the agent stops.
        receiver.await.ok()
    }

    /// The agent stops: the reconciles that wait for a slot end at once (a graceful
    /// shutdown then waits only for those running), and none starts any more.
    pub fn close(&self) {
        let mut state = self.state.lock().expect("not poisoned");
        state.closed = true;
        state.urgent.clear();
        state.routine.clear();
        self.count(&state);
    }

    /// Hands the slot of a dropped permit to the first waiter still waiting, else frees it.
    fn release(self: Arc<Self>) {
        let mut state = self.state.lock().expect("not poisoned");
        let mut permit = Permit {
            slots: Some(self.clone()),
        };
        loop {
            let next = state
                .urgent
                .pop_front()
                .or_else(|| state.routine.pop_front());
            let Some(next) = next else {
                break;
            };
            match next.send(permit) {
                Ok(()) => {
                    self.count(&state);
                    return;
                }
                // That waiter is gone: the permit comes back for the next.
                Err(returned) => permit = returned,
            }
        }
        // Freed, not passed on: the permit's drop must not release it again.
        permit.slots = None;
        state.free += 1;
        self.count(&state);
    }

    fn count(&self, state: &State) {
        self.waiting[0].set(state.urgent.len() as i64);
        self.waiting[1].set(state.routine.len() as i64);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            slots.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn slots(n: usize) -> Arc<Slots> {
        Slots::new(n, Default::default())
    }

    /// Starts a waiter for a slot of `class` that records `name` when it gets one and holds
    /// the slot until told to let go.
    fn waiter(
        slots: &Arc<Slots>,
        class: Class,
        name: &'static str,
        order: &Arc<Mutex<Vec<&'static str>>>,
    ) -> (tokio::task::JoinHandle<()>, oneshot::Sender<()>) {
        let (slots, order) = (slots.clone(), order.clone());
        let (done, until) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _permit = slots.acquire(class).await.expect("open");
            order.lock().unwrap().push(name);
            let _ = until.await;
        });
        (task, done)
    }

    /// Tells every waiter to let go of its slot once it has it, frees `held`, and waits
    /// for them all.
    async fn finish(
        held: Permit,
        waiters: Vec<(tokio::task::JoinHandle<()>, oneshot::Sender<()>)>,
    ) {
        let mut tasks = Vec::new();
        for (task, done) in waiters {
            let _ = done.send(());
            tasks.push(task);
        }
        drop(held);
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("every waiter gets a slot")
                .expect("no panic");
        }
    }

    /// Lets the spawned waiters run until they wait.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn urgent_waiters_go_first_and_each_class_in_order_of_arrival() {
        let slots = slots(1);
        let order = Arc::new(Mutex::new(Vec::new()));
        let held = slots.acquire(Class::Routine).await.expect("open");
        let mut waiters = Vec::new();
        for (class, name) in [
            (Class::Routine, "poll 1"),
            (Class::Routine, "poll 2"),
            (Class::Urgent, "new 1"),
            (Class::Routine, "poll 3"),
            (Class::Urgent, "new 2"),
        ] {
            waiters.push(waiter(&slots, class, name, &order));
            settle().await;
        }
        assert_eq!(slots.waiting[0].get(), 2, "urgent waiters counted");
        assert_eq!(slots.waiting[1].get(), 3, "routine waiters counted");
        // Each lets go as soon as it has the slot: they get it one at a time, in turn.
        finish(held, waiters).await;
        assert_eq!(
            *order.lock().unwrap(),
            ["new 1", "new 2", "poll 1", "poll 2", "poll 3"]
        );
        assert_eq!(slots.waiting[0].get() + slots.waiting[1].get(), 0);
    }

    #[tokio::test]
    async fn an_expedited_application_is_urgent_once() {
        let slots = slots(1);
        let held = slots.acquire(Class::Routine).await.expect("open");
        let order = Arc::new(Mutex::new(Vec::new()));
        slots.expedite("ns/changed".into());
        let mut waiters = Vec::new();
        for key in ["ns/polled", "ns/changed"] {
            let (slots, order) = (slots.clone(), order.clone());
            let (done, until) = oneshot::channel::<()>();
            waiters.push((
                tokio::spawn(async move {
                    let _permit = slots.acquire_for(key).await.expect("open");
                    order.lock().unwrap().push(key);
                    let _ = until.await;
                }),
                done,
            ));
            settle().await;
        }
        finish(held, waiters).await;
        assert_eq!(*order.lock().unwrap(), ["ns/changed", "ns/polled"]);
        // Taken: its next reconcile is a routine one again.
        assert!(slots.expedited.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn no_more_run_at_once_than_the_slots_and_a_freed_slot_is_taken_at_once() {
        let slots = slots(2);
        let a = slots.acquire(Class::Routine).await.expect("open");
        let b = slots.acquire(Class::Routine).await.expect("open");
        let order = Arc::new(Mutex::new(Vec::new()));
        let (task, done) = waiter(&slots, Class::Urgent, "third", &order);
        settle().await;
        assert!(
            order.lock().unwrap().is_empty(),
            "a third ran with two slots"
        );
        drop(a);
        settle().await;
        assert_eq!(*order.lock().unwrap(), ["third"]);
        let _ = done.send(());
        task.await.unwrap();
        // Both slots free again once every permit is gone.
        drop(b);
        let _c = slots.acquire(Class::Routine).await.expect("open");
        let _d = tokio::time::timeout(Duration::from_secs(1), slots.acquire(Class::Routine))
            .await
            .expect("the second slot is free");
    }

    #[tokio::test]
    async fn when_the_agent_stops_the_waiters_end_and_none_starts() {
        let slots = slots(1);
        let held = slots.acquire(Class::Routine).await.expect("open");
        let waiting = {
            let slots = slots.clone();
            tokio::spawn(async move { slots.acquire(Class::Urgent).await.is_some() })
        };
        settle().await;
        slots.close();
        let got_slot = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the waiter ends at once")
            .expect("no panic");
        assert!(!got_slot, "a waiter got a slot after the stop");
        drop(held);
        assert!(slots.acquire(Class::Urgent).await.is_none());
        assert_eq!(slots.waiting[0].get(), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_takes_no_slot_with_it() {
        let slots = slots(1);
        let held = slots.acquire(Class::Routine).await.expect("open");
        let order = Arc::new(Mutex::new(Vec::new()));
        let (gone, _) = waiter(&slots, Class::Urgent, "gone", &order);
        settle().await;
        gone.abort();
        let _ = gone.await;
        let (task, done) = waiter(&slots, Class::Routine, "next", &order);
        settle().await;
        drop(held);
        settle().await;
        assert_eq!(*order.lock().unwrap(), ["next"]);
        let _ = done.send(());
        task.await.unwrap();
        // And the slot came back after all.
        tokio::time::timeout(Duration::from_secs(1), slots.acquire(Class::Urgent))
            .await
            .expect("the slot is free again");
    }
}
