//! The lock a policy holds (the WIT `view.lock` resource), apart from the view
//! that takes it: the bindings name this type, and the view makes it, so
//! neither depends on the other through it.

/// A lock a policy holds: released when dropped (when the policy drops its
/// handle, or its instance goes), by the release the view gave it.
pub struct HeldLock {
    taken_at: u64,
    release: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl HeldLock {
    /// A lock taken at `taken_at` (ms since the Unix epoch), which `release`
    /// gives back.
    pub(crate) fn new(taken_at: u64, release: impl FnOnce() + Send + Sync + 'static) -> HeldLock {
        HeldLock { taken_at, release: Some(Box::new(release)) }
    }

    /// When it was taken, in ms since the Unix epoch.
    pub(crate) fn taken_at(&self) -> u64 {
        self.taken_at
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if let Some(release) = self.release.take() {
            release();
        }
    }
}
