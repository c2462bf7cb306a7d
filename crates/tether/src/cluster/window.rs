//! How many requests a push keeps in flight: a window that starts at `--concurrency` and
//! grows while a round of answers comes back as fast as the best round did (the round
//! trip, not the server's queue, is what they wait for), and shrinks when they slow down (a
//! queue builds at the server: the API server's priority and fairness queues a client's
//! requests before it refuses any), as TCP Vegas finds its window by comparing round trips.
//! Where the server's queue is what answers wait for, it does not grow; over a 20 ms round
//! trip it grows until the server, not the wire, is the bound.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// Requests in flight, between `min` and `max`, adjusted as each round of answers comes back.
#[derive(Debug)]
pub struct Window {
    permits: Semaphore,
    state: Mutex<Sizing>,
}

/// The window's size and what it learned (pure: each answer's effect is unit-tested).
#[derive(Debug, Clone)]
struct Sizing {
    min: usize,
    max: usize,
    /// Requests allowed in flight now (permits given out plus free).
    size: usize,
    /// Permits to take back as they are returned (the window shrank below those in use).
    owed: usize,
    /// The best (lowest) mean answer time of a round yet: the round trip, with as
    /// little queue as the server ever had.
    best: Option<Duration>,
    /// Answers of the current round (one window's worth), and how long they took in all.
    round: (usize, Duration),
}

/// What a round of answers does to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// This many more requests in flight.
    Grow(usize),
    Keep,
    /// One fewer.
    Shrink,
}

/// Requests a round may find queued at the server (the window times how much slower its
/// answers were than the best round's: `size × (1 − best / mean)`) and still grow the
/// window.
const GROW_BELOW: f64 = 2.0;
/// Beyond this many queued, the window shrinks by one.
const SHRINK_ABOVE: f64 = 6.0;

impl Sizing {
    fn new(min: usize, max: usize) -> Self {
        let min = min.max(1);
        Self {
            min,
            max: max.max(min),
            size: min,
            owed: 0,
            best: None,
            round: (0, Duration::ZERO),
        }
    }

    /// An answer came back after `took`. Once a round (as many answers as the window) is
    /// in, its mean against the best round's mean tells how many requests waited in a
    /// queue rather than on the wire: few, and the window grows by a quarter; many, and it
    /// shrinks by one (Vegas's rule, judged on a round's mean so that quick and slow kinds
    /// of request average out).
    fn answer(&mut self, took: Duration) -> Step {
        self.round.0 += 1;
        self.round.1 += took;
        if self.round.0 < self.size {
            return Step::Keep;
        }
        let mean = self.round.1 / self.round.0 as u32;
        self.round = (0, Duration::ZERO);
        let best = self.best.map_or(mean, |best| best.min(mean));
        self.best = Some(best);
        let queued = self.size as f64 * (1.0 - best.as_secs_f64() / mean.as_secs_f64().max(1e-9));
        if queued < GROW_BELOW && self.size < self.max {
            let more = (self.size / 4).max(1).min(self.max - self.size);
            self.size += more;
            Step::Grow(more)
        } else if queued > SHRINK_ABOVE {
            self.shrink_to(self.size - 1)
        } else {
            Step::Keep
        }
    }

    fn shrink_to(&mut self, size: usize) -> Step {
        let size = size.max(self.min);
        let fewer = self.size - size;
        self.size = size;
        self.owed += fewer;
        match fewer {
            0 => Step::Keep,
            _ => Step::Shrink,
        }
    }

    /// Whether a returned permit is taken back (the window owes one).
    fn take_back(&mut self) -> bool {
        let owed = self.owed > 0;
        self.owed = self.owed.saturating_sub(1);
        owed
    }
}

impl Window {
    /// A window of `min` requests in flight, growing up to `max`.
    pub fn new(min: usize, max: usize) -> Self {
        let sizing = Sizing::new(min, max);
        Self {
            permits: Semaphore::new(sizing.size),
            state: Mutex::new(sizing),
        }
    }

    /// The most requests it may ever keep in flight.
    pub fn max(&self) -> usize {
        self.state.lock().expect("not poisoned").max
    }

    /// Requests allowed in flight now.
    pub fn size(&self) -> usize {
        self.state.lock().expect("not poisoned").size
    }

    /// Runs `request` within the window.
    pub async fn run<T>(&self, request: impl std::future::Future<Output = T>) -> T {
        let permit = self.permits.acquire().await.expect("never closed");
        let started = Instant::now();
        let answer = request.await;
        let mut state = self.state.lock().expect("not poisoned");
        if let Step::Grow(more) = state.answer(started.elapsed()) {
            self.permits.add_permits(more);
        }
        if state.take_back() {
            permit.forget();
        }
        answer
    }
}

/// At most how many requests are in flight: the window's largest, or `concurrency`.
pub fn in_flight(concurrency: usize, window: &Option<std::sync::Arc<Window>>) -> usize {
    window.as_ref().map_or(concurrency, |w| w.max()).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds `n` answers of `took` each; the last one's step.
    fn round(sizing: &mut Sizing, n: usize, took: Duration) -> Step {
        (0..n).map(|_| sizing.answer(took)).last().expect("n > 0")
    }

    #[test]
    fn rounds_as_fast_as_the_best_grow_the_window_up_to_its_max() {
        let mut sizing = Sizing::new(8, 11);
        assert_eq!(
            round(&mut sizing, 7, ms(20)),
            Step::Keep,
            "the round is not in"
        );
        assert_eq!(sizing.answer(ms(20)), Step::Grow(2));
        assert_eq!(sizing.size, 10);
        // 10 × (1 − 20/22) ≈ 0.9 queued: the wire, not the server, is the bound.
        assert_eq!(
            round(&mut sizing, 10, ms(22)),
            Step::Grow(1),
            "up to its max"
        );
        assert_eq!(round(&mut sizing, 11, ms(20)), Step::Keep, "at its max");
    }

    #[test]
    fn rounds_slowed_by_a_queue_shrink_it_but_never_below_where_it_started() {
        let mut sizing = Sizing::new(8, 64);
        round(&mut sizing, 8, ms(10));
        assert_eq!(sizing.size, 10);
        // 10 × (1 − 10/14) ≈ 2.9 queued: kept.
        assert_eq!(round(&mut sizing, 10, ms(14)), Step::Keep);
        // 10 × (1 − 10/30) ≈ 6.7 queued: one fewer.
        assert_eq!(round(&mut sizing, 10, ms(30)), Step::Shrink);
        assert_eq!(round(&mut sizing, 9, ms(40)), Step::Shrink);
        assert_eq!(round(&mut sizing, 8, ms(40)), Step::Keep, "at its min");
        assert_eq!(sizing.size, 8);
        // The permits in use beyond the window are taken back as they return.
        assert!(sizing.take_back());
        assert!(sizing.take_back());
        assert!(!sizing.take_back());
    }

    #[test]
    fn a_round_of_mixed_answers_is_judged_by_its_mean() {
        // Quick and slow requests in one round (a GET beside dry-runs): the quick ones do
        // not make the slow ones look queued.
        let mut sizing = Sizing::new(4, 64);
        for took in [2, 30, 30, 30] {
            sizing.answer(ms(took));
        }
        assert_eq!(sizing.size, 5);
        for took in [30, 2, 30, 30, 2] {
            sizing.answer(ms(took));
        }
        assert_eq!(sizing.size, 6, "a round as fast as the best grows it");
    }

    #[tokio::test]
    async fn the_window_bounds_requests_in_flight_as_it_grows() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let window = Window::new(2, 5);
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let request = || async {
            let n = now.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(ms(5)).await;
            now.fetch_sub(1, Ordering::SeqCst);
        };
        let all = (0..40).map(|_| window.run(request()));
        futures::future::join_all(all).await;
        let most = most.load(Ordering::SeqCst);
        assert!(most <= 5, "{most} in flight with a window of at most 5");
        assert!(most > 2, "the window never grew past its start ({most})");
        assert_eq!(window.size(), 5);
    }
}
