//! Progress on stderr: a bar on a terminal, plain lines otherwise (CI logs).

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::progress::{Progress, ProgressHandle};

/// The progress reporter for this process's stderr.
pub fn for_stderr() -> ProgressHandle {
    if std::io::stderr().is_terminal() {
        ProgressHandle(Arc::new(Bar::default()))
    } else {
        ProgressHandle(Arc::new(Lines::default()))
    }
}

#[derive(Default)]
struct Bar {
    current: Mutex<Option<indicatif::ProgressBar>>,
}

impl Progress for Bar {
    fn begin(&self, phase: &str, total: usize) {
        let bar = indicatif::ProgressBar::new(total as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{prefix:>18} [{bar:30}] {pos}/{len} {elapsed} {wide_msg}",
            )
            .expect("the template is valid")
            .progress_chars("=> "),
        );
        bar.set_prefix(phase.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        *self.current.lock().expect("not poisoned") = Some(bar);
    }

    fn tick(&self) {
        if let Some(bar) = self.current.lock().expect("not poisoned").as_ref() {
            bar.inc(1);
        }
    }

    fn note(&self, message: &str) {
        if let Some(bar) = self.current.lock().expect("not poisoned").as_ref() {
            bar.set_message(message.to_string());
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.current.lock().expect("not poisoned").take() {
            bar.finish_and_clear();
        }
    }
}

/// One line when a phase starts and ends, and a status line at most every 10 s.
#[derive(Default)]
struct Lines {
    state: Mutex<Option<(String, usize, Instant, Instant)>>,
}

impl Progress for Lines {
    fn begin(&self, phase: &str, total: usize) {
        eprintln!("tether: {phase}: {total} objects");
        let now = Instant::now();
        *self.state.lock().expect("not poisoned") = Some((phase.to_string(), total, now, now));
    }

    fn note(&self, message: &str) {
        let mut state = self.state.lock().expect("not poisoned");
        if let Some((phase, _, _, last)) = state.as_mut()
            && last.elapsed() >= Duration::from_secs(10)
        {
            eprintln!("tether: {phase}: {message}");
            *last = Instant::now();
        }
    }

    fn finish(&self) {
        if let Some((phase, total, started, _)) = self.state.lock().expect("not poisoned").take() {
            eprintln!(
                "tether: {phase}: done ({total} objects, {:.1} s)",
                started.elapsed().as_secs_f64()
            );
        }
    }
}
