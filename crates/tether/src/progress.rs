//! Progress of long work (planning and applying thousands of objects, waiting for health),
//! reported through a small trait so the stages stay free of terminal code. The CLI shows
//! a bar on a terminal and plain lines otherwise; tests and the agent stay silent.

use std::sync::Arc;

pub trait Progress: Send + Sync {
    /// A phase with `total` steps starts ("planning", "applying", "pruning").
    fn begin(&self, _phase: &str, _total: usize) {}
    /// One step of the current phase is done.
    fn tick(&self) {}
    /// A status line for the current phase ("3 objects not healthy yet").
    fn note(&self, _message: &str) {}
    /// The current phase is over.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}

/// A shareable [`Progress`], silent by default.
#[derive(Clone)]
pub struct ProgressHandle(pub Arc<dyn Progress>);

impl Default for ProgressHandle {
    fn default() -> Self {
        Self(Arc::new(Silent))
    }
}

impl std::fmt::Debug for ProgressHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHandle")
    }
}

impl std::ops::Deref for ProgressHandle {
    type Target = dyn Progress;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}
